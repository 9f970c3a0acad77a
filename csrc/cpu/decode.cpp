// Host side of the CPU decode path (cpu/decode_problem.h): the problem, the
// window split, the choice of the kernel build for this CPU, the parallel
// loop over tasks and the merge of split partial results.
#include "cpu/decode.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdio>

#include "cpu/decode_problem.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "cpu/row_softmax.h"
#include "cpu/tensor_rows.h"
#include "ops/checks.h"
#include "swa/kernels/ring.h"

namespace swa::cpu {
namespace {

// A split holds at least this many keys (fewer tasks than this would leave
// the merge and the per-task setup a visible share of the time).
constexpr int64_t kMinSplitKeys = 256;

// Below this many bytes of window K/V a decode step runs on one thread:
// waking and joining helpers costs about as much as reading them (B1 Hq8
// Hkv2 D64 W512 fp32, 0.5 MiB: 15 us on one thread, 26 us on two).
constexpr int64_t kSerialBytes = int64_t(1) << 20;

// The bytes of the last-level cache that this CPU's core sits on: Linux's
// sysfs entry of the L3 instance (glibc's sysconf reports a whole chiplet
// EPYC package's L3 there, 12 times a core's share); 32 MiB where unknown.
int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t size = 0;
    if (std::FILE* f = std::fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r")) {
      long long n = 0;
      char unit = 0;
      if (std::fscanf(f, "%lld%c", &n, &unit) >= 1)
        size = unit == 'K' ? n << 10 : unit == 'M' ? n << 20 : unit == 'G' ? n << 30 : n;
      std::fclose(f);
    }
    return size > 0 ? size : int64_t(32) << 20;
  }();
  return bytes;
}

// Splits of the window per (sequence, kv head): enough tasks for every
// thread to get several (dynamic balance) when B * Hkv alone gives too few.
void choose_splits(DecodeProblem& p, int64_t tasks, int64_t max_keys, int64_t threads) {
  int64_t splits = 1;
  if (threads > 1 && tasks < 4 * threads) {
    splits = std::min((4 * threads + tasks - 1) / tasks, std::max<int64_t>(1, max_keys / kMinSplitKeys));
  }
  const int64_t per = (max_keys + splits - 1) / splits;
  p.split_keys = std::max<int64_t>(1, (per + kDecodeSplitAlign - 1) / kDecodeSplitAlign * kDecodeSplitAlign);
  p.splits = std::max<int64_t>(1, (max_keys + p.split_keys - 1) / p.split_keys);
}

// out, lse from the splits' (m, l, O): with M = max m_s, l = sum l_s 2^(m_s - M),
// out = sum O_s 2^(m_s - M) / l, lse = (M + log2 l) ln 2 (m in base 2); the
// sink logit joins here, once (cpu/row_softmax.h).
template <class T, class In>
void merge(const DecodeProblem& p, int64_t count) {
  const int64_t D = p.head_dim, stride = decode_partial_stride(p);
  const T* part = static_cast<const T*>(p.partial);
  std::vector<T> o(D);
  for (int64_t i = 0; i < count; ++i) {
    const DecodeSequence seq = decode_sequence(p, i);
    const int64_t b = seq.b, R = p.group * seq.new_len;
    for (int64_t hk = 0; hk < p.heads_kv; ++hk) {
      const T* task0 = part + (i * p.heads_kv + hk) * p.splits * stride;
      for (int64_t r = 0; r < R; ++r) {
        const int64_t h = hk * p.group + r / seq.new_len, t = seq.row0 + r % seq.new_len;
        T mx = -std::numeric_limits<T>::infinity();
        bool nan = false;  // a split with a NaN score makes the row NaN (the README's contract)
        for (int64_t s = 0; s < p.splits; ++s) {
          const T* row = task0 + s * stride + r * (2 + D);
          if (row[1] > T(0)) mx = std::max(mx, row[0]);
          nan |= std::isnan(row[1]);
        }
        T sum = T(0);
        std::fill(o.begin(), o.end(), T(0));
        for (int64_t s = 0; s < p.splits; ++s) {
          const T* row = task0 + s * stride + r * (2 + D);
          if (!(row[1] > T(0))) continue;  // the split holds no key of this row
          const T w = std::exp2(row[0] - mx);
          sum += row[1] * w;
          for (int64_t d = 0; d < D; ++d) o[d] += row[2 + d] * w;
        }
        In* out = static_cast<In*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + t * p.out_stride[2];
        T inv;
        finish_row(mx, nan ? std::numeric_limits<T>::quiet_NaN() : sum, p.sinks != nullptr ? p.sinks + h : nullptr,
                   inv, p.lse[b * p.lse_stride[0] + h * p.lse_stride[1] + t * p.lse_stride[2]]);
        for (int64_t d = 0; d < D; ++d) out[d] = In(o[d] * inv);
      }
    }
  }
}

}  // namespace

bool decode_path_applies(int64_t new_len, int64_t group) { return new_len * group <= kDecodeMaxRows; }

namespace {

// The problem's fields that do not depend on the layout: the tensors' data,
// the cache's, the window and sinks, the scale and softcap.
struct DecodeInputs {
  at::Tensor q, k_new, v_new, k_cache, v_cache, out_rows, pos, sink_logits;
};

DecodeInputs fill_common(DecodeProblem& p, const at::Tensor& q_in, const at::Tensor& k_new_in,
                         const at::Tensor& v_new_in, const at::Tensor& k_cache_in, const at::Tensor& v_cache_in,
                         const at::Tensor& pos, int64_t window, double scale, double softcap, at::Tensor& out,
                         at::Tensor& lse, const SinkArgs& sinks) {
  DecodeInputs in;
  // The kernel reads and writes rows with unit stride along the head dim.
  in.q = unit_last(q_in), in.k_new = unit_last(k_new_in), in.v_new = unit_last(v_new_in);
  in.k_cache = unit_last(k_cache_in), in.v_cache = unit_last(v_cache_in);
  in.out_rows = unit_last(out);
  TORCH_INTERNAL_ASSERT(lse.scalar_type() == at::kFloat && out.scalar_type() == in.q.scalar_type());
  in.pos = pos.contiguous();
  p.dtype = in.q.scalar_type();
  p.q = in.q.data_ptr();
  p.k_new = in.k_new.data_ptr();
  p.v_new = in.v_new.data_ptr();
  p.k_cache = in.k_cache.data_ptr();
  p.v_cache = in.v_cache.data_ptr();
  p.out = in.out_rows.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.pos = in.pos.data_ptr<int64_t>();
  fill_strides(p.k_cache_stride, in.k_cache);
  fill_strides(p.v_cache_stride, in.v_cache);
  p.heads_kv = in.k_cache.size(1);
  p.head_dim = in.q.size(-1);
  p.window = window;
  p.sink_tokens = sinks.tokens;
  p.capacity = in.k_cache.size(2) - sinks.tokens;  // the ring after the sink slots
  if (sinks.logits.has_value()) {  // [Hq] float64
    in.sink_logits = sinks.logits->to(at::kDouble).contiguous();
    p.sinks = in.sink_logits.data_ptr<double>();
  }
  p.scale = scale;
  p.softcap = kernel_softcap(softcap);  // as attention_forward_into: tiny caps stay on
  return in;
}

// Splits the window, runs the tasks of the problem's `count` sequences with
// the kernel built for this CPU, merges the splits.
void run_problem(DecodeProblem& p, int64_t count, const DecodeInputs& in, at::Tensor& out) {
  int64_t max_keys = 1;
  for (int64_t i = 0; i < count; ++i) {
    const DecodeSequence seq = decode_sequence(p, i);
    max_keys = std::max(
        max_keys, SWA_KERNEL_NS::RingView{p.pos[seq.b], seq.new_len, p.window, p.capacity, p.sink_tokens}.seqlen_k());
  }
  const int64_t heads = count * p.heads_kv;
  const int64_t window_bytes = 2 * heads * max_keys * p.head_dim * int64_t(c10::elementSize(p.dtype));
  const int64_t threads =
      window_bytes < kSerialBytes || at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads());
  choose_splits(p, heads, max_keys, threads);
  p.prefetch = window_bytes > last_level_cache_bytes();
  at::Tensor partial;
  if (p.splits > 1) {
    const auto acc_dtype = p.dtype == at::kDouble ? at::kDouble : at::kFloat;
    partial = at::empty({heads * p.splits * decode_partial_stride(p)}, in.q.options().dtype(acc_dtype));
    p.partial = partial.data_ptr();
  } else {
    p.partial = nullptr;
  }

  void (*run)(const DecodeProblem&, TaskQueue&) = decode_tasks_baseline;
#if defined(__x86_64__) || defined(__i386__)
  switch (cpu_isa()) {
    case Isa::kAvx512Bf16:  // the decode has no bf16 dot-product build
    case Isa::kAvx512: run = decode_tasks_avx512; break;
    case Isa::kAvx2: run = decode_tasks_avx2; break;
    case Isa::kBaseline: break;
  }
#endif
  const int64_t tasks = heads * p.splits;
  parallel_workers(tasks, threads == 1 ? tasks : std::max<int64_t>(1, tasks / (8 * threads)),
                   [&](TaskQueue& queue) { run(p, queue); });
  if (p.splits > 1) {
    switch (p.dtype) {
      case at::kDouble: merge<double, double>(p, count); break;
      case at::kFloat: merge<float, float>(p, count); break;
      case at::kHalf: merge<float, c10::Half>(p, count); break;
      case at::kBFloat16: merge<float, c10::BFloat16>(p, count); break;
      default: TORCH_CHECK(false, "swa::cache_attention: unsupported dtype ", p.dtype);
    }
  }
  if (!in.out_rows.is_same(out)) out.copy_(in.out_rows);
}

// Strides of a packed [T, H, D] operand as the kernel's (batch, head, row):
// no batch step, rows are tokens.
void fill_packed_strides(int64_t (&dst)[3], const at::Tensor& t) {
  dst[0] = 0;
  dst[1] = t.stride(1);
  dst[2] = t.stride(0);
}

}  // namespace

void cache_decode_into(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                       const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& pos,
                       int64_t window, double scale, double softcap, at::Tensor& out, at::Tensor& lse,
                       const SinkArgs& sinks) {
  if (q.numel() == 0) return;
  DecodeProblem p;
  const DecodeInputs in = fill_common(p, q, k_new, v_new, k_cache, v_cache, pos, window, scale, softcap, out, lse,
                                      sinks);
  fill_strides(p.q_stride, in.q);
  fill_strides(p.k_new_stride, in.k_new);
  fill_strides(p.v_new_stride, in.v_new);
  fill_strides(p.out_stride, in.out_rows);
  fill_strides(p.lse_stride, lse);
  p.group = in.q.size(1) / p.heads_kv;
  p.new_len = in.q.size(2);
  run_problem(p, in.q.size(0), in, out);
}

void cache_decode_varlen_into(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                              const int64_t* cu_seqlens, const std::vector<int64_t>& sequences,
                              const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& pos,
                              int64_t window, double scale, double softcap, at::Tensor& out, at::Tensor& lse,
                              const SinkArgs& sinks) {
  if (sequences.empty() || q.size(1) == 0 || q.size(2) == 0) return;
  DecodeProblem p;
  const DecodeInputs in = fill_common(p, q, k_new, v_new, k_cache, v_cache, pos, window, scale, softcap, out, lse,
                                      sinks);
  fill_packed_strides(p.q_stride, in.q);
  fill_packed_strides(p.k_new_stride, in.k_new);
  fill_packed_strides(p.v_new_stride, in.v_new);
  fill_packed_strides(p.out_stride, in.out_rows);
  p.lse_stride[0] = 0;  // lse [Hq, T]
  p.lse_stride[1] = lse.stride(0);
  p.lse_stride[2] = lse.stride(1);
  p.group = in.q.size(1) / p.heads_kv;
  p.cu_seqlens = cu_seqlens;
  p.sequences = sequences.data();
  p.new_len = 0;
  for (int64_t b : sequences) p.new_len = std::max(p.new_len, cu_seqlens[b + 1] - cu_seqlens[b]);
  TORCH_INTERNAL_ASSERT(decode_path_applies(p.new_len, p.group));
  run_problem(p, int64_t(sequences.size()), in, out);
}

}  // namespace swa::cpu

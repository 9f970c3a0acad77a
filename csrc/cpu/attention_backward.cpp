// Exact CPU backward of swa::attention: argument plumbing, the choice of the
// kernel build for this CPU, and the two parallel passes (dQ per query tile,
// then dK/dV per key tile; no atomics, deterministic by construction). The
// kernels are in cpu/backward_kernel.h (built per instruction set by
// cpu/backward_<isa>.cpp).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdio>
#include <vector>

#include "cpu/attention.h"
#include "cpu/backward_problem.h"
#include "cpu/env_flag.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "cpu/tensor_rows.h"
#include "cpu/workspace.h"
#include "ops/checks.h"
#include "ops/sinks.h"

namespace swa::cpu {
namespace {

constexpr double kLog2eHost = 1.4426950408889634;  // log2(e): lse2 = lse log2(e)

// SWA_CPU_BACKWARD_TWO_PASS=1 turns the one-pass backward off (the tests
// compare both); SWA_DEBUG_BACKWARD_PATH=1 prints the pass structure of every
// CPU backward to stderr ("swa_cuda: backward path cpu-one-pass").
bool fused_dq_enabled() {
  static const bool enabled = !env_flag("SWA_CPU_BACKWARD_TWO_PASS");
  return enabled;
}

// fused_dq: dq = scale * the sum of the chunks' slices that hold each row,
// in chunk order (row ranges grow with the chunk, so they are consecutive).
template <class In, class T>
void sum_dq_chunks(const BackwardProblem& p, const AttentionShape& shape) {
  const int64_t D = shape.head_dim, Sq = shape.seqlen_q, group = p.group;
  const T scale = T(p.scale);
  const T* slices = static_cast<const T*>(p.dq_chunks);
  at::parallel_for(0, shape.batch * shape.heads_q, 1, [&](int64_t bh0, int64_t bh1) {
    std::vector<T> row(D);
    for (int64_t bh = bh0; bh < bh1; ++bh) {
      const int64_t b = bh / shape.heads_q, h = bh % shape.heads_q, hk = h / group, g = h % group;
      const T* head_slices = slices + (b * shape.heads_kv + hk) * p.chunk_offset[p.chunks];
      In* dq = static_cast<In*>(p.dq) + b * p.dq_stride[0] + h * p.dq_stride[1];
      int64_t c_first = 0;  // the first chunk whose rows do not end before row i
      for (int64_t i = 0; i < Sq; ++i) {
        while (c_first < p.chunks && p.chunk_rows[2 * c_first + 1] <= i) ++c_first;
        std::fill(row.begin(), row.end(), T(0));
        for (int64_t c = c_first; c < p.chunks && p.chunk_rows[2 * c] <= i; ++c) {
          if (i >= p.chunk_rows[2 * c + 1]) continue;  // an empty chunk
          const int64_t count = p.chunk_rows[2 * c + 1] - p.chunk_rows[2 * c];
          const T* src = head_slices + p.chunk_offset[c] + (g * count + (i - p.chunk_rows[2 * c])) * D;
          for (int64_t d = 0; d < D; ++d) row[d] += src[d];
        }
        In* out = dq + i * p.dq_stride[2];
        for (int64_t d = 0; d < D; ++d) out[d] = In(row[d] * scale);
      }
    }
  });
}

}  // namespace

BackwardResult attention_backward_run(const char* op, const at::Tensor& grad_out_in,
                                      const std::optional<at::Tensor>& grad_lse, const at::Tensor& q_in,
                                      const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& out_in,
                                      const at::Tensor& lse, int64_t window_left, int64_t window_right,
                                      std::optional<double> scale, double softcap,
                                      const std::optional<at::Tensor>& sinks, int64_t sink_tokens,
                                      const PackedLayout* packed, const HeadWindowArgs* heads) {
  const AttentionShape shape = check_attention_backward(op, grad_out_in, grad_lse, q_in, k_in, v_in, out_in, lse,
                                                        window_left, window_right, scale, softcap);
  const SinkArgs sink_args = check_sinks(op, sinks, sink_tokens, q_in);
  at::Tensor dq = at::empty_like(q_in), dk = at::empty_like(k_in), dv = at::empty_like(v_in);
  at::Tensor dsinks = sink_args.logits.has_value() ? at::zeros_like(*sink_args.logits)
                                                   : at::empty({0}, q_in.options().dtype(at::kFloat));
  if (k_in.numel() == 0 || q_in.numel() == 0) {
    dq.zero_(), dk.zero_(), dv.zero_();
    // No key: every row's weight is the sink's (exp(sink - lse) = 1).
    if (sink_args.logits.has_value() && q_in.numel() > 0)
      dsinks = sink_logits_grad(*sink_args.logits, lse, softmax_delta(grad_out_in, out_in, grad_lse, at::kDouble));
    return {dq, dk, dv, dsinks};
  }
  const at::Tensor grad_out = unit_last(grad_out_in), q = unit_last(q_in), k = unit_last(k_in),
                   v = unit_last(v_in), out = unit_last(out_in);
  at::Tensor dq_rows = unit_last(dq), dk_rows = unit_last(dk), dv_rows = unit_last(dv);
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor lse2 = at::empty({shape.batch, shape.heads_q, shape.seqlen_q}, q.options().dtype(acc));
  const at::Tensor delta = at::empty_like(lse2);
  const bool has_grad_lse = grad_lse.has_value() && grad_lse->defined();

  BackwardProblem p;
  p.dtype = q.scalar_type();
  p.dout = grad_out.data_ptr();
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.grad_lse = has_grad_lse ? grad_lse->data_ptr<float>() : nullptr;
  p.dq = dq_rows.data_ptr();
  p.dk = dk_rows.data_ptr();
  p.dv = dv_rows.data_ptr();
  fill_strides(p.dout_stride, grad_out);
  fill_strides(p.q_stride, q);
  fill_strides(p.k_stride, k);
  fill_strides(p.v_stride, v);
  fill_strides(p.out_stride, out);
  if (has_grad_lse) fill_strides(p.grad_lse_stride, *grad_lse);
  fill_strides(p.dq_stride, dq_rows);
  fill_strides(p.dk_stride, dk_rows);
  fill_strides(p.dv_stride, dv_rows);
  p.lse2 = lse2.data_ptr();
  p.delta = delta.data_ptr();
  p.heads_q = shape.heads_q;
  p.heads_kv = shape.heads_kv;
  p.group = shape.group();
  p.seqlen_q = shape.seqlen_q;
  p.seqlen_k = shape.seqlen_k;
  p.head_dim = shape.head_dim;
  p.m_blocks = (shape.seqlen_q + kTileLanes - 1) / kTileLanes;
  p.n_blocks = (shape.seqlen_k + kTileLanes - 1) / kTileLanes;
  p.band = SWA_KERNEL_NS::Band{shape.seqlen_q, shape.seqlen_k, kernel_window_left(window_left, shape.seqlen_k),
                               kernel_window_right(window_right, shape.seqlen_q), sink_args.tokens};
  if (heads != nullptr) {
    p.band.window_left = heads->union_left;
    p.band.window_right = heads->union_right;
    p.head_windows = {heads->left(), heads->right()};
  }
  p.scale = softmax_scale(scale, shape.head_dim);
  p.softcap = kernel_softcap(softcap);
  at::Tensor sink_logits;  // [Hq] float64, contiguous
  if (sink_args.logits.has_value()) {
    sink_logits = sink_args.logits->to(at::kDouble).contiguous();
    p.sinks = sink_logits.data_ptr<double>();
  }

  void (*dq_pass)(const BackwardProblem&, TaskQueue&) = backward_dq_tasks_baseline;
  void (*dkdv_pass)(const BackwardProblem&, TaskQueue&) = backward_dkdv_tasks_baseline;
#if defined(__x86_64__) || defined(__i386__)
  switch (cpu_isa()) {
    case Isa::kAvx512Bf16:  // and bf16 one passes on bf16 pairs (below)
    case Isa::kAvx512: dq_pass = backward_dq_tasks_avx512, dkdv_pass = backward_dkdv_tasks_avx512; break;
    case Isa::kAvx2: dq_pass = backward_dq_tasks_avx2, dkdv_pass = backward_dkdv_tasks_avx2; break;
    case Isa::kBaseline: break;
  }
#endif
  int64_t q_tasks = shape.batch * shape.heads_q * p.m_blocks;
  int64_t k_tasks = shape.batch * shape.heads_kv * p.n_blocks;
  if (packed != nullptr) {
    p.seqs = packed->seqs;
    p.q_task_begin = packed->q_task_begin;
    p.k_task_begin = packed->k_task_begin;
    q_tasks = packed->q_task_begin[packed->seqs.count];
    k_tasks = packed->k_task_begin[packed->seqs.count];
  }
  // Few sink tokens: the dQ pass takes their pairs with the rows' sink runs
  // (BackwardProblem::sink_grads); rows have sink runs only under a bounded
  // left window.
  at::Tensor sink_grads;
  if (sink_args.tokens > 0 && sink_args.tokens <= kDqSinkKeys && p.band.window_left >= 0) {
    sink_grads = at::zeros({q_tasks, 2, sink_args.tokens, shape.head_dim}, q.options().dtype(acc));
    p.sink_grads = sink_grads.data_ptr();
  }
  // One pass where it applies (BackwardProblem::fused_dq): bounded windows
  // (a chunk's rows are then its keys plus the window), chosen by the shape
  // alone so that results do not depend on the thread count.
  // Sink tokens join when the dQ pass takes their pairs (sink_grads): the
  // dK/dV tasks then see band rows only, and their chunks' rows stay bounded.
  p.fused_dq = packed == nullptr && (sink_args.tokens == 0 || p.sink_grads != nullptr) && p.band.window_left >= 0 &&
               p.band.window_right >= 0 && fused_dq_enabled();
  // bf16 with an even head dim: the one pass on bf16 pairs where the CPU has AVX512-BF16.
  bool dot_pass = false;
#if defined(__x86_64__) || defined(__i386__)
  if (cpu_isa() == Isa::kAvx512Bf16 && p.fused_dq && q.scalar_type() == at::kBFloat16 &&
      shape.head_dim % 2 == 0) {
    dq_pass = backward_dq_tasks_avx512_bf16, dkdv_pass = backward_dkdv_tasks_avx512_bf16;
    dot_pass = true;
  }
#endif
  if (q.scalar_type() == at::kFloat || dot_pass) {  // see BackwardProblem::lse2_given
    lse2.copy_(lse.to(at::kDouble).mul(kLog2eHost).reshape(lse2.sizes()));
    p.lse2_given = true;
  }
  static const bool debug_path = env_flag("SWA_DEBUG_BACKWARD_PATH");
  if (debug_path)
    std::fprintf(stderr, "swa_cuda: backward path %s\n",
                 dot_pass ? "cpu-one-pass-bf16-dot" : p.fused_dq ? "cpu-one-pass" : "cpu-two-pass");
  if (p.fused_dq) {
    // Chunks of at least 16 tiles and at least the window's span: the rows a
    // chunk's keys reach are then at most twice its keys, and the slices at
    // most twice dQ in the accumulation type.
    const int64_t span = p.band.window_left + p.band.window_right + 1;
    p.chunk_keys = (std::max<int64_t>(16 * kTileLanes, span) + kTileLanes - 1) / kTileLanes * kTileLanes;
    p.chunks = (shape.seqlen_k + p.chunk_keys - 1) / p.chunk_keys;
    std::vector<int64_t> chunk_rows(2 * p.chunks), chunk_offset(p.chunks + 1, 0), chunk_first_row(p.chunks);
    int64_t held = 0;  // rows [0, held) are held by an earlier chunk
    for (int64_t c = 0; c < p.chunks; ++c) {
      const int64_t k0 = c * p.chunk_keys, k1 = std::min(shape.seqlen_k, (c + 1) * p.chunk_keys);
      auto rows = p.sink_grads != nullptr ? SWA_KERNEL_NS::band_row_range(p.band, k0, k1)
                                          : SWA_KERNEL_NS::row_range(p.band, k0, k1);
      if (rows.empty()) rows.begin = rows.end = 0;
      chunk_rows[2 * c] = rows.begin;
      chunk_rows[2 * c + 1] = rows.end;
      chunk_offset[c + 1] = chunk_offset[c] + p.group * (rows.end - rows.begin) * shape.head_dim;
      chunk_first_row[c] = std::clamp(held, rows.begin, rows.end);
      held = std::max(held, rows.end);
    }
    p.chunk_rows = chunk_rows.data();
    p.chunk_offset = chunk_offset.data();
    p.chunk_first_row = chunk_first_row.data();
    Buffer dq_chunks_owner;  // when the slices are larger than the thread's workspace keeps
    p.dq_chunks = workspace(shape.batch * shape.heads_kv * chunk_offset[p.chunks] * int64_t(c10::elementSize(acc)),
                            dq_chunks_owner);
    p.sink_rows_start_slices = p.sink_grads != nullptr;
    // delta (and lse2 unless given) from the dQ pass without its sweep 2 (with
    // sink tokens: sweep 2 over the rows' sink runs only, into the slices' starts and sink_grads).
    p.stats_only = true;
    parallel_workers(q_tasks, default_grain(q_tasks), [&](TaskQueue& queue) { dq_pass(p, queue); });
    const int64_t tasks = shape.batch * shape.heads_kv * p.chunks;
    parallel_workers(tasks, 1, [&](TaskQueue& queue) { dkdv_pass(p, queue); });
    switch (q.scalar_type()) {
      case at::kDouble: sum_dq_chunks<double, double>(p, shape); break;
      case at::kFloat: sum_dq_chunks<float, float>(p, shape); break;
      case at::kHalf: sum_dq_chunks<c10::Half, float>(p, shape); break;
      case at::kBFloat16: sum_dq_chunks<c10::BFloat16, float>(p, shape); break;
      default: TORCH_CHECK(false, op, ": unsupported dtype ", q.scalar_type());
    }
  } else {
    // Pass 1 writes lse2 and delta of every row (and sink_grads); pass 2 reads them.
    parallel_workers(q_tasks, default_grain(q_tasks), [&](TaskQueue& queue) { dq_pass(p, queue); });
    parallel_workers(k_tasks, default_grain(k_tasks), [&](TaskQueue& queue) { dkdv_pass(p, queue); });
  }
  if (!dq_rows.is_same(dq)) dq.copy_(dq_rows);
  if (!dk_rows.is_same(dk)) dk.copy_(dk_rows);
  if (!dv_rows.is_same(dv)) dv.copy_(dv_rows);
  // d sinks from pass 1's row statistics (lse2 includes the sink logit).
  if (sink_args.logits.has_value())
    dsinks = sink_logits_grad(*sink_args.logits, lse2 * (1.0 / kLog2eHost), delta);
  return {dq, dk, dv, dsinks};
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    int64_t window_left, int64_t window_right, std::optional<double> scale, double softcap,
    bool /*deterministic: always*/) {
  BackwardResult r = attention_backward_run("swa::attention_backward", grad_out, grad_lse, q, k, v, out, lse, window_left,
                                  window_right, scale, softcap, std::nullopt, 0);
  return {r.dq, r.dk, r.dv};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_sinks_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    int64_t window_left, int64_t window_right, std::optional<double> scale, double softcap,
    bool /*deterministic: always*/, const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  BackwardResult r = attention_backward_run("swa::attention_backward.sinks", grad_out, grad_lse, q, k, v, out, lse,
                                  window_left, window_right, scale, softcap, sinks, sink_tokens);
  return {r.dq, r.dk, r.dv, r.dsinks};
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CPU, m) {
  m.impl("attention_backward", &attention_backward_cpu);
  m.impl("attention_backward.sinks", &attention_backward_sinks_cpu);
}

}  // namespace swa::cpu

// Exact CPU forward of swa::attention: argument plumbing, the choice of the
// kernel build for this CPU, and the parallel loop over tasks. The kernel
// itself is in cpu/forward_kernel.h (built per instruction set by
// cpu/forward_<isa>.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdio>

#include "cpu/attention.h"
#include "cpu/env_flag.h"
#include "cpu/forward_problem.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "cpu/tensor_rows.h"
#include "ops/checks.h"

namespace swa::cpu {

void attention_forward_into(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                            int64_t window_left, int64_t window_right, double scale,
                            double softcap, at::Tensor& out, at::Tensor& lse, const SinkArgs& sinks,
                            const PackedLayout* packed, const HeadWindowArgs* heads) {
  if (q_in.numel() == 0) return;
  // The kernel reads and writes rows with unit stride along the head dim.
  const at::Tensor q = unit_last(q_in), k = unit_last(k_in), v = unit_last(v_in);
  at::Tensor out_rows = unit_last(out);
  TORCH_INTERNAL_ASSERT(lse.scalar_type() == at::kFloat && out.scalar_type() == q.scalar_type());

  ForwardProblem p;
  p.dtype = q.scalar_type();
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out_rows.data_ptr();
  p.lse = lse.data_ptr<float>();
  fill_strides(p.q_stride, q);
  fill_strides(p.k_stride, k);
  fill_strides(p.v_stride, v);
  fill_strides(p.out_stride, out_rows);
  fill_strides(p.lse_stride, lse);
  p.heads_q = q.size(1);
  p.group = q.size(1) / k.size(1);
  p.seqlen_q = q.size(2);
  p.head_dim = q.size(3);
  p.m_blocks = (p.seqlen_q + kTileLanes - 1) / kTileLanes;
  p.band = SWA_KERNEL_NS::Band{p.seqlen_q, k.size(2), kernel_window_left(window_left, k.size(2)),
                               kernel_window_right(window_right, p.seqlen_q), sinks.tokens};
  if (heads != nullptr) {
    p.band.window_left = heads->union_left;
    p.band.window_right = heads->union_right;
    p.head_windows = {heads->left(), heads->right()};
  }
  p.scale = scale;
  p.softcap = kernel_softcap(softcap);
  at::Tensor sink_logits;  // [Hq] float64, contiguous
  if (sinks.logits.has_value()) {
    sink_logits = sinks.logits->to(at::kDouble).contiguous();
    p.sinks = sink_logits.data_ptr<double>();
  }

  void (*run)(const ForwardProblem&, TaskQueue&) = forward_tasks_baseline;
  const char* path = "cpu-baseline";
#if defined(__x86_64__) || defined(__i386__)
  switch (cpu_isa()) {
    case Isa::kAvx512Bf16:  // bf16 with an even head dim: vdpbf16ps products
      if (p.dtype == at::kBFloat16 && p.head_dim % 2 == 0) {
        run = forward_tasks_avx512_bf16, path = "cpu-avx512_bf16";
        break;
      }
      [[fallthrough]];
    case Isa::kAvx512: run = forward_tasks_avx512, path = "cpu-avx512"; break;
    case Isa::kAvx2: run = forward_tasks_avx2, path = "cpu-avx2"; break;
    case Isa::kBaseline: break;
  }
#endif
  // SWA_DEBUG_FORWARD_PATH=1: the kernel build of every call on stderr, as
  // on CUDA ("swa_cuda: forward path cpu-avx512_bf16"); the tests read it.
  static const bool debug_path = env_flag("SWA_DEBUG_FORWARD_PATH");
  if (debug_path) std::fprintf(stderr, "swa_cuda: forward path %s\n", path);
  int64_t tasks = q.size(0) * p.heads_q * p.m_blocks;
  if (packed != nullptr) {
    p.seqs = packed->seqs;
    p.task_begin = packed->q_task_begin;
    tasks = packed->q_task_begin[packed->seqs.count];
  }
  parallel_workers(tasks, default_grain(tasks), [&](TaskQueue& queue) { run(p, queue); });
  if (!out_rows.is_same(out)) out.copy_(out_rows);
}

namespace {

std::tuple<at::Tensor, at::Tensor> attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                 const at::Tensor& v, int64_t window_left,
                                                 int64_t window_right, std::optional<double> scale,
                                                 double softcap) {
  const AttentionShape shape =
      check_attention("swa::attention", q, k, v, window_left, window_right, scale, softcap);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({shape.batch, shape.heads_q, shape.seqlen_q}, q.options().dtype(at::kFloat));
  if (shape.empty()) return {out, lse};
  attention_forward_into(q, k, v, window_left, window_right, softmax_scale(scale, shape.head_dim),
                         softcap, out, lse);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> attention_sinks_cpu(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v, int64_t window_left,
                                                       int64_t window_right, std::optional<double> scale,
                                                       double softcap, const std::optional<at::Tensor>& sinks,
                                                       int64_t sink_tokens) {
  const char* op = "swa::attention.sinks";
  const AttentionShape shape = check_attention(op, q, k, v, window_left, window_right, scale, softcap);
  const SinkArgs sink_args = check_sinks(op, sinks, sink_tokens, q);
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({shape.batch, shape.heads_q, shape.seqlen_q}, q.options().dtype(at::kFloat));
  if (shape.empty()) return {out, lse};
  attention_forward_into(q, k, v, window_left, window_right, softmax_scale(scale, shape.head_dim),
                         softcap, out, lse, sink_args);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CPU, m) {
  m.impl("attention", &attention_cpu);
  m.impl("attention.sinks", &attention_sinks_cpu);
}

}  // namespace swa::cpu

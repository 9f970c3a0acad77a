// Exact CPU backward of swa::attention: argument plumbing, the choice of the
// kernel build for this CPU, and the two parallel passes (dQ per query tile,
// then dK/dV per key tile; no atomics, deterministic by construction). The
// kernels are in cpu/backward_kernel.h (built per instruction set by
// cpu/backward_<isa>.cpp).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/attention.h"
#include "cpu/backward_problem.h"
#include "cpu/isa.h"
#include "cpu/parallel.h"
#include "cpu/tensor_rows.h"
#include "ops/checks.h"
#include "ops/sinks.h"

namespace swa::cpu {
namespace {

constexpr double kLog2eHost = 1.4426950408889634;  // log2(e): lse2 = lse log2(e)

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
    case Isa::kAvx512Bf16:  // the backward has no bf16 dot-product build
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
  // Pass 1 writes lse2 and delta of every row (and sink_grads); pass 2 reads them.
  parallel_workers(q_tasks, default_grain(q_tasks), [&](TaskQueue& queue) { dq_pass(p, queue); });
  parallel_workers(k_tasks, default_grain(k_tasks), [&](TaskQueue& queue) { dkdv_pass(p, queue); });
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

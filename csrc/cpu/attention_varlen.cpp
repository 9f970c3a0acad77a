// CPU backend of attention.varlen and attention_backward.varlen: the packed
// [T, H, D] tensors become one batch [1, H, T, D] (views), the checked
// cu_seqlens the kernels' sequence table (cpu/packed_sequences.h), and the
// exact forward / backward kernels run over (sequence, head, tile) tasks.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "cpu/attention.h"
#include "cpu/forward_problem.h"
#include "ops/checks.h"
#include "ops/sinks.h"
#include "ops/varlen_checks.h"

namespace swa::cpu {
namespace {

// The checked offsets and the task tables of one call.
struct PackedCall {
  at::Tensor cu_q, cu_k;  // int64 [B + 1], CPU
  std::vector<int64_t> q_task_begin, k_task_begin;
  PackedLayout layout;
};

PackedCall packed_call(const char* op, const VarlenShape& shape, const at::Tensor& cu_seqlens_q,
                       const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k) {
  PackedCall c;
  c.cu_q = checked_cu_seqlens_values(op, "cu_seqlens_q", cu_seqlens_q, shape.tokens_q, max_seqlen_q, "max_seqlen_q");
  c.cu_k = checked_cu_seqlens_values(op, "cu_seqlens_k", cu_seqlens_k, shape.tokens_k, max_seqlen_k, "max_seqlen_k");
  c.layout.seqs = PackedSequences{c.cu_q.data_ptr<int64_t>(), c.cu_k.data_ptr<int64_t>(), shape.sequences};
  c.q_task_begin.resize(shape.sequences + 1);
  c.k_task_begin.resize(shape.sequences + 1);
  fill_task_begin(c.layout.seqs, shape.heads.heads_q, kTileLanes, false, c.q_task_begin.data());
  fill_task_begin(c.layout.seqs, shape.heads.heads_kv, kTileLanes, true, c.k_task_begin.data());
  c.layout.q_task_begin = c.q_task_begin.data();
  c.layout.k_task_begin = c.k_task_begin.data();
  return c;
}

std::tuple<at::Tensor, at::Tensor> attention_varlen_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t window_left,
    int64_t window_right, std::optional<double> scale, double softcap, const std::optional<at::Tensor>& sinks,
    int64_t sink_tokens) {
  const char* op = "swa::attention.varlen";
  const VarlenShape shape = check_varlen(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                         window_left, window_right, scale, softcap);
  const SinkArgs sink_args = check_sinks(op, sinks, sink_tokens, packed_as_batch(q));
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({shape.heads.heads_q, shape.tokens_q}, q.options().dtype(at::kFloat));
  const PackedCall call = packed_call(op, shape, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  if (shape.tokens_q == 0 || shape.heads.heads_q == 0) return {out, lse};
  at::Tensor out_b = packed_as_batch(out), lse_b = lse.unsqueeze(0);
  attention_forward_into(packed_as_batch(q), packed_as_batch(k), packed_as_batch(v), window_left, window_right,
                         softmax_scale(scale, shape.heads.head_dim), softcap, out_b, lse_b, sink_args, &call.layout);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_varlen_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t window_left,
    int64_t window_right, std::optional<double> scale, double softcap, bool /*deterministic: always*/,
    const std::optional<at::Tensor>& sinks, int64_t sink_tokens) {
  const char* op = "swa::attention_backward.varlen";
  const VarlenShape shape = check_varlen(op, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                         window_left, window_right, scale, softcap);
  check_bhsd(op, "grad_out", packed_as_batch(grad_out));
  check_bhsd(op, "out", packed_as_batch(out));
  TORCH_CHECK(lse.dim() == 2, op, ": lse must be float32 [Hq, Tq], got shape ", lse.sizes());
  TORCH_CHECK(!grad_lse.has_value() || !grad_lse->defined() || grad_lse->dim() == 2, op,
              ": grad_lse must be float32 [Hq, Tq], got shape ", grad_lse->sizes());
  const PackedCall call = packed_call(op, shape, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k);
  std::optional<at::Tensor> grad_lse_b;
  if (grad_lse.has_value() && grad_lse->defined()) grad_lse_b = grad_lse->unsqueeze(0);
  BackwardResult r = attention_backward_run(op, packed_as_batch(grad_out), grad_lse_b, packed_as_batch(q),
                                            packed_as_batch(k), packed_as_batch(v), packed_as_batch(out),
                                            lse.unsqueeze(0), window_left, window_right, scale, softcap, sinks,
                                            sink_tokens, &call.layout);
  // The gradients come back as [1, H, T, D] tensors shaped like the views.
  return {r.dq.squeeze(0).transpose(0, 1), r.dk.squeeze(0).transpose(0, 1), r.dv.squeeze(0).transpose(0, 1),
          r.dsinks};
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CPU, m) {
  m.impl("attention.varlen", &attention_varlen_cpu);
  m.impl("attention_backward.varlen", &attention_backward_varlen_cpu);
}

}  // namespace swa::cpu

// A consumer torch extension: includes <swa/swa.h>, links libswa_cuda.so
// (swa_cuda.library_path()) and registers its own op on top of swa::attention.
// Built by tests/test_cpp_api.py with torch.utils.cpp_extension.
#include <swa/swa.h>
#include <torch/library.h>
#include <torch/torch.h>

namespace {

// Mistral-style layer attention: W keys including self.
at::Tensor mistral_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             int64_t window) {
  return std::get<0>(swa::attention(q, k, v, window - 1, 0));
}

// Autograd for a C++ caller that only links the library: the gradient of
// sum(out) + sum(lse) with respect to q, k, v, computed entirely in C++.
std::vector<at::Tensor> attention_grads(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, int64_t window_left,
                                        int64_t window_right) {
  at::AutoGradMode enable(true);
  auto qg = q.detach().requires_grad_(true);
  auto kg = k.detach().requires_grad_(true);
  auto vg = v.detach().requires_grad_(true);
  auto [out, lse] = swa::attention(qg, kg, vg, window_left, window_right);
  (out.sum() + lse.sum()).backward();
  return {qg.grad(), kg.grad(), vg.grad()};
}

// gpt-oss-style attention with sink logits and sink tokens, differentiated in
// C++: the gradients of sum(out) + sum(lse) with respect to q, k, v, sinks.
std::vector<at::Tensor> sink_attention_grads(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                             const at::Tensor& sinks, int64_t window, int64_t sink_tokens) {
  at::AutoGradMode enable(true);
  auto qg = q.detach().requires_grad_(true);
  auto kg = k.detach().requires_grad_(true);
  auto vg = v.detach().requires_grad_(true);
  auto sg = sinks.detach().requires_grad_(true);
  auto [out, lse] = swa::attention(qg, kg, vg, window - 1, 0, std::nullopt, 0.0, sg, sink_tokens);
  (out.sum() + lse.sum()).backward();
  return {out.detach(), qg.grad(), kg.grad(), vg.grad(), sg.grad()};
}

// Per-head windows from C++ (Longformer-style mixed heads): the output and
// the gradients of sum(out) + sum(lse) with respect to q, k, v.
std::vector<at::Tensor> per_head_attention_grads(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                 const at::Tensor& window_left, const at::Tensor& window_right) {
  at::AutoGradMode enable(true);
  auto qg = q.detach().requires_grad_(true);
  auto kg = k.detach().requires_grad_(true);
  auto vg = v.detach().requires_grad_(true);
  auto [out, lse] = swa::per_head_attention(qg, kg, vg, window_left, window_right);
  (out.sum() + lse.sum()).backward();
  return {out.detach(), qg.grad(), kg.grad(), vg.grad()};
}

// One continuous-batching step from C++: attend the packed new tokens of B
// sequences over their rolling caches, then append them (cache rows in place).
at::Tensor packed_serve_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& cu_seqlens, int64_t max_seqlen, at::Tensor k_cache,
                             at::Tensor v_cache, const at::Tensor& pos, int64_t window) {
  auto [out, lse] = swa::cache_attention_varlen(q, k, v, cu_seqlens, max_seqlen, k_cache, v_cache, pos, window);
  swa::cache_append_varlen(k_cache, v_cache, k, v, cu_seqlens, pos);
  return out;
}

}  // namespace

TORCH_LIBRARY(swa_consumer, m) {
  m.def("sink_attention_grads(Tensor q, Tensor k, Tensor v, Tensor sinks, int window, int sink_tokens) -> Tensor[]",
        &sink_attention_grads);
  m.def("packed_serve_step(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, int max_seqlen, Tensor(a!) k_cache, "
        "Tensor(b!) v_cache, Tensor pos, int window) -> Tensor",
        &packed_serve_step);
  m.def("per_head_attention_grads(Tensor q, Tensor k, Tensor v, Tensor window_left, Tensor window_right) "
        "-> Tensor[]",
        &per_head_attention_grads);
  m.def("mistral_attention(Tensor q, Tensor k, Tensor v, int window) -> Tensor", &mistral_attention);
  m.def("attention_grads(Tensor q, Tensor k, Tensor v, int window_left, int window_right) -> Tensor[]",
        &attention_grads);
}

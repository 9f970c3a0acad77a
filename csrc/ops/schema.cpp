// Every op schema of the swa namespace, declared once. Backends register their
// kernels where they live (csrc/cpu, csrc/cuda); autograd in autograd.cpp.
// Released schemas never change: new capabilities arrive as overloads.
#include <torch/library.h>

TORCH_LIBRARY(swa, m) {
  // Banded attention; see csrc/include/swa/kernels/band.h for the window.
  m.def(
      "attention(Tensor q, Tensor k, Tensor v, int window_left=-1, int window_right=0, "
      "float? scale=None, float softcap=0.0) -> (Tensor out, Tensor lse)");
  // Gradients of attention's (out, lse) with respect to q, k, v. grad_lse may
  // be None (zero). deterministic: bit-identical results run to run.
  m.def(
      "attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor lse, int window_left, int window_right, float? scale, float softcap, "
      "bool deterministic=False) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  // Attention sinks, both kinds (see swa/kernels/params.h): sinks, float32
  // [Hq] logits that join every row's softmax without a value (gpt-oss), and
  // sink_tokens, keys 0 .. S-1 seen by every row beside the band (StreamingLLM).
  // The keyword-only pair (sinks, sink_tokens) ends every overload that takes
  // them (this one, varlen, the cache's), so that they combine.
  m.def(
      "attention.sinks(Tensor q, Tensor k, Tensor v, int window_left=-1, int window_right=0, "
      "float? scale=None, float softcap=0.0, *, Tensor? sinks=None, int sink_tokens=0) "
      "-> (Tensor out, Tensor lse)");
  // grad_sinks: float32 [Hq] (the sum over batch and rows), empty [0] when
  // sinks is None.
  m.def(
      "attention_backward.sinks(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor lse, int window_left, int window_right, float? scale, float softcap, "
      "bool deterministic=False, *, Tensor? sinks=None, int sink_tokens=0) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_sinks)");
  // Per-head windows (Longformer's and later models' mixed windows):
  // window_left / window_right are integer tensors [Hq], query head h seeing
  // keys p - window_left[h] .. p + window_right[h] (-1: unbounded), in one
  // call; the kernels read their head's window and skip its tiles. The
  // windows are read on the host (a CUDA tensor costs one synchronisation).
  // The sink arguments as in attention.sinks.
  m.def(
      "attention.per_head(Tensor q, Tensor k, Tensor v, Tensor window_left, Tensor window_right, "
      "float? scale=None, float softcap=0.0, *, Tensor? sinks=None, int sink_tokens=0) "
      "-> (Tensor out, Tensor lse)");
  m.def(
      "attention_backward.per_head(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor lse, Tensor window_left, Tensor window_right, float? scale, float softcap, "
      "bool deterministic=False, *, Tensor? sinks=None, int sink_tokens=0) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_sinks)");
  // Packed variable-length sequences (FlashAttention's varlen layout): q
  // [Tq, Hq, D], k/v [Tk, Hkv, D] hold the tokens of B sequences back to
  // back; sequence b owns rows cu_seqlens_q[b] .. cu_seqlens_q[b+1]-1 (int32
  // [B + 1] prefix sums from 0) and keys likewise; each is banded on its own
  // lengths (bottom-right alignment), nothing crosses a boundary. lse is
  // float32 [Hq, Tq]. The sink arguments as in attention.sinks.
  m.def(
      "attention.varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, "
      "int max_seqlen_q, int max_seqlen_k, int window_left=-1, int window_right=0, float? scale=None, "
      "float softcap=0.0, *, Tensor? sinks=None, int sink_tokens=0) -> (Tensor out, Tensor lse)");
  m.def(
      "attention_backward.varlen(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor lse, Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, "
      "int max_seqlen_k, int window_left, int window_right, float? scale, float softcap, "
      "bool deterministic=False, *, Tensor? sinks=None, int sink_tokens=0) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_sinks)");
  // Rolling KV cache; see csrc/include/swa/kernels/ring.h.
  m.def("cache_append(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor pos) -> ()");
  m.def("cache_gather(Tensor k_cache, Tensor v_cache, Tensor pos, int n) -> (Tensor, Tensor)");
  m.def(
      "cache_attention(Tensor q, Tensor k_new, Tensor v_new, Tensor k_cache, Tensor v_cache, "
      "Tensor pos, int window, float? scale=None, float softcap=0.0) -> (Tensor, Tensor)");
  // A cache with S sink slots before its ring (ring.h): cache_append also
  // fills sink slot p for positions p < S; cache_attention sees the sink
  // positions beside the window, and the sinks logits.
  m.def(
      "cache_append.sinks(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor pos, *, "
      "int sink_tokens) -> ()");
  m.def(
      "cache_attention.sinks(Tensor q, Tensor k_new, Tensor v_new, Tensor k_cache, Tensor v_cache, "
      "Tensor pos, int window, float? scale=None, float softcap=0.0, *, Tensor? sinks=None, "
      "int sink_tokens=0) -> (Tensor, Tensor)");
  // Packed new tokens of B sequences at different stages (continuous
  // batching: decoding steps and prefill chunks in one call): k, v (k_new,
  // v_new) [T, Hkv, D] and q [T, Hq, D] hold the tokens back to back,
  // sequence b's rows cu_seqlens[b] .. cu_seqlens[b+1]-1 (int32 [B + 1]
  // prefix sums from 0) at positions pos[b] .. of ring b, as the padded ops
  // do them; zero-length sequences are left alone. cache_attention.varlen
  // returns out [T, Hq, D] and lse float32 [Hq, T] (attention.varlen's layout).
  m.def(
      "cache_append.varlen(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor k, Tensor v, Tensor cu_seqlens, "
      "Tensor pos, *, int sink_tokens=0) -> ()");
  m.def(
      "cache_attention.varlen(Tensor q, Tensor k_new, Tensor v_new, Tensor cu_seqlens_q, int max_seqlen_q, "
      "Tensor k_cache, Tensor v_cache, Tensor pos, int window, float? scale=None, float softcap=0.0, *, "
      "Tensor? sinks=None, int sink_tokens=0) -> (Tensor out, Tensor lse)");
}

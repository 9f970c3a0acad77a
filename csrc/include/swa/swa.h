// swa_cuda's C++ API: one function per op, calling through the PyTorch
// dispatcher, so C++ callers get the same CPU/CUDA dispatch and autograd as
// Python's torch.ops.swa.*. Link libswa_cuda.so (swa_cuda.library_path(), or
// the CMake target swa_cuda::swa_cuda). Plain C++: no CUDA headers.
//
// Window convention (see swa/kernels/band.h): query row i sits at key
// position p = i + Sk - Sq and sees keys j with
// p - window_left <= j <= p + window_right; -1 = unbounded on that side.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "swa/export.h"

namespace swa {

// (out [B, Hq, Sq, D] in q's dtype and layout, lse [B, Hq, Sq] float32).
// q [B, Hq, Sq, D]; k, v [B, Hkv, Sk, D] with Hq a multiple of Hkv.
SWA_API std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& q, const at::Tensor& k,
                                                     const at::Tensor& v, int64_t window_left = -1,
                                                     int64_t window_right = 0,
                                                     std::optional<double> scale = std::nullopt,
                                                     double softcap = 0.0);

// (grad_q, grad_k, grad_v) of attention's (out, lse); grad_lse may be empty.
SWA_API std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    int64_t window_left, int64_t window_right, std::optional<double> scale, double softcap,
    bool deterministic = false);

// Attention with sinks (swa::attention.sinks): sinks, float32 [Hq] logits
// that join every row's softmax without a value (gpt-oss; lse includes
// them), and/or sink_tokens S, keys 0 .. S-1 seen by every query beside its
// window (StreamingLLM). Differentiable in q, k, v and sinks.
SWA_API std::tuple<at::Tensor, at::Tensor> attention(const at::Tensor& q, const at::Tensor& k,
                                                     const at::Tensor& v, int64_t window_left,
                                                     int64_t window_right, std::optional<double> scale,
                                                     double softcap, const std::optional<at::Tensor>& sinks,
                                                     int64_t sink_tokens = 0);

// (grad_q, grad_k, grad_v, grad_sinks) of attention with sinks; grad_sinks is
// float32 [Hq] (empty [0] without sinks).
SWA_API std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    int64_t window_left, int64_t window_right, std::optional<double> scale, double softcap,
    bool deterministic, const std::optional<at::Tensor>& sinks, int64_t sink_tokens = 0);

// Per-head windows (swa::attention.per_head): window_left / window_right
// are integer tensors [Hq] (any device; read on the host), query head h
// seeing keys p - window_left[h] .. p + window_right[h] (-1: unbounded).
// Sinks as in attention above. Differentiable in q, k, v and sinks.
SWA_API std::tuple<at::Tensor, at::Tensor> per_head_attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& window_left,
    const at::Tensor& window_right, std::optional<double> scale = std::nullopt, double softcap = 0.0,
    const std::optional<at::Tensor>& sinks = std::nullopt, int64_t sink_tokens = 0);

// (grad_q, grad_k, grad_v, grad_sinks) of per_head_attention.
SWA_API std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> per_head_attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& window_left, const at::Tensor& window_right, std::optional<double> scale, double softcap,
    bool deterministic = false, const std::optional<at::Tensor>& sinks = std::nullopt, int64_t sink_tokens = 0);

// Packed variable-length sequences (swa::attention.varlen, FlashAttention's
// layout): q [Tq, Hq, D], k/v [Tk, Hkv, D], cu_seqlens_q/k int32 [B + 1]
// prefix sums from 0; each sequence is banded on its own lengths. Returns
// (out [Tq, Hq, D], lse [Hq, Tq] float32). Sinks as in attention above.
SWA_API std::tuple<at::Tensor, at::Tensor> varlen_attention(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k, int64_t window_left = -1,
    int64_t window_right = 0, std::optional<double> scale = std::nullopt, double softcap = 0.0,
    const std::optional<at::Tensor>& sinks = std::nullopt, int64_t sink_tokens = 0);

// (grad_q, grad_k, grad_v, grad_sinks) of varlen_attention.
SWA_API std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const at::Tensor& cu_seqlens_q, const at::Tensor& cu_seqlens_k, int64_t max_seqlen_q, int64_t max_seqlen_k,
    int64_t window_left, int64_t window_right, std::optional<double> scale, double softcap,
    bool deterministic = false, const std::optional<at::Tensor>& sinks = std::nullopt, int64_t sink_tokens = 0);

// Rolling KV cache (ring of capacity C; position p lives in slot p % C).
// Writes k, v [B, Hkv, T, D] for positions pos .. pos + T - 1 (pos int64 [B]).
SWA_API void cache_append(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k,
                          const at::Tensor& v, const at::Tensor& pos);

// The n most recent tokens before pos, oldest first: ([B, Hkv, n, D], same).
SWA_API std::tuple<at::Tensor, at::Tensor> cache_gather(const at::Tensor& k_cache,
                                                        const at::Tensor& v_cache,
                                                        const at::Tensor& pos, int64_t n);

// Attention of q [B, Hq, T, D] at positions pos .. pos + T - 1 over the ring
// and k_new, v_new [B, Hkv, T, D], window W keys incl. self; ring unchanged.
SWA_API std::tuple<at::Tensor, at::Tensor> cache_attention(
    const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
    const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& pos, int64_t window,
    std::optional<double> scale = std::nullopt, double softcap = 0.0);

// A cache with sink_tokens S sink slots before each ring ([B, Hkv, S + C, D]:
// positions 0 .. S-1 kept forever; swa::cache_append.sinks).
SWA_API void cache_append(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                          const at::Tensor& pos, int64_t sink_tokens);

// cache_attention whose queries also see the S sink positions and the sink
// logits sinks (float32 [Hq] or none; swa::cache_attention.sinks).
SWA_API std::tuple<at::Tensor, at::Tensor> cache_attention(
    const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new, const at::Tensor& k_cache,
    const at::Tensor& v_cache, const at::Tensor& pos, int64_t window, std::optional<double> scale, double softcap,
    const std::optional<at::Tensor>& sinks, int64_t sink_tokens = 0);

// Packed new tokens of B sequences (continuous batching; swa::cache_append.varlen):
// k, v [T, Hkv, D], sequence b's rows cu_seqlens[b] .. cu_seqlens[b+1]-1
// (int32 [B + 1]) at positions pos[b] .. of ring b.
SWA_API void cache_append_varlen(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k,
                                 const at::Tensor& v, const at::Tensor& cu_seqlens, const at::Tensor& pos,
                                 int64_t sink_tokens = 0);

// The packed form of cache_attention (swa::cache_attention.varlen): q
// [T, Hq, D], k_new, v_new [T, Hkv, D]; returns (out [T, Hq, D], lse [Hq, T]).
SWA_API std::tuple<at::Tensor, at::Tensor> cache_attention_varlen(
    const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new, const at::Tensor& cu_seqlens_q,
    int64_t max_seqlen_q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& pos,
    int64_t window, std::optional<double> scale = std::nullopt, double softcap = 0.0,
    const std::optional<at::Tensor>& sinks = std::nullopt, int64_t sink_tokens = 0);

// The torch and CUDA versions this library was built against ("" = no CUDA).
SWA_API const char* built_torch_version();
SWA_API const char* built_cuda_version();

}  // namespace swa

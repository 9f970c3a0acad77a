// The CPU decode path of cache_attention (cpu/decode_problem.h): few new
// tokens against the ring, read in place. Arguments are checked by the caller.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "ops/sinks.h"

namespace swa::cpu {

// Whether cache_attention with T new tokens and `group` query heads per kv
// head takes the decode path (else the general one, cpu/cache.cpp).
bool decode_path_applies(int64_t new_len, int64_t group);

// out [B, Hq, T, D] and lse [B, Hq, T] (float32) of cache_attention, written
// in place; pos is a CPU int64 [B] tensor of non-negative positions. sinks:
// sink logits, and sinks.tokens sink slots before the ring (ring.h).
void cache_decode_into(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                       const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& pos,
                       int64_t window, double scale, double softcap, at::Tensor& out, at::Tensor& lse,
                       const SinkArgs& sinks = {});

// The packed form (cache_attention.varlen): q [T, Hq, D], k_new, v_new
// [T, Hkv, D], out [T, Hq, D] and lse [Hq, T] hold the new tokens of every
// sequence, sequence b's at rows cu_seqlens[b] .. cu_seqlens[b+1] - 1 (the
// checked CPU values); runs the sequences listed (each with T_b >= 1 and
// decode_path_applies(T_b, group)) and leaves the other rows alone.
void cache_decode_varlen_into(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new,
                              const int64_t* cu_seqlens, const std::vector<int64_t>& sequences,
                              const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& pos,
                              int64_t window, double scale, double softcap, at::Tensor& out, at::Tensor& lse,
                              const SinkArgs& sinks = {});

}  // namespace swa::cpu

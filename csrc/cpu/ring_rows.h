// One sequence's rows of a rolling cache buffer (Hkv, S + C, D) on the CPU:
// S sink slots, then the ring of C slots (swa/kernels/ring.h). A run of
// consecutive positions occupies consecutive ring slots, wrapping once at
// most (a run is never longer than C), so every ring access here is at most
// two slices of the ring. Used by the padded and the packed cache ops.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

#include "swa/kernels/ring.h"

namespace swa::cpu {

// The ring of one sequence's buffer (Hkv, S + C, D): its slots after the S sink slots.
at::Tensor ring_of(const at::Tensor& buffer, int64_t sinks);

// The n ring rows starting at slot, wrapping past C: (Hkv, n, D). A view when
// they do not wrap, else a copy. ring: (Hkv, C, D), the ring's slots only.
at::Tensor read_ring(const at::Tensor& ring, int64_t slot, int64_t n);

// cache_append of one sequence: k, v (Hkv, T, D) at positions pos .. pos + T - 1
// into the ring after `sinks` sink slots of k_buf, v_buf (Hkv, S + C, D) (the
// last C when T > C), and the positions below `sinks` into their sink slots too.
void append_sequence(const at::Tensor& k_buf, const at::Tensor& v_buf, const at::Tensor& k, const at::Tensor& v,
                     int64_t pos, int64_t sinks);

// The virtual key sequence of one sequence of cache_attention (ring.h): its
// keys and values (Hkv, seqlen_k, D) — the sink slots the window no longer
// holds, the ring slots of positions key_start .. pos - 1, then k_new, v_new
// (Hkv, T, D). A view when that is k_new alone, else a copy.
std::pair<at::Tensor, at::Tensor> virtual_keys(const at::Tensor& k_buf, const at::Tensor& v_buf,
                                               const at::Tensor& k_new, const at::Tensor& v_new,
                                               const SWA_KERNEL_NS::RingView& view);

}  // namespace swa::cpu

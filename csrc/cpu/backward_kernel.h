// The CPU backward kernels of swa::attention: FlashAttention-2's algorithm in
// two passes that need no atomics, so results are deterministic by
// construction. With scores in base 2 (S = scale log2(e) q k, cpu/forward_kernel.h)
// and P = 2^(S - lse2):
//   dQ pass, per (batch, query head, tile of kTileLanes query rows), the rows
//   in vector lanes (a LaneTile over the keys, cpu/lane_tile.h):
//     delta = rowsum(dO * O) - dlse                                  (rows)
//     sweep 1: row max and sum over the keys -> lse2, recomputed in the
//              accumulation type (float64 inputs get float64 gradients,
//              not ones limited by the float32 lse output; 16-bit ones an
//              exact P = 1 where a row sees one key); float32 inputs take
//              lse2 from the forward's lse instead (lse2_given)
//     sweep 2: S^T = K Q^T, dP^T = V dO^T                      (keys, rows)
//              dS^T = P^T (dP^T - delta) [(1 - tanh^2) under softcap]
//              dQ^T += K^T dS^T                                   (D, rows)
//     dQ = scale (dQ^T)^T
//   dK/dV pass, per (batch, kv head, tile of kTileLanes keys), the keys in
//   vector lanes (a LaneTile over the query rows that see them), over the
//   query heads of the group:
//     S = Q K^T, dP = dO V^T, dS = P (dP - delta) [...]        (rows, keys)
//     dV^T += dO^T P, dK^T += Q^T dS                              (D, keys)
//     dK = scale (dK^T)^T, dV = (dV^T)^T
//   One pass (BackwardProblem::fused_dq): a dK/dV task is a chunk of keys of
//   a kv head whose key tiles go in order (one query head after the other),
//   and each also adds dQ += dS K (summed over the lanes) to the rows it
//   sees, so S and dP are computed once: 5 Q.K-sized products instead of 8
//   (7 with lse2 given); the dQ pass then only writes delta and lse2
//   (stats_only; float32 and bf16 pairs read lse2, no sweep 1), and with a
//   few sink tokens also the sink runs' part of dQ, dK and dV (on T rows
//   for kDot as well). bf16 with
//   an even head dim runs it on bf16 pairs where the CPU has AVX512-BF16
//   (kDot, cpu/backward_avx512_bf16.cpp): every product on vdpbf16ps, P and
//   dS rounded to bf16 for the products that take them, as FlashAttention.
// Included by the per-ISA translation units only (cpu/isa.h).
#pragma once

#include "cpu/backward_dkdv_kernel.h"
#include "cpu/backward_dq_kernel.h"

namespace swa::cpu::SWA_CPU_ISA_NS {

// One worker of each pass with the kernels of one instruction set.
template <template <class, class, bool> class Kernel, class Cfg>
void run_backward_tasks(const BackwardProblem& p, TaskQueue& queue) {
  switch (p.dtype) {
    case c10::kDouble: Kernel<Cfg, double, false>(p).template run<double>(queue); break;
    case c10::kFloat: Kernel<Cfg, float, false>(p).template run<float>(queue); break;
    case c10::kHalf: Kernel<Cfg, float, false>(p).template run<c10::Half>(queue); break;
    case c10::kBFloat16: Kernel<Cfg, float, false>(p).template run<c10::BFloat16>(queue); break;
    default: TORCH_CHECK(false, "swa::attention_backward: unsupported dtype ", p.dtype);
  }
}

// The one pass for bf16 with an even head dim on bf16 pairs (AVX512-BF16).
template <template <class, class, bool> class Kernel, class Cfg>
void run_backward_dot_tasks(const BackwardProblem& p, TaskQueue& queue) {
  TORCH_CHECK(p.dtype == c10::kBFloat16 && p.head_dim % 2 == 0 && p.fused_dq,
              "swa::attention_backward: the bf16 dot-product backward takes bf16 with an even head dim, one pass");
  Kernel<Cfg, float, true>(p).template run<c10::BFloat16>(queue);
}

}  // namespace swa::cpu::SWA_CPU_ISA_NS

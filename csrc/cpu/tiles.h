// Tile helpers of the exact CPU kernels. A tile is a block of query rows
// against the block of keys they see (band skipping: keys outside the band's
// range are never touched). Tiles are ATen tensors in the accumulation type
// (float32, or float64 for float64 inputs), so products go through ATen's
// BLAS-backed matmul; work is O(Sq * W * D) and memory O(tile).
#pragma once

#include <ATen/ATen.h>

#include "swa/kernels/band.h"

namespace swa::cpu {

using SWA_KERNEL_NS::Band;

constexpr int64_t kBlockM = 64;  // query rows per task
constexpr int64_t kBlockN = 64;  // keys per task in the dK/dV pass

inline at::ScalarType accum_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// rows [begin, end) of head h of batch b of a [B, H, S, D] tensor, as (S', D)
// in the accumulation type.
inline at::Tensor rows(const at::Tensor& t, int64_t b, int64_t h, int64_t begin, int64_t end) {
  return t.select(0, b).select(0, h).narrow(0, begin, end - begin).to(accum_type(t.scalar_type()));
}

// Visibility of keys [n0, n1) from query rows [m0, m1): bool (M, N), or an
// undefined tensor when every pair is visible (interior tiles skip masking).
inline at::Tensor band_mask(const Band& band, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  bool all_visible = band.key_begin(m1 - 1) <= n0 && n1 <= band.key_end(m0);
  if (all_visible) return {};
  auto opts = at::TensorOptions().dtype(at::kLong);
  at::Tensor begin = at::empty({m1 - m0, 1}, opts);
  at::Tensor end = at::empty({m1 - m0, 1}, opts);
  auto* b = begin.data_ptr<int64_t>();
  auto* e = end.data_ptr<int64_t>();
  for (int64_t i = m0; i < m1; ++i) {
    b[i - m0] = band.key_begin(i);
    e[i - m0] = band.key_end(i);
  }
  at::Tensor keys = at::arange(n0, n1, opts).unsqueeze(0);  // (1, N)
  return keys.ge(begin).logical_and_(keys.lt(end));         // (M, N)
}

// Scores of a tile: s = scale * q k^T, capped by softcap (s -> c tanh(s / c))
// when softcap > 0, masked to -inf outside the band. tanh_out, when given,
// receives tanh(s / c) (the softcap derivative needs it; unmasked).
struct ScoreTile {
  at::Tensor s;     // (M, N) scaled, capped, masked scores
  at::Tensor tanh;  // (M, N) tanh(x / softcap), defined only with softcap
  at::Tensor mask;  // (M, N) bool visibility, undefined when all visible
};

inline ScoreTile score_tile(const at::Tensor& q_tile, const at::Tensor& k_tile, double scale,
                            double softcap, const Band& band, int64_t m0, int64_t n0) {
  ScoreTile t;
  t.s = at::matmul(q_tile, k_tile.t()).mul_(scale);  // (M, N)
  if (softcap > 0) {
    t.tanh = t.s.div(softcap).tanh_();
    t.s = t.tanh.mul(softcap);
  }
  t.mask = band_mask(band, m0, m0 + q_tile.size(0), n0, n0 + k_tile.size(0));
  if (t.mask.defined()) t.s.masked_fill_(t.mask.logical_not(), -INFINITY);
  return t;
}

// P = exp(s - lse) for a tile; rows with lse = -inf (no visible key) give 0.
inline at::Tensor probabilities(const at::Tensor& s, const at::Tensor& lse_rows) {
  at::Tensor lse_safe = at::where(lse_rows.isneginf(), INFINITY, lse_rows);  // (M)
  return s.sub(lse_safe.unsqueeze(1)).exp_();
}

}  // namespace swa::cpu

// Exact CPU forward of swa::attention: for each (batch, query head, query tile)
// the scores against the keys the tile's rows see, a softmax, and P V.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/attention.h"
#include "cpu/tiles.h"
#include "ops/checks.h"

namespace swa::cpu {

void attention_forward_into(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            int64_t window_left, int64_t window_right, double scale,
                            double softcap, at::Tensor& out, at::Tensor& lse) {
  const int64_t batch = q.size(0), heads_q = q.size(1), seqlen_q = q.size(2);
  const int64_t group = heads_q / k.size(1);
  const Band band{seqlen_q, k.size(2), window_left, window_right};
  const int64_t m_blocks = (seqlen_q + kBlockM - 1) / kBlockM;

  at::parallel_for(0, batch * heads_q * m_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t m_block = task % m_blocks;
      const int64_t h = (task / m_blocks) % heads_q;
      const int64_t b = task / (m_blocks * heads_q);
      const int64_t m0 = m_block * kBlockM;
      const int64_t m1 = std::min(m0 + kBlockM, seqlen_q);
      at::Tensor out_tile = out.select(0, b).select(0, h).narrow(0, m0, m1 - m0);  // (M, D)
      at::Tensor lse_tile = lse.select(0, b).select(0, h).narrow(0, m0, m1 - m0);  // (M)

      auto keys = SWA_KERNEL_NS::key_range(band, m0, m1);
      if (keys.empty()) {  // no row of the tile sees a key
        out_tile.zero_();
        lse_tile.fill_(-INFINITY);
        continue;
      }
      at::Tensor q_tile = rows(q, b, h, m0, m1);                         // (M, D)
      at::Tensor k_tile = rows(k, b, h / group, keys.begin, keys.end);  // (N, D)
      at::Tensor v_tile = rows(v, b, h / group, keys.begin, keys.end);  // (N, D)
      ScoreTile s = score_tile(q_tile, k_tile, scale, softcap, band, m0, keys.begin);
      at::Tensor row_lse = at::logsumexp(s.s, {1});          // (M), -inf for empty rows
      at::Tensor p = probabilities(s.s, row_lse);            // (M, N)
      out_tile.copy_(at::matmul(p, v_tile));                 // (M, D)
      lse_tile.copy_(row_lse);
    }
  });
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

}  // namespace

TORCH_LIBRARY_IMPL(swa, CPU, m) { m.impl("attention", &attention_cpu); }

}  // namespace swa::cpu

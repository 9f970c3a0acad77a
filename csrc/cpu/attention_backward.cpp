// Exact CPU backward of swa::attention, in two passes that need no atomics and
// are deterministic by construction:
//   1. per (batch, query head, query tile): D = rowsum(dO * O) - dlse and
//      dQ = scale * dX K over the keys the tile sees; the row's lse is
//      recomputed there in the accumulation type (float64 inputs get float64
//      gradients, not ones limited by the float32 lse output);
//   2. per (batch, kv head, key tile): over the query heads of the group and
//      the rows that see the tile, dV = P^T dO and dK = scale * dX^T Q.
// With P = exp(s - lse), dS = P * (dO V^T - D), and dX = dS * (1 - tanh^2)
// under softcap (s = c tanh(x / c)), else dX = dS.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/tiles.h"
#include "ops/checks.h"

namespace swa::cpu {
namespace {

struct BackwardInputs {
  at::Tensor dout, q, k, v, out;
  at::Tensor softmax_d;  // [B, Hq, Sq] accumulation type: rowsum(dO * O) - dlse
  at::Tensor lse_acc;    // [B, Hq, Sq] accumulation type: recomputed lse
  double scale;
  double softcap;
  Band band;
  int64_t group;
};

// dX of a tile (the gradient with respect to the scaled, uncapped scores).
at::Tensor score_gradient(const BackwardInputs& in, const ScoreTile& s, const at::Tensor& lse_rows,
                          const at::Tensor& dout_tile, const at::Tensor& v_tile,
                          const at::Tensor& d_rows, at::Tensor* p_out) {
  at::Tensor p = probabilities(s.s, lse_rows);                 // (M, N)
  at::Tensor dp = at::matmul(dout_tile, v_tile.t());           // (M, N)
  at::Tensor dx = dp.sub_(d_rows.unsqueeze(1)).mul_(p);        // dS
  if (in.softcap > 0) dx.mul_(1 - s.tanh * s.tanh);            // through the cap
  if (p_out) *p_out = p;
  return dx;
}

// Pass 1: D and dQ for query rows [m0, m1) of head h of batch b.
void query_tile_pass(const BackwardInputs& in, int64_t b, int64_t h, int64_t m0, int64_t m1,
                     at::Tensor& dq) {
  at::Tensor dq_tile = dq.select(0, b).select(0, h).narrow(0, m0, m1 - m0);  // (M, D)
  at::Tensor dout_tile = rows(in.dout, b, h, m0, m1);                         // (M, D)
  at::Tensor d_rows = (dout_tile * rows(in.out, b, h, m0, m1)).sum(1);        // (M)
  in.softmax_d.select(0, b).select(0, h).narrow(0, m0, m1 - m0).add_(d_rows);

  at::Tensor lse_rows = in.lse_acc.select(0, b).select(0, h).narrow(0, m0, m1 - m0);  // (M)
  auto keys = SWA_KERNEL_NS::key_range(in.band, m0, m1);
  if (keys.empty()) {
    dq_tile.zero_();
    lse_rows.fill_(-INFINITY);
    return;
  }
  const int64_t hk = h / in.group;
  at::Tensor q_tile = rows(in.q, b, h, m0, m1);                  // (M, D)
  at::Tensor k_tile = rows(in.k, b, hk, keys.begin, keys.end);   // (N, D)
  at::Tensor v_tile = rows(in.v, b, hk, keys.begin, keys.end);   // (N, D)
  at::Tensor d_full = in.softmax_d.select(0, b).select(0, h).narrow(0, m0, m1 - m0);
  ScoreTile s = score_tile(q_tile, k_tile, in.scale, in.softcap, in.band, m0, keys.begin);
  lse_rows.copy_(at::logsumexp(s.s, {1}));
  at::Tensor dx = score_gradient(in, s, lse_rows, dout_tile, v_tile, d_full, nullptr);
  dq_tile.copy_(at::matmul(dx, k_tile).mul_(in.scale));  // (M, D)
}

// Pass 2: dK and dV for keys [n0, n1) of kv head hk of batch b.
void key_tile_pass(const BackwardInputs& in, int64_t b, int64_t hk, int64_t n0, int64_t n1,
                   at::Tensor& dk, at::Tensor& dv) {
  at::Tensor k_tile = rows(in.k, b, hk, n0, n1);  // (N, D)
  at::Tensor v_tile = rows(in.v, b, hk, n0, n1);  // (N, D)
  at::Tensor dk_acc = at::zeros_like(k_tile);     // (N, D)
  at::Tensor dv_acc = at::zeros_like(v_tile);     // (N, D)
  auto query_rows = SWA_KERNEL_NS::row_range(in.band, n0, n1);  // rows that see [n0, n1)
  if (!query_rows.empty()) {
    const int64_t m0 = query_rows.begin, m1 = query_rows.end;
    for (int64_t g = 0; g < in.group; ++g) {
      const int64_t h = hk * in.group + g;
      at::Tensor q_tile = rows(in.q, b, h, m0, m1);        // (M, D)
      at::Tensor dout_tile = rows(in.dout, b, h, m0, m1);  // (M, D)
      at::Tensor lse_rows = in.lse_acc.select(0, b).select(0, h).narrow(0, m0, m1 - m0);
      at::Tensor d_rows = in.softmax_d.select(0, b).select(0, h).narrow(0, m0, m1 - m0);
      ScoreTile s = score_tile(q_tile, k_tile, in.scale, in.softcap, in.band, m0, n0);
      at::Tensor p;
      at::Tensor dx = score_gradient(in, s, lse_rows, dout_tile, v_tile, d_rows, &p);
      dv_acc.add_(at::matmul(p.t(), dout_tile));             // (N, D)
      dk_acc.add_(at::matmul(dx.t(), q_tile), in.scale);     // (N, D)
    }
  }
  dk.select(0, b).select(0, hk).narrow(0, n0, n1 - n0).copy_(dk_acc);
  dv.select(0, b).select(0, hk).narrow(0, n0, n1 - n0).copy_(dv_acc);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    int64_t window_left, int64_t window_right, std::optional<double> scale, double softcap,
    bool /*deterministic: always*/) {
  const AttentionShape shape = check_attention_backward("swa::attention_backward", grad_out, grad_lse, q,
                                                        k, v, out, lse, window_left, window_right,
                                                        scale, softcap);
  const std::vector<int64_t> lse_shape{shape.batch, shape.heads_q, shape.seqlen_q};
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  if (k.numel() == 0 || q.numel() == 0) {
    dq.zero_(), dk.zero_(), dv.zero_();
    return {dq, dk, dv};
  }
  const auto acc = accum_type(q.scalar_type());
  BackwardInputs in{grad_out, q, k, v, out, at::Tensor(), at::empty(lse_shape, q.options().dtype(acc)),
                    softmax_scale(scale, shape.head_dim),
                    softcap, Band{shape.seqlen_q, shape.seqlen_k, window_left, window_right},
                    shape.group()};
  in.softmax_d = (grad_lse.has_value() && grad_lse->defined())
                     ? grad_lse->neg().to(acc).contiguous()
                     : at::zeros(lse_shape, q.options().dtype(acc));

  const int64_t m_blocks = (shape.seqlen_q + kBlockM - 1) / kBlockM;
  at::parallel_for(0, shape.batch * shape.heads_q * m_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t m_block = task % m_blocks;
      const int64_t h = (task / m_blocks) % shape.heads_q;
      const int64_t b = task / (m_blocks * shape.heads_q);
      const int64_t m0 = m_block * kBlockM;
      query_tile_pass(in, b, h, m0, std::min(m0 + kBlockM, shape.seqlen_q), dq);
    }
  });

  const int64_t n_blocks = (shape.seqlen_k + kBlockN - 1) / kBlockN;
  at::parallel_for(0, shape.batch * shape.heads_kv * n_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n_block = task % n_blocks;
      const int64_t hk = (task / n_blocks) % shape.heads_kv;
      const int64_t b = task / (n_blocks * shape.heads_kv);
      const int64_t n0 = n_block * kBlockN;
      key_tile_pass(in, b, hk, n0, std::min(n0 + kBlockN, shape.seqlen_k), dk, dv);
    }
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CPU, m) { m.impl("attention_backward", &attention_backward_cpu); }

}  // namespace swa::cpu

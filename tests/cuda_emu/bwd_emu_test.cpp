// Runs the CUDA backward kernels (csrc/cuda/kernels/bwd_*.cuh) on the CPU
// through the emulator in fake/ and compares dq, dk, dv with a float64
// reference computed from the definitions: banded windows, GQA, softcap,
// dlse, strided layouts, lengths that are not tile multiples, both dQ modes
// (atomics + convert, deterministic dQ kernel), and the exact kernels for
// fp32 / fp64 (and 16 bit). Attention sinks, both kinds: sink tokens (keys
// 0 .. S-1 seen beside the band, from 1 key to more than a key tile of either
// kernel) and sink logits (a value-less logit per head in every row's
// softmax: in the forward's lse, recomputed by the fp64 path); d sinks from
// the kernels' row statistics as the op computes it (ops/sinks.h). Packed
// sequences (cu_seqlens_q/k: [T, H, D] operands, lse and the row workspaces
// [Hq, T]; empty sequences, Sq != Sk per sequence, NaN in the rows between
// sequences' seen keys). The reference's visibility is written out here, not
// taken from band.h.
// Built and run by run.sh (g++, C++20; needs no GPU).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "element_types.h"
#include "bwd_dkdv_kernel.cuh"
#include "bwd_dq_kernel.cuh"
#include "bwd_exact.cuh"
#include "bwd_kernel_traits.cuh"
#include "bwd_rows.cuh"
#include "swa/kernels/bwd_tiles.h"
#include "swa/kernels/params.h"

namespace kn = SWA_KERNEL_NS;
using namespace kn::cuda_detail;

namespace {

int failures = 0;      // failed checks
int cases_run = 0, cases_failed = 0;

struct Shape {
  int64_t B, Hq, Hkv, Sq, Sk, D, wl, wr;
  float softcap;
  bool dlse;
  int layout;  // 0: [B, H, S, D] contiguous; 1: [B, S, H, D] with padded rows
  bool deterministic;
  const char* name;
  int64_t sink_tokens = 0;  // keys 0 .. S-1 seen beside the band
  int sink_logits = 0;      // a SinkLogits value
  // Packed sequences (Sq, Sk) when not empty: the operands are [T, H, D]
  // (layout 0: head-major [H, T, D], 1: token-major with padded rows) and
  // B, Sq, Sk above are ignored.
  std::vector<std::pair<int64_t, int64_t>> seqs = {};
  // Per-head windows (attention_backward.per_head) when not empty: query head
  // h's (wl, wr), kernel form; wl / wr above are ignored (params: the union).
  std::vector<int64_t> head_wl = {}, head_wr = {};
};

// The case's shape as query head h sees it (its own window).
Shape head_shape(const Shape& s, int64_t h) {
  Shape t = s;
  if (!s.head_wl.empty()) t.wl = s.head_wl[h], t.wr = s.head_wr[h];
  return t;
}

// One sequence of a case: the padded layout's batch entry b (operand batch b,
// offsets 0), or a packed sequence (operand batch 0, its first rows).
struct Segment {
  int64_t bb;      // operand batch index
  int64_t q0, k0;  // first query / key row in the operands
  int64_t sq, sk;  // its lengths
};

std::vector<Segment> segments_of(const Shape& s) {
  std::vector<Segment> segs;
  if (s.seqs.empty()) {
    for (int64_t b = 0; b < s.B; ++b) segs.push_back({b, 0, 0, s.Sq, s.Sk});
    return segs;
  }
  int64_t q0 = 0, k0 = 0;
  for (const auto& [sq, sk] : s.seqs) {
    segs.push_back({0, q0, k0, sq, sk});
    q0 += sq, k0 += sk;
  }
  return segs;
}

// The case's shape as seen by one sequence (its lengths), for sees().
Shape with_lengths(const Shape& s, const Segment& g) {
  Shape t = s;
  t.Sq = g.sq, t.Sk = g.sk;
  return t;
}

// Sink logits of a case, per query head h (natural units, not scaled).
enum SinkLogits : int {
  kNoSinkLogits = 0,
  kModerate = 1,      // 1 + 0.5 N(0, 1): comparable to the scores
  kVeryNegative = 2,  // -1e4: exp(sink - lse) = 0, as without sinks
  kLarge = 3,         // 30 on even heads (the sink takes almost all weight), moderate on odd
};

double sink_logit(int mode, int64_t h, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 1.0);
  const double moderate = 1.0 + 0.5 * normal(rng);
  switch (mode) {
    case kModerate: return moderate;
    case kVeryNegative: return -1e4;
    case kLarge: return h % 2 == 0 ? 30.0 : moderate;
    default: return -INFINITY;
  }
}

// Does query row i see key j? The op contract (band.h's header, pinned by
// tests/reference.py), written out: the band p - wl <= j <= p + wr around
// the row's key position p = i + Sk - Sq (-1: unbounded), and the sink keys
// j < S whose position the row's right edge reaches.
bool sees(const Shape& s, int64_t i, int64_t j) {
  if (j < 0 || j >= s.Sk) return false;
  const int64_t p = i + s.Sk - s.Sq;
  const bool right_ok = s.wr < 0 || j <= p + s.wr;
  const bool in_band = right_ok && (s.wl < 0 || j >= p - s.wl);
  return in_band || (j < s.sink_tokens && right_ok);
}


// A [B, H, S, D] operand with its strides (elements).
template <typename T>
struct Operand {
  std::vector<T> data;
  int64_t bs, hs, rs;
  int64_t B, H, S, D;
  void init(int64_t b, int64_t h, int64_t s, int64_t d, int layout) {
    B = b, H = h, S = s, D = d;
    if (layout == 0) {
      rs = d, hs = s * d, bs = h * s * d;
      data.assign(static_cast<size_t>(b * h * s * d), from_d<T>(NAN));
    } else {  // [B, S, H, D] with 8 padding elements after each (s, h) row group
      hs = d, rs = h * d + 8, bs = s * rs;
      data.assign(static_cast<size_t>(b * bs), from_d<T>(NAN));
    }
  }
  T& at(int64_t b, int64_t h, int64_t s, int64_t d) { return data[static_cast<size_t>(b * bs + h * hs + s * rs + d)]; }
  kn::TensorRef ref() { return {data.data(), bs, hs, rs}; }
};

struct Reference {
  std::vector<double> dq, dk, dv;  // contiguous [B, H, S, D]
};

double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

template <typename T>
void compare(const char* what, Operand<T>& got, const std::vector<double>& ref, double tol, const Shape& s) {
  const double scale = max_abs(ref) + 1e-6;
  double worst = 0;
  int64_t worst_idx = -1;
  bool nan = false;
  for (int64_t b = 0; b < got.B; ++b)
    for (int64_t h = 0; h < got.H; ++h)
      for (int64_t i = 0; i < got.S; ++i)
        for (int64_t d = 0; d < got.D; ++d) {
          const int64_t idx = ((b * got.H + h) * got.S + i) * got.D + d;
          const double g = to_d(got.at(b, h, i, d));
          if (std::isnan(g)) nan = true;
          const double e = std::fabs(g - ref[static_cast<size_t>(idx)]);
          if (!(e <= worst)) worst = e, worst_idx = idx;
        }
  const bool ok = !nan && worst <= tol * scale;
  if (!ok) {
    ++failures;
    std::printf("FAIL %-28s %s: max err %.3g (tol %.3g x max|ref| %.3g) at flat %lld%s\n", s.name, what, worst, tol,
                scale, static_cast<long long>(worst_idx), nan ? " [NaN]" : "");
  }
}

// compare() for plain vectors (no layout): NaN fails, infinities must match.
void compare_values(const char* what, const std::vector<double>& got, const std::vector<double>& ref, double tol,
                    const Shape& s) {
  const double scale = [&] {
    double m = 0;
    for (double x : ref)
      if (std::isfinite(x)) m = std::max(m, std::fabs(x));
    return m + 1e-6;
  }();
  double worst = 0;
  size_t worst_idx = 0;
  bool bad = false;
  for (size_t idx = 0; idx < ref.size(); ++idx) {
    if (std::isnan(got[idx]) || std::isinf(got[idx]) != std::isinf(ref[idx])) bad = true;
    if (std::isinf(ref[idx])) {
      if (got[idx] != ref[idx]) bad = true;
      continue;
    }
    const double e = std::fabs(got[idx] - ref[idx]);
    if (!(e <= worst)) worst = e, worst_idx = idx;
  }
  if (bad || !(worst <= tol * scale)) {
    ++failures;
    std::printf("FAIL %-28s %s: max err %.3g (tol %.3g x max|ref| %.3g) at %zu%s\n", s.name, what, worst, tol, scale,
                worst_idx, bad ? " [NaN or inf mismatch]" : "");
  }
}

template <typename T, bool kExactPath, int kHeadDim>
void run_case(const Shape& s, uint64_t seed) {
  const int failures_before = failures;
  using Acc = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  const bool packed = !s.seqs.empty();
  const std::vector<Segment> segs = segments_of(s);
  // Operand extents: [B, H, S, D], or packed [1, H, T, D] views of [T, H, D].
  int64_t B = s.B, Sq = s.Sq, Sk = s.Sk, max_q = s.Sq, max_k = s.Sk;
  if (packed) {
    B = 1, Sq = Sk = max_q = max_k = 0;
    for (const Segment& g : segs) Sq += g.sq, Sk += g.sk, max_q = std::max(max_q, g.sq), max_k = std::max(max_k, g.sk);
  }
  const int64_t Hq = s.Hq, Hkv = s.Hkv, D = s.D, G = Hq / Hkv;
  // The params carry float scale / softcap: the reference uses the same values.
  const double scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  Operand<T> q, k, v, out, dout, dq, dk, dv;
  q.init(B, Hq, Sq, D, s.layout);
  out.init(B, Hq, Sq, D, s.layout);
  dout.init(B, Hq, Sq, D, s.layout);
  dq.init(B, Hq, Sq, D, s.layout);
  k.init(B, Hkv, Sk, D, s.layout);
  v.init(B, Hkv, Sk, D, s.layout);
  dk.init(B, Hkv, Sk, D, s.layout);
  dv.init(B, Hkv, Sk, D, s.layout);
  for (auto* op : {&q, &k, &v, &dout})
    for (int64_t b = 0; b < op->B; ++b)
      for (int64_t h = 0; h < op->H; ++h)
        for (int64_t i = 0; i < op->S; ++i)
          for (int64_t d = 0; d < D; ++d) op->at(b, h, i, d) = from_d<T>(normal(rng) * (op == &q ? 1.5 : 1.0));
  const int64_t rows = B * Hq * Sq;
  std::vector<float> lse(static_cast<size_t>(rows)), dlse(static_cast<size_t>(rows));
  std::vector<double> lse_d(static_cast<size_t>(rows));
  for (auto& x : dlse) x = static_cast<float>(0.3 * normal(rng));
  // Sink logits: float32 as the kernels read them; the reference uses the
  // same rounded values. The float64 path reads its own float64 copy
  // (AttentionParams::sinks_f64), which here is off the float32 value by more
  // than the fp64 tolerance: a kernel that read the float32 one would fail.
  const bool f64 = std::is_same<T, double>::value;
  std::vector<float> sinks(static_cast<size_t>(Hq));
  std::vector<double> sinks_f64(static_cast<size_t>(Hq));
  for (int64_t h = 0; h < Hq; ++h) {
    sinks[h] = static_cast<float>(sink_logit(s.sink_logits, h, rng));
    sinks_f64[h] = static_cast<double>(sinks[h]) + (std::isfinite(sinks[h]) ? 3e-6 : 0.0);
  }
  const bool has_sink_logits = s.sink_logits != kNoSinkLogits;
  auto sink_of = [&](int64_t h) { return f64 ? sinks_f64[h] : static_cast<double>(sinks[h]); };
  // Keys that no query sees hold NaN: their dK, dV must come out 0 and they
  // must not reach dQ (the loaders zero-fill them; 0 * NaN is NaN). With
  // sink tokens that includes the gap between the sink run and the band.
  // With per-head windows: the keys that no query head of the group sees.
  for (const Segment& g : segs) {
    const Shape gs = with_lengths(s, g);
    for (int64_t hk = 0; hk < Hkv; ++hk)
      for (int64_t j = 0; j < g.sk; ++j) {
        bool seen = false;
        for (int64_t h = hk * G; h < (hk + 1) * G && !seen; ++h)
          for (int64_t i = 0; i < g.sq && !seen; ++i) seen = sees(head_shape(gs, h), i, j);
        if (seen) continue;
        for (int64_t d = 0; d < D; ++d) k.at(g.bb, hk, g.k0 + j, d) = v.at(g.bb, hk, g.k0 + j, d) = from_d<T>(NAN);
      }
  }

  auto score = [&](int64_t b, int64_t h, int64_t i, int64_t j, double& t) {
    double x = 0;
    for (int64_t d = 0; d < D; ++d) x += to_d(q.at(b, h, i, d)) * to_d(k.at(b, h / G, j, d));
    x *= scale;
    if (s.softcap > 0) {
      t = std::tanh(x / s.softcap);
      return s.softcap * t;
    }
    t = 0;
    return x;
  };
  // The keys query row r (an operand row) sees, ascending, as operand rows
  // (every key of the row, counted once); the same for every batch entry,
  // per query head (row_keys[h][r]: their windows may differ).
  std::vector<std::vector<std::vector<int64_t>>> row_keys(
      static_cast<size_t>(Hq), std::vector<std::vector<int64_t>>(static_cast<size_t>(Sq)));
  for (int64_t h = 0; h < Hq; ++h)
    for (const Segment& g : segs) {
      if (g.bb > 0) continue;
      const Shape gs = head_shape(with_lengths(s, g), h);
      for (int64_t i = 0; i < g.sq; ++i)
        for (int64_t j = 0; j < g.sk; ++j)
          if (sees(gs, i, j)) row_keys[h][g.q0 + i].push_back(g.k0 + j);
    }
  // Forward in float64; out rounded to T, lse to float (what the forward
  // stores). The sink logit joins the softmax without a value: lse =
  // log(sum_j exp(s_ij) + exp(sink)); a row that sees no key has out 0 and
  // lse = sink (-inf without sink logits).
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Sq; ++i) {
        const int64_t row = (b * Hq + h) * Sq + i;
        const double sink = has_sink_logits ? sink_of(h) : -INFINITY;
        double m = -INFINITY, l = 0, t;
        for (int64_t j : row_keys[h][i]) m = std::max(m, score(b, h, i, j, t));
        std::vector<double> o(static_cast<size_t>(D), 0.0);
        for (int64_t j : row_keys[h][i]) {
          const double p = std::exp(score(b, h, i, j, t) - m);
          l += p;
          for (int64_t d = 0; d < D; ++d) o[d] += p * to_d(v.at(b, h / G, j, d));
        }
        double total = l;  // sum exp(s - m) with the sink's weight
        if (l > 0 && has_sink_logits) total += std::exp(sink - m);
        lse_d[row] = l > 0 ? m + std::log(total) : sink;
        lse[row] = static_cast<float>(lse_d[row]);
        for (int64_t d = 0; d < D; ++d) out.at(b, h, i, d) = from_d<T>(l > 0 ? o[d] / total : 0.0);
      }
  // Backward reference in float64 from the stored (rounded) tensors.
  Reference ref;
  ref.dq.assign(static_cast<size_t>(rows * D), 0.0);
  ref.dk.assign(static_cast<size_t>(B * Hkv * Sk * D), 0.0);
  ref.dv.assign(static_cast<size_t>(B * Hkv * Sk * D), 0.0);
  std::vector<double> ref_dsinks(static_cast<size_t>(Hq), 0.0);  // -sum exp(sink - lse) D
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Sq; ++i) {
        const int64_t row = (b * Hq + h) * Sq + i;
        double dd = 0;
        for (int64_t d = 0; d < D; ++d) dd += to_d(dout.at(b, h, i, d)) * to_d(out.at(b, h, i, d));
        if (s.dlse) dd -= dlse[row];
        const double l = f64 ? lse_d[row] : static_cast<double>(lse[row]);
        if (has_sink_logits) ref_dsinks[h] -= std::exp(sink_of(h) - l) * dd;
        for (int64_t j : row_keys[h][i]) {
          double t;
          const double sc = score(b, h, i, j, t);
          const double p = std::exp(sc - l);
          double dp = 0;
          for (int64_t d = 0; d < D; ++d) dp += to_d(dout.at(b, h, i, d)) * to_d(v.at(b, h / G, j, d));
          double dx = p * (dp - dd);
          if (s.softcap > 0) dx *= 1 - t * t;
          const int64_t kv_row = (b * Hkv + h / G) * Sk + j;
          for (int64_t d = 0; d < D; ++d) {
            ref.dv[kv_row * D + d] += p * to_d(dout.at(b, h, i, d));
            ref.dk[kv_row * D + d] += scale * dx * to_d(q.at(b, h, i, d));
            ref.dq[row * D + d] += scale * dx * to_d(k.at(b, h / G, j, d));
          }
        }
      }

  // Params; workspaces start as NaN garbage (nothing may rely on their contents).
  kn::AttentionBackwardParams p;
  kn::AttentionParams& f = p.fwd;
  f.dtype = std::is_same<T, __half>::value ? kn::DType::kFloat16
            : std::is_same<T, __nv_bfloat16>::value ? kn::DType::kBFloat16
            : std::is_same<T, float>::value ? kn::DType::kFloat32 : kn::DType::kFloat64;
  f.q = q.ref(), f.k = k.ref(), f.v = v.ref();
  f.out = out.data.data(), f.out_batch_stride = out.bs, f.out_head_stride = out.hs, f.out_row_stride = out.rs;
  f.lse = lse.data();
  f.batch = B, f.heads_q = Hq, f.heads_kv = Hkv, f.seqlen_q = Sq, f.seqlen_k = Sk, f.head_dim = D;
  f.window_left = s.wl, f.window_right = s.wr;
  if (!s.head_wl.empty()) {  // as set_head_windows fills them: the union, and the heads' own
    auto wider = [](int64_t a, int64_t w) { return a < 0 || w < 0 ? -1 : std::max(a, w); };
    f.window_left = s.head_wl[0], f.window_right = s.head_wr[0];
    for (int64_t h = 1; h < Hq; ++h)
      f.window_left = wider(f.window_left, s.head_wl[h]), f.window_right = wider(f.window_right, s.head_wr[h]);
    f.head_windows = {s.head_wl.data(), s.head_wr.data()};
  }
  f.scale = static_cast<float>(scale);
  f.softcap = s.softcap;
  f.sinks = has_sink_logits ? sinks.data() : nullptr;
  f.sinks_f64 = has_sink_logits && f64 ? sinks_f64.data() : nullptr;
  f.sink_tokens = s.sink_tokens;
  p.dout = dout.ref();
  p.dlse = s.dlse ? dlse.data() : nullptr;
  p.dq = dq.ref(), p.dk = dk.ref(), p.dv = dv.ref();
  std::vector<float> softmax_d(static_cast<size_t>(rows), NAN);
  std::vector<float> dq_accum(static_cast<size_t>(rows * D), NAN);
  std::vector<double> stats(static_cast<size_t>(2 * rows), NAN);
  p.softmax_d = softmax_d.data();
  p.dq_accum = s.deterministic ? nullptr : dq_accum.data();
  p.softmax_stats_f64 = stats.data();
  p.deterministic = s.deterministic;
  // Packed: one grid entry per sequence over the longest one; batch strides
  // are not read (set to garbage here).
  std::vector<int32_t> cu_q{0}, cu_k{0};
  const int64_t grid_batch = packed ? static_cast<int64_t>(segs.size()) : B;
  if (packed) {
    for (const Segment& g : segs) cu_q.push_back(static_cast<int32_t>(g.q0 + g.sq)), cu_k.push_back(static_cast<int32_t>(g.k0 + g.sk));
    f.cu_seqlens_q = cu_q.data(), f.cu_seqlens_k = cu_k.data();
    f.total_q = Sq, f.total_k = Sk;
    f.batch = grid_batch, f.seqlen_q = max_q, f.seqlen_k = max_k;
    for (kn::TensorRef* t : {&f.q, &f.k, &f.v, &p.dout, &p.dq, &p.dk, &p.dv}) t->batch_stride = int64_t{1} << 40;
    f.out_batch_stride = int64_t{1} << 40;
  }

  if constexpr (kExactPath) {
    emu::launch({static_cast<unsigned>((grid_batch * Hq * max_q + 3) / 4)}, {kExactBwdWarps * 32},
                [&] { exact_bwd_dq_kernel<T, Acc>(p); });
    emu::launch({static_cast<unsigned>((grid_batch * Hkv * max_k + 3) / 4)}, {kExactBwdWarps * 32},
                [&] { exact_bwd_dkdv_kernel<T, Acc>(p); });
  } else {
    using Kt = BwdTraits<T, kHeadDim>;
    using Qt = BwdDqTraits<T, kHeadDim>;
    BwdScoreScale sc;
    sc.scale = f.scale;
    sc.use_softcap = f.softcap > 0;
    sc.scale_log2 = static_cast<float>(static_cast<double>(f.scale) * 1.4426950408889634);
    sc.softcap_log2 = sc.use_softcap ? static_cast<float>(static_cast<double>(f.softcap) * 1.4426950408889634) : 0.f;
    sc.scale_over_cap = sc.use_softcap ? static_cast<float>(static_cast<double>(f.scale) / f.softcap) : 0.f;
    const kn::BwdRowGrid rg = kn::make_bwd_row_grid(grid_batch, Hq, max_q, kBwdRowBlock);
    emu::launch({static_cast<unsigned>(rg.blocks())}, {kBwdRowThreads},
                [&] { bwd_preprocess_kernel<T, kHeadDim>(p, rg, s.deterministic ? 0 : 1); });
    const kn::BwdKvGrid kg = kn::make_bwd_kv_grid(grid_batch, Hkv, max_k, Kt::kBlockN);
    emu::launch({static_cast<unsigned>(kg.blocks())}, {Kt::kThreads}, [&] { bwd_dkdv_kernel<Kt>(p, kg, sc); });
    if (s.deterministic) {
      const kn::BwdQGrid qg = kn::make_bwd_q_grid(grid_batch, Hq, max_q, Qt::kBlockM);
      emu::launch({static_cast<unsigned>(qg.blocks())}, {Qt::kThreads}, [&] { bwd_dq_kernel<Qt>(p, qg, sc); });
    } else {
      emu::launch({static_cast<unsigned>(rg.blocks())}, {kBwdRowThreads},
                  [&] { bwd_convert_dq_kernel<T, kHeadDim>(p, rg, sc.scale); });
    }
  }
  const double tol = std::is_same<T, double>::value ? 1e-10
                     : std::is_same<T, float>::value ? 2e-5
                     : std::is_same<T, __half>::value ? 8e-3 : 4e-2;
  compare("dq", dq, ref.dq, tol, s);
  compare("dk", dk, ref.dk, tol, s);
  compare("dv", dv, ref.dv, tol, s);
  if (has_sink_logits) {
    // d sinks as the op computes it (sink_logits_grad) from the backward's
    // row statistics: lse and D of softmax_d, or for fp64 the recomputed
    // float64 lse and D of softmax_stats_f64 (whose lse must hold the sink).
    std::vector<double> dsinks(static_cast<size_t>(Hq), 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < Sq; ++i) {
          const int64_t row = (b * Hq + h) * Sq + i;
          const double l = f64 ? stats[row] : static_cast<double>(lse[row]);
          const double dd = f64 ? stats[rows + row] : static_cast<double>(softmax_d[row]);
          dsinks[h] -= std::exp(sink_of(h) - l) * dd;
        }
    compare_values("dsinks", dsinks, ref_dsinks, tol, s);
    if (f64) {
      std::vector<double> got_lse(stats.begin(), stats.begin() + rows);
      compare_values("f64 lse", got_lse, lse_d, tol, s);
    }
  }
  ++cases_run;
  if (failures > failures_before) ++cases_failed;
  std::printf("%s %-28s\n", failures > failures_before ? "FAIL" : "ok  ", s.name);
}

// Attention sinks. Tiles (bwd_kernel_traits.cuh): d <= 128 dK/dV key tiles of
// 128 keys and dQ key tiles of 64 (query tiles of 64 / 128 rows); d = 256:
// 64 and 32. So 70 sink tokens are two dQ key tiles (the second also holding
// band keys of later rows) and 130 are two dK/dV key tiles.
template <typename Want>
void run_sink_cases(const Want& want) {
  constexpr int64_t kHuge = int64_t{1} << 40;  // sink_tokens > Sk: every key a row reaches
  //             B  Hq Hkv  Sq   Sk   D   wl  wr  softcap dlse layout det   name                     S     logits
  const Shape cases_d64[] = {
      {1, 2, 1, 150, 300, 64, 40, 0, 0.f, false, 0, false, "sink1 d64 swa gqa", 1, kNoSinkLogits},
      {1, 2, 1, 150, 300, 64, 40, 0, 0.f, true, 1, true, "sink4 d64 det logits", 4, kModerate},
      {1, 4, 2, 260, 260, 64, 30, 10, 0.f, true, 1, false, "sink70 d64 two-sided gqa", 70, kNoSinkLogits},
      {1, 4, 2, 260, 260, 64, 30, 10, 0.f, false, 0, true, "sink70 d64 det two-sided", 70, kModerate},
      {2, 2, 2, 97, 97, 64, 10, 0, 30.f, true, 0, false, "sinkhuge d64 softcap b2", kHuge, kModerate},
      {1, 2, 1, 150, 200, 64, 40, 0, 0.f, true, 0, false, "sinklogits d64 moderate", 0, kModerate},
      {1, 2, 1, 150, 200, 64, 40, 0, 0.f, false, 1, true, "sinklogits d64 det -1e4", 0, kVeryNegative},
      {1, 2, 1, 150, 200, 64, 40, 0, 0.f, true, 0, false, "sinklogits d64 large", 0, kLarge},
  };
  for (size_t c = 0; c < sizeof(cases_d64) / sizeof(cases_d64[0]); ++c) {
    const Shape& s = cases_d64[c];
    if (!want(s.name)) continue;
    if (c % 2 == 0) run_case<__nv_bfloat16, false, 64>(s, 100 + c);
    else run_case<__half, false, 64>(s, 100 + c);
  }
  const Shape s128{1, 2, 1, 200, 330, 128, 50, 0, 20.f, true, 0, false, "sink130 d128 softcap", 130, kLarge};
  const Shape s128d{1, 2, 1, 200, 330, 128, 50, 0, 20.f, false, 1, true, "sink130 d128 det softcap", 130,
                    kVeryNegative};
  const Shape s256{1, 2, 1, 100, 240, 256, 30, 0, 0.f, true, 0, false, "sink70 d256 split warps", 70, kModerate};
  const Shape s256d{1, 2, 1, 100, 240, 256, 30, 0, 15.f, true, 1, true, "sink70 d256 det softcap", 70, kLarge};
  // Sq > Sk: rows 0 .. 107 see no key (not even the sinks: their right edge
  // is before key 0), whole query tiles of them.
  const Shape s96{1, 1, 1, 200, 90, 96, 33, 2, 0.f, true, 0, false, "sink4 d96 sq>sk empty rows", 4, kModerate};
  const Shape s96d{1, 2, 1, 200, 90, 96, 33, 2, 0.f, false, 0, true, "sink40 d96 det sq>sk", 40, kLarge};
  // Full attention: every sink key is in every band (counted once).
  const Shape s32{1, 3, 1, 70, 260, 32, -1, -1, 0.f, true, 1, false, "sink10 d32 full gqa3", 10, kLarge};
  if (want(s128.name)) run_case<__nv_bfloat16, false, 128>(s128, 120);
  if (want(s128d.name)) run_case<__half, false, 128>(s128d, 121);
  if (want(s256.name)) run_case<__half, false, 256>(s256, 122);
  if (want(s256d.name)) run_case<__nv_bfloat16, false, 256>(s256d, 123);
  if (want(s96.name)) run_case<__half, false, 96>(s96, 124);
  if (want(s96d.name)) run_case<__half, false, 96>(s96d, 125);
  if (want(s32.name)) run_case<__half, false, 32>(s32, 126);
  // The exact kernels (fp32, fp64 with its float64 lse, and 16 bit as the
  // fallback of shapes the tensor cores cannot take).
  const Shape sx32{1, 4, 2, 37, 53, 40, 9, 3, 15.f, true, 1, true, "sink5 exact f32 d40", 5, kModerate};
  const Shape sx64{1, 2, 1, 33, 45, 19, 5, 0, 0.f, true, 0, true, "sink7 exact f64 d19", 7, kModerate};
  const Shape sx64e{1, 2, 1, 60, 25, 19, 4, 1, 5.f, false, 0, true, "sink3 exact f64 sq>sk", 3, kLarge};
  const Shape sx64n{1, 2, 1, 33, 45, 19, -1, 0, 0.f, true, 0, true, "sinklogits exact f64 -1e4", 0, kVeryNegative};
  const Shape sx16{1, 2, 2, 50, 70, 40, 12, 0, 0.f, true, 0, true, "sink6 exact f16 d40", 6, kModerate};
  if (want(sx32.name)) run_case<float, true, 0>(sx32, 130);
  if (want(sx64.name)) run_case<double, true, 0>(sx64, 131);
  if (want(sx64e.name)) run_case<double, true, 0>(sx64e, 132);
  if (want(sx64n.name)) run_case<double, true, 0>(sx64n, 133);
  if (want(sx16.name)) run_case<__half, true, 0>(sx16, 134);
}

// Packed sequences: lengths around the tiles (dK/dV key tiles of 128 keys
// and query tiles of 64 / 128 rows for d <= 128; d = 256 halves them), empty
// sequences (no queries, no keys, or neither), Sq != Sk per sequence with
// bottom-right alignment, both dQ modes, sinks of both kinds, the exact path.
template <typename Want>
void run_varlen_cases(const Want& want) {
  using Seqs = std::vector<std::pair<int64_t, int64_t>>;
  const Seqs mixed{{130, 130}, {0, 0}, {1, 1}, {64, 64}, {0, 5}, {200, 200}, {7, 0}, {129, 129}};
  const Seqs uneven{{40, 300}, {150, 60}, {1, 129}, {0, 0}, {65, 65}};
  //             B  Hq Hkv  Sq Sk  D   wl  wr  softcap dlse layout det   name                        S  logits  seqs
  const Shape cases[] = {
      {0, 2, 1, 0, 0, 64, 40, 0, 0.f, false, 1, false, "varlen d64 mixed gqa", 0, 0, mixed},
      {0, 2, 1, 0, 0, 64, 40, 0, 0.f, true, 0, true, "varlen d64 det head-major", 0, 0, mixed},
      {0, 2, 2, 0, 0, 64, 30, 10, 20.f, true, 1, false, "varlen d64 sq!=sk two-sided", 0, 0, uneven},
      {0, 4, 2, 0, 0, 64, 30, 10, 20.f, false, 1, true, "varlen d64 det sq!=sk softcap", 0, 0, uneven},
      {0, 2, 1, 0, 0, 64, 20, 0, 0.f, true, 1, false, "varlen d64 sinks both", 4, kModerate, mixed},
      {0, 2, 1, 0, 0, 128, 50, 0, 0.f, true, 1, true, "varlen d128 det sinks", 70, kLarge, uneven},
      {0, 2, 1, 0, 0, 256, -1, 0, 0.f, true, 1, false, "varlen d256 causal", 0, 0, mixed},
      {0, 3, 1, 0, 0, 32, -1, -1, 0.f, false, 0, false, "varlen d32 full gqa3", 0, 0, uneven},
  };
  for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); ++c) {
    const Shape& s = cases[c];
    if (!want(s.name)) continue;
    const bool bf16 = c % 2 == 0;
    switch (s.D) {
      case 32: bf16 ? run_case<__nv_bfloat16, false, 32>(s, 200 + c) : run_case<__half, false, 32>(s, 200 + c); break;
      case 64: bf16 ? run_case<__nv_bfloat16, false, 64>(s, 200 + c) : run_case<__half, false, 64>(s, 200 + c); break;
      case 128: bf16 ? run_case<__nv_bfloat16, false, 128>(s, 200 + c) : run_case<__half, false, 128>(s, 200 + c); break;
      default: bf16 ? run_case<__nv_bfloat16, false, 256>(s, 200 + c) : run_case<__half, false, 256>(s, 200 + c); break;
    }
  }
  const Seqs small{{13, 13}, {0, 4}, {21, 9}, {1, 1}, {0, 0}, {30, 45}};
  const Shape x32{0, 4, 2, 0, 0, 40, 9, 3, 15.f, true, 1, true, "varlen exact f32 d40", 3, kModerate, small};
  const Shape x64{0, 2, 1, 0, 0, 19, 5, 0, 0.f, true, 0, true, "varlen exact f64 d19", 2, kLarge, small};
  const Shape x16{0, 2, 2, 0, 0, 40, -1, 0, 0.f, false, 1, true, "varlen exact bf16 d40", 0, 0, small};
  if (want(x32.name)) run_case<float, true, 0>(x32, 230);
  if (want(x64.name)) run_case<double, true, 0>(x64, 231);
  if (want(x16.name)) run_case<__nv_bfloat16, true, 0>(x16, 232);
}

// Per-head windows: one GQA group whose heads see far-apart tile ranges (the
// dK/dV walk covers the union; a step outside its head's band is masked
// whole), unbounded and two-sided heads, both dQ modes, sinks of both kinds,
// Sq != Sk, the exact kernels.
template <typename Want>
void run_per_head_cases(const Want& want) {
  using W = std::vector<int64_t>;
  //     B  Hq Hkv  Sq   Sk   D   wl  wr  softcap dlse layout det   name                  S  logits seqs
  Shape a{1, 4, 1, 300, 300, 64, 0, 0, 0.f, true, 0, false, "per-head d64 gqa mixed", 0, 0, {}, W{3, 200, -1, 64},
          W{0, 0, 5, 64}};
  Shape b{1, 4, 1, 300, 300, 64, 0, 0, 0.f, false, 1, true, "per-head d64 det gqa mixed", 0, 0, {},
          W{3, 200, -1, 64}, W{0, 0, 5, 64}};
  Shape c{2, 4, 2, 100, 230, 128, 0, 0, 10.f, true, 1, false, "per-head d128 sq<sk softcap", 0, 0, {},
          W{9, 130, 0, -1}, W{3, 0, 0, -1}};
  Shape d{1, 2, 1, 200, 200, 64, 0, 0, 0.f, true, 0, true, "per-head d64 det sinks", 4, kModerate, {}, W{20, 150},
          W{0, 2}};
  Shape e{1, 2, 1, 200, 200, 64, 0, 0, 0.f, true, 1, false, "per-head d64 sinks", 70, kLarge, {}, W{20, -1},
          W{0, 0}};
  Shape x32{1, 3, 1, 37, 53, 40, 0, 0, 15.f, true, 1, true, "per-head exact f32 d40", 2, kModerate, {}, W{5, -1, 0},
            W{0, 3, -1}};
  Shape x64{1, 2, 2, 33, 45, 19, 0, 0, 0.f, true, 0, true, "per-head exact f64 d19", 0, 0, {}, W{1, 31}, W{1, 0}};
  if (want(a.name)) run_case<__nv_bfloat16, false, 64>(a, 300);
  if (want(b.name)) run_case<__half, false, 64>(b, 301);
  if (want(c.name)) run_case<__nv_bfloat16, false, 128>(c, 302);
  if (want(d.name)) run_case<__half, false, 64>(d, 303);
  if (want(e.name)) run_case<__nv_bfloat16, false, 64>(e, 304);
  if (want(x32.name)) run_case<float, true, 0>(x32, 305);
  if (want(x64.name)) run_case<double, true, 0>(x64, 306);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  auto want = [&](const char* name) { return std::string(name).find(only) != std::string::npos; };
  //          B  Hq Hkv  Sq   Sk   D   wl  wr  softcap dlse layout det   name
  const Shape s64{1, 2, 1, 150, 200, 64, 40, 0, 0.f, false, 0, false, "d64 swa gqa"};
  const Shape s64d{1, 2, 1, 150, 200, 64, 40, 0, 0.f, true, 1, true, "d64 det strided dlse"};
  const Shape s64c{2, 2, 2, 97, 97, 64, -1, 0, 30.f, true, 0, false, "d64 causal softcap b2"};
  const Shape s128{1, 2, 1, 130, 130, 128, 20, 5, 0.f, true, 1, false, "d128 two-sided"};
  const Shape s128d{1, 2, 1, 130, 130, 128, 20, 5, 10.f, false, 0, true, "d128 det softcap"};
  const Shape s32{1, 3, 1, 70, 260, 32, -1, -1, 0.f, true, 1, false, "d32 full gqa3"};
  const Shape s96{1, 1, 1, 200, 90, 96, 33, 2, 0.f, false, 0, false, "d96 sq>sk"};
  const Shape s96d{1, 1, 1, 200, 90, 96, 33, 2, 0.f, false, 0, true, "d96 det sq>sk"};
  const Shape s256{1, 2, 1, 100, 140, 256, 50, 0, 0.f, true, 0, false, "d256 split warps"};
  const Shape s256d{1, 2, 1, 100, 140, 256, 50, 0, 20.f, true, 1, true, "d256 det softcap"};
  const Shape sempty{1, 1, 1, 40, 300, 64, 10, 0, 0.f, false, 0, false, "d64 unseen keys"};
  const Shape sx32{1, 4, 2, 37, 53, 40, 9, 3, 15.f, true, 1, true, "exact f32 d40"};
  const Shape sx64{1, 2, 1, 33, 45, 19, -1, 0, 0.f, true, 0, true, "exact f64 d19"};
  if (want(s64.name)) run_case<__nv_bfloat16, false, 64>(s64, 1);
  if (want(s64d.name)) run_case<__half, false, 64>(s64d, 2);
  if (want(s64c.name)) run_case<__half, false, 64>(s64c, 3);
  if (want(s128.name)) run_case<__half, false, 128>(s128, 4);
  if (want(s128d.name)) run_case<__nv_bfloat16, false, 128>(s128d, 5);
  if (want(s32.name)) run_case<__half, false, 32>(s32, 6);
  if (want(s96.name)) run_case<__half, false, 96>(s96, 7);
  if (want(s96d.name)) run_case<__half, false, 96>(s96d, 8);
  if (want(s256.name)) run_case<__half, false, 256>(s256, 9);
  if (want(s256d.name)) run_case<__nv_bfloat16, false, 256>(s256d, 10);
  if (want(sempty.name)) run_case<__half, false, 64>(sempty, 11);
  if (want(sx32.name)) run_case<float, true, 0>(sx32, 12);
  if (want(sx64.name)) run_case<double, true, 0>(sx64, 13);
  run_sink_cases(want);
  run_varlen_cases(want);
  run_per_head_cases(want);
  std::printf("%d passed, %d failed\n", cases_run - cases_failed, cases_failed);
  return failures == 0 ? 0 : 1;
}

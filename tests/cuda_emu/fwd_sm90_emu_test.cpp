// Runs the Hopper forward kernel (csrc/cuda/kernels/fwd_sm90_kernel.cuh) on the
// CPU through the emulator in fake/ (mbarriers, TMA boxes with the 128-byte
// swizzle, wgmma through its descriptors, per the PTX ISA) and compares out /
// lse with a float64 reference: windows on both sides, rows that see nothing,
// GQA, softcap, Sq != Sk, lengths that are not tile multiples, several key
// tiles (stage reuse and barrier parities), strided [B, S, H, D] views,
// attention sinks of both kinds (sink tokens S in {1, 4, > W}, sink logits
// -1e4 / 30 / NaN in one head, the two together, rows that see no key),
// packed sequences (cu_seqlens: boxes that run into the next sequence's rows,
// empty sequences; every K/V row that no query of its sequence sees is NaN,
// so any leak of such a row, into its own sequence or a neighbour, shows).
// The reference's visibility is written out here (not band.h's). The
// tensor maps come from sm90_tma_shape (the host code's shapes). Built and
// run by run_sm90.sh (g++, C++20; needs no GPU). What it cannot see: timing,
// asynchrony (wgmma and TMA complete at issue here), register allocation.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "element_types.h"
#include "fwd_sm90_kernel.cuh"
#include "swa/kernels/fwd_tiles.h"
#include "swa/kernels/params.h"
#include "swa/kernels/sm90_tma.h"

namespace kn = SWA_KERNEL_NS;
using namespace kn::cuda_detail;

namespace {

int failures = 0;

struct Shape {
  int64_t B, Hq, Hkv, Sq, Sk, D, wl, wr;
  float softcap;
  bool bshd;  // [B, S, H, D] storage viewed as [B, H, S, D]
  const char* name;
  int64_t sink_tokens = 0;
  const float* sinks = nullptr;  // sink logits [Hq] (nullptr: none)
  // Packed sequences (Sq_b, Sk_b), back to back in one [1, H, T, D] batch
  // (B, Sq, Sk unused); empty: the padded layout.
  std::vector<std::pair<int64_t, int64_t>> seqs = {};
};

// One sequence's rows: batch entry bb (padded) or rows q0 / k0 of the packed batch.
struct Segment {
  int64_t bb, q0, k0, sq, sk;
};

template <typename T>
struct Operand {
  std::vector<T> data;
  int64_t bs, hs, rs, B, H, S, D;
  void init(int64_t b, int64_t h, int64_t s, int64_t d, bool bshd, std::mt19937& rng, bool random = true) {
    B = b, H = h, S = s, D = d;
    const int64_t pad = 8;  // padded rows: strides unlike any packed layout
    if (bshd) {
      rs = h * (d + pad);
      hs = d + pad;
      bs = s * rs;
    } else {
      rs = d + pad;
      hs = s * rs;
      bs = h * hs;
    }
    data.assign(b * bs + 64, from_d<T>(0));
    std::normal_distribution<float> n(0.f, 1.f);
    if (random)
      for (auto& x : data) x = from_d<T>(n(rng));
  }
  T& at(int64_t b, int64_t h, int64_t s, int64_t d) { return data[b * bs + h * hs + s * rs + d]; }
};

CUtensorMap make_map(const void* ptr, int64_t B, int64_t H, int64_t S, int64_t D, int64_t bs, int64_t hs, int64_t rs,
                     int box_rows) {
  const kn::Sm90TmaShape s = kn::sm90_tma_shape(ptr, B, H, S, D, bs, hs, rs, box_rows);
  if (!s.ok) {
    std::printf("FAIL: sm90_tma_shape rejected an operand\n");
    ++failures;
  }
  CUtensorMap m{};
  m.base = ptr;
  for (int i = 0; i < 4; ++i) m.dims[i] = s.dims[i], m.box[i] = s.box[i];
  for (int i = 0; i < 3; ++i) m.strides_bytes[i] = s.strides_bytes[i];
  m.elem_bytes = 2;
  m.swizzle_128b = 1;
  return m;
}

// blocks: the persistent grid size (0: one block per query tile).
template <typename T, int D>
void run(const Shape& sh, uint32_t seed, unsigned blocks) {
  using Kt = Sm90FwdTraits<T, D>;
  std::mt19937 rng(seed);
  const bool packed = !sh.seqs.empty();
  std::vector<Segment> segs;
  std::vector<int32_t> cu_q{0}, cu_k{0};
  int64_t max_q = 0, max_k = 0;
  if (packed) {
    for (auto [sq, sk] : sh.seqs) {
      segs.push_back({0, cu_q.back(), cu_k.back(), sq, sk});
      cu_q.push_back(static_cast<int32_t>(cu_q.back() + sq));
      cu_k.push_back(static_cast<int32_t>(cu_k.back() + sk));
      max_q = std::max(max_q, sq), max_k = std::max(max_k, sk);
    }
  } else {
    for (int64_t bb = 0; bb < sh.B; ++bb) segs.push_back({bb, 0, 0, sh.Sq, sh.Sk});
  }
  // Storage: [B, H, S, D] padded, [1, H, T, D] packed.
  const int64_t SB = packed ? 1 : sh.B, SQ = packed ? cu_q.back() : sh.Sq, SK = packed ? cu_k.back() : sh.Sk;
  Operand<T> q, k, v, out;
  q.init(SB, sh.Hq, SQ, D, sh.bshd, rng);
  k.init(SB, sh.Hkv, SK, D, sh.bshd, rng);
  v.init(SB, sh.Hkv, SK, D, sh.bshd, rng);
  out.init(SB, sh.Hq, SQ, D, sh.bshd, rng, false);
  const T poison = from_d<T>(12345.0);
  for (auto& x : out.data) x = poison;
  std::vector<float> lse(SB * sh.Hq * SQ, 777.f);

  // Row i of a sequence (key position pos = i + Sk - Sq) sees key j in its
  // window, or j < S when j <= pos + wr.
  auto visible = [&](const Segment& sg, int64_t i, int64_t j) {
    const int64_t pos = i + sg.sk - sg.sq;
    const bool right = sh.wr < 0 || j <= pos + sh.wr;
    const bool left = sh.wl < 0 || j >= pos - sh.wl;
    return j >= 0 && j < sg.sk && right && (left || j < sh.sink_tokens);
  };
  if (packed) {  // K/V rows no query of their sequence sees: NaN (must never reach an output)
    const T nan = from_d<T>(NAN);
    for (const Segment& sg : segs)
      for (int64_t j = 0; j < sg.sk; ++j) {
        bool seen = false;
        for (int64_t i = 0; i < sg.sq && !seen; ++i) seen = visible(sg, i, j);
        if (seen) continue;
        for (int64_t h = 0; h < sh.Hkv; ++h)
          for (int d = 0; d < D; ++d) k.at(0, h, sg.k0 + j, d) = v.at(0, h, sg.k0 + j, d) = nan;
      }
  }

  kn::AttentionParams p;
  p.dtype = std::is_same<T, __half>::value ? kn::DType::kFloat16 : kn::DType::kBFloat16;
  p.q = {q.data.data(), q.bs, q.hs, q.rs};
  p.k = {k.data.data(), k.bs, k.hs, k.rs};
  p.v = {v.data.data(), v.bs, v.hs, v.rs};
  p.out = out.data.data();
  p.out_batch_stride = out.bs, p.out_head_stride = out.hs, p.out_row_stride = out.rs;
  p.lse = lse.data();
  p.batch = sh.B, p.heads_q = sh.Hq, p.heads_kv = sh.Hkv, p.seqlen_q = sh.Sq, p.seqlen_k = sh.Sk, p.head_dim = D;
  if (packed) {  // as set_packed_sequences does (csrc/cuda/varlen_params.cpp)
    p.batch = static_cast<int64_t>(segs.size()), p.seqlen_q = max_q, p.seqlen_k = max_k;
    p.total_q = SQ, p.total_k = SK;
    p.cu_seqlens_q = cu_q.data(), p.cu_seqlens_k = cu_k.data();
    p.q.batch_stride = p.k.batch_stride = p.v.batch_stride = p.out_batch_stride = 0;
  }
  p.window_left = sh.wl, p.window_right = sh.wr;
  p.scale = 1.f / std::sqrt(static_cast<float>(D));
  p.softcap = sh.softcap;
  p.sinks = sh.sinks;
  p.sink_tokens = sh.sink_tokens;

  const CUtensorMap tq = make_map(q.data.data(), SB, sh.Hq, SQ, D, q.bs, q.hs, q.rs, Kt::kBlockM);
  const CUtensorMap tk = make_map(k.data.data(), SB, sh.Hkv, SK, D, k.bs, k.hs, k.rs, Kt::kBlockN);
  const CUtensorMap tv = make_map(v.data.data(), SB, sh.Hkv, SK, D, v.bs, v.hs, v.rs, Kt::kBlockN);
  const kn::FwdGrid grid = kn::make_fwd_grid(p.batch, sh.Hq, sh.Hkv, p.seqlen_q, 1, 1, Kt::kBlockM);
  FwdScoreScale sc;
  constexpr double kLog2e = 1.4426950408889634;
  sc.use_softcap = p.softcap > 0.f;
  sc.scale_log2 = static_cast<float>(p.scale * kLog2e);
  sc.softcap_log2 = sc.use_softcap ? static_cast<float>(p.softcap * kLog2e) : 0.f;
  sc.scale_over_cap = sc.use_softcap ? static_cast<float>(static_cast<double>(p.scale) / p.softcap) : 0.f;

  dim3 g, b;
  g.x = static_cast<unsigned>(grid.blocks());
  if (blocks > 0 && blocks < g.x) g.x = blocks;
  b.x = Kt::kThreads;
  emu::launch(
      g, b,
      [&] {
        // Blocks run one at a time; each must leave its named barriers with
        // no pending arrivals (checked after the launch).
        fwd_sm90_kernel<Kt>(tq, tk, tv, p, grid, sc);
      },
      64 * 1024);
  for (int id = 0; id < 16; ++id)
    if (sm90::named_barriers()[id].arrived != 0) {
      std::printf("FAIL: named barrier %d left with %d arrivals\n", id, sm90::named_barriers()[id].arrived);
      ++failures;
    }

  // float64 reference on the 16-bit inputs, sequence by sequence.
  const double tol = std::is_same<T, __half>::value ? 4e-3 : 2.5e-2;
  double worst = 0, worst_lse = 0;
  int bad = 0;
  for (const Segment& sg : segs)
    for (int64_t h = 0; h < sh.Hq; ++h) {
      const int64_t hk = h / (sh.Hq / sh.Hkv), bb = sg.bb;
      for (int64_t i = 0; i < sg.sq; ++i) {
        std::vector<double> s(sg.sk, -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j < sg.sk; ++j) {
          if (!visible(sg, i, j)) continue;
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += to_d(q.at(bb, h, sg.q0 + i, d)) * to_d(k.at(bb, hk, sg.k0 + j, d));
          double x = dot * p.scale;
          if (sh.softcap > 0) x = sh.softcap * std::tanh(x / sh.softcap);
          s[j] = x;
          mx = std::max(mx, x);
        }
        // lse = log(sum_j exp(s_j) + exp(sink)), out = sum_j exp(s_j - lse) v_j;
        // no key: out 0, lse = the sink logit (-inf without one). A NaN sink
        // makes lse NaN, and out NaN where a key is seen.
        const bool has_sink = sh.sinks != nullptr;
        const double sink = has_sink ? sh.sinks[h] : -INFINITY;
        const double top = has_sink && sink > mx ? sink : mx;
        double ref_lse;
        if (top == -INFINITY) {
          ref_lse = sink;
        } else {
          double sum = has_sink ? std::exp(sink - top) : 0.0;
          for (int64_t j = 0; j < sg.sk; ++j)
            if (s[j] > -INFINITY) sum += std::exp(s[j] - top);
          ref_lse = top + std::log(sum);
        }
        const float got_lse = lse[packed ? h * SQ + sg.q0 + i : (bb * sh.Hq + h) * sh.Sq + i];
        bool lse_ok;
        if (std::isnan(ref_lse)) lse_ok = std::isnan(got_lse);
        else if (mx == -INFINITY) lse_ok = got_lse == static_cast<float>(ref_lse);  // exactly the sink / -inf
        else lse_ok = std::fabs(got_lse - ref_lse) <= 1e-3 * (1 + std::fabs(ref_lse));
        if (!lse_ok) {
          if (++bad <= 5) std::printf("  lse b%lld h%lld i%lld: got %g want %g\n", (long long)bb, (long long)h, (long long)i, got_lse, ref_lse);
        }
        if (std::isfinite(ref_lse)) worst_lse = std::max(worst_lse, std::fabs(got_lse - ref_lse));
        for (int d = 0; d < D; ++d) {
          double o = 0;
          if (mx > -INFINITY)
            for (int64_t j = 0; j < sg.sk; ++j)
              if (s[j] > -INFINITY) o += std::exp(s[j] - ref_lse) * to_d(v.at(bb, hk, sg.k0 + j, d));
          const double got = to_d(out.at(bb, h, sg.q0 + i, d));
          const double err = std::fabs(got - o);
          if (!std::isnan(o)) worst = std::max(worst, std::isnan(err) ? 1e9 : err);
          if (std::isnan(o) ? !std::isnan(got) : !(err <= tol)) {
            if (++bad <= 5) std::printf("  out b%lld h%lld i%lld d%d: got %g want %g\n", (long long)bb, (long long)h, (long long)i, d, got, o);
          }
        }
        for (int d = D; d < D + 8; ++d)  // row padding never written
          if (to_d(out.at(bb, h, sg.q0 + i, d)) != to_d(poison) && ++bad <= 5) std::printf("  padding written at row %lld\n", (long long)i);
      }
    }
  std::printf("%-4s %-44s d%-3d %s %u blocks / %lld tiles: max |out err| %.3g, max |lse err| %.3g\n",
              bad ? "FAIL" : "ok", sh.name, D, std::is_same<T, __half>::value ? "fp16" : "bf16", g.x,
              (long long)grid.blocks(), worst, worst_lse);
  failures += bad > 0;
}

}  // namespace

// Sink logits per query head.
const float kSinksMixed[] = {-1e4f, 30.f};         // far below / above every score
const float kSinksMild[] = {0.5f, -2.f, 1.5f, 0.f};  // comparable to the scores
const float kSinksNan[] = {NAN, 0.25f};            // NaN in head 0 only

int main(int argc, char** argv) {
  const Shape shapes[] = {
      {1, 2, 1, 300, 300, 0, 63, 0, 0.f, false, "gqa 2/1, W 64, 300 tokens"},
      {2, 1, 1, 129, 200, 0, -1, 0, 0.f, false, "causal, Sq 129 < Sk 200, 2 batches"},
      {1, 2, 2, 260, 130, 0, 31, 5, 5.f, false, "Sq > Sk (empty rows), (31, 5), softcap"},
      {1, 2, 2, 384, 384, 0, -1, -1, 0.f, true, "full, [B,S,H,D] view"},
      {1, 1, 1, 600, 600, 0, -1, 0, 0.f, false, "causal, 5 key tiles (stage reuse)"},
      {1, 1, 1, 130, 130, 0, 0, 0, 0.f, false, "window of one"},
      {1, 4, 2, 520, 700, 0, 200, 40, 0.f, true, "gqa 4/2, (200, 40), Sq != Sk, view"},
      {1, 2, 1, 400, 100, 0, -1, 0, 0.f, false, "empty query tiles (Sq 400 > Sk 100 causal)"},
      // No window on either side and Sk not a tile multiple: the last key
      // tile crosses Sk and must take the masked path (its K/V rows past Sk
      // are TMA zero fill, scores 0, not -inf).
      {1, 2, 2, 200, 333, 0, -1, -1, 0.f, false, "full, Sk 333 (partial last key tile)"},
      // Attention sinks. Sink tokens: query tiles whose band starts past key
      // tile 0 walk sink tiles after the band's; S > W = 64 reaches into the
      // bands of the early rows (a tile holding both runs is the band's).
      {1, 2, 1, 600, 600, 0, 63, 0, 0.f, false, "sinks: 4 tokens, gqa 2/1, W 64", 4},
      {1, 1, 1, 300, 300, 0, 63, 0, 0.f, false, "sinks: 1 token, W 64", 1},
      {1, 2, 2, 700, 700, 0, 63, 0, 0.f, true, "sinks: 200 tokens > W 64 (2 sink tiles), view", 200},
      {1, 2, 2, 400, 400, 0, 100, 20, 0.f, false, "sinks: 130 tokens, (100, 20)", 130},
      {1, 2, 1, 300, 300, 0, 63, 0, 0.f, false, "sinks: logits -1e4 / 30, no tokens", 0, kSinksMixed},
      {1, 2, 2, 260, 130, 0, 31, 5, 5.f, false, "sinks: both, Sq > Sk (empty rows), (31, 5), softcap", 4,
       kSinksMild},
      {1, 2, 1, 400, 100, 0, -1, 0, 0.f, false, "sinks: logits -1e4 / 30, empty query tiles", 0, kSinksMixed},
      {1, 4, 2, 520, 520, 0, 63, 0, 0.f, true, "sinks: both, 160 tokens, gqa 4/2, view", 160, kSinksMild},
      {1, 2, 1, 300, 300, 0, 63, 0, 0.f, false, "sinks: NaN logit in head 0 only, 4 tokens", 4, kSinksNan},
      // Packed sequences (B, Sq, Sk: from seqs).
      {0, 2, 1, 0, 0, 0, 63, 0, 0.f, false, "varlen: 3 sequences, W 64, gqa 2/1", 0, nullptr,
       {{300, 300}, {1, 1}, {129, 129}}},
      {0, 2, 2, 0, 0, 0, 100, 0, 5.f, false, "varlen: Sq < Sk, a key-only sequence between, softcap", 0,
       nullptr, {{200, 333}, {0, 150}, {130, 260}}},
      {0, 2, 1, 0, 0, 0, -1, -1, 0.f, false, "varlen: empty sequences, full window", 0, nullptr,
       {{0, 0}, {250, 250}, {0, 0}, {5, 5}}},
      {0, 4, 2, 0, 0, 0, 63, 0, 0.f, true, "varlen: sinks of both kinds, gqa 4/2, view", 4, kSinksMild,
       {{400, 400}, {70, 70}, {260, 260}}},
      {0, 2, 2, 0, 0, 0, 31, 5, 0.f, false, "varlen: Sq > Sk (rows with no key), (31, 5)", 0, nullptr,
       {{260, 130}, {10, 300}, {129, 1}}},
  };
  const char* only = argc > 1 ? argv[1] : nullptr;
  uint32_t seed = 1;
  for (const Shape& s : shapes) {
    ++seed;
    if (only && std::string(s.name).find(only) == std::string::npos) continue;
    // One block per tile, and persistent blocks that each take several tiles.
    run<__nv_bfloat16, 64>(s, seed, 0);
    run<__half, 128>(s, seed + 100, 2);
    if (s.softcap > 0 || s.bshd || s.sinks != nullptr || !s.seqs.empty()) {
      run<__half, 64>(s, seed + 200, 1);
      run<__nv_bfloat16, 128>(s, seed + 300, 3);
    }
  }
  if (failures) {
    std::printf("fwd_sm90_emu_test: %d case(s) failed\n", failures);
    return 1;
  }
  std::printf("fwd_sm90_emu_test: ok\n");
  return 0;
}

// The CPU forward kernel of swa::attention, FlashAttention-style: per task
// (batch, query head, tile of kForwardTileRows query rows) the keys the tile
// sees are walked in blocks of kForwardTileKeys with an online softmax, all
// in per-thread buffers:
//   1. Q^T = scale log2(e) q_tile^T                        (D, kTileRows)
//   2. per key block: S^T = K Q^T                            (keys, kTileRows)
//      row max m, P^T = 2^(S^T - m), row sum l, O^T *= 2^(m_old - m)
//      O^T += V^T P^T                                       (D, kTileRows)
//   3. out = (O^T / l)^T, lse = (m + log2 l) ln 2
// Scores are kept in base 2 (log2(e) folded into the scale, as FlashAttention
// does), which makes the exponential's range reduction exact.
// The query rows sit in vector lanes (cpu/micro_gemm.h), so a row vector only
// meets the keys its rows see: a key run is computed for the row vectors that
// see some of it, and masked per lane only where a vector sees part of it.
// Work is O(Sq * W * D), memory O(tile) per thread; K and V rows are read in
// place for float32/float64 and converted block by block for 16-bit inputs.
//
// Included by the per-ISA translation units only (cpu/isa.h); Cfg gives the
// register blocking of the instruction set:
//   kBytes  vector width       kNJ  keys per score micro-kernel
//   kND     head dims per value micro-kernel    kNV  row vectors per micro-kernel
#pragma once

#include "cpu/forward_problem.h"
#include "cpu/micro_gemm.h"
#include "cpu/simd.h"

namespace swa::cpu::SWA_CPU_ISA_NS {

using SWA_KERNEL_NS::Band;
constexpr int64_t kTileRows = kForwardTileRows;
constexpr int64_t kTileKeys = kForwardTileKeys;
constexpr double kLog2e = 1.4426950408889634;  // log2(e)
constexpr double kLn2 = 0.6931471805599453;    // ln(2)

// A 64-byte aligned array of n T, released at scope exit.
template <class T>
struct AlignedBuffer {
  explicit AlignedBuffer(int64_t n) {
    size_t bytes = (size_t(std::max<int64_t>(n, 1)) * sizeof(T) + 63) / 64 * 64;
    data = static_cast<T*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(data != nullptr, "swa::attention: out of memory for a ", bytes, "-byte CPU buffer");
  }
  ~AlignedBuffer() { std::free(data); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  T* data;
};

// A run of keys [begin, end) of a block seen by the row vectors [v_begin, v_end).
struct KeyRun {
  int64_t begin, end;
  int v_begin, v_end;
};

// The forward kernel of one instruction set (Cfg) and accumulation type T.
template <class Cfg, class T>
struct ForwardKernel {
  using S = Simd<T, Cfg::kBytes>;
  using vec = typename S::vec;
  static constexpr int L = S::kLanes;
  static constexpr int kVecs = int(kTileRows / L);  // row vectors per tile
  static constexpr int R = int(kTileRows);          // leading dim of the transposed tiles
  static_assert(kTileRows % L == 0);

  const ForwardProblem& p;
  const int64_t D;
  const T scale;  // softmax scale * log2(e)
  // Per-thread buffers.
  AlignedBuffer<T> qt_buf, st_buf, ot_buf, kv_buf;
  T* qt;  // (D, R)          scaled Q^T
  T* st;  // (kTileKeys, R)  S^T, then P^T, of a key block
  T* ot;  // (D, R)          unnormalised O^T
  T* kb;  // (kTileKeys, D)  converted K rows (16-bit inputs)
  T* vb;  // (kTileKeys, D)  converted V rows (16-bit inputs)

  // The tile: rows [m0, m0 + rows), their bands, their row vectors.
  int64_t rows = 0;
  int nvec = 0;
  int64_t row_kb[kTileRows], row_ke[kTileRows];  // visible keys of each row
  int64_t vec_kb[kVecs], vec_ke[kVecs];      // keys some row of the vector sees
  int64_t full_kb[kVecs], full_ke[kVecs];    // keys every row of the vector sees
  vec m[kVecs], l[kVecs];                    // running row max and row sum
  vec block_max[kVecs];                      // row max of the current key block
  bool touched[kVecs];                       // the vector sees a key of the block
  int64_t max_begin[kVecs], max_end[kVecs];  // keys already in block_max
  KeyRun runs[2 * kVecs + 2];
  int nruns = 0;

  SWA_INLINE explicit ForwardKernel(const ForwardProblem& prob)
      : p(prob),
        D(prob.head_dim),
        scale(T(prob.scale * kLog2e)),
        qt_buf(prob.head_dim * R),
        st_buf(kTileKeys * R),
        ot_buf(prob.head_dim * R),
        kv_buf(prob.dtype == c10::kHalf || prob.dtype == c10::kBFloat16 ? 2 * kTileKeys * prob.head_dim : 1) {
    qt = qt_buf.data;
    st = st_buf.data;
    ot = ot_buf.data;
    kb = kv_buf.data;
    vb = kv_buf.data + kTileKeys * D;
  }

  // ---- in-type specific loads and stores (In: the input dtype) ----------

  // Step 1: qt[d][r] = scale log2(e) q[r][d], rows past the tile zero. L x L
  // blocks are transposed in registers; 16-bit inputs and a head-dim tail
  // go element by element.
  template <class In>
  SWA_INLINE void pack_q(const In* q, int64_t q_rs) {
    int64_t d_vec = 0;
    if constexpr (std::is_same_v<In, T>) {
      d_vec = D / L * L;
      const vec sc = S::set1(scale);
      for (int64_t r0 = 0; r0 < R; r0 += L) {
        for (int64_t d0 = 0; d0 < d_vec; d0 += L) {
          vec x[L];  // (L rows, L dims), then (L dims, L rows)
#pragma GCC unroll 64
          for (int i = 0; i < L; ++i) x[i] = r0 + i < rows ? S::load(q + (r0 + i) * q_rs + d0) * sc : S::zero();
          S::transpose(x);
#pragma GCC unroll 64
          for (int c = 0; c < L; ++c) S::store(qt + (d0 + c) * R + r0, x[c]);
        }
      }
    }
    for (int64_t d = d_vec; d < D; ++d) {
      for (int64_t r = 0; r < rows; ++r) qt[d * R + r] = T(q[r * q_rs + d]) * scale;
      for (int64_t r = rows; r < R; ++r) qt[d * R + r] = T(0);
    }
  }

  // Rows [n0, n1) of a [S, D] head (row stride rs) as T, into dst (n, D).
  template <class In>
  SWA_INLINE void convert_rows(const In* src, int64_t rs, int64_t n0, int64_t n1, T* dst) {
    for (int64_t j = n0; j < n1; ++j)
      for (int64_t d = 0; d < D; ++d) dst[(j - n0) * D + d] = T(src[j * rs + d]);
  }

  // Step 3: out rows = O^T columns / l, lse = m + log l; rows that see no
  // key get 0 and -inf.
  template <class In>
  SWA_INLINE void store_out(In* out, int64_t out_rs, float* lse, int64_t lse_rs) {
    const int64_t d_vec = std::is_same_v<In, T> ? D / L * L : 0;
    for (int v = 0; v < nvec; ++v) {
      const int64_t r0 = v * L;
      const vec inv = S::select(l[v] > S::zero(), S::set1(T(1)) / l[v], S::zero());
      for (int i = 0; i < L && r0 + i < rows; ++i) {
        const T sum = l[v][i];
        lse[(r0 + i) * lse_rs] = sum > T(0) ? float((double(m[v][i]) + std::log2(double(sum))) * kLn2) : -INFINITY;
      }
      if constexpr (std::is_same_v<In, T>) {
        for (int64_t d0 = 0; d0 < d_vec; d0 += L) {
          vec x[L];  // (L dims, L rows), then (L rows, L dims)
#pragma GCC unroll 64
          for (int c = 0; c < L; ++c) x[c] = S::load(ot + (d0 + c) * R + r0) * inv;
          S::transpose(x);
#pragma GCC unroll 64
          for (int i = 0; i < L; ++i)
            if (r0 + i < rows) S::store(out + (r0 + i) * out_rs + d0, x[i]);
        }
      }
      for (int i = 0; i < L && r0 + i < rows; ++i) {
        In* o = out + (r0 + i) * out_rs;
        for (int64_t d = d_vec; d < D; ++d) o[d] = In(ot[d * R + r0 + i] * inv[i]);
      }
    }
  }

  // ---- the tile ---------------------------------------------------------

  // Bands of rows [m0, m0 + rows) and of their row vectors.
  SWA_INLINE void tile_bands(int64_t m0) {
    for (int64_t r = 0; r < rows; ++r) {
      row_kb[r] = p.band.key_begin(m0 + r);
      row_ke[r] = p.band.key_end(m0 + r);
    }
    nvec = int((rows + L - 1) / L);
    for (int v = 0; v < nvec; ++v) {
      const int64_t r0 = v * L, r1 = std::min<int64_t>(r0 + L, rows);
      int64_t begin = std::numeric_limits<int64_t>::max(), end = std::numeric_limits<int64_t>::min();
      for (int64_t r = r0; r < r1; ++r) {
        if (row_ke[r] <= row_kb[r]) continue;  // the row sees nothing
        begin = std::min(begin, row_kb[r]);
        end = std::max(end, row_ke[r]);
      }
      vec_kb[v] = begin < end ? begin : 0;
      vec_ke[v] = begin < end ? end : 0;
      // key_begin and key_end grow with the row: the last row's begin and
      // the first row's end bound the keys every row sees.
      const bool complete = r1 - r0 == L;
      full_kb[v] = complete ? row_kb[r1 - 1] : 1;
      full_ke[v] = complete ? row_ke[r0] : 0;
      m[v] = S::set1(-std::numeric_limits<T>::infinity());
      l[v] = S::zero();
    }
    for (int64_t i = 0; i < D * R; ++i) ot[i] = T(0);
  }

  // The runs of keys in [n0, n1) with a constant set of row vectors seeing
  // them: breakpoints at every vector's first and last key.
  SWA_INLINE void key_runs(int64_t n0, int64_t n1) {
    int64_t cuts[2 * kVecs + 2];
    int ncuts = 0;
    cuts[ncuts++] = n0;
    cuts[ncuts++] = n1;
    for (int v = 0; v < nvec; ++v) {
      if (vec_kb[v] > n0 && vec_kb[v] < n1) cuts[ncuts++] = vec_kb[v];
      if (vec_ke[v] > n0 && vec_ke[v] < n1) cuts[ncuts++] = vec_ke[v];
    }
    std::sort(cuts, cuts + ncuts);
    nruns = 0;
    for (int c = 0; c + 1 < ncuts; ++c) {
      const int64_t a = cuts[c], b = cuts[c + 1];
      if (a == b) continue;
      int v0 = nvec, v1 = 0;
      for (int v = 0; v < nvec; ++v) {
        if (vec_kb[v] <= a && a < vec_ke[v]) {
          v0 = std::min(v0, v);
          v1 = v + 1;
        }
      }
      if (v0 < v1) runs[nruns++] = KeyRun{a, b, v0, v1};
    }
  }

  // S^T of keys [j, j + NJ) for vectors [v, v + nv). Without softcap, the
  // max of the vectors that see all these keys in full goes into block_max
  // right away; their keys [max_begin, max_end) need no second look.
  template <int NJ>
  SWA_INLINE void score_chunk(int64_t n0, const T* k, int64_t k_rs, int64_t j, int v, int nv,
                              bool fuse_max) {
    vec chunk_max[Cfg::kNV];  // (nv)
    for (int c = 0; c < nv; ++c) chunk_max[c] = S::set1(-std::numeric_limits<T>::infinity());
    score_block<S, NJ, Cfg::kNV>(nv, k + (j - n0) * k_rs, k_rs, D, qt + v * L, R, st + (j - n0) * R + v * L,
                                 R, fuse_max ? chunk_max : nullptr);
    if (!fuse_max) return;
    for (int c = 0; c < nv; ++c) {
      if (full_kb[v + c] <= j && j + NJ <= full_ke[v + c]) {
        block_max[v + c] = S::max(block_max[v + c], chunk_max[c]);
        // Chunks seen in full by a vector are consecutive: one interval.
        max_begin[v + c] = std::min(max_begin[v + c], j);
        max_end[v + c] = std::max(max_end[v + c], j + NJ);
      }
    }
  }

  // Step 2a: S^T of the runs of block [n0, ...); K row j at k + (j - n0) * k_rs.
  SWA_INLINE void scores(int64_t n0, const T* k, int64_t k_rs) {
    for (int v = 0; v < nvec; ++v) {
      block_max[v] = S::set1(-std::numeric_limits<T>::infinity());
      touched[v] = false;
      max_begin[v] = std::numeric_limits<int64_t>::max();
      max_end[v] = std::numeric_limits<int64_t>::min();
    }
    const bool fuse_max = !(p.softcap > 0);
    for (int ri = 0; ri < nruns; ++ri) {
      const KeyRun& run = runs[ri];
      for (int v = run.v_begin; v < run.v_end; v += Cfg::kNV) {
        const int nv = std::min(Cfg::kNV, run.v_end - v);
        for (int c = 0; c < nv; ++c) touched[v + c] = true;
        int64_t j = run.begin;
        for (; j + Cfg::kNJ <= run.end; j += Cfg::kNJ) score_chunk<Cfg::kNJ>(n0, k, k_rs, j, v, nv, fuse_max);
        if constexpr (Cfg::kNJ > 2) {
          for (; j + 2 <= run.end; j += 2) score_chunk<2>(n0, k, k_rs, j, v, nv, fuse_max);
        }
        for (; j < run.end; ++j) score_chunk<1>(n0, k, k_rs, j, v, nv, fuse_max);
      }
    }
  }

  // Step 2b: softcap and band mask on S^T (and the rest of the block max),
  // the online softmax update of m and l, O^T rescaled, S^T turned into P^T.
  SWA_INLINE void softmax(int64_t n0) {
    const vec neg_inf = S::set1(-std::numeric_limits<T>::infinity());
    const T softcap = T(p.softcap);
    for (int ri = 0; ri < nruns; ++ri) {
      const KeyRun& run = runs[ri];
      for (int v = run.v_begin; v < run.v_end; ++v) {
        // Keys of the run not in block_max yet: [run.begin, run.end) minus
        // [max_begin, max_end), as [a0, a1) and [b0, b1).
        const int64_t a0 = run.begin, a1 = std::clamp(max_begin[v], run.begin, run.end);
        const int64_t b0 = std::clamp(max_end[v], a1, run.end), b1 = run.end;
        if (a0 == a1 && b0 == b1) continue;
        // Lane i sees key j iff row_kb <= j < row_ke; relative to n0 and
        // clamped so that they are exact in T.
        vec rel_kb = S::zero(), rel_ke = S::zero();
        for (int i = 0; i < L && v * L + i < rows; ++i) {
          const int64_t r = v * L + i;
          rel_kb[i] = T(std::clamp<int64_t>(row_kb[r] - n0, -1, kTileKeys + 1));
          rel_ke[i] = T(std::clamp<int64_t>(row_ke[r] - n0, -1, kTileKeys + 1));
        }
        const bool full = full_kb[v] <= run.begin && run.end <= full_ke[v];
        vec mx = block_max[v];
        auto cap_mask_max = [&](int64_t j) {
          T* sp = st + (j - n0) * R + v * L;
          vec s = S::load(sp);
          if (softcap > T(0)) {  // c tanh(x / c) on the natural-base score x
            for (int i = 0; i < L; ++i) s[i] = softcap * std::tanh(s[i] * T(kLn2) / softcap) * T(kLog2e);
          }
          if (!full) {
            const vec key = S::set1(T(j - n0));
            s = S::select((rel_kb <= key) & (key < rel_ke), s, neg_inf);
          }
          S::store(sp, s);
          mx = S::max(mx, s);
        };
        for (int64_t j = a0; j < a1; ++j) cap_mask_max(j);
        for (int64_t j = b0; j < b1; ++j) cap_mask_max(j);
        block_max[v] = mx;
      }
    }
    vec m_use[kVecs];
    for (int v = 0; v < nvec; ++v) {
      if (!touched[v]) continue;
      const vec m_new = S::max(m[v], block_max[v]);
      m_use[v] = S::select(m_new == neg_inf, S::zero(), m_new);  // rows with no key yet
      if (!S::any(m_new != m[v])) continue;  // no row max moved: nothing to rescale
      const vec alpha = S::exp2_nonpositive(m[v] - m_use[v]);
      m[v] = m_new;
      l[v] *= alpha;
      for (int64_t d = 0; d < D; ++d) S::store(ot + d * R + v * L, S::load(ot + d * R + v * L) * alpha);
    }
    for (int ri = 0; ri < nruns; ++ri) {
      const KeyRun& run = runs[ri];
      for (int v = run.v_begin; v < run.v_end; ++v) {
        vec sum = S::zero();
        for (int64_t j = run.begin; j < run.end; ++j) {
          T* sp = st + (j - n0) * R + v * L;
          const vec pr = S::exp2_nonpositive(S::load(sp) - m_use[v]);
          S::store(sp, pr);
          sum += pr;
        }
        l[v] += sum;
      }
    }
  }

  // Step 2c: O^T += V^T P^T over the runs; V row j at vr + (j - n0) * v_rs.
  SWA_INLINE void values(int64_t n0, const T* vr, int64_t v_rs) {
    for (int ri = 0; ri < nruns; ++ri) {
      const KeyRun& run = runs[ri];
      const int64_t n = run.end - run.begin;
      const T* pt = st + (run.begin - n0) * R;
      const T* v_rows = vr + (run.begin - n0) * v_rs;
      for (int v = run.v_begin; v < run.v_end; v += Cfg::kNV) {
        const int nv = std::min(Cfg::kNV, run.v_end - v);
        int64_t d = 0;
        for (; d + Cfg::kND <= D; d += Cfg::kND)
          value_block<S, Cfg::kND, Cfg::kNV>(nv, pt + v * L, R, v_rows + d, v_rs, n, ot + d * R + v * L, R);
        if constexpr (Cfg::kND > 2) {
          for (; d + 2 <= D; d += 2)
            value_block<S, 2, Cfg::kNV>(nv, pt + v * L, R, v_rows + d, v_rs, n, ot + d * R + v * L, R);
        }
        for (; d < D; ++d)
          value_block<S, 1, Cfg::kNV>(nv, pt + v * L, R, v_rows + d, v_rs, n, ot + d * R + v * L, R);
      }
    }
  }

  // One task: rows [m0, m0 + rows) of head h of batch b.
  template <class In>
  SWA_INLINE void tile(int64_t b, int64_t h, int64_t m0) {
    rows = std::min(kTileRows, p.seqlen_q - m0);
    In* out = static_cast<In*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + m0 * p.out_stride[2];
    float* lse = p.lse + b * p.lse_stride[0] + h * p.lse_stride[1] + m0 * p.lse_stride[2];
    const auto keys = SWA_KERNEL_NS::key_range(p.band, m0, m0 + rows);
    if (keys.empty()) {  // no row of the tile sees a key
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t d = 0; d < D; ++d) out[r * p.out_stride[2] + d] = In(0);
        lse[r * p.lse_stride[2]] = -INFINITY;
      }
      return;
    }
    const int64_t hk = h / p.group;
    const In* q = static_cast<const In*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] + m0 * p.q_stride[2];
    const In* k = static_cast<const In*>(p.k) + b * p.k_stride[0] + hk * p.k_stride[1];
    const In* v = static_cast<const In*>(p.v) + b * p.v_stride[0] + hk * p.v_stride[1];
    pack_q(q, p.q_stride[2]);
    tile_bands(m0);
    for (int64_t n0 = keys.begin; n0 < keys.end; n0 += kTileKeys) {
      const int64_t n1 = std::min(n0 + kTileKeys, keys.end);
      key_runs(n0, n1);
      if (nruns == 0) continue;
      if constexpr (std::is_same_v<In, T>) {
        scores(n0, k + n0 * p.k_stride[2], p.k_stride[2]);
        softmax(n0);
        values(n0, v + n0 * p.v_stride[2], p.v_stride[2]);
      } else {  // 16-bit rows converted to T
        convert_rows(k, p.k_stride[2], n0, n1, kb);
        convert_rows(v, p.v_stride[2], n0, n1, vb);
        scores(n0, kb, D);
        softmax(n0);
        values(n0, vb, D);
      }
    }
    store_out(out, p.out_stride[2], lse, p.lse_stride[2]);
  }

  // The tasks of the queue; consecutive tasks are consecutive tiles of a head.
  template <class In>
  SWA_INLINE void run(TaskQueue& queue) {
    int64_t task_begin, task_end;
    while (queue.next(task_begin, task_end)) {
      for (int64_t task = task_begin; task < task_end; ++task) {
        const int64_t m_block = task % p.m_blocks;
        const int64_t h = (task / p.m_blocks) % p.heads_q;
        const int64_t b = task / (p.m_blocks * p.heads_q);
        tile<In>(b, h, m_block * kTileRows);
      }
    }
  }
};

// One worker with the kernel of one instruction set.
template <class Cfg>
void run_tasks(const ForwardProblem& p, TaskQueue& queue) {
  switch (p.dtype) {
    case c10::kDouble: ForwardKernel<Cfg, double>(p).template run<double>(queue); break;
    case c10::kFloat: ForwardKernel<Cfg, float>(p).template run<float>(queue); break;
    case c10::kHalf: ForwardKernel<Cfg, float>(p).template run<c10::Half>(queue); break;
    case c10::kBFloat16: ForwardKernel<Cfg, float>(p).template run<c10::BFloat16>(queue); break;
    default: TORCH_CHECK(false, "swa::attention: unsupported dtype ", p.dtype);
  }
}

}  // namespace swa::cpu::SWA_CPU_ISA_NS

// The score transform of the forward kernels (portable and sm90): scalars
// computed on the host (make_score_scale in fwd_launch.cuh), and the element
// mask of the key tiles that cross a band edge.
#pragma once

#include <cmath>

#include "swa/kernels/namespace.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// Scores are kept in log2 units: s2 = log2(e) * s, where s = scale * q.k, or
// with a softcap s = softcap * tanh(scale * q.k / softcap).
struct FwdScoreScale {
  float scale_log2;      // scale * log2(e)              (no softcap)
  float softcap_log2;    // softcap * log2(e)            (softcap)
  float scale_over_cap;  // scale / softcap              (softcap)
  int use_softcap;
};

// x as a float, saturated at float's max: scale / softcap of a tiny cap with a
// large scale must not become inf (a score of 0 would then give 0 * inf = NaN).
// Host code (the launchers fill the score scalars with it).
inline float saturate_to_float(double x) {
  constexpr double kFloatMax = 3.4028234663852886e38;
  return static_cast<float>(std::fmax(-kFloatMax, std::fmin(kFloatMax, x)));
}

// Sets to -inf the scores of one thread's accumulator fragment (the m16n8
// layout, shared by mma.sync and wgmma) whose key lies outside its row's
// window. The thread holds rows i = 0, 1 (group, group + 8) and, in each of
// the kNTiles 8-column tiles j, columns c = 8 j + 2 tig + e (e = 0, 1): key
// n0 + c, visible iff key_begin <= n0 + c < key_end (key_end <= Sk; empty
// for dead rows). score(j, i, e) is that element of the accumulator.
template <int kNTiles, typename Score>
__device__ __forceinline__ void mask_outside_window(const int (&row_key_begin)[2], const int (&row_key_end)[2],
                                                    int n0, int tig, Score score) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int lo = row_key_begin[i] - n0;  // visible columns [lo, hi)
    const int hi = row_key_end[i] - n0;
#pragma unroll
    for (int j = 0; j < kNTiles; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = 8 * j + 2 * tig + e;
        if (c < lo || c >= hi) score(j, i, e) = -INFINITY;
      }
  }
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS

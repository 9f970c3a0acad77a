// The score transform of the forward kernels (portable and sm90): scalars
// computed on the host (make_score_scale in fwd_launch.cuh), the element
// mask of the key tiles that cross a band edge, and the end of a row (with
// the sink logit).
#pragma once

#include <cmath>

#include "swa/kernels/band.h"
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
// layout, shared by mma.sync and wgmma) whose key its row does not see. The
// thread holds rows i = 0, 1 (group, group + 8) and, in each of the kNTiles
// 8-column tiles j, columns c = 8 j + 2 tig + e (e = 0, 1): key n0 + c,
// visible iff it is in the row's band key_begin <= n0 + c < key_end (key_end
// <= Sk; empty for dead rows) or in its sink run n0 + c < sink_end (band.h;
// 0 without sink tokens). score(j, i, e) is that element of the accumulator.
template <int kNTiles, typename Score>
__device__ __forceinline__ void mask_invisible_keys(const int (&row_sink_end)[2], const int (&row_key_begin)[2],
                                                    const int (&row_key_end)[2], int n0, int tig, Score score) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const int sink_hi = row_sink_end[i] - n0;  // visible columns [0, sink_hi) and [lo, hi)
    const int lo = row_key_begin[i] - n0;
    const int hi = row_key_end[i] - n0;
#pragma unroll
    for (int j = 0; j < kNTiles; ++j)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int c = 8 * j + 2 * tig + e;
        if (!column_visible(c, sink_hi, lo, hi)) score(j, i, e) = -INFINITY;  // band.h
      }
  }
}

// log2(2^a + 2^b) without NaN from -inf on either side (NaN in, NaN out; a
// or b = +inf gives +inf).
__device__ __forceinline__ float logaddexp2f(float a, float b) {
  if (a == -INFINITY) return b;
  if (b == -INFINITY) return a;
  const float hi = a > b ? a : b;  // a NaN a or b ends up in hi or lo: NaN out
  const float lo = a > b ? b : a;
  const float d = lo == hi ? 0.f : lo - hi;  // inf == inf: 0, not NaN
  return hi + log2f(1.f + exp2f(d));
}

// The end of one row of the online softmax: the factor that turns the
// accumulated O = sum_j 2^(s2_j - max2) v_j into the output, and the row's
// lse (natural log). sum = 0: the row saw no key (out 0, lse -inf, or the
// sink logit); NaN: a NaN score reached it (out and lse NaN, never the -inf
// of "no key": the max skips NaN). With a sink logit (natural units, not
// scaled) the softmax runs over one more, value-less logit:
// lse2 = log2(sum 2^max2 + 2^(sink log2 e)), out = O 2^(max2 - lse2).
struct RowFinish {
  float out_scale;
  float lse;
};
__device__ __forceinline__ RowFinish finish_row(float max2, float sum, bool has_sink, float sink_logit) {
  constexpr float kLn2 = 0.6931471805599453f;
  constexpr float kLog2e = 1.4426950408889634f;
  if (!has_sink) {
    if (sum == 0.f) return {0.f, -INFINITY};
    return {1.f / sum, (max2 + log2f(sum)) * kLn2};
  }
  if (sum == 0.f) return {0.f, sink_logit};
  const float lse2 = logaddexp2f(max2 + log2f(sum), sink_logit * kLog2e);
  return {exp2f(max2 - lse2), lse2 * kLn2};
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS

// The end of a row's online softmax, shared by the CPU kernels (forward,
// decode, the decode's split merge): from the row's base-2 reference m and
// sum l (so that the normaliser is l 2^m) to the factor its unnormalised
// output is multiplied by and its lse, with an optional sink logit (one
// value-less logit that joins the softmax; natural base, not scaled).
//   l > 0:   inv = 1 / l, lse = (m + log2 l) ln 2; with a sink s (base 2
//            s2 = s log2 e) the normaliser is l 2^m + 2^s2.
//   l = 0:   the row saw no key: out 0 and lse -inf, or the sink's s.
//   l NaN:   a NaN score: out and lse NaN (never the -inf of "no key").
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

namespace swa::cpu {

constexpr double kRowLog2e = 1.4426950408889634;
constexpr double kRowLn2 = 0.6931471805599453;

// log2(2^a + 2^b) without overflow; -inf when both are -inf, NaN when either is NaN.
inline double log2_add_exp2(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return NAN;
  const double hi = std::max(a, b), lo = std::min(a, b);
  if (hi == -INFINITY || hi == INFINITY) return hi;
  return hi + std::log2(1.0 + std::exp2(lo - hi));
}

template <class T>
inline void finish_row(T m, T l, const double* sink, T& inv, float& lse) {
  const double band2 = l > T(0) ? double(m) + std::log2(double(l)) : l == T(0) ? -INFINITY : NAN;
  if (sink == nullptr) {
    inv = l > T(0) ? T(1) / l : l == T(0) ? T(0) : std::numeric_limits<T>::quiet_NaN();
    lse = float(band2 * kRowLn2);
    return;
  }
  const double sink2 = *sink * kRowLog2e;
  // Mostly the sink's weight relative to m joins l (one exp2); where that is
  // not finite (a sink ~1000 above the row's scores, a NaN) the
  // overflow-free form decides.
  const T total = l > T(0) ? l + std::exp2(T(sink2) - m) : std::numeric_limits<T>::quiet_NaN();
  if (std::isfinite(total)) {
    inv = T(1) / total;
    lse = float((double(m) + std::log2(double(total))) * kRowLn2);
    return;
  }
  const double lse2 = log2_add_exp2(band2, sink2);
  inv = l > T(0) ? T(std::exp2(double(m) - lse2)) : l == T(0) && !std::isnan(lse2) ? T(0)
                                                                                    : std::numeric_limits<T>::quiet_NaN();
  lse = float(lse2 * kRowLn2);
}

}  // namespace swa::cpu

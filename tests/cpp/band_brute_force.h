// Visibility of key j to query row i straight from the op's definition,
// independent of band.h's helpers: the brute force the unit tests compare to.
#pragma once

#include <cstdint>

#include "swa/kernels/band.h"

inline bool sees(const SWA_KERNEL_NS::Band& b, int64_t i, int64_t j) {
  const int64_t p = i + b.seqlen_k - b.seqlen_q;  // bottom-right alignment
  const bool left_ok = b.window_left < 0 || j >= p - b.window_left;
  const bool right_ok = b.window_right < 0 || j <= p + b.window_right;
  const bool sink = j < b.sink_tokens;  // a sink key: seen whenever the right edge reaches it
  return i >= 0 && i < b.seqlen_q && j >= 0 && j < b.seqlen_k && (left_ok || sink) && right_ok;
}

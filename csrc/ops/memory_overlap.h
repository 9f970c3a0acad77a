// Whether strided tensors can share memory, decided from sizes and strides
// alone (no element is read), for the in-place cache writes: a write into
// memory that another operand (or another element of the same destination)
// also occupies would lose data silently.
//
// A strided tensor's element at index (i_0, ..., i_n) sits at
//     offset + sum_k i_k * stride_k      (elements, 0 <= i_k < size_k).
// Element i of a and element j of b (same strides) coincide iff
// sum_k (i_k - j_k) * stride_k = offset_b - offset_a; two elements of one
// tensor coincide iff that holds for a nonzero difference and offset 0. The
// search tries the dims from the largest stride down and keeps only the
// differences that leave a remainder the smaller dims can still reach, so it
// is exact and visits a handful of branches for every real layout. Layouts it
// cannot settle within its budget, or pairs with different strides whose
// memory spans meet, count as overlapping (refused: an in-place write must
// never guess). No torch headers.
#pragma once

#include <cstdint>
#include <vector>

namespace swa {

struct StridedLayout {
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;  // in elements, >= 0
  int64_t offset = 0;            // bytes from a base shared by the layouts compared
  int64_t itemsize = 1;          // bytes per element
};

enum class Overlap { kNo, kYes, kUnknown };

// Two distinct indices of t address the same element.
Overlap internal_overlap(const StridedLayout& t);

// Some element of a and some element of b share a byte (both layouts in the
// same allocation). Decided exactly when their memory spans are apart or when
// they have the same strides and itemsize (the usual cases: a key and a value
// ring cut from one buffer, a slice of a ring); otherwise kUnknown where the
// spans meet.
Overlap mutual_overlap(const StridedLayout& a, const StridedLayout& b);

}  // namespace swa

#include "ops/memory_overlap.h"

#include <algorithm>
#include <numeric>

namespace swa {
namespace {

// One dim of an index difference d: lo <= d <= hi, moving the address by
// d * stride elements.
struct Dim {
  int64_t lo, hi, stride;
};

// Is target = sum_k d_k * stride_k for some d within the dims' ranges (d != 0
// when nonzero is asked for)? Dims are tried from the largest stride down;
// at each, only the d that leave a remainder the smaller dims can still reach.
class DifferenceSearch {
 public:
  explicit DifferenceSearch(std::vector<Dim> dims) : dims_(std::move(dims)) {
    std::sort(dims_.begin(), dims_.end(), [](const Dim& a, const Dim& b) { return a.stride > b.stride; });
    reach_lo_.assign(dims_.size() + 1, 0);
    reach_hi_.assign(dims_.size() + 1, 0);
    for (size_t k = dims_.size(); k-- > 0;) {
      reach_lo_[k] = reach_lo_[k + 1] + dims_[k].lo * dims_[k].stride;
      reach_hi_[k] = reach_hi_[k + 1] + dims_[k].hi * dims_[k].stride;
    }
  }

  Overlap find(int64_t target, bool nonzero) {
    budget_ = 1 << 14;
    if (visit(0, target, nonzero)) return Overlap::kYes;
    return budget_ < 0 ? Overlap::kUnknown : Overlap::kNo;
  }

 private:
  bool visit(size_t k, int64_t rest, bool need_nonzero) {
    if (--budget_ < 0) return false;
    if (k == dims_.size()) return rest == 0 && !need_nonzero;
    const Dim& dim = dims_[k];
    if (dim.stride == 0) {  // any d moves nothing: a nonzero one is free when the range has one
      const bool has_nonzero = dim.lo < 0 || dim.hi > 0;
      return visit(k + 1, rest, need_nonzero && !has_nonzero);
    }
    // rest - d * stride must lie in [reach_lo, reach_hi] of the dims after k.
    const int64_t lo = std::max(dim.lo, ceil_div(rest - reach_hi_[k + 1], dim.stride));
    const int64_t hi = std::min(dim.hi, floor_div(rest - reach_lo_[k + 1], dim.stride));
    for (int64_t d = lo; d <= hi; ++d)
      if (visit(k + 1, rest - d * dim.stride, need_nonzero && d == 0)) return true;
    return false;
  }

  static int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }
  static int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

  std::vector<Dim> dims_;
  std::vector<int64_t> reach_lo_, reach_hi_;
  int64_t budget_ = 0;
};

int64_t numel(const StridedLayout& t) {
  return std::accumulate(t.sizes.begin(), t.sizes.end(), int64_t{1}, std::multiplies<>());
}

// Bytes [begin, end) that t's elements span.
std::pair<int64_t, int64_t> span(const StridedLayout& t) {
  int64_t last = 0;
  for (size_t i = 0; i < t.sizes.size(); ++i) last += (t.sizes[i] - 1) * t.strides[i];
  return {t.offset, t.offset + (last + 1) * t.itemsize};
}

}  // namespace

Overlap internal_overlap(const StridedLayout& t) {
  if (numel(t) <= 1) return Overlap::kNo;
  std::vector<Dim> dims;
  for (size_t i = 0; i < t.sizes.size(); ++i)
    if (t.sizes[i] > 1) dims.push_back({-(t.sizes[i] - 1), t.sizes[i] - 1, t.strides[i]});
  return DifferenceSearch(std::move(dims)).find(0, /*nonzero=*/true);
}

Overlap mutual_overlap(const StridedLayout& a, const StridedLayout& b) {
  if (numel(a) == 0 || numel(b) == 0) return Overlap::kNo;
  const auto [a_begin, a_end] = span(a);
  const auto [b_begin, b_end] = span(b);
  if (a_end <= b_begin || b_end <= a_begin) return Overlap::kNo;
  const int64_t delta = b.offset - a.offset;
  if (a.strides != b.strides || a.itemsize != b.itemsize || delta % a.itemsize != 0) return Overlap::kUnknown;
  // Element i of a meets element j of b iff (i - j) . strides = delta (in
  // elements: elements of one size either coincide or are apart).
  std::vector<Dim> dims;
  for (size_t k = 0; k < a.sizes.size(); ++k)
    if (a.sizes[k] > 1 || b.sizes[k] > 1) dims.push_back({-(b.sizes[k] - 1), a.sizes[k] - 1, a.strides[k]});
  return DifferenceSearch(std::move(dims)).find(delta / a.itemsize, /*nonzero=*/false);
}

}  // namespace swa

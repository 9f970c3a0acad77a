// Unit tests of the overlap analysis of the in-place cache writes
// (csrc/ops/memory_overlap.h) against brute force: every element address of
// random small strided layouts (zero strides, permuted dims, interleaved and
// sliced views of one buffer). Exactness where the analysis claims it, and
// kUnknown never where brute force finds the layouts apart *and* the
// analysis is meant to decide (same strides). Plain C++: links no torch.
#include <cstdint>
#include <cstdio>
#include <random>
#include <set>
#include <vector>

#include "ops/memory_overlap.cpp"  // torch-free: compiled into the test
#include "expect.h"

namespace {

using swa::Overlap;
using swa::StridedLayout;

// Byte addresses of every element's first byte (itemsize-aligned layouts).
std::vector<int64_t> addresses(const StridedLayout& t) {
  std::vector<int64_t> out{t.offset};
  for (size_t k = 0; k < t.sizes.size(); ++k) {
    std::vector<int64_t> next;
    for (int64_t base : out)
      for (int64_t i = 0; i < t.sizes[k]; ++i) next.push_back(base + i * t.strides[k] * t.itemsize);
    out.swap(next);
  }
  return out;
}

bool brute_internal(const StridedLayout& t) {
  const auto a = addresses(t);
  return std::set<int64_t>(a.begin(), a.end()).size() != a.size();
}

bool brute_mutual(const StridedLayout& a, const StridedLayout& b) {
  const auto xa = addresses(a), xb = addresses(b);
  const std::set<int64_t> sa(xa.begin(), xa.end());
  for (int64_t x : xb)
    for (int64_t byte = x - a.itemsize + 1; byte < x + b.itemsize; ++byte)
      if (sa.count(byte)) return true;
  return false;
}

StridedLayout random_layout(std::mt19937_64& rng, int64_t itemsize) {
  StridedLayout t;
  const int dims = 1 + static_cast<int>(rng() % 4);
  for (int k = 0; k < dims; ++k) {
    t.sizes.push_back(static_cast<int64_t>(rng() % 4));  // 0 .. 3 (0: empty)
    t.strides.push_back(static_cast<int64_t>(rng() % 13));  // 0 .. 12 (0: expanded)
  }
  t.offset = static_cast<int64_t>(rng() % 20) * itemsize;
  t.itemsize = itemsize;
  return t;
}

void test_fixed_cases() {
  // A contiguous [2, 2, 8, 16] ring and the same ring with an expanded batch.
  const StridedLayout ring{{2, 2, 8, 16}, {256, 128, 16, 1}, 0, 4};
  EXPECT(swa::internal_overlap(ring) == Overlap::kNo, "contiguous ring");
  const StridedLayout expanded{{2, 2, 8, 16}, {0, 128, 16, 1}, 0, 4};
  EXPECT(swa::internal_overlap(expanded) == Overlap::kYes, "expanded batch");
  // k and v rings interleaved row by row in one [2, 2, 8, 2, 16] buffer.
  const StridedLayout k{{2, 2, 8, 16}, {512, 256, 32, 1}, 0, 4};
  StridedLayout v = k;
  v.offset = 16 * 4;
  EXPECT(swa::mutual_overlap(k, v) == Overlap::kNo, "interleaved rings");
  EXPECT(swa::mutual_overlap(k, k) == Overlap::kYes, "same ring");
  // Slots 4..11 against slots 0..7 of one [2, 2, 12, 16] buffer.
  const StridedLayout lo{{2, 2, 8, 16}, {384, 192, 16, 1}, 0, 4};
  StridedLayout hi = lo;
  hi.offset = 4 * 16 * 4;
  EXPECT(swa::mutual_overlap(lo, hi) == Overlap::kYes, "overlapping slot ranges");
  // A 3-slot slice of a ring, inside it.
  StridedLayout slice{{2, 2, 3, 16}, {256, 128, 16, 1}, 2 * 16 * 4, 4};
  EXPECT(swa::mutual_overlap(ring, slice) == Overlap::kYes, "slice inside the ring");
}

void test_random_against_brute_force() {
  std::mt19937_64 rng(7);
  int decided = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    const int64_t itemsize = (rng() % 2) ? 4 : 2;
    const StridedLayout a = random_layout(rng, itemsize);
    const Overlap internal = swa::internal_overlap(a);
    const bool brute = brute_internal(a);
    EXPECT(internal != Overlap::kUnknown, "trial %d: internal undecided", trial);
    EXPECT((internal == Overlap::kYes) == brute, "trial %d: internal %d, brute %d", trial,
           static_cast<int>(internal), brute);
    // b: the same strides (decided exactly) or other ones (exact when apart).
    StridedLayout b = random_layout(rng, itemsize);
    if (rng() % 2) {
      b.strides = a.strides;
      b.sizes.resize(a.sizes.size(), 2);
    }
    if (b.sizes.size() != a.sizes.size()) continue;
    const Overlap mutual = swa::mutual_overlap(a, b);
    const bool brute_ab = brute_mutual(a, b);
    if (mutual != Overlap::kUnknown) {
      ++decided;
      EXPECT((mutual == Overlap::kYes) == brute_ab, "trial %d: mutual %d, brute %d", trial,
             static_cast<int>(mutual), brute_ab);
    } else {
      EXPECT(a.strides != b.strides, "trial %d: same strides left undecided", trial);
    }
  }
  EXPECT(decided > 5000, "only %d pairs decided", decided);
}

}  // namespace

int main() {
  test_fixed_cases();
  test_random_against_brute_force();
  return report("test_memory_overlap");
}

// CPU checks of the Hopper forward's host-side and layout math
// (swa/kernels/sm90_tma.h): the TMA tensor-map shapes of [B, H, S, D] views
// (what is accepted, which strides are passed), the 128-byte-swizzled tile
// layout that TMA writes, read back through the wgmma descriptor addresses the
// kernel builds (an emulation of the PTX ISA canonical layouts: K-major Q / K,
// MN-major V), the descriptor encoding, and the three band phases of the
// kernel's descending key walk.
// Plain C++: links no torch and no CUDA; nothing here proves the hardware
// agrees, it pins down the arithmetic the kernel relies on.
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "expect.h"
#include "swa/kernels/fwd_tiles.h"
#include "swa/kernels/sm90_tma.h"

namespace kn = SWA_KERNEL_NS;

namespace {

void* aligned_ptr(uintptr_t offset = 0) { return reinterpret_cast<void*>(uintptr_t{1} << 20 | offset); }

void test_tma_shapes() {
  // Contiguous [B, H, S, D].
  {
    const int64_t B = 2, H = 3, S = 100, D = 128;
    auto s = kn::sm90_tma_shape(aligned_ptr(), B, H, S, D, H * S * D, S * D, D, 128);
    EXPECT(s.ok, "contiguous bhsd");
    EXPECT(s.dims[0] == 128 && s.dims[1] == 100 && s.dims[2] == 3 && s.dims[3] == 2, "dims");
    EXPECT(s.strides_bytes[0] == 256 && s.strides_bytes[1] == 256 * 100 && s.strides_bytes[2] == 256 * 300,
           "strides %llu %llu %llu", (unsigned long long)s.strides_bytes[0],
           (unsigned long long)s.strides_bytes[1], (unsigned long long)s.strides_bytes[2]);
    EXPECT(s.box[0] == 64 && s.box[1] == 128 && s.box[2] == 1 && s.box[3] == 1, "box");
  }
  // Transposed [B, S, H, D] storage (the HF layout): head stride < row stride.
  {
    const int64_t B = 1, H = 8, S = 77, D = 64;
    auto s = kn::sm90_tma_shape(aligned_ptr(), B, H, S, D, S * H * D, D, H * D, 128);
    EXPECT(s.ok, "bshd view");
    EXPECT(s.strides_bytes[0] == uint64_t(H * D * 2) && s.strides_bytes[1] == uint64_t(D * 2), "bshd strides");
    // B = 1: the batch stride is never used; it is replaced by a valid one.
    EXPECT(s.strides_bytes[2] % 16 == 0 && s.strides_bytes[2] > 0, "size-1 batch stride");
  }
  // Size-1 dims with arbitrary (even odd) strides are fine.
  {
    auto s = kn::sm90_tma_shape(aligned_ptr(), 1, 1, 5, 64, 3, 7, 64, 128);
    EXPECT(s.ok, "size-1 dims, odd strides");
    EXPECT(s.strides_bytes[1] == 128 * 5 && s.strides_bytes[2] == 128 * 5, "packed strides %llu %llu",
           (unsigned long long)s.strides_bytes[1], (unsigned long long)s.strides_bytes[2]);
  }
  // Rejected: unaligned base, row stride not a multiple of 8 elements, head
  // dims TMA boxes of 64 cannot cover, broadcast (stride 0), huge strides,
  // empty sequences.
  EXPECT(!kn::sm90_tma_shape(aligned_ptr(8), 1, 1, 10, 64, 640, 640, 64, 128).ok, "unaligned base");
  EXPECT(!kn::sm90_tma_shape(aligned_ptr(), 1, 1, 10, 64, 650, 650, 65, 128).ok, "row stride 65");
  EXPECT(!kn::sm90_tma_shape(aligned_ptr(), 1, 2, 10, 64, 1300, 652, 64, 128).ok, "head stride 652 (not x8)");
  EXPECT(!kn::sm90_tma_shape(aligned_ptr(), 1, 1, 10, 96, 960, 960, 96, 128).ok, "D = 96");
  EXPECT(!kn::sm90_tma_shape(aligned_ptr(), 1, 1, 10, 32, 320, 320, 32, 128).ok, "D = 32");
  EXPECT(!kn::sm90_tma_shape(aligned_ptr(), 2, 1, 10, 64, 0, 640, 64, 128).ok, "broadcast batch");
  EXPECT(!kn::sm90_tma_shape(aligned_ptr(), 2, 1, 10, 64, int64_t{1} << 40, 640, 64, 128).ok, "stride >= 2^40");
  EXPECT(!kn::sm90_tma_shape(aligned_ptr(), 1, 1, 0, 64, 0, 0, 64, 128).ok, "S = 0");
  EXPECT(!kn::sm90_tma_shape(aligned_ptr(), 1, 1, 10, 64, 640, 640, 64, 512).ok, "box > 256 rows");
  EXPECT(!kn::sm90_tma_shape(nullptr, 1, 1, 10, 64, 640, 640, 64, 128).ok, "null");
  // Packed sequences: one batch of all rows (the batch stride, 0 packed, is
  // never used and gets a valid value); padded: the call's batch and lengths.
  {
    const kn::Sm90Operands packed = kn::sm90_operands(true, 5, 300, 400, 1000, 1200);
    EXPECT(packed.batch == 1 && packed.rows_q == 1000 && packed.rows_k == 1200, "packed operands");
    const kn::Sm90Operands padded = kn::sm90_operands(false, 5, 300, 400, 1000, 1200);
    EXPECT(padded.batch == 5 && padded.rows_q == 300 && padded.rows_k == 400, "padded operands");
    const int64_t H = 4, D = 64;  // [T, H, D] storage viewed as [1, H, T, D], batch stride 0
    auto s = kn::sm90_tma_shape(aligned_ptr(), packed.batch, H, packed.rows_q, D, 0, D, H * D, 128);
    EXPECT(s.ok && s.dims[1] == 1000 && s.dims[3] == 1, "packed map");
  }
}

// ---- the swizzled layout through the descriptors ---------------------------------

// The 128-byte swizzle as the hardware applies it to an address (Swizzle<3,4,3>).
uint32_t swizzle(uint32_t addr) { return addr ^ (((addr >> 7) & 7u) << 4); }

// Canonical layouts (PTX ISA, "matrix descriptor"), unswizzled byte address of
// an operand element relative to the descriptor's start, 16-bit elements:
//   K-major  element (mn, k):  (mn % 8) * 128 + (mn / 8) * SBO + k * 2   (k < 16)
//   MN-major element (k, mn):  (mn % 64) * 2 + (mn / 64) * LBO + (k % 8) * 128 + (k / 8) * SBO
uint32_t kmajor(uint32_t start, uint32_t mn, uint32_t k) {
  return swizzle(start + (mn % 8) * 128 + (mn / 8) * kn::kSm90Sbo + k * 2);
}
uint32_t mnmajor(uint32_t start, uint32_t lbo, uint32_t k, uint32_t mn) {
  return swizzle(start + (mn % 64) * 2 + (mn / 64) * lbo + (k % 8) * 128 + (k / 8) * kn::kSm90Sbo);
}

// A (rows x d) tile written the way the kernel's TMA boxes write it.
struct Smem {
  std::vector<uint16_t> bytes_as_halves = std::vector<uint16_t>(256 * 1024 / 2, 0xFFFF);
  void put(uint32_t addr, uint16_t v) { bytes_as_halves.at(addr / 2) = v; }
  uint16_t get(uint32_t addr) const { return bytes_as_halves.at(addr / 2); }
};

uint16_t value(uint32_t tile, uint32_t r, uint32_t c) { return static_cast<uint16_t>((tile * 7919u + r * 263u + c) & 0xFFFF); }

void tma_write(Smem& smem, uint32_t base, uint32_t tile, uint32_t rows, uint32_t d) {
  for (uint32_t cb = 0; cb < d / 64; ++cb)
    for (uint32_t r = 0; r < rows; ++r)
      for (uint32_t c = 0; c < 64; ++c) smem.put(base + cb * rows * 128 + kn::sm90_sw128_offset(r, c), value(tile, r, cb * 64 + c));
}

void test_layout(uint32_t d) {
  constexpr uint32_t kM = 128, kN = 128;
  Smem smem;
  // Swizzle of the box layout == the descriptor swizzle of the linear layout.
  for (uint32_t r = 0; r < 64; ++r)
    for (uint32_t c = 0; c < 64; ++c)
      EXPECT(kn::sm90_sw128_offset(r, c) == swizzle(r * 128 + c * 2), "box swizzle r %u c %u", r, c);

  const uint32_t s_q = 0, s_k = kM * d * 2, s_v = s_k + 2 * kN * d * 2;  // 1024-aligned, like the kernel's
  EXPECT(s_k % 1024 == 0 && s_v % 1024 == 0, "alignment");
  tma_write(smem, s_q, 0, kM, d);
  tma_write(smem, s_k + kN * d * 2, 1, kN, d);  // stage 1
  tma_write(smem, s_v + kN * d * 2, 2, kN, d);

  // Q: A operand of consumer c, k step kk: element (m, k) = Q[64 c + m][16 kk + k].
  for (uint32_t c = 0; c < 2; ++c)
    for (uint32_t kk = 0; kk < d / 16; ++kk) {
      const uint32_t start = kn::sm90_kmajor_start(s_q, kM, 64 * c, kk);
      for (uint32_t m = 0; m < 64; ++m)
        for (uint32_t k = 0; k < 16; ++k)
          EXPECT(smem.get(kmajor(start, m, k)) == value(0, 64 * c + m, 16 * kk + k), "Q d %u c %u kk %u m %u k %u",
                 d, c, kk, m, k);
    }
  // K: B operand (N = 128 keys x 16 dims), K-major: element (n, k) = K[n][16 kk + k].
  for (uint32_t kk = 0; kk < d / 16; ++kk) {
    const uint32_t start = kn::sm90_kmajor_start(s_k + kN * d * 2, kN, 0, kk);
    for (uint32_t n = 0; n < kN; ++n)
      for (uint32_t k = 0; k < 16; ++k)
        EXPECT(smem.get(kmajor(start, n, k)) == value(1, n, 16 * kk + k), "K d %u kk %u n %u k %u", d, kk, n, k);
  }
  // V: B operand of P V (16 keys x N = d dims), MN-major: element (k, n) = V[16 ks + k][n].
  for (uint32_t ks = 0; ks < kN / 16; ++ks) {
    const uint32_t start = kn::sm90_mnmajor_start(s_v + kN * d * 2, ks);
    for (uint32_t k = 0; k < 16; ++k)
      for (uint32_t n = 0; n < d; ++n)
        EXPECT(smem.get(mnmajor(start, kn::sm90_mnmajor_lbo(kN), k, n)) == value(2, 16 * ks + k, n),
               "V d %u ks %u k %u n %u", d, ks, k, n);
  }
  // Descriptor fields fit: start >> 4 and LBO >> 4 in 14 bits.
  EXPECT(((s_v + 2 * kN * d * 2) >> 4) < (1u << 14), "start field");
  EXPECT((kn::sm90_mnmajor_lbo(kN) >> 4) < (1u << 14), "lbo field");
}

// ---- band phases of the descending key walk --------------------------------------

// The kernel walks key tiles n_end - 1 down to n_begin and masks a tile iff it
// lies outside rows_unmasked_tile_range: the walk is masked*, unmasked*,
// masked* (right edge, interior, left edge), and masking exactly the tiles
// rows_tile_needs_mask names.
void test_phases() {
  std::mt19937 rng(5);
  int checked = 0;
  for (int it = 0; it < 20000; ++it) {
    const int64_t sk = 1 + rng() % 3000, sq = 1 + rng() % 3000;
    const int64_t wl_choices[] = {-1, 0, 1, 63, 127, 128, 500, 4095};
    const int64_t wr_choices[] = {-1, 0, 0, 0, 3, 200};
    const kn::Band band{sq, sk, wl_choices[rng() % 8], wr_choices[rng() % 6]};
    const int64_t m_blocks = kn::ceil_div64(sq, 128);
    const int64_t m_block = rng() % m_blocks;
    const kn::KeyRange rows = kn::packed_query_rows(m_block, 128, 1, sq);
    const kn::TileRange tiles = kn::rows_key_tile_range(band, rows, 128);
    if (tiles.empty()) continue;
    const kn::TileRange un = kn::rows_unmasked_tile_range(band, rows, 128);
    const int64_t ub = kn::band_min64(un.n_block_min, tiles.n_block_max);
    const int64_t ue = kn::band_min64(un.n_block_max, tiles.n_block_max);
    int phase = 0;  // 0 right edge, 1 interior, 2 left edge
    for (int64_t n = tiles.n_block_max - 1; n >= tiles.n_block_min; --n) {
      const bool masked = n < ub || n >= ue;
      EXPECT(masked == kn::rows_tile_needs_mask(band, rows, n, 128), "mask of tile %lld", (long long)n);
      if (phase == 0 && !masked) phase = 1;
      if (phase == 1 && masked) phase = 2;
      EXPECT(!(phase == 2 && !masked), "unmasked tile after the left edge (tile %lld)", (long long)n);
    }
    ++checked;
  }
  EXPECT(checked > 1000, "too few non-empty cases: %d", checked);
}

// The wgmma descriptor: each value lands in its documented field (bits 0-13
// start, 16-29 LBO, 32-45 SBO, all >> 4), the layout field says 128-byte
// swizzle (bits 62-63 = 1), and every other bit (base offset 49-51 included)
// is zero.
void test_desc_encoding() {
  const uint32_t values[] = {0, 16, 1024, 2048, 0x3FFF0};
  for (uint32_t addr : values)
    for (uint32_t lbo : values)
      for (uint32_t sbo : values) {
        const uint64_t d = kn::make_desc_sw128(addr, lbo, sbo);
        EXPECT(((d & 0x3FFF) << 4) == addr, "start %x of %llx", addr, (unsigned long long)d);
        EXPECT((((d >> 16) & 0x3FFF) << 4) == lbo, "lbo %x of %llx", lbo, (unsigned long long)d);
        EXPECT((((d >> 32) & 0x3FFF) << 4) == sbo, "sbo %x of %llx", sbo, (unsigned long long)d);
        const uint64_t fields = 0x3FFFull | 0x3FFFull << 16 | 0x3FFFull << 32;
        EXPECT((d & ~fields) == uint64_t{1} << 62, "other bits of %llx", (unsigned long long)d);
      }
}

}  // namespace

int main() {
  test_tma_shapes();
  test_desc_encoding();
  test_layout(64);
  test_layout(128);
  test_phases();
  return report("test_sm90_tma");
}

// Host-side shape of the TMA tensor maps of the Hopper forward (sm90): the
// arguments of cuTensorMapEncodeTiled for one [B, H, S, D] operand with
// 64-bit element strides, and whether TMA can describe it at all. Plain
// integer math (no CUDA or torch headers), unit-tested on the CPU
// (tests/cpp/test_sm90_tma.cpp); csrc/cuda/kernels/fwd_sm90_launch.cuh turns
// it into a CUtensorMap.
//
// The map is 4-D, innermost first: (d, row, head, batch), sizes (D, S, H, B),
// byte strides (row, head, batch) of the view. The box is (64, box_rows, 1, 1):
// 64 16-bit elements = 128 bytes, the width of the 128-byte swizzle, so head
// dim D is loaded as D / 64 boxes. TMA's rules (CUDA driver API,
// cuTensorMapEncodeTiled): base address 16-byte aligned, every stride a
// multiple of 16 bytes and below 2^40, sizes in [1, 2^32], box sizes <= 256.
// The stride of a size-1 dimension is never used by a copy but must still
// satisfy the rules, so it is replaced by the packed stride (the previous
// stride times the previous size).
#pragma once

#include <cstdint>

#include "swa/kernels/namespace.h"

#if defined(__CUDACC__)
#define SWA_HOST_DEVICE_INLINE_SM90 __host__ __device__ __forceinline__ constexpr
#else
#define SWA_HOST_DEVICE_INLINE_SM90 inline constexpr
#endif

namespace SWA_KERNEL_NS {

struct Sm90TmaShape {
  bool ok = false;
  uint64_t dims[4] = {0, 0, 0, 0};         // D, S, H, B
  uint64_t strides_bytes[3] = {0, 0, 0};   // row, head, batch
  uint32_t box[4] = {0, 0, 0, 0};          // 64, box_rows, 1, 1
};

inline Sm90TmaShape sm90_tma_shape(const void* ptr, int64_t batch, int64_t heads, int64_t seqlen,
                                   int64_t head_dim, int64_t batch_stride, int64_t head_stride,
                                   int64_t row_stride, int64_t box_rows, int64_t elem_bytes = 2) {
  Sm90TmaShape s;
  constexpr uint64_t kMaxStride = uint64_t{1} << 40;
  constexpr int64_t kMaxDim = int64_t{1} << 32;
  if (ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return s;
  if (elem_bytes != 2 || head_dim < 64 || head_dim % 64 != 0) return s;
  if (box_rows < 1 || box_rows > 256) return s;
  const int64_t sizes[4] = {head_dim, seqlen, heads, batch};
  for (int64_t n : sizes)
    if (n < 1 || n > kMaxDim) return s;
  const int64_t strides[3] = {row_stride, head_stride, batch_stride};
  uint64_t packed = static_cast<uint64_t>(head_dim * elem_bytes);  // packed stride of dim i + 1
  for (int i = 0; i < 3; ++i) {
    uint64_t stride;
    if (sizes[i + 1] == 1) {
      stride = packed;  // never used: any valid value
    } else {
      if (strides[i] <= 0) return s;
      stride = static_cast<uint64_t>(strides[i]) * static_cast<uint64_t>(elem_bytes);
    }
    if (stride % 16 != 0 || stride >= kMaxStride) return s;
    s.strides_bytes[i] = stride;
    packed = stride * static_cast<uint64_t>(sizes[i + 1]);
    if (packed >= kMaxStride) packed = stride;  // only used for a later size-1 dim
  }
  for (int i = 0; i < 4; ++i) s.dims[i] = static_cast<uint64_t>(sizes[i]);
  s.box[0] = 64;
  s.box[1] = static_cast<uint32_t>(box_rows);
  s.box[2] = 1;
  s.box[3] = 1;
  s.ok = true;
  return s;
}

// The (batch, rows) extents of the three tensor maps: the padded layout's
// [B, H, S, D], or packed sequences (params.h: cu_seqlens_*) as one batch of
// all T rows, each sequence's boxes starting at its first row (a box that
// runs past the sequence's end reads the next one's rows; the kernel masks
// them).
struct Sm90Operands {
  int64_t batch, rows_q, rows_k;
};
inline Sm90Operands sm90_operands(bool packed, int64_t batch, int64_t seqlen_q, int64_t seqlen_k, int64_t total_q,
                                  int64_t total_k) {
  return packed ? Sm90Operands{1, total_q, total_k} : Sm90Operands{batch, seqlen_q, seqlen_k};
}

}  // namespace SWA_KERNEL_NS

namespace SWA_KERNEL_NS {

// ---- shared-memory tile layout and wgmma descriptor addresses ------------------
// (used by fwd_sm90_kernel.cuh; emulated on the CPU in tests/cpp/test_sm90_tma.cpp)
//
// A TMA box (64 elements x R rows, 128-byte swizzle) lands as R rows of 128
// bytes; element (r, c) of the box sits at byte
//     r * 128 + ((c / 8) ^ (r % 8)) * 16 + (c % 8) * 2
// of a 1024-byte aligned destination. A tile of R rows x D dims is D / 64 such
// column blocks, block cb at byte cb * R * 128.

SWA_HOST_DEVICE_INLINE_SM90 uint32_t sm90_sw128_offset(uint32_t row, uint32_t col) {
  return row * 128u + (((col / 8u) ^ (row % 8u)) * 16u) + (col % 8u) * 2u;
}

// Stride byte offset of every descriptor: 8 rows of 128 bytes.
constexpr uint32_t kSm90Sbo = 1024;

// Start address of the K-major descriptor of k step kk (dims 16 kk .. 16 kk + 15)
// over rows [row0, row0 + 64 or N) of a tile of `rows` rows at `base`.
SWA_HOST_DEVICE_INLINE_SM90 uint32_t sm90_kmajor_start(uint32_t base, uint32_t rows, uint32_t row0, uint32_t kk) {
  return base + (kk / 4u) * rows * 128u + row0 * 128u + (kk % 4u) * 32u;
}

// Start address and LBO of the MN-major descriptor (V as B of P V) of key step
// ks (keys 16 ks .. 16 ks + 15) of a tile of `rows` keys at `base`: two 8-row
// groups per step; the 64-dim column blocks are rows * 128 bytes apart.
SWA_HOST_DEVICE_INLINE_SM90 uint32_t sm90_mnmajor_start(uint32_t base, uint32_t ks) { return base + ks * 2048u; }
SWA_HOST_DEVICE_INLINE_SM90 uint32_t sm90_mnmajor_lbo(uint32_t rows) { return rows * 128u; }

// Shared-memory matrix descriptor of wgmma (64 bit) for a 128-byte swizzled
// tile: addr, lbo_bytes, sbo_bytes are byte values (addr a shared-memory
// address), stored >> 4:
//   bits  0-13  start address
//   bits 16-29  leading dimension byte offset (LBO)
//   bits 32-45  stride dimension byte offset (SBO)
//   bits 49-51  base offset (0: every swizzle atom starts 1024-B aligned)
//   bits 62-63  layout: 1 = 128-byte swizzle
SWA_HOST_DEVICE_INLINE_SM90 uint64_t make_desc_sw128(uint32_t addr, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return static_cast<uint64_t>((addr >> 4) & 0x3FFF) | (static_cast<uint64_t>((lbo_bytes >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo_bytes >> 4) & 0x3FFF) << 32) | (static_cast<uint64_t>(1) << 62);
}

}  // namespace SWA_KERNEL_NS

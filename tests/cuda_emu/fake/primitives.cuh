// Emulator stand-in for csrc/cuda/kernels/primitives.cuh: the same functions,
// executed by emu_core.h's cooperative lanes. Semantics from the PTX ISA:
//   ldmatrix .m8n8.x4 (.trans): lanes 8i .. 8i + 7 give the row addresses of
//     matrix i; lane t receives, of each matrix, row t / 4, elements
//     2 (t % 4) + {0, 1} (with .trans: rows 2 (t % 4) + {0, 1} of column t / 4).
//   mma.m16n8k16 row.col, fp32 accumulators, fragments as documented in the
//     real primitives.cuh (a0..a3, b0..b1, c0..c3).
#pragma once

#include <cstdint>
#include <cstring>

#include "emu_core.h"
#include "swa/kernels/namespace.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {
// The emulated dynamic shared memory (blocks run one at a time); the kernels'
// `extern __shared__` arrays (bwd_smem, fwd_smem) are all this one array.
alignas(128) inline unsigned char emu_smem[256 * 1024];
#define bwd_smem emu_smem
#define fwd_smem emu_smem

// Bytes of emu_smem the running launch may touch: its dynamic shared memory
// size (emu::Launch), or the whole array for direct emu::launch calls.
inline size_t smem_limit() {
  const size_t n = emu::device().dyn_smem_bytes;
  return n != 0 ? n : sizeof(emu_smem);
}
// Every block starts with shared memory full of 0xff bytes (NaN as fp16, bf16
// and fp32): a kernel that reads what it did not write sees garbage, as on a GPU.
inline const bool emu_smem_fill_registered = [] {
  emu::device().block_start = [] { std::memset(emu_smem, 0xff, smem_limit()); };
  return true;
}();
}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS

namespace SWA_KERNEL_NS {
namespace cuda_detail {

template <typename T>
inline uint32_t pack2(float lo, float hi);
template <>
inline uint32_t pack2<__half>(float lo, float hi) {
  return static_cast<uint32_t>(__float2half_rn(lo).bits) | (static_cast<uint32_t>(__float2half_rn(hi).bits) << 16);
}
template <>
inline uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  return static_cast<uint32_t>(__float2bfloat16_rn(lo).bits) |
         (static_cast<uint32_t>(__float2bfloat16_rn(hi).bits) << 16);
}

template <typename T>
inline float to_float(T x);
template <>
inline float to_float<__half>(__half x) { return __half2float(x); }
template <>
inline float to_float<__nv_bfloat16>(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
inline T from_float(float x);
template <>
inline __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T>
inline float bits_to_float(uint16_t b) {
  T x;
  x.bits = b;
  return to_float<T>(x);
}

inline uint32_t smem_addr(const void* p) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < emu_smem || c >= emu_smem + sizeof(emu_smem)) {
    std::fprintf(stderr, "emu: smem_addr of a non-shared pointer\n");
    std::abort();
  }
  return static_cast<uint32_t>(c - emu_smem);
}

inline void check_smem(uint32_t addr, int bytes, int align) {
  if (addr % align != 0 || addr + bytes > smem_limit()) {
    std::fprintf(stderr, "emu: bad shared access at %u (%d bytes, align %d, %zu bytes of shared memory)\n", addr,
                 bytes, align, smem_limit());
    std::abort();
  }
}

inline void check_global_read(const void* src, size_t bytes) {
  if (emu::device().global_read_ok && !emu::device().global_read_ok(src, bytes)) {
    std::fprintf(stderr, "emu: cp.async reads %zu bytes at %p, outside every tensor\n", bytes, src);
    std::abort();
  }
}

// When cp.async copies land: at the wait that retires their group (default,
// the latest moment allowed: catches reads of a tile before it is waited for),
// or with SWA_EMU_CP_ASYNC=early at issue (the earliest: catches a refill of
// shared memory that other warps may still be reading, as no barrier
// separates them).
inline bool cp_async_early() {
  static const bool early = [] {
    const char* e = std::getenv("SWA_EMU_CP_ASYNC");
    return e != nullptr && std::strcmp(e, "early") == 0;
  }();
  return early;
}

// cp.async: the source is read (and bounds-checked) at issue; the bytes land in
// shared memory at issue or when cp_async_wait retires their group (above).
inline void cp_async_issue(void* smem_dst, const void* gmem_src, bool valid, int bytes) {
  const uint32_t dst = smem_addr(smem_dst);
  check_smem(dst, bytes, bytes);
  emu::Thread::AsyncCopy c;
  c.dst = dst;
  c.bytes = bytes;
  c.group = emu::cur()->committed_groups;
  if (valid) {
    if (reinterpret_cast<uintptr_t>(gmem_src) % bytes != 0) {
      std::fprintf(stderr, "emu: misaligned %d-byte cp.async source\n", bytes);
      std::abort();
    }
    check_global_read(gmem_src, bytes);
    std::memcpy(c.data, gmem_src, bytes);
  } else {
    std::memset(c.data, 0, bytes);  // src-size 0: zero fill, nothing read
  }
  if (cp_async_early()) std::memcpy(emu_smem + dst, c.data, bytes);
  else emu::cur()->async_copies.push_back(c);
}
inline void cp_async_16(void* smem_dst, const void* gmem_src, bool valid) {
  cp_async_issue(smem_dst, gmem_src, valid, 16);
}
inline void cp_async_4(void* smem_dst, const void* gmem_src, bool valid) {
  cp_async_issue(smem_dst, gmem_src, valid, 4);
}
inline void cp_async_commit() { ++emu::cur()->committed_groups; }
// cp.async.wait_group n: every group but the newest n committed ones is
// complete; copies not yet committed stay in flight.
template <int n>
inline void cp_async_wait() {
  emu::Thread* t = emu::cur();
  const uint64_t done_below = t->committed_groups >= static_cast<uint64_t>(n) ? t->committed_groups - n : 0;
  auto& q = t->async_copies;
  size_t kept = 0;
  for (size_t i = 0; i < q.size(); ++i) {
    if (q[i].group < done_below) {
      std::memcpy(emu_smem + q[i].dst, q[i].data, q[i].bytes);
    } else {
      q[kept++] = q[i];
    }
  }
  q.resize(kept);
}

// One warp collective: deposit this lane's words, meet the warp, return the
// exchange slot that every lane filled.
inline uint32_t (*warp_exchange(const uint32_t* mine, int words))[6] {
  emu::Thread* t = emu::cur();
  const int lane = t->linear % 32;
  emu::WarpExchange& x = emu::block()->warps[t->linear / 32];
  const int slot = static_cast<int>(t->collectives++ & 1);
  for (int i = 0; i < words; ++i) x.u[slot][lane][i] = mine[i];
  emu::warp_sync();
  return x.u[slot];
}

inline uint16_t smem_u16(uint32_t addr) {
  uint16_t v;
  std::memcpy(&v, emu_smem + addr, 2);
  return v;
}

template <bool kTrans>
inline void ldmatrix_x4_impl(uint32_t (&r)[4], uint32_t addr) {
  check_smem(addr, 16, 16);
  uint32_t (*all)[6] = warp_exchange(&addr, 1);
  const int t = emu::cur()->linear % 32;
  for (int i = 0; i < 4; ++i) {
    uint16_t lo, hi;
    if (!kTrans) {
      const uint32_t row = all[8 * i + t / 4][0];
      lo = smem_u16(row + 2 * (2 * (t % 4)));
      hi = smem_u16(row + 2 * (2 * (t % 4) + 1));
    } else {
      lo = smem_u16(all[8 * i + 2 * (t % 4)][0] + 2 * (t / 4));
      hi = smem_u16(all[8 * i + 2 * (t % 4) + 1][0] + 2 * (t / 4));
    }
    r[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
}

inline void ldmatrix_x4(uint32_t (&r)[4], uint32_t smem_address) { ldmatrix_x4_impl<false>(r, smem_address); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t smem_address) { ldmatrix_x4_impl<true>(r, smem_address); }
inline void ldmatrix_x4(uint32_t (&r)[4], const void* p) { ldmatrix_x4_impl<false>(r, smem_addr(p)); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) { ldmatrix_x4_impl<true>(r, smem_addr(p)); }

template <typename T>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  uint32_t (*all)[6] = warp_exchange(mine, 6);
  // A[m][k]: register (m >= 8) + 2 (k >= 8) of lane 4 (m % 8) + (k % 8) / 2, half k % 2.
  auto A = [&](int m, int k) {
    const uint32_t w = all[4 * (m % 8) + (k % 8) / 2][(m >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
    return bits_to_float<T>(static_cast<uint16_t>(k % 2 ? w >> 16 : w & 0xffff));
  };
  // B[k][n]: register 4 + (k >= 8) of lane 4 n + (k % 8) / 2, half k % 2.
  auto B = [&](int k, int n) {
    const uint32_t w = all[4 * n + (k % 8) / 2][4 + (k >= 8 ? 1 : 0)];
    return bits_to_float<T>(static_cast<uint16_t>(k % 2 ? w >> 16 : w & 0xffff));
  };
  const int t = emu::cur()->linear % 32;
  const int g = t / 4, c = 2 * (t % 4);
  const int rows[4] = {g, g, g + 8, g + 8};
  const int cols[4] = {c, c + 1, c, c + 1};
  for (int e = 0; e < 4; ++e) {
    float acc = d[e];
    for (int k = 0; k < 16; ++k) acc += A(rows[e], k) * B(k, cols[e]);
    d[e] = acc;
  }
}

inline float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

inline float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS

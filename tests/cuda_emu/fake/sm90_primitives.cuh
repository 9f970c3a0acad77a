// Emulator stand-in for csrc/cuda/kernels/sm90_primitives.cuh, executed by
// emu_core.h's cooperative threads. Semantics from the PTX ISA:
//   mbarrier   pending-arrival count + transaction count per phase; a phase
//              completes when both reach zero; try_wait.parity(P) succeeds
//              once the phase of parity P has completed (completed phases n:
//              n % 2 != P). Waits poll (yield to the scheduler); a long run of
//              polls with no barrier progress anywhere is reported as a deadlock.
//   TMA        the box is copied at issue (zero fill out of bounds), with the
//              128-byte swizzle applied to the shared-memory address
//              (bits [4:6] ^= bits [7:9]), then complete_tx on the barrier.
//   wgmma      executed at issue (wait_group is a no-op), per warp of the
//              warpgroup: D rows 16 w .. 16 w + 15; operands read through the
//              descriptors' canonical layouts (K-major: (mn % 8) * 128 +
//              (mn / 8) * SBO + 2 k; MN-major: (mn % 64) * 2 + (mn / 64) * LBO +
//              (k % 8) * 128 + (k / 8) * SBO, then swizzled); A from registers
//              in the m16n8k16 A layout of the warp's 16 rows.
// Asynchrony (early reads of in-flight registers, proxy fences) is not
// modelled: this checks layouts, indices, masks and the barrier protocol.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "cuda.h"
#include "emu_core.h"
#include "primitives.cuh"

#define __grid_constant__
#define sm90_smem bwd_smem

namespace SWA_KERNEL_NS {
namespace cuda_detail {
namespace sm90 {

struct EmuBarrier {
  int count = 0, pending = 0;
  int64_t tx = 0;
  uint64_t completed = 0;
};

inline std::map<uint32_t, EmuBarrier>& barriers() {
  static std::map<uint32_t, EmuBarrier> b;
  return b;
}
inline uint64_t& idle_polls() {
  static uint64_t n = 0;
  return n;
}

inline EmuBarrier& bar_at(uint32_t addr) {
  auto it = barriers().find(addr);
  if (it == barriers().end()) {
    std::fprintf(stderr, "emu: mbarrier at %u used before init\n", addr);
    std::abort();
  }
  return it->second;
}

inline void bar_progress(EmuBarrier& b) {
  idle_polls() = 0;
  if (b.pending < 0 || b.tx < 0) {
    std::fprintf(stderr, "emu: mbarrier over-arrived (pending %d, tx %lld)\n", b.pending, (long long)b.tx);
    std::abort();
  }
  if (b.pending == 0 && b.tx == 0) {
    ++b.completed;
    b.pending = b.count;
  }
}

inline void mbar_init(uint32_t bar, uint32_t count) {
  if (bar % 8 != 0) std::abort();
  EmuBarrier b;
  b.count = b.pending = static_cast<int>(count);
  barriers()[bar] = b;
}
inline void mbar_init_fence() {}
inline void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  EmuBarrier& b = bar_at(bar);
  b.tx += bytes;
  --b.pending;
  bar_progress(b);
}
inline void mbar_arrive(uint32_t bar) {
  EmuBarrier& b = bar_at(bar);
  --b.pending;
  bar_progress(b);
}
inline void mbar_wait(uint32_t bar, uint32_t parity) {
  for (;;) {
    EmuBarrier& b = bar_at(bar);
    if (b.completed % 2 != parity) return;
    if (++idle_polls() > 20000000ull) {
      std::fprintf(stderr, "emu: deadlock: mbarrier at %u never completes its phase of parity %u\n", bar, parity);
      std::abort();
    }
    emu::yield_waiting(0, 0);  // stay runnable: poll again next round
  }
}

// Named barriers: `count` arrivals complete a phase; bar.sync waits for the
// phase it arrived in. Kept per block (reset by the test before each launch).
struct EmuNamedBarrier {
  int arrived = 0;
  uint64_t generation = 0;
};
inline EmuNamedBarrier* named_barriers() {
  static EmuNamedBarrier b[16];
  return b;
}
inline uint64_t named_arrive(int id, int count) {
  if (id <= 0 || id >= 16) std::abort();
  EmuNamedBarrier& b = named_barriers()[id];
  const uint64_t gen = b.generation;
  idle_polls() = 0;
  if (++b.arrived == count) {
    b.arrived = 0;
    ++b.generation;
  } else if (b.arrived > count) {
    std::abort();
  }
  return gen;
}
inline void named_bar_arrive(int id, int count) { (void)named_arrive(id, count); }
inline void named_bar_sync(int id, int count) {
  const uint64_t gen = named_arrive(id, count);
  while (named_barriers()[id].generation == gen) {
    if (++idle_polls() > 20000000ull) {
      std::fprintf(stderr, "emu: deadlock: named barrier %d never completes\n", id);
      std::abort();
    }
    emu::yield_waiting(0, 0);
  }
}

inline void mbar_wait_watchdog(uint32_t bar, uint32_t parity) { mbar_wait(bar, parity); }

inline void tma_prefetch_desc(const CUtensorMap*) {}

inline void tma_load_4d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1, int c2, int c3) {
  if (dst % 1024 != 0 || !map->swizzle_128b || map->elem_bytes != 2 || map->box[0] * 2 != 128) {
    std::fprintf(stderr, "emu: TMA destination/box not as the 128-B swizzle needs\n");
    std::abort();
  }
  const int coord[4] = {c0, c1, c2, c3};
  const auto* base = static_cast<const unsigned char*>(map->base);
  const uint32_t rows = map->box[1];
  for (uint32_t r = 0; r < rows; ++r)
    for (uint32_t c = 0; c < 64; ++c) {
      const int64_t x[4] = {coord[0] + int64_t(c), coord[1] + int64_t(r), coord[2], coord[3]};
      uint16_t v = 0;
      bool in = true;
      for (int i = 0; i < 4; ++i) in = in && x[i] >= 0 && x[i] < int64_t(map->dims[i]);
      if (in) {
        const int64_t off = x[0] * 2 + x[1] * map->strides_bytes[0] + x[2] * map->strides_bytes[1] +
                            x[3] * map->strides_bytes[2];
        std::memcpy(&v, base + off, 2);
      }
      uint32_t a = dst + r * 128 + c * 2;
      a ^= ((a >> 7) & 7u) << 4;
      check_smem(a, 2, 2);
      std::memcpy(bwd_smem + a, &v, 2);
    }
  EmuBarrier& b = bar_at(bar);
  b.tx -= int64_t(rows) * 128;
  bar_progress(b);
}

inline float ex2_approx(float x) {  // ex2.approx.ftz: the approximation error is not modelled
  const float y = std::exp2(x);
  return y < 1.17549435e-38f ? 0.f : y;
}

inline void st_shared_zero16(uint32_t addr) {
  check_smem(addr, 16, 16);
  std::memset(bwd_smem + addr, 0, 16);
}
inline void fence_proxy_async_smem() {}  // the emulator has one proxy

template <int kRegs>
inline void setmaxnreg_dec() {}
template <int kRegs>
inline void setmaxnreg_inc() {}
inline void fence_operand(float&) {}
inline void fence_operand(uint32_t&) {}
inline void wgmma_fence() {}
inline void wgmma_commit() {}
template <int kPending>
inline void wgmma_wait() {}

// Decoded descriptor (the fields make_desc_sw128 of swa/kernels/sm90_tma.h
// encodes, read back from the bits).
struct EmuDesc {
  uint32_t start, lbo, sbo;
  explicit EmuDesc(uint64_t d) {
    if ((d >> 62) != 1 || ((d >> 49) & 7) != 0) {
      std::fprintf(stderr, "emu: descriptor is not 128-B swizzle with base offset 0\n");
      std::abort();
    }
    start = static_cast<uint32_t>(d & 0x3FFF) << 4;
    lbo = static_cast<uint32_t>((d >> 16) & 0x3FFF) << 4;
    sbo = static_cast<uint32_t>((d >> 32) & 0x3FFF) << 4;
  }
  static uint32_t swz(uint32_t a) { return a ^ (((a >> 7) & 7u) << 4); }
  // K-major element (mn, k), k < 16.
  uint32_t kmajor(int mn, int k) const { return swz(start + (mn % 8) * 128 + (mn / 8) * sbo + 2 * k); }
  // MN-major element (k, mn).
  uint32_t mnmajor(int k, int mn) const {
    return swz(start + (mn % 64) * 2 + (mn / 64) * lbo + (k % 8) * 128 + (k / 8) * sbo);
  }
};

template <bool kBf16>
inline float emu_elem(uint16_t bits) {
  if constexpr (kBf16) return bits_to_float<__nv_bfloat16>(bits);
  else return bits_to_float<__half>(bits);
}

// D (64 x N) of the warpgroup; this thread's d[4 j + 2 i + e] = row 16 w + g + 8 i,
// column 8 j + 2 t + e. a_smem: A via descriptor (K-major), else a_regs.
template <bool kBf16, int kTransB, int N>
inline void emu_wgmma(float (&d)[N / 2], const uint64_t* a_desc, const uint32_t* a_regs, uint64_t b_desc,
                      int scale_d) {
  const int lane = emu::cur()->linear % 32;
  const int w = (emu::cur()->linear / 32) % 4;
  const int g = lane / 4, t = lane % 4;
  uint32_t (*all)[6] = nullptr;
  if (a_regs) all = warp_exchange(a_regs, 4);  // every lane of the warp takes part
  const EmuDesc bd(b_desc);
  auto A = [&](int m, int k) -> float {  // m: row of the warpgroup's 64
    if (a_desc) {
      const EmuDesc ad(*a_desc);
      const uint32_t addr = ad.kmajor(m, k);
      check_smem(addr, 2, 2);
      return emu_elem<kBf16>(smem_u16(addr));
    }
    const int ml = m - 16 * w;
    const uint32_t word = all[4 * (ml % 8) + (k % 8) / 2][(ml >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
    return emu_elem<kBf16>(static_cast<uint16_t>(k % 2 ? word >> 16 : word & 0xffff));
  };
  auto B = [&](int k, int n) -> float {
    const uint32_t addr = kTransB ? bd.mnmajor(k, n) : bd.kmajor(n, k);
    check_smem(addr, 2, 2);
    return emu_elem<kBf16>(smem_u16(addr));
  };
  for (int j = 0; j < N / 8; ++j)
    for (int i = 0; i < 2; ++i)
      for (int e = 0; e < 2; ++e) {
        const int row = 16 * w + g + 8 * i, col = 8 * j + 2 * t + e;
        float acc = scale_d ? d[4 * j + 2 * i + e] : 0.f;
        for (int k = 0; k < 16; ++k) acc += A(row, k) * B(k, col);
        d[4 * j + 2 * i + e] = acc;
      }
}

template <bool kBf16, int kTransB>
inline void wgmma_ss_m64n64k16(float (&d)[32], uint64_t a, uint64_t b, int scale_d) {
  emu_wgmma<kBf16, kTransB, 64>(d, &a, nullptr, b, scale_d);
}
template <bool kBf16, int kTransB>
inline void wgmma_ss_m64n128k16(float (&d)[64], uint64_t a, uint64_t b, int scale_d) {
  emu_wgmma<kBf16, kTransB, 128>(d, &a, nullptr, b, scale_d);
}
template <bool kBf16, int kTransB>
inline void wgmma_rs_m64n64k16(float (&d)[32], const uint32_t (&a)[4], uint64_t b, int scale_d) {
  emu_wgmma<kBf16, kTransB, 64>(d, nullptr, a, b, scale_d);
}
template <bool kBf16, int kTransB>
inline void wgmma_rs_m64n128k16(float (&d)[64], const uint32_t (&a)[4], uint64_t b, int scale_d) {
  emu_wgmma<kBf16, kTransB, 128>(d, nullptr, a, b, scale_d);
}

}  // namespace sm90
}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS

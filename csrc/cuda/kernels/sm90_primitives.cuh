// Hopper (sm_90a) building blocks of the sm90 forward (fwd_sm90_kernel.cuh):
// mbarriers, TMA bulk tensor copies, wgmma descriptors and the wgmma shapes it
// uses, setmaxnreg. Thin PTX wrappers, one instruction's worth each. Compiled
// only for -gencode=arch=compute_90a,code=sm_90a (wgmma and setmaxnreg do not
// exist on plain sm_90 or on other architectures).
//
// ---- wgmma (PTX ISA 9.7.15) ------------------------------------------------
// A warpgroup (4 consecutive warps, the first one's index divisible by 4)
// computes D(64 x N) (+)= A(64 x 16) * B(16 x N) per instruction.
//
// Accumulator layout of m64nNk16 (fp32, N / 2 registers per thread): warp w of
// the warpgroup holds rows 16 w .. 16 w + 15; lane l = 4 g + t (g = l / 4,
// t = l % 4) holds, for each 8-column tile j = 0 .. N / 8 - 1,
//     d[4 j + 0], d[4 j + 1]: row 16 w + g,     columns 8 j + 2 t, 8 j + 2 t + 1
//     d[4 j + 2], d[4 j + 3]: row 16 w + g + 8, columns 8 j + 2 t, 8 j + 2 t + 1
// i.e. the mma.m16n8k16 C layout repeated over j (primitives.cuh).
//
// A from registers (16-bit, 4 x b32 per thread, the m16n8k16 A layout for the
// warp's 16 rows): a0 = (row g, k 2t..2t+1), a1 = (row g + 8, k 2t..2t+1),
// a2 = (row g, k 8+2t..), a3 = (row g + 8, k 8+2t..). Hence P's A fragment of
// key step ks is the accumulator of S's tiles 2 ks and 2 ks + 1, packed.
//
// Shared-memory matrix descriptor: make_desc_sw128 (swa/kernels/sm90_tma.h,
// shared with the CPU emulator).
// 128-byte swizzle (Swizzle<3,4,3>, the same as TMA's CU_TENSOR_MAP_SWIZZLE_128B):
// a tile is stored as rows of 128 bytes (64 16-bit elements); within each
// 1024-byte atom of 8 rows, 16-byte chunk c of row r sits at chunk c ^ (r % 8).
// The XOR is taken on address bits [4:6] ^= [7:9], so atoms must be 1024-byte
// aligned. In units of 16 bytes (T = 8 elements), the canonical layouts are
//   K-major : ((8, m), (T, 2k)) : ((8T, SBO), (1, T))   -> SBO = 1024 B between
//             8-row groups; LBO unused (the 16-wide k step stays inside the
//             128-B row); the k step kk of a 64-wide column block starts
//             32 kk bytes into the row (the hardware applies the XOR).
//   MN-major: ((T, 8, m), (8, k)) : ((1, T, LBO), (8T, SBO)) -> LBO = bytes
//             between 64-element MN column blocks, SBO = 1024 B between 8-row
//             k groups.
// Q (A) and K (B) are K-major (head dim contiguous, trans = 0); V (B of P V)
// is MN-major (its N = head dim is contiguous): trans-b = 1.
#pragma once

#include <cuda.h>  // CUtensorMap (a type only: nothing here calls the driver)
#include <cuda_runtime.h>

#include <cstdint>

#include "swa/kernels/namespace.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {
namespace sm90 {

// ---- mbarriers -----------------------------------------------------------------

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

// Makes the initialised barriers visible to the other threads and to the
// async proxy (TMA's complete_tx); a __syncthreads() must follow.
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// One arrival that also announces `bytes` of TMA transactions for this phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

// Blocks until the phase with parity `parity` has completed. A fresh barrier
// is in phase 0, so waiting for parity 1 returns at once (the producer's
// first pass over the empty barriers).
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "SWA_MBAR_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra SWA_MBAR_WAIT;\n"
      "}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}

// mbar_wait with a watchdog (the consumers' waits; the producer keeps the
// plain loop, its 24 registers have no room for a counter): after 2^26
// unsuccessful polls (each try_wait may itself suspend for a while: tens of
// seconds in all, where a real wait lasts microseconds) the thread traps, so
// a pipeline deadlock surfaces as a launch error instead of a hung GPU.
__device__ __forceinline__ void mbar_wait_watchdog(uint32_t bar, uint32_t parity) {
  uint32_t done;
  for (uint32_t polls = 0;; ++polls) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n"
        "}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    if (done) return;
    if (polls == (1u << 26)) __trap();
  }
}

// ---- TMA -----------------------------------------------------------------------

__device__ __forceinline__ void tma_prefetch_desc(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// Box at coordinates (c0 innermost .. c3) of a 4-D tensor map -> shared memory
// at dst; completes `bytes of the box` transactions on bar. Out-of-bounds
// elements are zero-filled (and still counted).
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0,
                                            int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%3, %4, %5, %6}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// ---- math ------------------------------------------------------------------------

// 2^x, one MUFU.EX2 (exp2f adds a denormal range fix-up around it); 2^-inf = 0,
// results below 2^-126 flush to zero.
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// ---- named barriers (ids 1..15; 0 is __syncthreads) ------------------------------
// `count` threads (a multiple of the warp size) complete a phase: bar.sync
// arrives and waits, bar.arrive only arrives.

__device__ __forceinline__ void named_bar_sync(int id, int count) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int count) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(count) : "memory");
}

// ---- generic-proxy stores into TMA / wgmma tiles ------------------------------------

// Zeroes the 16 bytes of shared memory at addr (16-byte aligned).
__device__ __forceinline__ void st_shared_zero16(uint32_t addr) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(addr), "r"(0) : "memory");
}
// Orders this thread's generic-proxy shared-memory stores before later
// async-proxy accesses (wgmma operand reads, TMA) that synchronise with it.
__device__ __forceinline__ void fence_proxy_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ---- registers -------------------------------------------------------------------

template <int kRegs>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}
template <int kRegs>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegs));
}

// Keeps the compiler from moving accesses to x across this point (wgmma
// operands must stay in their registers from issue to wait_group).
__device__ __forceinline__ void fence_operand(float& x) { asm volatile("" : "+f"(x)::"memory"); }
__device__ __forceinline__ void fence_operand(uint32_t& x) { asm volatile("" : "+r"(x)::"memory"); }

// ---- wgmma ----------------------------------------------------------------------

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Waits until at most kPending committed groups of this warpgroup are in flight.
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}

// The accumulator operands of a 64 x N wgmma: N / 2 fp32 registers per thread,
// as asm outputs and as the PTX register list.
#define SWA_WGMMA_D32_OUT \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define SWA_WGMMA_D64_OUT \
    SWA_WGMMA_D32_OUT, \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define SWA_WGMMA_D32_PTX "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define SWA_WGMMA_D64_PTX "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

// One wgmma.mma_async with A and B of TYPE ("f16" or "bf16"), D in fp32.
// SHAPE: "m64nNk16"; ACC: D32 or D64, the accumulator operands above (pasted
// here, so their commas survive being passed along); PRED: the operand number
// of scale_d; OPERANDS: the PTX operands after D; the rest: the asm inputs.
#define SWA_WGMMA_ASM_TYPED(TYPE, SHAPE, ACC, PRED, OPERANDS, ...)                          \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " PRED ", 0;\n"                            \
               "wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE "." TYPE " "              \
               SWA_WGMMA_##ACC##_PTX ", " OPERANDS ";\n}\n"                                  \
               : SWA_WGMMA_##ACC##_OUT                                                     \
               : __VA_ARGS__)
#define SWA_WGMMA_ASM(kBf16, ...)               \
  do {                                          \
    if constexpr (kBf16) {                      \
      SWA_WGMMA_ASM_TYPED("bf16", __VA_ARGS__); \
    } else {                                    \
      SWA_WGMMA_ASM_TYPED("f16", __VA_ARGS__);  \
    }                                           \
  } while (0)

// One wrapper per shape and operand form (A = "ss": descriptor, "rs":
// registers). scale_d = 0: D = A B (D's old value ignored), else D += A B.
// kTransB = 1: B is MN-major (V).
// D(64 x 64, fp32) (+)= A(64 x 16) * B(16 x 64).
template <bool kBf16, int kTransB>
__device__ __forceinline__ void wgmma_ss_m64n64k16(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  SWA_WGMMA_ASM(kBf16, "m64n64k16", D32, "%34", "%32, %33, p, 1, 1, 0, %35", "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransB));
}

// D(64 x 64, fp32) (+)= A(64 x 16) * B(16 x 64).
template <bool kBf16, int kTransB>
__device__ __forceinline__ void wgmma_rs_m64n64k16(float (&d)[32], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
  SWA_WGMMA_ASM(kBf16, "m64n64k16", D32, "%37", "{%32, %33, %34, %35}, %36, p, 1, 1, %38",
                "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kTransB));
}

// D(64 x 128, fp32) (+)= A(64 x 16) * B(16 x 128).
template <bool kBf16, int kTransB>
__device__ __forceinline__ void wgmma_ss_m64n128k16(float (&d)[64], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  SWA_WGMMA_ASM(kBf16, "m64n128k16", D64, "%66", "%64, %65, p, 1, 1, 0, %67", "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(kTransB));
}

// D(64 x 128, fp32) (+)= A(64 x 16) * B(16 x 128).
template <bool kBf16, int kTransB>
__device__ __forceinline__ void wgmma_rs_m64n128k16(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
  SWA_WGMMA_ASM(kBf16, "m64n128k16", D64, "%69", "{%64, %65, %66, %67}, %68, p, 1, 1, %70",
                "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d), "n"(kTransB));
}

#undef SWA_WGMMA_ASM
#undef SWA_WGMMA_ASM_TYPED
#undef SWA_WGMMA_D64_PTX
#undef SWA_WGMMA_D32_PTX
#undef SWA_WGMMA_D64_OUT
#undef SWA_WGMMA_D32_OUT

}  // namespace sm90
}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS

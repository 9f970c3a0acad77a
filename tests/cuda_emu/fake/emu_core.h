// A small CPU emulator of the CUDA execution model, enough to run the
// backward kernels of csrc/cuda/kernels on the host: every thread of a block
// is a cooperative user-level context (ucontext); __syncthreads and the
// warp-collective instructions (ldmatrix, mma.sync, shfl) are barriers over
// the block / warp, with the collective's semantics taken from the PTX ISA.
// Blocks run one after another, so the emulated shared memory is one global
// array. cp.async copies complete immediately (group waits are no-ops), so
// this checks the math, layouts and masks, not asynchronous-copy ordering.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __align__(n)
#define __launch_bounds__(...)

struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

typedef int cudaError_t;
typedef void* cudaStream_t;
constexpr int cudaSuccess = 0;

// ---- 16-bit types ---------------------------------------------------------------
struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };
struct __half2 { __half x, y; };
struct __nv_bfloat162 { __nv_bfloat16 x, y; };
inline __half __float2half_rn(float f) {
  _Float16 h = static_cast<_Float16>(f);
  __half r;
  std::memcpy(&r.bits, &h, 2);
  return r;
}
inline float __half2float(__half h) {
  _Float16 x;
  std::memcpy(&x, &h.bits, 2);
  return static_cast<float>(x);
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  __nv_bfloat16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    r.bits = 0x7fc0;
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
    r.bits = static_cast<uint16_t>(u >> 16);
  }
  return r;
}
inline float __bfloat162float(__nv_bfloat16 b) {
  uint32_t u = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}

// ---- the cooperative scheduler ------------------------------------------------------
namespace emu {

constexpr int kMaxThreads = 1024;

struct Thread {
  ucontext_t ctx;
  std::vector<char> stack;
  uint3 tid;
  int linear = 0;
  bool done = false;
  int wait_kind = 0;  // 0 running/ready, 1 warp barrier, 2 block barrier
  uint64_t wait_gen = 0;
  uint64_t collectives = 0;  // per-lane count of warp collectives (slot parity)
};

struct WarpExchange {
  uint32_t u[2][32][6];
};

struct Block {
  std::vector<Thread> threads;
  Thread* current = nullptr;
  ucontext_t scheduler;
  int nthreads = 0;
  int warp_arrived[kMaxThreads / 32] = {};
  uint64_t warp_gen[kMaxThreads / 32] = {};
  int block_arrived = 0;
  uint64_t block_gen = 0;
  WarpExchange warps[kMaxThreads / 32];
  std::function<void()> body;
};

inline Block*& block() {
  static Block* b = nullptr;
  return b;
}
inline uint3& block_index() {
  static uint3 b{0, 0, 0};
  return b;
}
inline dim3& grid_dim() {
  static dim3 g;
  return g;
}
inline dim3& block_dim() {
  static dim3 g;
  return g;
}

inline Thread* cur() { return block()->current; }

inline void yield_waiting(int kind, uint64_t gen) {
  Thread* t = cur();
  t->wait_kind = kind;
  t->wait_gen = gen;
  swapcontext(&t->ctx, &block()->scheduler);
}

inline void warp_sync() {
  Block* b = block();
  const int w = cur()->linear / 32;
  const uint64_t gen = b->warp_gen[w];
  if (++b->warp_arrived[w] == 32) {
    b->warp_arrived[w] = 0;
    ++b->warp_gen[w];
    return;
  }
  yield_waiting(1, gen);
}

inline void block_sync() {
  Block* b = block();
  const uint64_t gen = b->block_gen;
  if (++b->block_arrived == b->nthreads) {
    b->block_arrived = 0;
    ++b->block_gen;
    return;
  }
  yield_waiting(2, gen);
}

inline void trampoline() {
  Block* b = block();
  b->body();
  b->current->done = true;
  // returns to uc_link (the scheduler)
}

// Runs body on every thread of every block, blocks in order.
inline void launch(dim3 grid, dim3 blk, const std::function<void()>& body, size_t stack_bytes = 96 * 1024) {
  grid_dim() = grid;
  block_dim() = blk;
  const int n = static_cast<int>(blk.x * blk.y * blk.z);
  if (n % 32 != 0 || n > kMaxThreads) {
    std::fprintf(stderr, "emu: block of %d threads\n", n);
    std::abort();
  }
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block* b = new Block();
        block() = b;
        block_index() = {bx, by, bz};
        b->nthreads = n;
        b->body = body;
        b->threads.resize(n);
        for (int i = 0; i < n; ++i) {
          Thread& t = b->threads[i];
          t.linear = i;
          t.tid = {static_cast<unsigned>(i % blk.x), static_cast<unsigned>((i / blk.x) % blk.y),
                   static_cast<unsigned>(i / (blk.x * blk.y))};
          t.stack.resize(stack_bytes);
          getcontext(&t.ctx);
          t.ctx.uc_stack.ss_sp = t.stack.data();
          t.ctx.uc_stack.ss_size = t.stack.size();
          t.ctx.uc_link = &b->scheduler;
          makecontext(&t.ctx, trampoline, 0);
        }
        int remaining = n;
        while (remaining > 0) {
          bool progress = false;
          for (Thread& t : b->threads) {
            if (t.done) continue;
            const bool ready = t.wait_kind == 0 || (t.wait_kind == 1 && b->warp_gen[t.linear / 32] != t.wait_gen) ||
                               (t.wait_kind == 2 && b->block_gen != t.wait_gen);
            if (!ready) continue;
            t.wait_kind = 0;
            b->current = &t;
            swapcontext(&b->scheduler, &t.ctx);
            progress = true;
            if (t.done) --remaining;
          }
          if (!progress) {
            std::fprintf(stderr, "emu: deadlock in block (%u,%u,%u): threads wait on barriers that never complete\n",
                         bx, by, bz);
            std::abort();
          }
        }
        delete b;
        block() = nullptr;
      }
}

}  // namespace emu

#define threadIdx (emu::cur()->tid)
#define blockIdx (emu::block_index())
#define blockDim (emu::block_dim())
#define gridDim (emu::grid_dim())

inline void __syncthreads() { emu::block_sync(); }

template <typename V>
inline V __shfl_xor_sync(unsigned, V v, int lane_mask) {
  static_assert(sizeof(V) <= 8, "shuffles of up to 64 bits");
  emu::Thread* t = emu::cur();
  const int lane = t->linear % 32;
  emu::WarpExchange& x = emu::block()->warps[t->linear / 32];
  const int slot = static_cast<int>(t->collectives++ & 1);
  std::memcpy(&x.u[slot][lane][0], &v, sizeof(V));
  emu::warp_sync();
  V r;
  std::memcpy(&r, &x.u[slot][lane ^ lane_mask][0], sizeof(V));
  return r;
}

inline float atomicAdd(float* p, float v) {  // one host thread runs every context
  const float old = *p;
  *p = old + v;
  return old;
}

inline __half __ushort_as_half(unsigned short i) { return __half{i}; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short i) { return __nv_bfloat16{i}; }

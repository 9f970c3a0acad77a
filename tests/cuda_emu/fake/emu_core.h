// A small CPU emulator of the CUDA execution model, enough to run the
// kernels of csrc/cuda/kernels on the host: every thread of a block
// is a cooperative user-level context (see Context below); __syncthreads and the
// warp-collective instructions (ldmatrix, mma.sync, shfl) are barriers over
// the block / warp, with the collective's semantics taken from the PTX ISA.
// Blocks run one after another, so the emulated shared memory is one global
// array. A cp.async copy lands at the latest moment the PTX ISA allows: when
// its thread's cp.async.wait_group retires the copy's commit group (until then
// shared memory keeps its old contents), so a kernel that reads a tile before
// waiting for it, or refills a stage that other warps still read, computes
// with stale data here. (Real copies may also land earlier; that order is not
// explored.)
//
// Launches: run.sh rewrites `kernel<<<grid, block, smem, stream>>>(args)` in the
// copied kernel sources to `emu::Launch(kernel, grid, block, smem, stream)(args)`
// and `extern __shared__` to `extern` (dynamic shared memory is the one
// emulated array of primitives.cuh); a static `__shared__` variable becomes a
// function-local static, i.e. one copy that every thread of the block sees.
// Launch checks what the driver checks (block size, dynamic shared memory
// against 48 KB or the cudaFuncSetAttribute opt-in, which is itself bounded
// by the emulated device's limit) and fills the dynamic shared memory with
// 0xff bytes (16-bit NaN) so that nothing can rely on stale contents.
#pragma once

#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n)
#define __launch_bounds__(...)

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) uint2 { unsigned x, y; };
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
constexpr int cudaErrorInvalidValue = 1;
constexpr int cudaErrorInvalidConfiguration = 9;
constexpr int cudaErrorLaunchOutOfResources = 701;
constexpr int cudaErrorNotSupported = 801;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97
};

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

// User-level contexts. On x86-64 a minimal switch (callee-saved registers and
// the stack pointer; the emulated code never changes the FP control state):
// swapcontext also saves the signal mask with a system call, which made it
// most of the emulators' run time. Elsewhere (or with -DSWA_EMU_UCONTEXT),
// ucontext.
#if defined(__x86_64__) && !defined(SWA_EMU_UCONTEXT)
#define SWA_EMU_FAST_SWITCH 1
extern "C" void swa_emu_switch(void** save_sp, void* next_sp);
// Weak: every translation unit that includes this header defines it.
asm(R"(
  .text
  .p2align 4
  .weak swa_emu_switch
  .type swa_emu_switch, @function
swa_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size swa_emu_switch, .-swa_emu_switch
)");
struct Context {
  void* sp = nullptr;
};
inline void ctx_switch(Context& from, Context& to) { swa_emu_switch(&from.sp, to.sp); }
// A context that starts fn (which must never return) on the given stack.
inline void ctx_make(Context& c, char* stack, size_t size, void (*fn)()) {
  uintptr_t top = (reinterpret_cast<uintptr_t>(stack) + size) & ~uintptr_t{15};
  void** sp = reinterpret_cast<void**>(top);
  *--sp = nullptr;                          // fn's frame: rsp % 16 == 8 at entry
  *--sp = reinterpret_cast<void*>(fn);      // swa_emu_switch's ret
  for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
  c.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};
inline void ctx_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void ctx_make(Context& c, char* stack, size_t size, void (*fn)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, fn, 0);
}
#endif

constexpr int kMaxThreads = 1024;

struct Thread {
  Context ctx;
  char* stack = nullptr;  // from stack_pool(), reused by every block
  uint3 tid;
  int linear = 0;
  bool done = false;
  int wait_kind = 0;  // 0 running/ready, 1 warp barrier, 2 block barrier
  uint64_t wait_gen = 0;
  uint64_t collectives = 0;  // per-lane count of warp collectives (slot parity)
  // cp.async copies issued and not yet landed (primitives.cuh): the source
  // bytes as read at issue, the shared-memory destination and the commit
  // group; committed_groups counts this thread's cp.async.commit_group calls.
  struct AsyncCopy {
    uint32_t dst;
    int bytes;
    uint64_t group;
    unsigned char data[16];
  };
  std::vector<AsyncCopy> async_copies;
  uint64_t committed_groups = 0;
};

struct WarpExchange {
  uint32_t u[2][32][6];
};

struct Block {
  std::vector<Thread> threads;
  Thread* current = nullptr;
  Context scheduler;
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

// Thread stacks, allocated once and reused by every block of every launch.
inline std::vector<std::vector<char>>& stack_pool() {
  static std::vector<std::vector<char>> pool;
  return pool;
}

// The emulated device (see Launch below and the cuda* stand-ins).
struct Device {
  int sm_count = 132;
  int cc_major = 9, cc_minor = 0;  // compute capability
  int smem_optin = 227 * 1024;    // cudaDevAttrMaxSharedMemoryPerBlockOptin
  size_t dyn_smem_bytes = 0;      // dynamic shared memory of the running launch; 0: any
  cudaError_t last_error = cudaSuccess;
  std::map<const void*, int> max_dyn_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel
  // Optional check of every global address that cp.async reads (set by a test
  // that knows its tensors' extents); returns false to report the access.
  bool (*global_read_ok)(const void* p, size_t bytes) = nullptr;
  // Called at the start of every block (e.g. to refill shared memory).
  void (*block_start)() = nullptr;
  // Every emu::Launch that ran, in order (tests check which kernels a host
  // code path launched).
  struct LaunchRecord {
    dim3 grid;
    unsigned threads;
    size_t smem;
  };
  std::vector<LaunchRecord> launches;
};
inline Device& device() {
  static Device d;
  return d;
}

inline void yield_waiting(int kind, uint64_t gen) {
  Thread* t = cur();
  t->wait_kind = kind;
  t->wait_gen = gen;
  ctx_switch(t->ctx, block()->scheduler);
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
  ctx_switch(b->current->ctx, b->scheduler);  // never resumed
  std::abort();
}

// Blocks run one at a time, in linear order, or in reverse with
// SWA_EMU_BLOCK_ORDER=reverse: a GPU runs them in any order, so results that
// depend on it (two blocks writing the same element) differ between the two.
inline bool reverse_block_order() {
  static const bool reverse = [] {
    const char* order = std::getenv("SWA_EMU_BLOCK_ORDER");
    return order != nullptr && std::string(order) == "reverse";
  }();
  return reverse;
}

// Runs body on every thread of every block, one block after another.
inline void launch(dim3 grid, dim3 blk, const std::function<void()>& body, size_t stack_bytes = 96 * 1024) {
  grid_dim() = grid;
  block_dim() = blk;
  const int n = static_cast<int>(blk.x * blk.y * blk.z);
  if (n % 32 != 0 || n > kMaxThreads) {
    std::fprintf(stderr, "emu: block of %d threads\n", n);
    std::abort();
  }
  const uint64_t blocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
  for (uint64_t step = 0; step < blocks; ++step) {
    const uint64_t linear = reverse_block_order() ? blocks - 1 - step : step;
    const unsigned bx = static_cast<unsigned>(linear % grid.x);
    const unsigned by = static_cast<unsigned>(linear / grid.x % grid.y);
    const unsigned bz = static_cast<unsigned>(linear / grid.x / grid.y);
    Block* b = new Block();
    block() = b;
    block_index() = {bx, by, bz};
    b->nthreads = n;
    b->body = body;
    b->threads.resize(n);
    if (device().block_start) device().block_start();
    auto& pool = stack_pool();
    if (pool.size() < static_cast<size_t>(n) || pool[0].size() < stack_bytes) {
      pool.resize(n);
      for (auto& st : pool)
        if (st.size() < stack_bytes) st.resize(stack_bytes);
    }
    for (int i = 0; i < n; ++i) {
      Thread& t = b->threads[i];
      t.linear = i;
      t.tid = {static_cast<unsigned>(i % blk.x), static_cast<unsigned>((i / blk.x) % blk.y),
               static_cast<unsigned>(i / (blk.x * blk.y))};
      t.stack = pool[i].data();
      ctx_make(t.ctx, t.stack, pool[i].size(), trampoline);
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
        ctx_switch(b->scheduler, t.ctx);
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

namespace emu {
// A warp shuffle: every lane publishes v, then reads the value of lane
// src_lane(its own lane) (taken mod 32).
template <typename V, typename SrcLane>
inline V warp_shuffle(V v, SrcLane src_lane) {
  static_assert(sizeof(V) <= 8, "shuffles of up to 64 bits");
  Thread* t = cur();
  const int lane = t->linear % 32;
  WarpExchange& x = block()->warps[t->linear / 32];
  const int slot = static_cast<int>(t->collectives++ & 1);
  std::memcpy(&x.u[slot][lane][0], &v, sizeof(V));
  warp_sync();
  V r;
  std::memcpy(&r, &x.u[slot][src_lane(lane) % 32][0], sizeof(V));
  return r;
}
}  // namespace emu

template <typename V>
inline V __shfl_xor_sync(unsigned, V v, int lane_mask) {
  return emu::warp_shuffle(v, [=](int lane) { return lane ^ lane_mask; });
}
template <typename V>
inline V __shfl_sync(unsigned, V v, int src) {
  return emu::warp_shuffle(v, [=](int) { return src; });
}

// Vote: nonzero iff pred is nonzero on any lane of the warp (all 32 take part,
// as every call site passes the full mask).
inline int __any_sync(unsigned, int pred) {
  int any = 0;
  for (int src = 0; src < 32; ++src) any |= emu::warp_shuffle(pred != 0 ? 1 : 0, [=](int) { return src; });
  return any;
}

// CUDA's device isnan is a global function; host C++ has it in std.
using std::isnan;

inline float atomicAdd(float* p, float v) {  // one host thread runs every context
  const float old = *p;
  *p = old + v;
  return old;
}

inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_sync(); }

template <typename T>
inline T __ldg(const T* p) { return *p; }

inline __half __ushort_as_half(unsigned short i) { return __half{i}; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short i) { return __nv_bfloat16{i}; }

// ---- the runtime API, as far as the launchers use it ----------------------------------
inline cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::device().last_error;
  emu::device().last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = emu::device().sm_count; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = emu::device().smem_optin; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *v = emu::device().cc_major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *v = emu::device().cc_minor; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > emu::device().smem_optin)
    return cudaErrorInvalidValue;
  emu::device().max_dyn_smem[reinterpret_cast<const void*>(kernel)] = value;
  return cudaSuccess;
}

namespace emu {

// kernel<<<grid, block, smem, stream>>>(args) after run.sh's rewrite.
template <typename F>
struct Launch {
  F* kernel;
  dim3 grid, blk;
  size_t smem;
  Launch(F* k, dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : kernel(k), grid(g), blk(b), smem(s) {}
  template <typename... Args>
  void operator()(const Args&... args) const {
    Device& dev = device();
    const unsigned threads = blk.x * blk.y * blk.z;
    size_t limit = 48 * 1024;
    auto it = dev.max_dyn_smem.find(reinterpret_cast<const void*>(kernel));
    if (it != dev.max_dyn_smem.end() && static_cast<size_t>(it->second) > limit) limit = it->second;
    if (threads == 0 || threads > 1024 || threads % 32 != 0 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
        grid.y > 65535 || grid.z > 65535) {
      std::fprintf(stderr, "emu: invalid launch configuration (grid %u x %u x %u, block %u)\n", grid.x, grid.y,
                   grid.z, threads);
      dev.last_error = cudaErrorInvalidConfiguration;
      return;
    }
    if (smem > limit) {
      std::fprintf(stderr, "emu: launch with %zu bytes of dynamic shared memory, limit %zu\n", smem, limit);
      dev.last_error = cudaErrorInvalidValue;
      return;
    }
    dev.launches.push_back({grid, threads, smem});
    dev.dyn_smem_bytes = smem;
    launch(grid, blk, [&] { kernel(args...); });
    dev.dyn_smem_bytes = 0;
  }
};
template <typename F>
Launch(F*, dim3, dim3, size_t, cudaStream_t) -> Launch<F>;

}  // namespace emu

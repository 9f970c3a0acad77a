// Copy kernels of the rolling KV cache (see swa/kernels/ring.h):
//   cache_append: row t of the new keys/values -> ring slot S + (pos + t) % C,
//                 for the last min(T, C) rows only; with S sink slots, the
//                 rows of positions below S also to slot pos + t;
//                 packed rows (cache_append.varlen) likewise per sequence;
//   cache_gather: ring slot (pos - n + r) % C -> row r of a contiguous output,
//                 zeros where pos - n + r < 0.
// Both are memory bound: each thread moves one vector (up to 16 bytes) of one
// row, keys in blockIdx.y = 0 and values in blockIdx.y = 1, with a grid-stride
// loop over (row, vector). pos stays on the device (read here, never by the
// host), so both can be captured in a CUDA graph. The landing rows of one
// append hit distinct slots (at most C consecutive positions, the sink slots
// apart from the ring's), so threads never write the same element. No torch
// headers.
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>

#include "swa/kernels/launch.h"
#include "swa/kernels/ring.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

constexpr int kCopyThreads = 256;
constexpr int64_t kMaxCopyBlocks = 16384;  // per k/v; the grid-stride loop covers the rest

inline int64_t dtype_bytes(DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
    case DType::kBFloat16: return 2;
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
  }
  return 0;
}

// The widest copy vector (16, 8, 4, 2 or 1 bytes) that divides the row length in
// bytes and every operand's base address and strides in bytes.
struct VectorWidth {
  int64_t bytes = 16;
  void fit(int64_t value) {
    while (bytes > 1 && value % bytes != 0) bytes /= 2;
  }
  void fit(const void* ptr) { fit(static_cast<int64_t>(reinterpret_cast<uintptr_t>(ptr))); }
  void fit(const TensorRef& t, int64_t elem_bytes) {
    fit(t.ptr);
    fit(t.batch_stride * elem_bytes);
    fit(t.head_stride * elem_bytes);
    fit(t.row_stride * elem_bytes);
  }
};

// Element (b, h, row) of a [B, H, S, D] operand, as bytes.
__device__ __forceinline__ char* row_bytes(const TensorRef& t, int64_t b, int64_t h, int64_t row,
                                           int64_t elem_bytes) {
  return static_cast<char*>(t.ptr) + (b * t.batch_stride + h * t.head_stride + row * t.row_stride) * elem_bytes;
}

// Writes rows first .. T - 1 of k (v) to ring slots S + (pos[b] + t) % C, and
// rows t < sink_rows whose position is below S to sink slot pos[b] + t. The
// work is (b, h, r) with r < landing + sink_rows: ring rows, then sink rows.
template <typename Vec>
__global__ void __launch_bounds__(kCopyThreads)
cache_append_kernel(CacheAppendParams params, int64_t first, int64_t sink_rows, int64_t vecs_per_row,
                    int64_t elem_bytes) {
  const bool values = blockIdx.y == 1;
  const TensorRef src = values ? params.v : params.k;              // [B, Hkv, T, D]
  const TensorRef dst = values ? params.v_cache : params.k_cache;  // [B, Hkv, S + C, D]
  const int64_t landing = params.new_len - first;                  // rows that land in the ring, <= C
  const int64_t per_head = landing + sink_rows;
  const int64_t total = params.batch * params.heads_kv * per_head * vecs_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t vec = i % vecs_per_row;
    int64_t row = i / vecs_per_row;        // (b, h, r) flattened
    const int64_t r = row % per_head;
    const bool to_sink = r >= landing;
    const int64_t t = to_sink ? r - landing : first + r;
    row /= per_head;
    const int64_t h = row % params.heads_kv;
    const int64_t b = row / params.heads_kv;
    const int64_t position = __ldg(params.pos + b) + t;
    // pos < 0 is the caller's error on CUDA (never read by the host): write
    // nothing rather than out of bounds.
    if (position < 0) continue;
    if (to_sink && position >= params.sink_tokens) continue;  // not a sink position
    const int64_t slot = to_sink ? position : cache_slot(position, params.capacity, params.sink_tokens);
    const Vec* from = reinterpret_cast<const Vec*>(row_bytes(src, b, h, t, elem_bytes));
    Vec* to = reinterpret_cast<Vec*>(row_bytes(dst, b, h, slot, elem_bytes));
    to[vec] = from[vec];
  }
}

// cache_append of packed rows (params.cu_seqlens): the work is (row r of
// the T packed rows, h); r belongs to the last sequence b with cu[b] <= r
// (binary search; empty sequences share their start with the next one), as
// its row t = r - cu[b] at position pos[b] + t. It lands in the ring when it
// is among the sequence's last C rows, and in sink slot pos[b] + t too when
// that position is below S. Rows outside every sequence (cu_seqlens that
// break the contract) write nothing: no slot outside [0, S + C) is touched.
template <typename Vec>
__global__ void __launch_bounds__(kCopyThreads)
cache_append_varlen_kernel(CacheAppendParams params, int64_t vecs_per_row, int64_t elem_bytes) {
  const bool values = blockIdx.y == 1;
  const TensorRef src = values ? params.v : params.k;              // [T, Hkv, D] as (0, h, r)
  const TensorRef dst = values ? params.v_cache : params.k_cache;  // [B, Hkv, S + C, D]
  const int64_t total = params.new_len * params.heads_kv * vecs_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int32_t* cu = params.cu_seqlens;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t vec = i % vecs_per_row;
    const int64_t row = i / vecs_per_row;  // (r, h) flattened, h fastest
    const int64_t h = row % params.heads_kv;
    const int64_t r = row / params.heads_kv;
    int64_t lo = 0, hi = params.batch;  // the last b in [0, B) with cu[b] <= r, or -1
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (__ldg(cu + mid) <= r) lo = mid + 1;
      else hi = mid;
    }
    const int64_t b = lo - 1;
    if (b < 0) continue;
    const int64_t start = __ldg(cu + b), len = __ldg(cu + b + 1) - start, t = r - start;
    if (t >= len) continue;
    const int64_t position = __ldg(params.pos + b) + t;
    if (position < 0) continue;  // the caller's error on CUDA, as in cache_append_kernel
    const Vec* from = reinterpret_cast<const Vec*>(row_bytes(src, 0, h, r, elem_bytes));
    if (t >= append_first_row(len, params.capacity)) {
      Vec* to = reinterpret_cast<Vec*>(
          row_bytes(dst, b, h, cache_slot(position, params.capacity, params.sink_tokens), elem_bytes));
      to[vec] = from[vec];
    }
    if (position < params.sink_tokens) {
      Vec* to = reinterpret_cast<Vec*>(row_bytes(dst, b, h, position, elem_bytes));
      to[vec] = from[vec];
    }
  }
}

// Row r of k_out (v_out) = ring slot (pos[b] - n + r) % C, zeros below position 0.
template <typename Vec>
__global__ void __launch_bounds__(kCopyThreads)
cache_gather_kernel(CacheGatherParams params, int64_t vecs_per_row, int64_t elem_bytes) {
  const bool values = blockIdx.y == 1;
  const TensorRef src = values ? params.v_cache : params.k_cache;  // [B, Hkv, C, D]
  char* out = static_cast<char*>(values ? params.v_out : params.k_out);  // [B, Hkv, n, D] contiguous
  const int64_t total = params.batch * params.heads_kv * params.n * vecs_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t vec = i % vecs_per_row;
    const int64_t row = i / vecs_per_row;  // (b, h, r) flattened = the output row
    const int64_t r = row % params.n;
    const int64_t h = (row / params.n) % params.heads_kv;
    const int64_t b = row / (params.n * params.heads_kv);
    const int64_t position = gather_position(__ldg(params.pos + b), params.n, r);
    Vec* to = reinterpret_cast<Vec*>(out + row * params.head_dim * elem_bytes);
    if (position < 0) {
      to[vec] = Vec{};
    } else {
      const Vec* from = reinterpret_cast<const Vec*>(
          row_bytes(src, b, h, ring_slot(position, params.capacity), elem_bytes));
      to[vec] = from[vec];
    }
  }
}

// Launches kernel<Vec> for the widest Vec of width.bytes over rows x k/v.
template <template <typename> class Launch, typename... Args>
cudaError_t launch_copy(int64_t width, int64_t rows, int64_t row_bytes_total, cudaStream_t stream,
                        Args... args) {
  const int64_t total = rows * (row_bytes_total / width);
  if (total == 0) return cudaSuccess;
  const int64_t blocks = (total + kCopyThreads - 1) / kCopyThreads;
  const dim3 grid(static_cast<unsigned>(blocks < kMaxCopyBlocks ? blocks : kMaxCopyBlocks), 2);
  const int64_t vecs_per_row = row_bytes_total / width;
  switch (width) {
    case 16: Launch<uint4>::run(grid, stream, vecs_per_row, args...); break;
    case 8: Launch<uint2>::run(grid, stream, vecs_per_row, args...); break;
    case 4: Launch<uint32_t>::run(grid, stream, vecs_per_row, args...); break;
    case 2: Launch<uint16_t>::run(grid, stream, vecs_per_row, args...); break;
    default: Launch<uint8_t>::run(grid, stream, vecs_per_row, args...); break;  // odd addresses
  }
  return cudaGetLastError();
}

template <typename Vec>
struct AppendLaunch {
  static void run(dim3 grid, cudaStream_t stream, int64_t vecs_per_row, const CacheAppendParams& params,
                  int64_t first, int64_t sink_rows, int64_t elem_bytes) {
    cache_append_kernel<Vec><<<grid, kCopyThreads, 0, stream>>>(params, first, sink_rows, vecs_per_row,
                                                                 elem_bytes);
  }
};

template <typename Vec>
struct AppendVarlenLaunch {
  static void run(dim3 grid, cudaStream_t stream, int64_t vecs_per_row, const CacheAppendParams& params,
                  int64_t elem_bytes) {
    cache_append_varlen_kernel<Vec><<<grid, kCopyThreads, 0, stream>>>(params, vecs_per_row, elem_bytes);
  }
};

template <typename Vec>
struct GatherLaunch {
  static void run(dim3 grid, cudaStream_t stream, int64_t vecs_per_row, const CacheGatherParams& params,
                  int64_t elem_bytes) {
    cache_gather_kernel<Vec><<<grid, kCopyThreads, 0, stream>>>(params, vecs_per_row, elem_bytes);
  }
};

}  // namespace cuda_detail

cudaError_t cache_append(const CacheAppendParams& params, cudaStream_t stream) {
  using namespace cuda_detail;
  if (params.capacity <= 0 || params.sink_tokens < 0) return cudaErrorInvalidValue;
  const int64_t elem_bytes = dtype_bytes(params.dtype);
  if (params.cu_seqlens != nullptr) {  // packed rows: one copy per (row, head)
    const int64_t row_bytes_total = params.head_dim * elem_bytes;
    VectorWidth width;
    width.fit(row_bytes_total);
    for (const TensorRef* t : {&params.k_cache, &params.v_cache, &params.k, &params.v}) width.fit(*t, elem_bytes);
    return launch_copy<AppendVarlenLaunch>(width.bytes, params.new_len * params.heads_kv, row_bytes_total, stream,
                                           params, elem_bytes);
  }
  const int64_t first = append_first_row(params.new_len, params.capacity);
  // Rows that may hold a sink position (pos is on the device: the kernel
  // skips those at or past S).
  const int64_t sink_rows = params.new_len < params.sink_tokens ? params.new_len : params.sink_tokens;
  const int64_t row_bytes_total = params.head_dim * elem_bytes;
  VectorWidth width;
  width.fit(row_bytes_total);
  for (const TensorRef* t : {&params.k_cache, &params.v_cache, &params.k, &params.v}) width.fit(*t, elem_bytes);
  const int64_t rows = params.batch * params.heads_kv * (params.new_len - first + sink_rows);
  return launch_copy<AppendLaunch>(width.bytes, rows, row_bytes_total, stream, params, first, sink_rows,
                                   elem_bytes);
}

cudaError_t cache_gather(const CacheGatherParams& params, cudaStream_t stream) {
  using namespace cuda_detail;
  if (params.capacity <= 0 || params.n > params.capacity) return cudaErrorInvalidValue;
  const int64_t elem_bytes = dtype_bytes(params.dtype);
  const int64_t row_bytes_total = params.head_dim * elem_bytes;
  VectorWidth width;
  width.fit(row_bytes_total);
  width.fit(params.k_out);
  width.fit(params.v_out);
  for (const TensorRef* t : {&params.k_cache, &params.v_cache}) width.fit(*t, elem_bytes);
  const int64_t rows = params.batch * params.heads_kv * params.n;
  return launch_copy<GatherLaunch>(width.bytes, rows, row_bytes_total, stream, params, elem_bytes);
}

}  // namespace SWA_KERNEL_NS

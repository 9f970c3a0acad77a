// The forward launchers of launch.h: run-time dispatch on dtype and head dim
// to the instantiations that are built (SWA_HDIM_<D>, SWA_DTYPE_<FP16|BF16>),
// the PackGQA and split-KV decisions, and the exact kernel for fp32/fp64.
//
// The Hopper kernel (fwd_sm90_*.cu, built with SWA_SM90) takes a 16-bit
// problem when all of these hold, else the portable kernels run:
//   - the current device has compute capability exactly 9.0 (H100/H200);
//   - SWA_DISABLE_SM90 is unset, empty or "0" (read once per process);
//   - its instantiation is built: head dim 64 or 128, the dtype selected;
//   - plain attention (no ring key source: cache_attention stays portable);
//   - no split-KV (params.num_splits <= 1). attention_num_splits splits only
//     grids that fill under 80% of one wave with >= 4 key tiles per block
//     (decoding, short queries over long keys): those run on the portable
//     split kernel, which spreads them over the SMs; and no PackGQA (with
//     Hq > Hkv and 2 Sq <= the portable block_m, the portable kernel packs
//     the group into one block);
//   - padded, the queries see every key between them (seen_keys of all rows,
//     the sink run and the band, cover [0, Sk)): the portable kernel
//     zero-fills keys no query sees, TMA cannot; packed sequences (whose
//     lengths the host cannot read) take the kernel's V guard instead;
//   - Sk >= 1, the 32-bit index limits of tensor_core_ok, and TMA can describe
//     q, k, v (16-byte aligned bases, strides multiples of 16 bytes: sm90_tma.h).
// Not covered (portable): head dims 32, 96, 256; fp32/fp64; cache_attention;
// split-KV decoding; short GQA queries (PackGQA); sm_89 and older, sm_100+;
// unaligned or broadcast (stride 0) views.
// SWA_DEBUG_FORWARD_PATH=1 prints the chosen path of every call to stderr
// ("swa_cuda: forward path sm90"); the tests read it. SWA_DISABLE_SPLIT_KV=1
// makes attention_num_splits return 1 (the tests use it to reach the
// unsplit kernels with small shapes). SWA_SM90_PERSISTENT=0
// launches the Hopper kernel with one block per query tile instead of one
// per SM (fwd_sm90_launch.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <utility>

#include "fwd_api.cuh"
#include "fwd_kernel_traits.cuh"
#include "swa/kernels/band.h"
#include "swa/kernels/fwd_tiles.h"
#include "swa/kernels/launch.h"
#include "swa/kernels/ring.h"
#include "swa/kernels/sm90_tma.h"

namespace SWA_KERNEL_NS {
namespace {

using cuda_detail::FwdTileShape;
using cuda_detail::FwdTraits;
using cuda_detail::kMaxSplits;

// Tile shape of a built tensor-core head dim (block_m == 0: none built).
struct TileDims {
  int block_m = 0;
  int block_n = 0;
  int blocks_per_sm = 0;
  int variant = 0;  // FwdTileShape<D, variant>
};

template <int kHeadDim, int kVariant = 0>
TileDims dims_of() {
  using S = FwdTileShape<kHeadDim, kVariant>;
  return {S::kBlockM, S::kBlockN, S::kMinBlocksPerSm, kVariant};
}

// The d = 256 shape the current device can run: the default one needs more
// shared memory per block than sm_86 / sm_89 allow (99 KB); they get variant 1.
// Decided the same way by attention_num_splits and attention_forward (the
// caller keeps the device current between them).
TileDims dims_256() {
  int device = 0, optin = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) {
    (void)cudaGetLastError();  // not ours to report: assume a large device
    return dims_of<256>();
  }
  if (optin >= FwdTraits<__half, 256, 0>::kSmemBytes) return dims_of<256>();
  return dims_of<256, 1>();
}

TileDims tile_dims(int64_t head_dim) {
  switch (head_dim) {
#ifdef SWA_HDIM_32
    case 32: return dims_of<32>();
#endif
#ifdef SWA_HDIM_64
    case 64: return dims_of<64>();
#endif
#ifdef SWA_HDIM_96
    case 96: return dims_of<96>();
#endif
#ifdef SWA_HDIM_128
    case 128: return dims_of<128>();
#endif
#ifdef SWA_HDIM_256
    case 256: return dims_256();
#endif
    default: return {};
  }
}

bool head_dim_built(int64_t head_dim) {
  switch (head_dim) {
#ifdef SWA_HDIM_32
    case 32: return true;
#endif
#ifdef SWA_HDIM_64
    case 64: return true;
#endif
#ifdef SWA_HDIM_96
    case 96: return true;
#endif
#ifdef SWA_HDIM_128
    case 128: return true;
#endif
#ifdef SWA_HDIM_256
    case 256: return true;
#endif
    default: return false;
  }
}

bool dtype_built(DType dtype) {
  switch (dtype) {
#ifdef SWA_DTYPE_FP16
    case DType::kFloat16: return true;
#endif
#ifdef SWA_DTYPE_BF16
    case DType::kBFloat16: return true;
#endif
    default: return false;
  }
}

bool is_16bit(DType dtype) { return dtype == DType::kFloat16 || dtype == DType::kBFloat16; }

// cp.async moves 16 bytes: every row must start 16-byte aligned, i.e. an
// aligned base and strides that are multiples of 8 elements (strides of
// size-1 dims are never used and not checked).
bool rows_aligned(const void* ptr, std::initializer_list<std::pair<int64_t, int64_t>> stride_extent) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  for (const auto& se : stride_extent)
    if (se.second > 1 && se.first % 8 != 0) return false;
  return true;
}

// The longest key sequence any batch entry can have: plain seqlen_k, or for
// the ring (pos unknown on the host) the full window: S sink keys, W - 1 ring
// keys and Sq new ones.
Band host_band(const AttentionParams& p) {
  if (p.ring.pos == nullptr) return Band{p.seqlen_q, p.seqlen_k, p.window_left, p.window_right, p.sink_tokens};
  // pos = W - 1 + S: the window full and every sink slot seen beside it.
  const RingSource& r = p.ring;
  return RingView{r.window - 1 + r.sink_tokens, p.seqlen_q, r.window, r.capacity, r.sink_tokens}.band();
}

// Can the tensor-core kernel take this problem? Alignment, and the 32-bit
// index ranges it relies on (packed rows, key indices, ring slots, grid).
bool tensor_core_ok(const AttentionParams& p, const TileDims& dims, int64_t pack) {
  constexpr int64_t kInt32Limit = (int64_t{1} << 31) - 1024;
  const Band band = host_band(p);
  if (p.seqlen_q * pack > kInt32Limit || band.seqlen_k > kInt32Limit) return false;
  const FwdGrid grid = make_fwd_grid(p.batch, p.heads_q, p.heads_kv, p.seqlen_q, pack, kMaxSplits,
                                     dims.block_m);
  if (grid.blocks() > kInt32Limit) return false;
  if (!rows_aligned(p.q.ptr, {{p.q.batch_stride, p.batch}, {p.q.head_stride, p.heads_q}, {p.q.row_stride, p.seqlen_q}}))
    return false;
  if (!rows_aligned(p.out, {{p.out_batch_stride, p.batch}, {p.out_head_stride, p.heads_q}, {p.out_row_stride, p.seqlen_q}}))
    return false;
  const int64_t new_rows = p.ring.pos == nullptr ? p.seqlen_k : p.seqlen_q;
  if (!rows_aligned(p.k.ptr, {{p.k.batch_stride, p.batch}, {p.k.head_stride, p.heads_kv}, {p.k.row_stride, new_rows}}) ||
      !rows_aligned(p.v.ptr, {{p.v.batch_stride, p.batch}, {p.v.head_stride, p.heads_kv}, {p.v.row_stride, new_rows}}))
    return false;
  if (p.ring.pos != nullptr) {
    const RingSource& r = p.ring;
    if (r.capacity < 1 || r.capacity > kInt32Limit || r.window < 1 || r.window - 1 > r.capacity) return false;
    if (!rows_aligned(r.k_cache.ptr, {{r.k_cache.batch_stride, p.batch}, {r.k_cache.head_stride, p.heads_kv}, {r.k_cache.row_stride, r.sink_tokens + r.capacity}}) ||
        !rows_aligned(r.v_cache.ptr, {{r.v_cache.batch_stride, p.batch}, {r.v_cache.head_stride, p.heads_kv}, {r.v_cache.row_stride, r.sink_tokens + r.capacity}}))
      return false;
  }
  return true;
}

// PackGQA for short query sequences: the G query heads of a kv head share a
// block (rows m -> query row m / G, head hkv * G + m % G) when the plain tile
// would be at most half full, so K/V are read once per group.
// With per-head windows a block holds one query head (its band is the head's).
int64_t pack_of(const AttentionParams& p, const TileDims& dims) {
  if (p.head_windows.set()) return 1;
  const int64_t group = p.heads_q / p.heads_kv;
  return (group > 1 && 2 * p.seqlen_q <= dims.block_m) ? group : 1;
}

// ---- the Hopper path -----------------------------------------------------------

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

bool sm90_disabled() {
  static const bool disabled = env_flag("SWA_DISABLE_SM90");
  return disabled;
}

bool sm90_built(DType dtype, int64_t head_dim) {
#ifdef SWA_SM90
  switch (head_dim) {
#ifdef SWA_HDIM_64
    case 64: return dtype_built(dtype);
#endif
#ifdef SWA_HDIM_128
    case 128: return dtype_built(dtype);
#endif
    default: return false;
  }
#else
  (void)dtype;
  (void)head_dim;
  return false;
#endif
}

// Compute capability exactly 9.0, cached per device (0 unknown, 1 yes, 2 no).
bool current_device_is_sm90() {
  static std::atomic<int> cache[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  const bool cacheable = device >= 0 && device < 64;
  if (cacheable) {
    const int c = cache[device].load(std::memory_order_relaxed);
    if (c != 0) return c == 1;
  }
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  const bool yes = major == 9 && minor == 0;
  if (cacheable) cache[device].store(yes ? 1 : 2, std::memory_order_relaxed);
  return yes;
}

// Tile rows of the Hopper kernel's boxes (Sm90FwdTraits: kBlockM = kBlockN = 128).
constexpr int64_t kSm90BlockM = 128;
constexpr int64_t kSm90BlockN = 128;

// Everything but the device test, in the order of the cheap checks first.
bool sm90_problem_ok(const AttentionParams& p, const TileDims& dims, int64_t pack) {
  if (sm90_disabled() || !sm90_built(p.dtype, p.head_dim)) return false;
  if (p.ring.pos != nullptr || p.num_splits > 1 || pack != 1 || p.seqlen_k < 1) return false;
  // Per-head windows run on the portable kernel: the key-coverage test below
  // would need every head's window, which is in device memory.
  if (p.head_windows.set()) return false;
  if (!tensor_core_ok(p, dims, pack)) return false;
  // TMA loads whole 128-key boxes and cannot zero a key inside [0, Sk): a key
  // that no query of the call sees (before the first row's window, after the
  // last row's) could then reach P V as 0 * NaN. The portable kernel
  // zero-fills those; padded, Hopper takes the calls whose queries see every
  // key. With sink tokens the keys seen are two runs, [0, sink.end) and the
  // band: together they must cover [0, Sk) (no gap between the sinks and the
  // band). Packed, the lengths stay on the device and the kernel's V guard
  // zeroes such rows itself (fwd_sm90_kernel.cuh), the next sequence's too.
  const bool packed = p.cu_seqlens_q != nullptr;
  if (!packed) {
    const Band band{p.seqlen_q, p.seqlen_k, p.window_left, p.window_right, p.sink_tokens};
    const SeenKeys seen = seen_keys(band, 0, p.seqlen_q);
    if (seen.band.begin > seen.sink.end || seen.band.end < p.seqlen_k) return false;
  }
  const Sm90Operands ops = sm90_operands(packed, p.batch, p.seqlen_q, p.seqlen_k, p.total_q, p.total_k);
  if (ops.rows_q > INT32_MAX || ops.rows_k > INT32_MAX) return false;  // the boxes' int32 row coordinates
  return sm90_tma_shape(p.q.ptr, ops.batch, p.heads_q, ops.rows_q, p.head_dim, p.q.batch_stride,
                        p.q.head_stride, p.q.row_stride, kSm90BlockM).ok &&
         sm90_tma_shape(p.k.ptr, ops.batch, p.heads_kv, ops.rows_k, p.head_dim, p.k.batch_stride,
                        p.k.head_stride, p.k.row_stride, kSm90BlockN).ok &&
         sm90_tma_shape(p.v.ptr, ops.batch, p.heads_kv, ops.rows_k, p.head_dim, p.v.batch_stride,
                        p.v.head_stride, p.v.row_stride, kSm90BlockN).ok;
}

bool use_sm90(const AttentionParams& p, const TileDims& dims, int64_t pack) {
  return sm90_problem_ok(p, dims, pack) && current_device_is_sm90();
}

template <typename T>
cudaError_t run_sm90_head_dim(const AttentionParams& p, cudaStream_t stream) {
#ifdef SWA_SM90
  switch (p.head_dim) {
#ifdef SWA_HDIM_64
    case 64: return cuda_detail::run_fwd_sm90<T, 64>(p, stream);
#endif
#ifdef SWA_HDIM_128
    case 128: return cuda_detail::run_fwd_sm90<T, 128>(p, stream);
#endif
    default: break;
  }
#endif
  (void)p;
  (void)stream;
  return cudaErrorNotSupported;
}

void report_path(ForwardPath path) {
  static const bool debug = env_flag("SWA_DEBUG_FORWARD_PATH");
  if (debug) std::fprintf(stderr, "swa_cuda: forward path %s\n", forward_path_name(path));
}

template <typename T>
cudaError_t run_fwd_head_dim(const AttentionParams& p, const FwdGrid& grid, int variant,
                             cudaStream_t stream) {
  using cuda_detail::run_fwd;
  switch (p.head_dim) {
#ifdef SWA_HDIM_32
    case 32: return run_fwd<T, 32>(p, grid, variant, stream);
#endif
#ifdef SWA_HDIM_64
    case 64: return run_fwd<T, 64>(p, grid, variant, stream);
#endif
#ifdef SWA_HDIM_96
    case 96: return run_fwd<T, 96>(p, grid, variant, stream);
#endif
#ifdef SWA_HDIM_128
    case 128: return run_fwd<T, 128>(p, grid, variant, stream);
#endif
#ifdef SWA_HDIM_256
    case 256: return run_fwd<T, 256>(p, grid, variant, stream);
#endif
    default: return cudaErrorInvalidValue;
  }
}

// The 16-bit forward: tensor-core kernel (+ combine when split), or the exact
// kernel when the tensor-core kernel cannot take the problem.
template <typename T>
cudaError_t forward_16bit(const AttentionParams& params, cudaStream_t stream) {
  const TileDims dims = tile_dims(params.head_dim);
  if (dims.block_m == 0) return cudaErrorInvalidValue;
  const int64_t pack = pack_of(params, dims);
  if (!tensor_core_ok(params, dims, pack)) {
    report_path(ForwardPath::kExact);
    return cuda_detail::run_exact_fwd<T>(params, stream);
  }
  if (use_sm90(params, dims, pack)) {
    const cudaError_t err = run_sm90_head_dim<T>(params, stream);
    if (err != cudaErrorNotSupported) {
      report_path(ForwardPath::kSm90);
      return err;
    }
  }
  AttentionParams p = params;
  if (p.num_splits < 1) p.num_splits = 1;
  if (p.num_splits > 1 && (p.num_splits > kMaxSplits || p.out_accum == nullptr || p.lse_accum == nullptr))
    return cudaErrorInvalidValue;
  const FwdGrid grid = make_fwd_grid(p.batch, p.heads_q, p.heads_kv, p.seqlen_q, pack, p.num_splits,
                                     dims.block_m);
  report_path(p.num_splits > 1 ? ForwardPath::kTensorCoreSplit : ForwardPath::kTensorCore);
  const cudaError_t err = run_fwd_head_dim<T>(p, grid, dims.variant, stream);
  if (err != cudaSuccess || p.num_splits == 1) return err;
  return cuda_detail::run_fwd_combine<T>(p, stream);
}

}  // namespace

bool attention_supported(DType dtype, int64_t head_dim) {
  if (dtype == DType::kFloat32 || dtype == DType::kFloat64) return head_dim >= 1 && head_dim <= 256;
  return is_16bit(dtype) && dtype_built(dtype) && head_dim_built(head_dim);
}

int attention_num_splits(const AttentionParams& p, int sm_count) {
  static const bool no_split = env_flag("SWA_DISABLE_SPLIT_KV");
  if (no_split) return 1;
  if (!attention_supported(p.dtype, p.head_dim) || !is_16bit(p.dtype)) return 1;
  if (p.heads_kv <= 0 || p.heads_q % p.heads_kv != 0 || sm_count <= 0) return 1;
  const TileDims dims = tile_dims(p.head_dim);
  const int64_t pack = pack_of(p, dims);
  if (!tensor_core_ok(p, dims, pack)) return 1;
  const FwdGrid grid = make_fwd_grid(p.batch, p.heads_q, p.heads_kv, p.seqlen_q, pack, 1, dims.block_m);
  const int64_t blocks = grid.blocks();
  const int64_t slots = static_cast<int64_t>(sm_count) * dims.blocks_per_sm;
  if (blocks == 0 || blocks * 5 >= slots * 4) return 1;  // the grid fills the device already
  // The most key tiles one block walks, sink tiles included (m_blocks < slots
  // here: a short loop).
  const Band band = host_band(p);
  int64_t tiles = 0;
  for (int64_t m_block = 0; m_block < grid.m_blocks; ++m_block) {
    const KeyRange rows = packed_query_rows(m_block, dims.block_m, pack, grid.rows);
    const int64_t n = rows_block_key_tiles(band, rows, dims.block_n).size();
    tiles = n > tiles ? n : tiles;
  }
  return choose_num_splits(blocks, tiles, slots, kMaxSplits);
}

const char* forward_path_name(ForwardPath path) {
  switch (path) {
    case ForwardPath::kExact: return "exact";
    case ForwardPath::kTensorCore: return "sm80";
    case ForwardPath::kTensorCoreSplit: return "sm80-split";
    case ForwardPath::kSm90: return "sm90";
    default: return "unsupported";
  }
}

ForwardPath attention_forward_path(const AttentionParams& params) {
  if (params.heads_kv <= 0 || params.heads_q % params.heads_kv != 0) return ForwardPath::kUnsupported;
  if (params.dtype == DType::kFloat32 || params.dtype == DType::kFloat64) return ForwardPath::kExact;
  if (!attention_supported(params.dtype, params.head_dim)) return ForwardPath::kUnsupported;
  const TileDims dims = tile_dims(params.head_dim);
  const int64_t pack = pack_of(params, dims);
  if (!tensor_core_ok(params, dims, pack)) return ForwardPath::kExact;
  if (use_sm90(params, dims, pack)) return ForwardPath::kSm90;
  return params.num_splits > 1 ? ForwardPath::kTensorCoreSplit : ForwardPath::kTensorCore;
}

cudaError_t attention_forward(const AttentionParams& params, cudaStream_t stream) {
  if (params.batch * params.heads_q * params.seqlen_q == 0) return cudaSuccess;
  if (params.heads_kv <= 0 || params.heads_q % params.heads_kv != 0) return cudaErrorInvalidValue;
  switch (params.dtype) {
    case DType::kFloat32:
      report_path(ForwardPath::kExact);
      return cuda_detail::run_exact_fwd<float>(params, stream);
    case DType::kFloat64:
      report_path(ForwardPath::kExact);
      return cuda_detail::run_exact_fwd<double>(params, stream);
#ifdef SWA_DTYPE_FP16
    case DType::kFloat16: return forward_16bit<__half>(params, stream);
#endif
#ifdef SWA_DTYPE_BF16
    case DType::kBFloat16: return forward_16bit<__nv_bfloat16>(params, stream);
#endif
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace SWA_KERNEL_NS

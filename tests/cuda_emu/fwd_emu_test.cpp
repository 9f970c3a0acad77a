// Runs the CUDA forward (csrc/cuda/kernels) on the CPU through the emulator in
// fake/, entering through the library's own host code exactly as the torch
// glue does (csrc/cuda/tensor_params.cpp: attention_num_splits, workspaces,
// attention_forward; csrc/cuda/cache.cpp for cache_attention): the dispatch,
// the PackGQA and split-KV decisions, fwd_launch.cuh's grid / block / dynamic
// shared memory and the combine kernel all run as they would on a GPU.
//
// Checked against a float64 reference computed here from the op contract
// (not from band.h / ring.h): out with FlashAttention's rule
//     max|out - ref| <= 2 max|out_lowp - ref| + 1e-5,
// out_lowp being the attention evaluated the way PyTorch does in the input
// dtype (q * scale, scores, probabilities and output rounded to it); lse within
// 1e-3 relative (1e-3 absolute below 1); rows that see no key: out exactly 0,
// lse exactly -inf. fp32 / fp64 (exact kernel): max|out - ref| below 2e-5 /
// 1e-12 of max|ref|.
//
// Memory: every tensor is its own mapping that ends at a PROT_NONE page
// (another one before it, then 256 canary bytes), so a read or write past a
// tensor faults and is reported by name; cp.async sources are checked against
// the tensors' extents (fake primitives.cuh); canaries and tensor padding are
// checked after each case. Inputs have NaN in their padding (strides with gaps:
// rows past S, bytes between rows), so a read of padding that reaches a result
// shows up as NaN; outputs start as a NaN canary pattern and must be written
// exactly on their logical elements (not on padding rows past Sq, not between
// rows). The ring's slots that hold no key of the window are NaN too.
//
// Usage: fwd_emu_test [case-name substring]; built and run by run.sh.
//        fwd_emu_test --random N [seed]: N random problems instead (shapes,
//        windows, GQA, layouts, splits, rings, devices); not part of run.sh.
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <deque>
#include <functional>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "element_types.h"
#include "fwd_kernel_traits.cuh"
#include "swa/kernels/band.h"
#include "swa/kernels/launch.h"
#include "swa/kernels/params.h"

namespace kn = SWA_KERNEL_NS;
using kn::DType;

namespace {

const char* current_case = "";

// ---- guarded allocations --------------------------------------------------------------
constexpr unsigned char kCanaryByte = 0xa5;
constexpr size_t kFrontCanary = 256;

struct Region {
  char* map;
  size_t map_bytes;
  char* data;
  size_t bytes;     // the tensor
  size_t rounded;   // bytes rounded up to 16: data + rounded is the guard page
  std::string name;
};
std::vector<Region> regions;  // the running case's allocations

size_t page_size() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }

void* guarded_alloc(size_t bytes, const std::string& name) {
  const size_t page = page_size();
  const size_t rounded = (bytes + 15) / 16 * 16;
  const size_t middle = (kFrontCanary + rounded + page - 1) / page * page;
  const size_t total = middle + 2 * page;
  void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    std::perror("mmap");
    std::abort();
  }
  char* map = static_cast<char*>(m);
  mprotect(map, page, PROT_NONE);
  mprotect(map + page + middle, page, PROT_NONE);
  std::memset(map + page, kCanaryByte, middle);
  char* data = map + page + middle - rounded;
  regions.push_back({map, total, data, bytes, rounded, name});
  return data;
}

void free_regions() {
  for (const Region& r : regions) munmap(r.map, r.map_bytes);
  regions.clear();
}

// Canary bytes outside the tensors (before them, and the tail up to 16 B).
int check_canaries() {
  int bad = 0;
  const size_t page = page_size();
  for (const Region& r : regions) {
    for (const char* c = r.map + page; c < r.data; ++c)
      if (static_cast<unsigned char>(*c) != kCanaryByte) {
        std::printf("  %s: written %td bytes before its start\n", r.name.c_str(), r.data - c);
        ++bad;
        break;
      }
    for (size_t i = r.bytes; i < r.rounded; ++i)
      if (static_cast<unsigned char>(r.data[i]) != kCanaryByte) {
        std::printf("  %s: written past its end\n", r.name.c_str());
        ++bad;
        break;
      }
  }
  return bad;
}

bool global_read_ok(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  for (const Region& r : regions)
    if (c >= r.data && c + n <= r.data + r.bytes) return true;
  return false;
}

void on_segv(int, siginfo_t* info, void*) {
  const char* a = static_cast<const char*>(info->si_addr);
  const size_t page = page_size();
  char msg[512];
  int n = std::snprintf(msg, sizeof msg, "FAIL %s: out-of-bounds access at %p", current_case, info->si_addr);
  for (const Region& r : regions) {
    if (a >= r.map && a < r.map + page)
      n += std::snprintf(msg + n, sizeof msg - n, " (guard page before %s)", r.name.c_str());
    else if (a >= r.data + r.rounded && a < r.map + r.map_bytes)
      n += std::snprintf(msg + n, sizeof msg - n, " (%td bytes past the end of %s)", a - (r.data + r.bytes),
                         r.name.c_str());
  }
  n += std::snprintf(msg + n, sizeof msg - n, "\n");
  (void)!write(1, msg, n);
  _exit(2);
}

void install_segv_handler() {
  static std::vector<char> alt(1 << 16);
  stack_t ss{};
  ss.ss_sp = alt.data();
  ss.ss_size = alt.size();
  sigaltstack(&ss, nullptr);
  struct sigaction sa{};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
}

// ---- element types ---------------------------------------------------------------------
template <typename T>
double round_t(double x) {  // x rounded to T, as PyTorch's T tensors hold it
  return to_d(from_d<T>(x));
}
template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same<T, __half>::value) return DType::kFloat16;
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) return DType::kBFloat16;
  else if constexpr (std::is_same<T, float>::value) return DType::kFloat32;
  else return DType::kFloat64;
}
template <typename T>
const char* dtype_name() {
  if constexpr (std::is_same<T, __half>::value) return "fp16";
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) return "bf16";
  else if constexpr (std::is_same<T, float>::value) return "fp32";
  else return "fp64";
}
template <typename T>
T nan_value() {
  return from_d<T>(NAN);
}
// Output canary: a NaN bit pattern (all exponent bits, payload 0xa5...) that no
// kernel produces.
template <typename T>
T canary_value() {
  T x;
  if constexpr (sizeof(T) == 2) {
    const uint16_t b = 0xffa5;
    std::memcpy(&x, &b, 2);
  } else if constexpr (sizeof(T) == 4) {
    const uint32_t b = 0xffa5a5a5u;
    std::memcpy(&x, &b, 4);
  } else {
    const uint64_t b = 0xffa5a5a5a5a5a5a5ull;
    std::memcpy(&x, &b, 8);
  }
  return x;
}
template <typename T>
bool is_canary(T x) {
  const T c = canary_value<T>();
  return std::memcmp(&x, &c, sizeof(T)) == 0;
}

// ---- [B, H, S, D] tensors with strided layouts -------------------------------------------
enum Layout {
  kBHSD = 0,   // [B, H, S, D] with 3 padding rows after each head's S rows
  kBSHD = 1,   // [B, S, H, D] (a transposed view) with 8 elements after each (s, .) row group
               // and 2 padding rows per batch
  kOddRows = 2 // [B, H, S, D], row stride D + 4: rows not 16-byte aligned (16-bit: exact kernel)
};

template <typename T>
struct Tensor4 {
  T* data = nullptr;
  size_t elems = 0;
  int64_t B = 0, H = 0, S = 0, D = 0, bs = 0, hs = 0, rs = 0;
  std::vector<char> logical;  // per element of the allocation

  void init(const std::string& name, int64_t b, int64_t h, int64_t s, int64_t d, int layout, bool output) {
    B = b, H = h, S = s, D = d;
    if (layout == kBHSD) {
      rs = d, hs = (s + 3) * d, bs = h * hs + 8;
    } else if (layout == kBSHD) {
      hs = d, rs = h * d + 8, bs = (s + 2) * rs;
    } else {
      rs = d + 4, hs = s * rs, bs = h * hs;
    }
    elems = static_cast<size_t>(b * bs);
    data = static_cast<T*>(guarded_alloc(elems * sizeof(T), name));
    logical.assign(elems, 0);
    for (int64_t i = 0; i < b; ++i)
      for (int64_t j = 0; j < h; ++j)
        for (int64_t r = 0; r < s; ++r)
          for (int64_t e = 0; e < d; ++e) logical[static_cast<size_t>(i * bs + j * hs + r * rs + e)] = 1;
    const T fill = output ? canary_value<T>() : nan_value<T>();
    for (size_t i = 0; i < elems; ++i) data[i] = fill;
  }
  T& at(int64_t b, int64_t h, int64_t s, int64_t d) { return data[b * bs + h * hs + s * rs + d]; }
  kn::TensorRef ref() { return {data, bs, hs, rs}; }
  void randomize(std::mt19937_64& rng, double sigma) {
    std::normal_distribution<double> normal(0.0, sigma);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t s = 0; s < S; ++s)
          for (int64_t d = 0; d < D; ++d) at(b, h, s, d) = from_d<T>(normal(rng));
  }
};

// An output must be written on every logical element and nowhere else.
template <typename T>
int check_written(const char* what, const Tensor4<T>& t) {
  int64_t unwritten = 0, stray = 0;
  for (size_t i = 0; i < t.elems; ++i) {
    const bool c = is_canary(t.data[i]);
    if (t.logical[i] && c) ++unwritten;
    if (!t.logical[i] && !c) ++stray;
  }
  if (unwritten) std::printf("  %s: %lld elements never written\n", what, static_cast<long long>(unwritten));
  if (stray)
    std::printf("  %s: %lld padding elements written (rows past S or between rows)\n", what,
                static_cast<long long>(stray));
  return (unwritten ? 1 : 0) + (stray ? 1 : 0);
}

// ---- cases ---------------------------------------------------------------------------------
struct Case {
  const char* name;
  int64_t B, Hq, Hkv, Sq, Sk, D;
  int64_t wl, wr;
  float softcap;
  int layout;
  // cache_attention (ring key source): Sk is unused, the window is (window - 1, 0).
  int64_t window = 0, capacity = 0;
  std::vector<int64_t> pos = {};
  // Split-KV: 0 = the library's heuristic for sm_count SMs (as the torch glue
  // does), else forced (as an extension filling the params may).
  int forced_splits = 0;
  int sm_count = 132;
  int smem_optin = 227 * 1024;
  // What the dispatch must have chosen: 't' tensor-core, 'x' exact kernel;
  // expect_split: 1 = must split, 0 = must not, -1 = either.
  char expect_kernel = 't';
  int expect_split = -1;
  double scale = 0;  // 0: the default 1 / sqrt(D)
  // Attention sinks: sink tokens S (keys 0 .. S-1; with a ring, S sink slots
  // before the C ring slots) and sink logits (SinkLogits below).
  int64_t sink_tokens = 0;
  int sink_logits = 0;
  // Packed variable-length sequences (params.cu_seqlens_*): per-sequence
  // query (and, without a ring, key) lengths; B is their count, Sq / Sk their
  // maxima (the case's own Sq, Sk are ignored). q, k, v, out are [T, H, D]
  // (one [1, H, T, D] tensor of the case's layout), lse [Hq, Tq].
  std::vector<int64_t> seq_q = {}, seq_k = {};
  // Per-head windows (attention.per_head): query head h's (wl, wr) in kernel
  // form; wl / wr above are ignored then (params get the union).
  std::vector<int64_t> head_wl = {}, head_wr = {};
};

// Sink logits per query head h: none; N(0, 2); an extreme set cycling over
// the heads (-1e4: the sink vanishes, 30: it takes the whole row, then mild
// ones); NaN in head 0 only (that head's rows are NaN, the others unharmed).
enum SinkLogits { kNoSinkLogits = 0, kMildSinks = 1, kExtremeSinks = 2, kNanSinkHead0 = 3 };

double sink_logit(int mode, int64_t h, std::mt19937_64& rng) {
  std::normal_distribution<double> normal(0.0, 2.0);
  switch (mode) {
    case kMildSinks: return normal(rng);
    case kExtremeSinks: {
      const double fixed[] = {-1e4, 30.0, 0.75, -2.5};
      return fixed[h % 4];
    }
    case kNanSinkHead0: return h == 0 ? NAN : normal(rng);
    default: return -INFINITY;
  }
}

int cases_run = 0, cases_failed = 0;

// The keys query row (b, h, i) sees, in order: callbacks give k / v rows.
struct KeyRef {
  int64_t kind;  // 0: params.k / v row `row`; 1: ring slot `row`
  int64_t row;
};

template <typename T>
void run_attention_case(const Case& c, uint64_t seed) {
  current_case = c.name;
  const auto t0 = std::chrono::steady_clock::now();
  int bad = 0;
  std::mt19937_64 rng(seed);
  const bool ring = c.window > 0;
  const bool lowp = sizeof(T) == 2;
  const bool varlen = !c.seq_q.empty();
  const int64_t B = varlen ? static_cast<int64_t>(c.seq_q.size()) : c.B, Hq = c.Hq, Hkv = c.Hkv, D = c.D, G = Hq / Hkv;
  // Per sequence: query / key lengths and first rows (the padded layout: the
  // call's lengths, row 0 of batch entry b).
  std::vector<int64_t> len_q(B), len_k(B), row_q(B + 1, 0), row_k(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) {
    len_q[b] = varlen ? c.seq_q[b] : c.Sq;
    len_k[b] = ring ? len_q[b] : varlen ? c.seq_k[b] : c.Sk;  // rows of params.k / v (the new tokens for the ring)
    row_q[b + 1] = row_q[b] + len_q[b];
    row_k[b + 1] = row_k[b] + len_k[b];
  }
  const int64_t Sq = varlen ? *std::max_element(len_q.begin(), len_q.end()) : c.Sq;
  const int64_t Sk = varlen ? *std::max_element(len_k.begin(), len_k.end()) : ring ? Sq : c.Sk;
  const int64_t Tq = row_q[B], Tk = row_k[B];
  Tensor4<T> q, k, v, out, kc, vc;
  if (varlen) {  // [T, H, D] as one [1, H, T, D] tensor
    q.init("q", 1, Hq, Tq, D, c.layout, false);
    k.init(ring ? "k_new" : "k", 1, Hkv, Tk, D, c.layout, false);
    v.init(ring ? "v_new" : "v", 1, Hkv, Tk, D, c.layout, false);
    out.init("out", 1, Hq, Tq, D, c.layout, true);
  } else {
    q.init("q", B, Hq, Sq, D, c.layout, false);
    k.init(ring ? "k_new" : "k", B, Hkv, Sk, D, c.layout, false);
    v.init(ring ? "v_new" : "v", B, Hkv, Sk, D, c.layout, false);
    out.init("out", B, Hq, Sq, D, c.layout, true);
  }
  // Element (b, h, i, d) of sequence b, in either layout.
  auto Q = [&](int64_t b, int64_t h, int64_t i, int64_t d) -> T& {
    return varlen ? q.at(0, h, row_q[b] + i, d) : q.at(b, h, i, d);
  };
  auto O = [&](int64_t b, int64_t h, int64_t i, int64_t d) -> T& {
    return varlen ? out.at(0, h, row_q[b] + i, d) : out.at(b, h, i, d);
  };
  auto K = [&](int64_t b, int64_t h, int64_t j, int64_t d) -> T& {
    return varlen ? k.at(0, h, row_k[b] + j, d) : k.at(b, h, j, d);
  };
  auto V = [&](int64_t b, int64_t h, int64_t j, int64_t d) -> T& {
    return varlen ? v.at(0, h, row_k[b] + j, d) : v.at(b, h, j, d);
  };
  const int64_t lse_count = varlen ? Hq * Tq : B * Hq * Sq;
  auto lse_at = [&](int64_t b, int64_t h, int64_t i) {
    return varlen ? h * Tq + row_q[b] + i : (b * Hq + h) * Sq + i;
  };
  q.randomize(rng, 1.0);
  k.randomize(rng, 1.0);
  v.randomize(rng, 1.0);
  const int64_t S = c.sink_tokens;
  const bool per_head = !c.head_wl.empty();
  auto wl_of = [&](int64_t h) { return per_head ? c.head_wl[h] : c.wl; };
  auto wr_of = [&](int64_t h) { return per_head ? c.head_wr[h] : c.wr; };
  if (!ring) {
    // Keys that no query of the call sees hold NaN: they must never reach an
    // output (the loader zero-fills them; 0 * NaN would be NaN in P V). With
    // per-head windows: keys that no query head of the kv head's group sees.
    for (int64_t b = 0; b < B; ++b)
      for (int64_t hk = 0; hk < Hkv; ++hk)
        for (int64_t j = 0; j < len_k[b]; ++j) {
          bool seen_by_any = false;
          for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
            const kn::Band band{len_q[b], len_k[b], wl_of(h), wr_of(h), S};
            seen_by_any = seen_by_any || kn::seen_keys(band, 0, len_q[b]).contains(j);
          }
          if (seen_by_any) continue;
          for (int64_t d = 0; d < D; ++d) K(b, hk, j, d) = V(b, hk, j, d) = nan_value<T>();
        }
  }
  float* lse = static_cast<float*>(guarded_alloc(static_cast<size_t>(lse_count) * 4, "lse"));
  for (int64_t i = 0; i < lse_count; ++i) lse[i] = canary_value<float>();
  int64_t* pos = nullptr;
  if (ring) {
    // S sink slots (positions 0 .. S-1), then the C ring slots.
    kc.init("k_cache", B, Hkv, S + c.capacity, D, c.layout, false);
    vc.init("v_cache", B, Hkv, S + c.capacity, D, c.layout, false);
    pos = static_cast<int64_t*>(guarded_alloc(static_cast<size_t>(B) * 8, "pos"));
    std::normal_distribution<double> normal(0.0, 1.0);
    for (int64_t b = 0; b < B; ++b) {
      pos[b] = c.pos[b];
      // Only the ring slots of positions key_start .. pos - 1 and the sink
      // slots of positions below min(S, pos) hold keys a query may see (as
      // cache_append leaves them: a sink position in the window is in both);
      // every other slot stays NaN.
      const int64_t key_start = std::max<int64_t>(0, pos[b] - (c.window - 1));
      for (int64_t x = 0; x < pos[b]; ++x) {
        if (x < key_start && x >= S) continue;
        for (int64_t h = 0; h < Hkv; ++h)
          for (int64_t d = 0; d < D; ++d) {
            const T kx = from_d<T>(normal(rng)), vx = from_d<T>(normal(rng));
            if (x >= key_start) kc.at(b, h, S + x % c.capacity, d) = kx, vc.at(b, h, S + x % c.capacity, d) = vx;
            if (x < S) kc.at(b, h, x, d) = kx, vc.at(b, h, x, d) = vx;
          }
      }
    }
  }
  float* sinks = nullptr;
  double* sinks_f64 = nullptr;
  if (c.sink_logits != kNoSinkLogits) {
    sinks = static_cast<float*>(guarded_alloc(static_cast<size_t>(Hq) * 4, "sinks"));
    sinks_f64 = static_cast<double*>(guarded_alloc(static_cast<size_t>(Hq) * 8, "sinks_f64"));
    for (int64_t h = 0; h < Hq; ++h) {
      sinks[h] = static_cast<float>(sink_logit(c.sink_logits, h, rng));
      sinks_f64[h] = sinks[h];
    }
  }

  // Params, as attention_params / cache_attention_cuda / launch_forward fill them.
  kn::AttentionParams p;
  p.dtype = dtype_of<T>();
  p.q = q.ref(), p.k = k.ref(), p.v = v.ref();
  p.out = out.data, p.out_batch_stride = out.bs, p.out_head_stride = out.hs, p.out_row_stride = out.rs;
  p.lse = lse;
  p.batch = B, p.heads_q = Hq, p.heads_kv = Hkv, p.seqlen_q = Sq, p.seqlen_k = Sk, p.head_dim = D;
  p.window_left = ring ? c.window - 1 : c.wl;
  p.window_right = ring ? 0 : c.wr;
  if (per_head) {  // as set_head_windows fills them: the union, and the heads' own
    auto wider = [](int64_t a, int64_t w) { return a < 0 || w < 0 ? -1 : std::max(a, w); };
    p.window_left = c.head_wl[0], p.window_right = c.head_wr[0];
    for (int64_t h = 1; h < Hq; ++h)
      p.window_left = wider(p.window_left, c.head_wl[h]), p.window_right = wider(p.window_right, c.head_wr[h]);
    p.head_windows = {c.head_wl.data(), c.head_wr.data()};
  }
  p.scale = static_cast<float>(c.scale > 0 ? c.scale : 1.0 / std::sqrt(static_cast<double>(D)));
  p.softcap = c.softcap;
  p.device_sm_count = c.sm_count;
  p.sinks = sinks;
  if (std::is_same<T, double>::value) p.sinks_f64 = sinks_f64;  // as attention_params fills it
  p.sink_tokens = ring ? 0 : S;
  if (ring) {
    p.ring.k_cache = kc.ref();
    p.ring.v_cache = vc.ref();
    p.ring.pos = pos;
    p.ring.capacity = c.capacity;
    p.ring.window = c.window;
    p.ring.sink_tokens = S;
    p.seqlen_k = S + (c.window - 1) + Sq;
  }
  if (varlen) {  // as set_packed_sequences (csrc/cuda/varlen_params.cpp) fills them
    int32_t* cu_q = static_cast<int32_t*>(guarded_alloc(static_cast<size_t>(B + 1) * 4, "cu_seqlens_q"));
    int32_t* cu_k = static_cast<int32_t*>(guarded_alloc(static_cast<size_t>(B + 1) * 4, "cu_seqlens_k"));
    for (int64_t b = 0; b <= B; ++b) cu_q[b] = static_cast<int32_t>(row_q[b]), cu_k[b] = static_cast<int32_t>(row_k[b]);
    p.cu_seqlens_q = cu_q;
    p.cu_seqlens_k = ring ? nullptr : cu_k;
    p.total_q = Tq;
    p.total_k = Tk;
    p.q.batch_stride = p.k.batch_stride = p.v.batch_stride = p.out_batch_stride = 0;
  }
  // The emulated device: an H100/H200-like sm_90 by default (the Hopper
  // kernel is not built here, so the portable kernels must serve it), an
  // sm_80 (163 KB) or an sm_89 (99 KB) by the shared-memory limit.
  emu::device().sm_count = c.sm_count;
  emu::device().smem_optin = c.smem_optin;
  emu::device().cc_major = c.smem_optin >= 200 * 1024 ? 9 : 8;
  emu::device().cc_minor = c.smem_optin >= 200 * 1024 ? 0 : c.smem_optin >= 160 * 1024 ? 0 : 9;
  emu::device().launches.clear();
  p.num_splits = c.forced_splits > 0 ? c.forced_splits : kn::attention_num_splits(p, c.sm_count);
  if (p.num_splits > 1) {
    const int64_t rows = B * Hq * Sq;
    p.out_accum = static_cast<float*>(
        guarded_alloc(static_cast<size_t>(p.num_splits * rows * D) * 4, "out_accum"));
    p.lse_accum = static_cast<float*>(guarded_alloc(static_cast<size_t>(p.num_splits * rows) * 4, "lse_accum"));
    for (int64_t i = 0; i < p.num_splits * rows * D; ++i) p.out_accum[i] = NAN;
    for (int64_t i = 0; i < p.num_splits * rows; ++i) p.lse_accum[i] = NAN;
  }
  const kn::ForwardPath announced = kn::attention_forward_path(p);
  const cudaError_t err = kn::attention_forward(p, nullptr);
  if (err != cudaSuccess || cudaGetLastError() != cudaSuccess) {
    std::printf("  attention_forward returned %d\n", err);
    ++bad;
  }

  // Which kernels ran (the launch log of the emulated runtime).
  const auto& launches = emu::device().launches;
  std::string path;
  int tc_smem = 0;
  for (const auto& l : launches) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "%s%ux%u", path.empty() ? "" : " + ", l.grid.x, l.threads);
    path += buf;
    if (l.smem) {
      std::snprintf(buf, sizeof buf, " (%zu B smem)", l.smem);
      path += buf;
      tc_smem = static_cast<int>(l.smem);
    }
  }
  const bool tensor_core = tc_smem > 0;
  if ((c.expect_kernel == 't') != tensor_core) {
    std::printf("  expected the %s kernel, launches: %s\n", c.expect_kernel == 't' ? "tensor-core" : "exact",
                path.c_str());
    ++bad;
  }
  const kn::ForwardPath ran = !tensor_core ? kn::ForwardPath::kExact
                              : launches.size() == 2 ? kn::ForwardPath::kTensorCoreSplit
                                                     : kn::ForwardPath::kTensorCore;
  if (announced != ran) {
    std::printf("  attention_forward_path says %s, the launches were %s (%s)\n", kn::forward_path_name(announced),
                kn::forward_path_name(ran), path.c_str());
    ++bad;
  }
  if (c.expect_split >= 0 && (p.num_splits > 1) != (c.expect_split == 1)) {
    std::printf("  expected %s, num_splits = %d\n", c.expect_split ? "a split-KV launch" : "no split", p.num_splits);
    ++bad;
  }
  if (p.num_splits > 1 && tensor_core && launches.size() != 2) {  // (the exact kernel never splits)
    std::printf("  split-KV: expected the forward and the combine, launches: %s\n", path.c_str());
    ++bad;
  }

  // Reference, per query row.
  const double scale = p.scale;  // the float the kernel gets
  double err_out = 0, err_lowp = 0, err_lse = 0, max_ref = 0;
  int64_t empty_rows = 0, bad_empty = 0, nan_out = 0, nan_rows = 0, bad_nan_rows = 0;
  std::vector<KeyRef> keys;
  std::vector<double> s, s_low, pr, o(static_cast<size_t>(D)), o_low(static_cast<size_t>(D));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < len_q[b]; ++i) {
        const int64_t hk = h / G;
        keys.clear();
        if (ring) {  // query i at position pos + i sees positions pos + i - (W - 1) .. pos + i,
                     // and the sink positions x < S, x <= pos + i
          const int64_t P = pos[b] + i;
          const int64_t first_window = std::max<int64_t>(0, pos[b] - (c.window - 1));  // of the call
          for (int64_t x = 0; x <= P; ++x) {
            if (x < P - (c.window - 1) && x >= S) continue;
            keys.push_back(x >= pos[b]         ? KeyRef{0, x - pos[b]}
                           : x >= first_window ? KeyRef{1, S + x % c.capacity}
                                               : KeyRef{1, x});  // a sink slot
          }
        } else {  // row i at key position i + Sk - Sq sees [p - wl, p + wr], and j < S if j <= p + wr
          const int64_t P = i + len_k[b] - len_q[b];
          for (int64_t j = 0; j < len_k[b]; ++j) {
            const int64_t wl = wl_of(h), wr = wr_of(h);
            const bool right = wr < 0 || j <= P + wr;
            if (((wl < 0 || j >= P - wl) && right) || (j < S && right)) keys.push_back({0, j});
          }
        }
        const double sink = sinks ? static_cast<double>(sinks[h]) : -INFINITY;  // the float the kernel gets
        auto kv = [&](const KeyRef& kr, bool value, int64_t d) {
          if (kr.kind == 1) return to_d(value ? vc.at(b, hk, kr.row, d) : kc.at(b, hk, kr.row, d));
          return to_d(value ? V(b, hk, kr.row, d) : K(b, hk, kr.row, d));
        };
        const float got_lse = lse[lse_at(b, h, i)];
        if (keys.empty()) {
          ++empty_rows;
          // No key: out 0 and lse the sink logit (-inf without; NaN stays NaN).
          bool ok = std::isnan(sink) ? std::isnan(got_lse) : static_cast<double>(got_lse) == sink;
          for (int64_t d = 0; d < D; ++d) ok = ok && to_d(O(b, h, i, d)) == 0.0;
          if (!ok) ++bad_empty;
          continue;
        }
        const size_t n = keys.size();
        s.assign(n, 0), s_low.assign(n, 0), pr.assign(n, 0);
        double m = -INFINITY, m_low = -INFINITY;
        for (size_t t = 0; t < n; ++t) {
          double dot = 0, dot_low = 0;
          for (int64_t d = 0; d < D; ++d) {
            const double qd = to_d(Q(b, h, i, d)), kd = kv(keys[t], false, d);
            dot += qd * kd;
            dot_low += round_t<T>(qd * scale) * kd;
          }
          double x = dot * scale, xl = round_t<T>(dot_low);
          if (c.softcap > 0) {
            x = c.softcap * std::tanh(x / c.softcap);
            xl = round_t<T>(c.softcap * round_t<T>(std::tanh(round_t<T>(xl / c.softcap))));
          }
          s[t] = x, s_low[t] = xl;
          m = std::max(m, x), m_low = std::max(m_low, xl);
        }
        if (std::isnan(sink)) {  // the whole row is NaN: out and lse
          ++nan_rows;
          bool all_nan = std::isnan(got_lse);
          for (int64_t d = 0; d < D; ++d) all_nan = all_nan && std::isnan(to_d(O(b, h, i, d)));
          if (!all_nan) ++bad_nan_rows;
          continue;
        }
        // The sink logit joins the softmax without a value (in the low-
        // precision evaluation too, rounded to T as the scores are).
        const double sink_low = sinks ? round_t<T>(sink) : -INFINITY;
        m = std::max(m, sink), m_low = std::max(m_low, sink_low);
        double l = std::exp(sink - m), l_low = std::exp(sink_low - m_low);
        for (size_t t = 0; t < n; ++t) l += std::exp(s[t] - m), l_low += std::exp(s_low[t] - m_low);
        const double ref_lse = m + std::log(l);
        std::fill(o.begin(), o.end(), 0.0);
        std::fill(o_low.begin(), o_low.end(), 0.0);
        for (size_t t = 0; t < n; ++t) {
          const double w = std::exp(s[t] - m) / l, wl = round_t<T>(std::exp(s_low[t] - m_low) / l_low);
          for (int64_t d = 0; d < D; ++d) {
            const double vd = kv(keys[t], true, d);
            o[d] += w * vd;
            o_low[d] += wl * vd;
          }
        }
        for (int64_t d = 0; d < D; ++d) {
          const double g = to_d(O(b, h, i, d));
          if (std::isnan(g)) ++nan_out;
          err_out = std::max(err_out, std::fabs(g - o[d]));
          err_lowp = std::max(err_lowp, std::fabs(round_t<T>(o_low[d]) - o[d]));
          max_ref = std::max(max_ref, std::fabs(o[d]));
        }
        const double e = std::fabs(static_cast<double>(got_lse) - ref_lse) / std::max(1.0, std::fabs(ref_lse));
        err_lse = std::isnan(got_lse) ? INFINITY : std::max(err_lse, e);
      }

  double tol;
  if (lowp) tol = 2 * err_lowp + 1e-5;
  else tol = (std::is_same<T, float>::value ? 2e-5 : 1e-12) * std::max(max_ref, 1e-3);
  if (nan_out || !(err_out <= tol)) {
    std::printf("  out: max|out - ref| = %.3g, tolerance %.3g (max|out_lowp - ref| = %.3g)%s\n", err_out, tol,
                err_lowp, nan_out ? ", NaN in out" : "");
    ++bad;
  }
  if (!(err_lse <= 1e-3)) {
    std::printf("  lse: relative error %.3g\n", err_lse);
    ++bad;
  }
  if (bad_empty) {
    std::printf("  %lld of %lld rows that see no key do not have out = 0, lse = -inf (or the sink logit)\n",
                static_cast<long long>(bad_empty), static_cast<long long>(empty_rows));
    ++bad;
  }
  if (bad_nan_rows) {
    std::printf("  %lld of %lld rows with a NaN sink logit are not NaN in out and lse\n",
                static_cast<long long>(bad_nan_rows), static_cast<long long>(nan_rows));
    ++bad;
  }
  bad += check_written("out", out);
  for (int64_t i = 0; i < lse_count; ++i)
    if (is_canary(lse[i])) {
      std::printf("  lse: row %lld never written\n", static_cast<long long>(i));
      ++bad;
      break;
    }
  bad += check_canaries();
  free_regions();

  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++cases_run;
  if (bad) ++cases_failed;
  std::printf("%s %-34s %s d%lld %s, splits %d, %s; err %.2g (tol %.2g)%s, %.1fs\n", bad ? "FAIL" : "ok  ", c.name,
              dtype_name<T>(), static_cast<long long>(D), kn::forward_path_name(ran), p.num_splits, path.c_str(),
              err_out, tol,
              empty_rows ? (", " + std::to_string(empty_rows) + " empty rows").c_str() : "", secs);
  std::fflush(stdout);
}

// ---- cache_append / cache_gather ------------------------------------------------------
struct CacheCase {
  const char* name;
  int64_t B, Hkv, C, T, D;  // T: rows appended; gather n = T (<= C) or C
  std::vector<int64_t> pos;
  int layout;
  int64_t S = 0;  // sink slots before the C ring slots
};

template <typename T>
void run_cache_case(const CacheCase& c, uint64_t seed) {
  current_case = c.name;
  const auto t0 = std::chrono::steady_clock::now();
  int bad = 0;
  std::mt19937_64 rng(seed);
  Tensor4<T> kc, vc, k, v;
  kc.init("k_cache", c.B, c.Hkv, c.S + c.C, c.D, c.layout, false);
  vc.init("v_cache", c.B, c.Hkv, c.S + c.C, c.D, c.layout, false);
  k.init("k", c.B, c.Hkv, c.T, c.D, c.layout, false);
  v.init("v", c.B, c.Hkv, c.T, c.D, c.layout, false);
  kc.randomize(rng, 1.0), vc.randomize(rng, 1.0), k.randomize(rng, 1.0), v.randomize(rng, 1.0);
  int64_t* pos = static_cast<int64_t*>(guarded_alloc(static_cast<size_t>(c.B) * 8, "pos"));
  for (int64_t b = 0; b < c.B; ++b) pos[b] = c.pos[b];
  // Expected caches after the append: row t lands in slot S + (pos + t) % C,
  // only the last min(T, C) rows; rows of positions below S also in slot
  // pos + t (any row, even one that does not land in the ring).
  std::vector<T> k_exp(kc.data, kc.data + kc.elems), v_exp(vc.data, vc.data + vc.elems);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hkv; ++h)
      for (int64_t t = 0; t < c.T; ++t)
        for (int64_t d = 0; d < c.D; ++d) {
          auto put = [&](int64_t slot) {
            k_exp[b * kc.bs + h * kc.hs + slot * kc.rs + d] = k.at(b, h, t, d);
            v_exp[b * vc.bs + h * vc.hs + slot * vc.rs + d] = v.at(b, h, t, d);
          };
          if (t >= c.T - c.C) put(c.S + (pos[b] + t) % c.C);
          if (pos[b] + t < c.S) put(pos[b] + t);
        }
  kn::CacheAppendParams ap;
  ap.dtype = dtype_of<T>();
  ap.k_cache = kc.ref(), ap.v_cache = vc.ref(), ap.k = k.ref(), ap.v = v.ref();
  ap.pos = pos;
  ap.batch = c.B, ap.heads_kv = c.Hkv, ap.capacity = c.C, ap.new_len = c.T, ap.head_dim = c.D;
  ap.sink_tokens = c.S;
  emu::device().launches.clear();
  if (kn::cache_append(ap, nullptr) != cudaSuccess) ++bad, std::printf("  cache_append failed\n");
  if (std::memcmp(k_exp.data(), kc.data, kc.elems * sizeof(T)) != 0 ||
      std::memcmp(v_exp.data(), vc.data, vc.elems * sizeof(T)) != 0) {
    std::printf("  cache_append: caches differ from the expected ones\n");
    ++bad;
  }
  // Gather the n most recent positions (after the append: pos + T).
  const int64_t n = c.C;  // the whole ring: rows before position 0 are zeros
  for (int64_t b = 0; b < c.B; ++b) pos[b] += c.T;
  T* k_out = static_cast<T*>(guarded_alloc(static_cast<size_t>(c.B * c.Hkv * n * c.D) * sizeof(T), "k_out"));
  T* v_out = static_cast<T*>(guarded_alloc(static_cast<size_t>(c.B * c.Hkv * n * c.D) * sizeof(T), "v_out"));
  for (int64_t i = 0; i < c.B * c.Hkv * n * c.D; ++i) k_out[i] = canary_value<T>(), v_out[i] = canary_value<T>();
  kn::CacheGatherParams gp;
  gp.dtype = dtype_of<T>();
  // The ring part (as RollingKVCache gathers it: a view past the sink slots).
  gp.k_cache = kc.ref(), gp.v_cache = vc.ref();
  gp.k_cache.ptr = kc.data + c.S * kc.rs, gp.v_cache.ptr = vc.data + c.S * vc.rs;
  gp.k_out = k_out, gp.v_out = v_out;
  gp.pos = pos;
  gp.batch = c.B, gp.heads_kv = c.Hkv, gp.capacity = c.C, gp.n = n, gp.head_dim = c.D;
  if (kn::cache_gather(gp, nullptr) != cudaSuccess) ++bad, std::printf("  cache_gather failed\n");
  int64_t wrong = 0;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hkv; ++h)
      for (int64_t r = 0; r < n; ++r)
        for (int64_t d = 0; d < c.D; ++d) {
          const int64_t x = pos[b] - n + r;
          const T want = x < 0 ? from_d<T>(0.0) : kc.at(b, h, c.S + x % c.C, d);
          const T want_v = x < 0 ? from_d<T>(0.0) : vc.at(b, h, c.S + x % c.C, d);
          const size_t o = static_cast<size_t>(((b * c.Hkv + h) * n + r) * c.D + d);
          if (std::memcmp(&want, k_out + o, sizeof(T)) || std::memcmp(&want_v, v_out + o, sizeof(T))) ++wrong;
        }
  if (wrong) {
    std::printf("  cache_gather: %lld elements differ\n", static_cast<long long>(wrong));
    ++bad;
  }
  std::string widths;
  for (const auto& l : emu::device().launches) widths += std::to_string(l.grid.x) + "x" + std::to_string(l.grid.y) + " ";
  bad += check_canaries();
  free_regions();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++cases_run;
  if (bad) ++cases_failed;
  std::printf("%s %-34s %s d%lld C %lld T %lld, grids %s%.1fs\n", bad ? "FAIL" : "ok  ", c.name, dtype_name<T>(),
              static_cast<long long>(c.D), static_cast<long long>(c.C), static_cast<long long>(c.T), widths.c_str(),
              secs);
  std::fflush(stdout);
}

// cache_append of packed rows (params.cu_seqlens): sequence b's lens[b] rows
// of k, v [T, Hkv, D] at positions pos[b] ..; cu, when given, replaces the
// prefix sums of lens (a contract-breaking one: then only "nothing outside
// the caches is touched" is checked, by the guard pages and canaries).
template <typename T>
void run_cache_varlen_case(const CacheCase& c, const std::vector<int64_t>& lens, const std::vector<int32_t>& bad_cu,
                           uint64_t seed) {
  current_case = c.name;
  const auto t0 = std::chrono::steady_clock::now();
  int bad = 0;
  std::mt19937_64 rng(seed);
  std::vector<int64_t> row(c.B + 1, 0);
  for (int64_t b = 0; b < c.B; ++b) row[b + 1] = row[b] + lens[b];
  const int64_t Tn = row[c.B];
  Tensor4<T> kc, vc, k, v;
  kc.init("k_cache", c.B, c.Hkv, c.S + c.C, c.D, c.layout, false);
  vc.init("v_cache", c.B, c.Hkv, c.S + c.C, c.D, c.layout, false);
  k.init("k", 1, c.Hkv, Tn, c.D, c.layout, false);
  v.init("v", 1, c.Hkv, Tn, c.D, c.layout, false);
  kc.randomize(rng, 1.0), vc.randomize(rng, 1.0), k.randomize(rng, 1.0), v.randomize(rng, 1.0);
  int64_t* pos = static_cast<int64_t*>(guarded_alloc(static_cast<size_t>(c.B) * 8, "pos"));
  int32_t* cu = static_cast<int32_t*>(guarded_alloc(static_cast<size_t>(c.B + 1) * 4, "cu_seqlens"));
  for (int64_t b = 0; b < c.B; ++b) pos[b] = c.pos[b];
  for (int64_t b = 0; b <= c.B; ++b) cu[b] = bad_cu.empty() ? static_cast<int32_t>(row[b]) : bad_cu[b];
  std::vector<T> k_exp(kc.data, kc.data + kc.elems), v_exp(vc.data, vc.data + vc.elems);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hkv; ++h)
      for (int64_t t = 0; t < lens[b]; ++t)
        for (int64_t d = 0; d < c.D; ++d) {
          auto put = [&](int64_t slot) {
            k_exp[b * kc.bs + h * kc.hs + slot * kc.rs + d] = k.at(0, h, row[b] + t, d);
            v_exp[b * vc.bs + h * vc.hs + slot * vc.rs + d] = v.at(0, h, row[b] + t, d);
          };
          if (t >= lens[b] - c.C) put(c.S + (pos[b] + t) % c.C);
          if (pos[b] + t < c.S) put(pos[b] + t);
        }
  kn::CacheAppendParams ap;  // as cache_append_varlen_cuda (csrc/cuda/cache_varlen.cpp) fills it
  ap.dtype = dtype_of<T>();
  ap.k_cache = kc.ref(), ap.v_cache = vc.ref(), ap.k = k.ref(), ap.v = v.ref();
  ap.k.batch_stride = ap.v.batch_stride = 0;
  ap.pos = pos;
  ap.batch = c.B, ap.heads_kv = c.Hkv, ap.capacity = c.C, ap.new_len = Tn, ap.head_dim = c.D;
  ap.sink_tokens = c.S;
  ap.cu_seqlens = cu;
  emu::device().launches.clear();
  if (kn::cache_append(ap, nullptr) != cudaSuccess) ++bad, std::printf("  cache_append failed\n");
  if (bad_cu.empty() && (std::memcmp(k_exp.data(), kc.data, kc.elems * sizeof(T)) != 0 ||
                         std::memcmp(v_exp.data(), vc.data, vc.elems * sizeof(T)) != 0)) {
    std::printf("  cache_append.varlen: caches differ from the expected ones\n");
    ++bad;
  }
  std::string widths;
  for (const auto& l : emu::device().launches) widths += std::to_string(l.grid.x) + "x" + std::to_string(l.grid.y) + " ";
  bad += check_canaries();
  free_regions();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++cases_run;
  if (bad) ++cases_failed;
  std::printf("%s %-34s %s d%lld C %lld T %lld, grids %s%.1fs\n", bad ? "FAIL" : "ok  ", c.name, dtype_name<T>(),
              static_cast<long long>(c.D), static_cast<long long>(c.C), static_cast<long long>(Tn), widths.c_str(),
              secs);
  std::fflush(stdout);
}

// Runs one case in a child process, so that a fault (guard page), an emulator
// abort (bad shared-memory access, cp.async outside every tensor, deadlock)
// or a hang fails that case only.
void run_isolated(const char* name, const std::function<void()>& body) {
  std::fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(120);  // a hung case (e.g. a barrier that never completes) fails
    const int failed_before = cases_failed;
    body();
    std::fflush(stdout);
    _exit(cases_failed == failed_before ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ++cases_run;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  ++cases_failed;
  if (WIFSIGNALED(status))
    std::printf("FAIL %s: the emulation died with signal %d (see stderr)\n", name, WTERMSIG(status));
  else if (WEXITSTATUS(status) != 1)
    std::printf("FAIL %s: the emulation exited with status %d\n", name, WEXITSTATUS(status));
  std::fflush(stdout);
}

}  // namespace

// Random problems (fwd_emu_test --random N [seed]), small enough for the emulator.
int run_random(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto pick = [&](std::initializer_list<int64_t> v) { return *(v.begin() + rng() % v.size()); };
  static std::deque<std::string> names;
  for (int i = 0; i < n; ++i) {
    Case c{"", 1, 1, 1, 1, 1, 64, -1, 0, 0.f, kBHSD};
    const int64_t hkv = pick({1, 2, 3}), g = pick({1, 1, 2, 3, 4, 8});
    c.B = pick({1, 2}), c.Hkv = hkv, c.Hq = hkv * g;
    c.D = pick({32, 64, 64, 96, 128, 128, 256});
    const bool ring = rng() % 4 == 0;
    if (ring) {
      c.window = pick({1, 2, 17, 64, 65, 100, 300});
      c.capacity = std::max<int64_t>(1, c.window - 1 + pick({0, 0, 1, 13, 64}));
      c.Sq = pick({1, 1, 2, 5, 40});
      for (int64_t b = 0; b < c.B; ++b) c.pos.push_back(static_cast<int64_t>(rng() % (3 * c.capacity + 1)));
    } else {
      c.Sk = pick({0, 1, 7, 63, 64, 65, 127, 129, 200, 333});
      c.Sq = std::max<int64_t>(1, pick({1, 2, 5, c.Sk, c.Sk / 2, c.Sk + 17, 130}));
      c.wl = pick({-1, 0, 1, 3, 31, 63, 64, 65, 100});
      c.wr = pick({0, 0, -1, 2, 40});
    }
    c.softcap = rng() % 3 == 0 ? 5.f : 0.f;
    c.layout = static_cast<int>(rng() % 2);
    c.sm_count = static_cast<int>(pick({132, 108, 16}));
    if (c.D == 256 && rng() % 2) c.smem_optin = 99 * 1024;
    if (rng() % 4 == 0) c.forced_splits = static_cast<int>(2 + rng() % 8);
    const int dt = static_cast<int>(rng() % 9);  // 4 fp16 : 4 bf16 : 1 fp32
    if (dt == 8) c.expect_kernel = 'x';
    char buf[200];
    std::snprintf(buf, sizeof buf, "rand%d b%lld h%lld/%lld q%lld k%lld d%lld w%lld,%lld c%g L%d W%lld C%lld s%d sm%d",
                  i, (long long)c.B, (long long)c.Hq, (long long)c.Hkv, (long long)c.Sq, (long long)c.Sk,
                  (long long)c.D, (long long)c.wl, (long long)c.wr, c.softcap, c.layout, (long long)c.window,
                  (long long)c.capacity, c.forced_splits, c.sm_count);
    names.emplace_back(buf);
    c.name = names.back().c_str();
    const uint64_t case_seed = rng();
    if (dt < 4) run_isolated(c.name, [&] { run_attention_case<__half>(c, case_seed); });
    else if (dt < 8) run_isolated(c.name, [&] { run_attention_case<__nv_bfloat16>(c, case_seed); });
    else run_isolated(c.name, [&] { run_attention_case<float>(c, case_seed); });
  }
  std::printf("%d passed, %d failed\n", cases_run - cases_failed, cases_failed);
  return cases_failed == 0 ? 0 : 1;
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--random") {
    install_segv_handler();
    emu::device().global_read_ok = global_read_ok;
    return run_random(argc > 2 ? std::atoi(argv[2]) : 100, argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1);
  }
  const std::string only = argc > 1 ? argv[1] : "";
  auto want = [&](const char* name) { return std::string(name).find(only) != std::string::npos; };
  install_segv_handler();
  emu::device().global_read_ok = global_read_ok;
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t seed = 1;
#define RUN(T, ...)                                  \
  do {                                               \
    const Case c_{__VA_ARGS__};                      \
    if (want(c_.name)) run_isolated(c_.name, [&] { run_attention_case<T>(c_, seed); }); \
    ++seed;                                          \
  } while (0)
  using H = __half;
  using BF = __nv_bfloat16;
  //                name                             B  Hq Hkv  Sq   Sk    D   wl  wr  cap layout
  // Tensor-core prefill: partial tiles, windows off tile boundaries, Sq != Sk.
  RUN(H, "d64 causal partial tiles", 1, 2, 2, 150, 150, 64, -1, 0, 0.f, kBHSD);
  RUN(BF, "d64 swa gqa sq<sk b2", 2, 4, 2, 100, 200, 64, 37, 0, 0.f, kBHSD);
  RUN(H, "d64 two-sided strided sq>sk", 1, 2, 1, 130, 90, 64, 20, 13, 0.f, kBSHD);
  RUN(H, "d64 softcap full", 1, 1, 1, 70, 130, 64, -1, -1, 5.f, kBHSD);
  RUN(BF, "d64 empty query tile", 1, 1, 1, 300, 50, 64, -1, 0, 0.f, kBHSD);
  RUN(H, "d128 swa", 1, 2, 2, 200, 200, 128, 63, 0, 0.f, kBHSD);
  RUN(BF, "d128 two-sided softcap strided", 1, 4, 2, 90, 160, 128, 45, 30, 30.f, kBSHD);
  RUN(H, "d32 packgqa prefill", 1, 8, 2, 20, 150, 32, 50, 0, 0.f, kBHSD);
  RUN(BF, "d96 causal", 1, 2, 1, 90, 90, 96, -1, 0, 0.f, kBSHD);
  RUN(H, "d256 two-sided sq>sk", 1, 1, 1, 140, 100, 256, 30, 5, 0.f, kBHSD);
  RUN(BF, "d64 window on tile edge multi m-block", 1, 1, 1, 300, 300, 64, 64, 0, 0.f, kBHSD);
  RUN(H, "d64 long keys short window", 1, 2, 1, 64, 1000, 64, 128, 0, 0.f, kBSHD);
  RUN(BF, "d128 packgqa two-sided softcap", 2, 8, 2, 10, 200, 128, 100, 20, 8.f, kBHSD);
  RUN(H, "d128 causal sq<sk multi m-block", 1, 1, 1, 260, 330, 128, -1, 0, 0.f, kBSHD);
  RUN(H, "d64 no keys at all sk0", 2, 2, 1, 9, 0, 64, -1, 0, 0.f, kBHSD);
  RUN(BF, "d64 diagonal only wl0 wr0", 1, 2, 2, 75, 75, 64, 0, 0, 0.f, kBSHD);
  RUN(H, "d128 packgqa g3 wl0 wr-1", 1, 6, 2, 21, 50, 128, 0, -1, 0.f, kBHSD);
  {
    Case c{"d64 custom scale sq1 no pack", 1, 3, 3, 1, 90, 64, -1, 0, 0.f, kBHSD};
    c.scale = 0.4;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<BF>(c, seed); });
    ++seed;
  }
  {  // d = 256 on a 99 KB device (sm_86 / sm_89): the smaller tile shape
    Case c{"d256 99KB device softcap", 1, 2, 1, 70, 70, 256, -1, 0, 10.f, kBSHD};
    c.smem_optin = 99 * 1024;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<BF>(c, seed); });
    ++seed;
  }
  // Decoding through split-KV + combine (heuristic on a 132-SM device).
  {
    Case c{"d64 decode split packgqa", 1, 8, 2, 1, 1000, 64, -1, 0, 0.f, kBHSD};
    c.expect_split = 1;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<H>(c, seed); });
    ++seed;
  }
  {
    Case c{"d128 decode split window strided", 2, 4, 4, 1, 700, 128, 300, 0, 0.f, kBSHD};
    c.expect_split = 1;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<BF>(c, seed); });
    ++seed;
  }
  {
    Case c{"d256 decode split softcap", 1, 2, 1, 1, 300, 256, -1, 0, 20.f, kBHSD};
    c.expect_split = 1;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<H>(c, seed); });
    ++seed;
  }
  {
    Case c{"d32 decode split gqa", 1, 4, 1, 1, 600, 32, -1, -1, 0.f, kBHSD};
    c.expect_split = 1;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<BF>(c, seed); });
    ++seed;
  }
  {
    Case c{"d96 decode split", 1, 2, 2, 1, 400, 96, -1, 0, 0.f, kBSHD};
    c.expect_split = 1;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<H>(c, seed); });
    ++seed;
  }
  {  // d = 256 decoding on a 99 KB device: the 64-row variant packs and splits
    Case c{"d256 99KB decode split gqa", 1, 4, 1, 1, 400, 256, -1, 0, 0.f, kBSHD};
    c.smem_optin = 99 * 1024;
    c.expect_split = 1;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<BF>(c, seed); });
    ++seed;
  }
  {  // A100-like device: 108 SMs, 163 KB opt-in
    Case c{"d64 decode split g3 sm80 device", 2, 6, 2, 1, 900, 64, 700, 0, 0.f, kBHSD};
    c.sm_count = 108, c.smem_optin = 163 * 1024;
    c.expect_split = 1;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<H>(c, seed); });
    ++seed;
  }
  {  // several query rows per packed tile (two active warps) with splits
    Case c{"d128 spec decode sq4 gqa8 split", 2, 8, 1, 4, 800, 128, 500, 0, 0.f, kBSHD};
    c.expect_split = 1;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<H>(c, seed); });
    ++seed;
  }
  {  // more than 32 splits: the combine's per-lane loops over splits wrap
    Case c{"d32 forced 40 splits combine", 1, 2, 1, 2, 5000, 32, -1, 0, 0.f, kBHSD};
    c.forced_splits = 40;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<H>(c, seed); });
    ++seed;
  }
  {  // more splits than key tiles: the last splits are empty partials
    Case c{"d64 forced 6 splits sq3 empty splits", 1, 2, 1, 3, 200, 64, -1, 0, 0.f, kBHSD};
    c.forced_splits = 6;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<H>(c, seed); });
    ++seed;
  }
  {  // split rows of which some see no key
    Case c{"d64 forced splits empty rows", 1, 2, 2, 40, 150, 64, 10, -1, 0.f, kBHSD};
    c.forced_splits = 3;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<BF>(c, seed); });
    ++seed;
  }
  // cache_attention: the ring key source, wrapped rings, several positions.
  {
    Case c{"ring decode d64 wrapped", 3, 4, 1, 1, 0, 64, 0, 0, 0.f, kBHSD};
    c.window = 100, c.capacity = 128, c.pos = {5, 128 + 17, 3 * 128 + 2, 0};
    c.B = 4;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<H>(c, seed); });
    ++seed;
  }
  {
    Case c{"ring decode d128 split", 2, 2, 2, 1, 0, 128, 0, 0, 0.f, kBSHD};
    c.window = 400, c.capacity = 450, c.pos = {1000, 37};
    c.expect_split = 1;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<BF>(c, seed); });
    ++seed;
  }
  {
    Case c{"ring prefill chunk d128 wrapped", 3, 2, 1, 40, 0, 128, 0, 0, 0.f, kBHSD};
    c.window = 64, c.capacity = 80, c.pos = {0, 30, 200};
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<BF>(c, seed); });
    ++seed;
  }
  {
    Case c{"ring prefill d32 capacity W-1", 2, 2, 2, 20, 0, 32, 0, 0, 4.f, kBSHD};
    c.window = 33, c.capacity = 32, c.pos = {95, 7};
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<H>(c, seed); });
    ++seed;
  }
  // Packed variable-length sequences (attention.varlen, cache_attention.varlen):
  // empty sequences, lengths off tile boundaries, Sq != Sk per sequence,
  // blocks past a short sequence's end, split-KV over packed rows, the exact
  // kernel, sinks, and the ring with a mixed decode / prefill batch.
#define RUN_VARLEN(T, NAME, HQ, HKV, D, WL, WR, CAP, LAYOUT, SEQ_Q, SEQ_K, ...) \
  do {                                                                            \
    Case c{NAME, 0, HQ, HKV, 0, 0, D, WL, WR, CAP, LAYOUT};                       \
    c.seq_q = SEQ_Q, c.seq_k = SEQ_K;                                             \
    __VA_ARGS__;                                                                  \
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<T>(c, seed); }); \
    ++seed;                                                                       \
  } while (0)
  using Lens = std::vector<int64_t>;
  RUN_VARLEN(H, "varlen d64 swa mixed lengths", 4, 2, 64, 37, 0, 0.f, kBSHD, (Lens{0, 150, 1, 70, 200}),
             (Lens{0, 150, 1, 70, 200}));
  RUN_VARLEN(BF, "varlen d128 sq!=sk two-sided softcap", 2, 1, 128, 20, 7, 5.f, kBSHD, (Lens{30, 0, 100}),
             (Lens{80, 5, 60}));
  RUN_VARLEN(H, "varlen d64 causal bhsd rows", 2, 2, 64, -1, 0, 0.f, kBHSD, (Lens{65, 130}), (Lens{65, 130}));
  RUN_VARLEN(BF, "varlen d64 decode packgqa forced split", 8, 2, 64, -1, 0, 0.f, kBSHD, (Lens{1, 1, 1}),
             (Lens{900, 10, 500}), c.forced_splits = 4);
  RUN_VARLEN(H, "varlen d32 split heuristic", 4, 1, 32, 300, 0, 0.f, kBSHD, (Lens{2, 0, 3}), (Lens{700, 0, 1000}),
             c.expect_split = 1);
  RUN_VARLEN(H, "varlen d64 sinks split", 4, 2, 64, 16, 0, 0.f, kBSHD, (Lens{50, 0, 120}), (Lens{50, 4, 120}),
             c.sink_tokens = 3, c.sink_logits = kMildSinks, c.forced_splits = 2);
  RUN_VARLEN(H, "varlen d64 odd rows exact", 2, 1, 64, 10, 3, 0.f, kOddRows, (Lens{7, 40}), (Lens{12, 33}),
             c.expect_kernel = 'x');
  RUN_VARLEN(float, "varlen fp32 exact sinks", 3, 3, 40, 8, 0, 0.f, kBSHD, (Lens{5, 0, 40}), (Lens{5, 3, 90}),
             c.expect_kernel = 'x', c.sink_tokens = 2, c.sink_logits = kExtremeSinks);
  RUN_VARLEN(double, "varlen fp64 exact no keys", 2, 1, 16, -1, 0, 0.f, kBHSD, (Lens{4, 6}), (Lens{0, 6}),
             c.expect_kernel = 'x');
  RUN_VARLEN(BF, "ring varlen d64 decode prefill idle", 4, 1, 64, 0, 0, 0.f, kBSHD, (Lens{1, 40, 0, 3}), (Lens{}),
             c.window = 64, c.capacity = 70, c.pos = (Lens{500, 0, 9, 66}));
  RUN_VARLEN(H, "ring varlen d128 sinks chunk", 2, 2, 128, 0, 0, 3.f, kBSHD, (Lens{33, 1}), (Lens{}),
             c.window = 40, c.capacity = 45, c.pos = (Lens{100, 7}), c.sink_tokens = 2, c.sink_logits = kMildSinks);
  RUN_VARLEN(BF, "ring varlen d64 decode split", 8, 2, 64, 0, 0, 0.f, kBSHD, (Lens{1, 1}), (Lens{}),
             c.window = 300, c.capacity = 300, c.pos = (Lens{1000, 50}), c.forced_splits = 3);
  RUN_VARLEN(float, "ring varlen fp32 exact", 2, 1, 32, 0, 0, 0.f, kBSHD, (Lens{1, 12}), (Lens{}),
             c.window = 16, c.capacity = 20, c.pos = (Lens{40, 3}), c.expect_kernel = 'x');
#undef RUN_VARLEN
  // Per-head windows (attention.per_head): heads of one GQA group with very
  // different windows (tile skipping per head, NaN keys that only another
  // head sees), unbounded sides, two-sided, Sq != Sk, split-KV, sinks, the
  // exact kernels; PackGQA is off (a block holds one head).
  auto run_per_head = [&](Case c, std::vector<int64_t> wl, std::vector<int64_t> wr, auto tag) {
    using T = decltype(tag);
    c.head_wl = std::move(wl), c.head_wr = std::move(wr);
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<T>(c, seed); });
    ++seed;
  };
  run_per_head({"per-head d64 gqa mixed", 1, 4, 1, 300, 300, 64, 0, 0, 0.f, kBHSD}, {3, 200, -1, 64}, {0, 0, 5, 64},
               H{});
  run_per_head({"per-head d128 two-sided sq<sk", 2, 4, 2, 100, 230, 128, 0, 0, 3.f, kBSHD}, {9, 130, 0, -1},
               {3, 0, 0, -1}, BF{});
  {
    Case c{"per-head d64 gqa mixed one split", 1, 4, 1, 300, 300, 64, 0, 0, 0.f, kBSHD};
    c.forced_splits = 1, c.expect_split = 0;
    run_per_head(c, {3, 200, -1, 64}, {0, 0, 5, 64}, BF{});
  }
  {
    Case c{"per-head d64 decode no packgqa split", 1, 8, 2, 1, 900, 64, 0, 0, 0.f, kBHSD};
    c.forced_splits = 3;
    run_per_head(c, {0, 10, 100, 500, -1, 7, 63, 64}, {0, 0, 0, 0, 0, 0, 0, 0}, H{});
  }
  {
    Case c{"per-head d64 sinks", 1, 2, 1, 200, 200, 64, 0, 0, 0.f, kBHSD};
    c.sink_tokens = 4, c.sink_logits = kMildSinks;
    run_per_head(c, {20, 150}, {0, 2}, BF{});
  }
  {
    Case c{"per-head fp32 exact", 1, 3, 1, 70, 90, 40, 0, 0, 0.f, kBSHD};
    c.expect_kernel = 'x', c.sink_tokens = 2;
    run_per_head(c, {5, -1, 0}, {0, 3, -1}, float{});
  }
  {
    Case c{"per-head fp64 exact", 1, 2, 2, 33, 33, 16, 0, 0, 0.f, kBHSD};
    c.expect_kernel = 'x';
    run_per_head(c, {1, 31}, {1, 0}, double{});
  }
  // Attention sinks (both kinds): sink tokens below, inside and past a key
  // tile, logits mild / extreme / NaN, split-KV (the combine adds the sink
  // logit), PackGQA, rows and tiles that see no key, the ring's sink slots.
  auto run_sinks = [&](Case c, int64_t tokens, int logits, auto tag) {
    using T = decltype(tag);
    c.sink_tokens = tokens, c.sink_logits = logits;
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<T>(c, seed); });
    ++seed;
  };
  run_sinks({"sinks d64 4 tokens swa mild", 1, 2, 1, 200, 200, 64, 37, 0, 0.f, kBHSD}, 4, kMildSinks, H{});
  run_sinks({"sinks d128 130 tokens two-sided gqa", 1, 4, 2, 300, 300, 128, 40, 5, 0.f, kBSHD}, 130,
            kExtremeSinks, BF{});
  run_sinks({"sinks d64 1 token sq<sk no logits", 2, 2, 2, 100, 250, 64, 30, 0, 0.f, kBHSD}, 1, kNoSinkLogits, H{});
  run_sinks({"sinks d64 logits empty query tile", 1, 4, 1, 300, 50, 64, -1, 0, 0.f, kBHSD}, 0, kExtremeSinks, BF{});
  run_sinks({"sinks d64 NaN logit head 0", 1, 3, 3, 90, 90, 64, 20, 0, 0.f, kBHSD}, 3, kNanSinkHead0, H{});
  run_sinks({"sinks d32 packgqa softcap", 1, 8, 2, 20, 150, 32, 50, 0, 5.f, kBHSD}, 16, kMildSinks, BF{});
  run_sinks({"sinks d96 sink run meets band", 1, 2, 1, 80, 80, 96, 10, 0, 0.f, kBSHD}, 75, kMildSinks, H{});
  {
    Case c{"sinks d64 decode split packgqa", 1, 8, 2, 1, 1000, 64, 200, 0, 0.f, kBHSD};
    c.expect_split = 1;
    run_sinks(c, 4, kMildSinks, H{});
  }
  {
    Case c{"sinks d128 forced splits empty rows", 1, 4, 2, 40, 150, 128, 10, -1, 0.f, kBHSD};
    c.forced_splits = 3;
    run_sinks(c, 70, kExtremeSinks, BF{});
  }
  {
    Case c{"sinks d64 forced splits logits only", 1, 2, 2, 3, 300, 64, -1, 0, 0.f, kBSHD};
    c.forced_splits = 7;
    run_sinks(c, 0, kNanSinkHead0, H{});
  }
  {
    Case c{"sinks ring decode d64 pos<S", 4, 4, 1, 1, 0, 64, 0, 0, 0.f, kBHSD};
    c.window = 100, c.capacity = 128, c.pos = {2, 3, 5, 300};
    run_sinks(c, 4, kMildSinks, H{});
  }
  {
    Case c{"sinks ring prefill d128 chunk>W", 3, 2, 1, 40, 0, 128, 0, 0, 0.f, kBSHD};
    c.window = 16, c.capacity = 20, c.pos = {0, 2, 100};
    run_sinks(c, 4, kExtremeSinks, BF{});
  }
  {
    Case c{"sinks ring decode d128 split", 2, 2, 2, 1, 0, 128, 0, 0, 0.f, kBHSD};
    c.window = 400, c.capacity = 450, c.pos = {1000, 37};
    c.expect_split = 1;
    run_sinks(c, 8, kMildSinks, BF{});
  }
  {
    Case c{"sinks exact f32 d40 tokens logits", 1, 4, 2, 37, 53, 40, 9, 3, 15.f, kBSHD};
    c.expect_kernel = 'x';
    run_sinks(c, 5, kExtremeSinks, float{});
  }
  {
    Case c{"sinks exact f64 d19 causal", 2, 2, 1, 33, 25, 19, 4, 0, 0.f, kBHSD};
    c.expect_kernel = 'x';
    run_sinks(c, 3, kMildSinks, double{});
  }
  {
    Case c{"sinks exact f32 ring d24", 2, 2, 1, 5, 0, 24, 0, 0, 0.f, kBHSD};
    c.window = 20, c.capacity = 24, c.pos = {50, 3};
    c.expect_kernel = 'x';
    run_sinks(c, 6, kNanSinkHead0, float{});
  }
  // The exact kernel: fp32 / fp64, and 16-bit rows that are not 16-byte aligned.
  {
    Case c{"exact f32 d40 gqa softcap strided", 1, 4, 2, 37, 53, 40, 9, 3, 15.f, kBSHD};
    c.expect_kernel = 'x';
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<float>(c, seed); });
    ++seed;
  }
  {
    Case c{"exact f64 d19 causal sq>sk", 2, 2, 1, 33, 25, 19, -1, 0, 0.f, kBHSD};
    c.expect_kernel = 'x';
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<double>(c, seed); });
    ++seed;
  }
  {
    Case c{"exact fp16 d64 unaligned rows", 1, 2, 1, 30, 45, 64, 12, 2, 0.f, kOddRows};
    c.expect_kernel = 'x';
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<H>(c, seed); });
    ++seed;
  }
  {
    Case c{"exact f32 ring d24 wrapped", 2, 2, 1, 5, 0, 24, 0, 0, 0.f, kBHSD};
    c.window = 20, c.capacity = 24, c.pos = {50, 3};
    c.expect_kernel = 'x';
    if (want(c.name)) run_isolated(c.name, [&] { run_attention_case<float>(c, seed); });
    ++seed;
  }
  // Cache copy kernels (vector widths 16, 8/4, 2 bytes; T > C).
  {
    const CacheCase cc{"cache d64 wrap", 2, 2, 16, 5, 64, {14, 3}, kBHSD};
    if (want(cc.name)) run_isolated(cc.name, [&] { run_cache_case<H>(cc, seed); });
    ++seed;
    const CacheCase cc2{"cache f32 d3 T>C", 2, 1, 8, 11, 3, {6, 0}, kBSHD};
    if (want(cc2.name)) run_isolated(cc2.name, [&] { run_cache_case<float>(cc2, seed); });
    ++seed;
    const CacheCase cc3{"cache bf16 d5 odd rows", 1, 3, 10, 4, 5, {23}, kBHSD};
    if (want(cc3.name)) run_isolated(cc3.name, [&] { run_cache_case<BF>(cc3, seed); });
    ++seed;
    // Sink slots: a chunk that starts in the sinks and is longer than the ring
    // (its first rows reach the sink slots only), one past them, one inside.
    const CacheCase cc4{"cache sinks d64 T>C from pos 1", 3, 2, 8, 11, 64, {1, 9, 2}, kBHSD, 4};
    if (want(cc4.name)) run_isolated(cc4.name, [&] { run_cache_case<H>(cc4, seed); });
    ++seed;
    // Packed rows (cache_append.varlen): decode, idle, a chunk longer than the
    // ring, one through the sink slots; 16-byte and odd-row copies.
    const CacheCase cv1{"cache varlen d64 mixed sinks", 4, 2, 8, 0, 64, {100, 3, 0, 5}, kBSHD, 2};
    if (want(cv1.name)) run_isolated(cv1.name, [&] { run_cache_varlen_case<H>(cv1, {1, 0, 13, 4}, {}, seed); });
    ++seed;
    const CacheCase cv2{"cache varlen fp32 odd rows", 3, 1, 5, 0, 7, {0, 9, 2}, kOddRows, 0};
    if (want(cv2.name)) run_isolated(cv2.name, [&] { run_cache_varlen_case<float>(cv2, {7, 1, 0}, {}, seed); });
    ++seed;
    // cu_seqlens that break the contract (decreasing, past T, negative): the
    // append must stay inside the caches.
    const CacheCase cv3{"cache varlen bad cu_seqlens stays in bounds", 3, 2, 6, 0, 32, {0, 4, 50}, kBSHD, 1};
    if (want(cv3.name))
      run_isolated(cv3.name, [&] { run_cache_varlen_case<BF>(cv3, {5, 2, 3}, {0, 9, -4, 1000}, seed); });
    ++seed;
  }
#undef RUN
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%d passed, %d failed (%.1fs)\n", cases_run - cases_failed, cases_failed, secs);
  return cases_failed == 0 ? 0 : 1;
}

#include "cpu/workspace.h"

#include <c10/util/Exception.h>

#include <cstdlib>

namespace swa::cpu {
namespace {

int64_t kept_bytes_limit() {
  static const int64_t limit = [] {
    const char* env = std::getenv("SWA_CPU_WORKSPACE_MB");
    if (env == nullptr || env[0] == '\0') return int64_t(256) << 20;
    char* end = nullptr;
    const long long mb = std::strtoll(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && mb >= 0,
                "SWA_CPU_WORKSPACE_MB: expected a non-negative whole number of MiB, got '", env, "'");
    return int64_t(mb) << 20;
  }();
  return limit;
}

Buffer allocate(int64_t bytes) {
  const size_t size = (size_t(bytes) + 63) / 64 * 64;  // aligned_alloc wants a multiple of the alignment
  void* p = std::aligned_alloc(64, size == 0 ? 64 : size);
  TORCH_CHECK(p != nullptr, "swa_cuda: out of memory allocating a CPU workspace of ", bytes, " bytes");
  return Buffer(p);
}

}  // namespace

void FreeBuffer::operator()(void* p) const { std::free(p); }

void* workspace(int64_t bytes, Buffer& owner) {
  thread_local Buffer kept;
  thread_local int64_t kept_bytes = 0;
  if (kept != nullptr && kept_bytes >= bytes) return kept.get();
  if (bytes > kept_bytes_limit()) {
    owner = allocate(bytes);
    return owner.get();
  }
  kept.reset();  // the old one goes first
  kept_bytes = 0;
  kept = allocate(bytes);
  kept_bytes = bytes;
  return kept.get();
}

}  // namespace swa::cpu

// Scratch memory that a calling thread keeps from one CPU call to the next.
// A fresh large buffer costs a page fault per 4 KiB on its first touch
// (about 0.6 us each here: 15 ms of a 370 ms backward at n = 32K), and glibc
// returns buffers above its mmap threshold (at most 32 MiB) to the system on
// free, so a backward that allocated its dQ slices anew would pay for them
// on every call. A workspace is reused instead while it is large enough.
#pragma once

#include <cstdint>
#include <memory>

namespace swa::cpu {

// A 64-byte aligned, uninitialised buffer of at least `bytes`, owned by the
// calling thread's workspace (valid until its next workspace() call, which
// may return the same memory) or by `owner` when it is larger than the
// workspace keeps: SWA_CPU_WORKSPACE_MB, default 256 MiB; 0 keeps nothing,
// every call then allocates and frees its own.
struct FreeBuffer {
  void operator()(void* p) const;
};
using Buffer = std::unique_ptr<void, FreeBuffer>;
void* workspace(int64_t bytes, Buffer& owner);

}  // namespace swa::cpu

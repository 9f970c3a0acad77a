// Emulator stand-in for the driver API header: only the tensor-map type the
// sm90 kernel takes as a parameter, filled by the test (fwd_sm90_emu_test.cpp)
// from sm90_tma_shape instead of cuTensorMapEncodeTiled.
#pragma once

#include <cstdint>

struct CUtensorMap {
  const void* base;
  uint64_t dims[4];
  uint64_t strides_bytes[3];  // of dims 1..3
  uint32_t box[4];
  int elem_bytes;
  int swizzle_128b;
};

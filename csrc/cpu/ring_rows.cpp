#include "cpu/ring_rows.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

namespace swa::cpu {
namespace {

namespace kn = SWA_KERNEL_NS;

// Writes src (Hkv, n, D) into the n ring rows starting at slot, wrapping.
void write_ring(const at::Tensor& ring, int64_t slot, const at::Tensor& src) {  // ring (Hkv, C, D)
  const int64_t n = src.size(1);
  const int64_t head = std::min(n, ring.size(1) - slot);
  ring.narrow(1, slot, head).copy_(src.narrow(1, 0, head));
  if (n > head) ring.narrow(1, 0, n - head).copy_(src.narrow(1, head, n - head));
}

}  // namespace

at::Tensor ring_of(const at::Tensor& buffer, int64_t sinks) {
  return buffer.narrow(1, sinks, buffer.size(1) - sinks);
}

at::Tensor read_ring(const at::Tensor& ring, int64_t slot, int64_t n) {  // ring (Hkv, C, D)
  const int64_t head = std::min(n, ring.size(1) - slot);  // rows before the wrap
  if (head == n) return ring.narrow(1, slot, n);
  return at::cat({ring.narrow(1, slot, head), ring.narrow(1, 0, n - head)}, 1);
}

void append_sequence(const at::Tensor& k_buf, const at::Tensor& v_buf, const at::Tensor& k, const at::Tensor& v,
                     int64_t pos, int64_t sinks) {
  const int64_t new_len = k.size(1);
  const int64_t capacity = k_buf.size(1) - sinks;
  // Only the last C tokens land when T > C (the earlier ones would be
  // overwritten by them anyway).
  const int64_t first = kn::append_first_row(new_len, capacity);
  const int64_t landing = new_len - first;
  if (landing == 0 || k_buf.size(0) == 0) return;
  const int64_t slot = kn::ring_slot(pos + first, capacity);
  write_ring(ring_of(k_buf, sinks), slot, k.narrow(1, first, landing));
  write_ring(ring_of(v_buf, sinks), slot, v.narrow(1, first, landing));
  // Sink positions [pos, min(S, pos + T)) also go to sink slots pos ..
  const int64_t sink_rows = std::min(sinks, pos + new_len) - pos;
  if (sink_rows > 0) {
    k_buf.narrow(1, pos, sink_rows).copy_(k.narrow(1, 0, sink_rows));
    v_buf.narrow(1, pos, sink_rows).copy_(v.narrow(1, 0, sink_rows));
  }
}

std::pair<at::Tensor, at::Tensor> virtual_keys(const at::Tensor& k_buf, const at::Tensor& v_buf,
                                               const at::Tensor& k_new, const at::Tensor& v_new,
                                               const kn::RingView& view) {
  std::vector<at::Tensor> ks, vs;
  if (view.sink_len() > 0) {
    ks.push_back(k_buf.narrow(1, 0, view.sink_len()));
    vs.push_back(v_buf.narrow(1, 0, view.sink_len()));
  }
  if (view.ring_len() > 0) {
    const int64_t slot = view.slot(view.sink_len()) - view.sink_tokens;  // in the ring; the rest follow on
    ks.push_back(read_ring(ring_of(k_buf, view.sink_tokens), slot, view.ring_len()));
    vs.push_back(read_ring(ring_of(v_buf, view.sink_tokens), slot, view.ring_len()));
  }
  if (ks.empty()) return {k_new, v_new};
  ks.push_back(k_new);
  vs.push_back(v_new);
  return {at::cat(ks, 1), at::cat(vs, 1)};
}

}  // namespace swa::cpu

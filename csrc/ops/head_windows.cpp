#include "ops/head_windows.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "ops/checks.h"

namespace swa {
namespace {

// One side's windows as int64 on the CPU, after checking their shape and type.
at::Tensor host_windows(const char* op, const char* name, const at::Tensor& w, int64_t heads_q) {
  TORCH_CHECK(w.defined(), op, ": ", name, " must be an integer tensor [Hq], got None");
  TORCH_CHECK(w.scalar_type() == at::kLong || w.scalar_type() == at::kInt, op, ": ", name,
              " must be an int32 or int64 tensor of one window per query head, got ", w.scalar_type());
  TORCH_CHECK(w.dim() == 1 && w.size(0) == heads_q, op, ": ", name,
              " must be a 1-d tensor of one window per query head, shape [", heads_q, "], got shape ",
              w.sizes());
  at::Tensor host = w.to(at::kCPU, at::kLong).contiguous();
  const int64_t* data = host.data_ptr<int64_t>();
  for (int64_t h = 0; h < heads_q; ++h)
    TORCH_CHECK(data[h] >= -1, op, ": ", name, "[", h, "] must be >= -1 (-1 = unbounded), got ", data[h]);
  return host;
}

// The union of two windows of one side in kernel form (-1 is unbounded).
int64_t wider(int64_t a, int64_t b) { return a < 0 || b < 0 ? -1 : std::max(a, b); }

}  // namespace

HeadWindowArgs check_head_windows(const char* op, const at::Tensor& window_left, const at::Tensor& window_right,
                                  int64_t heads_q, int64_t seqlen_q, int64_t seqlen_k) {
  const at::Tensor left = host_windows(op, "window_left", window_left, heads_q);
  const at::Tensor right = host_windows(op, "window_right", window_right, heads_q);
  HeadWindowArgs args;
  args.kernel_form = at::empty({2, heads_q}, left.options());
  int64_t* kl = args.kernel_form.data_ptr<int64_t>();
  int64_t* kr = kl + heads_q;
  const int64_t* l = left.data_ptr<int64_t>();
  const int64_t* r = right.data_ptr<int64_t>();
  for (int64_t h = 0; h < heads_q; ++h) {
    kl[h] = kernel_window_left(l[h], seqlen_k);
    kr[h] = kernel_window_right(r[h], seqlen_q);
    args.union_left = h == 0 ? kl[0] : wider(args.union_left, kl[h]);
    args.union_right = h == 0 ? kr[0] : wider(args.union_right, kr[h]);
  }
  return args;
}

}  // namespace swa

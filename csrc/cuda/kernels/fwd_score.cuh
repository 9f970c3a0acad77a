// The score transform of the forward kernels (portable and sm90): scalars
// computed on the host (make_score_scale in fwd_launch.cuh).
#pragma once

#include "swa/kernels/namespace.h"

namespace SWA_KERNEL_NS {
namespace cuda_detail {

// Scores are kept in log2 units: s2 = log2(e) * s, where s = scale * q.k, or
// with a softcap s = softcap * tanh(scale * q.k / softcap).
struct FwdScoreScale {
  float scale_log2;      // scale * log2(e)              (no softcap)
  float softcap_log2;    // softcap * log2(e)            (softcap)
  float scale_over_cap;  // scale / softcap              (softcap)
  int use_softcap;
};

}  // namespace cuda_detail
}  // namespace SWA_KERNEL_NS

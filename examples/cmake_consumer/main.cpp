// Runs swa::attention from a C++ program with no Python, checks it against a
// dense masked softmax, and checks that autograd works through the library.
#include <ATen/ATen.h>
#include <swa/swa.h>
#include <torch/csrc/autograd/autograd.h>

#include <cstdio>

int main() {
  const int64_t window = 5, S = 33, D = 16;
  at::manual_seed(0);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor q = at::randn({1, 4, S, D}, opts), k = at::randn({1, 2, S, D}, opts),
             v = at::randn({1, 2, S, D}, opts);
  auto [out, lse] = swa::attention(q, k, v, window - 1, 0);

  // Dense reference: mask j in [i - window + 1, i].
  at::Tensor kr = k.repeat_interleave(2, 1), vr = v.repeat_interleave(2, 1);
  at::Tensor s = at::matmul(q, kr.transpose(-1, -2)) / std::sqrt(double(D));
  at::Tensor i = at::arange(S).unsqueeze(1), j = at::arange(S).unsqueeze(0);
  at::Tensor visible = (j <= i).logical_and(j > i - window);
  s = s.masked_fill(visible.logical_not(), -INFINITY);
  double err = (at::matmul(at::softmax(s, -1), vr) - out).abs().max().item<double>();
  double lse_err = (at::logsumexp(s, -1) - lse.to(at::kDouble)).abs().max().item<double>();

  at::Tensor qg = q.clone().requires_grad_(true);
  auto [out2, lse2] = swa::attention(qg, k, v, window - 1, 0);
  torch::autograd::backward({out2.sum()});
  bool has_grad = qg.grad().defined() && qg.grad().abs().sum().item<double>() > 0;

  std::printf("swa_consumer_demo: out error %.3g, lse error %.3g, autograd %s, built for torch %s\n",
              err, lse_err, has_grad ? "ok" : "MISSING", swa::built_torch_version());
  return (err < 1e-10 && lse_err < 1e-5 && has_grad) ? 0 : 1;
}

// CPU backend of the packed cache ops (cache_append.varlen,
// cache_attention.varlen): the new tokens of B sequences back to back,
// sequence b's rows cu_seqlens[b] .. cu_seqlens[b+1] - 1 at positions
// pos[b] .. of ring b. One call serves a continuous batch that mixes
// decoding steps and prefill chunks:
//   - the sequences with few new tokens (T_b * Hq / Hkv <= 32 rows per kv
//     head) run in one call of the decode kernel (cpu/decode.h), which reads
//     their rings in place and the packed rows where they are;
//   - the others (prefill chunks) run in one call of the packed attention
//     kernel (cpu/packed_sequences.h) over their virtual key sequences
//     (ring_rows.h), with tasks over (sequence, head, query tile) so threads
//     stay busy whatever the lengths; their query rows are gathered into a
//     packed batch of their own when decode rows sit between them.
// Each sequence's result is the padded op's on that sequence alone.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "cpu/attention.h"
#include "cpu/decode.h"
#include "cpu/forward_problem.h"
#include "cpu/ring_rows.h"
#include "ops/cache_checks.h"
#include "ops/sinks.h"
#include "ops/varlen_checks.h"
#include "swa/kernels/ring.h"

namespace swa::cpu {
namespace {

namespace kn = SWA_KERNEL_NS;

void cache_append_varlen_cpu(at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& cu_seqlens, const at::Tensor& pos, int64_t sink_tokens) {
  const char* op = "swa::cache_append.varlen";
  const CacheShape cache = check_cache_append_varlen(op, k_cache, v_cache, k, v, cu_seqlens, pos);
  check_sink_slots(op, cache, sink_tokens, 0);
  check_pos_values(op, pos);
  const at::Tensor cu = checked_cu_seqlens_values(op, "cu_seqlens", cu_seqlens, k.size(0), k.size(0), "T");
  const int64_t* c = cu.data_ptr<int64_t>();
  const int64_t* p = pos.data_ptr<int64_t>();
  for (int64_t b = 0; b < cache.batch; ++b) {
    const int64_t len = c[b + 1] - c[b];
    if (len == 0) continue;
    // (Hkv, T_b, D) views of the sequence's packed rows.
    append_sequence(k_cache.select(0, b), v_cache.select(0, b), k.narrow(0, c[b], len).transpose(0, 1),
                    v.narrow(0, c[b], len).transpose(0, 1), p[b], sink_tokens);
  }
}

// The prefill sequences of a packed cache_attention call in one packed
// attention call: their queries (gathered when they are not all of q's
// rows), their virtual key sequences packed back to back, the band of each.
void attend_prefills(const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new, const int64_t* cu,
                     const std::vector<int64_t>& prefills, bool all_rows, const at::Tensor& k_cache,
                     const at::Tensor& v_cache, const int64_t* pos, int64_t window, int64_t capacity, double scale,
                     double softcap, const SinkArgs& sinks, at::Tensor& out, at::Tensor& lse) {
  const int64_t count = int64_t(prefills.size());
  std::vector<int64_t> cu_q(count + 1, 0), cu_k(count + 1, 0), rows;
  std::vector<at::Tensor> keys, values;  // (Hkv, seqlen_k, D) per sequence
  for (int64_t i = 0; i < count; ++i) {
    const int64_t b = prefills[i], len = cu[b + 1] - cu[b];
    const kn::RingView view{pos[b], len, window, capacity, sinks.tokens};
    auto [k_b, v_b] = virtual_keys(k_cache.select(0, b), v_cache.select(0, b),
                                   k_new.narrow(0, cu[b], len).transpose(0, 1),
                                   v_new.narrow(0, cu[b], len).transpose(0, 1), view);
    keys.push_back(k_b);
    values.push_back(v_b);
    cu_q[i + 1] = cu_q[i] + len;
    cu_k[i + 1] = cu_k[i] + view.seqlen_k();
    if (!all_rows)
      for (int64_t r = cu[b]; r < cu[b + 1]; ++r) rows.push_back(r);
  }
  // Packed [Tk, Hkv, D] keys (as (Hkv, Tk, D) rows, transposed).
  const at::Tensor k_packed = (count == 1 ? keys[0] : at::cat(keys, 1)).transpose(0, 1);
  const at::Tensor v_packed = (count == 1 ? values[0] : at::cat(values, 1)).transpose(0, 1);
  PackedLayout layout;
  layout.seqs = PackedSequences{cu_q.data(), cu_k.data(), count};
  std::vector<int64_t> q_task_begin(count + 1);
  fill_task_begin(layout.seqs, q.size(1), kTileLanes, false, q_task_begin.data());
  layout.q_task_begin = q_task_begin.data();
  if (all_rows) {  // every row of q is a prefill row: in place
    at::Tensor out_b = packed_as_batch(out), lse_b = lse.unsqueeze(0);
    attention_forward_into(packed_as_batch(q), packed_as_batch(k_packed), packed_as_batch(v_packed), window - 1, 0,
                           scale, softcap, out_b, lse_b, sinks, &layout);
    return;
  }
  const at::Tensor index = at::tensor(rows, at::TensorOptions().dtype(at::kLong));
  const at::Tensor q_p = q.index_select(0, index);
  at::Tensor out_p = at::empty_like(q_p);
  at::Tensor lse_p = at::empty({q.size(1), q_p.size(0)}, lse.options());
  at::Tensor out_b = packed_as_batch(out_p), lse_b = lse_p.unsqueeze(0);
  attention_forward_into(packed_as_batch(q_p), packed_as_batch(k_packed), packed_as_batch(v_packed), window - 1, 0,
                         scale, softcap, out_b, lse_b, sinks, &layout);
  out.index_copy_(0, index, out_p);
  lse.index_copy_(1, index, lse_p);
}

std::tuple<at::Tensor, at::Tensor> cache_attention_varlen_cpu(
    const at::Tensor& q, const at::Tensor& k_new, const at::Tensor& v_new, const at::Tensor& cu_seqlens_q,
    int64_t max_seqlen_q, const at::Tensor& k_cache, const at::Tensor& v_cache, const at::Tensor& pos,
    int64_t window, std::optional<double> scale, double softcap, const std::optional<at::Tensor>& sinks,
    int64_t sink_tokens) {
  const char* op = "swa::cache_attention.varlen";
  const AttentionShape shape = check_cache_attention_varlen(op, q, k_new, v_new, cu_seqlens_q, max_seqlen_q,
                                                            k_cache, v_cache, pos, window, scale, softcap);
  const SinkArgs sink_args = check_sinks(op, sinks, sink_tokens, packed_as_batch(q));
  const CacheShape cache{k_cache.size(0), k_cache.size(1), k_cache.size(2), k_cache.size(3)};
  const int64_t capacity = check_sink_slots(op, cache, sink_tokens, window);
  check_pos_values(op, pos);
  const at::Tensor cu_values =
      checked_cu_seqlens_values(op, "cu_seqlens_q", cu_seqlens_q, q.size(0), max_seqlen_q, "max_seqlen_q");
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({shape.heads_q, q.size(0)}, q.options().dtype(at::kFloat));
  if (shape.empty()) return {out, lse};
  const int64_t* cu = cu_values.data_ptr<int64_t>();
  std::vector<int64_t> decodes, prefills;
  for (int64_t b = 0; b < cache.batch; ++b) {
    const int64_t len = cu[b + 1] - cu[b];
    if (len == 0) continue;
    (decode_path_applies(len, shape.group()) ? decodes : prefills).push_back(b);
  }
  const double scale_value = softmax_scale(scale, shape.head_dim);
  cache_decode_varlen_into(q, k_new, v_new, cu, decodes, k_cache, v_cache, pos, window, scale_value, softcap, out,
                           lse, sink_args);
  if (!prefills.empty())
    attend_prefills(q, k_new, v_new, cu, prefills, decodes.empty(), k_cache, v_cache, pos.data_ptr<int64_t>(), window,
                    capacity, scale_value, softcap, sink_args, out, lse);
  return {out, lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(swa, CPU, m) {
  m.impl("cache_append.varlen", &cache_append_varlen_cpu);
  m.impl("cache_attention.varlen", &cache_attention_varlen_cpu);
}

}  // namespace swa::cpu

// Bench cases for the attention family: dense causal flash prefill (head dims 64, 128),
// every sparse selector at equal T (the selector's mask building is part of the timed
// work; flops count only the visited blocks, so GFLOP/s compares kernels and time
// compares methods), and split-KV decode over long f32 and bf16 caches.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "bench/harness.h"
#include "bench/inputs.h"
#include "src/ops/attention/flash.h"
#include "src/ops/attention/selectors/selector_spec.h"
#include "subq/ops.h"
#include "subq/tensor.h"

namespace subq::bench {
namespace {

attn::AttentionArgs args_of(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o) {
  attn::AttentionArgs a;
  a.batch = q.dim(0);
  a.q_len = q.dim(1);
  a.q_heads = q.dim(2);
  a.head_dim = q.dim(3);
  a.kv_len = k.dim(1);
  a.kv_heads = k.dim(2);
  a.q = q.data<float>();
  a.q_batch_stride = a.q_len * a.q_heads * a.head_dim;
  a.q_row_stride = a.q_heads * a.head_dim;
  a.k = k.raw_data();
  a.v = v.raw_data();
  a.kv_dtype = k.dtype();
  a.k_batch_stride = a.v_batch_stride = a.kv_len * a.kv_heads * a.head_dim;
  a.k_row_stride = a.v_row_stride = a.kv_heads * a.head_dim;
  a.o = o.mutable_data<float>();
  a.o_batch_stride = a.q_batch_stride;
  a.o_row_stride = a.q_row_stride;
  a.scale = 1.f / std::sqrt(static_cast<float>(a.head_dim));
  return a;
}

// Element i of a key or value array of the args' kv_dtype.
double kv_element(const attn::AttentionArgs& a, const void* base, int64_t i) {
  if (a.kv_dtype == DType::bf16) return to_float(static_cast<const bf16*>(base)[i]);
  return static_cast<const float*>(base)[i];
}

// Worst relative error (max-norm over the row) of a few output rows against a float64
// evaluation under `allowed(h, i, j)`: rows are O(T·Dh) each, affordable at any T.
template <class Allowed>
double sampled_rel_err(const attn::AttentionArgs& a, Allowed allowed) {
  double worst = 0;
  const int64_t group = a.q_heads / a.kv_heads, Dh = a.head_dim;
  for (int64_t h : {int64_t{0}, a.q_heads - 1})
    for (int64_t i : {int64_t{0}, a.q_len / 2, a.q_len - 1}) {
      const float* q = a.q + i * a.q_row_stride + h * Dh;
      std::vector<double> logit(static_cast<size_t>(a.kv_len), -INFINITY), out(static_cast<size_t>(Dh), 0.0);
      double mx = -INFINITY;
      for (int64_t j = 0; j < a.kv_len; ++j) {
        if (!allowed(h, i, j)) continue;
        const int64_t k0 = j * a.k_row_stride + (h / group) * Dh;
        double s = 0;
        for (int64_t x = 0; x < Dh; ++x) s += static_cast<double>(q[x]) * kv_element(a, a.k, k0 + x);
        logit[static_cast<size_t>(j)] = s * a.scale;
        mx = std::max(mx, logit[static_cast<size_t>(j)]);
      }
      double sum = 0;
      for (int64_t j = 0; j < a.kv_len; ++j) {
        const double p = std::exp(logit[static_cast<size_t>(j)] - mx);
        if (!(p > 0)) continue;
        sum += p;
        const int64_t v0 = j * a.v_row_stride + (h / group) * Dh;
        for (int64_t x = 0; x < Dh; ++x) out[static_cast<size_t>(x)] += p * kv_element(a, a.v, v0 + x);
      }
      double err = 0, norm = 0;
      const float* got = a.o + i * a.o_row_stride + h * Dh;
      for (int64_t x = 0; x < Dh; ++x) {
        const double want = out[static_cast<size_t>(x)] / sum;
        err = std::max(err, std::abs(got[x] - want));
        norm = std::max(norm, std::abs(want));
      }
      worst = std::max(worst, err / std::max(norm, 1e-12));
    }
  return worst;
}

constexpr int64_t kHeads = 8;

// Prefill over a selector's mask (dense causal included), B = 1, 8 heads.
class MaskedPrefill final : public Instance {
 public:
  MaskedPrefill(int64_t T, int64_t Dh, attn::SelectorSpec spec) : spec_(std::move(spec)), T_(T), Dh_(Dh) {
    if (spec_.kind == "neighborhood") spec_.nbhd.grid[0] = T;  // 1-D over the whole sequence
    q_ = random_f32({1, T, kHeads, Dh}, -1.f, 1.f, 1);
    k_ = random_f32({1, T, kHeads, Dh}, -1.f, 1.f, 2);
    v_ = random_f32({1, T, kHeads, Dh}, -1.f, 1.f, 3);
    o_ = Tensor::empty(DType::f32, {1, T, kHeads, Dh});
    args_ = args_of(q_, k_, v_, o_);
    mask_ = build();
    visited_pairs_ = 0;
    for (int64_t r = 0; r + 1 < static_cast<int64_t>(mask_.row_start.size()); ++r)
      visited_pairs_ += mask_.row_start[static_cast<size_t>(r + 1)] - mask_.row_start[static_cast<size_t>(r)];
    visited_pairs_ *= mask_.q_block * mask_.k_block * (kHeads / mask_.heads);
  }
  void run() override { attn::flash_attention(args_, build()); }
  // Causal dense counts the useful half; sparse counts the visited blocks.
  double flops() const override {
    const double pairs = spec_.is_dense() ? 0.5 * static_cast<double>(T_) * static_cast<double>(T_) * kHeads
                                          : static_cast<double>(visited_pairs_);
    return 4.0 * pairs * static_cast<double>(Dh_);
  }
  double bytes() const override { return 4.0 * 4.0 * static_cast<double>(T_ * kHeads * Dh_); }
  int64_t tokens() const override { return T_; }
  std::optional<double> max_rel_err() override {
    run();
    return sampled_rel_err(args_, [&](int64_t h, int64_t i, int64_t j) {
      const auto row = mask_.row(0, h, i / mask_.q_block);
      return std::binary_search(row.begin(), row.end(), static_cast<int32_t>(j / mask_.k_block)) &&
             mask_.rule.allows(i, j);
    });
  }

 private:
  attn::BlockMask build() const {
    const int64_t q_block = spec_.is_dense() ? attn::dense_query_block(T_, Dh_) : 64;
    return attn::build_mask(spec_, attn::MaskGeometry{T_, T_, 0, q_block, 64, kHeads, nullptr}, args_);
  }
  attn::SelectorSpec spec_;
  int64_t T_, Dh_;
  Tensor q_, k_, v_, o_;
  attn::AttentionArgs args_;
  attn::BlockMask mask_;
  int64_t visited_pairs_ = 0;
};

SUBQ_BENCH_CASES(attention_prefill) {
  std::vector<Case> cases;
  for (int64_t Dh : {64, 128})
    cases.push_back(Case{.name = "attention.flash.causal.d" + std::to_string(Dh),
                         .family = "attention",
                         .shape = "B=1 H=8 Dh=" + std::to_string(Dh) + " causal f32",
                         .seq = {1024, 4096},
                         .make = [Dh](int64_t T) {
                           return std::make_unique<MaskedPrefill>(T, Dh, attn::SelectorSpec{});
                         }});
  const char* sparse[] = {"window:window=512,sinks=4", "bigbird:global=1,window_blocks=1,random=2",
                          "power:local=1,sink_blocks=1", "neighborhood:grid=1,kernel=511,causal=1",
                          "moba:top_k=8", "flexprefill:gamma=0.9", "xattention:threshold=0.9", "hip:top_k=8"};
  for (const char* text : sparse) {
    attn::SelectorSpec spec = attn::parse_selector(text);
    if (spec.kind == "neighborhood") spec.nbhd.causal[0] = true;
    cases.push_back(Case{.name = "attention.sparse." + spec.kind,
                         .family = "attention",
                         .shape = "B=1 H=8 Dh=128 " + std::string(text),
                         .seq = {4096},
                         .make = [spec](int64_t T) { return std::make_unique<MaskedPrefill>(T, 128, spec); }});
  }
  return cases;
}

// One decode token over T cached keys in each of `layers` caches (as a model's layers
// hold them: with several, the caches outgrow the last-level cache and are read from
// memory, as in a model's decode step), the cache in f32 or bf16: memory-bound, every K/V
// byte read once.
class SplitDecode final : public Instance {
 public:
  SplitDecode(int64_t T, DType cache, int64_t q_heads, int64_t kv_heads, int64_t dim, int64_t layers = 1)
      : T_(T), cache_(cache), hq_(q_heads), hkv_(kv_heads), dim_(dim) {
    q_ = random_f32({1, 1, hq_, dim_}, -1.f, 1.f, 4);
    o_ = Tensor::empty(DType::f32, {1, 1, hq_, dim_});
    for (int64_t l = 0; l < layers; ++l) {
      k_.push_back(as_cache(random_f32({1, T, hkv_, dim_}, -1.f, 1.f, 5 + 2 * static_cast<uint64_t>(l))));
      v_.push_back(as_cache(random_f32({1, T, hkv_, dim_}, -1.f, 1.f, 6 + 2 * static_cast<uint64_t>(l))));
      args_.push_back(args_of(q_, k_.back(), v_.back(), o_));
    }
    rule_.causal = true;
  }
  void run() override {
    for (const attn::AttentionArgs& a : args_) attn::decode_attention(a, rule_, T_ - 1);
  }
  double flops() const override { return layers() * 4.0 * static_cast<double>(T_) * static_cast<double>(hq_ * dim_); }
  double bytes() const override {
    return layers() * 2.0 * static_cast<double>(dtype_size(cache_)) * static_cast<double>(T_) *
           static_cast<double>(hkv_ * dim_);
  }
  bool reads_only() const override { return true; }
  int64_t tokens() const override { return 1; }
  std::optional<double> max_rel_err() override {
    attn::decode_attention(args_.back(), rule_, T_ - 1);
    return sampled_rel_err(args_.back(), [](int64_t, int64_t, int64_t) { return true; });
  }

 private:
  double layers() const { return static_cast<double>(args_.size()); }
  Tensor as_cache(const Tensor& f) const {
    if (cache_ == DType::f32) return f;
    Tensor t = Tensor::empty(cache_, f.shape());
    convert(f, t);
    return t;
  }
  int64_t T_;
  DType cache_;
  int64_t hq_, hkv_, dim_;
  Tensor q_, o_;
  std::vector<Tensor> k_, v_;
  std::vector<attn::AttentionArgs> args_;
  attn::ElementRule rule_;
};

SUBQ_BENCH_CASES(attention_decode) {
  std::vector<Case> cases;
  for (DType cache : {DType::f32, DType::bf16}) {
    const std::string dt = dtype_name(cache);
    cases.push_back(Case{.name = cache == DType::f32 ? "attention.decode.splitkv" : "attention.decode.splitkv." + dt,
                         .family = "attention",
                         .shape = "Hq=32 Hkv=8 Dh=128 " + dt + " cache, 1 token",
                         .seq = {16384, 32768},
                         .make = [cache](int64_t T) { return std::make_unique<SplitDecode>(T, cache, 32, 8, 128); }});
  }
  // Twelve query heads per key/value head (Mistral-Large-shaped: 96 over 8): more rows
  // than the direct Q·K path takes, so keys are transposed per block.
  cases.push_back(Case{.name = "attention.decode.gqa12.bf16",
                       .family = "attention",
                       .shape = "Hq=96 Hkv=8 Dh=128 bf16 cache, 1 token",
                       .seq = {16384, 32768},
                       .in_default = false,
                       .make = [](int64_t T) { return std::make_unique<SplitDecode>(T, DType::bf16, 96, 8, 128); }});
  // Llama-160M's attention in one decode step: 12 layers of 12 heads of 64 (multi-head: one
  // query row per key/value head, each key used once).
  cases.push_back(Case{.name = "attention.decode.mha.bf16",
                       .family = "attention",
                       .shape = "12 layers Hq=Hkv=12 Dh=64 bf16 cache, 1 token",
                       .seq = {16384, 32768},
                       .make = [](int64_t T) { return std::make_unique<SplitDecode>(T, DType::bf16, 12, 12, 64, 12); }});
  return cases;
}

}  // namespace
}  // namespace subq::bench

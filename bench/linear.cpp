// Bench cases for families L and D (family "linear"): the chunked gated linear attention
// kernel against its recurrence and the quadratic masked form over T, Mamba-2 SSD at the
// Mamba2-130m / 780m shapes, GLA's vector gate, the gated delta rule at Qwen3-Next's
// linear-attention shape and the generalized (DPLR) delta rule at RWKV-7's.
//
// flops() counts the work each algorithm does per token and head: recurrent 4 dk dv
// (update + readout); chunked with chunk L: L dk (Q K^T, causal half; Mamba-2's heads of
// a group share it) + L dv (masked A V, lower half) + 4 dk dv (inter-chunk readout and
// state update); the quadratic form is chunked with L = T. bytes() is the compulsory traffic: q, k, v, gates in, o out,
// state in and out. max_rel_err() reruns the kernel on the first min(T, 256) tokens from
// a zero state and reports max|got - want| / max|want| against the float64 reference.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "bench/harness.h"
#include "bench/inputs.h"
#include "src/ops/delta/delta_rule.h"
#include "src/ops/delta/generalized_delta_rule.h"
#include "src/ops/linear/gated_linear_attention.h"
#include "src/ops/linear/ssd.h"
#include "tests/reference/delta.h"
#include "tests/reference/linear_attention.h"

namespace subq::bench {
namespace {

constexpr int64_t kErrTokens = 256;

std::vector<double> as_double(const Tensor& t) {
  const Tensor c = t.contiguous();
  return std::vector<double>(c.data<float>(), c.data<float>() + c.numel());
}

double normwise_err(const Tensor& got, const std::vector<double>& want) {
  const std::vector<double> g = as_double(got);
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < g.size(); ++i) {
    err = std::max(err, std::abs(g[i] - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return err / scale;
}

double per_token_head_flops(ops::LinearAlgorithm alg, int64_t chunk, int64_t T, int64_t dk, int64_t dv,
                            int64_t heads_sharing_qk = 1) {
  if (alg == ops::LinearAlgorithm::recurrent) return 4.0 * dk * dv;
  const double L = static_cast<double>(std::min(chunk, T));
  return L * dk / static_cast<double>(heads_sharing_qk) + L * dv + 4.0 * dk * dv;
}

// Gated linear attention, one batch, H heads, per-token scalar or vector gates.
class GlaRun final : public Instance {
 public:
  GlaRun(int64_t T, int64_t H, int64_t dk, int64_t dv, ops::LinearGate gate, ops::LinearAlgorithm alg, int64_t chunk)
      : T_(T), H_(H), dk_(dk), dv_(dv) {
    opt_.gate = gate;
    opt_.algorithm = alg;
    opt_.chunk = chunk;
    opt_.scale = 1.f / std::sqrt(static_cast<float>(dk));
    q_ = random_f32({1, T, H, dk}, -1, 1, 1);
    k_ = random_f32({1, T, H, dk}, -1, 1, 2);
    v_ = random_f32({1, T, H, dv}, -1, 1, 3);
    g_ = gate == ops::LinearGate::per_token_vector ? random_f32({1, T, H, dk}, -0.1f, 0, 4)
                                                   : random_f32({1, T, H}, -0.1f, 0, 4);
    state_ = Tensor::zeros(DType::f32, {1, H, dk, dv});
    o_ = Tensor::empty(DType::f32, {1, T, H, dv});
  }
  void run() override { ops::gated_linear_attention(q_, k_, v_, g_, state_, o_, opt_); }
  double flops() const override {
    return static_cast<double>(T_ * H_) * per_token_head_flops(opt_.algorithm, opt_.chunk, T_, dk_, dv_);
  }
  double bytes() const override {
    const double gates = opt_.gate == ops::LinearGate::per_token_vector ? static_cast<double>(dk_) : 1.0;
    return 4.0 * static_cast<double>(T_ * H_) * (2.0 * dk_ + 2.0 * dv_ + gates) + 8.0 * H_ * dk_ * dv_;
  }
  int64_t tokens() const override { return T_; }
  std::optional<double> max_rel_err() override {
    const int64_t Tm = std::min(T_, kErrTokens);
    const Tensor q = q_.slice(1, 0, Tm), k = k_.slice(1, 0, Tm), v = v_.slice(1, 0, Tm), g = g_.slice(1, 0, Tm);
    const Tensor state = Tensor::zeros(DType::f32, {1, H_, dk_, dv_});
    const Tensor o = Tensor::empty(DType::f32, {1, Tm, H_, dv_});
    ops::LinearAttentionOptions opt = opt_;
    opt.chunk = std::min(opt.chunk, Tm);
    ops::gated_linear_attention(q, k, v, g, state, o, opt);
    std::vector<double> ref_state;
    const reference::LinearAttentionShape s{.B = 1, .T = Tm, .Hq = H_, .Hk = H_, .Hv = H_, .dk = dk_, .dv = dv_};
    return normwise_err(o, reference::linear_attention(s, as_double(q), as_double(k), as_double(v), as_double(g), opt,
                                                       ref_state));
  }

 private:
  int64_t T_, H_, dk_, dv_;
  ops::LinearAttentionOptions opt_;
  Tensor q_, k_, v_, g_, state_, o_;
};

// Mamba-2 SSD: H heads of head dim P, G groups of state size N.
class SsdRun final : public Instance {
 public:
  SsdRun(int64_t T, int64_t H, int64_t P, int64_t G, int64_t N) : T_(T), H_(H), P_(P), G_(G), N_(N) {
    x_ = random_f32({1, T, H, P}, -1, 1, 11);
    dt_ = random_f32({1, T, H}, 0.001f, 0.1f, 12);
    A_ = random_f32({H}, -8, -1, 13);
    B_ = random_f32({1, T, G, N}, -1, 1, 14);
    C_ = random_f32({1, T, G, N}, -1, 1, 15);
    D_ = random_f32({H}, 0.5f, 1.5f, 16);
    state_ = Tensor::zeros(DType::f32, {1, H, N, P});
    y_ = Tensor::empty(DType::f32, {1, T, H, P});
  }
  void run() override { ops::ssd(x_, dt_, A_, B_, C_, D_, state_, y_); }
  double flops() const override {
    const auto alg =
        T_ < ops::kLinearAttentionRecurrentBelow ? ops::LinearAlgorithm::recurrent : ops::LinearAlgorithm::chunked;
    return static_cast<double>(T_ * H_) * per_token_head_flops(alg, 64, T_, N_, P_, H_ / G_);
  }
  double bytes() const override {
    return 4.0 * static_cast<double>(T_) * (2.0 * H_ * P_ + H_ + 2.0 * G_ * N_) + 8.0 * H_ * N_ * P_;
  }
  int64_t tokens() const override { return T_; }
  std::optional<double> max_rel_err() override {
    const int64_t Tm = std::min(T_, kErrTokens);
    const Tensor x = x_.slice(1, 0, Tm), dt = dt_.slice(1, 0, Tm), Bm = B_.slice(1, 0, Tm), Cm = C_.slice(1, 0, Tm);
    const Tensor state = Tensor::zeros(DType::f32, {1, H_, N_, P_});
    const Tensor y = Tensor::empty(DType::f32, {1, Tm, H_, P_});
    ops::ssd(x, dt, A_, Bm, Cm, D_, state, y);
    std::vector<double> ref_state;
    return normwise_err(y, reference::ssd(1, Tm, H_, P_, G_, N_, as_double(x), as_double(dt), as_double(A_),
                                          as_double(Bm), as_double(Cm), as_double(D_), ref_state));
  }

 private:
  int64_t T_, H_, P_, G_, N_;
  Tensor x_, dt_, A_, B_, C_, D_, state_, y_;
};

// Gated delta rule with l2-normalised q/k, Hk key heads shared by Hv value heads.
class DeltaRun final : public Instance {
 public:
  DeltaRun(int64_t T, int64_t Hk, int64_t Hv, int64_t dk, int64_t dv, ops::LinearAlgorithm alg)
      : T_(T), Hk_(Hk), Hv_(Hv), dk_(dk), dv_(dv) {
    opt_.l2_normalize_qk = true;
    opt_.scale = 1.f / std::sqrt(static_cast<float>(dk));
    opt_.algorithm = alg;
    q_ = random_f32({1, T, Hk, dk}, -1, 1, 21);
    k_ = random_f32({1, T, Hk, dk}, -1, 1, 22);
    v_ = random_f32({1, T, Hv, dv}, -1, 1, 23);
    beta_ = random_f32({1, T, Hv}, 0.1f, 1, 24);
    g_ = random_f32({1, T, Hv}, -0.1f, 0, 25);
    state_ = Tensor::zeros(DType::f32, {1, Hv, dk, dv});
    o_ = Tensor::empty(DType::f32, {1, T, Hv, dv});
  }
  void run() override { ops::delta_rule(q_, k_, v_, beta_, g_, state_, o_, opt_); }
  // Chunked: Q K^T and K K^T, causal halves (2 L dk), K S0 and the inter readout (4 dk dv),
  // forward substitution and masked A D (L dv), state update (2 dk dv).
  double flops() const override {
    const double L = static_cast<double>(std::min<int64_t>(opt_.chunk, T_));
    const bool rec = opt_.algorithm != ops::LinearAlgorithm::chunked;
    const double per = rec ? 6.0 * dk_ * dv_ : 2 * L * dk_ + L * dv_ + 6.0 * dk_ * dv_;
    return static_cast<double>(T_ * Hv_) * per;
  }
  double bytes() const override {
    return 4.0 * static_cast<double>(T_) * (2.0 * Hk_ * dk_ + 2.0 * Hv_ * dv_ + 2.0 * Hv_) + 8.0 * Hv_ * dk_ * dv_;
  }
  int64_t tokens() const override { return T_; }
  std::optional<double> max_rel_err() override {
    const int64_t Tm = std::min(T_, kErrTokens);
    const Tensor q = q_.slice(1, 0, Tm), k = k_.slice(1, 0, Tm), v = v_.slice(1, 0, Tm);
    const Tensor beta = beta_.slice(1, 0, Tm), g = g_.slice(1, 0, Tm);
    const Tensor state = Tensor::zeros(DType::f32, {1, Hv_, dk_, dv_});
    const Tensor o = Tensor::empty(DType::f32, {1, Tm, Hv_, dv_});
    ops::delta_rule(q, k, v, beta, g, state, o, opt_);
    std::vector<double> ref_state;
    const reference::DeltaShape s{.B = 1, .T = Tm, .Hq = Hk_, .Hk = Hk_, .Hv = Hv_, .dk = dk_, .dv = dv_};
    return normwise_err(o, reference::delta_rule(s, as_double(q), as_double(k), as_double(v), as_double(beta),
                                                 as_double(g), true, opt_.l2_eps, opt_.scale, ref_state));
  }

 private:
  int64_t T_, Hk_, Hv_, dk_, dv_;
  ops::DeltaRuleOptions opt_;
  Tensor q_, k_, v_, beta_, g_, state_, o_;
};

// Generalized delta rule with RWKV-7's inputs: a = -kappa, b = kappa * eta for a unit
// kappa, log w in [-0.61, 0].
class GeneralizedDeltaRun final : public Instance {
 public:
  GeneralizedDeltaRun(int64_t T, int64_t H, int64_t d, ops::LinearAlgorithm alg) : T_(T), H_(H), d_(d) {
    opt_.algorithm = alg;
    q_ = random_f32({1, T, H, d}, -1, 1, 31);
    k_ = random_f32({1, T, H, d}, -0.125f, 0.125f, 32);
    v_ = random_f32({1, T, H, d}, -1, 1, 33);
    log_w_ = random_f32({1, T, H, d}, -0.61f, 0, 34);
    a_ = random_f32({1, T, H, d}, -1, 1, 35);
    b_ = random_f32({1, T, H, d}, 0, 1, 36);
    float* a = a_.mutable_data<float>();
    float* b = b_.mutable_data<float>();
    for (int64_t r = 0; r < T * H; ++r) {
      double ss = 0;
      for (int64_t c = 0; c < d; ++c) ss += static_cast<double>(a[r * d + c]) * a[r * d + c];
      const float inv = static_cast<float>(1 / std::sqrt(ss + 1e-12));
      for (int64_t c = 0; c < d; ++c) {
        b[r * d + c] *= a[r * d + c] * inv;
        a[r * d + c] *= -inv;
      }
    }
    state_ = Tensor::zeros(DType::f32, {1, H, d, d});
    o_ = Tensor::empty(DType::f32, {1, T, H, d});
  }
  void run() override { ops::generalized_delta_rule(q_, k_, v_, a_, b_, log_w_, state_, o_, opt_); }
  // Recurrent: S^T a, the rank-2 update and the readout, 8 d^2. Chunked: the four
  // intra-chunk products (4 L d), M V, M U and the solve (4 L d), the inter-chunk products
  // and the state update (8 d^2).
  double flops() const override {
    const double L = static_cast<double>(std::min<int64_t>(opt_.chunk, T_)), d = static_cast<double>(d_);
    const bool chunked = opt_.algorithm == ops::LinearAlgorithm::chunked;
    return static_cast<double>(T_ * H_) * (chunked ? 8 * L * d + 8 * d * d : 8 * d * d);
  }
  double bytes() const override {
    return 4.0 * static_cast<double>(T_ * H_) * 7.0 * d_ + 8.0 * H_ * d_ * d_;
  }
  int64_t tokens() const override { return T_; }
  std::optional<double> max_rel_err() override {
    const int64_t Tm = std::min(T_, kErrTokens);
    const Tensor q = q_.slice(1, 0, Tm), k = k_.slice(1, 0, Tm), v = v_.slice(1, 0, Tm);
    const Tensor a = a_.slice(1, 0, Tm), b = b_.slice(1, 0, Tm), log_w = log_w_.slice(1, 0, Tm);
    const Tensor state = Tensor::zeros(DType::f32, {1, H_, d_, d_});
    const Tensor o = Tensor::empty(DType::f32, {1, Tm, H_, d_});
    ops::generalized_delta_rule(q, k, v, a, b, log_w, state, o, opt_);
    std::vector<double> ref_state;
    const reference::DeltaShape s{.B = 1, .T = Tm, .Hq = H_, .Hk = H_, .Hv = H_, .dk = d_, .dv = d_};
    return normwise_err(o, reference::generalized_delta_rule(s, as_double(q), as_double(k), as_double(v), as_double(a),
                                                             as_double(b), as_double(log_w), opt_.scale, ref_state));
  }

 private:
  int64_t T_, H_, d_;
  ops::GeneralizedDeltaRuleOptions opt_;
  Tensor q_, k_, v_, a_, b_, log_w_, state_, o_;
};

constexpr int64_t kH = 4, kD = 128, kChunk = 64;

Case gla_case(const std::string& name, const std::string& peer_of, ops::LinearGate gate, ops::LinearAlgorithm alg,
              bool quadratic, std::vector<int64_t> seq, bool in_default, int64_t H = kH) {
  const std::string gate_name = gate == ops::LinearGate::per_token_vector ? "vector gate" : "scalar gate";
  return Case{.name = name,
              .family = "linear",
              .shape = "H=" + std::to_string(H) + " dk=dv=128 " + gate_name + (quadratic ? " chunk=T" : ""),
              .seq = std::move(seq),
              .in_default = in_default,
              .peer_of = peer_of,
              .make = [gate, alg, quadratic, H](int64_t T) {
                return std::make_unique<GlaRun>(T, H, kD, kD, gate, alg, quadratic ? T : kChunk);
              }};
}

SUBQ_BENCH_CASES(linear_attention) {
  using ops::LinearAlgorithm;
  using ops::LinearGate;
  const std::vector<int64_t> sweep = {256, 1024, 4096};
  // One head so that a million tokens of q, k, v, o stay at 2 GiB.
  const std::vector<int64_t> long_sweep = {1024, 16384, 131072, 1048576};
  return {
      gla_case("linear.gla.scalar.chunked", "", LinearGate::per_token, LinearAlgorithm::chunked, false, sweep, true),
      gla_case("linear.gla.scalar.recurrent", "linear.gla.scalar.chunked", LinearGate::per_token,
               LinearAlgorithm::recurrent, false, sweep, true),
      gla_case("linear.gla.scalar.quadratic", "linear.gla.scalar.chunked", LinearGate::per_token,
               LinearAlgorithm::chunked, true, sweep, true),
      gla_case("linear.long.gla.chunked", "", LinearGate::per_token, LinearAlgorithm::chunked, false, long_sweep,
               false, 1),
      gla_case("linear.long.gla.recurrent", "linear.long.gla.chunked", LinearGate::per_token,
               LinearAlgorithm::recurrent, false, long_sweep, false, 1),
      gla_case("linear.gla.vector.chunked", "", LinearGate::per_token_vector, LinearAlgorithm::chunked, false,
               {1024, 4096}, true),
      gla_case("linear.gla.vector.recurrent", "linear.gla.vector.chunked", LinearGate::per_token_vector,
               LinearAlgorithm::recurrent, false, {1024, 4096}, true),
  };
}

SUBQ_BENCH_CASES(linear_ssd) {
  auto ssd_case = [](const std::string& model, int64_t H) {
    return Case{.name = "linear.ssd." + model,
                .family = "linear",
                .shape = "H=" + std::to_string(H) + " P=64 G=1 N=128",
                .seq = {1, 512, 2048},
                .make = [H](int64_t T) { return std::make_unique<SsdRun>(T, H, 64, 1, 128); }};
  };
  return {ssd_case("mamba2_130m", 24), ssd_case("mamba2_780m", 48)};
}

SUBQ_BENCH_CASES(linear_delta) {
  auto delta_case = [](const std::string& name, const std::string& peer_of, ops::LinearAlgorithm alg,
                       std::vector<int64_t> seq) {
    return Case{.name = name,
                .family = "linear",
                .shape = "Hk=16 Hv=32 dk=dv=128 l2norm",
                .seq = std::move(seq),
                .peer_of = peer_of,
                .make = [alg](int64_t T) { return std::make_unique<DeltaRun>(T, 16, 32, 128, 128, alg); }};
  };
  return {delta_case("linear.delta.gated", "", ops::LinearAlgorithm::automatic, {1, 512, 2048}),
          delta_case("linear.delta.gated.chunked", "linear.delta.gated", ops::LinearAlgorithm::chunked,
                     {512, 2048})};
}

SUBQ_BENCH_CASES(linear_generalized_delta) {
  auto dplr_case = [](const std::string& name, const std::string& peer_of, ops::LinearAlgorithm alg,
                      std::vector<int64_t> seq) {
    return Case{.name = name,
                .family = "linear",
                .shape = "H=32 dk=dv=64 (RWKV-7 1.5B)",
                .seq = std::move(seq),
                .peer_of = peer_of,
                .make = [alg](int64_t T) { return std::make_unique<GeneralizedDeltaRun>(T, 32, 64, alg); }};
  };
  return {dplr_case("linear.dplr.rwkv7", "", ops::LinearAlgorithm::automatic, {1, 512, 2048}),
          dplr_case("linear.dplr.rwkv7.chunked", "linear.dplr.rwkv7", ops::LinearAlgorithm::chunked, {512, 2048})};
}

}  // namespace
}  // namespace subq::bench

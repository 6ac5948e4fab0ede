// Bench cases for the state-space family (family "ssm"): the selective scan at Mamba
// shapes, its two lane mappings, and the short causal conv1d. The scan spends one exp per
// (token, channel, state element), so it is compute-bound; bytes() is its compulsory
// traffic (x, dt, z in, y out, B and C per token), shown so GB/s sits next to the
// bandwidth ceiling. ns per token per channel = 1e9 / (tok/s * D).
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "bench/inputs.h"
#include "src/mixers/mamba_mixer.h"
#include "src/ops/conv/causal_conv1d.h"
#include "src/ops/conv/long_conv.h"
#include "src/ops/ssm/s4d.h"
#include "src/ops/ssm/selective_scan.h"
#include "subq/ops.h"

namespace subq::bench {
namespace {

double softplus(double v) { return v > 0 ? v + std::log1p(std::exp(-v)) : std::log1p(std::exp(v)); }

// Max |got - want| / max(|want|, 1e-3) over the first rows of y [T, C] against a float64
// causal convolution with k [C, L].
double long_conv_error(const Tensor& u, const Tensor& k, const Tensor& y, int64_t rows) {
  const int64_t C = u.dim(2), L = k.dim(1);
  double worst = 0;
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t c = 0; c < C; ++c) {
      double want = 0;
      for (int64_t j = 0; j <= t && j < L; ++j)
        want += static_cast<double>(k.data<float>()[c * L + j]) * u.data<float>()[(t - j) * C + c];
      worst = std::max(worst, std::abs(y.data<float>()[t * C + c] - want) / std::max(std::abs(want), 1e-3));
    }
  return worst;
}

// Mamba-1 scan over [1, T, D] with N state elements, dt bias + softplus, D skip and z gate.
class Scan final : public Instance {
 public:
  Scan(int64_t T, int64_t D, int64_t N, ops::ScanLanes lanes) : T_(T), D_(D), N_(N), lanes_(lanes) {
    x_ = random_f32({1, T, D}, -2, 2, 1);
    dt_ = random_f32({1, T, D}, -3, 1, 2);
    z_ = random_f32({1, T, D}, -3, 3, 3);
    Bm_ = random_f32({1, T, N}, -1, 1, 4);
    Cm_ = random_f32({1, T, N}, -1, 1, 5);
    bias_ = random_f32({D}, -2, 0, 6);
    Dskip_ = random_f32({D}, -1, 1, 7);
    A_ = random_f32({D, N}, -1, 2.5, 8);
    for (int64_t i = 0; i < D * N; ++i) A_.mutable_data<float>()[i] = -std::exp(A_.data<float>()[i]);
    h_ = Tensor::zeros(DType::f32, {1, D, N});
    y_ = Tensor::empty(DType::f32, {1, T, D});
  }
  void run() override { ops::selective_scan(x_, dt_, bias_, true, A_, Bm_, Cm_, Dskip_, z_, h_, y_, lanes_); }
  double bytes() const override { return 4.0 * static_cast<double>(T_) * (4.0 * static_cast<double>(D_) + 2.0 * static_cast<double>(N_)); }
  int64_t tokens() const override { return T_; }
  // Against a float64 scan of the first 64 tokens from a zero state, relative to max(|y|, 1e-3).
  std::optional<double> max_rel_err() override {
    std::fill_n(h_.mutable_data<float>(), D_ * N_, 0.f);
    run();
    const int64_t steps = std::min<int64_t>(T_, 64);
    std::vector<double> h(static_cast<size_t>(D_ * N_), 0.0);
    double worst = 0;
    for (int64_t t = 0; t < steps; ++t)
      for (int64_t d = 0; d < D_; ++d) {
        const int64_t i = t * D_ + d;
        const double delta = softplus(static_cast<double>(dt_.data<float>()[i]) + bias_.data<float>()[d]);
        const double x = x_.data<float>()[i];
        double y = Dskip_.data<float>()[d] * x;
        for (int64_t n = 0; n < N_; ++n) {
          double& s = h[static_cast<size_t>(d * N_ + n)];
          s = std::exp(delta * A_.data<float>()[d * N_ + n]) * s + delta * Bm_.data<float>()[t * N_ + n] * x;
          y += Cm_.data<float>()[t * N_ + n] * s;
        }
        const double z = z_.data<float>()[i];
        y *= z / (1 + std::exp(-z));
        worst = std::max(worst, std::abs(y_.data<float>()[i] - y) / std::max(std::abs(y), 1e-3));
      }
    return worst;
  }

 private:
  int64_t T_, D_, N_;
  ops::ScanLanes lanes_;
  Tensor x_, dt_, z_, Bm_, Cm_, bias_, Dskip_, A_, h_, y_;
};

Case scan_case(const std::string& name, int64_t D, int64_t N, ops::ScanLanes lanes, std::vector<int64_t> seq,
               bool in_default) {
  const std::string lane_name = lanes == ops::ScanLanes::state ? "lane=state" : "lane=channel";
  return Case{.name = name,
              .family = "ssm",
              .shape = "D=" + std::to_string(D) + " N=" + std::to_string(N) + " " + lane_name,
              .seq = std::move(seq),
              .in_default = in_default,
              .peer_of = {},
              .make = [D, N, lanes](int64_t T) { return std::make_unique<Scan>(T, D, N, lanes); }};
}

SUBQ_BENCH_CASES(ssm_scan) {
  using L = ops::ScanLanes;
  return {
      // Mamba-130m / 370m / 1.4b inner widths.
      scan_case("ssm.scan.d1536", 1536, 16, L::channels, {1024, 4096}, true),
      scan_case("ssm.scan.d2048", 2048, 16, L::channels, {1024, 4096}, true),
      scan_case("ssm.scan.d4096", 4096, 16, L::channels, {1024, 4096}, true),
      // The other lane mapping on the same shapes, and at a larger state.
      scan_case("ssm.scan.lanes_state.d2048", 2048, 16, L::state, {1024}, true),
      scan_case("ssm.scan.n64.d2048", 2048, 64, L::channels, {1024}, false),
      scan_case("ssm.scan.lanes_state.n64.d2048", 2048, 64, L::state, {1024}, false),
  };
}

// Mamba's short conv: width 4, bias, SiLU, over [1, T, D].
class Conv final : public Instance {
 public:
  Conv(int64_t T, int64_t D) : T_(T), D_(D) {
    x_ = random_f32({1, T, D}, -2, 2, 11);
    w_ = random_f32({D, 4}, -1, 1, 12);
    bias_ = random_f32({D}, -1, 1, 13);
    y_ = Tensor::empty(DType::f32, {1, T, D});
  }
  void run() override { ops::causal_conv1d(x_, w_, bias_, Tensor(), true, y_); }
  double bytes() const override { return 8.0 * static_cast<double>(T_ * D_); }
  double flops() const override { return 8.0 * static_cast<double>(T_ * D_); }
  int64_t tokens() const override { return T_; }
  std::optional<double> max_rel_err() override {
    run();
    double worst = 0;
    for (int64_t t = 0; t < std::min<int64_t>(T_, 16); ++t)
      for (int64_t d = 0; d < D_; ++d) {
        double acc = bias_.data<float>()[d];
        for (int64_t k = 0; k < 4; ++k) {
          const int64_t s = t - 3 + k;
          if (s >= 0) acc += static_cast<double>(w_.data<float>()[d * 4 + k]) * x_.data<float>()[s * D_ + d];
        }
        const double want = acc / (1 + std::exp(-acc));
        worst = std::max(worst, std::abs(y_.data<float>()[t * D_ + d] - want) / std::max(std::abs(want), 1e-3));
      }
    return worst;
  }

 private:
  int64_t T_, D_;
  Tensor x_, w_, bias_, y_;
};

SUBQ_BENCH_CASES(ssm_conv) {
  auto conv = [](const std::string& name, int64_t D, std::vector<int64_t> seq) {
    return Case{.name = name,
                .family = "ssm",
                .shape = "D=" + std::to_string(D) + " W=4 bias silu",
                .seq = std::move(seq),
                .in_default = true,
                .peer_of = {},
                .make = [D](int64_t T) { return std::make_unique<Conv>(T, D); }};
  };
  // 3328 x 512 is the shape ggml's SSM_CONV was reported at; 4096 is Mamba-1.4b's width.
  return {conv("ssm.conv1d.d3328", 3328, {512, 4096}), conv("ssm.conv1d.d4096", 4096, {1024, 4096})};
}


// Long causal convolution over [1, T, C] with a filter of L taps (L = 0: as long as T),
// by one method; shows where the FFT overtakes the direct sum.
class LongConv final : public Instance {
 public:
  LongConv(int64_t T, int64_t C, int64_t L, ops::LongConvMethod m) : T_(T), C_(C), L_(L ? L : T), m_(m) {
    u_ = random_f32({1, T, C}, -1, 1, 21);
    k_ = random_f32({C, L_}, -1, 1, 22);
    for (int64_t c = 0; c < C; ++c)  // decaying like an SSM kernel, so outputs stay O(1)
      for (int64_t j = 0; j < L_; ++j) k_.mutable_data<float>()[c * L_ + j] *= std::exp(-static_cast<float>(j) / 64.f);
    y_ = Tensor::empty(DType::f32, {1, T, C});
  }
  void run() override { ops::causal_long_conv(u_, k_, y_, m_); }
  double bytes() const override { return 4.0 * static_cast<double>(2 * T_ * C_ + C_ * std::min(L_, T_)); }
  int64_t tokens() const override { return T_; }
  std::optional<double> max_rel_err() override {
    run();
    return long_conv_error(u_, k_, y_, std::min<int64_t>(T_, 32));
  }

 private:
  int64_t T_, C_, L_;
  ops::LongConvMethod m_;
  Tensor u_, k_, y_;
};

SUBQ_BENCH_CASES(ssm_long_conv) {
  std::vector<Case> cases;
  for (int64_t L : {16, 64, 256, 0}) {
    for (auto m : {ops::LongConvMethod::direct, ops::LongConvMethod::fft}) {
      const std::string method = m == ops::LongConvMethod::fft ? "fft" : "direct";
      std::string taps = "L";
      taps += L ? std::to_string(L) : "full";
      cases.push_back(Case{.name = "ssm.long_conv." + taps + "." + method,
                           .family = "ssm",
                           .shape = "C=256 " + (L ? "L=" + std::to_string(L) : std::string("L=T")) + " " + method,
                           .seq = {4096},
                           .in_default = L == 64 || L == 0,
                           .peer_of = {},
                           .make = [L, m](int64_t T) { return std::make_unique<LongConv>(T, 256, L, m); }});
    }
  }
  return cases;
}

// S4D over [1, T, H] with N = 2M: the recurrence, the FFT convolution with the kernel
// already materialised (as when weights and length are fixed), and the kernel itself.
class S4DRun final : public Instance {
 public:
  enum class Form { recurrence, fft_conv, kernel };
  S4DRun(int64_t T, int64_t H, int64_t N, Form f) : T_(T), H_(H), M_(N / 2), form_(f) {
    ops::S4DParams p;
    p.channels = H;
    p.modes = M_;
    const auto A = ops::s4d_init_A(N, ops::S4DInit::inv);
    std::mt19937_64 rng(31);
    std::normal_distribution<double> nd(0, 0.7);
    std::uniform_real_distribution<double> ld(std::log(1e-3), std::log(1e-1));
    for (int64_t h = 0; h < H; ++h) {
      for (int64_t m = 0; m < M_; ++m) {
        p.A.push_back(A[static_cast<size_t>(m)]);
        p.B.emplace_back(1.0, 0.0);
        p.C.emplace_back(nd(rng), nd(rng));
      }
      p.dt.push_back(std::exp(ld(rng)));
    }
    s_ = ops::s4d_discretize_zoh(p);
    u_ = random_f32({1, T, H}, -1, 1, 32);
    y_ = Tensor::empty(DType::f32, {1, T, H});
    K_ = Tensor::empty(DType::f32, {H, T});
    ops::s4d_kernel(s_, T, K_.mutable_data<float>());
    state_.assign(static_cast<size_t>(2 * H * M_), 0.f);
  }
  void run() override {
    switch (form_) {
      case Form::recurrence: ops::s4d_scan(s_, 1, T_, u_.data<float>(), nullptr, state_.data(), y_.mutable_data<float>()); break;
      case Form::fft_conv: ops::causal_long_conv(u_, K_, y_, ops::LongConvMethod::fft); break;
      case Form::kernel: ops::s4d_kernel(s_, T_, K_.mutable_data<float>()); break;
    }
  }
  double bytes() const override { return 4.0 * static_cast<double>((form_ == Form::kernel ? 1 : 2) * T_ * H_); }
  int64_t tokens() const override { return T_; }
  // Outputs of the recurrence (from a zero state) and of the convolution, against the
  // float64 convolution with the kernel: the forms must agree.
  std::optional<double> max_rel_err() override {
    if (form_ == Form::kernel) return std::nullopt;
    std::fill(state_.begin(), state_.end(), 0.f);
    run();
    return long_conv_error(u_, K_, y_, std::min<int64_t>(T_, 32));
  }

 private:
  int64_t T_, H_, M_;
  Form form_;
  ops::S4DDiscrete s_;
  Tensor u_, y_, K_;
  std::vector<float> state_;
};

SUBQ_BENCH_CASES(ssm_s4d) {
  using F = S4DRun::Form;
  auto s4d = [](const std::string& form, F f, int64_t N, bool in_default) {
    return Case{.name = "ssm.s4d." + form + ".n" + std::to_string(N),
                .family = "ssm",
                .shape = "H=256 N=" + std::to_string(N) + " " + form,
                .seq = {1024, 16384},
                .in_default = in_default,
                .peer_of = {},
                .make = [f, N](int64_t T) { return std::make_unique<S4DRun>(T, 256, N, f); }};
  };
  return {s4d("recurrence", F::recurrence, 64, true), s4d("fft_conv", F::fft_conv, 64, true),
          s4d("kernel", F::kernel, 64, false), s4d("recurrence", F::recurrence, 256, false)};
}


// The whole Mamba-1 mixer at Mamba-130m's shape (d_model 768, d_inner 1536, N 16,
// dt_rank 48, conv 4) with bf16 projection weights: prefill of T tokens in one forward,
// and (T = 1) one decode step. Includes the projections (the GEMMs dominate prefill).
class MambaLayer final : public Instance {
 public:
  explicit MambaLayer(int64_t T) : T_(T) {
    const MambaConfig c{.d_model = 768, .d_inner = 1536, .d_state = 16, .d_conv = 4, .dt_rank = 48, .conv_bias = true, .proj_bias = false};
    auto bf = [](const Tensor& t) {
      Tensor out = Tensor::empty(DType::bf16, t.shape());
      convert(t, out);
      return out;
    };
    MambaWeights w;
    w.in_proj = bf(random_f32({2 * 1536, 768}, -0.036f, 0.036f, 41));
    w.x_proj = bf(random_f32({48 + 32, 1536}, -0.025f, 0.025f, 42));
    w.dt_proj = bf(random_f32({1536, 48}, -0.14f, 0.14f, 43));
    w.out_proj = bf(random_f32({768, 1536}, -0.025f, 0.025f, 44));
    w.conv_weight = random_f32({1536, 1, 4}, -0.5f, 0.5f, 45);
    w.conv_bias = random_f32({1536}, -0.1f, 0.1f, 46);
    w.dt_proj_bias = random_f32({1536}, -6.f, -2.f, 47);
    w.A_log = random_f32({1536, 16}, 0.f, 2.8f, 48);
    w.D = random_f32({1536}, 0.5f, 1.5f, 49);
    mixer_ = std::make_unique<MambaMixer>(c, w);
    state_ = mixer_->new_state(1);
    x_ = random_f32({1, T, 768}, -1, 1, 50);
    y_ = Tensor::empty(DType::f32, {1, T, 768});
  }
  void run() override { mixer_->forward(x_, *state_, y_); }
  // Weights (bf16) read once per forward, activations in and out.
  double bytes() const override { return 2.0 * (2 * 1536 * 768 + 80 * 1536 + 1536 * 48 + 768 * 1536) + 8.0 * 768 * static_cast<double>(T_); }
  double flops() const override { return 2.0 * static_cast<double>(T_) * (2 * 1536 * 768 + 80 * 1536 + 1536 * 48 + 768 * 1536); }
  int64_t tokens() const override { return T_; }

 private:
  int64_t T_;
  std::unique_ptr<MambaMixer> mixer_;
  std::unique_ptr<MixerState> state_;
  Tensor x_, y_;
};

SUBQ_BENCH_CASE(ssm_mamba_layer) {
  return Case{.name = "ssm.mamba_mixer.130m",
              .family = "ssm",
              .shape = "d_model=768 d_inner=1536 N=16 bf16 weights",
              .seq = {1, 256},
              .in_default = true,
              .peer_of = {},
              .make = [](int64_t T) { return std::make_unique<MambaLayer>(T); }};
}

}  // namespace
}  // namespace subq::bench

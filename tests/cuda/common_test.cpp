// The common primitives on the GPU against the float64 references (tests/reference).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "src/ops/common/cuda_ops.h"
#include "tests/cuda/cuda_test.h"
#include "tests/reference/common.h"
#include "tests/reference/mlp.h"

namespace subq::test {
namespace {

Tensor device_f32(const std::vector<float>& v, const Shape& s) { return cuda::to_device(tensor_from(v, s)); }

// y = x W^T + b with bf16 operands: the reference uses the same bf16-rounded values, so
// only f32 accumulation order differs: |err| <= 1e-5 * sqrt(K) * (1 + |y|) with margin.
// f32 operands are an f32 GEMM (no TF32, whose 10-bit mantissa would miss 1e-4).
TEST(CudaCommon, LinearMatchesFloat64OnRoundedOperands) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  struct Case { int64_t M, N, K; DType dt, out; bool bias; };
  for (const Case c : {Case{1, 7, 33, DType::bf16, DType::f32, true}, Case{17, 129, 200, DType::bf16, DType::f32, false},
                       Case{64, 256, 512, DType::f16, DType::f32, true}, Case{5, 40, 64, DType::bf16, DType::bf16, true},
                       Case{9, 77, 300, DType::f32, DType::f32, true}}) {
    SCOPED_TRACE("M=" + std::to_string(c.M) + " N=" + std::to_string(c.N) + " K=" + std::to_string(c.K));
    const Tensor x = host_tensor(uniform(rng, static_cast<size_t>(c.M * c.K)), {c.M, c.K}, c.dt);
    const Tensor w = host_tensor(uniform(rng, static_cast<size_t>(c.N * c.K)), {c.N, c.K}, c.dt);
    const auto b = uniform(rng, static_cast<size_t>(c.N));
    const Tensor y = poisoned_device_tensor(c.out, {c.M, c.N});
    cuda::linear(cuda::to_device(x), cuda::to_device(w), c.bias ? device_f32(b, {c.N}) : Tensor{}, y);
    const auto xv = to_double(x), wv = to_double(w);
    std::vector<double> want(static_cast<size_t>(c.M * c.N));
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t n = 0; n < c.N; ++n) {
        double acc = c.bias ? b[static_cast<size_t>(n)] : 0.0;
        for (int64_t k = 0; k < c.K; ++k) acc += xv[static_cast<size_t>(m * c.K + k)] * wv[static_cast<size_t>(n * c.K + k)];
        want[static_cast<size_t>(m * c.N + n)] = acc;
      }
    // A bf16 output is rounded twice, the product (|x.w| up to ~3 here, relative 2^-9)
    // and again after the bias is added, so its bound is absolute as well as relative.
    const bool half_out = c.out == DType::bf16;
    expect_close(device_values(y), want, half_out ? 8e-3 : 1e-4, half_out ? 1e-2 : 1e-4, "linear");
  }
}

TEST(CudaCommon, RmsNormSoftmaxSilu) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  for (int64_t n : {1, 7, 300, 4099}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const int64_t rows = 3;
    const auto x = uniform(rng, static_cast<size_t>(rows * n), -4.f, 4.f);
    const auto w = uniform(rng, static_cast<size_t>(n));
    const std::vector<double> xd(x.begin(), x.end()), wd(w.begin(), w.end());
    const Tensor dx = device_f32(x, {rows, n});
    // f32 reductions over n <= 4099 elements, fast exp: relative 2e-5 with margin.
    Tensor y = poisoned_device_tensor(DType::f32, {rows, n});
    cuda::rms_norm(dx, device_f32(w, {n}), 1e-5f, y);
    expect_close(device_values(y), ref::rms_norm(xd, wd, 1e-5, n), 2e-5, 1e-6, "rms_norm");
    y = poisoned_device_tensor(DType::f32, {rows, n});
    cuda::softmax(dx, y);
    expect_close(device_values(y), ref::softmax(xd, n), 2e-5, 1e-7, "softmax");
    y = poisoned_device_tensor(DType::f32, {rows, n});
    cuda::silu(dx, y);
    std::vector<double> want(xd.size());
    for (size_t i = 0; i < xd.size(); ++i) want[i] = ref::silu(xd[i]);
    expect_close(device_values(y), want, 2e-6, 1e-6, "silu");
    // In place, as the CPU functions allow.
    const Tensor inplace = device_f32(x, {rows, n});
    cuda::softmax(inplace, inplace);
    expect_close(device_values(inplace), ref::softmax(xd, n), 2e-5, 1e-7, "softmax in place");
  }
}

TEST(CudaCommon, RopeMatchesReference) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t T = 37, H = 3, Dh = 64;
  for (int64_t rot : {64, 32, 0}) {
    const auto x = uniform(rng, static_cast<size_t>(T * H * Dh));
    std::vector<int32_t> pos(T);
    for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = static_cast<int32_t>(t * 997 + 3);  // long positions
    Tensor hp = Tensor::empty(DType::i32, {T});
    std::copy(pos.begin(), pos.end(), hp.mutable_data<int32_t>());
    const Tensor dx = device_f32(x, {T, H, Dh});
    RopeSpec spec;
    spec.rotary_dim = rot;
    cuda::rope(dx, cuda::to_device(hp), rot > 0 ? cuda::upload(rope_table(spec)) : cuda::DeviceRopeTable{});
    // Angles in double; only the f32 rounding of the stored values remains.
    expect_close(device_values(dx), ref::rope({x.begin(), x.end()}, pos, H, Dh, 10000.0, rot), 1e-6, 1e-6, "rope");
  }
}

// Scaled rope types (frequencies and attention factor from the table) as the CPU rope.
TEST(CudaCommon, RopeWithScaledTableMatchesCpu) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t T = 29, H = 5, Dh = 48;
  RopeSpec spec;
  spec.type = RopeSpec::Type::yarn;
  spec.theta = 500000.0;
  spec.rotary_dim = 32;
  spec.factor = 4.0;
  spec.original_max_positions = 4096;
  spec.attention_factor = 1.1386;
  const RopeTable table = rope_table(spec);
  const auto x = uniform(rng, static_cast<size_t>(T * H * Dh));
  Tensor hp = Tensor::empty(DType::i32, {T});
  for (int64_t t = 0; t < T; ++t) hp.mutable_data<int32_t>()[t] = static_cast<int32_t>(t * 1531 + 11);
  Tensor host = Tensor::empty(DType::f32, {T, H, Dh});
  std::copy(x.begin(), x.end(), host.mutable_data<float>());
  const Tensor dx = cuda::to_device(host);
  rope(host, hp, table);
  cuda::rope(dx, cuda::to_device(hp), cuda::upload(table));
  const float* want = host.data<float>();
  expect_close(device_values(dx), std::vector<double>(want, want + host.numel()), 1e-6, 1e-6, "yarn rope");
}

TEST(CudaCommon, EmbeddingGathersRowsAndRejectsBadIds) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t V = 50, D = 130, T = 9;
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    const Tensor table = host_tensor(uniform(rng, static_cast<size_t>(V * D)), {V, D}, dt);
    Tensor ids = Tensor::empty(DType::i32, {T});
    for (int64_t t = 0; t < T; ++t) ids.mutable_data<int32_t>()[t] = static_cast<int32_t>((t * 17 + 5) % V);
    const Tensor out = poisoned_device_tensor(DType::f32, {T, D});
    cuda::embedding(cuda::to_device(ids), cuda::to_device(table), out);
    const auto tv = to_double(table);
    std::vector<double> want;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < D; ++j) want.push_back(tv[static_cast<size_t>(ids.data<int32_t>()[t] * D + j)]);
    expect_close(device_values(out), want, 0, 0, dtype_name(dt));
    ids.mutable_data<int32_t>()[4] = static_cast<int32_t>(V);
    EXPECT_THROW(cuda::embedding(cuda::to_device(ids), cuda::to_device(table), out), Error);
  }
}

TEST(CudaCommon, ConvertRoundTripsAndRejectsBadArguments) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const auto x = uniform(rng, 1001);
  for (DType dt : {DType::bf16, DType::f16}) {
    const Tensor half = poisoned_device_tensor(dt, {1001});
    cuda::convert(device_f32(x, {1001}), half);
    expect_close(device_values(half), to_double(host_tensor(x, {1001}, dt)), 0, 0, "to half: same rounding as CPU");
    const Tensor back = poisoned_device_tensor(DType::f32, {1001});
    cuda::convert(half, back);
    expect_close(device_values(back), device_values(half), 0, 0, "back to f32");
  }
  EXPECT_THROW(cuda::convert(device_f32(x, {1001}), cuda::empty(DType::f32, {1001})), Error);
  EXPECT_THROW(cuda::linear(cuda::empty(DType::bf16, {2, 8}), cuda::empty(DType::f32, {4, 8}), Tensor{},
                            cuda::empty(DType::f32, {2, 4})),
               Error);
  EXPECT_THROW(cuda::linear(cuda::empty(DType::bf16, {2, 8}), cuda::empty(DType::bf16, {4, 7}), Tensor{},
                            cuda::empty(DType::f32, {2, 4})),
               Error);
}

// copy_rows: every dtype pair, zero padding, truncation, a strided column range.
TEST(CudaCommon, CopyRowsPadsTruncatesAndReadsColumnRanges) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t R = 37, W = 53;
  const auto x = uniform(rng, static_cast<size_t>(R * W));
  const Tensor src = device_f32(x, {R, W});
  // Columns [5, 5 + 20) of each row, padded to 64: bf16-rounded values, then zeros.
  for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
    const Tensor dst = poisoned_device_tensor(dt, {R, 64});
    cuda::copy_rows(src.slice(1, 5, 25), dst);
    std::vector<float> cols(static_cast<size_t>(R * 64), 0.f);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < 20; ++j) cols[static_cast<size_t>(r * 64 + j)] = x[static_cast<size_t>(r * W + 5 + j)];
    const std::vector<double> want = to_double(host_tensor(cols, {R, 64}, dt));
    expect_close(device_values(dst), want, 0, 0, std::string("f32 -> ") + dtype_name(dt));
    // Back to f32 (and bf16 to bf16), truncated to 11 columns.
    for (DType back : {DType::f32, dt}) {
      if (back != DType::f32 && dt != DType::bf16) continue;
      const Tensor narrow = poisoned_device_tensor(back, {R, 11});
      cuda::copy_rows(dst, narrow);
      std::vector<double> w11;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < 11; ++j) w11.push_back(want[static_cast<size_t>(r * 64 + j)]);
      expect_close(device_values(narrow), w11, 0, 0, "truncated");
    }
  }
  // [A, R, W] views: heads [2, 5) of [4, 7, 9] into [4, 3, 16] padded rows.
  const auto h = uniform(rng, 4 * 7 * 9);
  const Tensor heads = device_f32(h, {4, 7, 9});
  const Tensor packed = poisoned_device_tensor(DType::f32, {4, 3, 16});
  cuda::copy_rows(heads.slice(1, 2, 5), packed);
  std::vector<double> hw(4 * 3 * 16, 0.0);
  for (int64_t a = 0; a < 4; ++a)
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t j = 0; j < 9; ++j) hw[(a * 3 + b) * 16 + j] = h[(a * 7 + 2 + b) * 9 + j];
  expect_close(device_values(packed), hw, 0, 0, "3-D head range");
  EXPECT_THROW(cuda::copy_rows(src, cuda::empty(DType::f32, {R + 1, W})), Error);
  EXPECT_THROW(cuda::copy_rows(src.transpose(0, 1), cuda::empty(DType::f32, {W, R})), Error);
  EXPECT_THROW(cuda::copy_rows(cuda::empty(DType::f16, {R, W}), cuda::empty(DType::bf16, {R, W})), Error);
}

TEST(CudaCommon, AddAndScale) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t n = 4207;
  const auto a = uniform(rng, n, -4.f, 4.f), b = uniform(rng, n, -4.f, 4.f);
  const Tensor x = device_f32(a, {n});
  cuda::add_into(x, device_f32(b, {n}));
  std::vector<double> sum(n), scaled(n);
  for (int64_t i = 0; i < n; ++i) {
    sum[i] = static_cast<double>(a[i]) + b[i];
    scaled[i] = 0.37 * (static_cast<double>(a[i]) + b[i]);
  }
  expect_close(device_values(x), sum, 1e-7, 1e-7, "add_into");
  cuda::scale(x, 0.37f);
  expect_close(device_values(x), scaled, 1e-6, 1e-7, "scale");
  EXPECT_THROW(cuda::add_into(x, cuda::empty(DType::f32, {n + 1})), Error);
}

// Every activation, plain and gated ([M, 2F]: gate in the first F columns, up in the last
// F), into f32, bf16 and f16.
TEST(CudaCommon, ActivationsPlainAndGated) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t M = 7, F = 601, n = M * F;
  const auto a = uniform(rng, n, -4.f, 4.f), b = uniform(rng, n, -4.f, 4.f);
  std::vector<float> gu(2 * n);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t j = 0; j < F; ++j) {
      gu[m * 2 * F + j] = a[m * F + j];
      gu[m * 2 * F + F + j] = b[m * F + j];
    }
  for (auto [act, kind] : {std::pair{Activation::silu, 0}, {Activation::gelu_tanh, 1}, {Activation::relu2, 2}}) {
    std::vector<double> plain(n), gated(n);
    for (int64_t i = 0; i < n; ++i) {
      plain[i] = ref::act(kind, a[i]);
      gated[i] = plain[i] * b[i];
    }
    for (DType dt : {DType::f32, DType::bf16, DType::f16}) {
      // f32: fast exp / tanh, a few ulp of values up to 16; bf16 / f16: one rounding.
      const double tol = dt == DType::f32 ? 2e-6 : dt == DType::bf16 ? 4e-3 : 1e-3;
      const std::string what = "activation " + std::to_string(kind) + " into " + std::string(dtype_name(dt));
      const Tensor y = poisoned_device_tensor(dt, {M, F});
      cuda::activation(act, device_f32(a, {M, F}), y);
      expect_close(device_values(y), plain, tol, 1e-6, what);
      const Tensor g = poisoned_device_tensor(dt, {M, F});
      cuda::gated_activation(act, device_f32(gu, {M, 2 * F}), g);
      expect_close(device_values(g), gated, tol, 1e-6, "gated " + what);
    }
  }
  EXPECT_THROW(cuda::activation(Activation::silu, device_f32(a, {n}), cuda::empty(DType::f32, {n + 1})), Error);
  EXPECT_THROW(cuda::gated_activation(Activation::silu, device_f32(gu, {M, 2 * F}), cuda::empty(DType::f32, {M, F + 1})),
               Error);
  EXPECT_THROW(cuda::gated_activation(Activation::silu, device_f32(gu, {2 * M, F}), cuda::empty(DType::i32, {2 * M, F / 2})),
               Error);
}

// A mixture of experts' row traffic: rows gathered in any order (repeats allowed) in f32
// and bf16, and weighted rows added into distinct rows of an output.
TEST(CudaCommon, GatherAndScatterAddRows) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t R = 19, W = 37, n = 11;
  const auto src = uniform(rng, R * W, -2.f, 2.f), rows = uniform(rng, n * W, -2.f, 2.f),
             base = uniform(rng, R * W, -2.f, 2.f), weights = uniform(rng, n, 0.f, 1.f);
  std::vector<int32_t> gather_index(n), scatter_index(R);
  for (auto& i : gather_index) i = static_cast<int32_t>(rng() % R);
  std::iota(scatter_index.begin(), scatter_index.end(), 0);
  std::shuffle(scatter_index.begin(), scatter_index.end(), rng);
  scatter_index.resize(n);
  const auto device_i32 = [](const std::vector<int32_t>& v) {
    Tensor t = Tensor::empty(DType::i32, {static_cast<int64_t>(v.size())});
    std::copy(v.begin(), v.end(), t.mutable_data<int32_t>());
    return cuda::to_device(t);
  };
  const Tensor gi = device_i32(gather_index), si = device_i32(scatter_index);

  for (DType dt : {DType::f32, DType::bf16}) {
    Tensor s = device_f32(src, {R, W});
    if (dt != DType::f32) {
      s = cuda::empty(dt, {R, W});
      cuda::convert(device_f32(src, {R, W}), s);
    }
    const Tensor out = poisoned_device_tensor(dt, {n, W});
    cuda::gather_rows(s, gi, out);
    std::vector<double> want(n * W);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < W; ++j) {
        const float v = src[gather_index[i] * W + j];
        want[i * W + j] = dt == DType::f32 ? v : to_float(to_bf16(v));
      }
    expect_close(device_values(out), want, 0, 0, "gather_rows");
  }

  const Tensor dst = device_f32(base, {R, W});
  cuda::scatter_add_rows(device_f32(rows, {n, W}), si, device_f32(weights, {n}), dst);
  std::vector<double> want(base.begin(), base.end());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < W; ++j) want[scatter_index[i] * W + j] += double{weights[i]} * rows[i * W + j];
  expect_close(device_values(dst), want, 1e-6, 1e-6, "scatter_add_rows");

  EXPECT_THROW(cuda::gather_rows(device_f32(src, {R, W}), gi, cuda::empty(DType::f32, {n, W + 1})), Error);
  EXPECT_THROW(cuda::gather_rows(device_f32(src, {R, W}), gi, cuda::empty(DType::bf16, {n, W})), Error);
  EXPECT_THROW(cuda::scatter_add_rows(device_f32(rows, {n, W}), si, cuda::empty(DType::f32, {n - 1}), dst), Error);
  EXPECT_THROW(cuda::scatter_add_rows(device_f32(rows, {n, W}), gi.slice(0, 0, n - 1), device_f32(weights, {n}), dst),
               Error);
}

// The residual add fused into RMSNorm (x += r, then y = norm(x)), with a bf16 output.
TEST(CudaCommon, RmsNormWithResidualAndBf16Output) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t rows = 5, n = 771;
  const auto x = uniform(rng, rows * n, -2.f, 2.f), r = uniform(rng, rows * n, -2.f, 2.f), w = uniform(rng, n);
  std::vector<double> summed(x.size());
  for (size_t i = 0; i < x.size(); ++i) summed[i] = static_cast<double>(x[i]) + r[i];
  const std::vector<double> want = ref::rms_norm(summed, {w.begin(), w.end()}, 1e-6, n);
  for (DType dt : {DType::f32, DType::bf16}) {
    const Tensor dx = device_f32(x, {rows, n}), y = poisoned_device_tensor(dt, {rows, n});
    cuda::rms_norm(dx, device_f32(w, {n}), 1e-6f, y, device_f32(r, {rows, n}));
    expect_close(device_values(dx), summed, 1e-7, 1e-7, "x + residual written back");
    expect_close(device_values(y), want, dt == DType::f32 ? 2e-5 : 4e-3, 1e-6, "normalised sum");
  }
  const Tensor dx = device_f32(x, {rows, n});
  EXPECT_THROW(cuda::rms_norm(dx, device_f32(w, {n}), 1e-6f, dx, device_f32(r, {rows, n})), Error);
}

// rope over a head range of a fused q/k/v buffer (strided tokens) leaves the rest alone.
TEST(CudaCommon, RopeOnHeadRangeOfFusedBuffer) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t T = 9, H = 6, rotated = 4, Dh = 64;
  const auto x = uniform(rng, static_cast<size_t>(T * H * Dh));
  Tensor hp = Tensor::empty(DType::i32, {T});
  std::vector<int32_t> pos(T);
  for (int64_t t = 0; t < T; ++t) hp.mutable_data<int32_t>()[t] = pos[t] = static_cast<int32_t>(40 + 3 * t);
  const Tensor dx = device_f32(x, {T, H, Dh});
  RopeSpec spec;
  spec.rotary_dim = 48;
  cuda::rope(dx.slice(1, 0, rotated), cuda::to_device(hp), cuda::upload(rope_table(spec)));
  std::vector<double> head_rows, want(x.begin(), x.end());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < rotated; ++h)
      for (int64_t j = 0; j < Dh; ++j) head_rows.push_back(x[(t * H + h) * Dh + j]);
  const std::vector<double> rot = ref::rope(head_rows, pos, rotated, Dh, 10000.0, 48);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < rotated; ++h)
      for (int64_t j = 0; j < Dh; ++j) want[(t * H + h) * Dh + j] = rot[(t * rotated + h) * Dh + j];
  expect_close(device_values(dx), want, 1e-6, 1e-6, "rope on heads [0, 4) of 6");
}

// Mamba-2's dt: clamp(softplus(x + bias)) from a column range of a wider buffer, both
// sides of torch's softplus threshold (20) and of the clamp.
TEST(CudaCommon, SoftplusClampFromColumnRange) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t R = 13, W = 30, c0 = 7, H = 9;
  const auto x = uniform(rng, R * W, -30.f, 30.f), bias = uniform(rng, H, -2.f, 2.f);
  const float lo = 0.01f, hi = 15.f;
  std::vector<double> want(R * H);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t h = 0; h < H; ++h) {
      const double v = static_cast<double>(x[r * W + c0 + h]) + bias[h];
      want[r * H + h] = std::clamp(v > 20 ? v : std::log1p(std::exp(v)), double{lo}, double{hi});
    }
  const Tensor y = poisoned_device_tensor(DType::f32, {R, H});
  cuda::softplus_clamp(device_f32(x, {R, W}).slice(1, c0, c0 + H), device_f32(bias, {H}), lo, hi, y);
  expect_close(device_values(y), want, 1e-5, 1e-7, "softplus_clamp");
  EXPECT_THROW(cuda::softplus_clamp(device_f32(x, {R, W}), device_f32(bias, {H}), lo, hi, y), Error);
  EXPECT_THROW(cuda::softplus_clamp(device_f32(x, {R, W}).slice(1, 0, H), device_f32(bias, {H}), hi, lo, y), Error);
}

// Mamba-2's gated RMSNorm over groups: v = x * silu(z), normalised per group; z read from
// a column range, outputs f32 and bf16, in place on x too.
TEST(CudaCommon, GatedRmsNormOverGroups) {
  SUBQ_REQUIRE_GPU();
  auto rng = rng_for_test();
  const int64_t R = 6, I = 96, group = 24, Wz = 150, z0 = 11;
  const auto x = uniform(rng, R * I, -3.f, 3.f), z = uniform(rng, R * Wz, -4.f, 4.f), w = uniform(rng, I);
  std::vector<double> want(R * I);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t g0 = 0; g0 < I; g0 += group) {
      double ss = 0;
      std::vector<double> v(group);
      for (int64_t i = 0; i < group; ++i) {
        v[i] = x[r * I + g0 + i] * ref::silu(z[r * Wz + z0 + g0 + i]);
        ss += v[i] * v[i];
      }
      const double inv = 1.0 / std::sqrt(ss / group + 1e-5);
      for (int64_t i = 0; i < group; ++i) want[r * I + g0 + i] = v[i] * inv * w[g0 + i];
    }
  const Tensor zd = device_f32(z, {R, Wz}).slice(1, z0, z0 + I), wd = device_f32(w, {I});
  for (DType dt : {DType::f32, DType::bf16}) {
    const Tensor y = poisoned_device_tensor(dt, {R, I});
    cuda::gated_rms_norm(device_f32(x, {R, I}), zd, wd, group, 1e-5f, y);
    expect_close(device_values(y), want, dt == DType::f32 ? 2e-5 : 4e-3, 1e-6, "gated_rms_norm");
  }
  const Tensor inplace = device_f32(x, {R, I});
  cuda::gated_rms_norm(inplace, zd, wd, group, 1e-5f, inplace);
  expect_close(device_values(inplace), want, 2e-5, 1e-6, "gated_rms_norm in place");
  EXPECT_THROW(cuda::gated_rms_norm(device_f32(x, {R, I}), zd, wd, 25, 1e-5f, inplace), Error);
}

}  // namespace
}  // namespace subq::test

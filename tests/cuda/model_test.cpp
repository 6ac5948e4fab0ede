// The GPU decoder (Model::load with device "cuda") on the transformers fixtures of
// tests/models: logits against transformers' at every prompt position, and against
// itself across prompt chunking, decoding over a growing cache, and state files moved
// between the GPU and the CPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>

#include "subq/model.h"
#include "tests/cuda/cuda_test.h"
#include "tests/support/model_fixtures.h"

namespace subq {
namespace {

LoadOptions on(const std::string& device) {
  LoadOptions o;
  o.device = device;
  return o;
}

double max_abs(const std::vector<std::vector<double>>& rows) {
  double m = 0;
  for (const auto& r : rows)
    for (double v : r) m = std::max(m, std::abs(v));
  return m;
}

std::vector<double> row(const Tensor& logits, int64_t r) {
  const int64_t V = logits.dim(1);
  const float* p = logits.data<float>() + r * V;
  return {p, p + V};
}

// Attention reads q, k and v rounded to bf16 and Mamba-2's SSD x, B and C (the
// tensor-core kernels), and bf16 checkpoints round every matmul's activations to bf16 as
// transformers does on a GPU: 2% of the logit scale. An f32 Mamba runs in f32 throughout
// (fast exp2 in the scan).
double tolerance(const std::string& name) { return name == "mamba" ? 1e-3 : 2e-2; }

class CudaFixture : public testing::TestWithParam<std::string> {};

TEST_P(CudaFixture, LogitsMatchTransformersAndDecodeMatchesPrefill) {
  SUBQ_REQUIRE_GPU();
  const std::string name = GetParam();
  const double tol = tolerance(name);
  auto model = Model::load(test::kModelFixtures + name, on("cuda"));
  const int64_t V = model->info().vocab_size;
  for (const test::FixturePrompt& p : test::fixture_prompts(name)) {
    const int64_t T = static_cast<int64_t>(p.ids.size()), G = static_cast<int64_t>(p.greedy.size());
    const double scale = max_abs(p.logits);
    auto state = model->new_state();
    Tensor logits = test::nan_tensor({T, V});
    model->forward(p.ids, *state, logits);
    std::vector<double> want;
    for (const auto& r : p.logits) want.insert(want.end(), r.begin(), r.end());
    test::expect_close(logits, want, tol, tol * scale, name + " prompt logits");

    // The prompt in chunks of 3, then G tokens decoded one at a time (the GPU's own
    // greedy choices): each step's logits equal those of one prefill over the whole
    // sequence at that position.
    auto s2 = model->new_state();
    Tensor last = test::nan_tensor({1, V});
    for (int64_t t0 = 0; t0 < T; t0 += 3) {
      const int64_t n = std::min<int64_t>(3, T - t0);
      model->forward(std::span<const int32_t>(p.ids.data() + t0, static_cast<size_t>(n)), *s2, last);
    }
    std::vector<int32_t> seq = p.ids;
    std::vector<std::vector<double>> stepped{row(last, 0)};
    for (int64_t i = 0; i < G; ++i) {
      seq.push_back(test::argmax(last.data<float>(), V));
      last = test::nan_tensor({1, V});
      model->forward(std::span<const int32_t>(&seq.back(), 1), *s2, last);
      stepped.push_back(row(last, 0));
    }
    EXPECT_EQ(s2->position(), T + G);
    Tensor whole = test::nan_tensor({T + G, V});
    model->forward(seq, *model->new_state(), whole);
    for (int64_t i = 0; i <= G; ++i)
      test::expect_close(test::tensor_from(std::vector<float>(stepped[i].begin(), stepped[i].end()), {V}), row(whole, T - 1 + i),
                         1e-2, 1e-2 * scale, name + " decode step " + std::to_string(i));
  }
}

// A state saved on the GPU continues the same on the GPU and on the CPU (with the bf16 KV
// cache the GPU keeps), and a CPU state continues on the GPU.
TEST_P(CudaFixture, StateFilesMoveBetweenDevices) {
  SUBQ_REQUIRE_GPU();
  const std::string name = GetParam();
  LoadOptions cpu_options = on("cpu");
  cpu_options.kv_cache = "bf16";
  auto gpu = Model::load(test::kModelFixtures + name, on("cuda"));
  auto cpu = Model::load(test::kModelFixtures + name, cpu_options);
  const test::FixturePrompt p = test::fixture_prompts(name)[0];
  const int64_t V = gpu->info().vocab_size;
  const double scale = max_abs(p.logits), tol = tolerance(name);
  const std::vector<int32_t> prompt(p.ids.begin(), p.ids.end() - 1);
  const std::span<const int32_t> next(&p.ids.back(), 1);
  const std::string path = testing::TempDir() + "subq_cuda_state_" + name + ".safetensors";

  auto gs = gpu->new_state();
  Tensor scratch = test::nan_tensor({1, V}), want = test::nan_tensor({1, V});
  gpu->forward(prompt, *gs, scratch);
  gpu->save_state(*gs, path);
  gpu->forward(next, *gs, want);

  Tensor got = test::nan_tensor({1, V});
  auto reloaded = gpu->load_state(path);
  EXPECT_EQ(reloaded->position(), static_cast<int64_t>(prompt.size()));
  gpu->forward(next, *reloaded, got);
  test::expect_close(got, row(want, 0), 1e-6, 1e-6 * scale, name + " GPU -> GPU");

  Tensor on_cpu = test::nan_tensor({1, V});
  auto cs = cpu->load_state(path);
  cpu->forward(next, *cs, on_cpu);
  test::expect_close(on_cpu, row(want, 0), tol, tol * scale, name + " GPU -> CPU");

  auto cs2 = cpu->new_state();
  cpu->forward(prompt, *cs2, scratch);
  cpu->save_state(*cs2, path);
  Tensor from_cpu = test::nan_tensor({1, V});
  auto gs2 = gpu->load_state(path);
  gpu->forward(next, *gs2, from_cpu);
  test::expect_close(from_cpu, row(want, 0), tol, tol * scale, name + " CPU -> GPU");
}

INSTANTIATE_TEST_SUITE_P(Models, CudaFixture,
                         testing::Values("llama", "llama_tied_bf16", "llama_rope_llama3", "llama_rope_yarn",
                                         "llama_rope_linear", "llama_bias", "mamba", "mamba_bias_bf16", "mamba2",
                                         "bamba", "nemotron_h", "nemotron_h_moe", "jamba"));

// One-token steps replay a captured CUDA graph; a KV cache that grows (capacity 256, then
// 512) forces an eager step and a new capture. Each step equals the eager decoder's (the
// same kernels) and one prefill over the whole sequence. A third run reserves room for
// every step after the prompt (ModelState::reserve copies the cached keys into the larger
// cache once) and must give the same steps. The mixtures of experts route their steps on
// the GPU (inside the graph).
class CudaGraphDecode : public testing::TestWithParam<std::string> {};

TEST_P(CudaGraphDecode, AcrossCacheGrowthMatchesEagerAndPrefill) {
  SUBQ_REQUIRE_GPU();
  auto rng = test::rng_for_test();
  const std::string dir = test::kModelFixtures + GetParam();
  auto graphed = Model::load(dir, on("cuda"));
  setenv("SUBQ_CUDA_GRAPHS", "0", 1);
  auto eager = Model::load(dir, on("cuda"));
  unsetenv("SUBQ_CUDA_GRAPHS");
  const int64_t V = graphed->info().vocab_size, prompt = 250, steps = 12;
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(V - 1));
  std::vector<int32_t> seq(static_cast<size_t>(prompt + steps));
  for (auto& t : seq) t = id(rng);
  std::vector<std::vector<std::vector<double>>> stepped(3);
  for (int m = 0; m < 3; ++m) {
    const Model& model = m == 1 ? *eager : *graphed;
    auto state = model.new_state();
    Tensor last = test::nan_tensor({1, V});
    model.forward(std::span<const int32_t>(seq.data(), static_cast<size_t>(prompt)), *state, last);
    if (m == 2) state->reserve(prompt + steps);
    for (int64_t i = 0; i < steps; ++i) {
      last = test::nan_tensor({1, V});
      model.forward(std::span<const int32_t>(&seq[static_cast<size_t>(prompt + i)], 1), *state, last);
      stepped[m].push_back(row(last, 0));
    }
    EXPECT_EQ(state->position(), prompt + steps);
  }
  Tensor whole = test::nan_tensor({prompt + steps, V});
  graphed->forward(seq, *graphed->new_state(), whole);
  double scale = 0;
  for (int64_t i = 0; i < whole.numel(); ++i) scale = std::max(scale, std::abs(double{whole.data<float>()[i]}));
  for (int64_t i = 0; i < steps; ++i) {
    const std::vector<float> g(stepped[0][i].begin(), stepped[0][i].end());
    test::expect_close(test::tensor_from(g, {V}), stepped[1][i], 1e-6, 1e-6 * scale, "graph vs eager step " + std::to_string(i));
    test::expect_close(test::tensor_from(g, {V}), stepped[2][i], 1e-6, 1e-6 * scale,
                       "graph vs reserved graph step " + std::to_string(i));
    test::expect_close(test::tensor_from(g, {V}), row(whole, prompt + i), 1e-2, 1e-2 * scale,
                       "graph step vs prefill " + std::to_string(i));
  }
}

INSTANTIATE_TEST_SUITE_P(Models, CudaGraphDecode, testing::Values("llama", "jamba", "nemotron_h_moe"));

// A sparse prefill policy on the GPU applies the mask the CPU mixer builds, from the same
// rotated queries and keys (the dynamic selectors on the GPU, BigBird on the CPU): the
// prompt's logits agree with the CPU's under the same policy, and differ from dense
// attention's. FlexPrefill runs query-aware (tau 1) and vertical-slash (tau 0) heads; the
// tiny model's near-uniform attention spreads its verticals over every block unless
// gamma is small.
//
// Each device builds a layer's mask from its own activations, and in this random model
// the blocks' scores nearly tie, so rounding can pick another block of one query block's
// row in a later layer (seen with SUBQ_TEST_SEED=1796388247920517781: FlexPrefill's
// layer-1 masks differed in one row, same block count, while the attention kernels agreed
// to bf16 rounding on equal masks). Such a swap moves that query block's rows and barely
// the rest, so up to one block of rows (64) may differ; a wrong or missing mask moves
// many.
TEST(CudaModel, SparsePromptsMatchTheCpu) {
  SUBQ_REQUIRE_GPU();
  auto rng = test::rng_for_test();
  const std::string dir = test::kModelFixtures + "llama";
  auto dense = Model::load(dir, on("cuda"));
  const int64_t V = dense->info().vocab_size, T = 300;
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(V - 1));
  std::vector<int32_t> ids(static_cast<size_t>(T));
  for (auto& t : ids) t = id(rng);
  Tensor want_dense = test::nan_tensor({T, V});
  dense->forward(ids, *dense->new_state(), want_dense);
  for (const char* spec : {"moba:top_k=2", "hip:top_k=2", "bigbird:random=1,seed=3", "xattention:threshold=0.5",
                           "flexprefill:gamma=0.3,tau=1", "flexprefill:gamma=0.01,tau=0"}) {
    SCOPED_TRACE(spec);
    LoadOptions gpu = on("cuda"), cpu = on("cpu");
    gpu.sparse = cpu.sparse = spec;
    cpu.kv_cache = "bf16";
    auto g = Model::load(dir, gpu), c = Model::load(dir, cpu);
    Tensor got = test::nan_tensor({T, V}), want = test::nan_tensor({T, V});
    g->forward(ids, *g->new_state(), got);
    c->forward(ids, *c->new_state(), want);
    double scale = 0, off_dense = 0;
    for (int64_t i = 0; i < T * V; ++i) {
      scale = std::max(scale, std::abs(double{want.data<float>()[i]}));
      off_dense = std::max(off_dense, std::abs(double{got.data<float>()[i]} - want_dense.data<float>()[i]));
    }
    int64_t rows_off = 0;
    for (int64_t t = 0; t < T; ++t) {
      bool off = false;
      for (int64_t j = t * V; j < (t + 1) * V; ++j) {
        ASSERT_TRUE(std::isfinite(got.data<float>()[j])) << "logit " << j;
        const double w = want.data<float>()[j];
        off |= std::abs(got.data<float>()[j] - w) > 2e-2 * (scale + std::abs(w));
      }
      rows_off += off;
    }
    EXPECT_LE(rows_off, 64) << "rows of logits off the CPU's under the policy";
    EXPECT_GT(off_dense, 1e-3 * scale) << "the policy's mask changed nothing";
  }
}

// The window policy (sinks + sliding window) keeps a ring of keys on the GPU: a long
// prompt, a chunk that wraps the ring, decode steps (captured graphs) that wrap it again
// and a chunk read back from the wrapped ring all give the CPU's logits under the same
// policy, and state files move between the devices mid-sequence.
TEST(CudaModel, WindowPolicyRingMatchesTheCpu) {
  SUBQ_REQUIRE_GPU();
  auto rng = test::rng_for_test();
  const std::string dir = test::kModelFixtures + "llama";
  for (const char* spec : {"window:window=70,sinks=4", "window:window=16,sinks=0"}) {
    SCOPED_TRACE(spec);
    LoadOptions gpu = on("cuda"), cpu = on("cpu");
    gpu.sparse = cpu.sparse = spec;
    cpu.kv_cache = "bf16";
    auto g = Model::load(dir, gpu), c = Model::load(dir, cpu);
    const int64_t V = g->info().vocab_size;
    std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(V - 1));
    std::vector<int32_t> seq(400);
    for (auto& t : seq) t = id(rng);
    auto gs = g->new_state(), cs = c->new_state();
    size_t at = 0;
    // Feeds the next n tokens to both and compares every row of logits.
    const auto both = [&](ModelState& on_gpu, ModelState& on_cpu, int64_t n, const std::string& what) {
      const std::span<const int32_t> ids(seq.data() + at, static_cast<size_t>(n));
      Tensor got = test::nan_tensor({n, V}), want = test::nan_tensor({n, V});
      g->forward(ids, on_gpu, got);
      c->forward(ids, on_cpu, want);
      double scale = 0;
      for (int64_t i = 0; i < n * V; ++i) scale = std::max(scale, std::abs(double{want.data<float>()[i]}));
      test::expect_close(got, test::to_double(want), 2e-2, 2e-2 * scale, what);
    };
    both(*gs, *cs, 150, "prompt");
    at += 150;
    both(*gs, *cs, 37, "chunk");
    at += 37;
    for (int i = 0; i < 100; ++i, ++at) both(*gs, *cs, 1, "step " + std::to_string(i));
    both(*gs, *cs, 5, "chunk after the steps");
    at += 5;

    const std::string path = testing::TempDir() + "subq_cuda_window_state.safetensors";
    g->save_state(*gs, path);
    auto on_cpu = c->load_state(path);
    c->save_state(*cs, path);
    auto on_gpu = g->load_state(path);
    EXPECT_EQ(on_gpu->position(), static_cast<int64_t>(at));
    both(*on_gpu, *on_cpu, 7, "GPU state on the CPU and CPU state on the GPU");
    at += 7;
    both(*on_gpu, *on_cpu, 1, "a step after the move");
  }
}

}  // namespace
}  // namespace subq

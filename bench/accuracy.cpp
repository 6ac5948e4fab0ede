#include "bench/accuracy.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <utility>

#include "src/ops/attention/flash.h"
#include "src/ops/attention/selectors/selector_spec.h"

namespace subq::bench {
namespace {

struct AccuracyInput {
  std::string name;
  Tensor q, k, v;  // [1, T, H, Dh]
  std::vector<std::pair<int64_t, int64_t>> needles;  // (query, key) pairs planted, head 0
};

attn::AttentionArgs args_of(const AccuracyInput& in, const Tensor& o) {
  attn::AttentionArgs a;
  a.q_len = in.q.dim(1);
  a.q_heads = in.q.dim(2);
  a.head_dim = in.q.dim(3);
  a.kv_len = in.k.dim(1);
  a.kv_heads = in.k.dim(2);
  a.q = in.q.data<float>();
  a.q_row_stride = a.q_heads * a.head_dim;
  a.k = in.k.data<float>();
  a.v = in.v.data<float>();
  a.k_row_stride = a.v_row_stride = a.kv_heads * a.head_dim;
  a.o = o.mutable_data<float>();
  a.o_row_stride = a.q_row_stride;
  a.scale = 1.f / std::sqrt(static_cast<float>(a.head_dim));
  return a;
}

// Structured synthetic attention inputs. Every query and key is noise plus:
//   local decay: a smooth random walk shared by q_t and k_t, so nearby keys score higher;
//   sinks: keys 0..3 carry a direction g that every query carries too;
//   vertical lines: a few random keys also carry g;
//   slash lines: q_t and k_{t-d} share a per-position vector for two offsets d;
//   needles: for pairs (i, j) far apart, q_i and k_j share a strong private direction.
AccuracyInput synthetic_input(const AccuracyOptions& o) {
  const int64_t T = o.seq, H = o.heads, Hkv = std::max<int64_t>(1, o.heads / 2), Dh = o.head_dim;
  std::mt19937_64 rng(o.seed);
  std::normal_distribution<float> n01(0.f, 1.f);
  auto unit = [&] {
    std::vector<float> u(static_cast<size_t>(Dh));
    double norm = 0;
    for (float& x : u) {
      x = n01(rng);
      norm += static_cast<double>(x) * x;
    }
    for (float& x : u) x = static_cast<float>(x / std::sqrt(norm));
    return u;
  };
  AccuracyInput in;
  in.name = "synthetic";
  in.q = Tensor::empty(DType::f32, Shape{1, T, H, Dh});
  in.k = Tensor::empty(DType::f32, Shape{1, T, Hkv, Dh});
  in.v = Tensor::empty(DType::f32, Shape{1, T, Hkv, Dh});
  float* q = in.q.mutable_data<float>();
  float* k = in.k.mutable_data<float>();
  float* v = in.v.mutable_data<float>();
  for (int64_t i = 0; i < T * H * Dh; ++i) q[i] = 0.25f * n01(rng);
  for (int64_t i = 0; i < T * Hkv * Dh; ++i) k[i] = 0.25f * n01(rng), v[i] = n01(rng);
  const float sd = std::sqrt(static_cast<float>(Dh));  // direction strength in logit units
  const int64_t group = H / Hkv;
  auto add = [&](float* base, int64_t heads, int64_t t, int64_t h, const std::vector<float>& dir, float w) {
    for (int64_t x = 0; x < Dh; ++x) base[(t * heads + h) * Dh + x] += w * dir[static_cast<size_t>(x)];
  };
  for (int64_t hk = 0; hk < Hkv; ++hk) {
    std::vector<float> walk(static_cast<size_t>(Dh), 0.f);
    const auto g = unit();
    for (int64_t t = 0; t < T; ++t) {
      for (float& w : walk) w = 0.98f * w + 0.2f * n01(rng);
      add(k, Hkv, t, hk, walk, 0.6f);
      for (int64_t r = 0; r < group; ++r) {
        add(q, H, t, hk * group + r, walk, 0.6f);
        add(q, H, t, hk * group + r, g, 0.5f * std::sqrt(sd));
      }
    }
    for (int64_t t = 0; t < std::min<int64_t>(4, T); ++t) add(k, Hkv, t, hk, g, 4.f * std::sqrt(sd));
    std::uniform_int_distribution<int64_t> pos(0, T - 1);
    for (int line = 0; line < 4; ++line) add(k, Hkv, pos(rng), hk, g, 3.f * std::sqrt(sd));
    for (int64_t d : {int64_t{17}, T / 3}) {
      for (int64_t t = d; t < T; ++t) {
        const auto z = unit();
        add(k, Hkv, t - d, hk, z, std::sqrt(sd));
        for (int64_t r = 0; r < group; ++r) add(q, H, t, hk * group + r, z, std::sqrt(sd));
      }
    }
  }
  std::uniform_int_distribution<int64_t> pos(0, T - 1);
  for (int n = 0; n < 32 && T > 8; ++n) {
    int64_t i = pos(rng), j = pos(rng);
    if (i < j) std::swap(i, j);
    if (i - j < T / 8) continue;
    const auto u = unit();
    for (int64_t hk = 0; hk < Hkv; ++hk) add(k, Hkv, j, hk, u, 3.f * std::sqrt(sd));
    for (int64_t h = 0; h < H; ++h) add(q, H, i, h, u, 3.f * std::sqrt(sd));
    in.needles.push_back({i, j});
  }
  return in;
}

struct Score {
  double density = 0, recall = 0, rel_err = 0, needle_hits = -1;
};

Score score(const AccuracyInput& in, const attn::SelectorSpec& spec, const Tensor& dense_out, int64_t sampled_rows) {
  const int64_t T = in.q.dim(1), H = in.q.dim(2), Dh = in.q.dim(3), Hkv = in.k.dim(2);
  attn::SelectorSpec s = spec;
  if (s.kind == "neighborhood") {
    s.nbhd.ndim = 1;
    s.nbhd.grid[0] = T;
    s.nbhd.causal[0] = true;
    s.nbhd.kernel[0] = std::min(s.nbhd.kernel[0], T);
  }
  const Tensor out = Tensor::empty(DType::f32, in.q.shape());
  const attn::AttentionArgs a = args_of(in, out);
  const attn::BlockMask m = attn::build_mask(s, attn::MaskGeometry{T, T, 0, 64, 64, H, nullptr}, a);
  attn::flash_attention(a, m);
  auto allowed = [&](int64_t h, int64_t i, int64_t j) {
    const auto row = m.row(0, h, i / m.q_block);
    return std::binary_search(row.begin(), row.end(), static_cast<int32_t>(j / m.k_block)) && m.rule.allows(i, j);
  };
  Score sc;
  sc.density = m.density();
  double num = 0, den = 0;
  const float* got = out.data<float>();
  const float* want = dense_out.data<float>();
  for (int64_t i = 0; i < out.numel(); ++i) {
    num += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  sc.rel_err = std::sqrt(num / std::max(den, 1e-300));
  const int64_t rows = std::min(sampled_rows, T);
  std::vector<double> logit(static_cast<size_t>(T));
  double recall = 0;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = rows == 1 ? T - 1 : r * (T - 1) / (rows - 1);
      const float* qi = in.q.data<float>() + (i * H + h) * Dh;
      double mx = -INFINITY, total = 0, inside = 0;
      for (int64_t j = 0; j <= i; ++j) {
        const float* kj = in.k.data<float>() + (j * Hkv + h / (H / Hkv)) * Dh;
        double d = 0;
        for (int64_t x = 0; x < Dh; ++x) d += static_cast<double>(qi[x]) * kj[x];
        mx = std::max(mx, logit[static_cast<size_t>(j)] = d * a.scale);
      }
      for (int64_t j = 0; j <= i; ++j) {
        const double p = std::exp(logit[static_cast<size_t>(j)] - mx);
        total += p;
        if (allowed(h, i, j)) inside += p;
      }
      recall += inside / total;
    }
  sc.recall = recall / static_cast<double>(H * rows);
  if (!in.needles.empty()) {
    int64_t hits = 0;
    for (int64_t h = 0; h < H; ++h)
      for (const auto& [i, j] : in.needles) hits += allowed(h, i, j);
    sc.needle_hits = static_cast<double>(hits) / static_cast<double>(H * static_cast<int64_t>(in.needles.size()));
  }
  return sc;
}

}  // namespace

std::vector<std::string> default_accuracy_sweep() {
  return {"window:window=256,sinks=0", "window:window=256,sinks=4", "window:window=1024,sinks=4",
          "bigbird:global=1,window_blocks=1,random=2", "power:local=1,sink_blocks=1",
          "neighborhood:grid=1,kernel=255", "moba:top_k=2", "moba:top_k=4", "moba:top_k=8",
          "flexprefill:gamma=0.8", "flexprefill:gamma=0.9", "flexprefill:gamma=0.95",
          "xattention:threshold=0.8", "xattention:threshold=0.9", "xattention:threshold=0.95",
          "hip:top_k=2", "hip:top_k=4", "hip:top_k=8"};
}

Tensor read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("npy: cannot open " + path);
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw Error("npy: " + path + " is not a .npy file");
  const int major = static_cast<unsigned char>(magic[6]);
  uint32_t header_len = 0;
  if (major == 1) {
    unsigned char b[2];
    if (!f.read(reinterpret_cast<char*>(b), 2)) throw Error("npy: " + path + ": truncated header");
    header_len = static_cast<uint32_t>(b[0] | (b[1] << 8));
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    if (!f.read(reinterpret_cast<char*>(b), 4)) throw Error("npy: " + path + ": truncated header");
    header_len = static_cast<uint32_t>(b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24));
  } else {
    throw Error("npy: " + path + ": unsupported format version " + std::to_string(major));
  }
  if (header_len > (1u << 20)) throw Error("npy: " + path + ": header of " + std::to_string(header_len) + " bytes");
  std::string header(header_len, '\0');
  if (!f.read(header.data(), header_len)) throw Error("npy: " + path + ": truncated header");
  auto field = [&](const std::string& key) {
    const size_t at = header.find("'" + key + "'");
    if (at == std::string::npos) throw Error("npy: " + path + ": header lacks " + key);
    return header.substr(header.find(':', at) + 1);
  };
  const std::string descr = field("descr");
  const bool f4 = descr.find("'<f4'") != std::string::npos, f8 = descr.find("'<f8'") != std::string::npos;
  if (!f4 && !f8) throw Error("npy: " + path + ": dtype must be little-endian float32 or float64");
  if (field("fortran_order").find("True") < field("fortran_order").find(',')) throw Error("npy: " + path + ": Fortran order");
  const std::string shape_text = field("shape");
  const std::string dims = shape_text.substr(shape_text.find('(') + 1, shape_text.find(')') - shape_text.find('(') - 1);
  std::vector<int64_t> shape;
  size_t p = 0;
  while (p < dims.size()) {
    while (p < dims.size() && (dims[p] == ' ' || dims[p] == ',')) ++p;
    if (p >= dims.size()) break;
    size_t used = 0;
    const long long d = std::stoll(dims.substr(p), &used);
    if (d < 1 || d > (1ll << 31)) throw Error("npy: " + path + ": bad dimension " + std::to_string(d));
    shape.push_back(d);
    p += used;
  }
  if (shape.size() != 3) throw Error("npy: " + path + ": expected a 3-D [T, H, Dh] array, found " + shape_text);
  const int64_t n = shape[0] * shape[1] * shape[2];
  Tensor t = Tensor::empty(DType::f32, Shape{1, shape[0], shape[1], shape[2]});
  float* out = t.mutable_data<float>();
  if (f4) {
    if (!f.read(reinterpret_cast<char*>(out), static_cast<std::streamsize>(n * 4)))
      throw Error("npy: " + path + ": payload shorter than " + std::to_string(n) + " float32 values");
  } else {
    std::vector<double> buf(static_cast<size_t>(n));
    if (!f.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(n * 8)))
      throw Error("npy: " + path + ": payload shorter than " + std::to_string(n) + " float64 values");
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(buf[static_cast<size_t>(i)]);
  }
  return t;
}

int run_accuracy(const AccuracyOptions& o) {
  if (o.seq < 2 || o.heads < 1 || o.head_dim < 1) throw Error("accuracy: seq >= 2, heads >= 1, head_dim >= 1 required");
  std::vector<attn::SelectorSpec> specs;
  for (const auto& text : o.selectors.empty() ? default_accuracy_sweep() : o.selectors)
    specs.push_back(attn::parse_selector(text));
  std::vector<AccuracyInput> inputs;
  inputs.push_back(synthetic_input(o));
  const int given = !o.q_path.empty() + !o.k_path.empty() + !o.v_path.empty();
  if (given != 0 && given != 3) throw Error("accuracy: give all of --q, --k and --v, or none");
  if (given == 3) {
    AccuracyInput f;
    f.name = "npy";
    f.q = read_npy(o.q_path);
    f.k = read_npy(o.k_path);
    f.v = read_npy(o.v_path);
    if (!(f.k.shape() == f.v.shape()) || f.k.dim(1) != f.q.dim(1) || f.k.dim(3) != f.q.dim(3) ||
        f.q.dim(2) % f.k.dim(2) != 0)
      throw Error("accuracy: q " + f.q.str() + ", k " + f.k.str() + ", v " + f.v.str() +
                  " must share T and Dh, with k/v heads dividing q heads");
    inputs.push_back(std::move(f));
  }
  for (const AccuracyInput& in : inputs) {
    std::printf("input %s: T=%lld Hq=%lld Hkv=%lld Dh=%lld\n", in.name.c_str(), static_cast<long long>(in.q.dim(1)),
                static_cast<long long>(in.q.dim(2)), static_cast<long long>(in.k.dim(2)),
                static_cast<long long>(in.q.dim(3)));
    std::printf("%-48s %8s %8s %10s %8s\n", "selector", "density", "recall", "rel err", "needles");
    const Tensor dense = Tensor::empty(DType::f32, in.q.shape());
    const attn::AttentionArgs a = args_of(in, dense);
    attn::flash_attention(a, attn::dense_mask(in.q.dim(1), in.k.dim(1), true));
    for (const auto& spec : specs) {
      const Score s = score(in, spec, dense, o.sampled_rows);
      char needles[32] = "-";
      if (s.needle_hits >= 0) std::snprintf(needles, sizeof needles, "%.2f", s.needle_hits);
      std::printf("%-48s %8.3f %8.4f %10.2e %8s\n", attn::to_string(spec).c_str(), s.density, s.recall, s.rel_err,
                  needles);
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace subq::bench

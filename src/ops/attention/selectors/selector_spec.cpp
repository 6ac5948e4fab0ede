#include "src/ops/attention/selectors/selector_spec.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <sstream>

#include "src/ops/attention/selectors/dynamic_selectors.h"
#include "subq/tensor.h"

namespace subq::attn {
namespace {

int64_t parse_int(const std::string& key, const std::string& v) {
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0') throw Error("selector: " + key + " expects an integer, found '" + v + "'");
  return x;
}

double parse_double(const std::string& key, const std::string& v) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0') throw Error("selector: " + key + " expects a number, found '" + v + "'");
  return x;
}

// "7x7x3" -> up to 3 integers; returns how many.
int parse_dims(const std::string& key, const std::string& v, std::array<int64_t, 3>& out) {
  std::stringstream ss(v);
  std::string part;
  int n = 0;
  while (std::getline(ss, part, 'x')) {
    if (n == 3) throw Error("selector: " + key + " has more than 3 dimensions: '" + v + "'");
    out[static_cast<size_t>(n++)] = parse_int(key, part);
  }
  if (n == 0) throw Error("selector: " + key + " is empty");
  return n;
}

std::string dims(const std::array<int64_t, 3>& a, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    if (i) s += 'x';
    s += std::to_string(a[static_cast<size_t>(i)]);
  }
  return s;
}

}  // namespace

bool SelectorSpec::needs_qk() const {
  return kind == "moba" || kind == "flexprefill" || kind == "xattention" || kind == "hip";
}

std::vector<std::string> selector_kinds() {
  return {"dense", "window", "bigbird", "power", "neighborhood", "moba", "flexprefill", "xattention", "hip"};
}

SelectorSpec parse_selector(const std::string& text) {
  SelectorSpec s;
  const size_t colon = text.find(':');
  s.kind = text.substr(0, colon);
  const auto kinds = selector_kinds();
  if (std::find(kinds.begin(), kinds.end(), s.kind) == kinds.end()) {
    std::string known;
    for (const auto& k : kinds) known += (known.empty() ? "" : ", ") + k;
    throw Error("selector: unknown kind '" + s.kind + "' (known: " + known + ")");
  }
  if (colon == std::string::npos) return s;
  std::stringstream ss(text.substr(colon + 1));
  std::string item;
  int nd = 0;
  while (std::getline(ss, item, ',')) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos) throw Error("selector: expected key=value, found '" + item + "'");
    const std::string key = item.substr(0, eq), v = item.substr(eq + 1);
    if (key == "causal") s.causal = parse_int(key, v) != 0;
    else if (key == "block") s.block = parse_int(key, v);
    else if (key == "window") s.window = parse_int(key, v);
    else if (key == "sinks") s.sinks = parse_int(key, v);
    else if (key == "global") s.global_blocks = parse_int(key, v);
    else if (key == "window_blocks") s.window_blocks = parse_int(key, v);
    else if (key == "random") s.random_blocks = parse_int(key, v);
    else if (key == "seed") s.seed = static_cast<uint64_t>(parse_int(key, v));
    else if (key == "local") s.local_blocks = parse_int(key, v);
    else if (key == "sink_blocks") s.sink_blocks = parse_int(key, v);
    else if (key == "grid") nd = s.nbhd.ndim = parse_dims(key, v, s.nbhd.grid);
    else if (key == "kernel") parse_dims(key, v, s.nbhd.kernel);
    else if (key == "dilation") parse_dims(key, v, s.nbhd.dilation);
    else if (key == "stride") parse_dims(key, v, s.nbhd.stride), s.stride = s.nbhd.stride[0];
    else if (key == "top_k") s.top_k = parse_int(key, v);
    else if (key == "gamma") s.gamma = parse_double(key, v);
    else if (key == "tau") s.tau = parse_double(key, v);
    else if (key == "threshold") s.threshold = parse_double(key, v);
    else throw Error("selector: unknown key '" + key + "' for " + s.kind);
  }
  if (s.kind == "neighborhood" && nd == 0) throw Error("selector: neighborhood needs grid=AxB...");
  if (s.block < 1) throw Error("selector: block must be >= 1, found " + std::to_string(s.block));
  return s;
}

std::string to_string(const SelectorSpec& s) {
  std::string t = s.kind;
  auto add = [&](const std::string& kv) { t += (t.find(':') == std::string::npos ? ":" : ",") + kv; };
  if (s.kind == "dense") return t;
  add("block=" + std::to_string(s.block));
  if (s.kind == "window") {
    add("window=" + std::to_string(s.window));
    add("sinks=" + std::to_string(s.sinks));
  } else if (s.kind == "bigbird") {
    add("global=" + std::to_string(s.global_blocks));
    add("window_blocks=" + std::to_string(s.window_blocks));
    add("random=" + std::to_string(s.random_blocks));
    add("seed=" + std::to_string(s.seed));
  } else if (s.kind == "power") {
    add("local=" + std::to_string(s.local_blocks));
    add("sink_blocks=" + std::to_string(s.sink_blocks));
  } else if (s.kind == "neighborhood") {
    add("grid=" + dims(s.nbhd.grid, s.nbhd.ndim));
    add("kernel=" + dims(s.nbhd.kernel, s.nbhd.ndim));
    add("dilation=" + dims(s.nbhd.dilation, s.nbhd.ndim));
    add("stride=" + dims(s.nbhd.stride, s.nbhd.ndim));
  } else if (s.kind == "moba" || s.kind == "hip") {
    add("top_k=" + std::to_string(s.top_k));
  } else if (s.kind == "flexprefill") {
    std::ostringstream o;
    o << "gamma=" << s.gamma << ",tau=" << s.tau;
    add(o.str());
  } else if (s.kind == "xattention") {
    std::ostringstream o;
    o << "threshold=" << s.threshold << ",stride=" << s.stride;
    add(o.str());
  }
  if (!s.causal) add("causal=0");
  return t;
}

BlockMask build_mask(const SelectorSpec& spec, const MaskGeometry& geometry, const AttentionArgs& qk) {
  MaskGeometry g = geometry;
  if (spec.kind != "dense" && spec.kind != "window") g.q_block = g.k_block = spec.block;
  if (spec.kind == "dense")
    return dense_mask(g.q_len, g.kv_len, spec.causal, g.q_offset, g.q_block, g.k_block, g.key_positions);
  if (spec.kind == "window") return sliding_window_mask(g, spec.window, spec.sinks, spec.causal);
  if (spec.kind == "bigbird")
    return bigbird_mask(g, spec.global_blocks, spec.window_blocks, spec.random_blocks, spec.seed, spec.causal);
  if (spec.kind == "power") return power_attention_mask(g, spec.local_blocks, spec.sink_blocks, spec.causal);
  if (spec.kind == "neighborhood") return neighborhood_mask(g, spec.nbhd);
  if (spec.kind == "moba") return moba_mask(g, qk, spec.top_k);
  if (spec.kind == "flexprefill") return flexprefill_mask(g, qk, spec.gamma, spec.tau);
  if (spec.kind == "xattention") return xattention_mask(g, qk, spec.threshold, spec.stride);
  if (spec.kind == "hip") return hip_mask(g, qk, spec.top_k);
  throw Error("selector: unknown kind '" + spec.kind + "'");
}

}  // namespace subq::attn

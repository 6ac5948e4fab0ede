#include "bench/runner.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "bench/ceilings.h"
#include "bench/harness.h"
#include "bench/heap_tracker.h"
#include "bench/svg_plot.h"
#include "subq/ops.h"

namespace subq::bench {
namespace {

struct Result {
  const Case* c = nullptr;
  int64_t T = 0;
  double median_s = 0;
  double flops = 0, bytes = 0;
  bool reads_only = false;
  // For reads_only cases: the read ceiling measured just before and just after the timed
  // runs, which the roofline fraction uses instead of the one measured at start.
  double read_before_gbs = 0, read_after_gbs = 0;
  int64_t tokens = 0;
  size_t peak_bytes = 0;
  std::optional<double> max_rel_err;
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return "unknown";
}

// Whether name contains one of the comma-separated patterns of `only`.
bool matches(const std::string& name, const std::string& only) {
  for (size_t begin = 0; begin <= only.size();) {
    const size_t end = std::min(only.find(',', begin), only.size());
    if (end > begin && name.find(only.substr(begin, end - begin)) != std::string::npos) return true;
    begin = end + 1;
  }
  return false;
}

std::vector<const Case*> select(const std::vector<Case>& cases, const RunOptions& opts) {
  std::vector<const Case*> out;
  for (const auto& c : cases) {
    if (!opts.only.empty() && !matches(c.name, opts.only)) continue;
    // A filter names cases explicitly, so it reaches beyond the default sweep.
    if (!c.in_default && !opts.all && opts.only.empty()) continue;
    out.push_back(&c);
  }
  return out;
}

std::vector<int64_t> lengths(const Case& c, const RunOptions& opts) {
  if (c.seq.size() == 1 && c.seq[0] == 0) return c.seq;  // no sequence axis
  return opts.seq.empty() ? c.seq : opts.seq;
}

Result measure(const Case& c, int64_t T, const RunOptions& opts) {
  std::unique_ptr<Instance> inst = c.make(T);
  Result r;
  r.c = &c;
  r.T = T;
  // Warm-up run, also the one whose peak heap use is recorded: from an empty cache of
  // large buffers, so that none kept from earlier cases hides this one's.
  Storage::release_cached();
  const size_t base = heap_in_use();
  heap_reset_peak();
  inst->run();
  r.peak_bytes = heap_peak() > base ? heap_peak() - base : 0;
  r.reads_only = inst->reads_only();
  const auto read_ceiling = [] {
    const double gbs = measure_read_gbs();
    Storage::release_cached();
    return gbs;
  };
  if (r.reads_only) r.read_before_gbs = read_ceiling();
  std::vector<double> times;
  const double start = now_s();
  while (static_cast<int>(times.size()) < opts.min_reps || now_s() - start < opts.min_time_s) {
    const double t0 = now_s();
    inst->run();
    times.push_back(now_s() - t0);
    if (times.size() >= 1000) break;
  }
  if (r.reads_only) r.read_after_gbs = read_ceiling();
  std::sort(times.begin(), times.end());
  r.median_s = times[times.size() / 2];
  r.flops = inst->flops();
  r.bytes = inst->bytes();
  r.tokens = inst->tokens();
  r.max_rel_err = inst->max_rel_err();
  return r;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string human_bytes(double b) {
  if (b <= 0) return "0";
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (b >= 1024 && u < 3) b /= 1024, ++u;
  return fmt(u ? "%.1f" : "%.0f", b) + units[u];
}

std::string human_time(double s) {
  if (s < 1e-3) return fmt("%.1f us", s * 1e6);
  if (s < 1) return fmt("%.2f ms", s * 1e3);
  return fmt("%.3f s", s);
}

// The bandwidth a case is held to: the triad, or for a case that only reads, the mean
// of the read ceilings measured around it.
double case_bandwidth(const Result& r, const Ceilings& ceil) {
  if (!r.reads_only) return ceil.bandwidth_gbs;
  return r.read_before_gbs > 0 && r.read_after_gbs > 0 ? (r.read_before_gbs + r.read_after_gbs) / 2 : ceil.read_gbs;
}

// The read ceiling moved by more than 15% across the case: its fraction is not a reading
// of the machine.
bool unsteady(const Result& r) {
  const double lo = std::min(r.read_before_gbs, r.read_after_gbs), hi = std::max(r.read_before_gbs, r.read_after_gbs);
  return r.reads_only && lo > 0 && hi > 1.15 * lo;
}

double ceiling_fraction(const Result& r, const Ceilings& ceil) {
  const double f = r.flops > 0 ? r.flops / r.median_s / 1e9 / ceil.fma_gflops : 0;
  const double bandwidth = case_bandwidth(r, ceil);
  const double b = r.bytes > 0 ? r.bytes / r.median_s / 1e9 / bandwidth : 0;
  return std::max(f, b);
}

void print_table(const std::vector<Result>& results, const Ceilings& ceil) {
  // Peer time by (case it is a peer of, T), for the speedup column.
  std::map<std::pair<std::string, int64_t>, double> peer_time;
  for (const auto& r : results)
    if (!r.c->peer_of.empty()) peer_time[{r.c->peer_of, r.T}] = r.median_s;
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"case", "shape", "T", "median", "tok/s", "GFLOP/s", "GB/s", "%ceil", "peak mem", "rel err", "vs peer"});
  for (const auto& r : results) {
    const auto peer = peer_time.find({r.c->name, r.T});
    rows.push_back({
        r.c->name, r.c->shape, r.T ? std::to_string(r.T) : "-", human_time(r.median_s),
        r.tokens ? fmt("%.3g", r.tokens / r.median_s) : "-",
        r.flops > 0 ? fmt("%.1f", r.flops / r.median_s / 1e9) : "-",
        r.bytes > 0 ? fmt("%.1f", r.bytes / r.median_s / 1e9) : "-",
        (r.flops > 0 || r.bytes > 0) ? fmt("%.0f%%", 100 * ceiling_fraction(r, ceil)) + (unsteady(r) ? "~" : "") : "-",
        human_bytes(static_cast<double>(r.peak_bytes)),
        r.max_rel_err ? fmt("%.1e", *r.max_rel_err) : "-",
        peer != peer_time.end() ? fmt("%.2fx", peer->second / r.median_s) : "",
    });
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& row : rows)
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  for (size_t k = 0; k < rows.size(); ++k) {
    std::string line;
    for (size_t i = 0; i < rows[k].size(); ++i) {
      const bool left = i < 2;
      const std::string pad(width[i] - rows[k][i].size(), ' ');
      line += (i ? "  " : "") + (left ? rows[k][i] + pad : pad + rows[k][i]);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::printf("%s\n", line.c_str());
    if (k == 0) std::printf("%s\n", std::string(line.size(), '-').c_str());
  }
  bool any = false;
  for (const auto& r : results) {
    if (!r.reads_only || r.read_before_gbs <= 0) continue;
    if (!any)
      std::printf("\n%%ceil of cases that only read: against the read ceiling measured just before and after"
                  " (~: it moved > 15%%)\n");
    any = true;
    std::printf("  %s%s: %.1f GB/s before, %.1f after\n", r.c->name.c_str(),
                r.T ? (" T=" + std::to_string(r.T)).c_str() : "", r.read_before_gbs, r.read_after_gbs);
  }
}

nlohmann::json null_if(bool absent, double v) { return absent ? nlohmann::json(nullptr) : nlohmann::json(v); }

void write_json(const std::string& path, const std::vector<Result>& results, const Ceilings& ceil) {
  nlohmann::json j;
  j["machine"] = {{"cpu", cpu_name()},
                  {"threads", num_threads()},
                  {"simd_target", cpu_target()},
                  {"ceilings",
                   {{"bandwidth_gbs", ceil.bandwidth_gbs}, {"read_gbs", ceil.read_gbs}, {"fma_gflops", ceil.fma_gflops}}}};
  j["cases"] = nlohmann::json::array();
  for (const auto& r : results) {
    j["cases"].push_back({
        {"name", r.c->name},
        {"family", r.c->family},
        {"shape", r.c->shape},
        {"T", r.T ? nlohmann::json(r.T) : nlohmann::json(nullptr)},
        {"median_s", r.median_s},
        {"tokens_per_s", null_if(r.tokens == 0, r.tokens / r.median_s)},
        {"gflops", null_if(r.flops <= 0, r.flops / r.median_s / 1e9)},
        {"gbs", null_if(r.bytes <= 0, r.bytes / r.median_s / 1e9)},
        {"ceiling_fraction", null_if(r.flops <= 0 && r.bytes <= 0, ceiling_fraction(r, ceil))},
        {"read_ceiling_gbs_around",
         r.read_before_gbs > 0 ? nlohmann::json::array({r.read_before_gbs, r.read_after_gbs}) : nlohmann::json(nullptr)},
        {"peak_bytes", r.peak_bytes},
        {"max_rel_err", r.max_rel_err ? nlohmann::json(*r.max_rel_err) : nlohmann::json(nullptr)},
        {"peer_of", r.c->peer_of.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.c->peer_of)},
    });
  }
  std::ofstream f(path);
  f << j.dump(2) << "\n";
  if (!f) throw Error("cannot write JSON to " + path);
}

void write_plot(const std::string& path, const std::vector<Result>& results) {
  std::map<std::string, Series> by_case;
  for (const auto& r : results)
    if (r.T > 0) {
      auto& s = by_case[r.c->name];
      s.label = r.c->name;
      s.points.emplace_back(static_cast<double>(r.T), r.median_s);
    }
  std::vector<Series> series;
  for (auto& [name, s] : by_case)
    if (s.points.size() >= 2) series.push_back(std::move(s));
  write_loglog_svg(path, "subq bench: time vs sequence length", "sequence length T", "median time (s)", series);
}

}  // namespace

void list_cases(const RunOptions& opts) {
  const std::vector<Case> cases = all_cases();
  RunOptions every = opts;
  every.all = true;
  for (const Case* c : select(cases, every)) {
    std::string seq;
    for (int64_t t : c->seq) {
      if (!seq.empty()) seq += ",";
      seq += t ? std::to_string(t) : "-";
    }
    std::printf("%-40s %-10s %-36s T=%s%s\n", c->name.c_str(), c->family.c_str(), c->shape.c_str(), seq.c_str(),
                c->in_default ? "" : "  (not in default sweep)");
  }
}

int run_benchmarks(const RunOptions& opts) {
  const std::vector<Case> cases = all_cases();
  const std::vector<const Case*> chosen = select(cases, opts);
  if (chosen.empty()) throw Error("bench: no case matches \"" + opts.only + "\" (see `subq bench --list`)");
  std::fprintf(stderr, "measuring machine ceilings (bandwidth, FMA peak) on %d threads...\n", num_threads());
  const Ceilings ceil = measure_ceilings();
  std::printf("machine: %s, %d threads, SIMD %s; ceilings: %.1f GB/s triad, %.1f GB/s read, %.0f GFLOP/s f32 FMA\n\n",
              cpu_name().c_str(), num_threads(), cpu_target().c_str(), ceil.bandwidth_gbs, ceil.read_gbs,
              ceil.fma_gflops);
  size_t total = 0;
  for (const Case* c : chosen) total += lengths(*c, opts).size();
  std::vector<Result> results;
  int failures = 0;
  size_t done = 0;
  const bool tty = isatty(STDERR_FILENO);  // the progress line redraws itself only on a terminal
  for (const Case* c : chosen) {
    for (int64_t T : lengths(*c, opts)) {
      ++done;
      if (tty) {
        std::fprintf(stderr, "\r\033[K[%zu/%zu] %s T=%lld", done, total, c->name.c_str(), static_cast<long long>(T));
        std::fflush(stderr);
      }
      try {
        results.push_back(measure(*c, T, opts));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "%ssubq: error: bench case %s at T=%lld: %s\n", tty ? "\r\033[K" : "", c->name.c_str(),
                     static_cast<long long>(T), e.what());
        ++failures;
      }
    }
  }
  if (tty) std::fprintf(stderr, "\r\033[K");
  print_table(results, ceil);
  if (!opts.json_path.empty()) write_json(opts.json_path, results, ceil);
  if (!opts.plot_path.empty()) write_plot(opts.plot_path, results);
  return failures;
}

}  // namespace subq::bench

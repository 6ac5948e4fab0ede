#include <cstdint>
#include <sstream>
#include <string>

#include "bench/runner.h"
#include "subq/tensor.h"
#include "tools/subq/commands.h"

namespace subq::cli {
namespace {

// "1k,4k,65536,1m" -> {1024, 4096, 65536, 1048576}.
std::vector<int64_t> parse_lengths(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) throw Error("--seq: empty entry in \"" + text + "\"");
    int64_t mult = 1;
    const char last = static_cast<char>(std::tolower(static_cast<unsigned char>(item.back())));
    if (last == 'k') mult = 1024;
    if (last == 'm') mult = 1024 * 1024;
    if (mult != 1) item.pop_back();
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < 1 || v > (int64_t{1} << 40) / mult)
      throw Error("--seq: \"" + item + "\" is not a positive length (examples: 1000, 4k, 1m)");
    out.push_back(v * mult);
  }
  return out;
}

}  // namespace

Command add_bench_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("bench", "Benchmark every op and mixer against the machine's ceilings and peers");
  struct Args {
    bench::RunOptions opts;
    std::string seq;
    bool list = false;
  };
  auto args = std::make_shared<Args>();
  cmd->add_flag("--list", args->list, "Print the case names and exit");
  cmd->add_option("--only", args->opts.only, "Run only cases whose name contains PATTERN (several: a,b,...)")
      ->type_name("PATTERN");
  cmd->add_option("--seq", args->seq, "Sequence lengths, e.g. 1k,4k,16k (overrides each case's own)")
      ->type_name("LIST");
  cmd->add_flag("--all", args->opts.all, "Include cases outside the default sweep");
  cmd->add_option("--json", args->opts.json_path, "Write results as JSON to FILE")->type_name("FILE");
  cmd->add_option("--plot", args->opts.plot_path, "Write a log-log SVG plot of time vs T to FILE")->type_name("FILE");
  cmd->add_option("--min-time", args->opts.min_time_s, "Seconds of repetitions per measurement (default 0.25)")
      ->check(CLI::Range(0.0, 60.0));
  return {cmd, [args] {
            if (!args->seq.empty()) args->opts.seq = parse_lengths(args->seq);
            if (args->list) {
              bench::list_cases(args->opts);
              return;
            }
            if (bench::run_benchmarks(args->opts) != 0) throw Error("some bench cases failed (see above)");
          }};
}

}  // namespace subq::cli

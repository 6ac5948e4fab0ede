#include "tools/subq/commands.h"

#include <memory>
#include <string>
#include <vector>

#include "bench/accuracy.h"

namespace subq::cli {

Command add_accuracy_command(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "accuracy", "Score sparse-attention selectors against dense attention: density, mass recall, output error");
  auto opts = std::make_shared<bench::AccuracyOptions>();
  cmd->add_option("--seq", opts->seq, "Synthetic sequence length (default 2048)")->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--heads", opts->heads, "Synthetic query heads; key/value heads are half (default 4)")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--head-dim", opts->head_dim, "Synthetic head dimension (default 64)")->check(CLI::Range(1, 512));
  cmd->add_option("--seed", opts->seed, "Seed of the synthetic input (default 1)");
  cmd->add_option("--selector", opts->selectors,
                  "Selector spec, repeatable, e.g. window:window=512,sinks=4 or moba:top_k=4 "
                  "(default: a sweep of every selector)")
      ->type_name("SPEC");
  cmd->add_option("--q", opts->q_path, "Queries .npy [T, H, Dh] float32/float64 (with --k and --v)")->type_name("FILE");
  cmd->add_option("--k", opts->k_path, "Keys .npy [T, Hkv, Dh]")->type_name("FILE");
  cmd->add_option("--v", opts->v_path, "Values .npy [T, Hkv, Dh]")->type_name("FILE");
  cmd->add_option("--rows", opts->sampled_rows, "Query rows per head sampled for the recall (default 256)")
      ->check(CLI::Range(1, 1 << 20));
  return {cmd, [opts] { bench::run_accuracy(*opts); }};
}

}  // namespace subq::cli

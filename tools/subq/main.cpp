// subq: run, inspect and benchmark sub-quadratic sequence models.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "subq/ops.h"
#include "tools/subq/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"subq: sub-quadratic sequence models (state spaces, linear attention, sparse attention) on CPU"};
  app.name("subq");
  app.set_version_flag("--version", "subq " SUBQ_VERSION);
  app.require_subcommand(1);
  app.fallthrough();
  int threads = 0;
  app.add_option("--threads", threads, "Threads to use (default: SUBQ_THREADS or all cores)")
      ->check(CLI::Range(1, 4096));
  std::string matmul = "exact";
  app.add_option("--matmul", matmul,
                 "Matrix products against bf16 weights: exact (x stays f32; default) or bf16 (x rounded to bf16 as "
                 "PyTorch and llama.cpp do; AMX tiles or AVX512-BF16 where the CPU has them)")
      ->check(CLI::IsMember({"exact", "bf16"}))
      ->type_name("PRECISION");
  const std::vector<subq::cli::Command> commands = {
      subq::cli::add_run_command(app),
      subq::cli::add_info_command(app),
      subq::cli::add_perplexity_command(app),
      subq::cli::add_bench_command(app),
      subq::cli::add_accuracy_command(app),
  };
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::fprintf(stderr, "subq: error: %s\nRun `subq --help` for usage.\n", e.what());
    return 2;
  }
  try {
    if (threads > 0) subq::set_num_threads(threads);
    subq::set_matmul_precision(matmul == "bf16" ? subq::MatmulPrecision::bf16 : subq::MatmulPrecision::exact);
    if (matmul == "bf16" && !subq::bf16_matmul_available())
      std::fprintf(stderr, "subq: note: --matmul bf16 needs AMX-BF16 or AVX512-BF16, which this CPU or OS does not offer; "
                           "products stay exact\n");
    for (const auto& c : commands)
      if (c.app->parsed()) c.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "subq: error: %s\n", e.what());
    return 1;
  }
  return 0;
}

// Each subcommand lives in its own file: it declares its options on the app and returns
// the function that runs it once parsing is done. main.cpp lists them.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace subq::cli {

struct Command {
  CLI::App* app = nullptr;      // the parsed subcommand
  std::function<void()> run;   // runs it; throws subq::Error on failure
};

Command add_bench_command(CLI::App& app);
Command add_run_command(CLI::App& app);
Command add_info_command(CLI::App& app);
Command add_perplexity_command(CLI::App& app);
Command add_accuracy_command(CLI::App& app);

}  // namespace subq::cli

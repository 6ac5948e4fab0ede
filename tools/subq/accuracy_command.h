// `subq accuracy`: density, attention-mass recall and output error of every sparse
// selector against dense attention (bench/accuracy.h). Follows commands.h's pattern;
// main.cpp lists it beside the other commands.
#pragma once

#include "tools/subq/commands.h"

namespace subq::cli {

Command add_accuracy_command(CLI::App& app);

}  // namespace subq::cli

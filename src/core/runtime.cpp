// Process-wide execution settings: thread count and the SIMD target Highway dispatches to.
#include <omp.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "hwy/highway.h"
#include "hwy/targets.h"
#include "src/core/parallel.h"
#include "subq/ops.h"

namespace subq {
namespace {

int threads_from_env() {
  if (const char* s = std::getenv("SUBQ_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (end != s && *end == '\0' && v >= 1 && v <= 4096) return static_cast<int>(v);
    throw Error(std::string("SUBQ_THREADS must be an integer in [1, 4096], found \"") + s + "\"");
  }
  return omp_get_num_procs();
}

std::atomic<int>& thread_setting() {
  static std::atomic<int> n{threads_from_env()};
  return n;
}

}  // namespace

int num_threads() { return thread_setting().load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  if (n < 1 || n > 4096) throw Error("thread count must be in [1, 4096], found " + std::to_string(n));
  thread_setting().store(n, std::memory_order_relaxed);
}

std::string cpu_target() {
  // The best compiled target this CPU supports is what HWY_DYNAMIC_DISPATCH picks.
  const std::vector<int64_t> usable = hwy::SupportedAndGeneratedTargets();
  return usable.empty() ? "none" : hwy::TargetName(usable.front());
}

}  // namespace subq

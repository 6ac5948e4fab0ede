// The benchmark registry behind `subq bench`. Each family adds cases in its own file
// under bench/, registered at static-initialisation time:
//
//   SUBQ_BENCH_CASE(my_case) {
//     return {.name = "ssm.scan.d1536", .family = "ssm", .shape = "D=1536 N=16",
//             .seq = {1024, 4096}, .make = [](int64_t T) { return std::make_unique<MyRun>(T); }};
//   }
//
// The harness warms each instance up, times several repetitions, and reports the median
// with tokens/s, GFLOP/s, GB/s, the fraction of the machine's ceiling (roofline: the
// larger of flops/peak and bytes/bandwidth, the read bandwidth for reads_only cases),
// peak extra heap bytes and the max relative error against the float64 reference.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace subq::bench {

// One case at one sequence length, with its inputs already built.
class Instance {
 public:
  virtual ~Instance() = default;
  virtual void run() = 0;                           // the timed work
  virtual double flops() const { return 0; }        // useful FLOPs per run (0: not reported)
  virtual double bytes() const { return 0; }        // compulsory memory traffic per run
  // True where that traffic is reads (a decode step streaming weights or a KV cache): it
  // is then measured against the read bandwidth, not the triad's.
  virtual bool reads_only() const { return false; }
  virtual int64_t tokens() const { return 0; }      // tokens processed per run (0: n/a)
  // Max relative error of run()'s output against the float64 reference, computed by
  // the instance (cases compute it at a small T where the reference is affordable).
  virtual std::optional<double> max_rel_err() { return std::nullopt; }
};

struct Case {
  std::string name;    // unique, dotted: family.op.variant
  std::string family;  // "common", "ssm", "linear", "attention", ...
  std::string shape;   // human-readable shape, e.g. "M=512 N=4096 K=4096 bf16"
  std::vector<int64_t> seq = {0};  // sequence lengths; {0} means the case has none
  bool in_default = true;          // part of the default sweep (`make run`)
  std::string peer_of;  // non-empty: this case is the peer measured for that case name
  std::function<std::unique_ptr<Instance>(int64_t T)> make;
};

void register_case(std::function<Case()> factory);
std::vector<Case> all_cases();

struct Registrar {
  explicit Registrar(std::function<Case()> f) { register_case(std::move(f)); }
};

}  // namespace subq::bench

#define SUBQ_BENCH_CONCAT2(a, b) a##b
#define SUBQ_BENCH_CONCAT(a, b) SUBQ_BENCH_CONCAT2(a, b)
// Registers a function returning one Case.
#define SUBQ_BENCH_CASE(id)                                                                  \
  static ::subq::bench::Case SUBQ_BENCH_CONCAT(subq_bench_case_, id)();                      \
  static ::subq::bench::Registrar SUBQ_BENCH_CONCAT(subq_bench_reg_, id)(                    \
      &SUBQ_BENCH_CONCAT(subq_bench_case_, id));                                             \
  static ::subq::bench::Case SUBQ_BENCH_CONCAT(subq_bench_case_, id)()
// Registers several cases from one function returning std::vector<Case>.
#define SUBQ_BENCH_CASES(id)                                                                 \
  static std::vector<::subq::bench::Case> SUBQ_BENCH_CONCAT(subq_bench_cases_, id)();        \
  static const bool SUBQ_BENCH_CONCAT(subq_bench_regs_, id) = [] {                           \
    for (auto& c : SUBQ_BENCH_CONCAT(subq_bench_cases_, id)())                               \
      ::subq::bench::register_case([c] { return c; });                                       \
    return true;                                                                             \
  }();                                                                                       \
  static std::vector<::subq::bench::Case> SUBQ_BENCH_CONCAT(subq_bench_cases_, id)()

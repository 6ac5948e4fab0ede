#include <algorithm>
#include <set>

#include "bench/harness.h"
#include "subq/tensor.h"

namespace subq::bench {
namespace {

std::vector<std::function<Case()>>& factories() {
  static std::vector<std::function<Case()>> f;
  return f;
}

}  // namespace

void register_case(std::function<Case()> factory) { factories().push_back(std::move(factory)); }

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  std::set<std::string> names;
  for (const auto& f : factories()) {
    Case c = f();
    if (!names.insert(c.name).second) throw Error("bench: duplicate case name " + c.name);
    cases.push_back(std::move(c));
  }
  std::sort(cases.begin(), cases.end(), [](const Case& a, const Case& b) { return a.name < b.name; });
  return cases;
}

}  // namespace subq::bench

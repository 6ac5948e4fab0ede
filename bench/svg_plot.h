// A small SVG writer for log-log line plots (time vs sequence length, one line per case).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace subq::bench {

struct Series {
  std::string label;
  std::vector<std::pair<double, double>> points;  // (x, y), both > 0
};

// Writes a log-log plot to `path`; throws subq::Error if the file cannot be written.
void write_loglog_svg(const std::string& path, const std::string& title, const std::string& x_label,
                      const std::string& y_label, const std::vector<Series>& series);

}  // namespace subq::bench

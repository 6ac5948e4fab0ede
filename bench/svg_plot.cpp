#include "bench/svg_plot.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "subq/tensor.h"

namespace subq::bench {
namespace {

constexpr double kWidth = 900, kHeight = 560;
constexpr double kLeft = 80, kRight = 260, kTop = 40, kBottom = 60;

const char* const kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                               "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string tick_label(double v) {
  std::ostringstream s;
  if (v >= 1e6 && std::fmod(v, 1e6) == 0) s << v / 1e6 << "M";
  else if (v >= 1e3 && std::fmod(v, 1e3) == 0) s << v / 1e3 << "k";
  else s << v;
  return s.str();
}

}  // namespace

void write_loglog_svg(const std::string& path, const std::string& title, const std::string& x_label,
                      const std::string& y_label, const std::vector<Series>& series) {
  double x0 = INFINITY, x1 = 0, y0 = INFINITY, y1 = 0;
  for (const auto& s : series)
    for (auto [x, y] : s.points) {
      if (!(x > 0 && y > 0)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  if (!(x1 > 0)) x0 = 1, x1 = 10, y0 = 1e-6, y1 = 1;
  // Whole decades on both axes.
  const double lx0 = std::floor(std::log10(x0)), lx1 = std::max(lx0 + 1, std::ceil(std::log10(x1)));
  const double ly0 = std::floor(std::log10(y0)), ly1 = std::max(ly0 + 1, std::ceil(std::log10(y1)));
  const double pw = kWidth - kLeft - kRight, ph = kHeight - kTop - kBottom;
  auto px = [&](double x) { return kLeft + (std::log10(x) - lx0) / (lx1 - lx0) * pw; };
  auto py = [&](double y) { return kTop + ph - (std::log10(y) - ly0) / (ly1 - ly0) * ph; };

  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << kHeight
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << kLeft << "\" y=\"24\" font-size=\"15\">" << escape(title) << "</text>\n";
  for (double e = lx0; e <= lx1; ++e) {
    const double x = px(std::pow(10, e));
    o << "<line x1=\"" << x << "\" y1=\"" << kTop << "\" x2=\"" << x << "\" y2=\"" << kTop + ph
      << "\" stroke=\"#ddd\"/>\n<text x=\"" << x << "\" y=\"" << kTop + ph + 18 << "\" text-anchor=\"middle\">"
      << tick_label(std::pow(10, e)) << "</text>\n";
  }
  for (double e = ly0; e <= ly1; ++e) {
    const double y = py(std::pow(10, e));
    o << "<line x1=\"" << kLeft << "\" y1=\"" << y << "\" x2=\"" << kLeft + pw << "\" y2=\"" << y
      << "\" stroke=\"#ddd\"/>\n<text x=\"" << kLeft - 6 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">1e"
      << e << "</text>\n";
  }
  o << "<rect x=\"" << kLeft << "\" y=\"" << kTop << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"black\"/>\n";
  o << "<text x=\"" << kLeft + pw / 2 << "\" y=\"" << kHeight - 18 << "\" text-anchor=\"middle\">" << escape(x_label)
    << "</text>\n";
  o << "<text transform=\"translate(20," << kTop + ph / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
    << escape(y_label) << "</text>\n";
  for (size_t i = 0; i < series.size(); ++i) {
    const auto& s = series[i];
    const char* color = kColors[i % std::size(kColors)];
    const char* dash = (i / std::size(kColors)) % 2 ? " stroke-dasharray=\"6 3\"" : "";
    o << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"2\"" << dash << " points=\"";
    for (auto [x, y] : s.points)
      if (x > 0 && y > 0) o << px(x) << "," << py(y) << " ";
    o << "\"/>\n";
    for (auto [x, y] : s.points)
      if (x > 0 && y > 0) o << "<circle cx=\"" << px(x) << "\" cy=\"" << py(y) << "\" r=\"3\" fill=\"" << color << "\"/>\n";
    const double ly = kTop + 10 + 16 * static_cast<double>(i);
    o << "<line x1=\"" << kLeft + pw + 12 << "\" y1=\"" << ly << "\" x2=\"" << kLeft + pw + 32 << "\" y2=\"" << ly
      << "\" stroke=\"" << color << "\" stroke-width=\"2\"" << dash << "/>\n<text x=\"" << kLeft + pw + 38
      << "\" y=\"" << ly + 4 << "\">" << escape(s.label) << "</text>\n";
  }
  o << "</svg>\n";
  std::ofstream f(path);
  f << o.str();
  if (!f) throw Error("cannot write plot to " + path);
}

}  // namespace subq::bench

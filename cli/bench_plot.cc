#include "bench_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace netaccel::cli {
namespace {

constexpr int kWidth = 960;
constexpr int kLabelWidth = 200;    // test names, left of the axis
constexpr int kFiguresWidth = 300;  // kernel and netaccel figures, right of the bars
constexpr int kRowHeight = 26;
constexpr int kTop = 56;
constexpr int kBarHeight = 16;

std::string escaped(const std::string& text) {
  std::string out;
  for (const char c : text) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string ratio_label(double ratio) {
  char text[32];
  std::snprintf(text, sizeof text, ratio >= 10 ? "%.0fx" : "%.2gx", ratio);
  return text;
}

}  // namespace

std::string ratio_chart_svg(const std::string& title, const std::vector<PlotRow>& rows) {
  // A log scale from below the worst ratio to above the best, 1x always in view.
  double low = 0.5, high = 2;
  for (const PlotRow& row : rows) {
    if (row.ratio <= 0) continue;
    low = std::min(low, row.ratio / 1.5);
    high = std::max(high, row.ratio * 1.5);
  }
  const double plot_left = kLabelWidth;
  const double plot_width = kWidth - kLabelWidth - kFiguresWidth;
  const auto x_of = [&](double ratio) {
    return plot_left + plot_width * (std::log10(ratio) - std::log10(low)) /
                           (std::log10(high) - std::log10(low));
  };
  const int height = kTop + kRowHeight * static_cast<int>(rows.size()) + 40;
  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << kWidth << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">" << escaped(title)
      << "</text>\n"
      << "<text x=\"10\" y=\"40\" fill=\"#555\">netaccel / kernel, measured side by side in one "
         "run (log scale; right of 1x: netaccel better)</text>\n";
  // Decades and 1x as vertical guides.
  for (double mark = std::pow(10, std::floor(std::log10(low))); mark <= high; mark *= 10) {
    if (mark < low) continue;
    const double x = x_of(mark);
    svg << "<line x1=\"" << x << "\" y1=\"" << kTop - 6 << "\" x2=\"" << x << "\" y2=\""
        << height - 30 << "\" stroke=\"" << (mark == 1 ? "#000" : "#ccc") << "\"/>\n"
        << "<text x=\"" << x << "\" y=\"" << height - 14 << "\" text-anchor=\"middle\">"
        << ratio_label(mark) << "</text>\n";
  }
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const PlotRow& row = rows[i];
    const int y = kTop + kRowHeight * static_cast<int>(i);
    svg << "<text x=\"" << kLabelWidth - 8 << "\" y=\"" << y + 12 << "\" text-anchor=\"end\">"
        << escaped(row.test) << "</text>\n";
    if (row.ratio > 0) {
      const double one = x_of(1), end = x_of(row.ratio);
      svg << "<rect class=\"ratio\" x=\"" << std::min(one, end) << "\" y=\"" << y << "\" width=\""
          << std::max(std::abs(end - one), 1.0) << "\" height=\"" << kBarHeight << "\" fill=\""
          << (row.ratio >= 1 ? "#2a7ab0" : "#c0504d") << "\"/>\n"
          << "<text x=\"" << std::max(one, end) + 4 << "\" y=\"" << y + 12 << "\">"
          << ratio_label(row.ratio) << "</text>\n";
    } else {
      svg << "<text x=\"" << x_of(1) + 4 << "\" y=\"" << y + 12 << "\" fill=\"#888\">n/a</text>\n";
    }
    svg << "<text x=\"" << kWidth - kFiguresWidth + 40 << "\" y=\"" << y + 12
        << "\" fill=\"#555\">kernel " << escaped(row.kernel) << " | netaccel "
        << escaped(row.netaccel) << "</text>\n";
  }
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace netaccel::cli

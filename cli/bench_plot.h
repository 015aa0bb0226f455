// A chart of a side-by-side benchmark: per test, how many times better
// netaccel did than the kernel (a bar on a log scale, 1x marked), with both
// measured figures written beside it. Plain SVG, no library: it renders in
// GitHub's markdown view and in any browser.
#pragma once

#include <string>
#include <vector>

namespace netaccel::cli {

struct PlotRow {
  std::string test;    // "rtt 64 B p50"
  std::string kernel;  // the figures as the table shows them
  std::string netaccel;
  double ratio = 0;  // netaccel over kernel, better above 1; 0: no ratio
};

std::string ratio_chart_svg(const std::string& title, const std::vector<PlotRow>& rows);

}  // namespace netaccel::cli

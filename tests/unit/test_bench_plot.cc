// The benchmark chart: one bar per test with a ratio, on the side its ratio
// falls (netaccel better or worse than the kernel), every label escaped.
#include <gtest/gtest.h>

#include <string>

#include "bench_plot.h"

namespace netaccel::cli {
namespace {

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t found = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1))
    ++found;
  return found;
}

// The x attribute of the n-th bar.
double bar_x(const std::string& svg, std::size_t n, double* width) {
  std::size_t at = 0;
  for (std::size_t i = 0; i <= n; ++i) at = svg.find("class=\"ratio\"", at + 1);
  const std::size_t x = svg.find("x=\"", at) + 3;
  const std::size_t w = svg.find("width=\"", at) + 7;
  *width = std::stod(svg.substr(w));
  return std::stod(svg.substr(x));
}

TEST(BenchPlotTest, BarsStartAtOneAndGoTheWayTheirRatioSays) {
  const std::string svg =
      ratio_chart_svg("kernel <vs> netaccel", {{"rtt 64 B p50", "33.8 us", "1.0 us", 33.8},
                                               {"connect", "33.2 k/s", "164 k/s", 4.95},
                                               {"bulk & more", "61.9 Gbit/s", "2.3 Gbit/s", 0.04},
                                               {"pipe", "failed", "1 k/s", 0}});
  EXPECT_EQ(svg.rfind("<svg ", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(count(svg, "class=\"ratio\""), 3u);  // the row without a ratio says n/a
  EXPECT_NE(svg.find(">n/a<"), std::string::npos);
  EXPECT_NE(svg.find("kernel &lt;vs&gt; netaccel"), std::string::npos);
  EXPECT_NE(svg.find("bulk &amp; more"), std::string::npos);
  EXPECT_EQ(svg.find("<vs>"), std::string::npos);
  double w0, w1, w2;
  const double x0 = bar_x(svg, 0, &w0), x1 = bar_x(svg, 1, &w1), x2 = bar_x(svg, 2, &w2);
  // Better than the kernel: from 1x rightwards, longer for a larger ratio.
  EXPECT_DOUBLE_EQ(x0, x1);
  EXPECT_GT(w0, w1);
  // Worse: ends at 1x, from the left.
  EXPECT_NEAR(x2 + w2, x0, 0.01);
  EXPECT_NE(svg.find("#c0504d"), std::string::npos);
}

}  // namespace
}  // namespace netaccel::cli

// `netaccel bench`: kernel TCP over loopback against netaccel, side by side
// in one run, on the same peer programs.
#pragma once

#include <string>

namespace netaccel::cli {

struct BenchOptions {
  std::string output_markdown = "docs/benchmarks.md";  // empty: do not write
  double seconds_per_test = 2.0;
  bool quick = false;    // shorter runs, for tests
  std::string plot_svg;  // a chart of the ratios to write as SVG (empty: none)
};

// Runs every benchmark, prints a table with progress, writes the markdown.
// Returns a process exit code.
int run_bench(const BenchOptions& options);

}  // namespace netaccel::cli

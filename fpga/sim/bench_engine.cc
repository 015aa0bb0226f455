// netaccel-bench-engine: the control-plane engines' own figures, written
// between the fpga markers of docs/benchmarks.md.
//
// - software engine: requests per second on one core;
// - RTL: clock cycles per request, and requests per second at the clock the
//   synthesis report (fpga/synth/synthesize.sh) finds plausible;
// - doorbell batching: connection setup rate of a closed loop of clients,
//   in simulated time (doorbell latency plus the RTL's cycles).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "netaccel/engine.h"
#include "netaccel/fpga_sim_engine.h"

namespace netaccel {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kServer = 1;
constexpr uint64_t kNetns = 4026531840;
constexpr uint64_t kListenerSocket = 1;
constexpr uint16_t kPort = 8080;
constexpr const char* kBeginMarker = "<!-- fpga:begin -->";
constexpr const char* kEndMarker = "<!-- fpga:end -->";

InetAddress loopback(uint16_t port) {
  InetAddress address{};
  address.bytes[10] = address.bytes[11] = 0xff;
  address.bytes[12] = 127;
  address.bytes[15] = 1;
  address.port = port;
  address.family = AF_INET;
  return address;
}

Request listen_request() {
  Request request{};
  request.op = RequestOp::kListen;
  request.socket_id = kListenerSocket;
  request.address = loopback(kPort);
  return request;
}

Request connect_request(uint32_t request_id) {
  Request request{};
  request.op = RequestOp::kConnect;
  request.request_id = request_id;
  request.socket_id = 2;
  request.address = loopback(kPort);
  return request;
}

Request close_request(uint64_t connection_id) {
  Request request{};
  request.op = RequestOp::kClose;
  request.connection_id = connection_id;
  return request;
}

uint64_t connection_of(const std::vector<EngineOutput>& outputs) {
  for (const EngineOutput& output : outputs) {
    if (output.notice == EngineNotice::kConnectionCreated) return output.event.connection_id;
  }
  throw std::runtime_error("connect was refused");
}

void start_server(ControlPlaneEngine& engine, std::vector<EngineOutput>& out) {
  engine.add_process(kServer, kNetns);
  engine.submit(kServer, listen_request(), out);
  engine.flush(out);
}

// One connection's life from one client: connect, client close, server close.
void connection_cycle(ControlPlaneEngine& engine, uint32_t client, std::vector<EngineOutput>& out) {
  out.clear();
  engine.submit(client, connect_request(1), out);
  engine.flush(out);
  const uint64_t connection_id = connection_of(out);
  engine.submit(client, close_request(connection_id), out);
  engine.submit(kServer, close_request(connection_id), out);
  engine.flush(out);
}

double software_round(double seconds) {
  auto engine = make_software_engine();
  std::vector<EngineOutput> out;
  start_server(*engine, out);
  engine->add_process(2, kNetns);
  uint64_t requests = 0;
  const auto started = Clock::now();
  const auto until = started + std::chrono::duration<double>(seconds);
  while (Clock::now() < until) {
    for (int i = 0; i < 1000; ++i) connection_cycle(*engine, 2, out);
    requests += 3000;
  }
  return requests / std::chrono::duration<double>(Clock::now() - started).count();
}

// The median of three rounds: the machine is shared, and a neighbour's burst
// should not make the figure.
double software_requests_per_second(double seconds) {
  double rates[3];
  for (double& rate : rates) rate = software_round(seconds / 3);
  std::sort(std::begin(rates), std::end(rates));
  return rates[1];
}

// Cycles from the doorbell of a single request until the engine is idle.
struct RtlLatency {
  uint64_t listen = 0, connect = 0, close = 0, close_releasing = 0;
};

RtlLatency rtl_latency() {
  FpgaSimEngine engine(FpgaSimOptions{std::chrono::nanoseconds(0), 1});
  std::vector<EngineOutput> out;
  engine.add_process(kServer, kNetns);
  engine.add_process(2, kNetns);
  auto cycles_of = [&](uint32_t process, const Request& request) {
    const uint64_t before = engine.stats().busy_cycles;
    out.clear();
    engine.submit(process, request, out);
    return engine.stats().busy_cycles - before;
  };
  RtlLatency latency;
  latency.listen = cycles_of(kServer, listen_request());
  latency.connect = cycles_of(2, connect_request(1));
  const uint64_t connection_id = connection_of(out);
  latency.close = cycles_of(2, close_request(connection_id));
  latency.close_releasing = cycles_of(kServer, close_request(connection_id));
  return latency;
}

// A closed loop: `clients` processes each connect, then close, while the
// server closes its end as each connection comes in. The host gathers what
// is ready and rings the doorbell every `batch` descriptors and at the end of
// each round, as the monitor does at the end of a polling round.
struct LoopResult {
  uint64_t connections = 0;
  uint64_t requests = 0;
  FpgaSimStats stats;
  double wall_seconds = 0;
};

LoopResult closed_loop(uint32_t clients, uint32_t batch, uint64_t connections) {
  FpgaSimEngine engine(FpgaSimOptions{std::chrono::nanoseconds(0), batch});
  std::vector<EngineOutput> out;
  start_server(engine, out);
  const uint32_t first_client = kServer + 1;
  for (uint32_t i = 0; i < clients; ++i) engine.add_process(first_client + i, kNetns);
  out.clear();
  engine.flush(out);
  const FpgaSimStats before = engine.stats();

  std::vector<Request> client_next(clients);  // what each client sends this round
  for (uint32_t i = 0; i < clients; ++i) client_next[i] = connect_request(i);
  std::vector<uint64_t> server_closes;
  LoopResult result;
  uint64_t started = clients;
  const auto wall_started = Clock::now();
  while (result.connections < connections) {
    out.clear();
    const uint64_t requests_before = result.requests;
    for (uint32_t i = 0; i < clients; ++i) {
      if (client_next[i].op == RequestOp{}) continue;
      engine.submit(first_client + i, client_next[i], out);
      client_next[i] = Request{};
      ++result.requests;
    }
    for (const uint64_t connection_id : server_closes) {
      engine.submit(kServer, close_request(connection_id), out);
      ++result.requests;
    }
    server_closes.clear();
    if (result.requests == requests_before) throw std::runtime_error("the closed loop stalled");
    engine.flush(out);
    for (const EngineOutput& output : out) {
      if (output.notice == EngineNotice::kConnectionReleased) ++result.connections;
      if (output.notice != EngineNotice::kDeliver) continue;
      const Event& event = output.event;
      const uint32_t client = output.destination - first_client;
      if (event.type == EventType::kIncoming) {
        server_closes.push_back(event.connection_id);
      } else if (event.op == RequestOp::kConnect) {
        client_next[client] = close_request(event.connection_id);
      } else if (event.op == RequestOp::kClose && output.destination != kServer &&
                 started < connections) {
        client_next[client] = connect_request(static_cast<uint32_t>(started++));
      }
    }
  }
  result.wall_seconds = std::chrono::duration<double>(Clock::now() - wall_started).count();
  const FpgaSimStats after = engine.stats();
  result.stats.doorbells = after.doorbells - before.doorbells;
  result.stats.descriptors = after.descriptors - before.descriptors;
  result.stats.busy_cycles = after.busy_cycles - before.busy_cycles;
  return result;
}

std::map<std::string, std::string> read_report(const std::string& path) {
  std::map<std::string, std::string> values;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    const auto colon = line.find(": ");
    if (colon != std::string::npos) values[line.substr(0, colon)] = line.substr(colon + 2);
  }
  return values;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(": ") + 2);
  }
  return "unknown";
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return one + " " + five + " " + fifteen;
}

std::string mega(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f M", value / 1e6);
  return text;
}

// Replaces our section of the file (or appends it), leaving the rest alone.
void write_section(const std::string& path, const std::string& section) {
  std::string text;
  {
    std::ifstream in(path);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string block = std::string(kBeginMarker) + "\n" + section + kEndMarker;
  const auto begin = text.find(kBeginMarker);
  const auto end = text.find(kEndMarker);
  if (begin != std::string::npos && end != std::string::npos && end > begin) {
    text.replace(begin, end + std::string(kEndMarker).size() - begin, block);
  } else {
    if (!text.empty() && text.back() != '\n') text += '\n';
    text += "\n" + block + "\n";
  }
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace
}  // namespace netaccel

int main(int argc, char** argv) {
  using namespace netaccel;
  CLI::App app{"the control-plane engines' figures: software engine, RTL, doorbell batching"};
  std::string output;
  std::string synthesis_report;
  double seconds = 2;
  double doorbell_latency_us = 1;
  uint32_t clients = 48;
  uint64_t connections = 20000;
  app.add_option("--output", output, "markdown file whose fpga section to (re)write");
  app.add_option("--synthesis", synthesis_report, "report written by fpga/synth/synthesize.sh")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--seconds", seconds, "software engine measurement time")->capture_default_str();
  app.add_option("--doorbell-latency-us", doorbell_latency_us, "simulated cost of one doorbell")
      ->capture_default_str();
  app.add_option("--clients", clients, "clients in the closed loop")
      ->check(CLI::Range(1u, kFpgaProcesses - 2))
      ->capture_default_str();
  app.add_option("--connections", connections, "connections per batch size")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  try {
    const auto report = read_report(synthesis_report);
    const double clock_mhz = std::stod(report.at("plausible_clock_mhz"));

    const double software_rate = software_requests_per_second(seconds);
    const RtlLatency latency = rtl_latency();
    const LoopResult full = closed_loop(clients, kFpgaRequestSlots, connections);
    const double cycles_per_request =
        static_cast<double>(full.stats.busy_cycles) / full.stats.descriptors;

    std::ostringstream md;
    const std::time_t now = std::time(nullptr);
    char date[64];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    md << "## Control-plane engines: software and FPGA (RTL under Verilator)\n\n"
       << "Measured by `netaccel-bench-engine` on " << date << ", " << cpu_model()
       << ", load average " << load_average()
       << " when it started (the machine is shared: the software figure is noisy).\n\n"
       << "Regenerate with `cmake --build build --target fpga_synthesis_report` and "
       << "`build/bin/netaccel-bench-engine --synthesis build/fpga/synthesis.txt --output "
       << "docs/benchmarks.md`.\n\n"
       << "| figure | value |\n| --- | ---: |\n"
       << "| software engine, one core (connect + client close + server close; median of 3) | "
       << mega(software_rate) << " requests/s |\n"
       << "| seed design's software figure, for reference | 12 M requests/s |\n"
       << "| RTL, one request per doorbell: listen / connect / close / close that "
          "frees the connection | "
       << latency.listen << " / " << latency.connect << " / " << latency.close << " / "
       << latency.close_releasing << " cycles |\n"
       << "| RTL, " << kFpgaRequestSlots << "-descriptor doorbells, " << clients
       << " clients in a loop | " << std::fixed << std::setprecision(1) << cycles_per_request
       << " cycles/request |\n"
       << "| plausible clock (yosys `synth_xilinx` and `sta`, 7-series) | "
       << static_cast<int>(clock_mhz) << " MHz |\n"
       << "| RTL requests/s at that clock | " << mega(clock_mhz * 1e6 / cycles_per_request)
       << " requests/s |\n\n"
       << "Synthesis of the configuration the daemon runs (" << kFpgaProcesses << " processes, "
       << kFpgaListeners << " listeners, " << kFpgaConnections
       << " connections): " << report.at("luts") << " LUTs, " << report.at("flip_flops")
       << " flip-flops, " << report.at("bram36") << " RAMB36 + " << report.at("bram18")
       << " RAMB18, " << report.at("lutram_cells")
       << " LUT-RAM cells. Its slowest register-to-register path, starting at `"
       << report.at("critical_path_from") << "`, adds up to " << report.at("critical_path_cells_ns")
       << " ns of cell delay in yosys's timing analysis (`sta`); the clock doubles that for "
       << "routing (`fpga/synth/synthesize.sh`).\n\n"
       << "Doorbell batching, simulated: " << clients
       << " client processes each connect, then close; the server closes each connection as "
       << "it comes in. The host rings the doorbell when a batch is full and at the end of "
       << "each round of requests (as the monitor does at the end of a polling round). "
       << "Simulated time = doorbells x " << doorbell_latency_us
       << " us + RTL cycles at the clock above; " << connections
       << " connections per batch size.\n\n"
       << "| doorbell batch | requests per doorbell | connections/s (simulated) | "
       << "simulator wall time |\n| ---: | ---: | ---: | ---: |\n";
    for (const uint32_t batch : {1u, 4u, 16u, kFpgaRequestSlots}) {
      const LoopResult result =
          batch == kFpgaRequestSlots ? full : closed_loop(clients, batch, connections);
      const double simulated = result.stats.doorbells * doorbell_latency_us * 1e-6 +
                               result.stats.busy_cycles / (clock_mhz * 1e6);
      md << "| " << batch << " | " << std::setprecision(1)
         << static_cast<double>(result.stats.descriptors) / result.stats.doorbells << " | "
         << mega(result.connections / simulated) << " | " << std::setprecision(2)
         << result.wall_seconds << " s |\n";
    }
    md << "\n";
    std::cout << md.str();
    if (!output.empty()) write_section(output, md.str());
  } catch (const std::exception& error) {
    std::cerr << "netaccel-bench-engine: " << error.what() << "\n";
    return 1;
  }
  return 0;
}

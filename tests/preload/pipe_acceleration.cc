// Pipes under `netaccel run`: the data of a pipe shared by forked processes
// really goes through a ring, an exec that keeps an end downgrades the pipe
// without losing or reordering a byte, and shell pipelines give the same
// bytes. Pipes need no monitor, so the proof that a ring carried the data is
// the preload's own count, which it prints at exit with NETACCEL_DEBUG:
//   netaccel: pipes: N accelerated, D downgraded, B bytes written to rings
// This binary is also the workload: `test_pipe_acceleration --workload NAME`.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr size_t kTransferBytes = 8 << 20;

// FNV-1a over a deterministic pattern: what the workloads send and print.
uint64_t digest(const unsigned char* data, size_t length, uint64_t hash = 1469598103934665603ull) {
  for (size_t i = 0; i < length; ++i) hash = (hash ^ data[i]) * 1099511628211ull;
  return hash;
}
std::vector<unsigned char> pattern(size_t length) {
  std::vector<unsigned char> data(length);
  for (size_t i = 0; i < length; ++i)
    data[i] = static_cast<unsigned char>((i * 131 + i / 7) & 0xff);
  return data;
}

bool write_all(int fd, const unsigned char* data, size_t length) {
  while (length > 0) {
    const ssize_t wrote = write(fd, data, length);
    if (wrote <= 0) return false;
    data += wrote;
    length -= static_cast<size_t>(wrote);
  }
  return true;
}

// A forked child writes kTransferBytes into a pipe; we print their digest.
int transfer_workload() {
  int ends[2];
  if (pipe(ends) != 0) return 2;
  const pid_t child = fork();
  if (child == 0) {
    close(ends[0]);
    const std::vector<unsigned char> data = pattern(kTransferBytes);
    _exit(write_all(ends[1], data.data(), data.size()) ? 0 : 1);
  }
  close(ends[1]);
  std::vector<unsigned char> buffer(65536);
  uint64_t hash = 1469598103934665603ull;
  size_t total = 0;
  ssize_t got;
  while ((got = read(ends[0], buffer.data(), buffer.size())) > 0) {
    hash = digest(buffer.data(), static_cast<size_t>(got), hash);
    total += static_cast<size_t>(got);
  }
  int status = 0;
  waitpid(child, &status, 0);
  printf("%zu bytes, digest %016llx\n", total, static_cast<unsigned long long>(hash));
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

// 30000 bytes queued in the ring before a child makes the read end its
// stdin and execs wc, then 1000 more once it runs wc: wc counts them all,
// and the last 1000 went through the kernel pipe (the ring's count says so).
int exec_workload() {
  int ends[2], exec_done[2];
  if (pipe(ends) != 0 || pipe2(exec_done, O_CLOEXEC) != 0) return 2;
  const std::vector<unsigned char> data = pattern(30000);
  if (!write_all(ends[1], data.data(), data.size())) return 2;
  fflush(stdout);
  const pid_t child = fork();
  if (child == 0) {
    close(exec_done[0]);
    dup2(ends[0], STDIN_FILENO);
    close(ends[0]);
    close(ends[1]);
    execl("/usr/bin/wc", "wc", "-c", nullptr);
    _exit(127);
  }
  close(ends[0]);
  close(exec_done[1]);
  char ignored;
  const bool execed = read(exec_done[0], &ignored, 1) == 0;  // EOF: its end closed at exec
  const bool more = execed && write_all(ends[1], data.data(), 1000);
  close(ends[1]);
  int status = 0;
  waitpid(child, &status, 0);
  return more && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}

struct Outcome {
  int status = -1;
  std::string out;
  std::string err;
};

std::string read_file(const std::string& path) {
  std::ifstream file(path);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

// Runs `argv` with `extra_env` added, its stdout and stderr captured.
Outcome run(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env = {}) {
  char out_path[] = "/tmp/pipe-acceleration-out-XXXXXX";
  char err_path[] = "/tmp/pipe-acceleration-err-XXXXXX";
  const int out = mkstemp(out_path);
  const int err = mkstemp(err_path);
  Outcome outcome;
  const pid_t pid = fork();
  if (pid == 0) {
    dup2(out, STDOUT_FILENO);
    dup2(err, STDERR_FILENO);
    for (const std::string& entry : extra_env) putenv(const_cast<char*>(entry.c_str()));
    std::vector<char*> args;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  outcome.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  outcome.out = read_file(out_path);
  outcome.err = read_file(err_path);
  close(out);
  close(err);
  unlink(out_path);
  unlink(err_path);
  return outcome;
}

struct PipeCounts {
  unsigned long long accelerated = 0, downgraded = 0, bytes = 0;
  int lines = 0;
};

// Sums the counts every process of the run printed at exit.
PipeCounts pipe_counts(const std::string& stderr_text) {
  PipeCounts counts;
  std::istringstream lines(stderr_text);
  std::string line;
  while (std::getline(lines, line)) {
    unsigned long long made = 0, dropped = 0, bytes = 0;
    if (sscanf(line.c_str(), "netaccel: pipes: %llu accelerated, %llu downgraded, %llu bytes",
               &made, &dropped, &bytes) == 3) {
      counts.accelerated += made;
      counts.downgraded += dropped;
      counts.bytes += bytes;
      ++counts.lines;
    }
  }
  return counts;
}

std::string netaccel_binary() {
  const char* path = getenv("NETACCEL_BINARY");
  return path != nullptr ? path : "netaccel";
}

std::string self() {
  char path[4096];
  const ssize_t length = readlink("/proc/self/exe", path, sizeof path - 1);
  return length > 0 ? std::string(path, static_cast<size_t>(length)) : "";
}

std::vector<std::string> under_netaccel(std::vector<std::string> command) {
  command.insert(command.begin(), {netaccel_binary(), "run", "--"});
  return command;
}

TEST(PipeAcceleration, RingCarriesAForkedTransfer) {
  const Outcome kernel = run({self(), "--workload", "transfer"});
  ASSERT_EQ(kernel.status, 0) << kernel.err;
  const Outcome accelerated =
      run(under_netaccel({self(), "--workload", "transfer"}), {"NETACCEL_DEBUG=1"});
  ASSERT_EQ(accelerated.status, 0) << accelerated.err;
  EXPECT_EQ(accelerated.out, kernel.out);
  const PipeCounts counts = pipe_counts(accelerated.err);
  EXPECT_EQ(counts.lines, 2) << accelerated.err;  // the parent and its child
  EXPECT_EQ(counts.accelerated, 1u);
  EXPECT_EQ(counts.downgraded, 0u);
  EXPECT_GE(counts.bytes, kTransferBytes) << "the data did not go through the ring";
}

TEST(PipeAcceleration, PlainRunPrintsNoCounts) {
  // The counts come from the preload alone: without it there are none.
  const Outcome kernel = run({self(), "--workload", "transfer"}, {"NETACCEL_DEBUG=1"});
  ASSERT_EQ(kernel.status, 0);
  EXPECT_EQ(pipe_counts(kernel.err).lines, 0);
}

TEST(PipeAcceleration, ExecOfAnEndDowngradesWithoutLosingBytes) {
  const Outcome accelerated =
      run(under_netaccel({self(), "--workload", "exec"}), {"NETACCEL_DEBUG=1"});
  ASSERT_EQ(accelerated.status, 0) << accelerated.err;
  EXPECT_EQ(accelerated.out, "31000\n");
  const PipeCounts counts = pipe_counts(accelerated.err);
  EXPECT_EQ(counts.accelerated, 2u) << accelerated.err;  // the data pipe, the exec signal
  // The bytes written before the exec went to the ring, those after to the
  // kernel pipe: the child's dup2 onto stdin downgraded it.
  EXPECT_EQ(counts.bytes, 30000u) << accelerated.err;
}

TEST(PipeAcceleration, BashTeePipelineGivesIdenticalBytes) {
  // Both sums go down one pipe whose reader, uniq, ends only once the
  // process substitution (which bash does not wait for) has written its sum.
  const Outcome outcome = run(
      under_netaccel({"bash", "-c",
                      "{ head -c 50M /dev/urandom | tee >(sha256sum >&3) | cat | sha256sum; } 3>&1 "
                      "| cut -d' ' -f1 | uniq -c"}));
  ASSERT_EQ(outcome.status, 0) << outcome.err;
  unsigned count = 0;
  char sum[65] = {};
  ASSERT_EQ(sscanf(outcome.out.c_str(), " %u %64[0-9a-f]", &count, sum), 2) << outcome.out;
  EXPECT_EQ(count, 2u) << "the two sums differ: " << outcome.out;
  EXPECT_EQ(strlen(sum), 64u);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "--workload") == 0) {
    if (strcmp(argv[2], "transfer") == 0) return transfer_workload();
    if (strcmp(argv[2], "exec") == 0) return exec_workload();
    return 2;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

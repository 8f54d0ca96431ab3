// The servers the relay benchmarks run as child processes (relay_bench.cpp, fanout_bench.cpp):
// stopped when done, and their CPU time and resident memory read from /proc.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

namespace sluice::bench {

/// A child process the benchmark started: stopped (SIGTERM) and reaped when this goes away.
class ChildProcess {
 public:
  ChildProcess() = default;
  explicit ChildProcess(pid_t pid) : pid_(pid) {}
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ChildProcess(ChildProcess&&) = delete;
  ChildProcess& operator=(ChildProcess&&) = delete;
  ~ChildProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  pid_t* out() { return &pid_; }  // for posix_spawn (before it has a pid)

 private:
  pid_t pid_ = 0;
};

/// CPU seconds (user + system) process `pid` has used so far; 0 if it is gone.
inline double process_cpu(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const auto end = line.rfind(')');  // (the name may hold spaces): fields 14, 15 after it
  if (end == std::string::npos) return 0;
  std::istringstream in(line.substr(end + 2));
  std::string field;
  unsigned long long utime = 0;
  unsigned long long stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

/// Resident bytes of process `pid` now (VmRSS); 0 if it is gone.
inline double process_rss(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) * 1024;
  }
  return 0;
}

}  // namespace sluice::bench

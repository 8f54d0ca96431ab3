// The relay as the benchmarks' child process (`sluice serve`, ephemeral ports, quiet log):
// started, its gRPC address and HTTP port read from its first line, stopped when this goes.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

#include "process_stats.hpp"

namespace sluice::bench {

class RelayProcess {
 public:
  /// `binary`: the sluice executable; `env`: more settings ("SLUICE_WHEP_MAX_VIEWERS", "200").
  explicit RelayProcess(const std::string& binary_path,
                        const std::vector<std::pair<std::string, std::string>>& env = {}) {
    const char* binary = binary_path.c_str();
    int out[2];
    if (pipe(out) != 0) return;
    *child_.out() = fork();
    if (child_.pid() == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      close(out[1]);
      setenv("SLUICE_GRPC_PORT", "0", 1);
      setenv("SLUICE_HTTP_PORT", "0", 1);
      setenv("SLUICE_LOG_LEVEL", "error", 1);  // (its slow_subscriber warnings would interleave)
      setenv("SLUICE_MAX_SESSIONS_PER_CLIENT", "8192", 1);
      setenv("SLUICE_MAX_SUBSCRIBERS", "8192", 1);
      for (const auto& [name, value] : env) setenv(name.c_str(), value.c_str(), 1);
      execl(binary, binary, "serve", static_cast<char*>(nullptr));
      _exit(127);
    }
    close(out[1]);
    FILE* f = fdopen(out[0], "r");
    char line[512] = "";
    if (f != nullptr && std::fgets(line, sizeof line, f) != nullptr) {
      const std::string l(line);  // {"event":"listening","grpc":"127.0.0.1:P","http":"...:Q",...}
      const auto field = [&l](const std::string& key) {
        const auto at = l.find("\"" + key + "\":\"");
        if (at == std::string::npos) return std::string();
        const auto from = at + key.size() + 4;
        return l.substr(from, l.find('"', from) - from);
      };
      grpc_ = field("grpc");
      const std::string http = field("http");
      if (const auto colon = http.rfind(':'); colon != std::string::npos)
        http_port_ = static_cast<std::uint16_t>(std::stoi(http.substr(colon + 1)));
    }
    if (f != nullptr) std::fclose(f);
  }
  bool ready() const { return !grpc_.empty() && http_port_ != 0; }
  pid_t pid() const { return child_.pid(); }
  const std::string& grpc() const { return grpc_; }
  std::uint16_t http_port() const { return http_port_; }

 private:
  ChildProcess child_;  // stopped with the relay object
  std::string grpc_;
  std::uint16_t http_port_ = 0;
};

}  // namespace sluice::bench

// nats-server as a child process on a free loopback port, and nats.c connections to it: the
// peer of the relay benchmarks (relay_bench.cpp, fanout_bench.cpp).
#pragma once

#include <nats/nats.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <utility>

#include "process_stats.hpp"

extern char** environ;

namespace sluice::bench {

inline std::uint16_t free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

// A connection to nats-server at `url`; over TLS trusting `ca` when it is set.
inline natsStatus nats_connect(natsConnection** nc, const std::string& url, const std::string& ca) {
  if (ca.empty()) return natsConnection_ConnectTo(nc, url.c_str());
  natsOptions* o = nullptr;
  natsStatus s = natsOptions_Create(&o);
  if (s == NATS_OK) s = natsOptions_SetURL(o, url.c_str());
  if (s == NATS_OK) s = natsOptions_SetSecure(o, true);
  if (s == NATS_OK) s = natsOptions_LoadCATrustedCertificates(o, ca.c_str());
  if (s == NATS_OK) s = natsConnection_Connect(nc, o);
  natsOptions_Destroy(o);
  return s;
}

class NatsServer {
 public:
  // TLS (tls://) with `cert` and `key`, clients trusting `ca`, when they are set.
  explicit NatsServer(const std::string& cert = "", const std::string& key = "",
                      std::string ca = "")
      : port_(free_port()),
        conf_("/tmp/sluice-bench-nats-" + std::to_string(getpid()) + "-" + std::to_string(port_) +
              ".conf"),
        ca_(std::move(ca)) {
    // 1 MiB payloads need max_payload above the default 1 MB; and a roomier per-connection
    // buffer so that a subscriber momentarily behind is not cut off as a slow consumer.
    std::ofstream conf(conf_);
    conf << "max_payload: 8388608\nmax_pending: 268435456\n";
    if (!cert.empty())
      conf << "tls {\n  cert_file: \"" << cert << "\"\n  key_file: \"" << key << "\"\n}\n";
    conf.close();
    const std::string port = std::to_string(port_);
    const char* argv[] = {"nats-server", "-a", "127.0.0.1",   "-p",
                          port.c_str(),  "-c", conf_.c_str(), nullptr};
    if (posix_spawnp(child_.out(), "nats-server", nullptr, nullptr, const_cast<char**>(argv),
                     environ) != 0) {
      *child_.out() = 0;
      return;
    }
    url_ = (cert.empty() ? "nats://127.0.0.1:" : "tls://127.0.0.1:") + port;
    for (int i = 0; i < 100; ++i) {  // until it accepts connections
      natsConnection* nc = nullptr;
      if (nats_connect(&nc, url_, ca_) == NATS_OK) {
        natsConnection_Destroy(nc);
        ready_ = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  NatsServer(const NatsServer&) = delete;
  NatsServer& operator=(const NatsServer&) = delete;
  NatsServer(NatsServer&&) = delete;
  NatsServer& operator=(NatsServer&&) = delete;
  ~NatsServer() { std::remove(conf_.c_str()); }  // (the process stops with child_)
  bool ready() const { return ready_; }
  pid_t pid() const { return child_.pid(); }
  const std::string& url() const { return url_; }
  const std::string& ca() const { return ca_; }  // (TLS: the CA clients trust)

 private:
  ChildProcess child_;
  std::uint16_t port_;
  std::string conf_;
  std::string ca_;
  std::string url_;
  bool ready_ = false;
};

}  // namespace sluice::bench

// A NATS cluster of nats-server child processes on loopback: routes between every node,
// JetStream on each with a temporary store directory. Nodes can be killed and started again on
// the same ports and store. Shared by the cluster tests (tests/integration/relay_cluster_test.cpp)
// and the R7 benchmark (bench/cluster_bench.cpp).
#pragma once

#include <nats/nats.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "nats_server.hpp"

namespace sluice::bench {

class NatsCluster {
 public:
  /// `nodes` servers; ready() once each accepts clients and JetStream answers with `nodes`
  /// replicas (its meta group has a leader). `max_payload`: the servers' largest message (NATS's
  /// own default is 1 MiB; 8 MiB here, for the 1 MiB items of the benchmarks).
  explicit NatsCluster(std::size_t nodes, std::size_t max_payload = std::size_t{8} << 20)
      : max_payload_(max_payload) {
    dir_ = std::filesystem::temp_directory_path() /
           ("sluice-nats-cluster-" + std::to_string(getpid()) + "-" + std::to_string(free_port()));
    std::filesystem::create_directories(dir_);
    for (std::size_t i = 0; i < nodes; ++i)
      nodes_.push_back({free_port(), free_port(), free_port(), {}});
    for (std::size_t i = 0; i < nodes; ++i) start(i);
    ready_ = wait_ready();
  }
  NatsCluster(const NatsCluster&) = delete;
  NatsCluster& operator=(const NatsCluster&) = delete;
  NatsCluster(NatsCluster&&) = delete;
  NatsCluster& operator=(NatsCluster&&) = delete;
  ~NatsCluster() {
    for (std::size_t i = 0; i < nodes_.size(); ++i) kill(i);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  bool ready() const { return ready_; }
  std::size_t size() const { return nodes_.size(); }
  std::string url(std::size_t i) const {
    return "nats://127.0.0.1:" + std::to_string(nodes_[i].client);
  }
  /// nats-server's monitoring port of node `i` (/varz: in_bytes, out_bytes, ...).
  std::uint16_t monitor_port(std::size_t i) const { return nodes_[i].monitor; }
  pid_t pid(std::size_t i) const { return nodes_[i].process ? nodes_[i].process->pid() : 0; }

  /// Kills node `i` at once (SIGKILL: no goodbye to clients or routes).
  void kill(std::size_t i) {
    auto& n = nodes_[i];
    if (!n.process) return;
    ::kill(n.process->pid(), SIGKILL);
    waitpid(n.process->pid(), nullptr, 0);
    *n.process->out() = 0;
    n.process.reset();
  }
  /// Starts node `i` (again), on its ports and store; waits until it accepts clients.
  void start(std::size_t i) {
    auto& n = nodes_[i];
    std::string name = "n";  // (not "n" + to_string: GCC 12 warns falsely, -Wrestrict)
    name += std::to_string(i);
    const auto conf = dir_ / (name + ".conf");
    std::ofstream out(conf);
    out << "server_name: " << name << "\nlisten: 127.0.0.1:" << n.client
        << "\nhttp: 127.0.0.1:" << n.monitor << "\nmax_payload: " << max_payload_
        << "\nmax_pending: 268435456\n"
        << "jetstream {\n  store_dir: \"" << (dir_ / name).string()
        << "\"\n  max_memory_store: 1073741824\n  max_file_store: 4294967296\n}\n"
        << "cluster {\n  name: sluice\n  listen: 127.0.0.1:" << n.route << "\n  routes: [\n";
    for (std::size_t j = 0; j < nodes_.size(); ++j) {
      if (j != i) out << "    nats-route://127.0.0.1:" << nodes_[j].route << "\n";
    }
    out << "  ]\n}\n";
    out.close();
    n.process = std::make_unique<ChildProcess>();
    const std::string path = conf.string();
    const std::string log = (dir_ / (name + ".log")).string();
    const char* argv[] = {"nats-server", "-c", path.c_str(), "-l", log.c_str(), nullptr};
    if (posix_spawnp(n.process->out(), "nats-server", nullptr, nullptr, const_cast<char**>(argv),
                     environ) != 0) {
      *n.process->out() = 0;
      return;
    }
    for (int k = 0; k < 100; ++k) {
      natsConnection* nc = nullptr;
      if (natsConnection_ConnectTo(&nc, url(i).c_str()) == NATS_OK) {
        natsConnection_Destroy(nc);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

 private:
  struct Node {
    std::uint16_t client = 0;
    std::uint16_t route = 0;
    std::uint16_t monitor = 0;  // nats-server's HTTP monitoring (/varz)
    std::unique_ptr<ChildProcess> process;
  };

  // JetStream is ready when a stream replicated on every node can be made (and is removed).
  bool wait_ready() const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    natsConnection* nc = nullptr;
    // (A node just started may not listen yet: its first connection is retried too.)
    while (natsConnection_ConnectTo(&nc, url(0).c_str()) != NATS_OK) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    jsCtx* js = nullptr;
    bool ok = natsConnection_JetStream(&js, nc, nullptr) == NATS_OK;
    while (ok && std::chrono::steady_clock::now() < deadline) {
      jsStreamConfig cfg;
      jsStreamConfig_Init(&cfg);
      cfg.Name = "ready";
      const char* subjects[] = {"ready.check"};
      cfg.Subjects = subjects;
      cfg.SubjectsLen = 1;
      cfg.Replicas = static_cast<std::int64_t>(nodes_.size());
      cfg.Storage = js_MemoryStorage;
      jsStreamInfo* si = nullptr;
      if (js_AddStream(&si, js, &cfg, nullptr, nullptr) == NATS_OK) {
        jsStreamInfo_Destroy(si);
        (void)js_DeleteStream(js, "ready", nullptr, nullptr);
        jsCtx_Destroy(js);
        natsConnection_Destroy(nc);
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    if (js != nullptr) jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return false;
  }

  std::filesystem::path dir_;
  std::vector<Node> nodes_;
  std::size_t max_payload_;
  bool ready_ = false;
};

}  // namespace sluice::bench

// `sluice serve --demo`: synthetic traffic that shows every policy at once on a running relay,
// for the dashboard (docs/dashboard.md):
//   demo.camera     real time, 30 fps of 160x120 images (image/bmp); a fast viewer gets every
//                   frame, a slow one (one frame per 250 ms, depth 2) gets gap notices;
//   demo.telemetry  lossless with a 256 KiB budget; a producer of 5000 items/s (1 KiB) and a
//                   consumer of at most 2000: the producer is throttled (slow_down, resume);
//   demo.detect     a stage offered 45 fps, with two workers of 40 ms and 150 ms per frame
//                   (about 30 fps together): routing by measured latency, drop notices,
//                   slow_down when the gate turns critical.
// Threads of its own, clients of the relay over loopback like any other (gRPC publishers and
// subscribers, WebSocket stage workers).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "sluice/relay/config.hpp"

namespace sluice::cli {

/// Declares the demo's topics in `config` (those it does not declare already).
void add_demo_topics(RelayConfig& config);

class DemoTraffic {
 public:
  /// Starts the traffic against the relay on 127.0.0.1 (its gRPC and HTTP ports).
  DemoTraffic(std::uint16_t grpc_port, std::uint16_t http_port);
  ~DemoTraffic();  // stops it
  DemoTraffic(const DemoTraffic&) = delete;
  DemoTraffic& operator=(const DemoTraffic&) = delete;
  DemoTraffic(DemoTraffic&&) = delete;
  DemoTraffic& operator=(DemoTraffic&&) = delete;

  /// Ends every client of the demo and joins their threads (idempotent).
  void stop();

 private:
  std::atomic<bool> stopping_{false};
  std::vector<std::function<void()>> cancels_;  // unblock a client waiting on the relay
  std::vector<std::thread> threads_;
  struct Clients;
  std::shared_ptr<Clients> clients_;
};

}  // namespace sluice::cli

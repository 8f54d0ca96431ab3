// Sluice — the relay server: topics over gRPC (service sluice.v1.Relay).
//
// Each topic is a Broadcast of messages whose payload is one Buffer from the socket read to
// every subscriber. Lossless topics gate the producer by each subscriber's outstanding bytes
// (max_queue_bytes): while a publish cannot proceed the relay does not read the producer's next
// message, so HTTP/2 flow control closes the window and the producer's Write blocks; after
// max_wait the call ends with RESOURCE_EXHAUSTED naming the topic, its bytes, its limit and the
// setting. Real-time topics drop the oldest items per subscriber and send gap notices.
//
// Thread-safety: start(), shutdown() and the accessors may be called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "sluice/buffer.hpp"
#include "sluice/relay_config.hpp"

namespace sluice {

/// Trailing metadata of a Publish call that put at least one item into its topic: the last
/// such item's sequence number (decimal). A producer whose call ended early resends only the
/// items after it (what sluice::client::Publisher does).
inline constexpr std::string_view kPublishedThroughKey = "sluice-published-through";

/// The clock of RelayMessage::timestamp_ns when the relay or a client stamps an item: Unix
/// time in nanoseconds (comparable across processes on one host).
inline std::int64_t unix_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// One item of a topic, as the relay stores it.
struct RelayMessage {
  Buffer payload;
  std::uint64_t sequence = 0;
  std::int64_t timestamp_ns = 0;
  /// What a topic's byte budget counts: the payload.
  std::size_t size_bytes() const noexcept { return payload.size(); }
};

class RelayServer {
 public:
  explicit RelayServer(RelayConfig config);
  ~RelayServer();
  RelayServer(const RelayServer&) = delete;
  RelayServer& operator=(const RelayServer&) = delete;
  RelayServer(RelayServer&&) = delete;
  RelayServer& operator=(RelayServer&&) = delete;

  /// Binds and starts serving. Throws std::runtime_error naming the address if binding fails.
  void start();
  /// Graceful: closes every topic (subscribers drain, then their streams end), stops accepting,
  /// ends producers' calls with UNAVAILABLE. Idempotent.
  void shutdown();

  /// The bound gRPC port (the ephemeral one when configured as 0).
  std::uint16_t grpc_port() const;
  /// The bound HTTP port (/metrics, /healthz, /v1/stats).
  std::uint16_t http_port() const;
  /// Topics, their subscribers and counters, as JSON.
  std::string stats_json() const;

  struct Impl;  // the relay's state and services; defined in src/relay/relay_impl.hpp

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice

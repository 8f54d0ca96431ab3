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

#include <cstdint>
#include <memory>
#include <string>

#include "sluice/metrics.hpp"
#include "sluice/relay/config.hpp"
#include "sluice/relay/protocol.hpp"

namespace sluice {

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
  /// Reads server.tls_cert_file, server.tls_key_file and server.tls_client_ca_file again for
  /// the HTTP/WebSocket port (what `sluice serve` does on SIGHUP): new connections get the new
  /// certificate, open sessions keep theirs. "" on success, else why (the port keeps the
  /// certificate it had). The gRPC port rereads the same files by itself within a second.
  std::string reload_certificates();
  /// Topics, their subscribers and counters, as JSON.
  std::string stats_json() const;
  /// The registry /metrics shows: a program that runs the relay adds its own series to it
  /// (`sluice serve` its [[ingest]] entries'). Thread-safe; lives as long as the server.
  metrics::Registry& metrics();

  struct Impl;  // the relay's core and transports; defined in src/relay/server.cpp

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice

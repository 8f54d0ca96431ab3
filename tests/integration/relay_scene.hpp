// A relay test scene, shared by the integration and acceptance tests: the real relay on
// 127.0.0.1 with ephemeral ports, started, with what a test reaches it by — its gRPC target
// and a stub, its HTTP port, its /metrics samples, its stats — instead of each file setting
// these up again. Stops when the scene goes (RelayServer's destructor).
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "loopback.hpp"
#include "sluice/relay/server.hpp"
#include "sluice/v1/relay.grpc.pb.h"

namespace sluice::testing {

class RelayScene {
 public:
  /// The relay with `c` (its host and ports replaced by 127.0.0.1 and ephemeral ones).
  explicit RelayScene(RelayConfig c = {}) : server(loopback(std::move(c))) {
    server.start();
    target = "127.0.0.1:" + std::to_string(server.grpc_port());
    channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    stub = v1::Relay::NewStub(channel);
  }

  std::uint16_t grpc_port() const { return server.grpc_port(); }
  std::uint16_t http_port() const { return server.http_port(); }
  std::string stats_json() const { return server.stats_json(); }
  void shutdown() { server.shutdown(); }
  /// A sample of /metrics (see testing::metric); -1 if absent.
  double metric(const std::string& name, const std::string& has = "") const {
    return testing::metric(http_port(), name, has);
  }
  /// Waits up to 10 s for `n` open sessions.
  bool wait_for_sessions(double n) const { return testing::wait_for_sessions(http_port(), n); }

  RelayServer server;
  std::string target;  // "127.0.0.1:<grpc port>"
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Relay::Stub> stub;
};

}  // namespace sluice::testing

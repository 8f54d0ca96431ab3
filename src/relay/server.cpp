// The relay (RelayServer): its shared core (relay_core.hpp), the gRPC service over it
// (grpc_service.hpp) and the HTTP port (HttpRouter, with the WebSocket upgrade); starts and
// stops them.
#include "sluice/relay/server.hpp"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include "grpc_service.hpp"
#include "http_router.hpp"
#include "http_server.hpp"
#include "relay_core.hpp"
#include "stats_view.hpp"
#include "ws_upgrade.hpp"

namespace sluice {

struct RelayServer::Impl {
  explicit Impl(RelayConfig c) : core(std::move(c)) {}
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  Impl(Impl&&) = delete;
  Impl& operator=(Impl&&) = delete;
  // The loops stop first; the acceptor goes while its io_context exists; the core (with the
  // loops and the sessions their handlers hold) last.
  ~Impl() {
    core.loops.stop();
    http.reset();
  }

  // Times out frames the stages' workers hold too long; every 100 ms on the main loop.
  void poll_stages() {
    for (const auto& st : core.topics.stages()) st->poll();
    core.loops.main().at(std::chrono::steady_clock::now() + std::chrono::milliseconds(100),
                         [this] { poll_stages(); });
  }

  relay::RelayCore core;
  relay::GrpcService grpc_service{core};
  relay::HttpRouter router{core.metrics, core.topics};
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<relay::HttpServer> http;
  int port = 0;
  bool stopped = false;
};

RelayServer::RelayServer(RelayConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}

RelayServer::~RelayServer() {
  shutdown();
}

void RelayServer::start() {
  const RelayConfig& config = impl_->core.config;
  grpc::ServerBuilder builder;
  const std::string address = config.host + ":" + std::to_string(config.grpc_port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &impl_->port);
  builder.RegisterService(&impl_->grpc_service);
  // Our frame limit is enforced with a clear message; leave gRPC's own a little above it.
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<std::uint64_t>(config.max_frame_bytes + (1 << 20), INT32_MAX)));
  impl_->server = builder.BuildAndStart();
  if (!impl_->server || impl_->port == 0) {
    throw std::runtime_error("relay: cannot listen on " + address +
                             " (server.grpc_port / SLUICE_GRPC_PORT)");
  }
  Impl* impl = impl_.get();
  impl_->http = std::make_unique<relay::HttpServer>(
      impl->core.loops.main().context(), config.host, config.http_port, config.handshake_timeout,
      [impl](const std::string& target) {
        return impl->router.get(relay::HttpTarget::parse(target));
      },
      [impl](boost::asio::ip::tcp::socket& socket, relay::HttpServer::Request& request) {
        return relay::ws_upgrade(impl->core, socket, request);
      });
  impl_->core.loops.main().post([impl] { impl->poll_stages(); });
}

void RelayServer::shutdown() {
  if (!impl_ || !impl_->server || impl_->stopped) return;
  impl_->stopped = true;
  impl_->core.topics.close_all();
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  impl_->server->Wait();
  impl_->core.loops.stop();
  impl_->http.reset();
}

std::uint16_t RelayServer::grpc_port() const {
  return static_cast<std::uint16_t>(impl_->port);
}

std::uint16_t RelayServer::http_port() const {
  return impl_->http ? impl_->http->port() : 0;
}

std::string RelayServer::stats_json() const {
  return relay::stats_json(impl_->core.topics);
}

}  // namespace sluice

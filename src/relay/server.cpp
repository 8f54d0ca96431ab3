// The relay (RelayServer): starts the gRPC service (grpc_service.cpp) and the HTTP endpoint
// with its WebSocket sessions (ws_service.cpp) over the shared state in relay_impl.hpp, and
// stops them.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "relay_impl.hpp"
#include "sluice/relay_server.hpp"

namespace sluice {

using relay::HttpServer;

RelayServer::RelayServer(RelayConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}

RelayServer::~RelayServer() {
  shutdown();
}

void RelayServer::start() {
  grpc::ServerBuilder builder;
  const std::string address = impl_->config.host + ":" + std::to_string(impl_->config.grpc_port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &impl_->port);
  builder.RegisterService(impl_.get());
  // Our frame limit is enforced with a clear message; leave gRPC's own a little above it.
  builder.SetMaxReceiveMessageSize(static_cast<int>(
      std::min<std::uint64_t>(impl_->config.max_frame_bytes + (1 << 20), INT32_MAX)));
  impl_->server = builder.BuildAndStart();
  if (!impl_->server || impl_->port == 0) {
    throw std::runtime_error("relay: cannot listen on " + address +
                             " (server.grpc_port / SLUICE_GRPC_PORT)");
  }
  Impl* impl = impl_.get();
  impl_->http_server = std::make_unique<HttpServer>(
      impl_->io.context(), impl_->config.host, impl_->config.http_port,
      impl_->config.handshake_timeout,
      [impl](const std::string& target, unsigned& status, std::string& type, std::string& body) {
        impl->http(target, status, type, body);
      },
      [impl](boost::asio::ip::tcp::socket& socket, HttpServer::Request& request, unsigned& status,
             std::string& body) { return impl->upgrade(socket, request, status, body); });
  impl_->io.post([impl] { impl->poll_stages(); });
}

void RelayServer::shutdown() {
  if (!impl_ || !impl_->server || impl_->stopped) return;
  impl_->stopped = true;
  {
    std::lock_guard lock(impl_->mu);
    for (auto& [name, t] : impl_->topics) t->broadcast.close();
  }
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  impl_->server->Wait();
  impl_->stop_io();
  impl_->http_server.reset();
}

std::uint16_t RelayServer::grpc_port() const {
  return static_cast<std::uint16_t>(impl_->port);
}

std::uint16_t RelayServer::http_port() const {
  return impl_->http_server ? impl_->http_server->port() : 0;
}

std::string RelayServer::stats_json() const {
  return impl_->stats_json();
}

}  // namespace sluice

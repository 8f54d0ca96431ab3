// The relay's WebSocket endpoints, as the HTTP server sees them (relay-internal).
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <optional>

#include "http_server.hpp"
#include "relay_core.hpp"

namespace sluice::relay {

/// Starts the session `request` asks for on `connection` (nullopt), or answers why not.
/// On the relay's main loop.
std::optional<HttpResponse> ws_upgrade(RelayCore& core, Connection& connection,
                                       HttpServer::Request& request, const HttpPeer& peer);

}  // namespace sluice::relay

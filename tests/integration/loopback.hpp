// What the integration tests share: a relay configuration on 127.0.0.1 with ephemeral ports,
// and a real HTTP client (Beast) for the relay's HTTP port.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cstdint>
#include <string>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it

#include "sluice/relay_config.hpp"

namespace sluice::testing {

/// `c` bound to 127.0.0.1 with ephemeral gRPC and HTTP ports.
inline RelayConfig loopback(RelayConfig c = {}) {
  c.host = "127.0.0.1";
  c.grpc_port = 0;
  c.http_port = 0;
  return c;
}

/// GET http://127.0.0.1:port/target -> (status, body). With `as_upgrade`, the request carries
/// WebSocket upgrade headers (to read what the relay answers a refused upgrade).
inline std::pair<unsigned, std::string> http_get(std::uint16_t port, const std::string& target,
                                                 bool as_upgrade = false) {
  namespace http = boost::beast::http;
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket(io);
  socket.connect({boost::asio::ip::make_address("127.0.0.1"), port});
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, "127.0.0.1");
  if (as_upgrade) {
    req.set(http::field::connection, "Upgrade");
    req.set(http::field::upgrade, "websocket");
    req.set(http::field::sec_websocket_version, "13");
    req.set(http::field::sec_websocket_key, "dGhlIHNhbXBsZSBub25jZQ==");
  }
  http::write(socket, req);
  boost::beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::read(socket, buffer, res);
  return {res.result_int(), res.body()};
}

}  // namespace sluice::testing

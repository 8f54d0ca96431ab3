// What the integration tests share: a relay configuration on 127.0.0.1 with ephemeral ports,
// and a real HTTP client (Beast) for the relay's HTTP port.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it

#include "sluice/relay/config.hpp"

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
inline std::pair<unsigned, std::string> http_get(
    std::uint16_t port, const std::string& target, bool as_upgrade = false,
    const std::map<std::string, std::string>& headers = {}) {
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
  for (const auto& [name, value] : headers) req.set(name, value);
  http::write(socket, req);
  boost::beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::read(socket, buffer, res);
  return {res.result_int(), res.body()};
}

/// An answer of the relay's HTTP port: its status, body and header fields.
struct HttpAnswer {
  unsigned status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // (names as the relay wrote them)
};

/// `method` http://127.0.0.1:port/target with `body` (of `content_type`) and `headers`.
inline HttpAnswer http_request(std::uint16_t port, boost::beast::http::verb method,
                               const std::string& target, const std::string& body = {},
                               const std::string& content_type = {},
                               const std::map<std::string, std::string>& headers = {}) {
  namespace http = boost::beast::http;
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket socket(io);
  socket.connect({boost::asio::ip::make_address("127.0.0.1"), port});
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, "127.0.0.1");
  if (!content_type.empty()) req.set(http::field::content_type, content_type);
  for (const auto& [name, value] : headers) req.set(name, value);
  req.body() = body;
  req.prepare_payload();
  http::write(socket, req);
  boost::beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(std::uint64_t{16} << 20);
  http::read(socket, buffer, parser);
  HttpAnswer out{parser.get().result_int(), parser.get().body(), {}};
  for (const auto& field : parser.get())
    out.headers[std::string(field.name_string())] = std::string(field.value());
  return out;
}

/// The value of the first sample in the relay's /metrics whose series is `name` (bare or with
/// labels) and whose line contains `has`; -1 if there is none.
inline double metric(std::uint16_t port, const std::string& name, const std::string& has = "") {
  std::istringstream text(http_get(port, "/metrics").second);
  for (std::string line; std::getline(text, line);) {
    if (line.size() > name.size() && line.compare(0, name.size(), name) == 0 &&
        (line[name.size()] == ' ' || line[name.size()] == '{') &&
        line.find(has) != std::string::npos)
      return std::stod(line.substr(line.rfind(' ') + 1));
  }
  return -1;
}

/// Waits up to 10 s until the relay counts `n` open sessions (it releases a session on its own
/// threads once the call or socket has ended); true if it did.
inline bool wait_for_sessions(std::uint16_t port, double n) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (metric(port, "sluice_sessions") != n) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

}  // namespace sluice::testing

// A blocking WebSocket client (Boost.Beast) for the relay's /v1/ws endpoints, and the frame
// header helpers the tests share.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it

#include "loopback.hpp"
#include "sluice/relay/protocol.hpp"

namespace sluice::testing {

// header (frame_index, timestamp_ns) + payload
inline std::string frame(std::uint64_t index, std::int64_t stamp, const std::string& payload) {
  const auto header = ws::encode({index, stamp});
  return std::string(header.begin(), header.end()) + payload;
}
// the 24-byte header (frame_index, timestamp_ns, flags, reserved) + payload
inline std::string flagged_frame(std::uint64_t index, std::int64_t stamp, std::uint32_t flags,
                                 const std::string& payload) {
  const auto header = ws::encode_flagged({index, stamp, flags});
  return std::string(header.begin(), header.end()) + payload;
}
inline std::uint64_t index_of(const std::string& f) {
  return ws::decode(f.data()).index;
}

struct WsClient {
  boost::asio::io_context io;
  boost::beast::websocket::stream<boost::asio::ip::tcp::socket> s{io};
  unsigned http_status = 0;
  std::string http_body;
  std::map<std::string, std::string> headers;       // added to the upgrade request (Host replaces)
  std::string response_protocol;                    // the subprotocol the relay answered
  boost::beast::websocket::response_type response;  // the relay's answer to the upgrade

  boost::beast::error_code connect(std::uint16_t port, const std::string& target) {
    s.next_layer().connect({boost::asio::ip::make_address("127.0.0.1"), port});
    boost::beast::websocket::response_type res;
    boost::beast::error_code ec;
    std::string host = "127.0.0.1";
    if (const auto it = headers.find("Host"); it != headers.end()) host = it->second;
    s.set_option(boost::beast::websocket::stream_base::decorator(
        [h = headers](boost::beast::websocket::request_type& req) {
          for (const auto& [name, value] : h) {
            if (name != "Host") req.set(name, value);
          }
        }));
    s.handshake(res, host, target, ec);
    response_protocol = std::string(res[boost::beast::http::field::sec_websocket_protocol]);
    response = res;
    if (ec == boost::beast::websocket::error::upgrade_declined) refused(port, target);
    return ec;
  }
  // Beast does not hand back a declined handshake's response: ask again with a plain HTTP
  // client and the same upgrade headers, and keep the status and body.
  void refused(std::uint16_t port, const std::string& target) {
    std::tie(http_status, http_body) = http_get(port, target, /*as_upgrade=*/true, headers);
  }
  void send_binary(const std::string& bytes) {
    s.binary(true);
    s.write(boost::asio::buffer(bytes));
  }
  void send_text(const std::string& text) {
    s.text(true);
    s.write(boost::asio::buffer(text));
  }
  // The next message: (is_text, bytes), or an error (closed: s.reason() has the code).
  boost::beast::error_code read(bool& text, std::string& bytes) {
    boost::beast::flat_buffer b;
    boost::beast::error_code ec;
    s.read(b, ec);
    text = s.got_text();
    bytes = boost::beast::buffers_to_string(b.data());
    return ec;
  }
};

}  // namespace sluice::testing

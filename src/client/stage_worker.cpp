#include "sluice/client/stage_worker.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it

#include "sluice/relay/protocol.hpp"

namespace sluice {

namespace websocket = boost::beast::websocket;
namespace ssl = boost::asio::ssl;
using boost::asio::ip::tcp;

struct StageWorker::Impl {
  boost::asio::io_context io;
  std::unique_ptr<ssl::context> tls;                                  // wss: the relay's CA, ...
  std::optional<websocket::stream<tcp::socket>> plain;                // ws://
  std::optional<websocket::stream<ssl::stream<tcp::socket>>> secure;  // wss://
  boost::beast::flat_buffer in;
  std::string out;
  std::string ended;
  bool stopping = false;
  // Calls `f` with the WebSocket stream, whichever it is.
  template <class F>
  void with_ws(F&& f) {
    if (secure) {
      f(*secure);
    } else {
      f(*plain);
    }
  }
};

StageWorker::StageWorker(StageWorkerOptions options, WorkHandler handler)
    : options_(std::move(options)), handler_(std::move(handler)), impl_(std::make_unique<Impl>()) {}

StageWorker::~StageWorker() = default;

namespace {

std::string target_of(const StageWorkerOptions& o) {
  return "/v1/ws/work/" + o.topic + "?name=" + o.name +
         "&concurrency=" + std::to_string(o.concurrency);
}

}  // namespace

void StageWorker::connect() {
  Impl& m = *impl_;
  const auto& tls = options_.tls;
  if (!tls.ca_file.empty()) {
    m.tls = std::make_unique<ssl::context>(ssl::context::tls_client);
    boost::system::error_code bad;
    m.tls->load_verify_file(tls.ca_file, bad);
    if (!bad && !tls.cert_file.empty()) m.tls->use_certificate_chain_file(tls.cert_file, bad);
    if (!bad && !tls.key_file.empty())
      m.tls->use_private_key_file(tls.key_file, ssl::context::pem, bad);
    if (bad) throw std::runtime_error("cannot use the TLS files (--tls-*): " + bad.message());
    m.tls->set_verify_mode(ssl::verify_peer);
    m.secure.emplace(m.io, *m.tls);
  } else {
    m.plain.emplace(m.io);
  }
  m.with_ws([this](auto& ws) { handshake(ws); });
}

template <class Ws>
void StageWorker::handshake(Ws& ws) {
  tcp::resolver resolver(impl_->io);
  boost::beast::error_code ec;
  auto& socket = boost::beast::get_lowest_layer(ws);
  const auto endpoints = resolver.resolve(options_.host, std::to_string(options_.port), ec);
  if (!ec) boost::asio::connect(socket, endpoints, ec);
  if (!ec) socket.set_option(tcp::no_delay(true), ec);  // results go out now
  if (ec) {
    throw std::runtime_error("cannot reach the relay at " + options_.host + ":" +
                             std::to_string(options_.port) + ": " + ec.message());
  }
  if constexpr (!std::is_same_v<Ws, websocket::stream<tcp::socket>>) {
    // The relay's certificate must name the host we asked for (and SNI tells it which).
    auto& tls = ws.next_layer();
    boost::system::error_code not_ip;
    (void)boost::asio::ip::make_address(options_.host, not_ip);
    if (not_ip) {  // (SSL_set_tlsext_host_name, without its macro's cast)
      std::string name = options_.host;
      SSL_ctrl(tls.native_handle(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
               name.data());
    }
    tls.set_verify_callback(ssl::host_name_verification(options_.host));
    tls.handshake(ssl::stream_base::client, ec);
    if (ec) {
      throw std::runtime_error("TLS handshake with the relay at " + options_.host + ":" +
                               std::to_string(options_.port) + " failed: " + ec.message());
    }
  }
  // (Asynchronous: Beast 1.74's synchronous handshake leaves the response of a refusal unread
  // into `answer`; the asynchronous one hands it over.)
  websocket::response_type answer;
  if (!options_.token.empty()) {
    ws.set_option(
        websocket::stream_base::decorator([token = options_.token](websocket::request_type& req) {
          req.set(boost::beast::http::field::authorization, "Bearer " + token);
        }));
  }
  ws.async_handshake(answer, options_.host, target_of(options_),
                     [&ec](boost::beast::error_code e) { ec = e; });
  impl_->io.run();
  impl_->io.restart();
  if (ec == websocket::error::upgrade_declined) {
    std::string body = answer.body();
    while (!body.empty() && body.back() == '\n') body.pop_back();
    throw std::runtime_error("the relay refused the worker: HTTP " +
                             std::to_string(answer.result_int()) + ": " + body);
  }
  if (ec) throw std::runtime_error("WebSocket handshake failed: " + ec.message());
}

std::string StageWorker::run() {
  impl_->with_ws([this](auto& ws) { serve(ws); });
  return impl_->ended;
}

template <class Ws>
void StageWorker::serve(Ws& ws) {
  Impl& m = *impl_;
  // read -> handle -> write -> read ...
  std::function<void()> read;
  std::function<void()> answer;
  read = [&] {
    m.in.clear();
    ws.async_read(m.in, [&](boost::beast::error_code ec, std::size_t) {
      if (ec) {
        m.ended = m.stopping
                      ? "stopped"
                      : "the relay closed the socket: " + ec.message() +
                            (ws.reason().code != 0 ? " (" + std::to_string(ws.reason().code) + " " +
                                                         std::string(ws.reason().reason.data(),
                                                                     ws.reason().reason.size()) +
                                                         ")"
                                                   : "");
        return;
      }
      if (ws.got_text()) {  // the relay's hello, or an error about something we sent
        read();
        return;
      }
      answer();
    });
  };
  answer = [&] {
    const auto bytes = m.in.data();
    const std::string_view frame(static_cast<const char*>(bytes.data()), bytes.size());
    if (frame.size() < ws::kFrameHeaderBytes) {
      read();
      return;
    }
    const auto head = ws::decode(frame.data());
    bool text = false;
    try {
      std::string result =
          handler_(WorkFrame{head.index, head.timestamp_ns, frame.substr(ws::kFrameHeaderBytes)});
      const auto header = ws::encode(head);
      m.out.assign(header.begin(), header.end());
      m.out += result;
      ++processed_;
    } catch (const std::exception& e) {
      m.out = nlohmann::json{{"frame_index", head.index}, {"error", e.what()}}.dump();
      text = true;
      ++failed_;
    }
    ws.text(text);
    ws.async_write(boost::asio::buffer(m.out), [&](boost::beast::error_code ec, std::size_t) {
      if (ec) {
        m.ended = m.stopping ? "stopped" : "write failed: " + ec.message();
        return;
      }
      read();
    });
  };
  read();
  m.io.run();
}

void StageWorker::stop() {
  boost::asio::post(impl_->io, [m = impl_.get()] {
    if (m->stopping) return;
    m->stopping = true;
    m->ended = "stopped";
    m->with_ws([](auto& ws) {
      ws.async_close(websocket::close_code::normal, [](boost::beast::error_code) {});
    });
  });
}

}  // namespace sluice

#include "sluice/client/stage_worker.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it

#include "sluice/relay/protocol.hpp"

namespace sluice {

namespace websocket = boost::beast::websocket;
using boost::asio::ip::tcp;

struct StageWorker::Impl {
  boost::asio::io_context io;
  websocket::stream<tcp::socket> ws{io};
  boost::beast::flat_buffer in;
  std::string out;
  std::string ended;
  bool stopping = false;
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
  tcp::resolver resolver(impl_->io);
  boost::beast::error_code ec;
  const auto endpoints = resolver.resolve(options_.host, std::to_string(options_.port), ec);
  if (!ec) boost::asio::connect(impl_->ws.next_layer(), endpoints, ec);
  if (!ec) impl_->ws.next_layer().set_option(tcp::no_delay(true), ec);  // results go out now
  if (ec) {
    throw std::runtime_error("cannot reach the relay at " + options_.host + ":" +
                             std::to_string(options_.port) + ": " + ec.message());
  }
  // (Asynchronous: Beast 1.74's synchronous handshake leaves the response of a refusal unread
  // into `answer`; the asynchronous one hands it over.)
  websocket::response_type answer;
  if (!options_.token.empty()) {
    impl_->ws.set_option(
        websocket::stream_base::decorator([token = options_.token](websocket::request_type& req) {
          req.set(boost::beast::http::field::authorization, "Bearer " + token);
        }));
  }
  impl_->ws.async_handshake(answer, options_.host, target_of(options_),
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
  Impl& m = *impl_;
  // read -> handle -> write -> read ...
  std::function<void()> read;
  std::function<void()> answer;
  read = [&] {
    m.in.clear();
    m.ws.async_read(m.in, [&](boost::beast::error_code ec, std::size_t) {
      if (ec) {
        m.ended = m.stopping ? "stopped"
                             : "the relay closed the socket: " + ec.message() +
                                   (m.ws.reason().code != 0
                                        ? " (" + std::to_string(m.ws.reason().code) + " " +
                                              std::string(m.ws.reason().reason.data(),
                                                          m.ws.reason().reason.size()) +
                                              ")"
                                        : "");
        return;
      }
      if (m.ws.got_text()) {  // the relay's hello, or an error about something we sent
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
    m.ws.text(text);
    m.ws.async_write(boost::asio::buffer(m.out), [&](boost::beast::error_code ec, std::size_t) {
      if (ec) {
        m.ended = m.stopping ? "stopped" : "write failed: " + ec.message();
        return;
      }
      read();
    });
  };
  read();
  m.io.run();
  return m.ended;
}

void StageWorker::stop() {
  boost::asio::post(impl_->io, [m = impl_.get()] {
    if (m->stopping) return;
    m->stopping = true;
    m->ended = "stopped";
    m->ws.async_close(websocket::close_code::normal, [](boost::beast::error_code) {});
  });
}

}  // namespace sluice

#include "sluice/client/stage_worker.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it

#include "sluice/relay/protocol.hpp"

namespace sluice {

namespace websocket = boost::beast::websocket;
using boost::asio::ip::tcp;

GrayImage grayscale_downscale(std::string_view rgb, unsigned width, unsigned height,
                              unsigned factor) {
  if (factor == 0) throw std::invalid_argument("downscale factor 0: use 1 or more");
  if (std::uint64_t{width} * height * 3 != rgb.size() || width == 0 || height == 0) {
    throw std::invalid_argument("expected " + std::to_string(width) + " x " +
                                std::to_string(height) +
                                " x 3 = " + std::to_string(std::uint64_t{width} * height * 3) +
                                " bytes of RGB, got " + std::to_string(rgb.size()));
  }
  GrayImage out;
  out.width = std::max(1U, width / factor);
  out.height = std::max(1U, height / factor);
  out.pixels.resize(std::size_t{out.width} * out.height);
  const auto* p = reinterpret_cast<const unsigned char*>(rgb.data());
  std::uint64_t total = 0;
  for (unsigned y = 0; y < out.height; ++y) {
    for (unsigned x = 0; x < out.width; ++x) {
      // The box of source pixels this output pixel covers (the last row/column takes the rest).
      const unsigned x0 = x * width / out.width;
      const unsigned x1 = (x + 1) * width / out.width;
      const unsigned y0 = y * height / out.height;
      const unsigned y1 = (y + 1) * height / out.height;
      std::uint64_t sum = 0;
      for (unsigned sy = y0; sy < y1; ++sy) {
        const unsigned char* row = p + (std::size_t{sy} * width) * 3;
        for (unsigned sx = x0; sx < x1; ++sx) {
          const unsigned char* px = row + std::size_t{sx} * 3;
          // BT.601 luma in fixed point: (77 R + 150 G + 29 B) / 256
          sum += (77U * px[0] + 150U * px[1] + 29U * px[2]) >> 8;
        }
      }
      const std::uint64_t n = std::uint64_t{x1 - x0} * (y1 - y0);
      const auto v = static_cast<unsigned char>(sum / n);
      out.pixels[std::size_t{y} * out.width + x] = static_cast<char>(v);
      total += v;
    }
  }
  out.mean = static_cast<double>(total) / static_cast<double>(out.pixels.size());
  return out;
}

struct StageWorker::Impl {
  boost::asio::io_context io;
  websocket::stream<tcp::socket> ws{io};
  boost::asio::steady_timer timer{io};
  boost::beast::flat_buffer in;
  std::string out;
  std::string ended;
  bool stopping = false;
};

StageWorker::StageWorker(StageWorkerOptions options)
    : options_(std::move(options)),
      delay_ms_(options_.delay.count()),
      impl_(std::make_unique<Impl>()) {}

StageWorker::~StageWorker() = default;

namespace {

std::string target_of(const StageWorkerOptions& o) {
  return "/v1/ws/work/" + o.topic + "?name=" + o.name +
         "&concurrency=" + std::to_string(o.concurrency);
}

// What the relay answered a refused upgrade: asked again as plain HTTP, to read the body.
std::string refusal(const StageWorkerOptions& o) {
  namespace http = boost::beast::http;
  try {
    boost::asio::io_context io;
    tcp::socket socket(io);
    tcp::resolver resolver(io);
    boost::asio::connect(socket, resolver.resolve(o.host, std::to_string(o.port)));
    http::request<http::empty_body> req{http::verb::get, target_of(o), 11};
    req.set(http::field::host, o.host);
    req.set(http::field::connection, "Upgrade");
    req.set(http::field::upgrade, "websocket");
    req.set(http::field::sec_websocket_version, "13");
    req.set(http::field::sec_websocket_key, "dGhlIHNhbXBsZSBub25jZQ==");
    http::write(socket, req);
    boost::beast::flat_buffer buffer;
    http::response<http::string_body> res;
    http::read(socket, buffer, res);
    return "HTTP " + std::to_string(res.result_int()) + ": " + res.body();
  } catch (const std::exception& e) {
    return e.what();
  }
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
  impl_->ws.handshake(options_.host, target_of(options_), ec);
  if (ec == websocket::error::upgrade_declined) {
    throw std::runtime_error("the relay refused the worker: " + refusal(options_));
  }
  if (ec) throw std::runtime_error("WebSocket handshake failed: " + ec.message());
}

std::string StageWorker::run() {
  Impl& m = *impl_;
  // read -> (delay) -> transform -> write -> read ...
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
      const auto delay = std::chrono::milliseconds(delay_ms_.load());
      if (delay.count() > 0) {
        m.timer.expires_after(delay);
        m.timer.async_wait([&](boost::beast::error_code tec) {
          if (!tec) answer();
        });
      } else {
        answer();
      }
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
    const std::string_view rgb = frame.substr(ws::kFrameHeaderBytes);
    const auto pixels = static_cast<unsigned>(rgb.size() / 3);
    const unsigned width = options_.width != 0 ? options_.width : pixels;
    const unsigned height =
        options_.height != 0 ? options_.height : (width != 0 ? pixels / width : 0);
    bool text = false;
    try {
      const GrayImage g = grayscale_downscale(rgb, width, height, options_.downscale);
      const auto header = ws::encode(head);
      m.out.assign(header.begin(), header.end());
      m.out += nlohmann::json{{"width", g.width}, {"height", g.height}, {"mean", g.mean}}.dump();
      m.out += '\n';
      m.out += g.pixels;
      ++processed_;
    } catch (const std::invalid_argument& e) {
      m.out = nlohmann::json{{"frame_index", head.index}, {"error", e.what()}}.dump();
      text = true;
      ++refused_;
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
    m->timer.cancel();
    m->ws.async_close(websocket::close_code::normal, [](boost::beast::error_code) {});
  });
}

}  // namespace sluice

// A WebSocket client that reads and writes at once (Beast, on its own I/O thread): a stage's
// publisher sends frames while the relay's drop notices and signals arrive on the same socket,
// and a raw worker reads frames while it answers them.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

namespace sluice::testing {

class AsyncWs {
 public:
  struct Message {
    bool text = false;
    std::string bytes;
  };

  AsyncWs() = default;
  AsyncWs(const AsyncWs&) = delete;
  AsyncWs& operator=(const AsyncWs&) = delete;
  ~AsyncWs() { close(); }

  /// Connects and upgrades; false with the error in `error()`.
  bool connect(std::uint16_t port, const std::string& target) {
    boost::beast::error_code ec;
    ws_.next_layer().connect({boost::asio::ip::make_address("127.0.0.1"), port}, ec);
    if (!ec) ws_.next_layer().set_option(boost::asio::ip::tcp::no_delay(true), ec);
    if (!ec) ws_.handshake("127.0.0.1", target, ec);
    if (ec) {
      error_ = ec.message();
      return false;
    }
    read();
    thread_ = std::thread([this] { io_.run(); });
    return true;
  }
  const std::string& error() const { return error_; }

  /// Queues a message (binary unless `text`); written in order on the I/O thread.
  void send(std::string bytes, bool text = false) {
    boost::asio::post(io_, [this, m = Message{text, std::move(bytes)}]() mutable {
      out_.push_back(std::move(m));
      if (out_.size() == 1) write();
    });
  }

  /// Waits until `pred(messages)` holds (checked on each arrival) or `timeout`; true if it did.
  bool wait(const std::function<bool(const std::vector<Message>&)>& pred,
            std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return pred(in_); });
  }
  std::vector<Message> messages() const {
    std::lock_guard lock(mu_);
    return in_;
  }
  /// The text messages parsed as JSON.
  std::vector<nlohmann::json> events() const {
    std::vector<nlohmann::json> out;
    for (const auto& m : messages()) {
      if (m.text) out.push_back(nlohmann::json::parse(m.bytes, nullptr, false));
    }
    return out;
  }
  bool closed() const {
    std::lock_guard lock(mu_);
    return closed_;
  }

  /// Closes with a close handshake (after what is queued) and joins the I/O thread.
  void close() {
    if (!thread_.joinable()) return;
    boost::asio::post(io_, [this] {
      closing_ = true;
      if (out_.empty())
        ws_.async_close(boost::beast::websocket::close_code::normal,
                        [](boost::beast::error_code) {});
    });
    join();
  }
  /// Drops the TCP connection without a close handshake (a client that vanishes).
  void vanish() {
    if (!thread_.joinable()) return;
    boost::asio::post(io_, [this] {
      boost::beast::error_code ec;
      ws_.next_layer().shutdown(boost::asio::ip::tcp::socket::shutdown_both, ec);
      ws_.next_layer().close(ec);
    });
    join();
  }

 private:
  void join() { thread_.join(); }
  void read() {
    buffer_.clear();
    ws_.async_read(buffer_, [this](boost::beast::error_code ec, std::size_t) {
      std::lock_guard lock(mu_);
      if (ec) {
        closed_ = true;
        cv_.notify_all();
        return;
      }
      in_.push_back({ws_.got_text(), boost::beast::buffers_to_string(buffer_.data())});
      cv_.notify_all();
      read();
    });
  }
  void write() {
    ws_.text(out_.front().text);
    ws_.async_write(boost::asio::buffer(out_.front().bytes),
                    [this](boost::beast::error_code ec, std::size_t) {
                      out_.pop_front();
                      if (ec) {
                        out_.clear();
                        return;
                      }
                      if (!out_.empty()) {
                        write();
                      } else if (closing_) {
                        ws_.async_close(boost::beast::websocket::close_code::normal,
                                        [](boost::beast::error_code) {});
                      }
                    });
  }

  boost::asio::io_context io_;
  boost::beast::websocket::stream<boost::asio::ip::tcp::socket> ws_{io_};
  boost::beast::flat_buffer buffer_;
  std::deque<Message> out_;  // I/O thread only
  bool closing_ = false;     // I/O thread only
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Message> in_;  // guarded by mu_
  bool closed_ = false;      // guarded by mu_
  std::string error_;
  std::thread thread_;
};

}  // namespace sluice::testing

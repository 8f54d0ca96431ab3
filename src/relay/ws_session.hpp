// The relay's WebSocket transport on its HTTP port (Boost.Beast over relay::CoalescingSocket;
// relay-internal): what every WebSocket session shares (WsSession: the stream, its slot, one
// bounded outgoing queue where events overtake frames, one write at a time, closing once, a
// refusal as a close code), and the sessions each role's adapter starts — publishers over
// PublishSession (ws_publish.cpp), subscribers over SubscriberPump (ws_subscribe.cpp), stage
// workers over WorkerSession (ws_work.cpp); ws_upgrade.cpp routes an upgrade to one of them.
//
// Binary frames: the 16-byte header (sluice/relay/protocol.hpp) and the payload. Text frames:
// JSON events. Everything a session does runs on its loop; hooks from other threads post
// there. See docs/protocol.md.
#pragma once

#include <array>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it

#include "coalescing_socket.hpp"
#include "http_router.hpp"
#include "http_server.hpp"
#include "refusal.hpp"
#include "relay_core.hpp"
#include "sluice/priority_channel.hpp"
#include "sluice/relay/protocol.hpp"

namespace sluice::relay {

namespace websocket = boost::beast::websocket;
using WsStream = websocket::stream<CoalescingSocket>;

// Each role's adapter: starts its session on `connection` (nullopt), or refuses the upgrade.
std::optional<HttpResponse> ws_publish(RelayCore& core, SessionSlot slot, const WsRoute& route,
                                       const HttpTarget& target, Connection& connection,
                                       HttpServer::Request& request);
std::optional<HttpResponse> ws_subscribe(RelayCore& core, SessionSlot slot, const WsRoute& route,
                                         const HttpTarget& target, Connection& connection,
                                         HttpServer::Request& request);
std::optional<HttpResponse> ws_work(RelayCore& core, SessionSlot slot, const WsRoute& route,
                                    const HttpTarget& target, Connection& connection,
                                    HttpServer::Request& request);
std::optional<HttpResponse> ws_stats(RelayCore& core, SessionSlot slot, const WsRoute& route,
                                     const HttpTarget& target, Connection& connection,
                                     HttpServer::Request& request);

inline std::string json_text(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// One WebSocket message on its way out: a JSON event (text), or a frame (binary: the session's
// frame header, then the payload Buffer shared with every other subscriber).
struct Outgoing {
  std::string text;
  std::optional<RelayMessage> frame;
  std::size_t size_bytes() const {
    return frame ? ws::kFlaggedFrameHeaderBytes + frame->payload.size() : text.size();
  }
};

// A connection's one outgoing queue. Control events (errors, slow_down, resume) and critical
// ones (gap notices; drop notices) overtake frames and are never dropped: when 64 of a class
// are unread the peer is not reading, and the session is closed (1008) instead. Frames (bulk)
// come from the role one at a time: a subscriber's cursor stays the real queue.
inline PriorityChannelConfig outbox_config(const std::string& name) {
  PriorityChannelConfig c;
  c.name = name;
  c[Priority::control].max_items = kMaxControlQueued;
  c[Priority::critical].max_items = kMaxControlQueued;
  c[Priority::important].max_items = 1;  // a stats snapshot (ws_stats.cpp), one at a time
  c[Priority::bulk].max_items = 1;
  c.max_items = 2 * kMaxControlQueued + 2;
  c.max_bytes = kUnlimitedBytes;  // bounded by the items: a frame is at most max_frame_bytes
  c.protected_full = PriorityChannelConfig::ProtectedFull::reject;
  return c;
}

/// How a kind of session reads: the largest message Beast accepts (0: the session measures
/// them itself), and how much it reads ahead per system call (0: on demand).
struct WsReading {
  std::uint64_t message_max = 0;
  std::size_t read_ahead = 0;
  // The setting that bounds message_max, named by the refusal of a larger message ("": a
  // fixed bound of the protocol).
  std::string_view message_max_setting;
  // Writes wait while a batch is on its way to the kernel (CoalescingSocket::Options::one_batch):
  // a subscriber's frames stay in its cursor meanwhile.
  bool one_batch = false;
};

// What every kind of WebSocket session shares: the stream, its slot, the outgoing queue (one
// write at a time), closing once. Everything here runs on the session's loop (`loop`, which
// `connection` belongs to): the relay's main loop for publishers and workers, any loop of
// server.threads for a subscriber.
template <class Derived>
class WsSession : public std::enable_shared_from_this<Derived> {
 public:
  WsSession(RelayCore& core, IoThread& loop, SessionSlot slot, Connection connection,
            const std::string& name, WsReading reading)
      : core_(core),
        loop_(loop),
        slot_(std::move(slot)),
        reading_(reading),
        ws_(std::move(connection), socket_options(loop, reading)),
        timer_(ws_.get_executor()),
        out_(outbox_config(name)),
        idle_timer_(ws_.get_executor()) {}

  void start(HttpServer::Request request) {
    // Beast times the opening and closing handshakes. A silent peer is found by watch_idle()
    // instead of Beast's idle timeout, which re-arms a timer at every message read (two
    // allocations and a timer-queue update per message: a third of a small frame's cost).
    websocket::stream_base::timeout t{};
    t.handshake_timeout = core_.config.handshake_timeout;
    t.idle_timeout = websocket::stream_base::none();
    t.keep_alive_pings = false;
    ws_.set_option(t);
    // One WebSocket frame per message, written in one gather (header + shared payload). Beast
    // would otherwise cut a message into frames of its 4 KiB write buffer: 256 writes for a
    // 1 MiB frame, each a system call.
    ws_.auto_fragment(false);
    ws_.read_message_max(reading_.message_max);
    decorate_answer(request);
    request_ = std::move(request);
    ws_.async_accept(request_, [self = this->shared_from_this()](boost::beast::error_code ec) {
      if (ec) return;
      self->watch_idle();
      self->opened();
    });
  }

  // The upgrade's answer: the session's own headers (answer_header), and the subprotocol. A
  // browser offering subprotocols (its token as sluice.bearer.<token>, see http_caller) must
  // get one back: "sluice" if offered, else the first one offered that is not a token — a
  // token is never echoed (a client offering only its token gets no subprotocol back, and a
  // browser then fails the handshake: offer "sluice" beside it, as the clients do).
  void decorate_answer(const HttpServer::Request& request) {
    std::string chosen;
    const auto offered = request[boost::beast::http::field::sec_websocket_protocol];
    const auto items = header_items(std::string_view(offered.data(), offered.size()));
    for (const auto p : items) {
      if (p == ws::kSubprotocol || (chosen.empty() && !p.starts_with("sluice.bearer.")))
        chosen = std::string(p);
    }
    if (chosen.empty() && answer_headers_.empty()) return;
    ws_.set_option(websocket::stream_base::decorator(
        [chosen, headers = answer_headers_](websocket::response_type& res) {
          if (!chosen.empty()) res.set(boost::beast::http::field::sec_websocket_protocol, chosen);
          for (const auto& [name, value] : headers) res.set(name, value);
        }));
  }

  // The session's frame header: ws::kFrameHeaderBytes or ws::kFlaggedFrameHeaderBytes (the
  // route's ?header=), both directions; the answer says it (Sluice-Header). Before start().
  void frame_header(std::size_t bytes) {
    frame_header_bytes_ = bytes;
    answer_header("Sluice-Header", std::to_string(bytes));
  }
  std::size_t frame_header_bytes() const { return frame_header_bytes_; }

  // A header of the upgrade's answer (before start()).
  void answer_header(std::string name, std::string value) {
    answer_headers_.emplace_back(std::move(name), std::move(value));
  }

  // The session ends (1008, unauthenticated) when `who`'s token expires. Before start().
  void expire_with(const Principal& who) {
    const auto when = steady_expiry(who);
    if (!when) return;
    expiry_.emplace(loop_, *when, [w = this->weak_from_this(), r = token_expired(who)] {
      if (auto self = w.lock(); self && !self->ending()) self->end(r);
    });
  }

  // Every session's small writes are coalesced; producers read ahead (see WsReading).
  static CoalescingSocket::Options socket_options(IoThread& loop, WsReading reading) {
    CoalescingSocket::Options o;
    o.flush_queue = &loop.flushes();
    o.ready_queue = &loop.ready();
    o.read_ahead = reading.read_ahead;
    o.one_batch = reading.one_batch;
    return o;
  }

  // Writes the queued messages, the most important first, unless a write is in flight: each
  // into the socket's batch while it fits there (flushed at the end of the I/O thread's round,
  // one system call for many messages), then one asynchronous write.
  void write_next() {
    if (writing_ || closing_) return;
    for (;;) {
      self().refill();
      if (closing_) return;
      auto r = out_.try_recv();
      if (r.status != RecvStatus::ok) {
        if (ending_) {  // everything before the end went out
          close(ending_->first, ending_->second);
          return;
        }
        self().idle();
        return;
      }
      // Beast is answering the peer's close (the read ends next): nothing more may follow it.
      if (!ws_.is_open()) return;
      if (!write(std::move(r->item))) return;
    }
  }

 protected:
  Derived& self() { return static_cast<Derived&>(*this); }

  // Queues a message without writing it; false (and the session closing) if its class is full.
  bool enqueue(Priority p, Outgoing m) {
    if (closing_) return false;
    if (out_.try_send(p, std::move(m)).status == SendStatus::ok) return true;
    close(websocket::close_code::policy_error,
          std::to_string(kMaxControlQueued) + " " + std::string(to_string(p)) +
              " events unread: the peer is not reading its socket");
    return false;
  }
  // Queues a JSON event (control by default) and writes it as soon as it is its turn.
  void send_event(const nlohmann::json& event, Priority p = Priority::control) {
    if (enqueue(p, Outgoing{json_text(event), std::nullopt})) write_next();
  }
  // Closes once everything queued so far has been written (at write_next()'s next turn).
  void end_after_queued(websocket::close_code code, std::string reason) {
    ending_.emplace(code, std::move(reason));
  }
  // Ends the session with `r`: an error event with its message (and, for a frame, its
  // sequence), then the close its kind maps to.
  void end(const Refusal& r, std::optional<std::uint64_t> sequence = std::nullopt) {
    core_.counted(r);
    nlohmann::json event{{"error", r.message}};
    if (sequence) event["frame_index"] = *sequence;
    send_event(event);
    close(static_cast<websocket::close_code>(codes(r.kind).ws_close), close_reason(r));
  }
  // A read failed: if Beast refused a message over read_message_max (it closes with 1009 as
  // soon as a frame header declares more, before any payload, without a reason), that is the
  // relay's refusal (frame_too_big): counted, logged and its close counted, as every other.
  void read_failed(boost::beast::error_code ec) {
    if (ec != websocket::error::message_too_big || closing_) return;
    closing_ = true;
    timer_.cancel();
    const std::string setting(reading_.message_max_setting);
    core_.counted(Refusal{RefusalKind::frame_too_big,
                          "a message over " + std::to_string(reading_.message_max) +
                              " bytes: this session reads none larger" +
                              (setting.empty() ? "" : " (" + setting + ")"),
                          setting});
    count_close(websocket::close_code::too_big);
  }
  void count_close(websocket::close_code code) {
    core_.metrics
        .counter("sluice_ws_closes_total", "WebSocket sessions the relay closed, by close code",
                 {{"code", std::to_string(static_cast<int>(code))}})
        .inc();
  }
  // Closing, or due to close once the queue is written: nothing more is to be queued.
  bool ending() const { return closing_ || ending_.has_value(); }
  bool writing() const { return writing_; }  // a message is being written
  void close(websocket::close_code code, std::string_view reason) {
    if (closing_) return;
    closing_ = true;
    timer_.cancel();
    count_close(code);
    // (Beast holds the close frame back until a write in flight is done.)
    ws_.async_close(
        websocket::close_reason(code, boost::beast::string_view(reason.data(), reason.size())),
        [self = this->shared_from_this()](boost::beast::error_code) {});
    // A peer that does not read lets neither the write in flight nor the close frame out:
    // drop the connection if the close has not completed within the handshake timeout.
    kill_.emplace(ws_.get_executor());
    kill_->expires_after(core_.config.handshake_timeout);
    kill_->async_wait([w = this->weak_from_this()](boost::beast::error_code ec) {
      if (auto s = w.lock(); s && !ec) boost::beast::get_lowest_layer(s->ws_).close();
    });
  }
  // A peer silent for idle_timeout is dropped; at half of it the relay pings it, so that a peer
  // that answers pings (any bytes count) stays however quiet the topic. One timer tick per half
  // idle_timeout, whatever the traffic.
  void watch_idle() {
    idle_timer_.expires_after(core_.config.idle_timeout / 2);
    idle_timer_.async_wait([w = this->weak_from_this()](boost::beast::error_code ec) {
      const auto s = w.lock();
      if (!s || ec || s->closing_) return;  // (a close has its own deadline: kill_)
      const std::uint64_t heard = s->ws_.next_layer().bytes_received();
      if (heard != s->heard_) {
        s->heard_ = heard;
        s->silent_ticks_ = 0;
      } else if (++s->silent_ticks_ >= 2) {  // silent for idle_timeout, a ping unanswered
        boost::beast::get_lowest_layer(s->ws_).close();
        return;
      } else if (!s->pinging_ && s->ws_.is_open()) {
        s->pinging_ = true;
        s->ws_.async_ping({}, [s](boost::beast::error_code) { s->pinging_ = false; });
      }
      s->watch_idle();
    });
  }

  // A callback for hooks on other threads: runs `method` on the session's loop if still alive
  // (from another loop, at the end of its round: IoThread::post_soon).
  std::function<void()> posted(void (Derived::*method)()) {
    return [w = this->weak_from_this(), io = &loop_, method] {
      io->post_soon([w, method] {
        if (auto s = w.lock()) (s.get()->*method)();
      });
    };
  }

  // What a derived session may add (defaults: nothing).
  void refill() {}                    // top up the queue (queue_frame(): a subscriber's next frame)
  void idle() {}                      // nothing to write: arm what will call write_next()
  void write_started() {}             // an asynchronous write: e.g. time it
  bool write_done() { return true; }  // false: stop (the session is ending)

  // Frames wait in the role (a subscription's cursor, a worker's frames) until the queue
  // has room for one: at most one is queued beside the one being written.
  bool frame_queued() const { return frame_queued_; }
  void queue_frame(RelayMessage m) {
    frame_queued_ = enqueue(Priority::bulk, Outgoing{{}, std::move(m)});
  }

  RelayCore& core_;
  IoThread& loop_;
  std::optional<LoopAlarm> expiry_;  // set before start(), then only destroyed
  SessionSlot slot_;
  const WsReading reading_;
  WsStream ws_;
  boost::asio::steady_timer timer_;
  HttpServer::Request request_;
  std::vector<std::pair<std::string, std::string>> answer_headers_;
  PriorityChannel<Outgoing> out_;
  std::optional<boost::asio::steady_timer> kill_;  // after close(): see there
  boost::asio::steady_timer idle_timer_;           // watch_idle()
  std::uint64_t heard_ = 0;                        // bytes received at its last tick
  int silent_ticks_ = 0;                           // ticks since bytes last came
  bool pinging_ = false;                           // a ping is being written
  bool closing_ = false;

 private:
  // Writes one message as one unfragmented WebSocket frame, built here rather than by Beast's
  // write operation (one per message, with a completion each): the socket layer keeps each
  // write's bytes together, so these frames and Beast's own control frames (pongs, pings, the
  // close) never interleave. True if it went into the batch; false if an asynchronous write
  // is now in flight (write_done() and write_next() follow its completion).
  bool write(Outgoing m) {
    if (m.frame) frame_queued_ = false;  // room for the next one
    const bool binary = m.frame.has_value();
    std::size_t head = 0;
    std::uint64_t size = 0;
    if (binary) {
      const auto header =
          ws::encode_flagged({m.frame->sequence, m.frame->timestamp_ns, m.frame->flags});
      size = frame_header_bytes_ + m.frame->payload.size();
      head = ws_frame_header(true, size);
      std::memcpy(header_.data() + head, header.data(), frame_header_bytes_);
    } else {
      size = m.text.size();
      head = ws_frame_header(false, size);
    }
    const std::array<boost::asio::const_buffer, 2> parts{
        boost::asio::const_buffer(header_.data(), head + (binary ? frame_header_bytes_ : 0)),
        binary ? boost::asio::const_buffer(m.frame->payload.data(), m.frame->payload.size())
               : boost::asio::const_buffer(m.text.data(), m.text.size())};
    if (ws_.next_layer().try_append(parts)) return true;
    writing_ = true;
    current_ = std::move(m);  // (the buffers point into it, moved or not: the heap, or header_)
    const std::array<boost::asio::const_buffer, 2> held{
        boost::asio::const_buffer(header_.data(), head + (binary ? frame_header_bytes_ : 0)),
        binary ? boost::asio::const_buffer(current_.frame->payload.data(),
                                           current_.frame->payload.size())
               : boost::asio::const_buffer(current_.text.data(), current_.text.size())};
    self().write_started();
    // (The layer's async_write_some writes all of it, as one unit; asio::async_write would
    // split it into 64 KiB calls, between which Beast's control frames could slip.)
    ws_.next_layer().async_write_some(
        held, [self = this->shared_from_this()](boost::beast::error_code ec, std::size_t) {
          self->writing_ = false;
          self->current_ = {};  // (a frame's Buffer is released here)
          if (ec || !self->self().write_done()) return;
          self->write_next();
        });
    return false;
  }

  // An unmasked (server) WebSocket frame header with FIN set for `size` payload bytes into
  // header_; its length.
  std::size_t ws_frame_header(bool binary, std::uint64_t size) {
    header_[0] = binary ? 0x82 : 0x81;
    if (size < 126) {
      header_[1] = static_cast<unsigned char>(size);
      return 2;
    }
    if (size <= 0xFFFF) {
      header_[1] = 126;
      header_[2] = static_cast<unsigned char>(size >> 8);
      header_[3] = static_cast<unsigned char>(size);
      return 4;
    }
    header_[1] = 127;
    for (int i = 0; i < 8; ++i) header_[2 + i] = static_cast<unsigned char>(size >> (56 - 8 * i));
    return 10;
  }

  Outgoing current_;  // being written (a frame's Buffer stays alive until then)
  // The WebSocket frame header (at most 10 bytes), then a frame's header (16 or 24 bytes).
  std::array<unsigned char, 10 + ws::kFlaggedFrameHeaderBytes> header_{};
  std::optional<std::pair<websocket::close_code, std::string>> ending_;
  bool writing_ = false;
  bool frame_queued_ = false;
  std::size_t frame_header_bytes_ = ws::kFrameHeaderBytes;
};

}  // namespace sluice::relay

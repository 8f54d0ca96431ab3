// A subscriber over WebSocket (/v1/ws/subscribe/{topic}?name=...&depth=...&window=...): a
// SubscriberPump whose frames go out as binary messages (the frame header, then the payload
// Buffer shared with every other subscriber) and whose gaps go out as JSON events ahead of the
// frame after them. One write at a time. The pump judges its progress by what the peer's TCP
// acknowledged (socket_progress.hpp), and by its acknowledgements on a window: a stalled
// subscriber is closed with 4008.
//
// A window (?window=N): the subscriber acknowledges the frames it has processed
// ({"ack": <frames processed so far>}) and at most N unacknowledged frames are out to it;
// the rest wait in its cursor (lapped on a real-time topic, holding the producer back on a
// lossless one). For subscribers that cannot size their socket buffers (browsers): what they
// are shown is at most N frames behind the topic's depth, whatever the kernels hold.
//
// The subscriber runs on the loop serving the fewest; its socket moves there.
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <charconv>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "socket_progress.hpp"
#include "subscriber_pump.hpp"
#include "ws_session.hpp"

namespace sluice::relay {

namespace {

// Subscribers send nothing but control frames; a message over this is refused (1009).
constexpr std::uint64_t kMaxSubscriberMessage = std::uint64_t{64} * 1024;

class WsSubscriber final : public WsSession<WsSubscriber> {
 public:
  // `connection` belongs to `loop`, where the session runs.
  // `window`: 0, none; else the most unacknowledged frames out to it.
  WsSubscriber(RelayCore& core, IoThread& loop, SessionSlot slot, Connection connection,
               std::unique_ptr<SubscriberPump> pump, std::uint64_t window)
      : WsSession(core, loop, std::move(slot), std::move(connection),
                  "ws-subscriber/" + pump->topic().name + "/" + pump->name(),
                  {kMaxSubscriberMessage, 0, "", /*one_batch=*/true}),
        pump_(std::move(pump)),
        window_(window) {
    loop_.subscribers.fetch_add(1, std::memory_order_relaxed);
  }
  WsSubscriber(const WsSubscriber&) = delete;
  WsSubscriber& operator=(const WsSubscriber&) = delete;
  WsSubscriber(WsSubscriber&&) = delete;
  WsSubscriber& operator=(WsSubscriber&&) = delete;
  ~WsSubscriber() { loop_.subscribers.fetch_sub(1, std::memory_order_relaxed); }

  void opened() {
    pump_->watch({[w = weak_from_this()](std::function<void()> tick) {
                    auto s = w.lock();
                    if (!s || s->closing_) return;
                    s->timer_.expires_after(s->core_.config.send_timeout);
                    s->timer_.async_wait([w, tick = std::move(tick)](boost::beast::error_code ec) {
                      if (auto self = w.lock(); self && !ec && !self->closing_) tick();
                    });
                  },
                  [this] { return progress(); }, [this](const Refusal& r) { end(r); }});
    read();  // control frames (ping, close) are answered while reading
    write_next();
  }

 private:
  friend class WsSession<WsSubscriber>;

  // Moves the pump's next frame (and the gap notice before it) into the outgoing queue,
  // unless a frame already waits there.
  void refill() {
    while (!frame_queued() && !ending()) {
      if (window_ != 0 && sent_ - acked_ >= window_) return;  // (an ack writes on)
      switch (pump_->next(1, std::numeric_limits<std::size_t>::max())) {
        case SubscriberPump::Next::items:
          queue_frame(std::move(pump_->batch().front()));
          ++sent_;
          pump_->sending();
          return;
        case SubscriberPump::Next::gap:
          if (!enqueue(
                  Priority::critical,
                  Outgoing{json_text({{"gap", pump_->gap()},
                                      {"reason", std::string(to_string(pump_->gap_reason()))}}),
                           std::nullopt}))
            return;
          continue;  // the frame after the gap
        case SubscriberPump::Next::idle:
          return;
        case SubscriberPump::Next::end:
          if (const auto& r = pump_->refusal()) {
            end_after_queued(static_cast<websocket::close_code>(codes(r->kind).ws_close),
                             close_reason(*r));
          } else {
            end_after_queued(websocket::close_code::normal, "topic closed");
          }
          return;
      }
    }
  }
  // Nothing to write: wake up when the pump has something.
  void idle() {
    if (armed_ || ending()) return;
    armed_ = true;
    pump_->arm(posted(&WsSubscriber::readable));
  }
  void readable() {
    armed_ = false;
    write_next();
  }

  void read() {
    ws_.async_read(in_, [self = shared_from_this()](boost::beast::error_code ec, std::size_t) {
      if (ec) {  // the subscriber went away or closed: leave the topic now
        self->read_failed(ec);
        self->pump_->leave();
        self->closing_ = true;
        self->timer_.cancel();
        return;
      }
      self->message();
      self->in_.clear();
      self->read();
    });
  }

  // What a subscriber may send: acknowledgements on its window.
  void message() {
    const auto data = in_.cdata();
    const auto j =
        nlohmann::json::parse(static_cast<const char*>(data.data()),
                              static_cast<const char*>(data.data()) + data.size(), nullptr, false);
    const auto ack =
        ws_.got_text() && j.is_object() && j.contains("ack") && j["ack"].is_number_unsigned()
            ? std::optional<std::uint64_t>(j["ack"].get<std::uint64_t>())
            : std::nullopt;
    if (window_ == 0 || !ack) {
      send_event({{"error", window_ == 0 ? "subscribers send no frames on a subscribe socket "
                                           "(acknowledgements need ?window=N)"
                                         : "a windowed subscriber sends {\"ack\": <frames "
                                           "processed so far>}"}});
      return;
    }
    if (*ack < acked_ || *ack > sent_) {
      send_event({{"error", "ack " + std::to_string(*ack) + " is outside " +
                                std::to_string(acked_) + " to " + std::to_string(sent_) +
                                " (the frames sent so far; acks only grow)"}});
      return;
    }
    const bool was_full = sent_ - acked_ >= window_;
    acked_ = *ack;
    if (was_full && sent_ - acked_ < window_) write_next();
  }

  // The judge's reading: what the peer's TCP acknowledged (and on a window, the frames the
  // subscriber did), and whether anything waits to reach it.
  SubscriberPump::Progress progress() {
    auto& socket = boost::beast::get_lowest_layer(ws_);
    const auto p = socket.is_open() ? socket_progress(socket.native_handle()) : std::nullopt;
    if (p) pump_->set_unsent(p->unsent);
    const std::uint64_t unsent = p ? p->unsent : 0;
    return {(p ? p->acked : 0) + acked_,
            writing() || ws_.next_layer().unflushed_bytes() > 0 || unsent > 0,
            window_ != 0 && sent_ - acked_ >= window_};
  }

  std::unique_ptr<SubscriberPump> pump_;
  boost::beast::flat_buffer in_;
  const std::uint64_t window_;  // 0: none
  std::uint64_t sent_ = 0;      // frames handed to the socket
  std::uint64_t acked_ = 0;     // frames the subscriber acknowledged (on a window)
  bool armed_ = false;          // the pump's readable hook is registered
};

// `socket` (of the relay's loop) as a socket of `loop`: the same connection, now watched by
// that loop's reactor. Nothing is buffered past an upgrade request (the client waits for the
// answer), so nothing is lost; a TLS session follows its connection (see tls.hpp). On failure
// `ec` is set and the connection closed.
boost::asio::ip::tcp::socket move_to(IoThread& loop, boost::asio::ip::tcp::socket& socket,
                                     boost::system::error_code& ec) {
  if (socket.get_executor() == boost::asio::any_io_executor(loop.context().get_executor()))
    return std::move(socket);  // already there
  boost::asio::ip::tcp::socket moved(loop.context());
  const auto protocol = socket.local_endpoint(ec).protocol();
  const int fd = ec ? -1 : socket.release(ec);
  if (!ec) moved.assign(protocol, fd, ec);
  if (ec && fd >= 0) ::close(fd);
  return moved;
}

// The subscriber's connection on its loop, with its send buffer bounded if configured.
Outcome<Connection> hand_over(RelayCore& core, IoThread& loop, Connection& connection) {
  boost::system::error_code ec;
  Connection own{move_to(loop, connection.socket, ec), std::move(connection.tls)};
  if (ec) {
    return Refusal{RefusalKind::internal,
                   "cannot hand the connection to an I/O thread: " + ec.message()};
  }
  if (core.config.viewer_send_buffer_bytes > 0) {  // (a bound on what waits in the kernel)
    own.socket.set_option(boost::asio::socket_base::send_buffer_size(
                              static_cast<int>(core.config.viewer_send_buffer_bytes)),
                          ec);
    if (ec) {
      return Refusal{RefusalKind::internal,
                     "cannot set the subscriber's send buffer (limits.viewer_send_buffer_bytes): " +
                         ec.message(),
                     "limits.viewer_send_buffer_bytes"};
    }
  }
  return {std::move(own)};
}

}  // namespace

std::optional<HttpResponse> ws_subscribe(RelayCore& core, SessionSlot slot, const WsRoute& route,
                                         const HttpTarget& target, Connection& connection,
                                         HttpServer::Request& request) {
  const auto depth =
      target.count("depth", std::numeric_limits<std::uint64_t>::max(), "the topic's capacity");
  if (!depth) return http_refusal(core, depth.refusal());
  // Resuming: ?epoch=<the topic's epoch>&from=<position> (see SubscriberPump::start_position).
  SubscribeRequest join{route.who, route.topic,           target.param("name"),
                        *depth,    target.param("epoch"), 0};
  if (!join.resume_epoch.empty()) {
    const std::string from = target.param("from");
    const auto [end, ec] =
        std::from_chars(from.data(), from.data() + from.size(), join.resume_from);
    if (from.empty() || ec != std::errc{} || end != from.data() + from.size()) {
      return http_refusal(core, Refusal{RefusalKind::bad_request,
                                        "query parameter 'from' must be the position to resume "
                                        "at (a whole number) when 'epoch' is given",
                                        "from"});
    }
  }
  const auto window = target.count("window", 65536, "65536 frames");
  if (!window) return http_refusal(core, window.refusal());
  auto pump = SubscriberPump::join(core, join, "viewer", /*kernel_unsent=*/true);
  if (!pump) return http_refusal(core, pump.refusal());
  const std::string subscriber_epoch = (*pump)->epoch();
  const std::uint64_t subscriber_position = (*pump)->start_position();
  IoThread& loop = core.loops.subscriber_loop();
  auto own = hand_over(core, loop, connection);
  if (!own) return http_refusal(core, own.refusal());
  auto subscriber = std::make_shared<WsSubscriber>(core, loop, std::move(slot), std::move(*own),
                                                   std::move(*pump), *window);
  subscriber->expire_with(*route.who);
  subscriber->frame_header(route.frame_header_bytes);
  subscriber->answer_header("Sluice-Epoch", subscriber_epoch);
  subscriber->answer_header("Sluice-Position", std::to_string(subscriber_position));
  boost::asio::post(loop.context(), [subscriber, request = std::move(request)]() mutable {
    subscriber->start(std::move(request));
  });
  return std::nullopt;
}

}  // namespace sluice::relay

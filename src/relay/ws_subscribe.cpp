// A subscriber over WebSocket (/v1/ws/subscribe/{topic}?name=...&depth=...): a SubscriberPump
// whose frames go out as binary messages (the frame header, then the payload Buffer shared
// with every other subscriber) and whose gaps go out as JSON events ahead of the frame after
// them. One write at a time; every write that waits on the socket is timed for the pump's
// judge (a stalled subscriber is closed with 4008). The subscriber runs on the loop serving
// the fewest; its socket moves there.
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <boost/asio/post.hpp>
#include <charconv>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>

#include "subscriber_pump.hpp"
#include "ws_session.hpp"

namespace sluice::relay {

namespace {

// Subscribers send nothing but control frames; a message over this is refused (1009).
constexpr std::uint64_t kMaxSubscriberMessage = std::uint64_t{64} * 1024;

class WsSubscriber final : public WsSession<WsSubscriber> {
 public:
  // `connection` belongs to `loop`, where the session runs.
  WsSubscriber(RelayCore& core, IoThread& loop, SessionSlot slot, Connection connection,
               std::unique_ptr<SubscriberPump> pump)
      : WsSession(core, loop, std::move(slot), std::move(connection),
                  "ws-subscriber/" + pump->topic().name + "/" + pump->name(),
                  {kMaxSubscriberMessage, 0}),
        pump_(std::move(pump)) {
    loop_.subscribers.fetch_add(1, std::memory_order_relaxed);
  }
  WsSubscriber(const WsSubscriber&) = delete;
  WsSubscriber& operator=(const WsSubscriber&) = delete;
  WsSubscriber(WsSubscriber&&) = delete;
  WsSubscriber& operator=(WsSubscriber&&) = delete;
  ~WsSubscriber() { loop_.subscribers.fetch_sub(1, std::memory_order_relaxed); }

  void opened() {
    read();  // control frames (ping, close) are answered while reading
    write_next();
  }

 private:
  friend class WsSession<WsSubscriber>;

  // Moves the pump's next frame (and the gap notice before it) into the outgoing queue,
  // unless a frame already waits there.
  void refill() {
    while (!frame_queued() && !ending()) {
      switch (pump_->next(1, std::numeric_limits<std::size_t>::max())) {
        case SubscriberPump::Next::items:
          queue_frame(std::move(pump_->batch().front()));
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
        self->pump_->leave();
        self->closing_ = true;
        self->timer_.cancel();
        return;
      }
      self->in_.clear();
      self->send_event({{"error", "subscribers send no frames on a subscribe socket"}});
      self->read();
    });
  }

  // Every write that waits on the socket is timed (the judge's input); messages that went
  // into the socket's batch waited on nothing, and a batch that cannot leave makes the next
  // write wait.
  void write_started() {
    pump_->write_started();
    arm_send_timer();
  }
  bool write_done() {
    timer_.cancel();
    sample_unsent();
    if (auto refusal = pump_->write_done()) {
      end(*refusal);
      return false;
    }
    return true;
  }
  // Each send_timeout a write is still in flight counts as a timeout.
  void arm_send_timer() {
    timer_.expires_after(core_.config.send_timeout);
    timer_.async_wait([w = weak_from_this()](boost::beast::error_code ec) {
      auto s = w.lock();
      if (!s || ec || !s->writing() || s->closing_) return;
      s->sample_unsent();
      if (auto refusal = s->pump_->write_timed_out()) {
        s->end(*refusal);
      } else {
        s->arm_send_timer();
      }
    });
  }

  // The bytes the kernel holds unsent for this subscriber (SIOCOUTQ), for /metrics. On the
  // session's loop, which owns the socket; sampled when a send completes or times out, not
  // per message.
  void sample_unsent() {
    int n = 0;
    auto& socket = boost::beast::get_lowest_layer(ws_);
    if (socket.is_open() && ::ioctl(socket.native_handle(), SIOCOUTQ, &n) == 0 && n >= 0)
      pump_->set_unsent(static_cast<std::uint64_t>(n));
  }

  std::unique_ptr<SubscriberPump> pump_;
  boost::beast::flat_buffer in_;
  bool armed_ = false;  // the pump's readable hook is registered
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
  auto pump = SubscriberPump::join(core, join, "viewer", /*kernel_unsent=*/true);
  if (!pump) return http_refusal(core, pump.refusal());
  const std::string subscriber_epoch = (*pump)->epoch();
  const std::uint64_t subscriber_position = (*pump)->start_position();
  IoThread& loop = core.loops.subscriber_loop();
  auto own = hand_over(core, loop, connection);
  if (!own) return http_refusal(core, own.refusal());
  auto subscriber = std::make_shared<WsSubscriber>(core, loop, std::move(slot), std::move(*own),
                                                   std::move(*pump));
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

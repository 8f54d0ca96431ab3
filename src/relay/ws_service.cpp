// The relay's WebSocket endpoints on its HTTP port (Boost.Beast over relay::CoalescingSocket):
// publishers (/v1/ws/publish/{topic}), viewers (/v1/ws/subscribe/{topic}) and stage workers
// (/v1/ws/work/{topic}); the upgrade that routes a request to one of them.
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it

#include "coalescing_socket.hpp"
#include "frame_buffer.hpp"
#include "relay_impl.hpp"
#include "sluice/priority_channel.hpp"
#include "sluice/ws_frame.hpp"
#include "stage.hpp"

namespace sluice {

namespace {

using relay::Clock;
using relay::HttpServer;
using relay::IoThread;
using relay::kMaxControlQueued;
using relay::SessionSlot;
using relay::SubscriberSeries;
using relay::Throttle;
using relay::Topic;

// ---- WebSocket (on the HTTP port): /v1/ws/publish/{topic}, /v1/ws/subscribe/{topic} ----
//
// Binary frames: a 16-byte header (frame_index u64, timestamp_ns i64, little-endian) and the
// payload. Text frames: JSON control events. Everything runs on the relay's I/O thread; hooks
// from other threads post to it. See docs/protocol.md.

namespace websocket = boost::beast::websocket;
using WsStream = websocket::stream<relay::CoalescingSocket>;
constexpr std::size_t kMaxViewerMessage =
    std::size_t{64} * 1024;  // viewers send no frames: refused

class WsPublisher;
class WsWorker;
class WsSubscriber;

std::string json_text(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// One WebSocket message on its way out: a JSON event (text), or a frame (binary: the 16-byte
// header, then the payload Buffer shared with every other viewer).
struct Outgoing {
  std::string text;
  std::optional<RelayMessage> frame;
  std::size_t size_bytes() const {
    return frame ? ws::kFrameHeaderBytes + frame->payload.size() : text.size();
  }
};

// A connection's one outgoing queue. Control events (errors, slow_down, resume) and critical
// ones (gap notices; drop notices) overtake frames and are never dropped: when 64 of a class
// are unread the peer is not reading, and the session is closed (1008) instead. Frames (bulk)
// come from the viewer's subscription one at a time: its cursor stays the real queue.
PriorityChannelConfig outbox_config(const std::string& name) {
  PriorityChannelConfig c;
  c.name = name;
  c[Priority::control].max_items = kMaxControlQueued;
  c[Priority::critical].max_items = kMaxControlQueued;
  c[Priority::important].max_items = 1;  // (unused)
  c[Priority::bulk].max_items = 1;
  c.max_items = 2 * kMaxControlQueued + 2;
  c.max_bytes = kUnlimitedBytes;  // bounded by the items: a frame is at most max_frame_bytes
  c.protected_full = PriorityChannelConfig::ProtectedFull::reject;
  return c;
}

// What every kind of WebSocket session shares: the stream, its slot, the outgoing queue (one
// write at a time), closing once. Everything here runs on the session's loop (`loop`, which
// `socket` belongs to): the relay's I/O thread for publishers and workers, one of the loops
// of server.threads for a viewer.
template <class Derived>
class WsSession : public std::enable_shared_from_this<Derived> {
 public:
  WsSession(RelayServer::Impl& relay, IoThread& loop, SessionSlot slot,
            std::shared_ptr<Topic> topic, boost::asio::ip::tcp::socket socket,
            const std::string& name)
      : relay_(relay),
        loop_(loop),
        slot_(std::move(slot)),
        topic_(std::move(topic)),
        ws_(std::move(socket), socket_options(loop)),
        timer_(ws_.get_executor()),
        out_(outbox_config(name)) {}

  void start(HttpServer::Request request) {
    websocket::stream_base::timeout t{};
    t.handshake_timeout = relay_.config.handshake_timeout;
    t.idle_timeout = relay_.config.idle_timeout;  // pings at half of it keep a quiet peer alive
    t.keep_alive_pings = true;
    ws_.set_option(t);
    // One WebSocket frame per message, written in one gather (header + shared payload). Beast
    // would otherwise cut a message into frames of its 4 KiB write buffer: 256 writes for a
    // 1 MiB frame, each a system call.
    ws_.auto_fragment(false);
    // Publishers' frames are measured as they arrive (WsPublisher::on_read_some: a 1009 with
    // a reason); a viewer sends nothing but control frames, so Beast's own limit is enough.
    // A worker's results are frames like a publisher's.
    if constexpr (std::is_same_v<Derived, WsWorker>) {
      ws_.read_message_max(relay_.config.max_frame_bytes + ws::kFrameHeaderBytes);
    } else {
      ws_.read_message_max(std::is_same_v<Derived, WsPublisher> ? 0 : kMaxViewerMessage);
    }
    request_ = std::move(request);
    ws_.async_accept(request_, [self = this->shared_from_this()](boost::beast::error_code ec) {
      if (!ec) self->opened();
    });
  }

  // Producers (publishers, workers' results) read ahead 64 KiB per system call; viewers read
  // nothing but control frames. Every session's small writes are coalesced.
  static relay::CoalescingSocket::Options socket_options(IoThread& loop) {
    relay::CoalescingSocket::Options o;
    o.flush_queue = &loop.flushes();
    o.ready_queue = &loop.ready();
    o.read_ahead = std::is_same_v<Derived, WsSubscriber> ? 0 : 64 * 1024;
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
  // Closing, or due to close once the queue is written: nothing more is to be queued.
  bool ending() const { return closing_ || ending_.has_value(); }
  bool writing() const { return writing_; }  // a message is being written
  void close(websocket::close_code code, std::string_view reason) {
    if (closing_) return;
    closing_ = true;
    timer_.cancel();
    relay_.registry
        .counter("sluice_ws_closes_total", "WebSocket sessions the relay closed, by close code",
                 {{"code", std::to_string(static_cast<int>(code))}})
        .inc();
    // (Beast holds the close frame back until a write in flight is done.)
    ws_.async_close(
        websocket::close_reason(code, boost::beast::string_view(reason.data(), reason.size())),
        [self = this->shared_from_this()](boost::beast::error_code) {});
    // A peer that does not read lets neither the write in flight nor the close frame out:
    // drop the connection if the close has not completed within the handshake timeout.
    kill_.emplace(ws_.get_executor());
    kill_->expires_after(relay_.config.handshake_timeout);
    kill_->async_wait([w = this->weak_from_this()](boost::beast::error_code ec) {
      if (auto s = w.lock(); s && !ec) boost::beast::get_lowest_layer(s->ws_).close();
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
  void refill() {}                      // top up the queue (a viewer: from its subscription)
  void idle() {}                        // nothing to write: arm what will call write_next()
  void taken(const Outgoing& /*m*/) {}  // a message left the queue to be written
  void write_started(const Outgoing& /*m*/) {}  // an asynchronous write: e.g. time it
  bool write_done() { return true; }            // false: stop (the session is ending)

  RelayServer::Impl& relay_;
  IoThread& loop_;
  SessionSlot slot_;
  std::shared_ptr<Topic> topic_;
  WsStream ws_;
  boost::asio::steady_timer timer_;
  HttpServer::Request request_;
  PriorityChannel<Outgoing> out_;
  std::optional<boost::asio::steady_timer> kill_;  // after close(): see there
  bool closing_ = false;

 private:
  // Writes one message as one unframented WebSocket frame, built here rather than by Beast's
  // write operation (one per message, with a completion each): the socket layer keeps each
  // write's bytes together, so these frames and Beast's own control frames (pongs, pings, the
  // close) never interleave. True if it went into the batch; false if an asynchronous write
  // is now in flight (write_done() and write_next() follow its completion).
  bool write(Outgoing m) {
    self().taken(m);
    const bool binary = m.frame.has_value();
    std::size_t head = 0;
    std::uint64_t size = 0;
    if (binary) {
      const auto header = ws::encode({m.frame->sequence, m.frame->timestamp_ns});
      size = ws::kFrameHeaderBytes + m.frame->payload.size();
      head = ws_frame_header(true, size);
      std::memcpy(header_.data() + head, header.data(), header.size());
    } else {
      size = m.text.size();
      head = ws_frame_header(false, size);
    }
    const std::array<boost::asio::const_buffer, 2> parts{
        boost::asio::const_buffer(header_.data(), head + (binary ? ws::kFrameHeaderBytes : 0)),
        binary ? boost::asio::const_buffer(m.frame->payload.data(), m.frame->payload.size())
               : boost::asio::const_buffer(m.text.data(), m.text.size())};
    if (ws_.next_layer().try_append(parts)) return true;
    writing_ = true;
    current_ = std::move(m);  // (the buffers point into it, moved or not: the heap, or header_)
    const std::array<boost::asio::const_buffer, 2> held{
        boost::asio::const_buffer(header_.data(), head + (binary ? ws::kFrameHeaderBytes : 0)),
        binary ? boost::asio::const_buffer(current_.frame->payload.data(),
                                           current_.frame->payload.size())
               : boost::asio::const_buffer(current_.text.data(), current_.text.size())};
    self().write_started(current_);
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
  // The WebSocket frame header (at most 10 bytes), then a frame's 16-byte header.
  std::array<unsigned char, 10 + ws::kFrameHeaderBytes> header_{};
  std::optional<std::pair<websocket::close_code, std::string>> ending_;
  bool writing_ = false;
};

// A producer: reads a frame, puts it into the topic, and only then reads the next one (a
// full lossless topic holds the socket back: TCP flow control reaches the producer). On a
// topic with a stage, each frame is also offered to the stage, whose drop notices and
// slow_down / resume signals come back on this socket.
class WsPublisher final : public WsSession<WsPublisher>, public relay::StageListener {
 public:
  WsPublisher(RelayServer::Impl& relay, SessionSlot slot, const std::shared_ptr<Topic>& topic,
              boost::asio::ip::tcp::socket socket)
      : WsSession(relay, relay.io, std::move(slot), topic, std::move(socket),
                  "ws-publisher/" + topic->name) {}
  void opened() { read(); }

  // (any thread) A drop notice: critical, so never dropped and never behind a frame.
  void stage_dropped(std::uint64_t frame_index, DropReason reason,
                     const std::string& detail) override {
    nlohmann::json event{{"frame_index", frame_index},
                         {"dropped", true},
                         {"reason", std::string(to_string(reason))}};
    if (!detail.empty()) event["detail"] = detail;
    post_event(std::move(event), Priority::critical);
  }
  void stage_signal(const GateSignal& signal) override {
    if (signal.kind == GateSignal::Kind::slow_down) {
      post_event(
          {{"warning", "slow_down"}, {"stage", topic_->name}, {"drop_rate", signal.drop_rate}},
          Priority::control);
    } else {
      post_event({{"resume", true}, {"stage", topic_->name}, {"drop_rate", signal.drop_rate}},
                 Priority::control);
    }
  }

 private:
  // Reads into memory the frame's Buffer then owns (relay::FrameBuffer: not zeroed, large
  // blocks recycled): the payload is never copied. Reads piecemeal so that a frame over the
  // limit is refused with 1009 and a reason as soon as its size is known (the header of its
  // first WebSocket frame), before its payload is read.
  void read() {
    if (closing_) return;
    in_.clear();
    read_some();
  }
  void read_some() {
    // (0: as much as the current WebSocket frame still holds, known once its header is read)
    ws_.async_read_some(in_, 0,
                        [self = shared_from_this()](boost::beast::error_code ec, std::size_t) {
                          self->on_read_some(ec);
                        });
  }
  void on_read_some(boost::beast::error_code ec) {
    if (ec) return;  // closed (by either side) or gone
    const std::uint64_t limit = relay_.config.max_frame_bytes + ws::kFrameHeaderBytes;
    const std::uint64_t known = in_.size() + (ws_.is_message_done() ? 0 : ws_.read_size_hint(1));
    if (known > limit) {
      // (a close reason holds 123 bytes at most; a fragmented message's size is known only
      // up to its current WebSocket frame)
      close(websocket::close_code::too_big, "message of at least " + std::to_string(known) +
                                                " B; STREAM_MAX_FRAME_SIZE_MB allows " +
                                                std::to_string(limit) +
                                                " B (with the 16 B header)");
      return;
    }
    if (!ws_.is_message_done()) {
      // Room for the rest of the frame at once: the next reads go straight into it, as large
      // as the socket has (Beast would otherwise grow the buffer from 512 bytes, copying).
      in_.reserve(known);
      read_some();
      return;
    }
    on_read();
  }

  void on_read() {
    const std::size_t size = in_.size();
    if (ws_.got_text()) {
      const std::string_view text = in_.view();
      const auto j = nlohmann::json::parse(text, nullptr, false);
      if (j.is_discarded()) {
        send_event({{"error", "invalid JSON in a text frame"}});
      } else {
        send_event({{"error", "unknown control event (publishers send none yet): " +
                                  std::string(text.substr(0, 100))}});
      }
      read();
      return;
    }
    if (size < ws::kFrameHeaderBytes) {
      send_event({{"error", "a frame of " + std::to_string(size) +
                                " bytes: binary frames start with a 16-byte header "
                                "(frame_index u64, timestamp_ns i64, little-endian)"}});
      read();
      return;
    }
    const Buffer frame = in_.freeze();  // takes the bytes as read; shared from here on
    const auto head = ws::decode(frame.data());
    pending_ = RelayMessage{frame.slice(ws::kFrameHeaderBytes), head.index,
                            head.timestamp_ns != 0 ? head.timestamp_ns : unix_now_ns()};
    if (topic_->stage) topic_->stage->offer(*pending_, weak_from_this());
    attempt();
  }

  void attempt() {
    if (!pending_ || closing_) return;
    const std::uint64_t bytes = pending_->payload.size();
    const std::uint64_t index = pending_->sequence;
    auto r = topic_->broadcast.try_publish(std::move(*pending_));
    if (r.status == SendStatus::ok) {
      pending_.reset();
      throttle_.admitted();
      timer_.cancel();
      if (throttle_.resumed(*topic_))
        send_event({{"resume", true}, {"queue_bytes", topic_->broadcast.queue_bytes()}});
      read();
      return;
    }
    if (r.status != SendStatus::would_block) {
      close(websocket::close_code::going_away, "the relay is stopping");
      return;
    }
    const bool was_slowed = throttle_.slowed();
    const auto wait = throttle_.blocked(*topic_);
    if (!was_slowed) {
      send_event({{"warning", "slow_down"},
                  {"topic", topic_->name},
                  {"queue_bytes", topic_->broadcast.queue_bytes()},
                  {"limit_bytes", topic_->config.max_queue_bytes}});
    }
    if (wait == Throttle::Wait::expired) {
      send_event({{"error", topic_->full_message()}, {"frame_index", index}});
      close(websocket::close_code::try_again_later,
            "topic full past max_wait_ms (SLUICE_MAX_WAIT_MS)");
      return;
    }
    if (wait == Throttle::Wait::started) {
      timer_.expires_at(throttle_.deadline());
      // The timer holds the session while it waits (no read is pending meanwhile).
      timer_.async_wait([self = shared_from_this()](boost::beast::error_code ec) {
        if (!ec) self->attempt();
      });
    }
    topic_->broadcast.on_writable(posted(&WsPublisher::attempt), bytes);
  }

  void post_event(nlohmann::json event, Priority p) {
    relay_.io.post([w = weak_from_this(), event = std::move(event), p] {
      if (auto self = w.lock(); self && !self->ending()) self->send_event(event, p);
    });
  }

  relay::FrameBuffer in_{relay_.frames};  // the frame being read
  std::optional<RelayMessage> pending_;
  Throttle throttle_;
};

// A stage worker (/v1/ws/work/{topic}?name=...&concurrency=...): the relay sends it frames
// (binary, the same 16-byte header as viewers get), at most `concurrency` not yet answered; it
// answers each with a binary result carrying the frame's header (published to the results
// topic) or a text {"frame_index":N,"error":"..."} (the frame goes to another worker or is
// failed, and its publisher told). When it leaves, what it held is re-routed or failed.
class WsWorker final : public WsSession<WsWorker> {
 public:
  WsWorker(RelayServer::Impl& relay, SessionSlot slot, const std::shared_ptr<Topic>& topic,
           boost::asio::ip::tcp::socket socket, std::string name, std::uint32_t concurrency)
      : WsSession(relay, relay.io, std::move(slot), topic, std::move(socket),
                  "ws-worker/" + topic->name + "/" + name),
        name_(std::move(name)),
        concurrency_(concurrency) {}

  void opened() {
    member_ = relay::StageMember(topic_->stage, name_, concurrency_);
    send_event({{"stage", topic_->name},
                {"worker", name_},
                {"id", member_.id()},
                {"concurrency", concurrency_},
                {"results", topic_->stage->config().results_topic}});
    read();
    pump();
  }

 private:
  friend class WsSession<WsWorker>;

  // Takes what the dispatcher has for this worker (within its credit); re-arms the hook.
  void pump() {
    if (ending() || !member_.joined()) return;
    member_.take(to_send_);
    member_.on_ready(posted(&WsWorker::pump));
    write_next();
  }
  void refill() {
    if (frame_queued_ || to_send_.empty() || ending()) return;
    frame_queued_ = enqueue(Priority::bulk, Outgoing{{}, std::move(to_send_.front())});
    to_send_.pop_front();
  }
  void taken(const Outgoing& m) {
    if (m.frame) frame_queued_ = false;
  }

  void read() {
    in_.clear();
    ws_.async_read(in_, [self = shared_from_this()](boost::beast::error_code ec, std::size_t) {
      if (ec) {  // gone, closed, or over the frame limit (Beast answers 1009)
        self->closing_ = true;
        self->timer_.cancel();
        self->member_.leave();  // its frames go to the others now
        return;
      }
      self->on_message();
      self->read();
    });
  }

  void on_message() {
    std::uint64_t index = 0;
    std::optional<std::string> problem;
    if (ws_.got_text()) {
      const auto j = nlohmann::json::parse(in_.view(), nullptr, false);
      if (j.is_discarded()) {
        send_event({{"error", "invalid JSON in a text frame"}});
        return;
      }
      if (!j.is_object() || !j.contains("frame_index") || !j["frame_index"].is_number_unsigned() ||
          !j.contains("error") || !j["error"].is_string()) {
        send_event({{"error",
                     "unknown event: workers send {\"frame_index\":N,\"error\":\"...\"} "
                     "or a binary result: " +
                         std::string(in_.view().substr(0, 100))}});
        return;
      }
      index = j["frame_index"].get<std::uint64_t>();
      problem = member_.error(index, j["error"].get<std::string>());
    } else {
      if (in_.size() < ws::kFrameHeaderBytes) {
        send_event({{"error", "a result of " + std::to_string(in_.size()) +
                                  " bytes: results start with the frame's 16-byte header"}});
        return;
      }
      const Buffer result = in_.freeze();
      index = ws::decode(result.data()).index;
      problem = member_.result(index, result.slice(ws::kFrameHeaderBytes));
    }
    if (problem) send_event({{"error", *problem}, {"frame_index", index}});
  }

  const std::string name_;
  const std::uint32_t concurrency_;
  relay::StageMember member_;             // leaves when the session goes
  std::deque<RelayMessage> to_send_;      // taken, not yet queued to write
  relay::FrameBuffer in_{relay_.frames};  // the message being read (see relay/frame_buffer.hpp)
  bool frame_queued_ = false;
};

// A viewer: the subscription's cursor is its queue of frames; the outgoing queue holds at most
// one of them, behind control events and gap notices (each gap goes out before the frame
// after it). One write at a time; a viewer whose send stays in flight for max_send_timeouts
// send timeouts is disconnected (4008).
class WsSubscriber final : public WsSession<WsSubscriber> {
 public:
  // `socket` belongs to `loop`, where the session runs.
  WsSubscriber(RelayServer::Impl& relay, IoThread& loop, SessionSlot slot,
               const std::shared_ptr<Topic>& topic, boost::asio::ip::tcp::socket socket,
               Subscription<RelayMessage> sub)
      : WsSession(relay, loop, std::move(slot), topic, std::move(socket),
                  "ws-viewer/" + topic->name + "/" + sub.name()),
        sub_(std::move(sub)),
        id_(relay.next_session_id.fetch_add(1)),
        sink_(topic_->name + "/" + sub_.name() + "#" + std::to_string(id_)),
        series_(relay_.registry, topic_->name, &sub_, id_, &unsent_) {
    loop_.viewers.fetch_add(1, std::memory_order_relaxed);
  }
  WsSubscriber(const WsSubscriber&) = delete;
  WsSubscriber& operator=(const WsSubscriber&) = delete;
  WsSubscriber(WsSubscriber&&) = delete;
  WsSubscriber& operator=(WsSubscriber&&) = delete;
  ~WsSubscriber() {
    relay_.viewers.remove(sink_);
    loop_.viewers.fetch_sub(1, std::memory_order_relaxed);
  }

  void opened() {
    read();  // control frames (ping, close) are answered while reading
    write_next();
  }

 private:
  friend class WsSession<WsSubscriber>;

  // Moves the subscription's next frame (and the gap notice before it) into the outgoing
  // queue, unless a frame already waits there.
  void refill() {
    while (!frame_queued_ && !ending()) {
      auto r = sub_.try_recv();
      switch (r.status) {
        case RecvStatus::ok:
          frame_queued_ = enqueue(Priority::bulk, Outgoing{{}, std::move(*r)});
          return;
        case RecvStatus::gap:
          if (!enqueue(Priority::critical,
                       Outgoing{json_text({{"gap", r.lost},
                                           {"reason", std::string(to_string(r.reason))}}),
                                std::nullopt}))
            return;
          continue;  // the frame after the gap
        case RecvStatus::would_block:
          return;
        case RecvStatus::evicted:
          end_after_queued(websocket::close_code::policy_error,
                           "evicted: the topic's publisher could not wait");
          return;
        default:
          end_after_queued(websocket::close_code::normal, "topic closed");
          return;
      }
    }
  }
  // Nothing to write: wake up when the subscription has something.
  void idle() {
    if (sub_armed_ || ending()) return;
    sub_armed_ = true;
    sub_.on_readable(posted(&WsSubscriber::readable));
  }
  void readable() {
    sub_armed_ = false;
    write_next();
  }

  void read() {
    ws_.async_read(in_, [self = shared_from_this()](boost::beast::error_code ec, std::size_t) {
      if (ec) {  // the viewer went away or closed: leave the topic now
        self->series_.leave(self->sub_);
        self->closing_ = true;
        self->timer_.cancel();
        return;
      }
      self->in_.clear();
      self->send_event({{"error", "viewers send no frames on a subscribe socket"}});
      self->read();
    });
  }

  // A frame leaving the queue makes room for the next one.
  void taken(const Outgoing& m) {
    if (m.frame) frame_queued_ = false;
  }
  // Every write that waits on the socket is timed (the detector's input); messages that went
  // into the socket's batch waited on nothing, and a batch that cannot leave makes the next
  // write wait.
  void write_started(const Outgoing& /*m*/) {
    started_ = Clock::now();
    arm_send_timer();
  }
  bool write_done() {
    timer_.cancel();
    sample_unsent();
    return on_sink_event(relay_.viewers.record_write(sink_, Clock::now() - started_));
  }

  // The bytes the kernel holds unsent for this viewer (SIOCOUTQ), for /metrics. On the
  // session's loop, which owns the socket; sampled when a send completes or times out, not
  // per message.
  void sample_unsent() {
    int n = 0;
    auto& socket = boost::beast::get_lowest_layer(ws_);
    if (socket.is_open() && ::ioctl(socket.native_handle(), SIOCOUTQ, &n) == 0 && n >= 0)
      unsent_.store(static_cast<std::uint64_t>(n), std::memory_order_relaxed);
  }

  // Each send_timeout a frame is still in flight counts as a timeout.
  void arm_send_timer() {
    timer_.expires_after(relay_.config.send_timeout);
    timer_.async_wait([w = weak_from_this()](boost::beast::error_code ec) {
      auto s = w.lock();
      if (!s || ec || !s->writing() || s->closing_) return;
      s->sample_unsent();
      if (s->on_sink_event(s->relay_.viewers.record_timeout(s->sink_))) s->arm_send_timer();
    });
  }

  // Acts on what the detector found; false once the viewer is being disconnected. A late
  // viewer (slow) stays: on a real-time topic its depth drops for it, announced as gaps.
  bool on_sink_event(const std::optional<SinkEvent>& event) {
    if (!event || event->kind == SinkEvent::Kind::recovered) return true;
    relay_.registry
        .counter("sluice_slow_viewers_total",
                 "WebSocket viewers found slow (late sends) or stalled (sends not completing)",
                 {{"kind", event->kind == SinkEvent::Kind::stalled ? "stalled" : "slow"},
                  {"topic", topic_->name}})
        .inc();
    if (event->action != SlowAction::disconnect) return true;
    disconnect_slow(event->reason);
    return false;
  }

  void disconnect_slow(const std::string& why) {
    send_event({{"error", "disconnected as a slow consumer: " + why +
                              " (limits.send_timeout_ms, limits.max_send_timeouts)"}});
    series_.leave(sub_);  // a lossless topic stops waiting for us now
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(relay_.config.send_timeout);
    close(static_cast<websocket::close_code>(4008),
          "slow consumer: no send done in " + std::to_string(relay_.config.max_send_timeouts) +
              " x " + std::to_string(ms.count()) +
              " ms (limits.max_send_timeouts, limits.send_timeout_ms)");
  }

  Subscription<RelayMessage> sub_;
  const std::uint64_t id_;  // the session label in metrics, and the sink's
  const std::string sink_;
  // What the socket held unsent at the last sample (sample_unsent), read by the scrapes.
  std::atomic<std::uint64_t> unsent_{0};
  SubscriberSeries series_;  // reads sub_ (inactive once left, see leave()) from the scrapes
  boost::beast::flat_buffer in_;
  Clock::time_point started_;
  bool frame_queued_ = false;  // a frame waits in the outgoing queue
  bool sub_armed_ = false;     // a readable hook is registered with the subscription
};

std::string url_decode(std::string_view in) {
  std::string out;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size() &&
        std::isxdigit(static_cast<unsigned char>(in[i + 1])) != 0 &&
        std::isxdigit(static_cast<unsigned char>(in[i + 2])) != 0) {
      out.push_back(static_cast<char>(std::stoi(std::string(in.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(in[i] == '+' ? ' ' : in[i]);
    }
  }
  return out;
}

// The value of `key` in a query string ("a=1&b=2"), decoded; empty if absent.
std::string query_value(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    const auto pair = query.substr(0, amp);
    if (const auto eq = pair.find('='); eq != std::string_view::npos && pair.substr(0, eq) == key)
      return url_decode(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return {};
}

// `socket` (of the relay's loop) as a socket of `loop`: the same connection, now watched by
// that loop's reactor. Nothing is buffered past an upgrade request (the client waits for the
// answer), so nothing is lost. On failure `ec` is set and the connection closed.
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

unsigned http_status(const grpc::Status& s) {
  switch (s.error_code()) {
    case grpc::StatusCode::NOT_FOUND:
      return 404;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return 503;
    default:
      return 400;
  }
}

}  // namespace

bool RelayServer::Impl::upgrade(boost::asio::ip::tcp::socket& socket, HttpServer::Request& request,
                                unsigned& status, std::string& body) {
  const std::string_view target(request.target().data(), request.target().size());
  const auto qmark = target.find('?');
  const std::string_view path = target.substr(0, qmark);
  const std::string_view query =
      qmark == std::string_view::npos ? std::string_view{} : target.substr(qmark + 1);
  constexpr std::string_view kPublish = "/v1/ws/publish/";
  constexpr std::string_view kSubscribe = "/v1/ws/subscribe/";
  constexpr std::string_view kWork = "/v1/ws/work/";
  const bool publish = path.starts_with(kPublish);
  const bool work = path.starts_with(kWork);
  if (!publish && !work && !path.starts_with(kSubscribe)) {
    status = 404;
    body = "no WebSocket endpoint at " + std::string(path.substr(0, 200)) +
           " (try /v1/ws/publish/{topic}, /v1/ws/subscribe/{topic}?name=...&depth=... or "
           "/v1/ws/work/{topic}?name=...&concurrency=...)\n";
    return false;
  }
  const std::string name = url_decode(path.substr(publish ? kPublish.size()
                                                  : work  ? kWork.size()
                                                          : kSubscribe.size()));
  grpc::Status st;
  SessionSlot slot = session(st);
  if (!slot) {
    status = 503;
    body = st.error_message() + "\n";
    return false;
  }
  auto t = topic(name, st);
  if (!t) {
    status = http_status(st);
    body = st.error_message() + "\n";
    return false;
  }
  if (publish) {
    std::make_shared<WsPublisher>(*this, std::move(slot), t, std::move(socket))
        ->start(std::move(request));
    return true;
  }
  if (work) {
    if (!t->stage) {
      status = 404;
      body = "topic '" + name +
             "' has no stage: declare one with stage = true in its [[topic]] (docs/stages.md)\n";
      return false;
    }
    std::uint32_t concurrency = 4;
    if (const std::string c = query_value(query, "concurrency"); !c.empty()) {
      char* end = nullptr;
      const unsigned long v = std::strtoul(c.c_str(), &end, 10);
      if (end == c.c_str() || *end != '\0' || v == 0 || v > 1024) {
        status = 400;
        body = "concurrency '" + c.substr(0, 20) + "': a whole number from 1 to 1024\n";
        return false;
      }
      concurrency = static_cast<std::uint32_t>(v);
    }
    std::string worker = query_value(query, "name");
    worker = worker.empty() ? "worker" : worker.substr(0, 128);
    std::make_shared<WsWorker>(*this, std::move(slot), t, std::move(socket), std::move(worker),
                               concurrency)
        ->start(std::move(request));
    return true;
  }
  std::size_t depth = 0;  // the topic's default
  if (const std::string d = query_value(query, "depth"); !d.empty()) {
    char* end = nullptr;
    depth = std::strtoul(d.c_str(), &end, 10);
    if (end == d.c_str() || *end != '\0' || depth == 0) {
      status = 400;
      body = "depth '" + d.substr(0, 20) + "': a whole number from 1 to the topic's capacity\n";
      return false;
    }
  }
  auto sub = subscribe(*t, query_value(query, "name"), "viewer", depth, st);
  if (!sub) {
    status = 400;
    body = st.error_message() + "\n";
    return false;
  }
  // The viewer goes to the loop serving the fewest; its socket moves there.
  IoThread& loop = viewer_loop();
  boost::system::error_code ec;
  auto own = move_to(loop, socket, ec);
  if (ec) {
    status = 503;
    body = "cannot hand the connection to an I/O thread: " + ec.message() + "\n";
    return false;
  }
  if (config.viewer_send_buffer_bytes > 0) {  // (a bound on what waits in the kernel for it)
    own.set_option(boost::asio::socket_base::send_buffer_size(
                       static_cast<int>(config.viewer_send_buffer_bytes)),
                   ec);
    if (ec) {
      status = 503;
      body =
          "cannot set the viewer's send buffer (limits.viewer_send_buffer_bytes): " + ec.message() +
          "\n";
      return false;
    }
  }
  auto viewer = std::make_shared<WsSubscriber>(*this, loop, std::move(slot), t, std::move(own),
                                               std::move(*sub));
  boost::asio::post(loop.context(), [viewer, request = std::move(request)]() mutable {
    viewer->start(std::move(request));
  });
  return true;
}

}  // namespace sluice

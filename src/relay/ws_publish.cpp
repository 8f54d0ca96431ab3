// A producer over WebSocket (/v1/ws/publish/{topic}): binary frames decoded into a
// PublishSession, its events encoded as JSON text. A frame is read, put into the topic, and
// only then is the next one read: a full lossless topic holds the socket back, and TCP flow
// control reaches the producer. With `?acks=1` the producer is told, as `{"ack": i}`, that
// every frame up to index i is in the topic (what a reconnecting producer still has to send
// again; with `?producer=` a frame sent twice goes in once).
#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <variant>

#include "frame_buffer.hpp"
#include "publish_session.hpp"
#include "ws_messages.hpp"
#include "ws_session.hpp"

namespace sluice::relay {

namespace {

// The JSON event for `e` and its class in the outgoing queue (stage drop notices are
// critical: never dropped, never behind a frame); nullopt for what WebSocket does not carry.
std::optional<std::pair<nlohmann::json, Priority>> encode(const PublishEvent& e) {
  using Kind = PublishEvent::Kind;
  switch (e.kind) {
    case Kind::ack:  // (asked for: ?acks=1)
      return {{{{"ack", e.sequence}}, Priority::control}};
    case Kind::slow_down:
      return {{{{"warning", "slow_down"},
                {"topic", e.topic},
                {"queue_bytes", e.queue_bytes},
                {"limit_bytes", e.limit_bytes},
                {"limit", e.limit}},
               Priority::control}};
    case Kind::resume:
      return {{{{"resume", true}, {"queue_bytes", e.queue_bytes}}, Priority::control}};
    case Kind::dropped: {
      nlohmann::json j{{"frame_index", e.sequence},
                       {"dropped", true},
                       {"reason", std::string(to_string(e.reason))}};
      if (!e.detail.empty()) j["detail"] = e.detail;
      return {{std::move(j), Priority::critical}};
    }
    case Kind::stage_slow_down:
      return {{{{"warning", "slow_down"}, {"stage", e.topic}, {"drop_rate", e.drop_rate}},
               Priority::control}};
    case Kind::stage_resume:
      return {
          {{{"resume", true}, {"stage", e.topic}, {"drop_rate", e.drop_rate}}, Priority::control}};
  }
  return std::nullopt;
}

class WsPublisher final : public WsSession<WsPublisher> {
 public:
  // Frames are measured as they arrive (on_read_some), not by Beast's limit.
  WsPublisher(RelayCore& core, SessionSlot slot, Connection connection,
              std::unique_ptr<PublishSession> session, std::size_t header_bytes, bool acks)
      : WsSession(core, core.loops.main(), std::move(slot), std::move(connection),
                  "ws-publisher/" + session->topic().name,
                  {core.config.max_frame_bytes + header_bytes, std::size_t{64} * 1024,
                   "limits.max_frame_size_mb", false}),
        session_(std::move(session)),
        acks_(acks) {
    frame_header(header_bytes);
  }

  void launch(HttpServer::Request request) {
    session_->connect(posted(&WsPublisher::attempt), [w = weak_from_this()](PublishEvent e) {
      if (auto self = w.lock(); self && !self->ending()) {
        if (auto refusal = self->session_->stage_event(std::move(e))) self->end(*refusal);
        self->tell();
      }
    });
    start(std::move(request));
  }
  void opened() { read(); }

 private:
  // Reads into memory the frame's Buffer then owns (FrameBuffer: not zeroed, large blocks
  // recycled): the payload is never copied. A message over the frame limit is refused by Beast
  // (read_message_max) as soon as the WebSocket frame header that takes it over arrives,
  // before its payload: close 1009, counted in sluice_ws_closes_total.
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
    if (ec) {  // closed (by either side), gone, or a frame over the limit (see read())
      read_failed(ec);
      return;
    }
    const std::uint64_t known = in_.size() + (ws_.is_message_done() ? 0 : ws_.read_size_hint(1));
    if (!ws_.is_message_done()) {
      // Room for the rest of the frame at once: the next reads go straight into it, as large
      // as the socket has (Beast would otherwise grow the buffer from 512 bytes, copying).
      in_.reserve(known);
      read_some();
      return;
    }
    on_message();
  }

  void on_message() {
    const auto message = publisher_message(ws_.got_text(), in_.view(), frame_header_bytes());
    if (const auto* problem = std::get_if<WsProblem>(&message)) {
      send_event({{"error", problem->error}});
      read();
      return;
    }
    const auto head = std::get<ws::FrameHeader>(message);
    const Buffer frame = in_.freeze();  // takes the bytes as read; shared from here on
    sequence_ = head.index;
    RelayMessage item{frame.slice(frame_header_bytes()), head.index,
                      head.timestamp_ns != 0 ? head.timestamp_ns : unix_now_ns()};
    item.flags = head.flags;
    if (auto refusal = session_->add(std::move(item))) {
      end(*refusal, sequence_);
      return;
    }
    attempt();
  }

  // (also a wake-up: the topic has room, or the frame's max_wait is up)
  void attempt() {
    if (closing_) return;
    auto progress = session_->publish();
    tell();
    if (!progress) {
      end(progress.refusal(), sequence_);
      return;
    }
    switch (*progress) {
      case PublishSession::Progress::all_in:
        timer_.cancel();
        read();
        break;
      case PublishSession::Progress::waiting:
        // No read is pending meanwhile to hold the session: a wait on the timer does (until
        // the frame is in, or the session closes; the loop's end drops it too).
        timer_.expires_at(std::chrono::steady_clock::time_point::max());
        timer_.async_wait([self = shared_from_this()](boost::beast::error_code) {});
        break;
      case PublishSession::Progress::idle:
        break;
    }
  }

  // Queues the session's events for the producer.
  void tell() {
    while (auto e = session_->next_event(acks_)) {
      if (auto event = encode(*e)) send_event(event->first, event->second);
    }
  }

  std::unique_ptr<PublishSession> session_;
  FrameBuffer in_{core_.frames};  // the frame being read
  std::uint64_t sequence_ = 0;    // the last frame's
  const bool acks_;               // ?acks=1: tell the producer what is in
};

}  // namespace

std::optional<HttpResponse> ws_publish(RelayCore& core, SessionSlot slot, const WsRoute& route,
                                       const HttpTarget& target, Connection& connection,
                                       HttpServer::Request& request) {
  auto session = std::make_unique<PublishSession>(core, core.loops.main(), route.who);
  if (auto refusal = session->open(route.topic)) return http_refusal(core, *refusal);
  if (auto producer = target.param("producer"); !producer.empty()) {
    if (auto refusal = session->set_producer(std::move(producer)))
      return http_refusal(core, *refusal);
  }
  const std::string acks = target.param("acks");
  if (!acks.empty() && acks != "0" && acks != "1") {
    return http_refusal(core, {RefusalKind::bad_request,
                               "acks: 1 (tell the producer what is in the topic) or 0, not '" +
                                   acks.substr(0, 16) + "'"});
  }
  auto publisher =
      std::make_shared<WsPublisher>(core, std::move(slot), std::move(connection),
                                    std::move(session), route.frame_header_bytes, acks == "1");
  publisher->expire_with(*route.who);
  publisher->launch(std::move(request));
  return std::nullopt;
}

}  // namespace sluice::relay

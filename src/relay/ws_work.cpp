// A stage worker over WebSocket (/v1/ws/work/{topic}?name=...&concurrency=...): a
// WorkerSession whose frames go out as binary messages (the same header as subscribers get:
// 16 bytes, or 24 with the flags under ?header=24), at most `concurrency` unanswered. The worker
// answers each with a binary result carrying the frame's header (published to the results topic) or
// a text
// {"frame_index":N,"error":"..."} (the frame goes to another worker or is failed, and its
// producer told). When it leaves, what it held goes elsewhere.
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>

#include "frame_buffer.hpp"
#include "worker_session.hpp"
#include "ws_messages.hpp"
#include "ws_session.hpp"

namespace sluice::relay {

namespace {

class WsWorker final : public WsSession<WsWorker> {
 public:
  // A worker's results are frames like a publisher's: read ahead, bounded by Beast's limit.
  WsWorker(RelayCore& core, SessionSlot slot, Connection connection,
           std::unique_ptr<WorkerSession> worker, const std::string& name, std::size_t header_bytes)
      : WsSession(core, core.loops.main(), std::move(slot), std::move(connection),
                  "ws-worker/" + name,
                  {core.config.max_frame_bytes + header_bytes, std::size_t{64} * 1024,
                   "limits.max_frame_size_mb", false}),
        worker_(std::move(worker)) {
    frame_header(header_bytes);
  }

  void opened() {
    const WorkerJoined j = worker_->enter();
    send_event({{"stage", j.stage},
                {"worker", j.name},
                {"id", j.id},
                {"concurrency", j.concurrency},
                {"results", j.results_topic}});
    read();
    pump();
  }

 private:
  friend class WsSession<WsWorker>;

  // Takes what the dispatcher has for this worker (within its credit); re-arms the hook.
  void pump() {
    if (ending() || !worker_->entered()) return;
    worker_->take(to_send_);
    worker_->on_ready(posted(&WsWorker::pump));
    write_next();
  }
  void refill() {
    if (frame_queued() || to_send_.empty() || ending()) return;
    queue_frame(std::move(to_send_.front()));
    to_send_.pop_front();
  }

  void read() {
    in_.clear();
    ws_.async_read(in_, [self = shared_from_this()](boost::beast::error_code ec, std::size_t) {
      if (ec) {  // gone, closed, or over the frame limit (Beast answers 1009)
        self->read_failed(ec);
        self->closing_ = true;
        self->timer_.cancel();
        self->worker_->leave();  // its frames go to the others now
        return;
      }
      self->on_message();
      self->read();
    });
  }

  void on_message() {
    const auto message = worker_message(ws_.got_text(), in_.view(), frame_header_bytes());
    std::optional<std::string> problem;
    std::uint64_t sequence = 0;
    if (const auto* p = std::get_if<WsProblem>(&message)) {
      send_event({{"error", p->error}});
      return;
    }
    if (const auto* e = std::get_if<WsWorkerError>(&message)) {
      sequence = e->sequence;
      problem = worker_->error(sequence, e->error);
    } else {
      sequence = std::get<ws::FrameHeader>(message).index;
      problem = worker_->result(sequence, in_.freeze().slice(frame_header_bytes()));
    }
    if (problem) send_event({{"error", *problem}, {"frame_index", sequence}});
  }

  std::unique_ptr<WorkerSession> worker_;  // leaves when the session goes
  std::deque<RelayMessage> to_send_;       // taken, not yet queued to write
  FrameBuffer in_{core_.frames};           // the message being read
};

}  // namespace

std::optional<HttpResponse> ws_work(RelayCore& core, SessionSlot slot, const WsRoute& route,
                                    const HttpTarget& target, Connection& connection,
                                    HttpServer::Request& request) {
  const auto concurrency = target.count("concurrency", WorkerSession::kMaxConcurrency,
                                        std::to_string(WorkerSession::kMaxConcurrency));
  if (!concurrency) return http_refusal(core, concurrency.refusal());
  auto worker = std::make_unique<WorkerSession>(core);
  const std::string name = target.param("name");
  if (auto refusal = worker->join({route.who, route.topic, name, *concurrency}))
    return http_refusal(core, *refusal);
  auto session =
      std::make_shared<WsWorker>(core, std::move(slot), std::move(connection), std::move(worker),
                                 route.topic + "/" + name, route.frame_header_bytes);
  session->expire_with(*route.who);
  session->start(std::move(request));
  return std::nullopt;
}

}  // namespace sluice::relay

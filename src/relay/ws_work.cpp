// A stage worker over WebSocket (/v1/ws/work/{topic}?name=...&concurrency=...): a
// WorkerSession whose frames go out as binary messages (the same 16-byte header as
// subscribers get), at most `concurrency` unanswered. The worker answers each with a binary
// result carrying the frame's header (published to the results topic) or a text
// {"frame_index":N,"error":"..."} (the frame goes to another worker or is failed, and its
// producer told). When it leaves, what it held goes elsewhere.
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "frame_buffer.hpp"
#include "worker_session.hpp"
#include "ws_session.hpp"

namespace sluice::relay {

namespace {

class WsWorker final : public WsSession<WsWorker> {
 public:
  // A worker's results are frames like a publisher's: read ahead, bounded by Beast's limit.
  WsWorker(RelayCore& core, SessionSlot slot, boost::asio::ip::tcp::socket socket,
           std::unique_ptr<WorkerSession> worker, const std::string& name)
      : WsSession(core, core.loops.main(), std::move(slot), std::move(socket), "ws-worker/" + name,
                  {core.config.max_frame_bytes + ws::kFrameHeaderBytes, std::size_t{64} * 1024}),
        worker_(std::move(worker)) {}

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
    if (ws_.got_text()) {
      on_error_event();
      return;
    }
    if (in_.size() < ws::kFrameHeaderBytes) {
      send_event({{"error", "a result of " + std::to_string(in_.size()) +
                                " bytes: results start with the frame's 16-byte header"}});
      return;
    }
    const Buffer result = in_.freeze();
    const std::uint64_t sequence = ws::decode(result.data()).index;
    if (auto problem = worker_->result(sequence, result.slice(ws::kFrameHeaderBytes)))
      send_event({{"error", *problem}, {"frame_index", sequence}});
  }
  // {"frame_index":N,"error":"..."}: the worker could not process frame N.
  void on_error_event() {
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
    const auto sequence = j["frame_index"].get<std::uint64_t>();
    if (auto problem = worker_->error(sequence, j["error"].get<std::string>()))
      send_event({{"error", *problem}, {"frame_index", sequence}});
  }

  std::unique_ptr<WorkerSession> worker_;  // leaves when the session goes
  std::deque<RelayMessage> to_send_;       // taken, not yet queued to write
  FrameBuffer in_{core_.frames};           // the message being read
};

}  // namespace

std::optional<HttpResponse> ws_work(RelayCore& core, SessionSlot slot, const WsRoute& route,
                                    const HttpTarget& target, boost::asio::ip::tcp::socket& socket,
                                    HttpServer::Request& request) {
  const auto concurrency = target.count("concurrency", WorkerSession::kMaxConcurrency,
                                        std::to_string(WorkerSession::kMaxConcurrency));
  if (!concurrency) return http_refusal(concurrency.refusal());
  auto worker = std::make_unique<WorkerSession>(core);
  const std::string name = target.param("name");
  if (auto refusal = worker->join({route.topic, name, *concurrency})) return http_refusal(*refusal);
  std::make_shared<WsWorker>(core, std::move(slot), std::move(socket), std::move(worker),
                             route.topic + "/" + name)
      ->start(std::move(request));
  return std::nullopt;
}

}  // namespace sluice::relay

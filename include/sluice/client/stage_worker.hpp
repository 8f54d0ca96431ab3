// Sluice — StageWorker: a worker for a relay topic's processing stage, over WebSocket
// (/v1/ws/work/{topic}; wss:// with TlsOptions). See docs/stages.md.
//
// It joins the stage, then hands each frame the relay sends to a handler and answers with
// what the handler returns (a result carrying the frame's header, published by the relay to
// the stage's results topic). A handler that throws std::exception fails that frame: the
// relay gets {"frame_index":N,"error":what()} and re-routes the frame to another worker or
// drops it with worker_failed, telling its producer.
//
// Ordering and credit: frames are handled one at a time, in the order they arrive; the relay
// sends at most `concurrency` unanswered.
//
// Threading: run() serves on the calling thread until stop() (from any thread) or until the
// relay closes the socket; the handler runs on that thread. stop() and the counters are
// thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "sluice/client/tls.hpp"

namespace sluice {

struct StageWorkerOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 7401;  // the relay's HTTP port
  std::string topic;          // a topic with a stage
  std::string name = "worker";
  std::uint32_t concurrency = 1;  // frames the relay may send before an answer (1-1024)
  std::string token{};            // the relay's bearer token for this principal (empty: none)
  client::TlsOptions tls{};       // wss:// (its CA set: on), mutual TLS with a certificate
};

/// A frame to process: its sequence and timestamp (the producer's) and its payload (valid
/// during the handler's call).
struct WorkFrame {
  std::uint64_t sequence = 0;
  std::int64_t timestamp_ns = 0;
  std::string_view payload;
};

/// The result payload for a frame; throw std::exception to fail it.
using WorkHandler = std::function<std::string(const WorkFrame& frame)>;

class StageWorker {
 public:
  StageWorker(StageWorkerOptions options, WorkHandler handler);
  ~StageWorker();
  StageWorker(const StageWorker&) = delete;
  StageWorker& operator=(const StageWorker&) = delete;
  StageWorker(StageWorker&&) = delete;  // run() on one thread, stop() on another: a fixed address
  StageWorker& operator=(StageWorker&&) = delete;

  /// Connects and joins the stage; throws std::runtime_error with the relay's answer ("HTTP
  /// 404: topic 'x' has no stage ...", read from the refused handshake) if it refuses.
  void connect();
  /// Serves frames until stop() or the relay closes; returns why it ended.
  std::string run();
  void stop();

  /// Frames answered with a result / failed by the handler.
  std::uint64_t processed() const noexcept { return processed_.load(); }
  std::uint64_t failed() const noexcept { return failed_.load(); }

 private:
  struct Impl;
  template <class Ws>
  void handshake(Ws& ws);  // connects and joins over `ws` (plain or TLS)
  template <class Ws>
  void serve(Ws& ws);  // run()'s loop over `ws`
  StageWorkerOptions options_;
  WorkHandler handler_;
  std::atomic<std::uint64_t> processed_{0};
  std::atomic<std::uint64_t> failed_{0};
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice

// The relay's processing stage behind a topic: each frame a publisher sends to the topic is
// offered to a FrameGate; an admitted frame goes to a Dispatcher, which hands it to a worker
// (joined over WebSocket or gRPC: WorkerSession);
// the worker's result is published to the results topic. Every frame the gate or the
// dispatcher refuses, and every frame the workers fail, is told to the publisher that sent it
// (a drop notice with the frame index and the reason) and counted by reason in /metrics; the
// gate's slow_down and resume go to the publisher too.
//
// Thread-safety: every member may be called from any thread (the gate and the dispatcher lock
// themselves). Listener callbacks run on the thread of the call that caused them and must not
// block (a PublishSession's listener posts to its loop).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "sluice/dispatcher.hpp"
#include "sluice/frame_gate.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay/config.hpp"
#include "sluice/relay/protocol.hpp"

namespace sluice::relay {

/// The publisher of a stage's frames, as the stage sees it.
class StageListener {
 public:
  virtual ~StageListener() = default;
  /// Item `sequence` will not be processed: `reason` (frame_late, drop_rate, in_flight,
  /// overflow, no_worker, worker_failed) and, for the dispatcher's, what happened.
  virtual void stage_dropped(std::uint64_t sequence, DropReason reason,
                             const std::string& detail) = 0;
  /// The gate turned critical (slow_down) or back to normal (resume).
  virtual void stage_signal(const GateSignal& signal) = 0;
};

/// A frame on its way through the stage.
struct StageItem {
  RelayMessage frame;
  std::weak_ptr<StageListener> publisher;
  std::chrono::steady_clock::time_point admitted;
};
inline std::size_t size_bytes(const StageItem& item) noexcept {
  return item.frame.payload.size();
}

class Stage {
 public:
  using Clock = std::chrono::steady_clock;
  using Worker = Dispatcher<StageItem>::Worker;
  using Task = Dispatcher<StageItem>::Task;
  /// Publishes a result to the results topic; false if it could not (counted as a drop).
  using PublishFn = std::function<bool(RelayMessage&&)>;

  /// Throws std::invalid_argument on a bad setting (named).
  Stage(std::string topic, StageConfig config, double drop_threshold, double slowdown_threshold,
        PublishFn publish_result, metrics::Registry& registry);
  ~Stage();
  Stage(const Stage&) = delete;
  Stage& operator=(const Stage&) = delete;

  const std::string& topic() const noexcept { return topic_; }
  const StageConfig& config() const noexcept { return config_; }
  /// The gate's windowed drop rates at which it drops frames / tells producers to slow down.
  double drop_threshold() const noexcept { return drop_threshold_; }
  double slowdown_threshold() const noexcept { return slowdown_threshold_; }

  /// A frame from `publisher`: admitted and routed to a worker, or dropped and told.
  void offer(const RelayMessage& frame, const std::weak_ptr<StageListener>& publisher);

  /// A worker joins (its series appear in /metrics until it leaves).
  Worker join(const std::string& name, std::uint32_t concurrency);
  /// The worker leaves: what it held is re-routed or failed (and told); its series go.
  void leave(Worker& worker);
  /// The worker finished `task` with `result` (payload; sequence and timestamp are the
  /// frame's): published to the results topic. False if the worker no longer held it.
  bool completed(Worker& worker, const Task& task, Buffer result);
  /// Times out frames held too long (call every 100 ms or so).
  void poll();

  DispatcherStats dispatcher_stats() const { return dispatcher_.stats(); }
  FrameGateStats gate_stats() const { return gate_.stats(); }
  std::uint64_t results() const { return results_->value(); }

 private:
  void dropped(const StageItem& item, DropReason reason, const std::string& detail);
  metrics::Counter& counter(DropReason reason) const;

  const std::string topic_;
  const StageConfig config_;
  const double drop_threshold_;
  const double slowdown_threshold_;
  PublishFn publish_;
  metrics::Registry& registry_;
  FrameGate gate_;
  Dispatcher<StageItem> dispatcher_;
  metrics::Counter* results_;
  metrics::Counter* results_dropped_;
  metrics::Counter* frames_;
  // Each worker's health as last polled (poll() thread only): a change is logged.
  std::map<std::uint64_t, WorkerHealth> health_;
  std::array<metrics::Counter*, kDropReasonCount> dropped_{};  // the reasons a stage drops for
  std::array<metrics::Counter*, 2> signals_{};                 // by GateSignal::Kind
};

/// One worker's place in a stage, for the session that serves it (WebSocket or gRPC): its
/// dispatcher handle and the frames it holds, by frame index. Leaving (leave(), or destroying
/// it) gives what it held to the other workers. Not thread-safe: its session serializes calls.
class StageMember {
 public:
  StageMember() = default;
  StageMember(std::shared_ptr<Stage> stage, const std::string& name, std::uint32_t concurrency);
  ~StageMember() { leave(); }
  StageMember(StageMember&&) noexcept = default;
  StageMember& operator=(StageMember&& other) noexcept;
  StageMember(const StageMember&) = delete;
  StageMember& operator=(const StageMember&) = delete;

  bool joined() const noexcept { return handle_.joined(); }
  std::uint64_t id() const noexcept { return handle_.id(); }

  /// Appends to `out` the frames the worker may take now (within its credit).
  void take(std::deque<RelayMessage>& out);
  /// One-shot: `fn` runs when take() would find a frame (see Dispatcher::Worker::on_ready).
  void on_ready(std::function<void()> fn) { handle_.on_ready(std::move(fn)); }
  /// The worker's result for frame `index` (published to the results topic), or its error
  /// (the frame goes to another worker or is failed). nullopt, or what to tell the worker
  /// when it does not hold that frame.
  std::optional<std::string> result(std::uint64_t index, Buffer payload);
  std::optional<std::string> error(std::uint64_t index, const std::string& why);
  /// Leaves the stage (idempotent).
  void leave();

 private:
  static std::string not_held(std::uint64_t index);

  std::shared_ptr<Stage> stage_;
  Stage::Worker handle_;
  std::multimap<std::uint64_t, Stage::Task> held_;
};

}  // namespace sluice::relay

// A subscriber's session with a topic, whatever carries it (relay-internal): its place in the
// topic (the subscription's cursor is its only queue in the relay), batches of what queued up,
// gap notices, the end of the stream, its series in /metrics, and the judgement of its sends
// (below). The transports (grpc_subscribe.cpp, ws_subscribe.cpp, whep.cpp) encode what it
// yields.
//
// Protocol with the transport: when it can write, the transport calls next():
//   items    batch() holds the next items, in order (at most max_items, and at most max_bytes
//            unless a single item is larger): write them, then call next() again;
//   gap      gap() items were lost before the next one: tell the subscriber first (after a
//            loss, and from the start, items flagged kItemDelta are skipped up to the next
//            keyframe: announced as a gap of their own, reason until_keyframe);
//   idle     nothing yet: arm(wake) once; `wake` runs (from any thread) when there is;
//   end      the stream is over: normally (the topic closed; refusal() is empty) or with
//            refusal() (evicted).
//
// The judgement, by progress (the one place "slow" is decided, for every transport; the table
// is docs/relay.md's "Late or stalled"): the transport gives watch() a probe that reads how
// many bytes have left towards the subscriber so far (what the peer's TCP acknowledged, the
// writes gRPC completed, what a windowed subscriber acknowledged) and whether anything still
// waits to reach it, and calls sending() whenever it hands something on. Every
// limits.send_timeout_ms while something waits, the pump reads the probe:
//   ok       nothing waits (the ticks stop until sending() again);
//            (a windowed subscriber that has not acknowledged what it got, on a real-time topic,
//            is late, not stalled, as long as the network takes what was sent: the window
//            bounds what the relay holds for it; on a lossless topic that is waiting)
//   late     something waited at two ticks in a row (and bytes left within the limit below):
//            the subscriber stays; on a real-time topic its cursor is lapped (gaps, counted), on a
//            lossless one the producer is held back (slow_down, then RESOURCE_EXHAUSTED at
//            max_wait_ms);
//   stalled  no byte left for limits.send_timeout_ms x limits.max_send_timeouts while
//            something waited. Real-time topic: the session ends (slow_consumer: 4008,
//            RESOURCE_EXHAUSTED, WHEP slow_consumer). Lossless topic: it stays and holds the
//            producer back, unless the topic sets evict_after_ms: no progress that long ends it
//            (slow_consumer, naming topics.evict_after_ms), and the producer flows again.
// The end goes to the watch's `end` (the pump has left the topic by then).
//
// Thread-safety: not thread-safe; the transport serializes calls. The scrapes of its series
// may run on any thread (leave() is serialized with them).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "outcome.hpp"
#include "relay_core.hpp"
#include "sluice/broadcast.hpp"
#include "subscriber_series.hpp"
#include "topic.hpp"

namespace sluice::relay {

/// What a subscriber asks for (the transport decodes it): the topic, a name for stats and
/// metrics (made valid UTF-8, cut to whole characters within 128 bytes; empty: a default), a depth
/// (real-time topics; 0: the topic's), and where to resume: a subscriber that comes back gives
/// the topic's epoch and the position it had reached (see SubscriberPump::start_position).
struct SubscribeRequest {
  Who who;  // who asks (must be allowed to subscribe to the topic)
  std::string topic;
  std::string name;
  std::uint64_t depth = 0;
  std::string resume_epoch;  // empty: start with the next item published
  std::uint64_t resume_from = 0;
  // A subscriber that can use nothing before a keyframe (a video decoder, a WebRTC viewer)
  // starts at one on a lossless topic too (a real-time topic's always do): the delta items
  // before it are skipped, announced as a gap (until_keyframe).
  bool start_at_keyframe = false;
};

class SubscriberPump {
 public:
  enum class Next : std::uint8_t { items, gap, idle, end };

  /// Joins the topic; bad_request (name, depth above the topic's capacity), not_found.
  /// `kernel_unsent`: its transport samples what the kernel holds unsent for it
  /// (set_unsent(), shown in /metrics as sluice_subscriber_unsent_bytes).
  static Outcome<std::unique_ptr<SubscriberPump>> join(RelayCore& core, const SubscribeRequest& r,
                                                       const char* default_name,
                                                       bool kernel_unsent);
  SubscriberPump(const SubscriberPump&) = delete;
  SubscriberPump& operator=(const SubscriberPump&) = delete;
  SubscriberPump(SubscriberPump&&) = delete;
  SubscriberPump& operator=(SubscriberPump&&) = delete;
  ~SubscriberPump();

  const Topic& topic() const noexcept { return *topic_; }
  const std::string& name() const noexcept { return sub_.name(); }
  /// The session's number (label "session" in /metrics).
  std::uint64_t id() const noexcept { return id_; }
  /// Where the subscriber starts: the position (the topic's sequence number) of its first item,
  /// counting the items of a gap announced before it. Each item it receives is one further,
  /// each gap `gap()` further; with the topic's epoch, that is where it resumes if it comes back.
  /// A resume that finds the item at its position gone (no longer retained: topics.retain_items)
  /// starts with a gap of the missing items (reason retention); one from another epoch (the
  /// relay restarted) starts at the oldest item retained (or the next published), after a gap
  /// of unknown size (0, reason relay_restart).
  std::uint64_t start_position() const noexcept { return start_position_; }
  const std::string& epoch() const noexcept { return topic_->epoch; }

  /// See the protocol above.
  Next next(std::size_t max_items, std::size_t max_bytes);
  std::vector<RelayMessage>& batch() noexcept { return batch_; }
  std::uint64_t gap() const noexcept { return gap_lost_; }
  DropReason gap_reason() const noexcept { return gap_reason_; }
  const std::optional<Refusal>& refusal() const noexcept { return end_; }
  /// One-shot: `wake` runs (on any thread) once next() would not answer idle.
  void arm(std::function<void()> wake);

  /// The transport's reading of its sends (see the judgement above).
  struct Progress {
    std::uint64_t delivered = 0;  // bytes that left towards the subscriber so far (only grows)
    bool waiting = false;         // something handed on has not reached it yet
    // A windowed subscriber's window is full (unacknowledged): on a lossless topic that is
    // waiting; on a real-time one it is only late (the window bounds what the relay holds for
    // it, and its cursor is lapped meanwhile).
    bool unprocessed = false;
  };
  struct Watch {
    /// Runs `tick` limits.send_timeout_ms from now, serialized with the transport's calls to
    /// the pump, unless the session has gone by then.
    std::function<void(std::function<void()> tick)> later;
    std::function<Progress()> probe;
    /// Ends the session with the judge's refusal (the pump has left the topic).
    std::function<void(const Refusal&)> end;
  };
  /// Once, before the first sending().
  void watch(Watch w) { watch_ = std::move(w); }
  /// Something was handed on towards the subscriber: the ticks run until nothing waits.
  void sending() {
    if (ticking_ || !watch_.later || end_) return;
    ticking_ = true;
    waited_ = false;
    last_progress_ = std::chrono::steady_clock::now();
    watch_.later([this] { tick(); });
  }
  /// The bytes the transport's socket last held unsent in the kernel.
  void set_unsent(std::uint64_t bytes) { unsent_.store(bytes, std::memory_order_relaxed); }
  /// Leaves the topic now (a lossless topic stops waiting for it); idempotent.
  void leave();

 private:
  SubscriberPump(RelayCore& core, std::shared_ptr<Topic> topic, Subscription<RelayMessage> sub,
                 bool kernel_unsent);
  // A resume's gap, due before the first item.
  void resume_gap(std::uint64_t lost, DropReason reason);
  // The items skipped up to a keyframe, announced now.
  Next keyframe_gap();
  bool realtime() const noexcept { return topic_->config.mode == TopicMode::realtime; }
  void tick();
  void verdict(SubscriberExtras::Verdict v, std::string_view why);
  Refusal stalled_refusal(std::chrono::milliseconds still) const;

  RelayCore& core_;
  std::shared_ptr<Topic> topic_;
  Subscription<RelayMessage> sub_;
  const std::uint64_t id_;
  std::atomic<std::uint64_t> unsent_{0};  // read by the scrapes
  const bool kernel_unsent_;
  std::atomic<SubscriberExtras::Verdict> verdict_{SubscriberExtras::Verdict::ok};
  // Items skipped up to a keyframe (below), in all; read by the scrapes.
  std::atomic<std::uint64_t> until_keyframe_total_{0};
  SubscriberSeries series_;  // after sub_: removed before it goes
  std::vector<RelayMessage> batch_;
  std::optional<RecvResult<RelayMessage>> held_;  // a gap or the end, due after the batch
  // Real-time topics: after a loss (and from the start), items flagged kItemDelta are skipped
  // up to the next one without the flag: they would not decode. skipped_ of them wait to be
  // announced (a gap, reason until_keyframe) before that keyframe, or before whatever comes
  // first. (A lossless topic's subscriber gets every item: it loses none to this.)
  bool want_keyframe_ = false;
  std::uint64_t skipped_ = 0;
  std::uint64_t gap_lost_ = 0;
  DropReason gap_reason_ = DropReason::slow_consumer;
  std::optional<Refusal> end_;
  std::uint64_t start_position_ = 0;
  std::string principal_;  // for its log lines
  std::chrono::steady_clock::time_point opened_at_ = std::chrono::steady_clock::now();
  // The judgement's state (see above).
  Watch watch_;
  bool ticking_ = false;         // a tick is due
  bool waited_ = false;          // something waited at the last tick
  std::uint64_t delivered_ = 0;  // the probe's count at the last tick
  std::chrono::steady_clock::time_point last_progress_;
};

}  // namespace sluice::relay

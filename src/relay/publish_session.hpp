// A producer's session with a topic, whatever carries it (relay-internal): admission to the
// topic, items put in in order, the throttle of a full lossless topic (slow_down, max_wait,
// resume at half the budget), acks, and the notices and signals of the topic's stage. The
// transports (grpc_publish.cpp, ws_publish.cpp) decode items into it and encode its events.
//
// Protocol with the transport:
//   connect(wake, stage_event) before the first add(); open(topic) once (or again when a gRPC call
//   names another topic), then for each decoded item add(), then publish():
//     all_in   every item is in the topic: read the producer's next message;
//     waiting  the topic is full: read nothing (transport backpressure reaches the producer);
//              `wake` runs on `loop` when the topic has room or the item's max_wait is up, and
//              the transport calls publish() again;
//     idle     nothing was waiting (a late wake-up): do nothing;
//     refusal  end the session with it (topic_full after max_wait, stopping).
//   After each call, the transport takes next_event() until it answers nothing, as its
//   transport allows (one write at a time over gRPC): stage notices in order, then the flow
//   state the producer has not been told (slow_down / resume), then the newest ack. At most
//   one ack and one flow state are held, whatever the producer reads: they cost no memory.
//   A stage's notice reaches the transport through `stage_event` (on `loop`), which hands it
//   to stage_event() here.
//
// Thread-safety: not thread-safe; the transport serializes every call (a lock, or its loop).
// `wake` and `stage_event` are called on `loop` and must be safe to call after the transport
// is gone (a weak reference). A session may be opened before it is connected (a WebSocket
// upgrade refuses an unknown topic before the session exists).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "io_thread.hpp"
#include "outcome.hpp"
#include "relay_core.hpp"
#include "sluice/drop_reason.hpp"
#include "sluice/relay/protocol.hpp"
#include "topic.hpp"

namespace sluice::relay {

/// What a producer is told; the transport encodes it.
struct PublishEvent {
  enum class Kind : std::uint8_t {
    ack,              // every item up to `sequence` is in the topic
    slow_down,        // the topic is full: the relay stopped reading (queue_bytes, limit_bytes)
    resume,           // the topic drained to half its budget (queue_bytes)
    dropped,          // the stage will not process item `sequence`: `reason`, `detail`
    stage_slow_down,  // the stage's gate turned critical (`drop_rate`, `detail`)
    stage_resume,     // the stage's gate is back to normal (`drop_rate`)
  };
  Kind kind = Kind::ack;
  std::string topic;  // the topic (or stage) it is about
  std::uint64_t sequence = 0;
  std::uint64_t queue_bytes = 0;
  std::uint64_t limit_bytes = 0;
  std::string limit;  // slow_down: the setting that binds (max_queue_bytes, max_queue_items)
  DropReason reason = DropReason::overflow;
  double drop_rate = 0;
  std::string detail;
};

/// Stage notices unread by a producer before its session ends (events_unread).
constexpr std::size_t kMaxStageEventsUnread = 1024;

class PublishSession {
 public:
  enum class Progress : std::uint8_t { all_in, waiting, idle };

  /// A producer's session for `who` whose wake-ups and stage notices run on `loop`.
  PublishSession(RelayCore& core, IoThread& loop, Who who)
      : core_(core), loop_(loop), who_(std::move(who)) {}
  PublishSession(const PublishSession&) = delete;
  PublishSession& operator=(const PublishSession&) = delete;
  PublishSession(PublishSession&&) = delete;
  PublishSession& operator=(PublishSession&&) = delete;
  ~PublishSession();

  /// Where wake-ups and stage notices go (see the protocol above).
  void connect(std::function<void()> wake, std::function<void(PublishEvent)> stage_event);
  /// Joins the topic `name` as its producer (nothing if already there).
  std::optional<Refusal> open(const std::string& name);
  bool opened() const noexcept { return topic_ != nullptr; }
  const Topic& topic() const noexcept { return *topic_; }

  /// The producer's id (before add()): an item whose sequence the topic already has from this
  /// producer is acked and not put in again (see ProducerMemory); bad_request if over 128 bytes.
  std::optional<Refusal> set_producer(std::string id);
  /// frame_too_big if an item of `bytes` is over the limit (STREAM_MAX_FRAME_SIZE_MB) or, on a
  /// cluster topic (after open()), over what NATS carries (BridgeCounters::max_item_bytes).
  std::optional<Refusal> check_size(std::uint64_t bytes) const;
  /// An item for the topic: queued behind those waiting, offered to the topic's stage — or,
  /// over a limit (check_size), refused whatever the transport (the session ends).
  std::optional<Refusal> add(RelayMessage item);
  /// Puts what waits into the topic, in order (see the protocol above).
  Outcome<Progress> publish();

  /// A stage's notice for this producer (from `stage_event`): held for next_event();
  /// events_unread if kMaxStageEventsUnread already wait.
  std::optional<Refusal> stage_event(PublishEvent e);
  /// The next event for the producer, if any; acks only if the transport carries them.
  std::optional<PublishEvent> next_event(bool acks);
  /// Nothing waits for the topic or for the producer (acks counted if `acks`).
  bool drained(bool acks) const;
  /// The last sequence this session put into the topic.
  std::optional<std::uint64_t> published_through() const noexcept { return published_; }

 private:
  class Notices;
  std::optional<Refusal> blocked(std::uint64_t bytes);
  void listen();

  RelayCore& core_;
  IoThread& loop_;
  const Who who_;  // may publish to the topic it opens (checked by open())
  std::function<void()> wake_;
  std::function<void(PublishEvent)> stage_event_;
  std::shared_ptr<Topic> topic_;
  std::deque<RelayMessage> pending_;  // read from the producer, not yet in the topic
  std::string producer_;              // its id; empty: none (no duplicates detected)
  std::optional<std::uint64_t> published_;
  std::optional<std::uint64_t> ack_;  // the newest ack not yet taken
  void set_slowed(bool on);           // slowed_, counted in the topic's throttled_publishers
  void recheck_slowed();              // resume once drained to half, or wake then
  // A hook waits for the topic to drain to half (set here, cleared by the hook on any thread).
  std::shared_ptr<std::atomic<bool>> resume_armed_ = std::make_shared<std::atomic<bool>>(false);
  std::uint64_t items_ = 0;  // put into the topic (for its log line)
  // Times the topic held this producer back: the first is logged at info, the rest at debug
  // (a producer throttled again and again would drown the log), all counted in session_closed.
  std::uint64_t throttles_ = 0;
  std::chrono::steady_clock::time_point opened_at_;
  bool slowed_ = false;       // the topic is holding this producer back
  bool told_slowed_ = false;  // what the last flow event said
  bool waiting_ = false;      // an item waits for room since `deadline_`
  std::chrono::steady_clock::time_point deadline_;
  std::deque<PublishEvent> stage_events_;  // not yet taken
  std::shared_ptr<Notices> notices_;       // the stage's listener (a topic with a stage)
};

}  // namespace sluice::relay

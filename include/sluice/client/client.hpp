// Sluice — the C++ client of the relay (service sluice.v1.Relay over gRPC).
//
// Publisher
// - publish() numbers the item (0, 1, 2, ... per Publisher), queues it and returns; it blocks
//   only while `window_bytes` of the publisher's items are unacknowledged. The publisher's
//   memory is bounded by the window, whatever the transport buffers hold.
// - A writer thread sends what is queued on one long-lived Publish call, as one batch per
//   write (what accumulated while the previous write was in flight: no added latency when the
//   relay keeps up). While the relay holds the call back (a full lossless topic stops reading,
//   HTTP/2 flow control closes the window) the writer blocks, the window fills, and publish()
//   blocks: backpressure reaches the caller.
// - Loss: none silently. When the relay ends the call with RESOURCE_EXHAUSTED (the topic stayed
//   full for max_wait) or the call fails with UNAVAILABLE (the relay went away or restarts),
//   the writer waits a bounded exponential backoff, opens a new call and resends the items not
//   acknowledged; the relay puts each into the topic once (it says in trailing metadata what a
//   call put in, and skips what the topic already has from this producer, by its id), so
//   subscribers see each item once, in order — within one run of the relay: a relay that
//   restarted has lost what it held and gets the unacknowledged items again. After
//   `max_retries` attempts in a row without progress, or on any other error, publishing stops:
//   the next publish() and close() return the error, and unacknowledged() counts the items not
//   known to be in the topic. A relay never reached at all (nothing listens at `target`, or it
//   is not the gRPC port) fails at once, UNAVAILABLE "cannot reach the relay at ...", with no
//   retries: the backoff is for a relay that went away, not for a wrong address.
// - Events: acks, slow_down and resume on the reader thread, retrying on the writer thread;
//   keep the callback short.
// - Thread-safety: publish() from one thread at a time; close() once, after the last
//   publish(); accessors from any thread. The destructor cancels a call that was not closed.
//
// Subscriber
// - Constructing one opens a Subscribe call and returns once the relay has registered the
//   subscription (or refused it): items published after that are seen.
// - Reconnects (options.reconnect): when the call ends other than by cancel() or a refusal
//   (the relay stopped, the connection was lost), it subscribes again with backoff (0.1 s
//   doubling to 2 s) for up to reconnect_for and resumes at its position: on a topic that
//   retains items (retain_items) it continues with the next one, nothing lost or repeated;
//   otherwise a gap says what was missed (reason retention, or relay_restart with lost = 0:
//   unknown). With fallback_targets it moves to another relay serving the topic when its own
//   does not answer (the gap says relay_restart). If no relay answers in time, next() returns
//   false and finish() says UNAVAILABLE. A subscriber that never subscribed (its relay could
//   not be reached) does not retry: next() returns false at once and finish() says
//   UNAVAILABLE "cannot reach the relay at ...".
// - next() blocks for the next item or gap notice; returns false at the end of the stream
//   (relay shut down, topic closed, cancel()), after which finish() gives the status.
// - cancel() and stats() may be called from any thread (each counter is exact; a stats() taken
//   while items arrive may count an item and not yet its bytes); everything else from the
//   reading thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "sluice/buffer.hpp"
#include "sluice/client/tls.hpp"

namespace sluice::client {

/// A gRPC status, without the gRPC headers: code 0 is OK (codes as in grpc::StatusCode).
struct Status {
  int code = 0;
  std::string message;
  bool ok() const noexcept { return code == 0; }
  /// "OK" or "RESOURCE_EXHAUSTED: <message>".
  std::string to_string() const;
};

struct PublisherOptions {
  std::string target = "127.0.0.1:7400";  // host:port of the relay's gRPC listener
  std::string topic;                      // 1-128 of [A-Za-z0-9._-]
  std::uint64_t window_bytes = 8u << 20;  // unacknowledged payload bytes in flight, at most
  std::chrono::milliseconds initial_backoff{100};  // after the first RESOURCE_EXHAUSTED
  std::chrono::milliseconds max_backoff{5000};     // doubling stops here
  int max_retries = 10;  // in a row without progress (about 26 s of backoff); 0: never
  // Its id on the relay (sluice-producer): the relay skips a resent item the topic has from
  // it. Empty: a random one per Publisher. Items are numbered 0, 1, 2, ... per Publisher.
  std::string token{};  // the relay's bearer token for this principal (empty: none)
  TlsOptions tls{};     // TLS to the relay (its CA set: on)
  std::string producer{};
};

struct PublisherEvent {
  enum class Kind : std::uint8_t { ack, slow_down, resume, retrying };
  Kind kind = Kind::ack;
  std::uint64_t sequence = 0;            // ack: everything up to here is in the topic
  std::uint64_t queue_bytes = 0;         // slow_down / resume
  std::uint64_t limit_bytes = 0;         // slow_down
  std::chrono::milliseconds backoff{0};  // retrying: how long before the next attempt
  std::string message;                   // slow_down: reason; retrying: the relay's status
};
std::string_view to_string(PublisherEvent::Kind kind) noexcept;

struct PublisherStats {
  std::uint64_t published = 0;  // items handed to publish()
  std::uint64_t acked = 0;      // items the relay has put into the topic
  std::uint64_t bytes = 0;      // payload bytes handed to publish()
  std::uint64_t slow_downs = 0;
  std::uint64_t resumes = 0;
  std::uint64_t retries = 0;  // calls reopened after RESOURCE_EXHAUSTED or UNAVAILABLE
  std::uint64_t resent = 0;   // items sent again on a reopened call
};

class Publisher {
 public:
  explicit Publisher(PublisherOptions options,
                     std::function<void(const PublisherEvent&)> on_event = {});
  ~Publisher();  // cancels the call if close() was not called
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;
  Publisher(Publisher&&) = delete;
  Publisher& operator=(Publisher&&) = delete;

  /// Queues `payload` stamped with `timestamp_ns` (default: now, Unix time in ns) and `flags`
  /// (relay.proto's Item.flags: bit 0 delta — it depends on an earlier item, as a video's
  /// delta frame; bit 1 discardable); waits while the window is full. Returns the error that
  /// ended publishing, if there was one (FAILED_PRECONDITION after close()).
  Status publish(Buffer payload, std::int64_t timestamp_ns = 0, std::uint32_t flags = 0);
  /// Sends what is queued, half-closes the call and waits until every item is acknowledged.
  /// OK, or the error that prevented it.
  Status close();

  PublisherStats stats() const;
  /// Items sent and not acknowledged (after an error: not known to be in the topic).
  std::uint64_t unacknowledged() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

struct SubscriberOptions {
  std::string target = "127.0.0.1:7400";
  /// Other relays that serve the topic (a cluster topic: docs/cluster.md), host:port each.
  /// Reconnecting tries the relay it was on first, then each of these in turn (one round of all
  /// before each backoff): a subscriber whose relay went away continues on another one, after a
  /// gap notice `relay_restart` (lost 0: unknown) — another relay's positions are its own. The
  /// constructor subscribes at `target` only.
  std::vector<std::string> fallback_targets{};
  std::string topic;
  std::string name = "subscriber";  // shown in the relay's stats and metrics
  std::uint32_t depth = 0;          // real-time topics: items the relay keeps; 0: its default
  std::string token{};              // the relay's bearer token for this principal (empty: none)
  TlsOptions tls{};                 // TLS to the relay (its CA set: on)
  bool reconnect = false;           // subscribe again and resume when the call ends (above)
  std::chrono::milliseconds reconnect_for{30'000};  // then give up (UNAVAILABLE)
};

struct SubscriberEvent {
  enum class Kind : std::uint8_t { item, gap };
  Kind kind = Kind::item;
  Buffer payload;  // item: the bytes (in place in what gRPC received, or copied once if split)
  std::uint64_t sequence = 0;
  std::int64_t timestamp_ns = 0;  // the producer's stamp
  std::uint32_t flags = 0;        // item: as published (bit 0 delta, bit 1 discardable)
  std::uint64_t lost = 0;         // gap: items lost before the next one
  // gap: why (slow_consumer, retention, relay_restart, bridge, until_keyframe)
  std::string reason;
};

struct SubscriberStats {
  std::uint64_t items = 0;
  std::uint64_t bytes = 0;
  std::uint64_t gaps = 0;
  std::uint64_t lost = 0;
  std::uint64_t reconnects = 0;  // subscribed again after the call ended
};

class Subscriber {
 public:
  explicit Subscriber(const SubscriberOptions& options);
  ~Subscriber();  // cancels the call
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;
  Subscriber(Subscriber&&) = delete;
  Subscriber& operator=(Subscriber&&) = delete;

  /// The next item or gap notice; false once the stream has ended.
  bool next(SubscriberEvent& event);
  /// Calls on_item / on_gap for every event until the stream ends; returns finish().
  Status run(const std::function<void(SubscriberEvent&)>& on_item,
             const std::function<void(std::uint64_t lost, const std::string& reason)>& on_gap);
  /// After next() returned false: how the stream ended (OK for a relay shutdown; CANCELLED
  /// after cancel(); NOT_FOUND, RESOURCE_EXHAUSTED, INVALID_ARGUMENT for refusals).
  Status finish();
  /// Ends the stream from any thread; next() then returns false.
  void cancel();
  /// The relay registered the subscription (false: it refused or could not be reached; next()
  /// then returns false and finish() says why).
  bool subscribed() const;

  SubscriberStats stats() const;

  struct Impl;

 private:
  bool next_discard();
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice::client

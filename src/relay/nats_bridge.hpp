// The relay's bridge to NATS (relay-internal; docs/cluster.md): every cluster topic is shared
// with the other relays attached to the same NATS system, each item crossing NATS once per relay
// that has subscribers for it; each relay then fans it out with its own depths, budgets and gap
// notices.
//
// Per cluster topic, while it exists here:
//   out   a subscription to the topic (named "nats-bridge") sends this relay's items — not those
//         that came from NATS — to NATS, numbered (bridge_codec.hpp). Real-time: core NATS
//         publish on {prefix}.rt.{topic}; if the subscription is lapped (NATS too slow) the
//         numbering jumps by what it lost, so receivers announce it. Lossless: JetStream publish
//         on {prefix}.js.{topic} into the stream made for the topic (interest retention, its
//         byte limit the topic's max_queue_bytes, new messages refused when full), in batches,
//         one unacked at a time (so that items reach the stream in order), gathering the next
//         meanwhile; a refused or unacked batch is sent again (its message id keeps JetStream
//         from storing it twice) after a backoff, and once the next batch is full the
//         subscription is not read: the topic fills and its producers are throttled
//         (slow_down, max_wait).
//   in    only while the topic has subscribers here: real-time, a core NATS subscription whose
//         items go into the topic as they arrive (never waiting), gaps announced (reason bridge);
//         lossless, a JetStream push consumer with flow control named after this relay
//         (max_ack_pending = the topic's max_queue_items batches, from the stream's next message,
//         taken in the stream's order) whose callback puts each item into the topic — waiting for
//         room, as a producer does — and acks the batch only then, so a slow subscriber here stops
//         JetStream's deliveries, fills the stream and throttles the producers on every relay. In
//         order per origin, repeats dropped (bridge_sequence.hpp).
//
// The connection reconnects forever (nats.urls, in order); items this relay publishes meanwhile
// are buffered by the client (8 MiB) and the rest counted lost, and seen as such by receivers.
//
// Presence: every second each bridge publishes on {prefix}.relays its name and its cluster
// topics with their subscriber counts (JSON); each keeps what the others said for 3 s, and shows
// per topic which relays serve it (stats: bridge.relays; the dashboard).
//
// Threads: the bridge's control thread, which alone connects links to NATS and lets them go
// (stream creation, consumers, joins, backoff: whatever may wait for NATS waits there, never on
// the relay's loops or under the topic registry's lock; a new topic is only queued for it); one
// per cluster topic that sends (out), one per lossless topic that receives (its reorder-timeout
// tick); the NATS client's own (one per subscription).
//
// Lifetimes: a callback from the NATS client never outlives what it reaches — a real-time
// receiver and the presence record are freed by the client's completion callback; a lossless
// receiver's owner waits for its completion; a link waits until no JetStream ack callback can
// run before it goes (those in flight answered, or taken out of the client's list).
//
// Thread-safety: attach() and stop() may be called from any thread (attach() under the topic
// registry's lock: it only queues).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "relay_core.hpp"
#include "sluice/detail/cond_var.hpp"
#include "sluice/detail/thread_annotations.hpp"
#include "topic.hpp"

namespace sluice::relay {

class NatsBridge {
 public:
  /// Batches a lossless topic may have sent to JetStream and not yet acked.
  static constexpr std::size_t kMaxInFlight = 1;

  /// Starts connecting (nats.urls, nats.credentials_file / nats.token) and the control thread;
  /// the relay starts whether or not NATS answers yet. Throws std::runtime_error naming the
  /// setting if the client refuses the options.
  explicit NatsBridge(RelayCore& core);
  NatsBridge(const NatsBridge&) = delete;
  NatsBridge& operator=(const NatsBridge&) = delete;
  NatsBridge(NatsBridge&&) = delete;
  NatsBridge& operator=(NatsBridge&&) = delete;
  ~NatsBridge();

  /// Queues a cluster topic for the control thread, which starts sending its items (from the
  /// registry, as the topic is made). Never waits for NATS.
  void attach(const std::shared_ptr<Topic>& t);
  /// Stops the control thread and every link's, then closes the connection (idempotent). Waits
  /// for them: at most what a link takes to let go (a JetStream ack in flight, 1 s).
  void stop();
  /// This relay's name among the others (nats.name, or the random one).
  const std::string& name() const noexcept { return name_; }

  struct Link;  // one cluster topic (nats_bridge.cpp)
  struct Connection;
  struct Presence;  // what the other relays said they serve

 private:
  void run_control();
  void link(const std::shared_ptr<Topic>& t);
  void tend(std::chrono::steady_clock::time_point now);
  std::uint64_t item_limit();
  void announce();

  RelayCore& core_;
  const std::string name_;
  std::unique_ptr<Connection> nats_;
  std::shared_ptr<Presence> presence_;  // (shared with its subscription's callback)

  Mutex mu_;
  CondVar wake_;
  bool stopped_ SLUICE_GUARDED_BY(mu_) = false;
  std::vector<std::weak_ptr<Topic>> attaching_ SLUICE_GUARDED_BY(mu_);
  std::atomic<std::uint64_t> carried_{0};  // item_limit()'s last answer, for attach()

  // The control thread's alone.
  std::map<std::string, std::unique_ptr<Link>> links_;
  std::chrono::steady_clock::time_point announced_{};
  std::uint64_t told_limit_ = 0;  // the item limit last said in the log
  std::thread control_;           // (started last by the constructor; joined by stop())
};

}  // namespace sluice::relay

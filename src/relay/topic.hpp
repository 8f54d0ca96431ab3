// A topic of the relay (relay-internal): its name, its settings, the Broadcast that holds its
// items for its subscribers, and the stage behind it (if it declares one).
//
// Thread-safety: `name`, `config` and `stage` are set before the topic is shared and never
// change; `broadcast` and the counters are thread-safe.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "producer_memory.hpp"
#include "refusal.hpp"
#include "sluice/broadcast.hpp"
#include "sluice/detail/thread_annotations.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay/config.hpp"
#include "sluice/relay/protocol.hpp"
#include "stage.hpp"

namespace sluice::relay {

/// What the relay knows of a subscriber besides the topic's own stats (SubscriberStats): its
/// session, what its socket holds unsent in the kernel (WebSocket subscribers), and the
/// slow-consumer judge's last verdict on its sends. Its SubscriberPump registers it with the
/// topic while it is subscribed; the fields are read from any thread.
struct SubscriberExtras {
  enum class Verdict : std::uint8_t { ok, late, stalled };
  std::uint64_t session = 0;
  std::string name;
  std::uint64_t joined_at = 0;                         // as in SubscriberStats
  const std::atomic<std::uint64_t>* unsent = nullptr;  // null: not sampled (gRPC)
  const std::atomic<Verdict>* verdict = nullptr;
  // Items skipped up to a keyframe after its losses (video topics).
  const std::atomic<std::uint64_t>* until_keyframe = nullptr;

  /// "ok", "late", "stalled": as the stats and the log say it.
  static constexpr std::string_view verdict_name(Verdict v) noexcept {
    constexpr std::string_view kNames[] = {"ok", "late", "stalled"};
    return kNames[static_cast<std::size_t>(v)];
  }
  /// What a subscription delivered: what it took from the topic (`received`) but the items its
  /// session skipped up to a keyframe (`skipped`, lost{until_keyframe}).
  static constexpr std::uint64_t delivered(std::uint64_t received, std::uint64_t skipped) noexcept {
    return received - std::min(received, skipped);
  }
};

/// What a cluster topic's bridge to NATS did (docs/cluster.md); updated by the bridge's threads,
/// read by the stats and /metrics.
struct BridgeCounters {
  std::atomic<std::uint64_t> sent_items{0};      // this relay's items sent to NATS
  std::atomic<std::uint64_t> sent_bytes{0};      // their payload bytes
  std::atomic<std::uint64_t> sent_messages{0};   // the NATS messages that carried them (batches)
  std::atomic<std::uint64_t> received_items{0};  // other relays' items put into this topic
  std::atomic<std::uint64_t> received_bytes{0};
  std::atomic<std::uint64_t> lost{0};        // lost between relays: announced as `bridge` gaps
  std::atomic<std::uint64_t> duplicates{0};  // repeats dropped (JetStream redeliveries)
  std::atomic<std::uint64_t> retries{0};     // sends JetStream refused or did not ack, sent again
  std::atomic<std::uint64_t> too_big{0};     // this relay's items over max_item_bytes: not sent
  std::atomic<std::uint64_t> pending{0};     // sent and not yet acked by JetStream, and held
  /// The largest item NATS carries between relays now: the connected server's max_payload less
  /// the bridge's header (bridge_codec.hpp); 0 until the bridge has connected. A producer's item
  /// over it is refused (frame_too_big); one in the topic already is not sent, and the other
  /// relays announce it as a `bridge` gap.
  std::atomic<std::uint64_t> max_item_bytes{0};
  std::atomic<bool> receiving{false};  // subscribed to the other relays' items now

  /// An item of `bytes` from another relay went into the topic, `missed` items after the one
  /// before it from that relay.
  void received(std::uint64_t bytes, std::uint64_t missed) {
    received_items.fetch_add(1, std::memory_order_relaxed);
    received_bytes.fetch_add(bytes, std::memory_order_relaxed);
    lost.fetch_add(missed, std::memory_order_relaxed);
  }

  /// A relay serving the topic: this one, or one whose bridge said so over NATS lately.
  struct Relay {
    std::string name;               // its nats.name
    std::uint64_t subscribers = 0;  // its subscribers of the topic
    bool self = false;              // this relay
  };
  /// The relays serving the topic, by name (written by the bridge every second).
  std::vector<Relay> relays() const {
    const MutexLock lock(relays_mu_);
    return relays_;
  }
  void set_relays(std::vector<Relay> r) {
    const MutexLock lock(relays_mu_);
    relays_ = std::move(r);
  }

 private:
  mutable Mutex relays_mu_;
  std::vector<Relay> relays_ SLUICE_GUARDED_BY(relays_mu_);
};

/// How far behind a real-time cluster topic's bridge subscription may be before it loses items.
constexpr std::size_t kBridgeDepth = 64;

struct Topic {
  /// `producer_ids`: the producers it remembers (limits.max_producer_ids). `bridged`: a cluster
  /// topic of a relay with a bridge to NATS, whose subscription is made here, with the topic, so
  /// that it sees the first item (take_bridge_subscription()).
  Topic(std::string n, const TopicConfig& c, std::size_t producer_ids, bool bridged = false)
      : name(std::move(n)),
        config(c),
        broadcast(make(c)),
        epoch(make_epoch()),
        producers(producer_ids) {
    if (!bridged) return;
    // Lossless: the bridge holds producers back while NATS cannot take more; real-time: as
    // deep as the ring, lapped past it (counted, and seen by the other relays).
    auto sub = broadcast.subscribe("nats-bridge",
                                   c.mode == TopicMode::lossless ? 0 : broadcast.config().capacity);
    bridge_subscribers.store(1, std::memory_order_release);
    const MutexLock lock(extras_mu_);
    bridge_sub_.emplace(std::move(sub));
  }
  /// 16 random hex digits: a topic made again (the relay restarted, or an idle topic was
  /// removed and made on use) has another, so positions of the old one are not taken for its.
  static std::string make_epoch() {
    std::random_device rd;
    const std::uint64_t v = (std::uint64_t{rd()} << 32) ^ rd();
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out(16, '0');
    for (int i = 0; i < 16; ++i) out[static_cast<std::size_t>(i)] = kHex[(v >> (60 - 4 * i)) & 0xF];
    return out;
  }
  static BroadcastConfig make(const TopicConfig& c) {
    BroadcastConfig b;
    b.name = c.name.empty() ? "topic" : c.name;
    if (c.mode == TopicMode::lossless) {
      b.mode = BroadcastMode::lossless;
      b.capacity = c.max_queue_items;
      b.default_depth = c.max_queue_items;  // (each subscriber may be that far behind)
      b.max_bytes = c.max_queue_bytes;
      b.max_wait = c.max_wait;
    } else {
      b.mode = BroadcastMode::lossy;
      // (a cluster topic's bridge subscribes as deep as the ring: 64 items at least, so that a
      // producer's burst reaches NATS whole; docs/cluster.md)
      b.capacity = std::max<std::size_t>(
          {2 * c.depth, c.scope == TopicScope::cluster ? kBridgeDepth : 8, c.retain_items});
      b.default_depth = c.depth;
    }
    b.retain = c.retain_items;
    b.retain_bytes = c.max_queue_bytes;
    // A video's current group (its latest keyframe and the delta frames after it), so that a
    // newcomer starts at that keyframe: within the ring and max_queue_bytes.
    b.group_items = b.capacity;
    b.group_bytes = c.max_queue_bytes;
    return b;
  }

  /// How an item went into the topic (put()).
  enum class Put : std::uint8_t {
    in,         // published (and counted)
    duplicate,  // its producer had put it in already: not again
    full,       // no room (lossless): a subscriber is a budget behind
    closed,     // the topic is closed (the relay is stopping)
  };
  /// Puts `m` into the topic, never waiting: the one way items go in — producers' sessions, a
  /// stage's results and the bridge's receivers — so that what the topic counts as published is
  /// counted in one place. With a `producer` id, an item of that producer's whose sequence it
  /// already put in is a duplicate (ProducerMemory). `m` is moved from only when it is `in`;
  /// otherwise it is intact for another try. How to wait for room is the caller's (a session:
  /// its max_wait on the loop; the bridge: put_until, holding JetStream's ack).
  Put put(RelayMessage& m, const std::string& producer = {}) {
    const std::uint64_t bytes = m.payload.size();
    SendResult r;
    if (producer.empty()) {
      r = broadcast.try_publish(std::move(m));
    } else if (producers.publish_once(producer, m.sequence, [&] {
                 r = broadcast.try_publish(std::move(m));
                 return r.status == SendStatus::ok;
               }) == ProducerMemory::Outcome::duplicate) {
      return Put::duplicate;
    }
    return counted(r, bytes);
  }
  /// As put() without a producer, waiting for room (lossless) until `deadline`.
  Put put_until(RelayMessage& m, std::chrono::steady_clock::time_point deadline) {
    const std::uint64_t bytes = m.payload.size();
    return counted(broadcast.publish(std::move(m), deadline), bytes);
  }

  /// The limit that holds a producer back now: max_queue_items when a subscriber is that many
  /// items behind, else max_queue_bytes.
  std::string_view binding_limit() const {
    return broadcast.queue_items() >= config.max_queue_items ? "max_queue_items"
                                                             : "max_queue_bytes";
  }

  /// Why a publish gave up after max_wait: the topic, the slowest subscriber, what it holds
  /// against the limit that binds, and the settings to change.
  Refusal full() const {
    const auto s = broadcast.stats();
    std::string slowest = "(none)";
    std::uint64_t bytes = 0;
    std::uint64_t items = 0;
    for (const auto& sub : s.subscribers) {
      if (sub.lag >= items) {
        items = sub.lag;
        bytes = sub.lag_bytes;
        slowest = sub.name;
      }
    }
    const bool by_items = items >= config.max_queue_items;
    const std::string holds =
        by_items ? std::to_string(items) + " items of max_queue_items " +
                       std::to_string(config.max_queue_items) +
                       ". Speed up the consumer, or raise max_queue_items (SLUICE_MAX_QUEUE_ITEMS)"
                 : std::to_string(bytes) + " bytes of max_queue_bytes " +
                       std::to_string(config.max_queue_bytes) +
                       ". Speed up the consumer, or raise max_queue_bytes (SLUICE_MAX_QUEUE_BYTES)";
    return {RefusalKind::topic_full,
            "topic '" + name + "' is full: waited " + std::to_string(config.max_wait.count()) +
                " ms for room; subscriber '" + slowest + "' holds " + holds +
                " or max_wait_ms (SLUICE_MAX_WAIT_MS)",
            "SLUICE_MAX_WAIT_MS"};
  }

  const std::string name;
  const TopicConfig config;
  Broadcast<RelayMessage> broadcast;
  /// This topic's run (see make_epoch): with a position, where a subscriber can resume.
  const std::string epoch;
  /// Producers that name themselves, and what of theirs is in (an item sent again goes in once).
  ProducerMemory producers;
  /// Publishes that gave up after max_wait, on any transport (topic_full refusals).
  std::atomic<std::uint64_t> publish_timeouts{0};
  /// Payload bytes published (for rates in the stats).
  std::atomic<std::uint64_t> published_bytes{0};
  /// Producers the topic holds back now (told slow_down, not yet resume), and how many times
  /// one was.
  std::atomic<std::uint64_t> throttled_publishers{0};
  std::atomic<std::uint64_t> throttled_total{0};
  /// Cluster topics: the bridge's counters, and its subscription to the topic (the subscriber
  /// that sends this relay's items out; not a user's: it keeps the topic in use no longer).
  const std::shared_ptr<BridgeCounters> bridge = std::make_shared<BridgeCounters>();
  std::atomic<std::size_t> bridge_subscribers{0};
  /// Subscribers besides the bridge's.
  std::size_t user_subscribers() const {
    const std::size_t all = broadcast.subscriber_count();
    const std::size_t own = bridge_subscribers.load(std::memory_order_acquire);
    return all > own ? all - own : 0;
  }

  /// The subscribers' extras, by session (registered and removed by their pumps).
  void add_extras(const SubscriberExtras& e) {
    const MutexLock lock(extras_mu_);
    extras_.push_back(e);
  }
  void remove_extras(std::uint64_t session) {
    const MutexLock lock(extras_mu_);
    std::erase_if(extras_, [session](const SubscriberExtras& e) { return e.session == session; });
  }
  /// Calls `f(extras)` under the lock (the pumps cannot go meanwhile).
  template <class F>
  void with_extras(F&& f) const {
    const MutexLock lock(extras_mu_);
    f(extras_);
  }
  /// The bridge's subscription (once; nothing after).
  std::optional<Subscription<RelayMessage>> take_bridge_subscription() {
    const MutexLock lock(extras_mu_);
    auto sub = std::move(bridge_sub_);
    bridge_sub_.reset();
    return sub;
  }
  std::shared_ptr<Stage> stage;  // when the topic declares one (set before it is shared)

  // The registry's bookkeeping (under its lock): whether the topic may be removed once idle
  // (made on first use, and not a stage's results), since when nothing has used it, and its
  // series in /metrics (removed with it).
  bool removable = false;
  std::optional<std::chrono::steady_clock::time_point> idle_since;
  std::vector<std::pair<std::string, metrics::Labels>> series;

 private:
  Put counted(const SendResult& r, std::uint64_t bytes) {
    switch (r.status) {
      case SendStatus::ok:
        published_bytes.fetch_add(bytes, std::memory_order_relaxed);
        return Put::in;
      case SendStatus::would_block:
      case SendStatus::timeout:
        return Put::full;
      default:
        return Put::closed;
    }
  }

  mutable Mutex extras_mu_;
  std::vector<SubscriberExtras> extras_ SLUICE_GUARDED_BY(extras_mu_);
  std::optional<Subscription<RelayMessage>> bridge_sub_ SLUICE_GUARDED_BY(extras_mu_);
};

}  // namespace sluice::relay

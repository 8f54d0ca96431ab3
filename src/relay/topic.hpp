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
};

struct Topic {
  /// `producer_ids`: the producers it remembers (limits.max_producer_ids).
  Topic(std::string n, const TopicConfig& c, std::size_t producer_ids)
      : name(std::move(n)),
        config(c),
        broadcast(make(c)),
        epoch(make_epoch()),
        producers(producer_ids) {}
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
      b.capacity = std::max<std::size_t>({2 * c.depth, 8, c.retain_items});
      b.default_depth = c.depth;
    }
    b.retain = c.retain_items;
    b.retain_bytes = c.max_queue_bytes;
    return b;
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
  std::shared_ptr<Stage> stage;  // when the topic declares one (set before it is shared)

  // The registry's bookkeeping (under its lock): whether the topic may be removed once idle
  // (made on first use, and not a stage's results), since when nothing has used it, and its
  // series in /metrics (removed with it).
  bool removable = false;
  std::optional<std::chrono::steady_clock::time_point> idle_since;
  std::vector<std::pair<std::string, metrics::Labels>> series;

 private:
  mutable Mutex extras_mu_;
  std::vector<SubscriberExtras> extras_ SLUICE_GUARDED_BY(extras_mu_);
};

}  // namespace sluice::relay

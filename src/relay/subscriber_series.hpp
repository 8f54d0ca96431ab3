// A subscriber's series in /metrics (relay-internal; labels topic, subscriber, session), read
// from its Subscription at scrape time and removed when this goes (the registry serializes
// removal with scrapes).
//
// Thread-safety: the scrapes run on any thread; leave() serializes the subscription's
// departure with them, so a subscriber on another thread than the scrapes may leave at any
// time. The subscription (and `unsent`) must outlive this.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "sluice/broadcast.hpp"
#include "sluice/detail/thread_annotations.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay/protocol.hpp"
#include "topic.hpp"

namespace sluice::relay {

class SubscriberSeries {
 public:
  // `unsent` (WebSocket subscribers): where the subscriber's loop leaves the bytes its socket
  // last held unsent in the kernel, shown as sluice_subscriber_unsent_bytes.
  // `until_keyframe`: the items its session skipped after a loss up to a keyframe.
  SubscriberSeries(metrics::Registry& registry, const std::string& topic,
                   Subscription<RelayMessage>& sub, std::uint64_t session,
                   const std::atomic<std::uint64_t>* unsent,
                   const std::atomic<std::uint64_t>& until_keyframe)
      : registry_(registry),
        sub_(sub),
        labels_{{"topic", topic}, {"subscriber", sub.name()}, {"session", std::to_string(session)}},
        lost_labels_(with_reason(labels_, DropReason::slow_consumer)),
        keyframe_labels_(with_reason(labels_, DropReason::until_keyframe)) {
    if (unsent != nullptr) {
      registry_.gauge_fn(
          "sluice_subscriber_unsent_bytes",
          "Bytes in the kernel's send buffer not yet taken by this WebSocket subscriber "
          "(sampled every limits.send_timeout_ms while something waits for it)",
          labels_, [unsent] { return double(unsent->load(std::memory_order_relaxed)); });
    }
    // (what its session skipped up to a keyframe was taken from the topic, not delivered)
    registry_.counter_fn(
        "sluice_subscriber_received_total", "Items delivered to this subscriber", labels_,
        [this, &until_keyframe] {
          const auto skipped = until_keyframe.load(std::memory_order_relaxed);
          return read([skipped](const auto& s) {
            return double(SubscriberExtras::delivered(s.stats().received, skipped));
          });
        });
    registry_.counter_fn("sluice_subscriber_dropped_total", "Items this subscriber lost, by reason",
                         lost_labels_, [this] {
                           return read([](const auto& s) {
                             return double(s.stats().lost[DropReason::slow_consumer]);
                           });
                         });
    registry_.counter_fn("sluice_subscriber_dropped_total", "Items this subscriber lost, by reason",
                         keyframe_labels_, [&until_keyframe] {
                           return double(until_keyframe.load(std::memory_order_relaxed));
                         });
    registry_.gauge_fn("sluice_subscriber_lag_items", "Items published and not yet received",
                       labels_,
                       [this] { return read([](const auto& s) { return double(s.lag()); }); });
    registry_.gauge_fn("sluice_subscriber_lag_bytes",
                       "Bytes published and not yet received (lossless topics)", labels_, [this] {
                         return read([](const auto& s) { return double(s.stats().lag_bytes); });
                       });
  }
  SubscriberSeries(const SubscriberSeries&) = delete;
  SubscriberSeries& operator=(const SubscriberSeries&) = delete;
  SubscriberSeries(SubscriberSeries&&) = delete;
  SubscriberSeries& operator=(SubscriberSeries&&) = delete;
  ~SubscriberSeries() {
    for (const char* name : {"sluice_subscriber_received_total", "sluice_subscriber_lag_items",
                             "sluice_subscriber_lag_bytes"})
      registry_.remove(name, labels_);
    registry_.remove("sluice_subscriber_dropped_total", lost_labels_);
    registry_.remove("sluice_subscriber_dropped_total", keyframe_labels_);
    registry_.remove("sluice_subscriber_unsent_bytes", labels_);  // (if a WebSocket one's)
  }

  /// Leaves the topic (the subscription stops holding a lossless topic back).
  void leave() {
    MutexLock lock(mu_);
    sub_.unsubscribe();
  }

 private:
  template <class F>
  double read(F&& f) const {
    MutexLock lock(mu_);
    return sub_.active() ? f(sub_) : 0.0;
  }
  static metrics::Labels with_reason(metrics::Labels labels, DropReason reason) {
    labels.emplace_back("reason", std::string(to_string(reason)));
    return labels;
  }
  metrics::Registry& registry_;
  Subscription<RelayMessage>& sub_;  // its departure guarded by mu_
  const metrics::Labels labels_;
  const metrics::Labels lost_labels_;
  const metrics::Labels keyframe_labels_;
  mutable Mutex mu_;  // leave() against the scrapes
};

}  // namespace sluice::relay

// Sluice — AdaptiveBudget: a byte budget that moves to hold a target queueing latency.
//
// A fixed byte budget is right for one consumer speed only: too small and a fast consumer
// starves between bursts, too large and a slow one lets latency grow with the queue. An
// AdaptiveBudget watches the queueing latency of the items that leave the queue (time from
// enqueue to dequeue) and, once per `interval`, moves the budget by AIMD:
//   - the largest latency seen in the interval is above target_latency: the budget is
//     multiplied by decrease_factor (multiplicative decrease: a queue that is too deep drains
//     within a few intervals, whatever the consumer's new speed). Items that entered the queue
//     before the last decrease are not counted for the next one (they show the old budget,
//     not the new one): one decrease per queue drain, as TCP does once per round trip;
//   - otherwise, if the queue was full at some point in the interval (the budget limited the
//     producer), the budget grows by increase_bytes (additive increase: probe for room slowly);
//   - otherwise it stays: a budget nobody reaches carries no information.
// It always stays within [min_bytes, max_bytes]. In steady state the budget oscillates below
// the point where latency meets the target (a saw-tooth between about half of it and it), so
// queueing latency stays near or under the target; after the consumer changes speed the budget
// converges within a few intervals (a slow-down) or (budget gap / increase_bytes) intervals (a
// speed-up).
//
// Use: producers admit an item only while queue bytes + its size ≤ bytes() (for example a
// Channel with `reject` checked against bytes() first, or a relay topic's publisher gate);
// consumers report each item's queueing latency with observe(); producers report a refusal
// with saturated().
//
// Time is a parameter (`now`) for deterministic tests. Thread-safety: bytes() is a lock-free
// read from any thread; observe(), saturated() and stats() may be called from any thread (one
// mutex).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

#include "sluice/detail/thread_annotations.hpp"

namespace sluice {

struct AdaptiveBudgetConfig {
  std::string name = "budget";
  /// The budget never goes below this. ≥ 1.
  std::size_t min_bytes = std::size_t{64} << 10;
  /// Nor above this. ≥ min_bytes.
  std::size_t max_bytes = std::size_t{64} << 20;
  /// Where it starts. In [min_bytes, max_bytes].
  std::size_t initial_bytes = std::size_t{1} << 20;
  /// The queueing latency to hold. > 0.
  std::chrono::nanoseconds target_latency = std::chrono::milliseconds(50);
  /// Additive step per interval. ≥ 1.
  std::size_t increase_bytes = std::size_t{64} << 10;
  /// Multiplicative step. (0, 1).
  double decrease_factor = 0.5;
  /// At most one adjustment per interval. > 0. (About the target latency is a good value:
  /// the effect of a change is visible one queue-drain later.)
  std::chrono::nanoseconds interval = std::chrono::milliseconds(50);

  /// Throws std::invalid_argument naming the budget, the setting, the value and the range.
  void validate() const;
};

struct AdaptiveBudgetStats {
  std::string name;
  std::size_t bytes = 0;
  std::uint64_t increases = 0;
  std::uint64_t decreases = 0;
  std::uint64_t observations = 0;
  std::chrono::nanoseconds last_interval_max_latency{0};
};

class AdaptiveBudget {
 public:
  using Clock = std::chrono::steady_clock;

  /// Throws std::invalid_argument if the configuration is invalid.
  explicit AdaptiveBudget(AdaptiveBudgetConfig config);

  /// The current budget in bytes. Lock-free.
  std::size_t bytes() const noexcept { return bytes_.load(std::memory_order_relaxed); }

  /// An item left the queue after waiting `queueing_latency`. May adjust the budget (once per
  /// interval); returns the budget after the call.
  std::size_t observe(std::chrono::nanoseconds queueing_latency, Clock::time_point now);
  std::size_t observe(std::chrono::nanoseconds queueing_latency) {
    return observe(queueing_latency, Clock::now());
  }

  /// The producer found the budget full (it waited, dropped or was refused). Only a budget
  /// that limits someone grows.
  void saturated(Clock::time_point now);
  void saturated() { saturated(Clock::now()); }

  AdaptiveBudgetStats stats() const;
  const AdaptiveBudgetConfig& config() const noexcept { return config_; }

 private:
  void adjust_locked(Clock::time_point now) SLUICE_REQUIRES(mu_);

  const AdaptiveBudgetConfig config_;
  std::atomic<std::size_t> bytes_;
  mutable Mutex mu_;
  std::optional<Clock::time_point> interval_start_ SLUICE_GUARDED_BY(mu_);
  std::optional<Clock::time_point> last_decrease_ SLUICE_GUARDED_BY(mu_);
  std::chrono::nanoseconds interval_max_ SLUICE_GUARDED_BY(mu_){0};
  bool interval_saturated_ SLUICE_GUARDED_BY(mu_) = false;
  bool interval_observed_ SLUICE_GUARDED_BY(mu_) = false;
  AdaptiveBudgetStats stats_ SLUICE_GUARDED_BY(mu_);
};

}  // namespace sluice

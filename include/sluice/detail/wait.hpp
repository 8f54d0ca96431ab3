// Sluice internals — parking threads without polling, and one-shot readiness hooks.
//
// WaitQueue is an event count over a Linux futex. The protocol, for a waiter:
//
//   ticket = q.enter();          // register (seq_cst RMW), then read the epoch
//   <re-check the condition with seq_cst loads of what the notifier changes>
//   if (still not ready) q.park(ticket, deadline);
//   q.leave();
//
// and for a notifier: make the change with a seq_cst atomic operation, then q.notify_all().
// (Or, on a hot path: make the change with a release store, light_fence(), notify_all(); the
// waiter then calls heavy_fence() between enter() and its re-check.)
// Either the notifier sees the registration (and bumps the epoch, so park() returns at once or
// is woken), or the waiter's re-check sees the change: no lost wake-up, no sleep-and-retry loop.
// A notifier that finds nobody registered pays one load.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

namespace sluice::detail {

using Clock = std::chrono::steady_clock;

/// Timeouts given as durations become deadlines only when a call first has to wait, so fast
/// paths never read the clock. kLazyDeadline marks "deadline = now + timeout, later".
inline constexpr Clock::time_point kLazyDeadline = Clock::time_point::min();

/// A duration as Clock::duration, clamped to [0, max] (no overflow for hours::max()).
template <class Rep, class Period>
Clock::duration clamp_timeout(std::chrono::duration<Rep, Period> d) noexcept {
  if (d <= d.zero()) return Clock::duration::zero();
  if (d >= std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(Clock::duration::max())) {
    return Clock::duration::max();
  }
  return std::chrono::duration_cast<Clock::duration>(d);
}

/// The deadline itself, or (for kLazyDeadline) now + timeout, saturating at time_point::max().
inline Clock::time_point resolve_deadline(Clock::time_point deadline, Clock::duration timeout,
                                          Clock::time_point now) noexcept {
  if (deadline != kLazyDeadline) return deadline;
  if (timeout >= Clock::time_point::max() - now) return Clock::time_point::max();
  return now + timeout;
}

/// One CPU-friendly pause (x86 `pause`, ARM `yield`).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

/// Asymmetric fences, for the hot side of a store-then-load handshake whose other side is rare
/// (a waiter about to park). light_fence() is a compiler barrier when the kernel offers
/// membarrier(PRIVATE_EXPEDITED); heavy_fence() then makes every running thread of the process
/// execute a full barrier. Together they order "store; light; load" against "store; heavy;
/// load" like two full fences would (the technique of folly's asymmetric barriers). Without
/// membarrier both are full fences.
extern std::atomic<bool> g_membarrier;
inline void light_fence() noexcept {
  if (g_membarrier.load(std::memory_order_relaxed)) {
    std::atomic_signal_fence(std::memory_order_seq_cst);
  } else {
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }
}
void heavy_fence() noexcept;

/// Bounded spinning before a thread parks: a few pauses (cheap when the other side is about to
/// act), then a few yields (lets a preempted peer run on a busy machine), then "park now".
///
/// The yield phase lasts `budget` in all (default 50 µs): parking and being woken costs a
/// system call on each side and, on virtual machines, 50–150 µs of wake-up latency, so a waiter
/// that expects its peer soon does better to stay awake that long. sched_yield gives the CPU
/// to any runnable thread meanwhile, so a spinning waiter does not starve the thread it waits for.
class Backoff {
 public:
  static constexpr std::chrono::nanoseconds kDefaultBudget{50'000};

  Backoff() noexcept = default;
  explicit Backoff(std::chrono::nanoseconds budget) noexcept : budget_ns_(budget.count()) {}

  /// True while the caller should simply retry; false once it is time to park.
  bool spin() noexcept;
  /// A short wait for another thread that is in the middle of an operation (never parks).
  void pause() noexcept;

 private:
  unsigned step_ = 0;
  std::int64_t budget_ns_ = kDefaultBudget.count();
  std::int64_t yield_until_ns_ = 0;  // set when the yield phase starts
};

class WaitQueue {
 public:
  std::uint32_t enter() noexcept {
    waiters_.fetch_add(1, std::memory_order_seq_cst);
    woken_.store(false, std::memory_order_seq_cst);  // a new registrant needs a new wake
    return epoch_.load(std::memory_order_seq_cst);
  }
  void leave() noexcept { waiters_.fetch_sub(1, std::memory_order_relaxed); }

  /// Sleeps until notified after `ticket` was taken, or until `deadline` (Clock::time_point::max()
  /// for none). Returns false if the deadline passed. May return early (spuriously).
  bool park(std::uint32_t ticket, Clock::time_point deadline) noexcept;

  /// Wakes every parked waiter, if any is registered and not already woken: once a wake is
  /// issued, later notifiers skip the system call until some waiter registers again (the
  /// woken ones re-check before they park again). Costs one load when nobody waits.
  void notify_all() noexcept {
    if (waiters_.load(std::memory_order_seq_cst) != 0 && !woken_.load(std::memory_order_seq_cst) &&
        !woken_.exchange(true, std::memory_order_seq_cst)) {
      wake_all();
    }
  }
  /// Wakes every parked waiter unconditionally (close()).
  void wake_all() noexcept;

 private:
  // waiters_ is read by every notifier on every operation; it changes only when a thread
  // parks, so the line stays shared in the notifiers' caches.
  std::atomic<std::uint32_t> waiters_{0};
  std::atomic<std::uint32_t> epoch_{0};  // the futex word: bumped by each wake
  // A wake was issued and nobody registered since: every registered waiter holds an older
  // ticket and will not sleep through it.
  std::atomic<bool> woken_{false};
};

/// One-shot callbacks waiting for a readiness edge. Thread-safe.
class HookList {
 public:
  /// Registers fn; the caller must then re-check readiness and call fire() if ready.
  void add(std::function<void()> fn);
  /// True if any callback is registered (one seq_cst load: the notifier's fast path).
  bool armed() const noexcept { return count_.load(std::memory_order_seq_cst) != 0; }
  /// Runs and removes every registered callback, each exactly once, on the calling thread.
  void fire();

 private:
  std::mutex mu_;
  std::vector<std::function<void()>> fns_;  // guarded by mu_
  std::atomic<std::uint32_t> count_{0};     // fns_.size(), readable without the lock
};

}  // namespace sluice::detail

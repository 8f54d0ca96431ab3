// Sluice — a condition variable over the annotated sluice::Mutex (thread_annotations.hpp).
//
// std::condition_variable waits on a std::unique_lock<std::mutex>, which clang's thread-safety
// analysis cannot see; CondVar waits on the sluice::Mutex the caller holds (through a
// MutexLock), so the analysis sees the lock held before, during and after the wait, and the
// guarded state the caller tests around the wait is checked as usual. There is no predicate
// overload on purpose: a predicate is a lambda, which the analysis checks as a function of its
// own that holds no lock. Callers loop:
//
//   MutexLock lock(mu_);
//   while (!ready_) {
//     if (!cv_.wait_until(mu_, deadline)) break;  // (the deadline passed: ready_ says)
//   }
//
// Blocking: wait() until notified (or spuriously); wait_until() at most until the deadline.
// Thread-safety: as std::condition_variable.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "sluice/detail/thread_annotations.hpp"

namespace sluice {

class CondVar {
 public:
  /// Waits until notified (or a spurious wake-up); `mu` is held again on return.
  void wait(Mutex& mu) SLUICE_REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu.native(), std::adopt_lock);
    cv_.wait(lock);
    (void)lock.release();  // (still held: the caller's MutexLock lets go)
  }
  /// As wait(), at most until `deadline`: false once it has passed.
  template <class Clock, class Duration>
  bool wait_until(Mutex& mu, std::chrono::time_point<Clock, Duration> deadline)
      SLUICE_REQUIRES(mu) {
    std::unique_lock<std::mutex> lock(mu.native(), std::adopt_lock);
    const bool notified = cv_.wait_until(lock, deadline) == std::cv_status::no_timeout;
    (void)lock.release();
    return notified;
  }
  /// As wait(), at most for `timeout`.
  template <class Rep, class Period>
  bool wait_for(Mutex& mu, std::chrono::duration<Rep, Period> timeout) SLUICE_REQUIRES(mu) {
    return wait_until(mu, std::chrono::steady_clock::now() + timeout);
  }
  void notify_one() noexcept { cv_.notify_one(); }
  void notify_all() noexcept { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace sluice

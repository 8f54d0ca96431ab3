// The baseline everyone writes first: a std::deque bounded to `bound` items behind one mutex
// and two condition variables. The peer of benchmarks C1, C2 and B1.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>

namespace sluice::bench {

class MutexDeque {
 public:
  explicit MutexDeque(std::size_t bound) : bound_(bound) {}

  /// Waits for room, then appends.
  void push(std::uint64_t v) {
    std::unique_lock lock(mu_);
    not_full_.wait(lock, [&] { return q_.size() < bound_; });
    q_.push_back(v);
    lock.unlock();
    not_empty_.notify_one();
  }
  /// Waits for an item; false once closed and drained.
  bool pop(std::uint64_t& v) {
    std::unique_lock lock(mu_);
    not_empty_.wait(lock, [&] { return !q_.empty() || closed_; });
    if (q_.empty()) return false;
    v = q_.front();
    q_.pop_front();
    lock.unlock();
    not_full_.notify_one();
    return true;
  }
  void close() {
    {
      std::lock_guard lock(mu_);
      closed_ = true;
    }
    not_empty_.notify_all();
  }

 private:
  const std::size_t bound_;
  std::mutex mu_;
  std::condition_variable not_empty_;
  std::condition_variable not_full_;
  std::deque<std::uint64_t> q_;
  bool closed_ = false;
};

}  // namespace sluice::bench

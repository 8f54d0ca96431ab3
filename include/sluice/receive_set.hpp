// Sluice — ReceiveSet<T>: fair receive across several channels.
//
// A consumer that serves several sources (a camera and its telemetry, many producers' own
// channels) wants one receive call, and wants a flooding source not to starve a quiet one.
// A ReceiveSet holds references to Channel<T>s and receives from them round-robin: each receive
// starts looking at the channel after the one that gave the previous item, so while k channels
// have items, each gets one item in every k receives, whatever their rates.
//
// Contract
// - recv(deadline) answers {index, item} for the first channel in round-robin order that has
//   an item; waits (no polling: each channel's on_readable hook wakes it) until one has, or the
//   deadline passes (timeout), or every channel is closed and drained (closed).
// - try_recv() never waits: would_block when no channel has an item.
// - queue_bytes() is the sum of the channels' queue_bytes(); len() the sum of their len().
// - Loss: none added; every item is received from exactly one channel, as by try_recv on it.
// - Thread-safety: add() before the set is shared. recv/try_recv/queue_bytes/len from any
//   thread; several threads receiving share the round-robin position. The channels must
//   outlive the set; hooks the set registered on them keep only a shared state alive, so
//   destroying the set while a channel still holds one of its hooks is safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

#include "sluice/channel.hpp"
#include "sluice/result.hpp"

namespace sluice {

template <class T>
class ReceiveSet {
 public:
  using Clock = std::chrono::steady_clock;

  struct Received {
    std::size_t index = 0;  // which channel, in add() order
    T item;
  };

  ReceiveSet() = default;
  ReceiveSet(const ReceiveSet&) = delete;
  ReceiveSet& operator=(const ReceiveSet&) = delete;

  /// Adds a channel; returns its index. Not concurrently with receives.
  std::size_t add(Channel<T>& channel) {
    channels_.push_back(&channel);
    wake_->armed.push_back(false);
    return channels_.size() - 1;
  }
  std::size_t size() const noexcept { return channels_.size(); }

  RecvResult<Received> try_recv() { return recv_impl(Clock::time_point{}, false); }
  RecvResult<Received> recv(Clock::time_point deadline) { return recv_impl(deadline, true); }
  template <class Rep, class Period>
  RecvResult<Received> recv_for(std::chrono::duration<Rep, Period> timeout) {
    return recv_impl(Clock::now() + timeout, true);
  }

  std::size_t queue_bytes() const noexcept {
    std::size_t sum = 0;
    for (const auto* c : channels_) sum += c->queue_bytes();
    return sum;
  }
  std::size_t len() const noexcept {
    std::size_t sum = 0;
    for (const auto* c : channels_) sum += c->len();
    return sum;
  }

 private:
  struct Wake {
    std::mutex mu;
    std::condition_variable cv;
    std::uint64_t events = 0;  // readiness signals seen
    std::vector<bool> armed;   // a hook is registered on channel i
  };

  // One pass over the channels, round-robin from next_. ok, would_block or closed.
  RecvResult<Received> sweep() {
    RecvResult<Received> out;
    const std::size_t n = channels_.size();
    std::size_t closed = 0;
    const std::size_t start = next_.load(std::memory_order_relaxed);
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t i = (start + k) % n;
      RecvResult<T> r = channels_[i]->try_recv();
      if (r.ok()) {
        next_.store((i + 1) % n, std::memory_order_relaxed);
        out.status = RecvStatus::ok;
        out.value.emplace(Received{i, std::move(*r.value)});
        return out;
      }
      if (r.status == RecvStatus::closed) ++closed;
    }
    out.status = (n > 0 && closed == n) ? RecvStatus::closed : RecvStatus::would_block;
    return out;
  }

  RecvResult<Received> recv_impl(Clock::time_point deadline, bool may_wait) {
    for (;;) {
      std::uint64_t seen = 0;
      {
        std::lock_guard lock(wake_->mu);
        seen = wake_->events;
      }
      RecvResult<Received> r = sweep();
      if (r.status != RecvStatus::would_block || !may_wait) return r;
      arm();
      std::unique_lock lock(wake_->mu);
      if (!wake_->cv.wait_until(lock, deadline, [&] { return wake_->events != seen; })) {
        lock.unlock();
        r = sweep();  // one last look
        if (r.status == RecvStatus::would_block) r.status = RecvStatus::timeout;
        return r;
      }
    }
  }

  // Registers a readiness hook on every channel that has none pending.
  void arm() {
    for (std::size_t i = 0; i < channels_.size(); ++i) {
      if (channels_[i]->is_closed()) continue;  // drained (sweep found nothing): never again
      {
        std::lock_guard lock(wake_->mu);
        if (wake_->armed[i]) continue;
        wake_->armed[i] = true;
      }
      std::weak_ptr<Wake> weak = wake_;
      channels_[i]->on_readable([weak, i] {
        if (auto w = weak.lock()) {
          std::lock_guard lock(w->mu);
          w->armed[i] = false;
          ++w->events;
          w->cv.notify_all();
        }
      });
    }
  }

  std::vector<Channel<T>*> channels_;
  std::shared_ptr<Wake> wake_ = std::make_shared<Wake>();
  std::atomic<std::size_t> next_{0};
};

}  // namespace sluice

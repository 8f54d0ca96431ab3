// Sluice — PriorityChannel<T>: a bounded channel with four priority classes.
//
// Contract
// - Classes, most important first: control > critical > important > bulk. Each class has its
//   own budget (items and bytes) and the channel an overall one; all are enforced. An item
//   heavier than the overall max_bytes is admitted into an empty channel (the oversized-item
//   rule of Channel), so bytes never exceed max_bytes + one item.
// - Under pressure the channel sheds `bulk` first, oldest first, then `important`, oldest
//   first. An incoming item only ever displaces items of its own class or less important
//   ones; a shed or refused item is counted as dropped{priority_shed} in its class.
// - `critical` and `control` are never dropped: when there is no room for them (their class
//   budget is full, or everything queued is critical/control) their producer waits up to its
//   deadline (config `protected_full = block`, then `timeout`) or is answered `would_block` at
//   once (`reject`). A bounded deque (maxlen) silently evicts critical messages; a test
//   proves this one never does.
// - Receive order: the most important non-empty class first, FIFO within a class, with one
//   anti-starvation rule: a class that has items and was passed over `starvation_limit`
//   times in a row (default 8) is served next; when several reach the limit together they are
//   served in consecutive receives, the most important first. So a class present is served at
//   least once every starvation_limit + 1 + k receives, whatever arrives above it, where k is
//   the number of classes more important than it that can starve (control never does: it is
//   passed over only for starving classes, at most three in a row): starvation_limit + 1 for
//   critical, + 2 for important, + 3 for bulk.
// - Outcomes, close(), readiness hooks and stats as Channel's (per class here). Waiting parks
//   on condition variables: no polling.
// - Thread-safety: any member from any thread. One mutex guards the queues: a priority
//   channel is for control-plane and mixed traffic, not for 20 M msg/s (see the benchmark).
#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "sluice/channel.hpp"  // kUnlimitedBytes, SendResult, RecvResult, HookList
#include "sluice/drop_reason.hpp"
#include "sluice/size_bytes.hpp"

namespace sluice {

enum class Priority : std::uint8_t { control = 0, critical = 1, important = 2, bulk = 3 };
inline constexpr std::size_t kPriorityCount = 4;
std::string_view to_string(Priority p) noexcept;
std::optional<Priority> parse_priority(std::string_view text) noexcept;
/// critical and control are never dropped.
constexpr bool is_protected(Priority p) noexcept {
  return p <= Priority::critical;
}

struct ClassBudget {
  std::size_t max_items = 1024;
  std::size_t max_bytes = kUnlimitedBytes;
};

struct PriorityChannelConfig {
  std::string name = "priority";
  /// Per class, indexed by Priority (control, critical, important, bulk).
  std::array<ClassBudget, kPriorityCount> classes{};
  std::size_t max_items = 4096;                   // overall
  std::size_t max_bytes = std::size_t{64} << 20;  // overall, 64 MiB
  /// What a protected (critical/control) send does when there is no room.
  enum class ProtectedFull : std::uint8_t { block, reject };
  ProtectedFull protected_full = ProtectedFull::block;
  /// How long a protected send() without a deadline waits (block).
  std::chrono::nanoseconds max_wait = std::chrono::seconds(5);
  /// A class with items is served after being passed over this many times in a row (≥ 1).
  std::size_t starvation_limit = 8;

  ClassBudget& operator[](Priority p) { return classes[static_cast<std::size_t>(p)]; }
  /// Throws std::invalid_argument naming the channel, the setting, the value and the range.
  void validate() const;
};

struct PriorityClassStats {
  Priority priority = Priority::bulk;
  std::uint64_t len = 0;
  std::uint64_t queue_bytes = 0;
  std::uint64_t sent = 0;  // entered, or refused as dropped
  std::uint64_t received = 0;
  DropCounts dropped;          // priority_shed (bulk and important only)
  std::uint64_t rejected = 0;  // would_block answers
  std::uint64_t timeouts = 0;
};

struct PriorityChannelStats {
  std::string name;
  bool closed = false;
  std::uint64_t len = 0;
  std::uint64_t queue_bytes = 0;
  std::uint64_t max_queue_bytes_seen = 0;
  std::uint64_t starvation_serves = 0;  // receives that served a passed-over class
  std::array<PriorityClassStats, kPriorityCount> classes{};
  const PriorityClassStats& operator[](Priority p) const {
    return classes[static_cast<std::size_t>(p)];
  }
};

/// A received item and its class.
template <class T>
struct Prioritized {
  Priority priority = Priority::bulk;
  T item;
};

namespace detail {
std::string priority_timeout_message(const std::string& name, Priority p, std::uint64_t len,
                                     std::uint64_t bytes, const ClassBudget& budget,
                                     std::size_t max_items, std::size_t max_bytes,
                                     std::chrono::nanoseconds waited);
}  // namespace detail

template <class T>
class PriorityChannel {
 public:
  using Clock = std::chrono::steady_clock;

  explicit PriorityChannel(PriorityChannelConfig config)
      : config_((config.validate(), std::move(config))) {}
  PriorityChannel(const PriorityChannel&) = delete;
  PriorityChannel& operator=(const PriorityChannel&) = delete;
  PriorityChannel(PriorityChannel&&) = delete;
  PriorityChannel& operator=(PriorityChannel&&) = delete;
  ~PriorityChannel() = default;

  /// Sends `item` in class `p`; a protected class may wait up to config().max_wait.
  SendResult send(Priority p, T&& item) {
    return send_impl(p, item, detail::kLazyDeadline, config_.max_wait, true);
  }
  SendResult send(Priority p, T&& item, Clock::time_point deadline) {
    return send_impl(p, item, deadline, {}, true);
  }
  /// Copies `item`, then sends the copy.
  SendResult send(Priority p, const T& item) {
    T copy(item);
    return send(p, std::move(copy));
  }
  /// Never waits: a protected class with no room answers would_block.
  SendResult try_send(Priority p, T&& item) { return send_impl(p, item, {}, {}, false); }

  RecvResult<Prioritized<T>> recv() { return recv_impl(Clock::time_point::max(), {}, true); }
  RecvResult<Prioritized<T>> recv(Clock::time_point deadline) {
    return recv_impl(deadline, {}, true);
  }
  template <class Rep, class Period>
  RecvResult<Prioritized<T>> recv_for(std::chrono::duration<Rep, Period> timeout) {
    return recv_impl(detail::kLazyDeadline, detail::clamp_timeout(timeout), true);
  }
  RecvResult<Prioritized<T>> try_recv() { return recv_impl({}, {}, false); }

  /// Senders see closed at once; receivers drain, then see closed.
  void close();
  bool is_closed() const {
    std::lock_guard lock(mu_);
    return closed_;
  }
  /// One-shot hooks, as Channel's: readable when an item can be received (or closed);
  /// writable when a protected send would not wait (or closed).
  void on_readable(std::function<void()> fn);
  void on_writable(std::function<void()> fn);

  PriorityChannelStats stats() const;
  const PriorityChannelConfig& config() const noexcept { return config_; }

 private:
  struct Entry {
    T item;
    std::uint64_t bytes;
  };
  struct Class {
    std::deque<Entry> q;
    std::uint64_t bytes = 0;
    std::size_t passed_over = 0;
    PriorityClassStats stats;
  };

  static std::uint64_t weigh(const T& item) {
    if constexpr (Sized<T>) {
      return size_bytes(item);
    } else {
      return 0;
    }
  }
  Class& cls(Priority p) { return classes_[static_cast<std::size_t>(p)]; }
  bool class_fits(Priority p, std::uint64_t size) {
    const Class& c = cls(p);
    const ClassBudget& b = config_.classes[static_cast<std::size_t>(p)];
    if (c.q.size() >= b.max_items) return false;
    return c.bytes + size <= b.max_bytes || c.bytes == 0;
  }
  bool overall_fits(std::uint64_t size) const {
    if (len_ >= config_.max_items) return false;
    return bytes_ + size <= config_.max_bytes || bytes_ == 0;
  }
  // Drops the oldest item of class `victim` as priority_shed.
  void shed_oldest(Priority victim) {
    Class& c = cls(victim);
    c.bytes -= c.q.front().bytes;
    bytes_ -= c.q.front().bytes;
    c.q.pop_front();
    --len_;
    ++c.stats.dropped[DropReason::priority_shed];
  }
  bool room_for_protected() const {
    for (std::size_t i = 0; i < 2; ++i) {
      const auto& b = config_.classes[i];
      if (classes_[i].q.size() >= b.max_items) return false;
    }
    // Overall room, or something sheddable queued.
    return len_ < config_.max_items || !classes_[2].q.empty() || !classes_[3].q.empty();
  }
  // Deadlines as in Channel: detail::kLazyDeadline + timeout is resolved when first waiting.
  SendResult send_impl(Priority p, T& item, Clock::time_point deadline, Clock::duration timeout,
                       bool may_wait);
  RecvResult<Prioritized<T>> recv_impl(Clock::time_point deadline, Clock::duration timeout,
                                       bool may_wait);
  std::optional<Priority> pick();

  const PriorityChannelConfig config_;
  mutable std::mutex mu_;
  std::condition_variable not_empty_;
  std::condition_variable room_;
  std::array<Class, kPriorityCount> classes_{};
  std::uint64_t len_ = 0;
  std::uint64_t bytes_ = 0;
  std::uint64_t hwm_ = 0;
  std::uint64_t starvation_serves_ = 0;
  bool closed_ = false;
  detail::HookList readable_hooks_;
  detail::HookList writable_hooks_;
};

// ------------------------------------------------------------------------------------------
// Implementation

template <class T>
SendResult PriorityChannel<T>::send_impl(Priority p, T& item, Clock::time_point deadline,
                                         Clock::duration timeout, bool may_wait) {
  const std::uint64_t size = weigh(item);
  const auto pi = static_cast<std::size_t>(p);
  std::unique_lock lock(mu_);
  Class& c = cls(p);
  Clock::time_point started{};  // set when the send first has to wait
  std::uint32_t evicted = 0;
  for (;;) {
    if (closed_) {
      return {SendStatus::closed, DropReason::overflow, evicted,
              "priority channel '" + config_.name + "' is closed"};
    }
    // Own class full: a sheddable class makes room by dropping its own oldest. (A full class is
    // never empty: class_fits admits any item into an empty class, the oversized-item rule.)
    if (!class_fits(p, size)) {
      if (!is_protected(p)) {
        shed_oldest(p);
        ++evicted;
        continue;
      }
    } else if (!overall_fits(size)) {
      // Overall full: shed bulk, then important, never a class more important than p.
      if (p != Priority::bulk && !cls(Priority::bulk).q.empty()) {
        shed_oldest(Priority::bulk);
        ++evicted;
        continue;
      }
      if (p == Priority::bulk && !c.q.empty()) {
        shed_oldest(Priority::bulk);
        ++evicted;
        continue;
      }
      if (p <= Priority::important && !cls(Priority::important).q.empty()) {
        shed_oldest(Priority::important);
        ++evicted;
        continue;
      }
      if (!is_protected(p)) {  // nothing less important to displace: refuse the newcomer
        ++c.stats.sent;
        ++c.stats.dropped[DropReason::priority_shed];
        return {SendStatus::dropped, DropReason::priority_shed, evicted, {}};
      }
    } else {
      break;  // fits
    }
    // A protected item with no room: wait or answer, never drop.
    if (!may_wait || config_.protected_full == PriorityChannelConfig::ProtectedFull::reject) {
      ++c.stats.rejected;
      return {SendStatus::would_block, DropReason::overflow, evicted, {}};
    }
    if (started == Clock::time_point{}) {
      started = Clock::now();
      deadline = detail::resolve_deadline(deadline, timeout, started);
    }
    if (room_.wait_until(lock, deadline) == std::cv_status::timeout && Clock::now() >= deadline) {
      ++c.stats.timeouts;
      return {SendStatus::timeout, DropReason::overflow, evicted,
              detail::priority_timeout_message(
                  config_.name, p, c.q.size(), c.bytes, config_.classes[pi], config_.max_items,
                  config_.max_bytes,
                  std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - started))};
    }
  }
  c.q.push_back(Entry{std::move(item), size});
  c.bytes += size;
  bytes_ += size;
  ++len_;
  ++c.stats.sent;
  hwm_ = std::max(hwm_, bytes_);
  const bool hooks = readable_hooks_.armed();
  lock.unlock();
  not_empty_.notify_one();
  if (hooks) readable_hooks_.fire();
  return {SendStatus::ok, DropReason::overflow, evicted, {}};
}

// The class to serve next. Caller holds mu_ and len_ > 0.
template <class T>
std::optional<Priority> PriorityChannel<T>::pick() {
  // A passed-over class that reached the limit goes first (the most important such class).
  for (std::size_t i = 0; i < kPriorityCount; ++i) {
    if (!classes_[i].q.empty() && classes_[i].passed_over >= config_.starvation_limit) {
      ++starvation_serves_;
      return static_cast<Priority>(i);
    }
  }
  for (std::size_t i = 0; i < kPriorityCount; ++i) {
    if (!classes_[i].q.empty()) return static_cast<Priority>(i);
  }
  return std::nullopt;
}

template <class T>
RecvResult<Prioritized<T>> PriorityChannel<T>::recv_impl(Clock::time_point deadline,
                                                         Clock::duration timeout, bool may_wait) {
  RecvResult<Prioritized<T>> r;
  std::unique_lock lock(mu_);
  while (len_ == 0) {
    if (closed_) {
      r.status = RecvStatus::closed;
      return r;
    }
    if (!may_wait) {
      r.status = RecvStatus::would_block;
      return r;
    }
    deadline = detail::resolve_deadline(deadline, timeout, Clock::now());
    if (not_empty_.wait_until(lock, deadline) == std::cv_status::timeout && len_ == 0 &&
        Clock::now() >= deadline) {
      r.status = RecvStatus::timeout;
      return r;
    }
  }
  const Priority p = *pick();
  const auto pi = static_cast<std::size_t>(p);
  for (std::size_t i = 0; i < kPriorityCount; ++i) {
    if (i == pi) {
      classes_[i].passed_over = 0;
    } else if (!classes_[i].q.empty()) {
      ++classes_[i].passed_over;
    }
  }
  Class& c = classes_[pi];
  r.value.emplace(Prioritized<T>{p, std::move(c.q.front().item)});
  c.bytes -= c.q.front().bytes;
  bytes_ -= c.q.front().bytes;
  c.q.pop_front();
  --len_;
  ++c.stats.received;
  r.status = RecvStatus::ok;
  const bool hooks = writable_hooks_.armed();
  lock.unlock();
  room_.notify_all();  // protected senders wait on different budgets: wake them all
  if (hooks) writable_hooks_.fire();
  return r;
}

template <class T>
void PriorityChannel<T>::close() {
  {
    std::lock_guard lock(mu_);
    closed_ = true;
  }
  not_empty_.notify_all();
  room_.notify_all();
  readable_hooks_.fire();
  writable_hooks_.fire();
}

template <class T>
void PriorityChannel<T>::on_readable(std::function<void()> fn) {
  readable_hooks_.add(std::move(fn));
  bool ready = false;
  {
    std::lock_guard lock(mu_);
    ready = len_ > 0 || closed_;
  }
  if (ready) readable_hooks_.fire();
}

template <class T>
void PriorityChannel<T>::on_writable(std::function<void()> fn) {
  writable_hooks_.add(std::move(fn));
  bool ready = false;
  {
    std::lock_guard lock(mu_);
    ready = closed_ || room_for_protected();
  }
  if (ready) writable_hooks_.fire();
}

template <class T>
PriorityChannelStats PriorityChannel<T>::stats() const {
  std::lock_guard lock(mu_);
  PriorityChannelStats s;
  s.name = config_.name;
  s.closed = closed_;
  s.len = len_;
  s.queue_bytes = bytes_;
  s.max_queue_bytes_seen = hwm_;
  s.starvation_serves = starvation_serves_;
  for (std::size_t i = 0; i < kPriorityCount; ++i) {
    s.classes[i] = classes_[i].stats;
    s.classes[i].priority = static_cast<Priority>(i);
    s.classes[i].len = classes_[i].q.size();
    s.classes[i].queue_bytes = classes_[i].bytes;
  }
  return s;
}

}  // namespace sluice

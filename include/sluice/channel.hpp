// Sluice — Channel<T>: a bounded multi-producer multi-consumer queue with a declared overflow
// policy and built-in accounting.
//
// Contract
// - Bounded twice: at most `max_items` items and at most `max_bytes` bytes (as weighed by
//   sluice::size_bytes) are queued at any instant. The only exception is the oversized-item
//   rule: an item heavier than `max_bytes` is admitted into a channel holding no bytes at all
//   (so one big frame can always get through), unless `max_item_bytes` is set and the item is
//   heavier than that, in which case it is refused as dropped{too_large}. Hence queue bytes
//   never exceed max_bytes + one item.
// - When full, the channel applies its OverflowPolicy:
//     block        send() waits for room until its deadline, then answers `timeout` (the
//                  resource-exhausted case) with a message naming the channel, what is queued,
//                  the limits and the settings to change; try_send() answers `would_block`.
//     drop_oldest  the oldest queued item is dropped (counted dropped{overflow}) and the new
//                  one enters; send never waits and never fails for lack of room.
//     drop_newest  the new item is refused and counted dropped{overflow}.
//     reject       send and try_send answer `would_block` at once; the caller keeps the item
//                  (counted as `rejected`, which is not a loss).
// - Ordering: FIFO per the order in which producers claim slots. Items from one producer are
//   received in the order it sent them (with several consumers, each item goes to exactly one
//   consumer; which one is unspecified).
// - No silent loss: every item is received, or dropped and counted with a reason, or still
//   queued. At quiescence, stats() satisfies sent == received + dropped.total() + len.
// - close(): senders see `closed` at once; receivers drain what is queued, then see `closed`.
//   Items still queued when the Channel is destroyed are destroyed with it.
// - Blocking: send(), recv() and their *_for/deadline forms may block the calling thread; they
//   spin briefly, then park on a futex and are woken when room frees or an item arrives (no
//   sleep-and-poll loop). try_send(), try_recv(), close(), stats() never park. (They may spin
//   for the few instructions another thread needs to finish writing or reading a slot it has
//   already claimed.)
// - Event loops: on_readable() / on_writable() register one-shot callbacks fired when an item
//   is available (or the channel closed) and when there is room (or the channel closed), so one
//   thread can wait on many channels. See docs/channel.md and examples/channel_event_loop.cpp.
// - Thread-safety: every member function may be called from any thread concurrently, except the
//   constructor and destructor. The Channel is neither copyable nor movable (threads hold its
//   address); share it by reference or std::shared_ptr.
//
// Cost: a send/receive pair is a handful of atomic operations on three cache lines (producer
// positions, consumer positions, the slot). Byte accounting adds one CAS on the producers' line
// and one add on the consumers' line. Latency is sampled (see LatencySampling), so a busy
// channel does not read the clock for every item.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "sluice/detail/wait.hpp"
#include "sluice/drop_reason.hpp"
#include "sluice/histogram.hpp"
#include "sluice/latency.hpp"
#include "sluice/result.hpp"
#include "sluice/size_bytes.hpp"

namespace sluice {

/// What a full stream does with the next item. See the table in docs/channel.md.
enum class OverflowPolicy : std::uint8_t { block, drop_oldest, drop_newest, reject };

std::string_view to_string(OverflowPolicy policy) noexcept;
/// "block", "drop_oldest", "drop_newest", "reject"; nullopt otherwise.
std::optional<OverflowPolicy> parse_overflow_policy(std::string_view text) noexcept;

/// "No limit" for max_bytes.
inline constexpr std::size_t kUnlimitedBytes = std::numeric_limits<std::size_t>::max();

/// The settings of one Channel. validate() (called by the constructor) throws
/// std::invalid_argument naming the setting, the value and the accepted range.
struct ChannelConfig {
  /// Names the channel in stats, messages and metrics.
  std::string name = "channel";
  /// Item budget, 1 … 2^32. The ring holds exactly this many slots.
  std::size_t max_items = 1024;
  /// Byte budget (sum of size_bytes of queued items), ≥ 1, or kUnlimitedBytes.
  std::size_t max_bytes = std::size_t{64} << 20;
  /// If non-zero, an item heavier than this is refused as dropped{too_large}.
  std::size_t max_item_bytes = 0;
  OverflowPolicy policy = OverflowPolicy::block;
  /// How long send() without an explicit deadline waits under `block` (≥ 0).
  std::chrono::nanoseconds max_wait = std::chrono::seconds(5);
  /// Weigh items and enforce max_bytes. Turning it off requires max_bytes = kUnlimitedBytes and
  /// max_item_bytes = 0; queue_bytes then reads 0. Required off for types without size_bytes.
  bool account_bytes = true;
  LatencySampling latency = LatencySampling::adaptive;

  void validate() const;
};

/// A snapshot of a channel's state and counters. Taken while producers and consumers run, each
/// field is read atomically but the fields are not read at one instant; at quiescence they are
/// exact and add up: sent == received + dropped.total() + len.
struct ChannelStats {
  std::string name;
  OverflowPolicy policy = OverflowPolicy::block;
  std::size_t max_items = 0;
  std::size_t max_bytes = 0;
  bool closed = false;

  std::uint64_t len = 0;                   // items queued now
  std::uint64_t queue_bytes = 0;           // bytes queued now (0 if account_bytes is off)
  std::uint64_t max_queue_bytes_seen = 0;  // high-water mark of queue_bytes: never above the
                                           // true peak, and within 1/8 below it
  std::uint64_t sent = 0;        // items handed over: entered the queue, or refused as dropped
  std::uint64_t received = 0;    // items taken by receivers
  DropCounts dropped;            // items lost, by reason
  std::uint64_t rejected = 0;    // would_block answers (the caller kept the item; not a loss)
  std::uint64_t timeouts = 0;    // sends that gave up at their deadline (caller kept the item)
  double blocked_seconds = 0;    // total time senders spent parked waiting for room (the
                                 // first few microseconds of spinning are not counted)
  HistogramSnapshot latency_ns;  // send→receive latency of sampled items, nanoseconds
};

namespace detail {
std::string channel_timeout_message(const ChannelStats& s, std::uint64_t item_bytes,
                                    std::chrono::nanoseconds waited);
std::string channel_closed_message(std::string_view name);
std::string channel_too_large_message(std::string_view name, std::uint64_t item_bytes,
                                      std::size_t max_item_bytes);
}  // namespace detail

template <class T>
class Channel {
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "Channel<T> requires a nothrow move constructor: items are moved in and out "
                "of slots inside operations that must not fail halfway");
  static_assert(std::is_nothrow_destructible_v<T>, "Channel<T> requires a nothrow destructor");

 public:
  using value_type = T;
  using Clock = std::chrono::steady_clock;

  /// Throws std::invalid_argument if the configuration is invalid (see ChannelConfig).
  explicit Channel(ChannelConfig config);
  /// Destroys the items still queued. No other thread may be using the channel.
  ~Channel();

  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  Channel(Channel&&) = delete;
  Channel& operator=(Channel&&) = delete;

  /// Sends under the channel's policy, waiting (block policy only) up to config().max_wait.
  SendResult send(T&& item) {
    return send_impl(item, kLazyDeadline, config_.max_wait, /*may_wait=*/true);
  }
  /// Sends, waiting (block policy only) until `deadline` at the latest.
  SendResult send(T&& item, Clock::time_point deadline) {
    return send_impl(item, deadline, {}, /*may_wait=*/true);
  }
  /// Copies `item`, then sends the copy.
  SendResult send(const T& item) {
    T copy(item);
    return send(std::move(copy));
  }
  template <class Rep, class Period>
  SendResult send_for(T&& item, std::chrono::duration<Rep, Period> timeout) {
    return send_impl(item, kLazyDeadline, clamp(timeout), /*may_wait=*/true);
  }
  /// Never waits: under `block` and `reject`, a full channel answers would_block.
  SendResult try_send(T&& item) { return send_impl(item, kLazyDeadline, {}, false); }
  SendResult try_send(const T& item) {
    T copy(item);
    return try_send(std::move(copy));
  }

  /// Receives the oldest item, waiting without limit; answers closed once closed and drained.
  RecvResult<T> recv() { return recv_impl(Clock::time_point::max(), {}, true); }
  /// Receives, waiting until `deadline` at the latest (then answers timeout).
  RecvResult<T> recv(Clock::time_point deadline) { return recv_impl(deadline, {}, true); }
  template <class Rep, class Period>
  RecvResult<T> recv_for(std::chrono::duration<Rep, Period> timeout) {
    return recv_impl(kLazyDeadline, clamp(timeout), true);
  }
  /// Never waits: answers would_block when nothing is queued.
  RecvResult<T> try_recv() { return recv_impl(kLazyDeadline, {}, false); }

  /// Closes the channel (idempotent) and wakes every waiter and hook.
  void close();
  bool is_closed() const noexcept {
    return (enq_pos_.load(std::memory_order_acquire) & kClosedBit) != 0;
  }

  /// Registers a one-shot callback run once an item can be received or the channel is closed:
  /// at once on this thread if that is already so, otherwise on the thread whose send (or
  /// close) made it so. Keep it short and non-blocking (e.g. post to an executor); it must not
  /// call on_readable itself synchronously. Spurious calls are possible (another consumer may
  /// take the item first): the callback should try_recv() and re-arm.
  void on_readable(std::function<void()> fn);
  /// Registers a one-shot callback run once the channel is below both budgets, or closed:
  /// at once if so, otherwise on the thread whose receive (or close) made it so. Same rules.
  void on_writable(std::function<void()> fn);

  /// Items queued now, including items whose send is in progress: exact at some instant
  /// during the call (under extreme contention, a lower bound; see occupancy()).
  std::size_t len() const noexcept {
    return static_cast<std::size_t>(occupancy(enq_pos_, deq_pos_, kClosedBit));
  }
  /// Bytes queued now, including bytes reserved by sends in progress (0 if not accounting).
  /// Exact at some instant during the call, so it never exceeds max_bytes + one item.
  std::size_t queue_bytes() const noexcept {
    return static_cast<std::size_t>(occupancy(enq_bytes_, deq_bytes_, 0));
  }

  ChannelStats stats() const;
  const ChannelConfig& config() const noexcept { return config_; }

 private:
  static constexpr std::uint64_t kClosedBit = std::uint64_t{1} << 63;  // positions stay < 2^62
  static constexpr std::size_t kLine = 64;  // cache line: keeps producer/consumer state apart

  // One slot of the ring (D. Vyukov's bounded MPMC queue, with the turn doubled so that a
  // one-slot ring works). `seq` tells whose turn it is:
  // seq == 2·pos      free for the producer that claims position pos
  // seq == 2·pos + 1  holds the item of position pos, for the consumer that claims pos
  // The consumer of pos sets seq = 2·(pos + capacity), freeing the slot for the next lap.
  // (Vyukov's original pos / pos + 1 makes "full at p" and "free for p + 1" the same value
  // when the capacity is 1.)
  struct Cell {  // NOLINT(cppcoreguidelines-pro-type-member-init): storage is raw, T built in place
    std::atomic<std::uint64_t> seq;
    std::uint64_t bytes = 0;    // size_bytes of the item (0 when not accounting)
    std::int64_t stamp_ns = 0;  // send time if sampled for latency, else 0
    alignas(T) unsigned char storage[sizeof(T)];
  };

  enum class Attempt : std::uint8_t { ok, full, closed };
  enum class Take : std::uint8_t { ok, empty, closed };

  static constexpr Clock::time_point kLazyDeadline = detail::kLazyDeadline;
  template <class Rep, class Period>
  static Clock::duration clamp(std::chrono::duration<Rep, Period> d) noexcept {
    return detail::clamp_timeout(d);
  }

  // enq - deq as it was at one instant: read deq, enq, deq again; if deq did not move, the
  // pair is a snapshot of the instant enq was read (both counters only grow). If deq keeps
  // moving for 64 tries, answers enq-then-deq, which is a lower bound of the occupancy at the
  // instant enq was read; never an over-estimate, so a reading above the budget is real.
  static std::uint64_t occupancy(const std::atomic<std::uint64_t>& enq_counter,
                                 const std::atomic<std::uint64_t>& deq_counter,
                                 std::uint64_t mask) noexcept {
    std::uint64_t deq = deq_counter.load(std::memory_order_seq_cst);
    for (int attempt = 0; attempt < 64; ++attempt) {
      const std::uint64_t enq = enq_counter.load(std::memory_order_seq_cst) & ~mask;
      const std::uint64_t again = deq_counter.load(std::memory_order_seq_cst);
      if (again == deq) return enq >= deq ? enq - deq : 0;
      deq = again;
    }
    const std::uint64_t enq = enq_counter.load(std::memory_order_seq_cst) & ~mask;
    deq = deq_counter.load(std::memory_order_seq_cst);
    return enq >= deq ? enq - deq : 0;
  }

  Cell& cell_at(std::uint64_t pos) const noexcept {
    return cells_[pow2_ ? (pos & (capacity_ - 1)) : (pos % capacity_)];
  }
  static std::uint64_t weigh(const T& item) noexcept {
    if constexpr (Sized<T>) {
      return size_bytes(item);
    } else {
      return 0;
    }
  }

  SendResult send_impl(T& item, Clock::time_point deadline, Clock::duration timeout, bool may_wait);
  RecvResult<T> recv_impl(Clock::time_point deadline, Clock::duration timeout, bool may_wait);
  bool reserve_bytes(std::uint64_t size, std::uint64_t& after) noexcept;
  Attempt try_enqueue(T& item, std::uint64_t size) noexcept;
  Take try_dequeue(std::optional<T>& out, bool evicting) noexcept;
  bool await_room(detail::Backoff& backoff) const noexcept;
  bool await_item(detail::Backoff& backoff) const noexcept;
  bool readable_now() const noexcept;
  bool writable_now() const noexcept;
  void count_refused(DropReason reason) noexcept {
    dropped_[static_cast<std::size_t>(reason)].fetch_add(1, std::memory_order_relaxed);
    refused_.fetch_add(1, std::memory_order_relaxed);
  }
  SendResult timeout_result(std::uint64_t size, Clock::time_point since);

  // ---- read-mostly: set at construction, read by everyone ----
  const ChannelConfig config_;
  const std::uint64_t capacity_;  // == max_items
  const bool pow2_;               // capacity_ is a power of two: index by mask
  const std::uint64_t max_bytes_;
  const bool account_;
  std::unique_ptr<Cell[]> cells_;

  // ---- producers' line ----
  // enq_pos_: next position to claim; its top bit is the closed flag, so close() and a claim
  // are ordered by one atomic word (no item can slip in after close).
  alignas(kLine) std::atomic<std::uint64_t> enq_pos_{0};
  // Total bytes ever reserved by producers (monotonic). queue bytes = enq_bytes_ - deq_bytes_.
  std::atomic<std::uint64_t> enq_bytes_{0};
  // A producer-side copy of deq_bytes_ (≤ the real value): the budget check reads the
  // consumers' line only when this conservative estimate says the channel may be full, or the
  // occupancy may exceed the high-water mark.
  std::atomic<std::uint64_t> deq_bytes_cache_{0};

  // ---- consumers' line ----
  alignas(kLine) std::atomic<std::uint64_t> deq_pos_{0};  // next position to take
  std::atomic<std::uint64_t> deq_bytes_{0};               // total bytes ever released by consumers

  // ---- shared, rarely written ----
  alignas(kLine) std::atomic<std::uint64_t> hwm_bytes_{0};  // max_queue_bytes_seen
  detail::WaitQueue not_empty_;                             // receivers parked on an empty channel
  detail::WaitQueue not_full_;  // senders parked on a full channel (block policy)

  // ---- rare-path counters ----
  alignas(kLine) std::atomic<std::uint64_t> dropped_[kDropReasonCount] = {};
  std::atomic<std::uint64_t> refused_{0};  // drops of items that never entered the queue
  std::atomic<std::uint64_t> evicted_{0};  // drops of queued items (drop_oldest)
  std::atomic<std::uint64_t> rejected_{0};
  std::atomic<std::uint64_t> timeouts_{0};
  std::atomic<std::uint64_t> blocked_ns_{0};
  detail::LatencySampler latency_{config_.latency};
  detail::HookList readable_hooks_;
  detail::HookList writable_hooks_;
};

// ------------------------------------------------------------------------------------------
// Implementation

template <class T>
Channel<T>::Channel(ChannelConfig config)
    : config_((config.validate(), std::move(config))),
      capacity_(config_.max_items),
      pow2_((capacity_ & (capacity_ - 1)) == 0),
      max_bytes_(config_.max_bytes),
      account_(config_.account_bytes),
      cells_(new Cell[config_.max_items]) {
  if constexpr (!Sized<T>) {
    if (account_) {
      throw std::invalid_argument(
          "channel '" + config_.name +
          "': account_bytes must be false for an item type without sluice::size_bytes");
    }
  }
  for (std::uint64_t i = 0; i < capacity_; ++i) {
    cells_[i].seq.store(2 * i, std::memory_order_relaxed);
  }
}

template <class T>
Channel<T>::~Channel() {
  const std::uint64_t enq = enq_pos_.load(std::memory_order_acquire) & ~kClosedBit;
  for (std::uint64_t pos = deq_pos_.load(std::memory_order_acquire); pos < enq; ++pos) {
    Cell& c = cell_at(pos);
    if (c.seq.load(std::memory_order_acquire) == 2 * pos + 1) {
      std::launder(reinterpret_cast<T*>(c.storage))->~T();
    }
  }
}

template <class T>
bool Channel<T>::reserve_bytes(std::uint64_t size, std::uint64_t& after) noexcept {
  std::uint64_t enq = enq_bytes_.load(std::memory_order_relaxed);
  for (;;) {
    std::uint64_t deq = deq_bytes_cache_.load(std::memory_order_relaxed);
    if (deq > enq) {  // our copy of enq_bytes_ is older than the cache: refresh it
      enq = enq_bytes_.load(std::memory_order_relaxed);
      continue;
    }
    after = enq + size - deq;  // ≥ the true occupancy after this send
    bool exact = false;
    const std::uint64_t hwm = hwm_bytes_.load(std::memory_order_relaxed);
    if (after > max_bytes_ || after > hwm + hwm / 8) {
      // Possibly full, or possibly a new high-water mark: read the consumers' real figure.
      // (The 1/8 slack keeps a channel that sits at its mark from reading the consumers'
      // cache line on every send; the mark is then within 1/8 of the true peak.)
      // seq_cst pairs with the consumers' seq_cst add (see WaitQueue's protocol).
      deq = deq_bytes_.load(std::memory_order_seq_cst);
      deq_bytes_cache_.store(deq, std::memory_order_relaxed);
      if (deq > enq) {
        enq = enq_bytes_.load(std::memory_order_relaxed);
        continue;
      }
      after = enq + size - deq;
      exact = true;
      // Over budget, unless the channel holds no bytes at all (the oversized-item rule).
      if (after > max_bytes_ && enq != deq) return false;
    }
    if (enq_bytes_.compare_exchange_weak(enq, enq + size, std::memory_order_seq_cst,
                                         std::memory_order_relaxed)) {
      if (!exact) after = 0;  // only a figure read from the consumers may raise the mark
      return true;
    }
  }
}

template <class T>
typename Channel<T>::Attempt Channel<T>::try_enqueue(T& item, std::uint64_t size) noexcept {
  std::uint64_t pos = enq_pos_.load(std::memory_order_relaxed);
  if (pos & kClosedBit) return Attempt::closed;
  std::uint64_t after = 0;
  if (account_) {
    // Full of items (the slot still holds last lap's item, which nobody is taking)? Then say so
    // before touching the byte counters: a producer that keeps finding the channel full must
    // not keep writing them.
    const auto dif =
        static_cast<std::int64_t>(cell_at(pos).seq.load(std::memory_order_acquire) - 2 * pos);
    if (dif < 0 && deq_pos_.load(std::memory_order_seq_cst) <= pos - capacity_) {
      return Attempt::full;
    }
    if (!reserve_bytes(size, after)) return Attempt::full;
  }

  detail::Backoff backoff;
  Cell* cell = nullptr;
  for (;;) {
    if (pos & kClosedBit) {
      if (account_) enq_bytes_.fetch_sub(size, std::memory_order_relaxed);
      return Attempt::closed;
    }
    cell = &cell_at(pos);
    const std::uint64_t seq = cell->seq.load(std::memory_order_acquire);
    const auto dif = static_cast<std::int64_t>(seq - 2 * pos);
    if (dif == 0) {
      // seq_cst: a receiver that registers to park and then reads enq_pos_ sees this claim.
      if (enq_pos_.compare_exchange_weak(pos, pos + 1, std::memory_order_seq_cst,
                                         std::memory_order_relaxed)) {
        break;
      }
    } else if (dif < 0) {
      // The slot still holds the item from one lap ago. If a consumer has claimed it, the
      // slot frees in a few instructions: wait for that rather than report a false "full".
      if (deq_pos_.load(std::memory_order_seq_cst) > pos - capacity_) {
        backoff.pause();
        pos = enq_pos_.load(std::memory_order_relaxed);
        continue;
      }
      if (account_) enq_bytes_.fetch_sub(size, std::memory_order_relaxed);
      return Attempt::full;
    } else {
      pos = enq_pos_.load(std::memory_order_relaxed);
    }
  }

  ::new (static_cast<void*>(cell->storage)) T(std::move(item));
  cell->bytes = size;
  cell->stamp_ns = latency_.stamp(pos);
  cell->seq.store(2 * pos + 1, std::memory_order_release);

  if (account_) {
    std::uint64_t seen = hwm_bytes_.load(std::memory_order_relaxed);
    while (after > seen &&
           !hwm_bytes_.compare_exchange_weak(seen, after, std::memory_order_relaxed)) {
    }
  }
  not_empty_.notify_all();
  if (readable_hooks_.armed()) readable_hooks_.fire();
  return Attempt::ok;
}

template <class T>
typename Channel<T>::Take Channel<T>::try_dequeue(std::optional<T>& out, bool evicting) noexcept {
  detail::Backoff backoff;
  std::uint64_t pos = deq_pos_.load(std::memory_order_relaxed);
  Cell* cell = nullptr;
  for (;;) {
    cell = &cell_at(pos);
    const std::uint64_t seq = cell->seq.load(std::memory_order_acquire);
    const auto dif = static_cast<std::int64_t>(seq - (2 * pos + 1));
    if (dif == 0) {
      // seq_cst: a sender that registers to park and then reads deq_pos_ sees this claim.
      if (deq_pos_.compare_exchange_weak(pos, pos + 1, std::memory_order_seq_cst,
                                         std::memory_order_relaxed)) {
        break;
      }
    } else if (dif < 0) {
      const std::uint64_t enq = enq_pos_.load(std::memory_order_seq_cst);
      if ((enq & ~kClosedBit) > pos) {
        // A producer claimed this slot and is writing it: it is ready in a few instructions.
        backoff.pause();
        pos = deq_pos_.load(std::memory_order_relaxed);
        continue;
      }
      return (enq & kClosedBit) ? Take::closed : Take::empty;
    } else {
      pos = deq_pos_.load(std::memory_order_relaxed);
    }
  }

  T* slot = std::launder(reinterpret_cast<T*>(cell->storage));
  if (!evicting) out.emplace(std::move(*slot));
  slot->~T();
  const std::uint64_t size = cell->bytes;
  const std::int64_t stamp = cell->stamp_ns;
  cell->seq.store(2 * (pos + capacity_), std::memory_order_release);

  if (account_) deq_bytes_.fetch_add(size, std::memory_order_seq_cst);
  not_full_.notify_all();
  if (writable_hooks_.armed()) writable_hooks_.fire();
  if (evicting) {
    dropped_[static_cast<std::size_t>(DropReason::overflow)].fetch_add(1,
                                                                       std::memory_order_relaxed);
    evicted_.fetch_add(1, std::memory_order_relaxed);
  } else {
    latency_.record(stamp);
  }
  return Take::ok;
}

template <class T>
SendResult Channel<T>::send_impl(T& item, Clock::time_point deadline, Clock::duration timeout,
                                 bool may_wait) {
  const std::uint64_t size = account_ ? weigh(item) : 0;
  if (config_.max_item_bytes != 0 && size > config_.max_item_bytes) {
    if (is_closed()) {
      return {SendStatus::closed, DropReason::overflow, 0,
              detail::channel_closed_message(config_.name)};
    }
    count_refused(DropReason::too_large);
    return {SendStatus::dropped, DropReason::too_large, 0,
            detail::channel_too_large_message(config_.name, size, config_.max_item_bytes)};
  }

  std::uint32_t evicted = 0;
  detail::Backoff backoff;
  Clock::time_point blocked_since{};
  const auto finish_blocking = [&] {
    if (blocked_since != Clock::time_point{}) {
      const auto ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - blocked_since);
      blocked_ns_.fetch_add(static_cast<std::uint64_t>(ns.count()), std::memory_order_relaxed);
    }
  };

  for (;;) {
    Attempt attempt = try_enqueue(item, size);
    if (attempt == Attempt::full) {
      switch (config_.policy) {
        case OverflowPolicy::drop_newest:
          count_refused(DropReason::overflow);
          return {SendStatus::dropped, DropReason::overflow, evicted, {}};
        case OverflowPolicy::reject:
          rejected_.fetch_add(1, std::memory_order_relaxed);
          return {SendStatus::would_block, DropReason::overflow, 0, {}};
        case OverflowPolicy::drop_oldest: {
          std::optional<T> none;
          if (try_dequeue(none, /*evicting=*/true) == Take::ok) {
            ++evicted;
          } else {
            backoff.pause();  // full of bytes reserved by sends still in progress
          }
          continue;
        }
        case OverflowPolicy::block:
          break;
      }
      if (!may_wait) {
        rejected_.fetch_add(1, std::memory_order_relaxed);
        return {SendStatus::would_block, DropReason::overflow, 0, {}};
      }
      if (await_room(backoff)) continue;
      // Spinning is over: from here the sender is blocked (and the clock gets read).
      if (blocked_since == Clock::time_point{}) {
        blocked_since = Clock::now();
        deadline = detail::resolve_deadline(deadline, timeout, Clock::now());
      }
      if (Clock::now() >= deadline) {
        finish_blocking();
        return timeout_result(size, blocked_since);
      }
      // Register, re-check, park: a receiver that frees room after our re-check sees us.
      const std::uint32_t ticket = not_full_.enter();
      attempt = try_enqueue(item, size);
      if (attempt == Attempt::full) not_full_.park(ticket, deadline);
      not_full_.leave();
      if (attempt == Attempt::full) continue;
    }
    finish_blocking();
    if (attempt == Attempt::closed) {
      return {SendStatus::closed, DropReason::overflow, 0,
              detail::channel_closed_message(config_.name)};
    }
    return {SendStatus::ok, DropReason::overflow, evicted, {}};
  }
}

template <class T>
SendResult Channel<T>::timeout_result(std::uint64_t size, Clock::time_point since) {
  timeouts_.fetch_add(1, std::memory_order_relaxed);
  ChannelStats s;
  s.name = config_.name;
  s.policy = config_.policy;
  s.max_items = config_.max_items;
  s.max_bytes = config_.max_bytes;
  s.len = len();
  s.queue_bytes = queue_bytes();
  return {SendStatus::timeout, DropReason::overflow, 0,
          detail::channel_timeout_message(
              s, size, std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - since))};
}

template <class T>
RecvResult<T> Channel<T>::recv_impl(Clock::time_point deadline, Clock::duration timeout,
                                    bool may_wait) {
  RecvResult<T> result;
  detail::Backoff backoff;
  bool resolved = false;
  for (;;) {
    Take take = try_dequeue(result.value, false);
    if (take == Take::empty && may_wait && !await_item(backoff)) {
      if (!resolved) {
        deadline = detail::resolve_deadline(deadline, timeout, Clock::now());
        resolved = true;
      }
      if (Clock::now() >= deadline) {
        result.status = RecvStatus::timeout;
        return result;
      }
      // Register, re-check, park: a sender that publishes after our re-check sees us.
      const std::uint32_t ticket = not_empty_.enter();
      take = try_dequeue(result.value, false);
      if (take == Take::empty) not_empty_.park(ticket, deadline);
      not_empty_.leave();
    }
    switch (take) {
      case Take::ok:
        result.status = RecvStatus::ok;
        return result;
      case Take::closed:
        result.status = RecvStatus::closed;
        return result;
      case Take::empty:
        if (!may_wait) {
          result.status = RecvStatus::would_block;
          return result;
        }
        break;
    }
  }
}

template <class T>
void Channel<T>::close() {
  enq_pos_.fetch_or(kClosedBit, std::memory_order_seq_cst);
  not_empty_.wake_all();
  not_full_.wake_all();
  readable_hooks_.fire();
  writable_hooks_.fire();
}

// Spinning before parking watches only the slot the caller waits for (which the other side
// writes anyway), never the other side's position counter: polling that counter would pull
// its cache line away from the threads that increment it on every operation.
// Both answer true while the caller should retry, false once it is time to park.
template <class T>
bool Channel<T>::await_room(detail::Backoff& backoff) const noexcept {
  const std::uint64_t pos = enq_pos_.load(std::memory_order_relaxed);
  if (pos & kClosedBit) return true;
  const Cell& cell = cell_at(pos);
  bool waited = false;
  // The slot still holds the item from one lap ago: wait for a consumer to free it.
  while (static_cast<std::int64_t>(cell.seq.load(std::memory_order_acquire) - 2 * pos) < 0) {
    if (!backoff.spin()) return false;
    waited = true;
  }
  // Free by items but refused: the byte budget binds; back off one step.
  return waited || backoff.spin();
}

template <class T>
bool Channel<T>::await_item(detail::Backoff& backoff) const noexcept {
  const std::uint64_t pos = deq_pos_.load(std::memory_order_relaxed);
  const Cell& cell = cell_at(pos);
  while (static_cast<std::int64_t>(cell.seq.load(std::memory_order_acquire) - (2 * pos + 1)) < 0) {
    if (!backoff.spin()) return false;
  }
  return true;
}

template <class T>
bool Channel<T>::readable_now() const noexcept {
  detail::Backoff backoff;
  for (;;) {
    const std::uint64_t pos = deq_pos_.load(std::memory_order_seq_cst);
    const std::uint64_t seq = cell_at(pos).seq.load(std::memory_order_acquire);
    if (seq == 2 * pos + 1) return true;
    if (seq > 2 * pos + 1) continue;  // pos moved on under us
    const std::uint64_t enq = enq_pos_.load(std::memory_order_seq_cst);
    if ((enq & ~kClosedBit) > pos) {
      backoff.pause();  // being written
      continue;
    }
    return (enq & kClosedBit) != 0;
  }
}

template <class T>
bool Channel<T>::writable_now() const noexcept {
  const std::uint64_t enq = enq_pos_.load(std::memory_order_seq_cst);
  if (enq & kClosedBit) return true;
  const std::uint64_t deq = deq_pos_.load(std::memory_order_seq_cst);
  if (enq - deq >= capacity_) return false;
  if (!account_) return true;
  const std::uint64_t released = deq_bytes_.load(std::memory_order_seq_cst);
  return enq_bytes_.load(std::memory_order_seq_cst) - released < max_bytes_;
}

template <class T>
void Channel<T>::on_readable(std::function<void()> fn) {
  readable_hooks_.add(std::move(fn));
  if (readable_now()) readable_hooks_.fire();
}

template <class T>
void Channel<T>::on_writable(std::function<void()> fn) {
  writable_hooks_.add(std::move(fn));
  if (writable_now()) writable_hooks_.fire();
}

template <class T>
ChannelStats Channel<T>::stats() const {
  ChannelStats s;
  s.name = config_.name;
  s.policy = config_.policy;
  s.max_items = config_.max_items;
  s.max_bytes = config_.max_bytes;
  // Consumers' figures first: a later read of the producers' ones can only be larger, so the
  // differences are never negative.
  const std::uint64_t evicted = evicted_.load(std::memory_order_acquire);
  const std::uint64_t deq = deq_pos_.load(std::memory_order_acquire);
  const std::uint64_t enq_raw = enq_pos_.load(std::memory_order_acquire);
  const std::uint64_t enq = enq_raw & ~kClosedBit;
  s.closed = (enq_raw & kClosedBit) != 0;
  // len and queue_bytes as single-instant snapshots (the counters above are for the totals).
  s.len = occupancy(enq_pos_, deq_pos_, kClosedBit);
  s.queue_bytes = occupancy(enq_bytes_, deq_bytes_, 0);
  s.max_queue_bytes_seen =
      std::max<std::uint64_t>(hwm_bytes_.load(std::memory_order_relaxed), s.queue_bytes);
  for (std::size_t i = 0; i < kDropReasonCount; ++i) {
    s.dropped.by_reason[i] = dropped_[i].load(std::memory_order_relaxed);
  }
  s.received = deq - std::min(evicted, deq);
  s.sent = enq + refused_.load(std::memory_order_relaxed);
  s.rejected = rejected_.load(std::memory_order_relaxed);
  s.timeouts = timeouts_.load(std::memory_order_relaxed);
  s.blocked_seconds = static_cast<double>(blocked_ns_.load(std::memory_order_relaxed)) / 1e9;
  s.latency_ns = latency_.snapshot();
  return s;
}

}  // namespace sluice

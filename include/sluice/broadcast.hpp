// Sluice — Broadcast<T>: one stream, many subscribers, every item stored once.
//
// Contract
// - Storage: the broadcast keeps the `capacity` most recently published items in a ring. An
//   item is stored once, whatever the number of subscribers; a subscriber receives a copy of
//   the stored T (for sluice::Buffer, a reference: the bytes are shared, never copied).
//   An item is kept only while a subscriber still needs it: the last subscriber to receive it,
//   skip it (lapped) or leave releases it, and an item published with no subscriber is not
//   kept at all. So memory held by the ring is at most `capacity` items, and only the items
//   some subscriber has not passed yet (retained_bytes(): their size_bytes).
// - Retention (config `retain`, `retain_bytes`; off by default): the broadcast also keeps the
//   `retain` most recent items (fewer if they weigh more than `retain_bytes`), whether or not a
//   subscriber needs them, so that a subscriber that left can come back where it was:
//   subscribe_from(position) starts at that position if it is still retained, else at the
//   oldest retained item (its joined_at() says where it started: the difference is what it
//   missed). Retained items are shared references like any other; retained_bytes() counts
//   them. Positions are the broadcast's sequence numbers: the first item published is 0.
// - Groups (config `group_items`, `group_bytes`; off by default): the broadcast keeps
//   the items since the latest one a newcomer can start at — an item that depends on no
//   earlier one (a video's keyframe), then those that depend on it (its delta frames) — so
//   that subscribe_at_group() starts a newcomer there instead of at the next one. Whether an
//   item depends on an earlier one is `depends_on_earlier(item)`, found by argument-dependent
//   lookup (item types without it form no groups). Groups are kept only once an item that
//   depends on an earlier one has been published: a stream of independent items keeps
//   nothing. A group that would outgrow `group_items` or `group_bytes` is released whole (a
//   newcomer then starts at the next group). Its items are shared references, counted by
//   retained_bytes().
// - Subscribers: subscribe(name, depth) returns a Subscription, an RAII handle; destroying it
//   (or unsubscribe()) leaves and releases everything the subscriber held back. A subscriber
//   sees the items published after it joined, in publish order. 1 ≤ depth ≤ capacity.
//   Subscribers join and leave at any time, from any thread.
// - lossy mode: publish() never waits and never fails because of a subscriber. A subscriber
//   more than `depth` items behind is lapped: it skips to the `depth` most recent items, and its
//   next receive answers `gap` (lost = how many it skipped, reason slow_consumer) once, before
//   the next item. Its losses are counted in its stats. The publisher and the other subscribers
//   are unaffected.
// - lossless mode: publish() waits until every subscriber is less than its `depth` behind,
//   up to its deadline (config max_wait by default), then answers `timeout` with a message
//   naming the broadcast, the slowest subscriber and its lag. try_publish() answers
//   `would_block` instead of waiting. With `evict_after` set, a subscriber that keeps the
//   publisher waiting that long is removed (counted `evicted`); its next receive answers
//   `evicted` once, then `closed`. Every subscriber receives every item published while it
//   was subscribed, in order.
// - close(): publishers see `closed` at once; subscribers receive what they still may, then
//   `closed`. A Subscription may outlive its Broadcast (it then drains and sees `closed`).
// - Blocking: publish() (lossless) and Subscription::recv() spin briefly, then park on a futex
//   until woken by the operation that makes progress possible; no polling.
// - Readiness: Subscription::on_readable() and Broadcast::on_writable() register one-shot
//   callbacks, as Channel's do (see channel.hpp), for event loops.
// - Thread-safety: Broadcast's members may be called from any thread concurrently, including
//   several publishers (publishes are serialized). A Subscription is one reader: its recv
//   calls must not run concurrently with each other (use one Subscription per consumer
//   thread); stats() and on_readable() may be called from any thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "sluice/channel.hpp"  // kUnlimitedBytes
#include "sluice/detail/wait.hpp"
#include "sluice/drop_reason.hpp"
#include "sluice/histogram.hpp"
#include "sluice/latency.hpp"
#include "sluice/result.hpp"

namespace sluice {

enum class BroadcastMode : std::uint8_t {
  lossy,     // the publisher never waits; lapped subscribers lose their oldest items (counted)
  lossless,  // the publisher waits for the slowest subscriber (bounded by max_wait)
};

std::string_view to_string(BroadcastMode mode) noexcept;
std::optional<BroadcastMode> parse_broadcast_mode(std::string_view text) noexcept;

struct BroadcastConfig {
  /// Appears in stats, errors and timeout messages. Non-empty.
  std::string name = "broadcast";
  /// Items retained by the ring (1 .. 2^20). Bounds memory: `capacity` items at most. Also the
  /// largest depth a subscriber may ask for. For large frames keep it small (e.g. 8).
  std::size_t capacity = 64;
  BroadcastMode mode = BroadcastMode::lossy;
  /// Depth of a subscriber that does not choose one (1 .. capacity).
  std::size_t default_depth = 4;
  /// lossless: how long publish() without a deadline waits for the slowest subscriber (≥ 0).
  std::chrono::nanoseconds max_wait = std::chrono::seconds(5);
  /// lossless: the bytes (as weighed by sluice::size_bytes) a subscriber may have outstanding,
  /// published and not yet received; the publisher waits past it like past `depth`. An item
  /// heavier than this is published once every subscriber has received everything (the
  /// oversized-item rule). kUnlimitedBytes (the default): no byte budget. Lossless only.
  std::size_t max_bytes = kUnlimitedBytes;
  /// lossless: remove a subscriber that keeps the publisher waiting this long (0 = never).
  std::chrono::nanoseconds evict_after = std::chrono::nanoseconds::zero();
  /// The most recent items kept for subscribe_from() even when no subscriber needs them
  /// (0 .. capacity; 0: none), and at most this many bytes of them (as weighed by
  /// sluice::size_bytes; the newest item is dropped from retention too if it alone is heavier).
  std::size_t retain = 0;
  std::size_t retain_bytes = kUnlimitedBytes;
  /// The current group's items kept for subscribe_at_group() (0 .. capacity; 0: none),
  /// and at most this many bytes of them (see Groups above).
  std::size_t group_items = 0;
  std::size_t group_bytes = kUnlimitedBytes;
  /// publish→receive latency sampling (see LatencySampling).
  LatencySampling latency = LatencySampling::adaptive;

  /// Throws std::invalid_argument naming the broadcast, the setting, the value and what is
  /// accepted.
  void validate() const;
};

struct SubscriberStats {
  std::string name;
  std::size_t depth = 0;
  std::uint64_t joined_at = 0;  // items published before it joined (its first sequence number)
  std::uint64_t received = 0;   // items received
  DropCounts lost;              // items this subscriber lost, by reason (slow_consumer)
  std::uint64_t lag = 0;        // items published and not yet received by it, now
  std::uint64_t lag_bytes = 0;  // their bytes (byte-budgeted lossless broadcasts; else 0)
  // lossy: of `lag`, the items beyond its depth: already lost, announced (and added to `lost`)
  // at its next receive.
  std::uint64_t lapped = 0;
  std::uint64_t max_lag = 0;  // the largest lag it was seen at when receiving
  bool evicted = false;
};

struct BroadcastStats {
  std::string name;
  BroadcastMode mode = BroadcastMode::lossy;
  std::size_t capacity = 0;
  std::size_t max_bytes = 0;
  bool closed = false;
  std::uint64_t published = 0;
  std::uint64_t evicted = 0;         // subscribers removed by evict_after
  std::uint64_t would_block = 0;     // try_publish answers would_block (lossless)
  std::uint64_t timeouts = 0;        // publishes that gave up at their deadline (lossless)
  std::uint64_t retained_bytes = 0;  // size_bytes of the items held (subscribers', retention)
  std::uint64_t retained_from = 0;   // the oldest position subscribe_from() can start at
                                     // (retention's or the group's)
  std::uint64_t group_items = 0;     // the current group's items kept (0: none kept)
  double blocked_seconds = 0;        // time publishers waited for subscribers (spinning or parked)
  std::vector<SubscriberStats> subscribers;  // current subscribers, in joining order
  HistogramSnapshot latency_ns;              // publish→receive, sampled, all subscribers
};

template <class T>
class Subscription;

namespace detail_group {
// Poison pill: only argument-dependent lookup finds an item type's depends_on_earlier.
void depends_on_earlier() = delete;
template <class T>
concept HasAdl = requires(const T& v) {
  { depends_on_earlier(v) } -> std::convertible_to<bool>;
};
template <class T>
bool dependent(const T& v) {
  return depends_on_earlier(v);
}
}  // namespace detail_group

/// An item type whose items may depend on earlier ones (a video's delta frames on their
/// keyframe): a free function `bool depends_on_earlier(const T&)` found by argument-dependent
/// lookup. Broadcast keeps groups of such items (BroadcastConfig::group_items).
template <class T>
concept Grouped = detail_group::HasAdl<T>;

namespace detail {

std::string broadcast_timeout_message(const std::string& broadcast, const SubscriberStats& slowest,
                                      std::size_t capacity, std::size_t max_bytes,
                                      std::chrono::nanoseconds waited);
std::string broadcast_closed_message(const std::string& broadcast);

// A tiny spin lock (pause, then yield): held only for a few instructions, to move an item
// into a slot or copy one out, or to publish. Unlocking is a plain release store, where a
// std::mutex needs a locked instruction, which matters on the publisher's path.
class SpinLock {
 public:
  void lock() noexcept {
    Backoff backoff;
    while (locked_.exchange(true, std::memory_order_acquire)) {
      while (locked_.load(std::memory_order_relaxed)) backoff.pause();
    }
  }
  void unlock() noexcept { locked_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> locked_{false};
};

// What the broadcast knows of one subscriber. Shared by the Subscription and the broadcast.
struct SubscriberState {
  SubscriberState(std::string n, std::size_t d, std::uint64_t start, std::uint64_t start_bytes,
                  std::uint64_t catch_up)
      : name(std::move(n)),
        depth(d),
        joined_at(start),
        caught_up_at(catch_up),
        cursor(start),
        consumed_bytes(start_bytes) {}
  const std::string name;
  const std::uint64_t depth;
  const std::uint64_t joined_at;  // sequence number of the first item it may receive
  // Joined at a group: the head when it joined. Until it reaches it, it is lapped only once
  // more than `depth` items were published after it (not for the group it starts with).
  const std::uint64_t caught_up_at;
  // The lossy rule, in one place: at position `at` with the ring (of `capacity`) at `head`,
  // the items it has lost — all but its `depth` most recent once it is more than `depth`
  // behind (counted from caught_up_at until it is there) or behind by more than the ring
  // holds; else 0.
  std::uint64_t lapped(std::uint64_t head, std::uint64_t at,
                       std::uint64_t capacity) const noexcept {
    if (head <= at) return 0;
    const std::uint64_t lag = head - at;
    return head - std::max(at, caught_up_at) > depth || lag > capacity ? lag - depth : 0;
  }
  // Next sequence number to receive. Written by the subscriber only; read by publishers.
  alignas(64) std::atomic<std::uint64_t> cursor;
  // Bytes published before it joined plus bytes it received (byte-budgeted broadcasts only).
  std::atomic<std::uint64_t> consumed_bytes;
  std::atomic<std::uint64_t> received{0};
  std::atomic<std::uint64_t> lost_slow{0};
  std::atomic<std::uint64_t> max_lag{0};
  std::atomic<bool> evicted{false};
  bool eviction_reported = false;   // subscriber thread only
  bool released = false;            // its unread items were passed (subscriber thread only)
  std::atomic<bool> hooked{false};  // on_readable was used: counted in hooked_subs
  HookList readable;
};

template <class T>
struct BroadcastState {
  struct alignas(64) Slot {  // one cache line each: the publisher writes one slot while
                             // subscribers read the one before
    SpinLock lock;
    // Sequence number of the item held. Written under the lock; in unguarded mode also read
    // without it (acquire), as the item's "ready" flag.
    std::atomic<std::uint64_t> seq{std::numeric_limits<std::uint64_t>::max()};
    std::int64_t stamp_ns = 0;  // guarded by lock
    std::uint64_t bytes = 0;    // size_bytes of the item (0 if T has none)
    // Subscribers that have not passed the item yet; the last one releases it. Set by the
    // publisher; counted down under the lock, or (unguarded reads) by each reader after its
    // copy (the slot is not reused before every reader has passed it).
    std::atomic<std::uint32_t> remaining{0};
    std::optional<T> item;  // guarded by lock
  };

  explicit BroadcastState(BroadcastConfig c)
      : config((c.validate(), std::move(c))),
        unguarded_reads(config.mode == BroadcastMode::lossless && config.evict_after.count() == 0),
        account(config.max_bytes != kUnlimitedBytes) {}

  Slot& slot_at(std::uint64_t seq) const noexcept { return slots[seq % config.capacity]; }

  const BroadcastConfig config;
  // Subscribers may read slots without their lock: lossless mode without evict_after, where
  // no slot is reused before every subscriber has moved past it. (An evicted subscriber could
  // still be reading when the publisher reuses its slot, so eviction needs the lock.)
  const bool unguarded_reads;
  const bool account;  // a byte budget is set
  // Allocated by the first subscribe (under `mu`), then kept: an item published while nobody
  // subscribes is not stored, so a broadcast nobody has subscribed to costs no ring (a topic
  // made on first use that is only published to stays small). Subscribers reach it only after
  // subscribing, which happens after the allocation.
  std::unique_ptr<Slot[]> slots;

  // Items published so far; the next item's sequence number. Written under `mu`.
  alignas(64) std::atomic<std::uint64_t> head{0};
  std::atomic<bool> closed{false};  // set under `mu`, after the last publish

  alignas(64) mutable SpinLock mu;  // serializes publishes, joins and leaves (short sections)
  std::vector<std::shared_ptr<SubscriberState>> subs;  // guarded by mu
  std::uint64_t gate = 0;  // lossless: head may advance while head < gate. Guarded by mu.
  // Byte budget (lossless, max_bytes set): an item of n bytes may go while
  // published_bytes + n <= gate_bytes, or when every subscriber has everything
  // (min_consumed == published_bytes). Guarded by mu; published_bytes also read by stats.
  std::atomic<std::uint64_t> published_bytes{0};
  std::uint64_t gate_bytes = 0;
  std::uint64_t min_consumed = 0;
  std::atomic<std::uint32_t> hooked_subs{0};  // subscriptions that ever armed on_readable
  // Retention: the items [retain_from, head) hold one reference more (the retention's), and
  // weigh retain_held bytes together. Guarded by mu.
  std::uint64_t retain_from = 0;
  std::uint64_t retain_held = 0;
  // Groups: while group_kept, the items [group_from, head) hold one reference more (the
  // group's) and weigh group_held bytes. Guarded by mu.
  bool dependents_seen = false;  // an item that depends on an earlier one was published
  bool group_kept = false;
  std::uint64_t group_from = 0;
  std::uint64_t group_held = 0;

  WaitQueue data;  // subscribers waiting for an item
  WaitQueue room;  // lossless publishers waiting for subscribers
  HookList writable;

  LatencySampler latency{config.latency};
  std::atomic<std::uint64_t> evicted{0};
  std::atomic<std::uint64_t> would_block{0};
  std::atomic<std::uint64_t> timeouts{0};
  std::atomic<std::uint64_t> blocked_ns{0};
  std::atomic<std::uint64_t> retained_bytes{0};  // size_bytes of the items the slots hold

  // One subscriber fewer needs the item in `slot`: the last one takes it out, to be destroyed
  // by the caller outside any lock. Caller holds the slot's lock, or reads unguarded.
  std::optional<T> pass(Slot& slot) noexcept {
    std::optional<T> out;
    if (slot.remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      out.swap(slot.item);
      if (out) retained_bytes.fetch_sub(slot.bytes, std::memory_order_relaxed);
    }
    return out;
  }
  // A reader at `cursor` (a subscriber, or the group) will not read [cursor, end): it passes
  // every item of that range still in its slot. Caller holds `mu` (the slots are not reused
  // meanwhile) or is the subscriber reading guarded slots; released items go to `out`.
  void pass_range(std::uint64_t cursor, std::uint64_t end, std::vector<std::optional<T>>& out) {
    const std::uint64_t first =
        end > config.capacity ? std::max(cursor, end - config.capacity) : cursor;
    for (std::uint64_t seq = first; seq < end; ++seq) {
      Slot& slot = slot_at(seq);
      if (!unguarded_reads) slot.lock.lock();
      if (slot.seq.load(std::memory_order_relaxed) == seq) {
        if (auto item = pass(slot)) out.push_back(std::move(item));
      }
      if (!unguarded_reads) slot.lock.unlock();
    }
  }
};

SubscriberStats subscriber_stats(const SubscriberState& s, std::uint64_t head,
                                 std::uint64_t capacity, std::uint64_t published_bytes);

}  // namespace detail

/// One stream published to many subscribers. See the contract at the top of this file.
template <class T>
class Broadcast {
  static_assert(std::is_copy_constructible_v<T>,
                "Broadcast<T> hands each subscriber a copy of the stored item: T must be "
                "copyable (use sluice::Buffer or std::shared_ptr<const X> for large payloads)");
  static_assert(std::is_nothrow_move_constructible_v<T>, "T needs a nothrow move constructor");

 public:
  using Clock = std::chrono::steady_clock;

  /// Throws std::invalid_argument if the configuration is invalid.
  explicit Broadcast(BroadcastConfig config)
      : state_(std::make_shared<detail::BroadcastState<T>>(std::move(config))) {
    if constexpr (!Sized<T>) {
      if (state_->account) {
        throw std::invalid_argument("broadcast '" + state_->config.name +
                                    "': max_bytes needs an item type sluice::size_bytes can weigh");
      }
    }
  }
  /// Closes the broadcast; subscriptions still alive drain and see `closed`.
  ~Broadcast() {
    if (state_) close();
  }
  Broadcast(const Broadcast&) = delete;
  Broadcast& operator=(const Broadcast&) = delete;
  Broadcast(Broadcast&&) noexcept = default;
  Broadcast& operator=(Broadcast&&) noexcept = delete;

  /// Joins with `depth` (default: config().default_depth). Sees items published from now on.
  /// Throws std::invalid_argument if depth is 0 or above capacity, or the name is empty.
  Subscription<T> subscribe(std::string name, std::size_t depth = 0);
  /// Joins at `position` (a sequence number: the first item published is 0) if the broadcast
  /// still retains it (config `retain`), else at the oldest item it retains, or at the next
  /// item to be published if `position` is beyond it. The Subscription's joined_at() says
  /// where it starts. On a lossless broadcast a subscriber that starts more than `depth` items
  /// behind holds the publisher until it is within `depth`; on a lossy one it is lapped at its
  /// first receive (a gap). Same exceptions as subscribe().
  Subscription<T> subscribe_from(std::uint64_t position, std::string name, std::size_t depth = 0);
  /// Joins at the first item of the group it keeps (config group_items: a video's latest
  /// keyframe), or at the next item to be published if it keeps none. Starting behind does not
  /// lap it: until it reaches the head it joined at, it is lapped only once more than `depth`
  /// items were published after it joined. Same exceptions as subscribe().
  Subscription<T> subscribe_at_group(std::string name, std::size_t depth = 0);
  /// Items published so far: the position of the next one.
  std::uint64_t published() const noexcept { return state_->head.load(std::memory_order_acquire); }

  /// Publishes under the broadcast's mode; lossless waits up to config().max_wait.
  SendResult publish(T&& item) { return publish_impl(item, kLazy, state_->config.max_wait, true); }
  SendResult publish(const T& item) {
    T copy(item);
    return publish(std::move(copy));
  }
  /// Lossless: waits until `deadline` at the latest.
  SendResult publish(T&& item, Clock::time_point deadline) {
    return publish_impl(item, deadline, {}, true);
  }
  template <class Rep, class Period>
  SendResult publish_for(T&& item, std::chrono::duration<Rep, Period> timeout) {
    return publish_impl(item, kLazy, detail::clamp_timeout(timeout), true);
  }
  /// Never waits: lossless answers would_block while a subscriber is `depth` behind.
  SendResult try_publish(T&& item) { return publish_impl(item, kLazy, {}, false); }

  /// Closes (idempotent): wakes every waiter and fires every hook.
  void close();
  bool is_closed() const noexcept { return state_->closed.load(std::memory_order_acquire); }

  /// Lossless: one-shot callback run once a publish of an item of `item_bytes` bytes would not
  /// wait (or the broadcast closed). Same rules as Channel::on_writable.
  void on_writable(std::function<void()> fn, std::uint64_t item_bytes = 0);

  std::size_t subscriber_count() const {
    std::lock_guard lock(state_->mu);
    return state_->subs.size();
  }
  BroadcastStats stats() const;
  /// Bytes published and not yet received by the furthest-behind subscriber (what a
  /// byte-budgeted lossless broadcast holds against max_bytes); 0 without subscribers or
  /// without a byte budget. Takes the subscriber list's mutex; O(subscribers), no copies.
  std::uint64_t queue_bytes() const;
  /// Items published and not yet received by the furthest-behind subscriber; 0 without
  /// subscribers. Takes the subscriber list's mutex; O(subscribers).
  std::uint64_t queue_items() const;
  const BroadcastConfig& config() const noexcept { return state_->config; }
  /// size_bytes of the items held for subscribers that have not passed them yet, now (what
  /// the ring holds; 0 with no subscriber).
  std::uint64_t retained_bytes() const noexcept {
    return state_->retained_bytes.load(std::memory_order_relaxed);
  }

 private:
  static constexpr Clock::time_point kLazy = detail::kLazyDeadline;
  using State = detail::BroadcastState<T>;

  SendResult publish_impl(T& item, Clock::time_point deadline, Clock::duration timeout,
                          bool may_wait);
  // Puts `item` into the slot of `seq` for `readers` subscribers (none: the item is not kept);
  // the item it replaces goes to `old`, to be destroyed after the caller's lock. Caller holds
  // mu, and the ring exists.
  static void store(State& s, std::uint64_t seq, std::uint32_t readers, std::int64_t stamp,
                    std::uint64_t weight, T&& item, std::optional<T>& old) noexcept;
  // Retention: drops the retention's reference on the oldest retained item (released to
  // `out` if nobody else needs it). Caller holds mu.
  void unretain_oldest(std::vector<std::optional<T>>& out) noexcept;
  // Groups: item `seq` (of `weight` bytes; `dependent` on an earlier one) is being published:
  // it starts a group, continues the kept one, or ends it (it outgrows its limits). Whether
  // the group holds it. Caller holds mu.
  bool group_publish(std::uint64_t seq, std::uint64_t weight, bool dependent,
                     std::vector<std::optional<T>>& out) noexcept;
  // Groups: drops the group's reference on each of its items. Caller holds mu.
  void release_group(std::vector<std::optional<T>>& out) noexcept;
  // subscribe_from / subscribe_at_group: at `position` (nullopt: the group's first item).
  Subscription<T> join(std::optional<std::uint64_t> position, std::string name, std::size_t depth);
  // Lossless: recomputes the gate from the subscribers' cursors. Caller holds mu.
  void refresh_gate() const noexcept;  // (changes only the shared state's cached gate)
  // Lossless: may an item of `size` bytes be published as `seq`, by the last refresh? Caller
  // holds mu.
  bool admits(std::uint64_t seq, std::uint64_t size) const noexcept;
  static std::uint64_t weigh(const T& item) {
    if constexpr (Sized<T>) {
      return size_bytes(item);
    } else {
      return 0;
    }
  }
  bool room_now(std::uint64_t size) const;
  // Removes the subscribers keeping a publish of `seq` waiting. Caller holds mu.
  void evict_gating(std::uint64_t seq, std::uint64_t size);

  std::shared_ptr<State> state_;
};

/// One subscriber's handle. Move-only; destroying it leaves the broadcast.
template <class T>
class Subscription {
 public:
  using Clock = std::chrono::steady_clock;

  Subscription() = default;
  ~Subscription() { unsubscribe(); }
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;
  Subscription(Subscription&& other) noexcept
      : state_(std::move(other.state_)),
        sub_(std::move(other.sub_)),
        cached_head_(other.cached_head_) {}
  Subscription& operator=(Subscription&& other) noexcept {
    if (this != &other) {
      unsubscribe();
      state_ = std::move(other.state_);
      sub_ = std::move(other.sub_);
      cached_head_ = other.cached_head_;
    }
    return *this;
  }

  /// Receives the next item, waiting without limit. Answers gap (once, before the next item)
  /// after losses, evicted (once) if removed, closed once the broadcast is closed and drained.
  RecvResult<T> recv() { return recv_impl(Clock::time_point::max(), {}, true); }
  RecvResult<T> recv(Clock::time_point deadline) { return recv_impl(deadline, {}, true); }
  template <class Rep, class Period>
  RecvResult<T> recv_for(std::chrono::duration<Rep, Period> timeout) {
    return recv_impl(kLazy, detail::clamp_timeout(timeout), true);
  }
  /// Never waits: would_block when nothing new is there.
  RecvResult<T> try_recv() { return recv_impl(kLazy, {}, false); }

  /// One-shot callback run once a receive would not wait (item, gap, eviction or close).
  void on_readable(std::function<void()> fn);

  /// Leaves the broadcast now (idempotent). Later receives answer closed.
  void unsubscribe();

  bool active() const noexcept { return sub_ != nullptr; }
  const std::string& name() const { return sub_->name; }
  /// The position of the first item it may receive (see Broadcast::subscribe_from).
  std::uint64_t joined_at() const noexcept { return sub_->joined_at; }
  /// The position of the next item it will receive (items it was lapped past excluded once
  /// the gap is received).
  std::uint64_t position() const noexcept { return sub_->cursor.load(std::memory_order_acquire); }
  std::size_t depth() const noexcept { return sub_->depth; }
  /// Items published and not yet received by this subscriber.
  std::uint64_t lag() const noexcept {
    const std::uint64_t cursor = sub_->cursor.load(std::memory_order_acquire);
    const std::uint64_t head = state_->head.load(std::memory_order_acquire);
    return head > cursor ? head - cursor : 0;
  }
  SubscriberStats stats() const {
    return detail::subscriber_stats(*sub_, state_->head.load(std::memory_order_acquire),
                                    state_->config.capacity,
                                    state_->published_bytes.load(std::memory_order_acquire));
  }

 private:
  friend class Broadcast<T>;
  static constexpr Clock::time_point kLazy = detail::kLazyDeadline;

  Subscription(std::shared_ptr<detail::BroadcastState<T>> state,
               std::shared_ptr<detail::SubscriberState> sub)
      : state_(std::move(state)), sub_(std::move(sub)) {}

  enum class Attempt : std::uint8_t { done, empty };
  Attempt try_take(RecvResult<T>& out);
  Attempt take_unguarded(RecvResult<T>& out, std::uint64_t cursor, std::uint64_t lag);
  void finish_take(RecvResult<T>& out, std::uint64_t cursor, std::uint64_t lag, std::int64_t stamp,
                   std::uint64_t bytes);
  bool readable_now() const noexcept;
  // Passes every item it has not read (it reads no more); once.
  void release_unread();
  RecvResult<T> recv_impl(Clock::time_point deadline, Clock::duration timeout, bool may_wait);

  std::shared_ptr<detail::BroadcastState<T>> state_;
  std::shared_ptr<detail::SubscriberState> sub_;
  std::uint64_t cached_head_ = 0;  // the publisher's head as last read (receiving thread only)
  bool parked_last_ = false;       // the last receive parked (receiving thread only)
};

// ------------------------------------------------------------------------------------------
// Implementation

template <class T>
Subscription<T> Broadcast<T>::subscribe(std::string name, std::size_t depth) {
  return subscribe_from(std::numeric_limits<std::uint64_t>::max(), std::move(name), depth);
}

template <class T>
Subscription<T> Broadcast<T>::subscribe_from(std::uint64_t position, std::string name,
                                             std::size_t depth) {
  return join(position, std::move(name), depth);
}

template <class T>
Subscription<T> Broadcast<T>::subscribe_at_group(std::string name, std::size_t depth) {
  return join(std::nullopt, std::move(name), depth);
}

template <class T>
Subscription<T> Broadcast<T>::join(std::optional<std::uint64_t> position, std::string name,
                                   std::size_t depth) {
  State& s = *state_;
  if (depth == 0) depth = s.config.default_depth;
  if (name.empty() || depth > s.config.capacity) {
    throw std::invalid_argument(
        "broadcast '" + s.config.name + "': cannot subscribe " +
        (name.empty()
             ? std::string("with an empty name")
             : "'" + name + "' with depth " + std::to_string(depth) +
                   " (accepted: 1 to capacity = " + std::to_string(s.config.capacity) + ")"));
  }
  std::lock_guard lock(s.mu);
  if (!s.slots) s.slots.reset(new typename State::Slot[s.config.capacity]);
  const std::uint64_t head = s.head.load(std::memory_order_relaxed);
  // (Retention's and the group's items both run to the head: together, [oldest, head).)
  std::uint64_t oldest = s.config.retain > 0 ? s.retain_from : head;
  if (s.group_kept) oldest = std::min(oldest, s.group_from);
  const std::uint64_t group = s.group_kept ? s.group_from : head;
  const std::uint64_t start = std::clamp(position.value_or(group), oldest, head);
  // It needs the retained items [start, head) too: one reference more on each (they hold the
  // retention's, so none is released meanwhile), and their bytes are not yet consumed by it.
  std::uint64_t unread_bytes = 0;
  for (std::uint64_t seq = start; seq < head; ++seq) {
    auto& slot = s.slot_at(seq);
    slot.remaining.fetch_add(1, std::memory_order_acq_rel);
    unread_bytes += slot.bytes;
  }
  auto sub = std::make_shared<detail::SubscriberState>(
      std::move(name), depth, start,
      s.published_bytes.load(std::memory_order_relaxed) - (s.account ? unread_bytes : 0),
      position ? start : head);
  s.subs.push_back(sub);
  s.gate = 0;  // recompute with the newcomer
  return Subscription<T>(state_, std::move(sub));
}

template <class T>
void Broadcast<T>::store(State& s, std::uint64_t seq, std::uint32_t readers, std::int64_t stamp,
                         std::uint64_t weight, T&& item, std::optional<T>& old) noexcept {
  auto& slot = s.slot_at(seq);
  // (Unguarded mode: every subscriber has moved past this slot's previous item and none reads
  // it again, so the lock would protect nothing.)
  if (!s.unguarded_reads) slot.lock.lock();
  old.swap(slot.item);
  if (old) s.retained_bytes.fetch_sub(slot.bytes, std::memory_order_relaxed);  // (lapped)
  if (readers > 0) {
    slot.item.emplace(std::move(item));
    s.retained_bytes.fetch_add(weight, std::memory_order_relaxed);
  }
  slot.stamp_ns = stamp;
  slot.bytes = weight;
  slot.remaining.store(readers, std::memory_order_relaxed);
  slot.seq.store(seq, std::memory_order_release);  // last: marks the slot ready
  if (!s.unguarded_reads) slot.lock.unlock();
}

template <class T>
bool Broadcast<T>::group_publish(std::uint64_t seq, std::uint64_t weight, bool dependent,
                                 std::vector<std::optional<T>>& out) noexcept {
  State& s = *state_;
  if (dependent) s.dependents_seen = true;
  const bool starts = !dependent && s.dependents_seen;
  if (s.group_kept && (starts || seq - s.group_from >= s.config.group_items ||
                       s.group_held + weight > s.config.group_bytes)) {
    release_group(out);
  }
  if (starts && weight <= s.config.group_bytes) {
    s.group_kept = true;
    s.group_from = seq;
    s.group_held = 0;
  }
  if (!s.group_kept) return false;
  s.group_held += weight;
  return true;
}

template <class T>
void Broadcast<T>::release_group(std::vector<std::optional<T>>& out) noexcept {
  State& s = *state_;
  s.pass_range(s.group_from, s.head.load(std::memory_order_relaxed), out);
  s.group_kept = false;
  s.group_held = 0;
}

template <class T>
void Broadcast<T>::unretain_oldest(std::vector<std::optional<T>>& out) noexcept {
  State& s = *state_;
  const std::uint64_t seq = s.retain_from++;
  auto& slot = s.slot_at(seq);
  if (!s.unguarded_reads) slot.lock.lock();
  if (slot.seq.load(std::memory_order_relaxed) == seq) {
    s.retain_held -= slot.bytes;
    if (auto item = s.pass(slot)) out.push_back(std::move(item));
  }
  if (!s.unguarded_reads) slot.lock.unlock();
}

template <class T>
void Broadcast<T>::refresh_gate() const noexcept {
  State& s = *state_;
  std::uint64_t gate = std::numeric_limits<std::uint64_t>::max();
  std::uint64_t gate_bytes = std::numeric_limits<std::uint64_t>::max();
  std::uint64_t min_consumed = s.published_bytes.load(std::memory_order_relaxed);
  for (const auto& sub : s.subs) {
    gate = std::min(gate, sub->cursor.load(std::memory_order_seq_cst) + sub->depth);
    if (s.account) {
      const std::uint64_t consumed = sub->consumed_bytes.load(std::memory_order_seq_cst);
      gate_bytes = std::min(gate_bytes, consumed + s.config.max_bytes);
      min_consumed = std::min(min_consumed, consumed);
    }
  }
  s.gate = gate;
  s.gate_bytes = gate_bytes;
  s.min_consumed = min_consumed;
}

template <class T>
bool Broadcast<T>::admits(std::uint64_t seq, std::uint64_t size) const noexcept {
  const State& s = *state_;
  if (seq >= s.gate) return false;
  if (!s.account) return true;
  const std::uint64_t published = s.published_bytes.load(std::memory_order_relaxed);
  // Within every subscriber's byte budget, or everyone has everything (an oversized item).
  return published + size <= s.gate_bytes || s.min_consumed == published;
}

template <class T>
bool Broadcast<T>::room_now(std::uint64_t size) const {
  State& s = *state_;
  std::lock_guard lock(s.mu);
  if (s.closed.load(std::memory_order_relaxed) || s.config.mode == BroadcastMode::lossy) {
    return true;
  }
  refresh_gate();
  return admits(s.head.load(std::memory_order_relaxed), size);
}

template <class T>
void Broadcast<T>::evict_gating(std::uint64_t seq, std::uint64_t size) {
  State& s = *state_;
  std::vector<std::shared_ptr<detail::SubscriberState>> gone;
  const std::uint64_t published = s.published_bytes.load(std::memory_order_relaxed);
  auto keep = std::remove_if(s.subs.begin(), s.subs.end(), [&](const auto& sub) {
    const bool by_items = seq >= sub->cursor.load(std::memory_order_seq_cst) + sub->depth;
    const std::uint64_t consumed = sub->consumed_bytes.load(std::memory_order_seq_cst);
    const bool by_bytes =
        s.account && consumed != published && published + size > consumed + s.config.max_bytes;
    if (!by_items && !by_bytes) return false;
    gone.push_back(sub);
    return true;
  });
  s.subs.erase(keep, s.subs.end());
  for (auto& sub : gone) {
    sub->evicted.store(true, std::memory_order_seq_cst);
    s.evicted.fetch_add(1, std::memory_order_relaxed);
    if (sub->hooked.load()) s.hooked_subs.fetch_sub(1, std::memory_order_seq_cst);
  }
  s.gate = 0;
  if (!gone.empty()) {
    s.data.wake_all();
    for (auto& sub : gone) sub->readable.fire();
  }
}

template <class T>
SendResult Broadcast<T>::publish_impl(T& item, Clock::time_point deadline, Clock::duration timeout,
                                      bool may_wait) {
  State& s = *state_;
  const std::uint64_t weight = weigh(item);
  const std::uint64_t size = s.account ? weight : 0;
  std::unique_lock lock(s.mu);
  const bool lossless = s.config.mode == BroadcastMode::lossless;
  detail::Backoff backoff;
  Clock::time_point blocked_since{};
  Clock::time_point evict_at = Clock::time_point::max();
  const auto finish_blocking = [&] {
    if (blocked_since != Clock::time_point{}) {
      const auto ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - blocked_since);
      s.blocked_ns.fetch_add(static_cast<std::uint64_t>(ns.count()), std::memory_order_relaxed);
    }
  };
  for (;;) {
    if (s.closed.load(std::memory_order_relaxed)) {
      finish_blocking();
      return {SendStatus::closed, DropReason::overflow, 0,
              detail::broadcast_closed_message(s.config.name)};
    }
    const std::uint64_t seq = s.head.load(std::memory_order_relaxed);
    if (!lossless || admits(seq, size)) break;
    refresh_gate();
    if (admits(seq, size)) break;
    // A subscriber is `depth` behind: wait for it (lossless).
    if (!may_wait) {
      s.would_block.fetch_add(1, std::memory_order_relaxed);
      return {SendStatus::would_block, DropReason::overflow, 0, {}};
    }
    lock.unlock();
    if (blocked_since == Clock::time_point{}) {  // blocked from here, spinning included
      blocked_since = Clock::now();
      deadline = detail::resolve_deadline(deadline, timeout, blocked_since);
      if (s.config.evict_after.count() > 0) {
        evict_at =
            blocked_since + std::chrono::duration_cast<Clock::duration>(s.config.evict_after);
      }
    }
    if (backoff.spin()) {
      lock.lock();
      continue;
    }
    const auto now = Clock::now();
    if (now >= evict_at) {
      lock.lock();
      evict_gating(s.head.load(std::memory_order_relaxed), size);
      evict_at = Clock::time_point::max();
      continue;
    }
    if (now >= deadline) {
      lock.lock();
      // The slowest subscriber, for the message.
      const std::shared_ptr<detail::SubscriberState>* slowest = nullptr;
      for (const auto& sub : s.subs) {
        if (slowest == nullptr || sub->cursor.load() < (*slowest)->cursor.load()) slowest = &sub;
      }
      if (slowest == nullptr) continue;  // the slow one left meanwhile: publish
      s.timeouts.fetch_add(1, std::memory_order_relaxed);
      finish_blocking();
      const auto waited = std::chrono::duration_cast<std::chrono::nanoseconds>(now - blocked_since);
      return {SendStatus::timeout, DropReason::overflow, 0,
              detail::broadcast_timeout_message(
                  s.config.name,
                  detail::subscriber_stats(**slowest, s.head.load(), s.config.capacity,
                                           s.published_bytes.load()),
                  s.config.capacity, s.config.max_bytes, waited)};
    }
    // Register, re-check, park: a subscriber that moves on after the re-check sees us.
    const std::uint32_t ticket = s.room.enter();
    detail::heavy_fence();
    if (!room_now(size)) s.room.park(ticket, std::min(deadline, evict_at));
    s.room.leave();
    lock.lock();
  }
  finish_blocking();

  // Store the item in its slot, for the subscribers there are now (none: it is not kept); the
  // item it replaces is destroyed after the slot is unlocked.
  const std::uint64_t seq = s.head.load(std::memory_order_relaxed);
  std::optional<T> old;
  const std::int64_t stamp = s.latency.stamp(seq);
  std::vector<std::optional<T>> unretained;  // (destroyed after the lock, like `old`)
  const bool retains = s.config.retain > 0;
  if (retains) {
    if (!s.slots) s.slots.reset(new typename State::Slot[s.config.capacity]);
    // Make room for this item in the retention window (its slot's previous item included).
    while (s.retain_from + s.config.retain <= seq) unretain_oldest(unretained);
  }
  bool grouped = false;  // the group holds this item
  if constexpr (Grouped<T>) {
    if (s.config.group_items > 0) {
      grouped =
          group_publish(seq, weight, detail_group::dependent(std::as_const(item)), unretained);
      if (grouped && !s.slots) s.slots.reset(new typename State::Slot[s.config.capacity]);
    }
  }
  const auto readers =
      static_cast<std::uint32_t>(s.subs.size() + (retains ? 1 : 0) + (grouped ? 1 : 0));
  // (No ring yet: nobody has ever subscribed, and nothing is stored.)
  if (s.slots) store(s, seq, readers, stamp, weight, std::move(item), old);
  if (retains) {
    s.retain_held += weight;
    while (s.retain_held > s.config.retain_bytes && s.retain_from <= seq) {
      unretain_oldest(unretained);
    }
  }
  // Release publishes the slot to subscribers; the light fence orders this store before the
  // loads of waiters and hooks below, against parking subscribers' heavy fence.
  if (s.account) {
    s.published_bytes.store(s.published_bytes.load(std::memory_order_relaxed) + size,
                            std::memory_order_relaxed);
  }
  s.head.store(seq + 1, std::memory_order_release);
  detail::light_fence();

  std::vector<std::shared_ptr<detail::SubscriberState>> hooked;
  if (s.hooked_subs.load(std::memory_order_seq_cst) != 0) {
    for (const auto& sub : s.subs) {
      if (sub->readable.armed()) hooked.push_back(sub);
    }
  }
  lock.unlock();
  s.data.notify_all();
  for (auto& sub : hooked) sub->readable.fire();
  return {SendStatus::ok, DropReason::overflow, 0, {}};
}

template <class T>
void Broadcast<T>::close() {
  State& s = *state_;
  std::vector<std::shared_ptr<detail::SubscriberState>> subs;
  {
    std::lock_guard lock(s.mu);
    s.closed.store(true, std::memory_order_seq_cst);
    subs = s.subs;
  }
  s.data.wake_all();
  s.room.wake_all();
  for (auto& sub : subs) sub->readable.fire();
  s.writable.fire();
}

template <class T>
void Broadcast<T>::on_writable(std::function<void()> fn, std::uint64_t item_bytes) {
  state_->writable.add(std::move(fn));
  detail::heavy_fence();
  if (room_now(item_bytes)) state_->writable.fire();
}

template <class T>
std::uint64_t Broadcast<T>::queue_bytes() const {
  const State& s = *state_;
  if (!s.account) return 0;
  std::lock_guard lock(s.mu);
  const std::uint64_t published = s.published_bytes.load(std::memory_order_acquire);
  std::uint64_t min_consumed = published;
  for (const auto& sub : s.subs)
    min_consumed = std::min(min_consumed, sub->consumed_bytes.load(std::memory_order_acquire));
  return published - min_consumed;
}

template <class T>
std::uint64_t Broadcast<T>::queue_items() const {
  const State& s = *state_;
  std::lock_guard lock(s.mu);
  const std::uint64_t head = s.head.load(std::memory_order_acquire);
  std::uint64_t min_cursor = head;
  for (const auto& sub : s.subs)
    min_cursor = std::min(min_cursor, sub->cursor.load(std::memory_order_acquire));
  return head > min_cursor ? head - min_cursor : 0;
}

template <class T>
BroadcastStats Broadcast<T>::stats() const {
  const State& s = *state_;
  BroadcastStats out;
  out.name = s.config.name;
  out.mode = s.config.mode;
  out.capacity = s.config.capacity;
  out.max_bytes = s.config.max_bytes;
  {
    std::lock_guard lock(state_->mu);
    out.closed = s.closed.load();
    out.published = s.head.load();
    for (const auto& sub : s.subs)
      out.subscribers.push_back(detail::subscriber_stats(*sub, out.published, s.config.capacity,
                                                         s.published_bytes.load()));
  }
  out.evicted = s.evicted.load(std::memory_order_relaxed);
  out.would_block = s.would_block.load(std::memory_order_relaxed);
  out.timeouts = s.timeouts.load(std::memory_order_relaxed);
  out.retained_bytes = s.retained_bytes.load(std::memory_order_relaxed);
  {
    std::lock_guard lock(state_->mu);
    out.retained_from = s.config.retain > 0 ? s.retain_from : out.published;
    if (s.group_kept) out.retained_from = std::min(out.retained_from, s.group_from);
    out.group_items = s.group_kept ? out.published - s.group_from : 0;
  }
  out.blocked_seconds = static_cast<double>(s.blocked_ns.load(std::memory_order_relaxed)) / 1e9;
  out.latency_ns = s.latency.snapshot();
  return out;
}

template <class T>
typename Subscription<T>::Attempt Subscription<T>::try_take(RecvResult<T>& out) {
  auto& s = *state_;
  auto& sub = *sub_;
  // Lossless without eviction: the slot's own sequence number says whether our next item is
  // there, so the publisher's head (a cache line it writes on every publish) is read only when
  // it is not. Across CPUs that is one cache line moved per item instead of two.
  if (s.unguarded_reads) {
    const std::uint64_t cursor = sub.cursor.load(std::memory_order_relaxed);
    if (s.slot_at(cursor).seq.load(std::memory_order_acquire) == cursor) {
      return take_unguarded(out, cursor, cached_head_ > cursor ? cached_head_ - cursor : 1);
    }
  }
  for (;;) {
    if (sub.evicted.load(std::memory_order_acquire)) {
      if (!sub.eviction_reported) {
        sub.eviction_reported = true;
        release_unread();  // (evicted: it reads no more)
        out.status = RecvStatus::evicted;
        out.reason = DropReason::evicted;
      } else {
        out.status = RecvStatus::closed;
      }
      return Attempt::done;
    }
    const std::uint64_t cursor = sub.cursor.load(std::memory_order_relaxed);
    const bool was_closed = s.closed.load(std::memory_order_seq_cst);
    const std::uint64_t head = s.head.load(std::memory_order_seq_cst);
    cached_head_ = head;
    // (cursor may be one past head: the fast path above can take an item the instant its slot
    // is marked ready, before the publisher's store to head.)
    if (head <= cursor) {
      if (!was_closed) return Attempt::empty;
      out.status = RecvStatus::closed;
      return Attempt::done;
    }
    const std::uint64_t lag = head - cursor;
    if (const std::uint64_t lost = sub.lapped(head, cursor, s.config.capacity); lost > 0) {
      // Lapped (lossy; lossless publishers never get `depth` ahead): skip to the `depth` most
      // recent items and say so once, before the next item.
      std::vector<std::optional<T>> released;  // (destroyed after the slots' locks)
      s.pass_range(cursor, cursor + lost, released);
      sub.cursor.store(cursor + lost, std::memory_order_seq_cst);
      sub.lost_slow.store(sub.lost_slow.load(std::memory_order_relaxed) + lost,
                          std::memory_order_relaxed);
      out.status = RecvStatus::gap;
      out.lost = lost;
      out.reason = DropReason::slow_consumer;
      return Attempt::done;
    }
    if (s.unguarded_reads) return take_unguarded(out, cursor, lag);
    auto& slot = s.slot_at(cursor);
    std::int64_t stamp = 0;
    std::uint64_t bytes = 0;
    std::optional<T> released;  // (the last reader's: destroyed after the lock)
    slot.lock.lock();
    if (slot.seq.load(std::memory_order_relaxed) == cursor) {
      out.value.emplace(*slot.item);
      stamp = slot.stamp_ns;
      bytes = slot.bytes;
      released = s.pass(slot);
    }
    slot.lock.unlock();
    if (!out.value) continue;  // overwritten since we read head: we were lapped; go again
    finish_take(out, cursor, lag, stamp, bytes);
    return Attempt::done;
  }
}

template <class T>
typename Subscription<T>::Attempt Subscription<T>::take_unguarded(RecvResult<T>& out,
                                                                  std::uint64_t cursor,
                                                                  std::uint64_t lag) {
  // Lossless without eviction: the publisher does not reuse this slot before our cursor moves
  // past it, so the item is stable: no lock (the acquire load of head ordered its write).
  auto& slot = state_->slot_at(cursor);
  out.value.emplace(*slot.item);
  const std::int64_t stamp = slot.stamp_ns;
  const std::uint64_t bytes = slot.bytes;
  // (before the cursor moves: the publisher reuses the slot only after that)
  [[maybe_unused]] const std::optional<T> released = state_->pass(slot);  // (freed here)
  finish_take(out, cursor, lag, stamp, bytes);
  return Attempt::done;
}

template <class T>
void Subscription<T>::finish_take(RecvResult<T>& out, std::uint64_t cursor, std::uint64_t lag,
                                  std::int64_t stamp, std::uint64_t bytes) {
  auto& s = *state_;
  auto& sub = *sub_;
  if (s.account) {  // before the cursor: a publisher that sees the cursor sees the bytes too
    sub.consumed_bytes.store(sub.consumed_bytes.load(std::memory_order_relaxed) + bytes,
                             std::memory_order_release);
  }
  // Single writer (this subscriber): plain stores, no read-modify-write.
  sub.received.store(sub.received.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  if (lag > sub.max_lag.load(std::memory_order_relaxed)) {
    sub.max_lag.store(lag, std::memory_order_relaxed);
  }
  if (s.config.mode == BroadcastMode::lossless) {
    // Release + light fence: pairs with a waiting publisher's register, heavy fence, re-check.
    sub.cursor.store(cursor + 1, std::memory_order_release);
    detail::light_fence();
    s.room.notify_all();
    if (s.writable.armed()) s.writable.fire();
  } else {
    sub.cursor.store(cursor + 1, std::memory_order_release);
  }
  s.latency.record(stamp);
  out.status = RecvStatus::ok;
}

template <class T>
bool Subscription<T>::readable_now() const noexcept {
  return sub_->evicted.load(std::memory_order_seq_cst) ||
         state_->closed.load(std::memory_order_seq_cst) ||
         state_->head.load(std::memory_order_seq_cst) >
             sub_->cursor.load(std::memory_order_seq_cst);
}

template <class T>
RecvResult<T> Subscription<T>::recv_impl(Clock::time_point deadline, Clock::duration timeout,
                                         bool may_wait) {
  RecvResult<T> out;
  if (!sub_) {
    out.status = RecvStatus::closed;
    return out;
  }
  // Adaptive spinning: a subscriber whose last receive had to park (items come seldom, e.g.
  // 30 fps) parks again after a short spin instead of holding a CPU for the full budget,
  // which would delay the other subscribers being woken for the same item.
  detail::Backoff backoff(parked_last_ ? std::chrono::nanoseconds::zero()
                                       : detail::Backoff::kDefaultBudget);
  bool resolved = false;
  for (;;) {
    if (try_take(out) == Attempt::done) {
      parked_last_ = resolved;
      return out;
    }
    if (!may_wait) {
      out.status = RecvStatus::would_block;
      return out;
    }
    if (backoff.spin()) continue;
    if (!resolved) {
      resolved = true;
      deadline = detail::resolve_deadline(deadline, timeout, Clock::now());
    }
    if (Clock::now() >= deadline) {
      out.status = RecvStatus::timeout;
      return out;
    }
    const std::uint32_t ticket = state_->data.enter();
    detail::heavy_fence();
    if (!readable_now()) state_->data.park(ticket, deadline);
    state_->data.leave();
  }
}

template <class T>
void Subscription<T>::on_readable(std::function<void()> fn) {
  if (!sub_) {
    fn();
    return;
  }
  sub_->readable.add(std::move(fn));
  // From its first hook on, publishers look at this subscription's hooks after each publish.
  if (!sub_->hooked.exchange(true, std::memory_order_seq_cst)) {
    state_->hooked_subs.fetch_add(1, std::memory_order_seq_cst);
  }
  // Publishers move head and look at the hooks under the lock (as close and evictions change
  // what readable_now() reads): re-checking under it, either the publish came first and is seen
  // here, or it comes after and sees the hook. A mutex rather than the asymmetric heavy fence
  // (a membarrier system call that interrupts every CPU): event loops arm hooks all the time.
  bool ready = false;
  {
    std::lock_guard lock(state_->mu);
    ready = readable_now();
  }
  if (ready) sub_->readable.fire();
}

template <class T>
void Subscription<T>::release_unread() {
  if (sub_->released) return;
  sub_->released = true;
  std::vector<std::optional<T>> released;  // (destroyed after the lock)
  std::lock_guard lock(state_->mu);
  state_->pass_range(sub_->cursor.load(std::memory_order_relaxed),
                     state_->head.load(std::memory_order_relaxed), released);
}

template <class T>
void Subscription<T>::unsubscribe() {
  if (!sub_) return;
  std::vector<std::optional<T>> released;  // (destroyed after the lock)
  {
    std::lock_guard lock(state_->mu);
    auto& subs = state_->subs;
    const auto it = std::find(subs.begin(), subs.end(), sub_);
    if (it != subs.end()) {  // not already evicted
      subs.erase(it);
      if (sub_->hooked.load()) state_->hooked_subs.fetch_sub(1, std::memory_order_seq_cst);
    }
    state_->gate = 0;
    // What it did not read is released by it (an evicted one: once, itself).
    if (!sub_->released) {
      sub_->released = true;
      state_->pass_range(sub_->cursor.load(std::memory_order_relaxed),
                         state_->head.load(std::memory_order_relaxed), released);
    }
  }
  state_->room.wake_all();  // a publisher waiting for this subscriber may go on
  if (state_->writable.armed()) state_->writable.fire();
  sub_->readable.fire();
  sub_.reset();
  state_.reset();
}

}  // namespace sluice

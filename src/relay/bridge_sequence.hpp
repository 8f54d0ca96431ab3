// What a receiving relay knows of one origin's items on one cluster topic (relay-internal): the
// sequence it expects next (bridge_codec.hpp), and so what a message that arrives is.
//
// Real-time (core NATS): a message is delivered at once; a jump in the sequence is a loss
// between relays (a slow NATS connection, a reconnect) and is announced before it as a gap of
// exactly the items skipped; one at or below what was delivered is a repeat and is dropped.
// Lossless (JetStream): items go into the topic in the origin's order. One that arrives ahead of
// a missing one is held until the missing one comes (an origin resends what JetStream refused —
// its stream was full — after later items already went in), and repeats (redeliveries) are
// dropped. The receiver acks a held item at once (else held items would fill the stream and keep
// the missing one out): they are bounded by what the origin has in flight (NatsBridge::
// kMaxInFlight). If the missing one does not come within `reorder_timeout` (its relay went away),
// the held ones go in behind a gap of what is missing.
//
// The first message of an origin sets where it starts (a relay that joins mid-stream starts
// there, like a new subscriber: no gap), unless start_at() said where. The lossless receiver
// orders JetStream's messages by their stream sequence with it (a start chosen when its
// consumer is made), and counts each origin's items with realtime(): in the stream's order, a
// jump in an origin's numbering is a loss, and one behind is a repeat.
//
// Thread-safety: not thread-safe; one receiving thread per topic owns it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <utility>

namespace sluice::relay::bridge {

template <class Held>
class OriginSequence {
 public:
  using Clock = std::chrono::steady_clock;

  /// Real-time: the items lost right before `seq` (0: none) if it is to be delivered; nothing
  /// for a repeat.
  std::optional<std::uint64_t> realtime(std::uint64_t seq) {
    if (!known_) {
      known_ = true;
      next_ = seq + 1;
      return 0;
    }
    if (seq < next_) return std::nullopt;
    const std::uint64_t lost = seq - next_;
    next_ = seq + 1;
    return lost;
  }

  /// Lossless: `item` (sequence `seq`) arrived at `now`. Calls deliver(Held&&, lost) for it and
  /// every held item now due, in order (`lost`: items given up on right before it, 0 but after a
  /// timeout). Returns false for a repeat (not delivered, not held: the caller acks and drops it).
  template <class Deliver>
  bool lossless(std::uint64_t seq, Held&& item, Clock::time_point now, Deliver&& deliver) {
    if (!known_) {
      known_ = true;
      next_ = seq;
    }
    if (seq < next_ || held_.contains(seq)) return false;
    if (seq > next_) {
      if (held_.empty()) held_since_ = now;
      held_.emplace(seq, std::move(item));
      return true;
    }
    deliver(std::move(item), std::uint64_t{0});
    next_ = seq + 1;
    flush(now, deliver);
    return true;
  }

  /// Lossless: if items have been held for `timeout` by `now`, gives up on what is missing
  /// before the first of them and delivers what is due. Returns the items given up on.
  template <class Deliver>
  std::uint64_t expire(Clock::time_point now, Clock::duration timeout, Deliver&& deliver) {
    if (held_.empty() || now - held_since_ < timeout) return 0;
    auto first = held_.begin();
    const std::uint64_t lost = first->first - next_;
    deliver(std::move(first->second), lost);
    next_ = first->first + 1;
    held_.erase(first);
    flush(now, deliver);
    return lost;
  }

  /// Would lossless() hold `seq` (an earlier one is missing)?
  bool ahead(std::uint64_t seq) const noexcept { return known_ && seq > next_; }
  /// Is `seq` behind what was delivered (a repeat, unless the numbering started again)?
  bool behind(std::uint64_t seq) const noexcept { return known_ && seq < next_; }
  /// Starts (again) at `seq`, the next to deliver, instead of at the first that arrives; drops
  /// what is held.
  void start_at(std::uint64_t seq) noexcept {
    held_.clear();
    known_ = true;
    next_ = seq;
  }
  std::size_t held() const noexcept { return held_.size(); }
  /// Drops the held items (the caller's `Held` releases what it holds).
  void clear() noexcept {
    held_.clear();
    known_ = false;
  }

 private:
  template <class Deliver>
  void flush(Clock::time_point now, Deliver& deliver) {
    while (!held_.empty() && held_.begin()->first == next_) {
      deliver(std::move(held_.begin()->second), std::uint64_t{0});
      held_.erase(held_.begin());
      ++next_;
    }
    held_since_ = now;  // (what is still held waits afresh from the last progress)
  }

  bool known_ = false;
  std::uint64_t next_ = 0;
  std::map<std::uint64_t, Held> held_;
  Clock::time_point held_since_{};
};

}  // namespace sluice::relay::bridge

// Sluice — reason tags for every item that does not reach a consumer.
//
// The set is closed: every drop anywhere in Sluice (library, relay, wire, metrics) carries one
// of these tags, spelled the same way everywhere ("overflow", "slow_consumer", ...). A drop is
// never silent: whoever drops an item counts it under its reason.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace sluice {

enum class DropReason : std::uint8_t {
  overflow,        // the queue was full and its policy is drop_oldest or drop_newest
  slow_consumer,   // a broadcast subscriber was lapped past its depth
  frame_late,      // a FrameGate refused a frame because the stage behind it is late
  drop_rate,       // a FrameGate refused a frame because the windowed drop rate is too high
  in_flight,       // a FrameGate refused a frame because the stage's in-flight limit is reached
  priority_shed,   // a PriorityChannel shed a lower class to make room
  too_large,       // the item is larger than max_item_bytes
  expired,         // the item outlived its deadline before anyone received it
  evicted,         // the consumer was removed for holding a lossless stream hostage
  no_worker,       // a Dispatcher had no worker that could take the item (none, or all unhealthy)
  worker_failed,   // the workers of a Dispatcher failed the item (errors, timeouts, leaving)
  retention,       // a subscriber came back at a position its stream no longer retains
  relay_restart,   // a subscriber came back to a stream that restarted since (its positions
                   // are not the stream's any more: how many it missed is not known)
  bridge,          // lost between relays (a cluster topic's items on their way through NATS):
                   // never in this relay's topic, so they do not move a subscriber's position
  until_keyframe,  // after a loss, items that depend on an earlier one (a video's delta
                   // frames), skipped up to the next keyframe: they would not decode
};

inline constexpr std::size_t kDropReasonCount = 15;

/// The wire/metrics spelling of a reason, e.g. "slow_consumer".
std::string_view to_string(DropReason reason) noexcept;

/// Inverse of to_string; nullopt for an unknown spelling.
std::optional<DropReason> parse_drop_reason(std::string_view text) noexcept;

/// Every reason, in declaration order (for iterating over counters).
inline constexpr std::array<DropReason, kDropReasonCount> kAllDropReasons = {
    DropReason::overflow,      DropReason::slow_consumer, DropReason::frame_late,
    DropReason::drop_rate,     DropReason::in_flight,     DropReason::priority_shed,
    DropReason::too_large,     DropReason::expired,       DropReason::evicted,
    DropReason::no_worker,     DropReason::worker_failed, DropReason::retention,
    DropReason::relay_restart, DropReason::bridge,        DropReason::until_keyframe,
};

/// Drop counters indexed by reason. A plain value: snapshots copy it.
struct DropCounts {
  std::array<std::uint64_t, kDropReasonCount> by_reason{};

  std::uint64_t& operator[](DropReason r) noexcept {
    return by_reason[static_cast<std::size_t>(r)];
  }
  std::uint64_t operator[](DropReason r) const noexcept {
    return by_reason[static_cast<std::size_t>(r)];
  }
  std::uint64_t total() const noexcept {
    std::uint64_t sum = 0;
    for (auto n : by_reason) sum += n;
    return sum;
  }
};

}  // namespace sluice

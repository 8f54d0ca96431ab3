// Non-template parts of Broadcast: configuration checks, names, stats and messages.
#include "sluice/broadcast.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "sluice/detail/config_error.hpp"

namespace sluice {

namespace {

[[noreturn]] void bad_setting(const BroadcastConfig& c, std::string_view setting,
                              const std::string& value, std::string_view range) {
  detail::throw_bad_setting("broadcast", c.name, setting, value, range);
}

}  // namespace

std::string_view to_string(BroadcastMode mode) noexcept {
  switch (mode) {
    case BroadcastMode::lossy:
      return "lossy";
    case BroadcastMode::lossless:
      return "lossless";
  }
  return "unknown";
}

std::optional<BroadcastMode> parse_broadcast_mode(std::string_view text) noexcept {
  for (auto m : {BroadcastMode::lossy, BroadcastMode::lossless}) {
    if (to_string(m) == text) return m;
  }
  return std::nullopt;
}

void BroadcastConfig::validate() const {
  constexpr std::size_t kMaxCapacity = std::size_t{1} << 20;
  if (name.empty()) bad_setting(*this, "name", "\"\"", "a non-empty name");
  if (capacity < 1 || capacity > kMaxCapacity) {
    bad_setting(*this, "capacity", std::to_string(capacity), "1 to 1048576");
  }
  if (default_depth < 1 || default_depth > capacity) {
    bad_setting(*this, "default_depth", std::to_string(default_depth),
                "1 to capacity = " + std::to_string(capacity));
  }
  if (max_wait.count() < 0) {
    bad_setting(*this, "max_wait", std::to_string(max_wait.count()) + " ns", "≥ 0");
  }
  if (evict_after.count() < 0) {
    bad_setting(*this, "evict_after", std::to_string(evict_after.count()) + " ns",
                "0 (never) or a positive duration");
  }
  if (max_bytes != kUnlimitedBytes && mode == BroadcastMode::lossy) {
    bad_setting(*this, "max_bytes", std::to_string(max_bytes),
                "unlimited in lossy mode (a lossy broadcast is bounded by capacity)");
  }
  if (max_bytes < 1) bad_setting(*this, "max_bytes", "0", ">= 1, or unlimited");
  if (retain > capacity) {
    bad_setting(*this, "retain", std::to_string(retain),
                "0 to capacity = " + std::to_string(capacity));
  }
  if (retain_bytes < 1) bad_setting(*this, "retain_bytes", "0", ">= 1, or unlimited");
  if (group_items > capacity) {
    bad_setting(*this, "group_items", std::to_string(group_items),
                "0 to capacity = " + std::to_string(capacity));
  }
  if (group_bytes < 1) bad_setting(*this, "group_bytes", "0", ">= 1, or unlimited");
  if (evict_after.count() > 0 && mode == BroadcastMode::lossy) {
    bad_setting(*this, "evict_after", std::to_string(evict_after.count()) + " ns",
                "0 in lossy mode (a lossy publisher never waits for a subscriber)");
  }
}

namespace detail {

SubscriberStats subscriber_stats(const SubscriberState& s, std::uint64_t head,
                                 std::uint64_t capacity, std::uint64_t published_bytes) {
  SubscriberStats out;
  out.name = s.name;
  out.depth = s.depth;
  out.joined_at = s.joined_at;
  out.received = s.received.load(std::memory_order_relaxed);
  out.lost[DropReason::slow_consumer] = s.lost_slow.load(std::memory_order_relaxed);
  const std::uint64_t cursor = s.cursor.load(std::memory_order_acquire);
  out.lag = head > cursor ? head - cursor : 0;
  out.lapped = s.lapped(head, cursor, capacity);
  const std::uint64_t consumed = s.consumed_bytes.load(std::memory_order_acquire);
  out.lag_bytes = published_bytes > consumed ? published_bytes - consumed : 0;
  out.max_lag = s.max_lag.load(std::memory_order_relaxed);
  out.evicted = s.evicted.load(std::memory_order_relaxed);
  return out;
}

std::string broadcast_timeout_message(const std::string& broadcast, const SubscriberStats& slowest,
                                      std::size_t capacity, std::size_t max_bytes,
                                      std::chrono::nanoseconds waited) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(waited).count();
  std::string m = "broadcast '" + broadcast + "' (lossless): publish timed out after " +
                  std::to_string(ms) + " ms waiting for subscriber '" + slowest.name + "', " +
                  std::to_string(slowest.lag) + " items behind (depth " +
                  std::to_string(slowest.depth);
  if (max_bytes != kUnlimitedBytes) {
    m += "; " + std::to_string(slowest.lag_bytes) + " bytes behind, max_bytes " +
         std::to_string(max_bytes);
  }
  m += ", received " + std::to_string(slowest.received) +
       "). The slowest subscriber is not keeping up: speed it up, raise its depth (up to "
       "capacity " +
       std::to_string(capacity) + ")";
  if (max_bytes != kUnlimitedBytes) m += " or max_bytes";
  m += ", raise max_wait, or set evict_after to remove subscribers that lag this long";
  return m;
}

std::string broadcast_closed_message(const std::string& broadcast) {
  return "broadcast '" + broadcast + "' is closed";
}

}  // namespace detail
}  // namespace sluice

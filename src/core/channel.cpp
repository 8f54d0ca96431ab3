// Non-template parts of Channel: configuration checks, names, and the messages that tell an
// operator what happened and which setting changes it.
#include "sluice/channel.hpp"

#include <stdexcept>
#include <string>

#include "sluice/detail/config_error.hpp"

namespace sluice {

namespace {

std::string human_bytes(std::uint64_t n) {
  if (n == kUnlimitedBytes) return "unlimited";
  constexpr std::uint64_t kKiB = 1024;
  constexpr std::uint64_t kMiB = kKiB * 1024;
  constexpr std::uint64_t kGiB = kMiB * 1024;
  std::string exact = std::to_string(n) + " B";
  if (n >= kGiB && n % kMiB == 0) return exact + " (" + std::to_string(n / kMiB) + " MiB)";
  if (n >= kMiB) return exact + " (" + std::to_string(n / kKiB) + " KiB)";
  return exact;
}

[[noreturn]] void bad_setting(const ChannelConfig& c, std::string_view setting,
                              const std::string& value, std::string_view range) {
  detail::throw_bad_setting("channel", c.name, setting, value, range);
}

}  // namespace

std::string_view to_string(OverflowPolicy policy) noexcept {
  switch (policy) {
    case OverflowPolicy::block:
      return "block";
    case OverflowPolicy::drop_oldest:
      return "drop_oldest";
    case OverflowPolicy::drop_newest:
      return "drop_newest";
    case OverflowPolicy::reject:
      return "reject";
  }
  return "unknown";
}

std::optional<OverflowPolicy> parse_overflow_policy(std::string_view text) noexcept {
  for (auto p : {OverflowPolicy::block, OverflowPolicy::drop_oldest, OverflowPolicy::drop_newest,
                 OverflowPolicy::reject}) {
    if (to_string(p) == text) return p;
  }
  return std::nullopt;
}

std::string_view to_string(SendStatus status) noexcept {
  switch (status) {
    case SendStatus::ok:
      return "ok";
    case SendStatus::dropped:
      return "dropped";
    case SendStatus::would_block:
      return "would_block";
    case SendStatus::timeout:
      return "timeout";
    case SendStatus::closed:
      return "closed";
  }
  return "unknown";
}

std::string_view to_string(RecvStatus status) noexcept {
  switch (status) {
    case RecvStatus::ok:
      return "ok";
    case RecvStatus::would_block:
      return "would_block";
    case RecvStatus::timeout:
      return "timeout";
    case RecvStatus::closed:
      return "closed";
    case RecvStatus::gap:
      return "gap";
    case RecvStatus::evicted:
      return "evicted";
  }
  return "unknown";
}

void ChannelConfig::validate() const {
  constexpr std::size_t kMaxItems = std::size_t{1} << 32;
  if (name.empty()) bad_setting(*this, "name", "\"\"", "a non-empty name");
  if (max_items < 1 || max_items > kMaxItems) {
    bad_setting(*this, "max_items", std::to_string(max_items), "1 to 4294967296");
  }
  if (max_bytes < 1) {
    bad_setting(*this, "max_bytes", std::to_string(max_bytes), "≥ 1, or unlimited");
  }
  if (max_wait.count() < 0) {
    bad_setting(*this, "max_wait", std::to_string(max_wait.count()) + " ns", "≥ 0");
  }
  if (!account_bytes && max_bytes != kUnlimitedBytes) {
    bad_setting(*this, "max_bytes", std::to_string(max_bytes),
                "unlimited when account_bytes is false (a byte budget needs byte accounting)");
  }
  if (!account_bytes && max_item_bytes != 0) {
    bad_setting(*this, "max_item_bytes", std::to_string(max_item_bytes),
                "0 when account_bytes is false (an item limit needs byte accounting)");
  }
}

namespace detail {

void throw_bad_setting(std::string_view kind, std::string_view name, std::string_view setting,
                       std::string_view value, std::string_view range) {
  std::string m(kind);
  m.append(" '").append(name).append("': invalid ").append(setting).append(" = ").append(value);
  m.append(" (accepted: ").append(range).append(")");
  throw std::invalid_argument(m);
}

std::string channel_timeout_message(const ChannelStats& s, std::uint64_t item_bytes,
                                    std::chrono::nanoseconds waited) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(waited).count();
  std::string m = "channel '" + s.name + "' is full: send of a " + human_bytes(item_bytes) +
                  " item timed out after " + std::to_string(ms) + " ms; queued " +
                  std::to_string(s.len) + " items (max_items " + std::to_string(s.max_items) +
                  ") and " + human_bytes(s.queue_bytes) + " (max_bytes " +
                  human_bytes(s.max_bytes) + ")";
  m += ". The consumer is not keeping up: speed it up, or raise max_bytes / max_items, or "
       "max_wait to wait longer";
  return m;
}

std::string channel_closed_message(std::string_view name) {
  return "channel '" + std::string(name) + "' is closed";
}

std::string channel_too_large_message(std::string_view name, std::uint64_t item_bytes,
                                      std::size_t max_item_bytes) {
  return "channel '" + std::string(name) + "': item of " + human_bytes(item_bytes) +
         " exceeds max_item_bytes " + human_bytes(max_item_bytes) + "; dropped as too_large";
}

std::int64_t now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace detail
}  // namespace sluice

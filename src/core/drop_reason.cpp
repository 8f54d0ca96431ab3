#include "sluice/drop_reason.hpp"

namespace sluice {

namespace {
constexpr std::array<std::string_view, kDropReasonCount> kNames = {
    "overflow",      "slow_consumer", "frame_late",    "drop_rate", "in_flight",
    "priority_shed", "too_large",     "expired",       "evicted",   "no_worker",
    "worker_failed", "retention",     "relay_restart", "bridge",    "until_keyframe",
};
}  // namespace

std::string_view to_string(DropReason reason) noexcept {
  const auto i = static_cast<std::size_t>(reason);
  return i < kNames.size() ? kNames[i] : std::string_view{"unknown"};
}

std::optional<DropReason> parse_drop_reason(std::string_view text) noexcept {
  for (std::size_t i = 0; i < kNames.size(); ++i) {
    if (kNames[i] == text) return kAllDropReasons[i];
  }
  return std::nullopt;
}

}  // namespace sluice

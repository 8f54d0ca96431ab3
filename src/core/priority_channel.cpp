#include "sluice/priority_channel.hpp"

#include <stdexcept>
#include <string>

#include "sluice/detail/config_error.hpp"

namespace sluice {

namespace {

[[noreturn]] void bad_setting(const PriorityChannelConfig& c, std::string_view setting,
                              const std::string& value, std::string_view range) {
  detail::throw_bad_setting("priority channel", c.name, setting, value, range);
}

}  // namespace

std::string_view to_string(Priority p) noexcept {
  switch (p) {
    case Priority::control:
      return "control";
    case Priority::critical:
      return "critical";
    case Priority::important:
      return "important";
    case Priority::bulk:
      return "bulk";
  }
  return "unknown";
}

std::optional<Priority> parse_priority(std::string_view text) noexcept {
  for (auto p : {Priority::control, Priority::critical, Priority::important, Priority::bulk}) {
    if (to_string(p) == text) return p;
  }
  return std::nullopt;
}

void PriorityChannelConfig::validate() const {
  if (name.empty()) bad_setting(*this, "name", "\"\"", "a non-empty name");
  if (max_items < 1) bad_setting(*this, "max_items", "0", ">= 1");
  if (max_bytes < 1) bad_setting(*this, "max_bytes", "0", ">= 1");
  for (std::size_t i = 0; i < kPriorityCount; ++i) {
    const std::string cls = "classes[" + std::string(to_string(static_cast<Priority>(i))) + "]";
    if (classes[i].max_items < 1) bad_setting(*this, cls + ".max_items", "0", ">= 1");
    if (classes[i].max_bytes < 1) bad_setting(*this, cls + ".max_bytes", "0", ">= 1");
  }
  if (max_wait.count() < 0) {
    bad_setting(*this, "max_wait", std::to_string(max_wait.count()) + " ns", ">= 0");
  }
  if (starvation_limit < 1) bad_setting(*this, "starvation_limit", "0", ">= 1");
}

namespace detail {

std::string priority_timeout_message(const std::string& name, Priority p, std::uint64_t len,
                                     std::uint64_t bytes, const ClassBudget& budget,
                                     std::size_t max_items, std::size_t max_bytes,
                                     std::chrono::nanoseconds waited) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(waited).count();
  return "priority channel '" + name + "': " + std::string(to_string(p)) +
         " send timed out after " + std::to_string(ms) + " ms; the " + std::string(to_string(p)) +
         " class holds " + std::to_string(len) + " items (max " + std::to_string(budget.max_items) +
         ") and " + std::to_string(bytes) + " B, the channel allows " + std::to_string(max_items) +
         " items and " + std::to_string(max_bytes) + " B and nothing sheddable is queued. " +
         std::string(to_string(p)) +
         " items are never dropped: speed up the consumer, or raise the class budget, "
         "max_items / max_bytes, or max_wait";
}

}  // namespace detail
}  // namespace sluice

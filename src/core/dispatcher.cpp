#include "sluice/dispatcher.hpp"

#include <string>

#include "sluice/detail/config_error.hpp"

namespace sluice {

namespace {

std::string ns_text(std::chrono::nanoseconds d) {
  return std::to_string(d.count()) + " ns";
}

}  // namespace

std::string_view to_string(WorkerHealth health) noexcept {
  switch (health) {
    case WorkerHealth::healthy:
      return "healthy";
    case WorkerHealth::overloaded:
      return "overloaded";
    case WorkerHealth::slow:
      return "slow";
    case WorkerHealth::unhealthy:
      return "unhealthy";
  }
  return "unknown";
}

std::string_view to_string(RouteStatus status) noexcept {
  switch (status) {
    case RouteStatus::routed:
      return "routed";
    case RouteStatus::dropped:
      return "dropped";
    case RouteStatus::would_block:
      return "would_block";
    case RouteStatus::timeout:
      return "timeout";
    case RouteStatus::closed:
      return "closed";
  }
  return "unknown";
}

void DispatcherConfig::validate() const {
  const auto bad = [&](std::string_view setting, const std::string& value, std::string_view range) {
    detail::throw_bad_setting("dispatcher", name, setting, value, range);
  };
  if (name.empty()) bad("name", "\"\"", "a non-empty name");
  if (overflow == OverflowPolicy::drop_oldest) {
    bad("overflow", "drop_oldest", "block, drop_newest or reject");
  }
  if (max_wait.count() < 0) bad("max_wait", ns_text(max_wait), ">= 0");
  if (!(overload_fraction > 0 && overload_fraction <= 1)) {
    bad("overload_fraction", std::to_string(overload_fraction), "(0, 1]");
  }
  if (slow_latency.count() <= 0) bad("slow_latency", ns_text(slow_latency), "> 0");
  if (unhealthy_after < 1) bad("unhealthy_after", "0", ">= 1");
  if (task_timeout.count() <= 0) bad("task_timeout", ns_text(task_timeout), "> 0");
  if (probe_after.count() < 0) bad("probe_after", ns_text(probe_after), ">= 0");
  if (!(smoothing > 0 && smoothing <= 1)) bad("smoothing", std::to_string(smoothing), "(0, 1]");
  if (max_attempts < 1) bad("max_attempts", "0", ">= 1");
}

void WorkerConfig::validate() const {
  const auto bad = [&](std::string_view setting, const std::string& value, std::string_view range) {
    detail::throw_bad_setting("worker", name, setting, value, range);
  };
  if (name.empty()) bad("name", "\"\"", "a non-empty name");
  if (max_concurrent < 1) bad("max_concurrent", "0", ">= 1");
  if (queue_items < 1) bad("queue_items", "0", ">= 1");
  if (queue_bytes < 1) bad("queue_bytes", "0", ">= 1");
}

}  // namespace sluice

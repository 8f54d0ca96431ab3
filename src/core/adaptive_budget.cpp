#include "sluice/adaptive_budget.hpp"

#include <algorithm>
#include <string>

#include "sluice/detail/config_error.hpp"

namespace sluice {

void AdaptiveBudgetConfig::validate() const {
  const auto bad = [&](std::string_view setting, const std::string& value, std::string_view range) {
    detail::throw_bad_setting("adaptive budget", name, setting, value, range);
  };
  if (name.empty()) bad("name", "\"\"", "a non-empty name");
  if (min_bytes < 1) bad("min_bytes", "0", ">= 1");
  if (max_bytes < min_bytes) {
    bad("max_bytes", std::to_string(max_bytes), ">= min_bytes (" + std::to_string(min_bytes) + ")");
  }
  if (initial_bytes < min_bytes || initial_bytes > max_bytes) {
    bad("initial_bytes", std::to_string(initial_bytes),
        "[min_bytes, max_bytes] = [" + std::to_string(min_bytes) + ", " +
            std::to_string(max_bytes) + "]");
  }
  if (target_latency.count() <= 0) {
    bad("target_latency", std::to_string(target_latency.count()) + " ns", "> 0");
  }
  if (increase_bytes < 1) bad("increase_bytes", "0", ">= 1");
  if (!(decrease_factor > 0 && decrease_factor < 1)) {
    bad("decrease_factor", std::to_string(decrease_factor), "(0, 1)");
  }
  if (interval.count() <= 0) bad("interval", std::to_string(interval.count()) + " ns", "> 0");
}

AdaptiveBudget::AdaptiveBudget(AdaptiveBudgetConfig config)
    : config_((config.validate(), std::move(config))), bytes_(config_.initial_bytes) {
  stats_.name = config_.name;
}

std::size_t AdaptiveBudget::observe(std::chrono::nanoseconds queueing_latency,
                                    Clock::time_point now) {
  MutexLock lock(mu_);
  if (!interval_start_) interval_start_ = now;
  ++stats_.observations;
  // An item queued before the last decrease waited in the queue that decrease is draining: it
  // says nothing about the new budget (one decrease per queue drain, as TCP per round trip).
  if (!last_decrease_ || now - queueing_latency >= *last_decrease_) {
    interval_max_ = std::max(interval_max_, queueing_latency);
    interval_observed_ = true;
  }
  adjust_locked(now);
  return bytes_.load(std::memory_order_relaxed);
}

void AdaptiveBudget::saturated(Clock::time_point now) {
  MutexLock lock(mu_);
  if (!interval_start_) interval_start_ = now;
  interval_saturated_ = true;
  adjust_locked(now);
}

void AdaptiveBudget::adjust_locked(Clock::time_point now) {
  if (now - *interval_start_ < config_.interval) return;
  std::size_t b = bytes_.load(std::memory_order_relaxed);
  if (interval_observed_ && interval_max_ > config_.target_latency) {
    b = std::max(config_.min_bytes,
                 static_cast<std::size_t>(static_cast<double>(b) * config_.decrease_factor));
    ++stats_.decreases;
    last_decrease_ = now;
  } else if (interval_saturated_) {
    b = std::min(config_.max_bytes, b > config_.max_bytes - config_.increase_bytes
                                        ? config_.max_bytes
                                        : b + config_.increase_bytes);
    ++stats_.increases;
  }
  bytes_.store(b, std::memory_order_relaxed);
  stats_.last_interval_max_latency = interval_max_;
  interval_start_ = now;
  interval_max_ = std::chrono::nanoseconds{0};
  interval_saturated_ = false;
  interval_observed_ = false;
}

AdaptiveBudgetStats AdaptiveBudget::stats() const {
  MutexLock lock(mu_);
  AdaptiveBudgetStats s = stats_;
  s.bytes = bytes_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace sluice

#include "sluice/slow_consumer.hpp"

#include <stdexcept>

namespace sluice {

namespace {

[[noreturn]] void bad_setting(std::string_view setting, std::size_t value, std::string_view range) {
  throw std::invalid_argument("slow consumer detector: invalid " + std::string(setting) + " = " +
                              std::to_string(value) + " (accepted: " + std::string(range) + ")");
}

std::string millis(std::chrono::nanoseconds d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

}  // namespace

std::string_view to_string(SlowAction action) noexcept {
  return action == SlowAction::drop ? "drop" : "disconnect";
}

void SlowConsumerConfig::validate() const {
  if (slow_write.count() <= 0) {
    throw std::invalid_argument("slow consumer detector: invalid slow_write = " +
                                std::to_string(slow_write.count()) + " ns (accepted: > 0)");
  }
  if (window_writes < 1) bad_setting("window_writes", window_writes, ">= 1");
  if (slow_writes < 1 || slow_writes > window_writes) {
    bad_setting("slow_writes", slow_writes,
                "1 to window_writes = " + std::to_string(window_writes));
  }
  if (consecutive_timeouts < 1) bad_setting("consecutive_timeouts", consecutive_timeouts, ">= 1");
  if (healthy_after < 1) bad_setting("healthy_after", healthy_after, ">= 1");
}

SlowConsumerDetector::SlowConsumerDetector(SlowConsumerConfig config)
    : config_((config.validate(), config)) {}

std::optional<SinkEvent> SlowConsumerDetector::record_write(std::string_view sink,
                                                            std::chrono::nanoseconds duration) {
  return record(sink, false, duration);
}

std::optional<SinkEvent> SlowConsumerDetector::record_timeout(std::string_view sink) {
  return record(sink, true, std::chrono::nanoseconds::zero());
}

std::optional<SinkEvent> SlowConsumerDetector::record(std::string_view name, bool timed_out,
                                                      std::chrono::nanoseconds duration) {
  MutexLock lock(mu_);
  auto it = sinks_.find(name);
  if (it == sinks_.end()) {
    it = sinks_.emplace(std::string(name), Sink{}).first;
    it->second.window.assign(config_.window_writes, false);
    it->second.health.sink = std::string(name);
  }
  Sink& s = it->second;
  const bool bad = timed_out || duration > config_.slow_write;
  ++s.health.writes;
  if (timed_out) ++s.health.timeouts;
  if (!timed_out) {
    s.health.last_write = duration;
    if (bad) ++s.health.slow_writes;
  }
  // Slide the window of recent writes.
  if (s.filled == s.window.size()) {
    if (s.window[s.next]) --s.slow_in_window;
  } else {
    ++s.filled;
  }
  s.window[s.next] = bad;
  if (bad) ++s.slow_in_window;
  s.next = (s.next + 1) % s.window.size();
  s.consecutive_timeouts = timed_out ? s.consecutive_timeouts + 1 : 0;
  s.consecutive_good = bad ? 0 : s.consecutive_good + 1;

  if (s.consecutive_timeouts == config_.consecutive_timeouts) {  // once per run of timeouts
    if (!s.health.slow) ++s.health.times_slow;
    s.health.slow = true;
    ++s.health.stalls;
    return SinkEvent{
        SinkEvent::Kind::stalled, s.health.sink, config_.stall_action,
        std::to_string(s.consecutive_timeouts) + " write timeouts in a row (no write completed)"};
  }
  if (!s.health.slow) {
    if (s.slow_in_window < config_.slow_writes) return std::nullopt;
    s.health.slow = true;
    ++s.health.times_slow;
    return SinkEvent{SinkEvent::Kind::became_slow, s.health.sink, config_.action,
                     std::to_string(s.slow_in_window) + " of the last " + std::to_string(s.filled) +
                         " writes took over " + millis(config_.slow_write) + " or timed out"};
  }
  if (s.consecutive_good >= config_.healthy_after) {
    s.health.slow = false;
    s.window.assign(s.window.size(), false);
    s.slow_in_window = 0;
    s.filled = 0;
    s.next = 0;
    return SinkEvent{SinkEvent::Kind::recovered, s.health.sink, config_.action,
                     std::to_string(s.consecutive_good) + " good writes in a row"};
  }
  return std::nullopt;
}

void SlowConsumerDetector::remove(std::string_view sink) {
  MutexLock lock(mu_);
  if (auto it = sinks_.find(sink); it != sinks_.end()) sinks_.erase(it);
}

bool SlowConsumerDetector::is_slow(std::string_view sink) const {
  MutexLock lock(mu_);
  const auto it = sinks_.find(sink);
  return it != sinks_.end() && it->second.health.slow;
}

std::vector<SinkHealth> SlowConsumerDetector::health() const {
  MutexLock lock(mu_);
  std::vector<SinkHealth> out;
  out.reserve(sinks_.size());
  for (const auto& [name, s] : sinks_) out.push_back(s.health);
  return out;
}

}  // namespace sluice

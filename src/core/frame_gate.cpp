#include "sluice/frame_gate.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "sluice/detail/config_error.hpp"

namespace sluice {

namespace {

[[noreturn]] void bad_setting(const FrameGateConfig& c, std::string_view setting,
                              const std::string& value, std::string_view range) {
  detail::throw_bad_setting("frame gate", c.name, setting, value, range);
}

// Parses an environment variable holding a fraction; nullopt if unset.
std::optional<double> env_fraction(const char* variable) {
  // Read at configuration time, before threads start (getenv is not thread-safe against setenv).
  const char* text = std::getenv(variable);  // NOLINT(concurrency-mt-unsafe)
  if (text == nullptr) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text, &end);
  if (end == text || *end != '\0' || errno != 0 || !std::isfinite(v) || v <= 0 || v > 1) {
    throw std::invalid_argument(std::string("environment variable ") + variable + "=\"" + text +
                                "\" is not a fraction in (0, 1], e.g. 0.10");
  }
  return v;
}

}  // namespace

std::string_view to_string(GateState state) noexcept {
  switch (state) {
    case GateState::normal:
      return "normal";
    case GateState::warning:
      return "warning";
    case GateState::critical:
      return "critical";
  }
  return "unknown";
}

std::string_view to_string(GateSignal::Kind kind) noexcept {
  return kind == GateSignal::Kind::slow_down ? "slow_down" : "resume";
}

FrameGateConfig& FrameGateConfig::fps(double frames_per_second) {
  if (!(frames_per_second > 0) || !std::isfinite(frames_per_second)) {
    bad_setting(*this, "fps", std::to_string(frames_per_second), "> 0");
  }
  frame_interval = std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 / frames_per_second));
  return *this;
}

FrameGateConfig& FrameGateConfig::from_env() {
  if (auto v = env_fraction("STREAM_DROP_THRESHOLD")) drop_threshold = *v;
  if (auto v = env_fraction("STREAM_SLOWDOWN_THRESHOLD")) slowdown_threshold = *v;
  return *this;
}

void FrameGateConfig::validate() const {
  if (name.empty()) bad_setting(*this, "name", "\"\"", "a non-empty name");
  if (frame_interval.count() <= 0) {
    bad_setting(*this, "frame_interval", std::to_string(frame_interval.count()) + " ns", "> 0");
  }
  if (!(drop_threshold > 0 && drop_threshold <= 1)) {
    bad_setting(*this, "drop_threshold (STREAM_DROP_THRESHOLD)", std::to_string(drop_threshold),
                "(0, 1]");
  }
  if (!(slowdown_threshold >= drop_threshold && slowdown_threshold <= 1)) {
    bad_setting(*this, "slowdown_threshold (STREAM_SLOWDOWN_THRESHOLD)",
                std::to_string(slowdown_threshold),
                "[drop_threshold = " + std::to_string(drop_threshold) + ", 1]");
  }
  if (window_frames < 1) bad_setting(*this, "window_frames", "0", ">= 1");
  if (max_in_flight < 1) bad_setting(*this, "max_in_flight", "0", ">= 1");
  if (!(smoothing > 0 && smoothing <= 1)) {
    bad_setting(*this, "smoothing", std::to_string(smoothing), "(0, 1]");
  }
}

FrameGate::FrameGate(FrameGateConfig config)
    : config_((config.validate(), std::move(config))), window_(config_.window_frames) {
  stats_.name = config_.name;
}

double FrameGate::rate(std::uint64_t drops) const noexcept {
  return window_len_ == 0 ? 0.0 : static_cast<double>(drops) / static_cast<double>(window_len_);
}

Admission FrameGate::admit(std::uint64_t frame_index, Clock::time_point now) {
  MutexLock lock(mu_);
  Admission a;
  a.frame_index = frame_index;
  ++stats_.offered;

  const auto interval = static_cast<double>(config_.frame_interval.count());
  // The stage takes a frame every smoothed / max_in_flight on average (it works on up to
  // max_in_flight at once): it is late when that is longer than the frame interval.
  const double per_frame = smoothed_ns_ / static_cast<double>(config_.max_in_flight);
  Outcome outcome = Outcome::admitted;
  if (in_flight_ >= config_.max_in_flight) {
    outcome = Outcome::pressure;
    a.reason = DropReason::in_flight;
  } else if (per_frame > interval && last_admit_ &&
             static_cast<double>((now - *last_admit_).count()) < per_frame) {
    outcome = Outcome::pressure;
    a.reason = DropReason::frame_late;
  } else if (in_flight_ > 0 && rate(window_pressure_) > config_.drop_threshold) {
    outcome = Outcome::shed;
    a.reason = DropReason::drop_rate;
  }

  // Slide the window.
  if (window_len_ == window_.size()) {
    const Outcome old = window_[window_next_];
    if (old == Outcome::pressure) --window_pressure_;
    if (old == Outcome::shed) --window_shed_;
  } else {
    ++window_len_;
  }
  window_[window_next_] = outcome;
  window_next_ = (window_next_ + 1) % window_.size();
  if (outcome == Outcome::pressure) ++window_pressure_;
  if (outcome == Outcome::shed) ++window_shed_;

  if (outcome == Outcome::admitted) {
    a.admitted = true;
    ++in_flight_;
    ++stats_.admitted;
    last_admit_ = now;
  } else {
    ++stats_.dropped[a.reason];
  }

  // State and signals, from all drops in the window.
  const double drop_rate = rate(window_pressure_ + window_shed_);
  if (drop_rate > config_.slowdown_threshold) {
    state_ = GateState::critical;
    if (slow_down_armed_) {
      slow_down_armed_ = false;
      a.signal = GateSignal{GateSignal::Kind::slow_down, drop_rate};
      ++stats_.slow_downs;
    }
  } else if (drop_rate >= config_.drop_threshold) {
    state_ = GateState::warning;
  } else {
    state_ = GateState::normal;
    if (!slow_down_armed_) {
      slow_down_armed_ = true;
      a.signal = GateSignal{GateSignal::Kind::resume, drop_rate};
      ++stats_.resumes;
    }
  }
  a.state = state_;
  a.drop_rate = drop_rate;
  return a;
}

void FrameGate::done(std::uint64_t /*frame_index*/, std::chrono::nanoseconds processing_time) {
  MutexLock lock(mu_);
  if (in_flight_ > 0) --in_flight_;
  ++stats_.done;
  const auto t = static_cast<double>(processing_time.count());
  smoothed_ns_ =
      smoothed_ns_ == 0 ? t : config_.smoothing * t + (1 - config_.smoothing) * smoothed_ns_;
}

void FrameGate::abandon(std::uint64_t /*frame_index*/) {
  MutexLock lock(mu_);
  if (in_flight_ > 0) --in_flight_;
  ++stats_.abandoned;
}

FrameGateStats FrameGate::stats() const {
  MutexLock lock(mu_);
  FrameGateStats s = stats_;
  s.state = state_;
  s.drop_rate = rate(window_pressure_ + window_shed_);
  s.in_flight = in_flight_;
  s.smoothed_processing = std::chrono::nanoseconds(static_cast<std::int64_t>(smoothed_ns_));
  return s;
}

}  // namespace sluice

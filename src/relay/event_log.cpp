#include "event_log.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <array>
#include <atomic>
#include <ctime>
#include <map>
#include <memory>
#include <mutex>

#include "sluice/detail/thread_annotations.hpp"

namespace sluice::relay::log {

namespace {

constexpr std::array<std::string_view, 6> kLevels = {"trace", "debug", "info",
                                                     "warn",  "error", "off"};

// spdlog renders nothing of its own ("%v"): the line is built here, in the chosen format, so
// that JSON lines stay JSON.
struct Logger {
  Logger() : out(spdlog::stderr_logger_mt("sluice-relay")) {
    out->set_pattern("%v");
    out->set_level(spdlog::level::info);
    out->flush_on(spdlog::level::trace);  // (an operator tails it; a crash loses nothing)
  }
  std::shared_ptr<spdlog::logger> out;
  std::atomic<Level> level{Level::info};
  std::atomic<Format> format{Format::json};
  struct Window {
    std::chrono::steady_clock::time_point start{};
    std::size_t passed = 0;
    std::size_t suppressed = 0;
  };
  Mutex mu;
  std::map<std::string, Window, std::less<>> windows SLUICE_GUARDED_BY(mu);
};

Logger& logger() {
  static Logger l;
  return l;
}

spdlog::level::level_enum spd(Level level) {
  static constexpr std::array<spdlog::level::level_enum, 6> kMap = {
      spdlog::level::trace, spdlog::level::debug, spdlog::level::info,
      spdlog::level::warn,  spdlog::level::err,   spdlog::level::off};
  return kMap[static_cast<std::size_t>(level)];
}

std::string now_utc() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  std::array<char, 40> buf{};
  const std::size_t n = std::strftime(buf.data(), buf.size(), "%Y-%m-%dT%H:%M:%S", &tm);
  std::array<char, 8> frac{};
  std::snprintf(frac.data(), frac.size(), ".%03dZ", static_cast<int>(ms));
  return std::string(buf.data(), n) + frac.data();
}

// A logfmt value: bare if it is one word of safe characters, else quoted with escapes.
std::string logfmt_value(const nlohmann::json& v) {
  std::string text = v.is_string()
                         ? v.get<std::string>()
                         : v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  const bool bare = !text.empty() && text.find_first_of(" \"=\\\n\r\t") == std::string::npos;
  if (bare) return text;
  return nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

void configure(Level level, Format format) {
  Logger& l = logger();
  l.level = level;
  l.format = format;
  l.out->set_level(spd(level));
}

bool enabled(Level level) {
  const Level at = logger().level.load(std::memory_order_relaxed);
  return at != Level::off && level >= at;
}

void event(Level level, std::string_view event, nlohmann::json fields) {
  if (!enabled(level)) return;
  Logger& l = logger();
  std::size_t suppressed = 0;
  {
    MutexLock lock(l.mu);
    auto it = l.windows.find(event);
    if (it == l.windows.end()) it = l.windows.emplace(std::string(event), Logger::Window{}).first;
    auto& w = it->second;
    const auto now = std::chrono::steady_clock::now();
    if (now - w.start >= kLogWindow) {
      w.start = now;
      w.passed = 0;
    }
    if (w.passed >= kLogBurst) {
      ++w.suppressed;
      return;
    }
    ++w.passed;
    suppressed = std::exchange(w.suppressed, 0);
  }
  if (suppressed > 0) fields["suppressed"] = suppressed;
  std::string line;
  if (l.format.load(std::memory_order_relaxed) == Format::json) {
    nlohmann::json j = {
        {"time", now_utc()}, {"level", to_string(level)}, {"event", std::string(event)}};
    for (auto& [k, v] : fields.items()) j[k] = std::move(v);
    line = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    line = "time=" + now_utc() + " level=" + std::string(to_string(level)) +
           " event=" + logfmt_value(std::string(event));
    for (const auto& [k, v] : fields.items()) line += " " + k + "=" + logfmt_value(v);
  }
  l.out->log(spd(level), line);
}

bool parse_level(std::string_view text, Level& out) {
  for (std::size_t i = 0; i < kLevels.size(); ++i) {
    if (kLevels[i] == text) {
      out = static_cast<Level>(i);
      return true;
    }
  }
  return false;
}

bool parse_format(std::string_view text, Format& out) {
  if (text == "json") {
    out = Format::json;
  } else if (text == "logfmt") {
    out = Format::logfmt;
  } else {
    return false;
  }
  return true;
}

std::string_view to_string(Level level) {
  return kLevels[static_cast<std::size_t>(level)];
}

std::string_view to_string(Format format) {
  return format == Format::json ? "json" : "logfmt";
}

}  // namespace sluice::relay::log

// The relay's log (relay-internal): one line per event an operator should see — sessions
// opened and closed, refusals, slow and stalled subscribers, evictions, throttling, stage
// workers' health, and gRPC's own lines — written through spdlog to stderr as JSON
// ({"time":…,"level":…,"event":…, fields…}) or logfmt (time=… level=… event=… key=value),
// at or above the configured level ([log] level, format; docs/operations.md).
//
// Bounded: a client cannot flood it. Of each event name at most kLogBurst lines pass per
// kLogWindow; the rest are counted, and the next line of that name that passes says how many
// were left out ("suppressed": n). What was left out is still in the metrics.
//
// Thread-safety: everything, from any thread. The level and format are the process's (one
// logger, as gRPC's log function is one): the last relay started sets them.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace sluice::relay::log {

enum class Level : std::uint8_t { trace, debug, info, warn, error, off };
enum class Format : std::uint8_t { json, logfmt };

inline constexpr std::size_t kLogBurst = 20;
inline constexpr std::chrono::seconds kLogWindow{10};

/// The level and format of every line from now on.
void configure(Level level, Format format);
/// Would an event at `level` be written? (To skip building its fields.)
bool enabled(Level level);
/// One event: `event` names it, `fields` (a JSON object) say what happened.
void event(Level level, std::string_view event, nlohmann::json fields = nlohmann::json::object());

/// "info" -> Level::info; nullopt-like: returns false for an unknown name.
bool parse_level(std::string_view text, Level& out);
bool parse_format(std::string_view text, Format& out);
std::string_view to_string(Level level);
std::string_view to_string(Format format);

}  // namespace sluice::relay::log

#include "request_decode.hpp"

#include <google/protobuf/stubs/logging.h>

#include <algorithm>
#include <mutex>
#include <string>

#include "event_log.hpp"

namespace sluice::relay {

namespace {

// The lines protobuf logs on this thread while a decode runs (null when none runs).
thread_local std::string* t_captured = nullptr;

void capture(google::protobuf::LogLevel level, const char* file, int line,
             const std::string& message) {
  if (t_captured != nullptr) {
    t_captured->append(message);
    return;
  }
  // Anything else protobuf says goes to the relay's log, in its format (bounded as every event).
  const auto at = level == google::protobuf::LOGLEVEL_INFO      ? log::Level::info
                  : level == google::protobuf::LOGLEVEL_WARNING ? log::Level::warn
                                                                : log::Level::error;
  log::event(at, "protobuf", {{"file", file}, {"line", line}, {"message", message}});
}

// The field protobuf names in "String field 'sluice.v1.Item.topic' contains invalid UTF-8
// data ...", without the package: "Item.topic"; empty if the line names none.
std::string utf8_field(const std::string& log) {
  if (log.find("invalid UTF-8") == std::string::npos) return {};
  const auto open = log.find('\'');
  const auto close = open == std::string::npos ? open : log.find('\'', open + 1);
  if (close == std::string::npos) return {};
  std::string field = log.substr(open + 1, close - open - 1);
  if (field.rfind("sluice.v1.", 0) == 0) field.erase(0, 10);
  return field;
}

}  // namespace

void capture_protobuf_log() {
  static std::once_flag installed;
  std::call_once(installed, [] { google::protobuf::SetLogHandler(&capture); });
}

std::uint64_t max_request_bytes(const RelayConfig& config) noexcept {
  return std::max<std::uint64_t>(config.max_frame_bytes, std::uint64_t{1} << 20) + (2 << 20);
}

std::optional<Refusal> decode_request(std::string_view type, std::uint64_t size,
                                      std::uint64_t max_bytes, const std::function<bool()>& parse) {
  if (size > max_bytes) {
    return Refusal{RefusalKind::frame_too_big,
                   "a " + std::string(type) + " of " + std::to_string(size) +
                       " bytes exceeds the largest request, " + std::to_string(max_bytes) +
                       " bytes (a frame at STREAM_MAX_FRAME_SIZE_MB, or 1 MiB of items, plus "
                       "2 MiB)",
                   "STREAM_MAX_FRAME_SIZE_MB"};
  }
  capture_protobuf_log();
  std::string lines;
  t_captured = &lines;
  const bool ok = parse();
  t_captured = nullptr;
  if (ok) return std::nullopt;
  if (const std::string field = utf8_field(lines); !field.empty())
    return Refusal{RefusalKind::bad_request,
                   "a " + std::string(type) + " whose field " + field + " is not valid UTF-8"};
  return Refusal{RefusalKind::bad_request,
                 "a malformed " + std::string(type) + " (not a protobuf message of that type)"};
}

}  // namespace sluice::relay

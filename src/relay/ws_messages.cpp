#include "ws_messages.hpp"

#include <nlohmann/json.hpp>

namespace sluice::relay {

namespace {

// (what the peer sent, cut to 100 bytes for an error's quote)
std::string quote(std::string_view bytes) {
  return std::string(bytes.substr(0, 100));
}

// What the session's header holds, for an error.
std::string header_text(std::size_t header_bytes) {
  return header_bytes >= ws::kFlaggedFrameHeaderBytes
             ? "with a 24-byte header (frame_index u64, timestamp_ns i64, flags u32, reserved "
               "u32, little-endian)"
             : "with a 16-byte header (frame_index u64, timestamp_ns i64, little-endian)";
}

}  // namespace

std::variant<ws::FrameHeader, WsProblem> publisher_message(bool text, std::string_view bytes,
                                                           std::size_t header_bytes) {
  if (text) {
    const bool json = !nlohmann::json::parse(bytes, nullptr, false).is_discarded();
    return WsProblem{json ? "unknown control event (publishers send none yet): " + quote(bytes)
                          : std::string("invalid JSON in a text frame")};
  }
  if (bytes.size() < header_bytes) {
    return WsProblem{"a frame of " + std::to_string(bytes.size()) + " bytes: binary frames start " +
                     header_text(header_bytes)};
  }
  return ws::decode(bytes.data(), header_bytes);
}

std::variant<ws::FrameHeader, WsWorkerError, WsProblem> worker_message(bool text,
                                                                       std::string_view bytes,
                                                                       std::size_t header_bytes) {
  if (!text) {
    if (bytes.size() < header_bytes) {
      return WsProblem{"a result of " + std::to_string(bytes.size()) +
                       " bytes: results start with the frame's header, " +
                       header_text(header_bytes)};
    }
    return ws::decode(bytes.data(), header_bytes);
  }
  const auto j = nlohmann::json::parse(bytes, nullptr, false);
  if (j.is_discarded()) return WsProblem{"invalid JSON in a text frame"};
  if (!j.is_object() || !j.contains("frame_index") || !j["frame_index"].is_number_unsigned() ||
      !j.contains("error") || !j["error"].is_string()) {
    return WsProblem{
        R"(unknown event: workers send {"frame_index":N,"error":"..."} or a binary result: )" +
        quote(bytes)};
  }
  return WsWorkerError{j["frame_index"].get<std::uint64_t>(), j["error"].get<std::string>()};
}

}  // namespace sluice::relay

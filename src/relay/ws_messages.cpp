#include "ws_messages.hpp"

#include <nlohmann/json.hpp>

namespace sluice::relay {

namespace {

// (what the peer sent, cut to 100 bytes for an error's quote)
std::string quote(std::string_view bytes) {
  return std::string(bytes.substr(0, 100));
}

}  // namespace

std::variant<ws::FrameHeader, WsProblem> publisher_message(bool text, std::string_view bytes) {
  if (text) {
    const bool json = !nlohmann::json::parse(bytes, nullptr, false).is_discarded();
    return WsProblem{json ? "unknown control event (publishers send none yet): " + quote(bytes)
                          : std::string("invalid JSON in a text frame")};
  }
  if (bytes.size() < ws::kFrameHeaderBytes) {
    return WsProblem{"a frame of " + std::to_string(bytes.size()) +
                     " bytes: binary frames start with a 16-byte header "
                     "(frame_index u64, timestamp_ns i64, little-endian)"};
  }
  return ws::decode(bytes.data());
}

std::variant<ws::FrameHeader, WsWorkerError, WsProblem> worker_message(bool text,
                                                                       std::string_view bytes) {
  if (!text) {
    if (bytes.size() < ws::kFrameHeaderBytes) {
      return WsProblem{"a result of " + std::to_string(bytes.size()) +
                       " bytes: results start with the frame's 16-byte header"};
    }
    return ws::decode(bytes.data());
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

// Why the relay refuses a request or ends a session, as a value: what kind of refusal, the
// message for the client (naming the setting that changes the outcome, where one does), and
// that setting. Roles and admission produce refusals; each transport turns one into its own
// terms through the one table here (refusal_table(): gRPC status code, HTTP status before a
// WebSocket upgrade, WebSocket close code after it). docs/protocol.md's refusal table is this
// table, checked by a test (RefusalTable.DocsListEveryKindAsTheCodeMapsIt).
//
// Plain values; no state, no allocation but the strings.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace sluice::relay {

enum class RefusalKind : std::uint8_t {
  bad_request,        // malformed input: topic name, depth, concurrency, message shape
  frame_too_big,      // a frame over STREAM_MAX_FRAME_SIZE_MB
  not_found,          // no such topic (auto_create off), no such stage, no such endpoint
  too_many_sessions,  // max_sessions sessions already open
  too_many_topics,    // a new topic over limits.max_topics
  unauthenticated,    // no token, or one that names no principal
  permission_denied,  // the principal may not do that on that topic; a page's origin refused
  misdirected,        // an HTTP request for a host name the relay does not answer to
  topic_full,         // a lossless topic stayed full for max_wait_ms
  events_unread,      // the peer left its events unread past the bound
  slow_consumer,      // a subscriber whose sends stopped completing
  evicted,            // the topic removed the subscriber (it held a lossless topic hostage)
  stopping,           // the relay is shutting down
  internal,           // the relay could not serve the request (a system call failed)
  // What a WebRTC (WHEP) viewer is refused before its answer:
  unsupported_media,  // the topic's video is no codec WebRTC viewers get (VP8, H.264)
  offer_refused,      // the viewer's SDP offer cannot receive the topic's video
  answer_timeout,     // no keyframe, or no WebRTC answer, within whep.answer_timeout_ms
  topic_gone,         // the topic closed while the viewer waited for its answer
};

inline constexpr std::size_t kRefusalKinds = 18;

struct Refusal {
  Refusal() = default;
  Refusal(RefusalKind k, std::string m, std::string s = {}, std::string b = {})
      : kind(k), message(std::move(m)), setting(std::move(s)), brief(std::move(b)) {}

  RefusalKind kind = RefusalKind::bad_request;
  std::string message;  // for the client: what happened, the values, the setting
  std::string setting;  // the setting that changes the outcome ("" if none)
  std::string brief;    // a short form for a WebSocket close frame ("": see close_reason())
};

/// How each transport says a kind. `grpc_code` is a grpc::StatusCode value (this header
/// carries no gRPC types); `close_reason` is the WebSocket close reason when the message is
/// longer than a close frame holds (123 bytes).
struct RefusalCodes {
  RefusalKind kind;
  std::string_view name;  // as docs/protocol.md spells it
  int grpc_code;
  std::string_view grpc_name;
  unsigned http_status;
  std::uint16_t ws_close;
  std::string_view close_reason;
};

/// The table, one row per kind, in RefusalKind order.
const std::array<RefusalCodes, kRefusalKinds>& refusal_table() noexcept;
const RefusalCodes& codes(RefusalKind kind) noexcept;
inline std::string_view to_string(RefusalKind kind) noexcept {
  return codes(kind).name;
}

/// A WebSocket close reason for `r`: its brief form, or its message if it fits a close frame,
/// else the kind's short reason and the setting.
std::string close_reason(const Refusal& r);

}  // namespace sluice::relay

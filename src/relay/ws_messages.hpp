// What a WebSocket peer sends the relay, decoded (relay-internal; no I/O, no state), so that
// the sessions only move bytes and the rules are in one place that a fuzzer drives
// (fuzz/ws_messages_fuzz.cpp).
//
// - A publisher sends binary frames: the session's header (ws::FrameHeader: 16 bytes, or 24
//   with the item's flags when it asked for ?header=24) and the payload.
//   Publishers send no text events yet; a text message is answered with an error event.
// - A worker sends binary results (the frame's header, then the result) or the text event
//   {"frame_index":N,"error":"..."} for a frame it could not process.
//
// Anything else decodes to the `error` text the relay sends back ({"error": ...}); the session
// goes on. An error quotes at most 100 bytes of what was sent (made valid UTF-8 when sent).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include "sluice/relay/protocol.hpp"

namespace sluice::relay {

/// Why a message was not understood: the text of the error event that answers it.
struct WsProblem {
  std::string error;
};

/// A worker's report that it could not process a frame.
struct WsWorkerError {
  std::uint64_t sequence = 0;
  std::string error;
};

/// A publisher's message: a frame's header (its payload follows it in `bytes`), or why not.
/// `header_bytes`: the session's, ws::kFrameHeaderBytes or ws::kFlaggedFrameHeaderBytes.
std::variant<ws::FrameHeader, WsProblem> publisher_message(bool text, std::string_view bytes,
                                                           std::size_t header_bytes);

/// A worker's message: a result's header (the result follows it), an error, or why neither.
/// (A result's flags are not used: the result is an item of its own, without flags.)
std::variant<ws::FrameHeader, WsWorkerError, WsProblem> worker_message(bool text,
                                                                       std::string_view bytes,
                                                                       std::size_t header_bytes);

}  // namespace sluice::relay

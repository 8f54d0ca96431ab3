// Sluice — the relay's wire constants, shared by the relay and every client
// (docs/protocol.md): the item a topic carries, the gRPC trailing metadata a Publish call ends
// with, and the header of a WebSocket binary frame.
//
// Every binary frame, in both directions, is a header followed by the payload:
//   bytes 0-7   frame_index   unsigned 64-bit, little-endian (the producer's numbering: an
//                             item's sequence)
//   bytes 8-15  timestamp_ns  signed 64-bit, little-endian (the producer's clock; 0: the relay
//                             stamps arrival, Unix time in ns)
// and, in a session opened with ?header=24 (both directions of that session):
//   bytes 16-19 flags         unsigned 32-bit, little-endian (kItemDelta, kItemDiscardable)
//   bytes 20-23 reserved      zero when sent, ignored when read
// Plain values and functions over bytes; no allocation, no state.
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "sluice/buffer.hpp"

namespace sluice {

/// Trailing metadata of a Publish call that put at least one item into its topic: the last
/// such item's sequence number (decimal). A producer whose call ended early resends only the
/// items after it (what sluice::client::Publisher does).
inline constexpr std::string_view kPublishedThroughKey = "sluice-published-through";

/// Metadata of a Publish call (WebSocket: the `producer` query parameter): the producer's id,
/// at most 128 bytes, the same across its reconnections. An item whose sequence number is at or
/// below the last one the topic has from this producer is acked and not published again, so a
/// producer may resend whatever it has no ack for: the topic gets each item once. Sequence
/// numbers must increase.
inline constexpr std::string_view kProducerKey = "sluice-producer";

/// Initial metadata of a Subscribe call: the topic's epoch and the subscriber's start position
/// (docs/protocol.md, Resuming).
inline constexpr std::string_view kEpochKey = "sluice-epoch";
inline constexpr std::string_view kPositionKey = "sluice-position";

/// The clock of RelayMessage::timestamp_ns when the relay or a client stamps an item: Unix
/// time in nanoseconds (comparable across processes on one host).
inline std::int64_t unix_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// An item depends on an earlier one (a video's delta frame): after a loss a subscriber skips
/// such items up to the next one without the flag (a keyframe), announced as an until_keyframe
/// gap. A producer that never sets it: every item stands alone.
inline constexpr std::uint32_t kItemDelta = 1;
/// Nothing depends on the item (a disposable frame).
inline constexpr std::uint32_t kItemDiscardable = 2;

/// One item of a topic, as the relay stores it and every transport carries it.
struct RelayMessage {
  Buffer payload;
  std::uint64_t sequence = 0;     // the producer's numbering (WebSocket: frame_index)
  std::int64_t timestamp_ns = 0;  // the producer's clock (Unix ns), passed through
  /// A cluster topic's items lost between relays just before this one: each subscriber is told
  /// (a gap, reason `bridge`) before it gets this item. 0 but after a loss.
  std::uint32_t bridge_lost = 0;
  /// It came from another relay (through NATS): the bridge does not send it back out.
  bool from_bridge = false;
  /// kItemDelta, kItemDiscardable (relay.proto's Item.flags), as the producer set them.
  std::uint32_t flags = 0;
  /// What a topic's byte budget counts: the payload.
  std::size_t size_bytes() const noexcept { return payload.size(); }
};

/// A delta item depends on an earlier one: a topic keeps the current group (the latest
/// keyframe and the delta items after it) so that a newcomer starts at its keyframe.
inline bool depends_on_earlier(const RelayMessage& m) noexcept {
  return (m.flags & kItemDelta) != 0;
}

namespace ws {

/// A binary frame's header: frame_index (u64), timestamp_ns (i64), little-endian.
inline constexpr std::size_t kFrameHeaderBytes = 16;
/// The header a session asks for with `?header=24`: the same 16 bytes, then the item's flags
/// (u32, kItemDelta, kItemDiscardable) and 4 reserved bytes (sent as zero, ignored when read).
/// The header length is one per session, both directions; 16 stays the default.
inline constexpr std::size_t kFlaggedFrameHeaderBytes = 24;

/// A browser's WebSocket carries its token as a subprotocol: it offers {kSubprotocol,
/// kBearerSubprotocol + token}, and the relay answers kSubprotocol.
inline constexpr std::string_view kSubprotocol = "sluice";
inline constexpr std::string_view kBearerSubprotocol = "sluice.bearer.";

struct FrameHeader {
  std::uint64_t index = 0;  // the item's sequence
  std::int64_t timestamp_ns = 0;
  std::uint32_t flags = 0;  // only in a 24-byte header (0 from a 16-byte one)
};

/// The 24-byte header (with flags) for `h`.
inline std::array<unsigned char, kFlaggedFrameHeaderBytes> encode_flagged(
    const FrameHeader& h) noexcept {
  std::array<unsigned char, kFlaggedFrameHeaderBytes> out{};
  const auto stamp = static_cast<std::uint64_t>(h.timestamp_ns);
  for (std::size_t i = 0; i < 8; ++i) {
    out[i] = static_cast<unsigned char>(h.index >> (8 * i));
    out[8 + i] = static_cast<unsigned char>(stamp >> (8 * i));
  }
  for (std::size_t i = 0; i < 4; ++i) out[16 + i] = static_cast<unsigned char>(h.flags >> (8 * i));
  return out;
}

/// The 16-byte header for `h` (its flags are not carried): encode_flagged's first 16 bytes.
inline std::array<unsigned char, kFrameHeaderBytes> encode(const FrameHeader& h) noexcept {
  const auto flagged = encode_flagged(h);
  std::array<unsigned char, kFrameHeaderBytes> out{};
  std::copy_n(flagged.begin(), kFrameHeaderBytes, out.begin());
  return out;
}

/// The header at the start of a frame of at least `header_bytes` (kFrameHeaderBytes or
/// kFlaggedFrameHeaderBytes) bytes.
inline FrameHeader decode(const void* frame,
                          std::size_t header_bytes = kFrameHeaderBytes) noexcept {
  const auto* in = static_cast<const unsigned char*>(frame);
  std::uint64_t index = 0;
  std::uint64_t stamp = 0;
  for (std::size_t i = 0; i < 8; ++i) {
    index |= std::uint64_t{in[i]} << (8 * i);
    stamp |= std::uint64_t{in[8 + i]} << (8 * i);
  }
  std::uint32_t flags = 0;
  if (header_bytes >= kFlaggedFrameHeaderBytes) {
    for (std::size_t i = 0; i < 4; ++i) flags |= std::uint32_t{in[16 + i]} << (8 * i);
  }
  return {index, static_cast<std::int64_t>(stamp), flags};
}

}  // namespace ws

}  // namespace sluice

// Sluice — the header of a WebSocket binary frame on the relay (docs/protocol.md).
//
// Every binary frame, in both directions, is a 16-byte header followed by the payload:
//   bytes 0-7   frame_index   unsigned 64-bit, little-endian (the producer's numbering)
//   bytes 8-15  timestamp_ns  signed 64-bit, little-endian (the producer's clock; 0: the relay
//                             stamps arrival, Unix time in ns)
// Plain functions over bytes; no allocation, no state.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace sluice::ws {

inline constexpr std::size_t kFrameHeaderBytes = 16;

struct FrameHeader {
  std::uint64_t index = 0;
  std::int64_t timestamp_ns = 0;
};

/// The 16 header bytes for `h`.
inline std::array<unsigned char, kFrameHeaderBytes> encode(const FrameHeader& h) noexcept {
  std::array<unsigned char, kFrameHeaderBytes> out{};
  const auto stamp = static_cast<std::uint64_t>(h.timestamp_ns);
  for (std::size_t i = 0; i < 8; ++i) {
    out[i] = static_cast<unsigned char>(h.index >> (8 * i));
    out[8 + i] = static_cast<unsigned char>(stamp >> (8 * i));
  }
  return out;
}

/// The header at the start of a frame of at least kFrameHeaderBytes bytes.
inline FrameHeader decode(const void* frame) noexcept {
  const auto* in = static_cast<const unsigned char*>(frame);
  std::uint64_t index = 0;
  std::uint64_t stamp = 0;
  for (std::size_t i = 0; i < 8; ++i) {
    index |= std::uint64_t{in[i]} << (8 * i);
    stamp |= std::uint64_t{in[8 + i]} << (8 * i);
  }
  return {index, static_cast<std::int64_t>(stamp)};
}

}  // namespace sluice::ws

// How a cluster topic's item travels between relays through NATS (relay-internal; the layout is
// in docs/cluster.md): a 40-byte header in front of the payload, in one NATS message.
//
//   bytes 0-1    magic "SB"
//   byte  2      version (1)
//   byte  3      flags (bit 0: lossless, carried by JetStream; bit 1: one of a batch; bits 2
//                and 3: the item's own flags, delta and discardable — Item.flags)
//   bytes 4-7    a batch's record: its payload's length; else 0
//   bytes 8-15   origin      the sending relay's run (random; a restarted relay is another origin)
//   bytes 16-23  sequence    the origin's count of this topic's items it sent, from 1: a receiver
//                            sees a loss between relays as a jump (core NATS drops on a slow
//                            connection or a reconnect) and a repeat as a duplicate (JetStream
//                            redelivery)
//   bytes 24-31  item        the item's own sequence (the producer's numbering)
//   bytes 32-39  timestamp   the item's timestamp_ns
// Items travel in batches: one NATS message holds records, each this header (bit 1 set, the
// payload's length in bytes 4-7) and that payload, one after the other. A lossless batch is one
// JetStream message; a real-time one is what the sending relay found waiting when it sent (no
// waiting for more). A message of one item may also be just the header and the payload (bit 1
// clear), which is how relays before batching sent real-time items.
// All little-endian. Plain functions over bytes; no allocation, no state. The decoder takes any
// bytes a peer sends (fuzzed: fuzz/bridge_codec_fuzz.cpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>

namespace sluice::relay::bridge {

inline constexpr std::size_t kHeaderBytes = 40;
inline constexpr std::uint8_t kVersion = 1;
inline constexpr std::uint8_t kLossless = 1;
inline constexpr std::uint8_t kBatched = 2;
inline constexpr std::uint8_t kItemFlagsShift = 2;  // the item's flags (2 bits) above these
inline constexpr std::uint8_t kItemFlags = 3 << kItemFlagsShift;

struct Header {
  std::uint8_t flags = 0;
  std::uint32_t length = 0;  // kBatched: the record's payload bytes
  std::uint64_t origin = 0;
  std::uint64_t sequence = 0;
  std::uint64_t item_sequence = 0;
  std::int64_t timestamp_ns = 0;
};

namespace detail {
inline void put64(unsigned char* out, std::uint64_t v) noexcept {
  for (std::size_t i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}
inline std::uint64_t get64(const unsigned char* in) noexcept {
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < 8; ++i) v |= std::uint64_t{in[i]} << (8 * i);
  return v;
}
}  // namespace detail

inline std::array<unsigned char, kHeaderBytes> encode(const Header& h) noexcept {
  std::array<unsigned char, kHeaderBytes> out{};
  out[0] = 'S';
  out[1] = 'B';
  out[2] = kVersion;
  out[3] = h.flags;
  for (std::size_t i = 0; i < 4; ++i) out[4 + i] = static_cast<unsigned char>(h.length >> (8 * i));
  detail::put64(&out[8], h.origin);
  detail::put64(&out[16], h.sequence);
  detail::put64(&out[24], h.item_sequence);
  detail::put64(&out[32], static_cast<std::uint64_t>(h.timestamp_ns));
  return out;
}

/// Writes one batch record at `out` (which has room for kHeaderBytes + `length` bytes): `h`
/// with kBatched set and its length `length`, then `length` bytes from `payload`. Returns the
/// bytes written.
inline std::size_t put_record(unsigned char* out, Header h, const void* payload,
                              std::uint32_t length) noexcept {
  h.flags |= kBatched;
  h.length = length;
  const auto head = encode(h);
  std::memcpy(out, head.data(), head.size());
  if (length != 0) std::memcpy(out + kHeaderBytes, payload, length);
  return kHeaderBytes + length;
}

/// The header of a NATS message's bytes; nothing if they are not a bridged item of this version
/// (too short, another magic or version, unknown flags, a length without kBatched, sequence 0).
inline std::optional<Header> decode(std::span<const unsigned char> bytes) noexcept {
  if (bytes.size() < kHeaderBytes) return std::nullopt;
  const unsigned char* in = bytes.data();
  if (in[0] != 'S' || in[1] != 'B' || in[2] != kVersion) return std::nullopt;
  if ((in[3] & ~(kLossless | kBatched | kItemFlags)) != 0) return std::nullopt;
  Header h;
  h.flags = in[3];
  for (std::size_t i = 0; i < 4; ++i) h.length |= std::uint32_t{in[4 + i]} << (8 * i);
  if ((h.flags & kBatched) == 0 && h.length != 0) return std::nullopt;
  h.origin = detail::get64(in + 8);
  h.sequence = detail::get64(in + 16);
  h.item_sequence = detail::get64(in + 24);
  h.timestamp_ns = static_cast<std::int64_t>(detail::get64(in + 32));
  if (h.sequence == 0) return std::nullopt;
  return h;
}

/// Calls on_record(header, payload offset, payload length) for each record of a message: one
/// (not batched: the payload is the rest), or each record of a batch in turn. False, having
/// called nothing, if any record is malformed or a batch does not end exactly at the end.
template <class F>
bool for_each_record(std::span<const unsigned char> bytes, F&& on_record) {
  const auto first = decode(bytes);
  if (!first) return false;
  if ((first->flags & kBatched) == 0) {
    on_record(*first, kHeaderBytes, bytes.size() - kHeaderBytes);
    return true;
  }
  std::size_t at = 0;  // (checked whole first: nothing is delivered from a bad batch)
  while (at < bytes.size()) {
    const auto h = decode(bytes.subspan(at));
    if (!h || (h->flags & kBatched) == 0 || h->length > bytes.size() - at - kHeaderBytes)
      return false;
    at += kHeaderBytes + h->length;
  }
  at = 0;
  while (at < bytes.size()) {
    const auto h = decode(bytes.subspan(at));
    on_record(*h, at + kHeaderBytes, std::size_t{h->length});
    at += kHeaderBytes + h->length;
  }
  return true;
}

}  // namespace sluice::relay::bridge

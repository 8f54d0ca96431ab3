// Items on the gRPC wire without copying their payloads (shared by the relay and the C++
// client; internal).
//
// Why by hand: protobuf's generated classes own a `bytes` field as a std::string, so sending an
// Item copies its payload twice (into the message, then into gRPC's buffer) and receiving one
// copies it once more. For a 1 MiB frame fanned out to three subscribers that was six copies in
// the relay alone, and it held the gRPC path to the NATS's throughput while the WebSocket path
// (which sends the topic's Buffer itself) ran at 2.8x. Protobuf has no way to borrow bytes it
// does not own; gRPC does (a slice with a release callback), so the few messages that carry
// payloads are encoded and decoded here and everything else stays generated.
//
// Wire format: exactly relay.proto's — the same bytes protobuf would write (fields in number
// order, proto3 defaults left out), so any gRPC client reads them, and a decoder here reads
// anything protobuf writes (fields in any order, unknown fields skipped, the last value of a
// repeated scalar wins).
//
// Encoding: the framing bytes (tags, lengths, topic, sequence, timestamp, small payloads) are
// copied into one slice per run; a payload of kReferencedPayload bytes or more becomes a slice
// that refers to the item's Buffer (one reference, released when gRPC has written it), so the
// bytes leave from the topic's allocation. Decoding: a payload lying inside one received slice
// of kReferencedPayload bytes or more is a Buffer viewing that slice (the slice kept alive by
// the Buffer); otherwise it is copied once into its own allocation — so a small payload never
// pins a large receive buffer, and a budget that counts payload bytes counts what is held.
//
// Thread-safety: an ItemWriter or a decode call is used by one thread at a time; the ByteBuffers
// and Buffers they produce are shared freely.
#pragma once

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/buffer.hpp"

namespace sluice::wire {

/// Payloads this large or larger are referenced, not copied (both ways). Below it, a slice's
/// bookkeeping (two allocations, a reference count) costs more than copying the bytes.
inline constexpr std::size_t kReferencedPayload = 4096;

/// One item's fields (relay.proto's Item).
struct ItemFields {
  std::string_view topic;  // empty: not sent
  Buffer payload;
  std::uint64_t sequence = 0;
  std::int64_t timestamp_ns = 0;
  std::uint32_t flags = 0;  // Item.flags (relay::kItemDelta, kItemDiscardable)
};

/// Which message carries the items: one in field `single`, several in `batch` — as a repeated
/// Item field of the message itself (PublishRequest.items) or inside a Batch message
/// (SubscribeEvent.batch).
enum class Envelope : std::uint8_t {
  publish_request,  // PublishRequest{item = 1 | items = 2 (repeated)}
  subscribe_event,  // SubscribeEvent{item = 1 | batch = 3 {items = 1 (repeated)}}
};

/// Encodes items into a ByteBuffer. Reusable: keeps its scratch space between messages.
class ItemWriter {
 public:
  /// `items` (at least one) as one message of `envelope`. One item goes in the single field.
  grpc::ByteBuffer encode(Envelope envelope, std::span<const ItemFields> items);

 private:
  void item(std::uint32_t field, const ItemFields& f);
  void tag(std::uint32_t field, std::uint32_t wire_type);
  void varint(std::uint64_t v);
  void bytes(const void* data, std::size_t size);
  void payload(const Buffer& b);
  void flush();

  std::string pending_;              // framing bytes not yet in a slice
  std::vector<grpc::Slice> slices_;  // the message so far
};

/// The bytes of `b` as a slice that refers to them (holds a reference to `b`'s allocation until
/// gRPC releases the slice); no copy.
grpc::Slice referencing_slice(const Buffer& b);

/// A received SubscribeEvent: items (one, or a batch's), or a gap, or something newer.
struct SubscribeEventView {
  enum class Kind : std::uint8_t { items, gap, unknown };
  Kind kind = Kind::unknown;
  std::vector<ItemFields> items;  // topic left empty (the subscriber knows its topic)
  std::uint64_t lost = 0;         // gap
  std::string reason;             // gap
};

/// Decodes `in` into `out`; false if it is not a well-formed SubscribeEvent.
bool decode_subscribe_event(const grpc::ByteBuffer& in, SubscribeEventView& out);

}  // namespace sluice::wire

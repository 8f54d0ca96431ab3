#include "grpc_items.hpp"

#include <array>
#include <cstring>
#include <memory>
#include <utility>

namespace sluice::wire {

namespace {

constexpr std::uint32_t kVarint = 0;
constexpr std::uint32_t kFixed64 = 1;
constexpr std::uint32_t kLengthDelimited = 2;
constexpr std::uint32_t kFixed32 = 5;

// relay.proto's field numbers.
constexpr std::uint32_t kItemTopic = 1;
constexpr std::uint32_t kItemPayload = 2;
constexpr std::uint32_t kItemSequence = 3;
constexpr std::uint32_t kItemTimestamp = 4;
constexpr std::uint32_t kItemFlags = 5;
constexpr std::uint32_t kPublishItem = 1;
constexpr std::uint32_t kPublishItems = 2;
constexpr std::uint32_t kEventItem = 1;
constexpr std::uint32_t kEventGap = 2;
constexpr std::uint32_t kEventBatch = 3;
constexpr std::uint32_t kBatchItems = 1;
constexpr std::uint32_t kGapLost = 1;
constexpr std::uint32_t kGapReason = 2;

constexpr std::size_t varint_size(std::uint64_t v) {
  std::size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}
constexpr std::size_t field_size(std::size_t length) {  // a length-delimited field, tag < 16
  return 1 + varint_size(length) + length;
}

// An Item's encoded length (without its own tag and length).
std::size_t item_size(const ItemFields& f) {
  std::size_t n = 0;
  if (!f.topic.empty()) n += field_size(f.topic.size());
  if (!f.payload.empty()) n += field_size(f.payload.size());
  if (f.sequence != 0) n += 1 + varint_size(f.sequence);
  if (f.timestamp_ns != 0) n += 1 + varint_size(static_cast<std::uint64_t>(f.timestamp_ns));
  if (f.flags != 0) n += 1 + varint_size(f.flags);
  return n;
}

// Reads a received message across its slices, tracking the absolute position.
class SliceReader {
 public:
  explicit SliceReader(const grpc::ByteBuffer& in) {
    (void)in.Dump(&slices_);
    for (const auto& s : slices_) size_ += s.size();
  }

  std::size_t position() const { return position_; }
  std::size_t size() const { return size_; }

  bool varint(std::uint64_t& out) {
    out = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      std::uint8_t b = 0;
      if (!byte(b)) return false;
      out |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;  // more than ten bytes
  }
  // The next `n` bytes; false if fewer are left.
  bool take(std::size_t n, Buffer& out) {
    if (n > size_ - position_) return false;
    if (n == 0) {
      out = Buffer();
      return true;
    }
    settle();
    const auto& s = slices_[slice_];
    if (n >= kReferencedPayload && s.size() - offset_ >= n) {  // inside one slice: a view of it
      if (owners_.empty()) owners_.resize(slices_.size());     // (the first payload viewed)
      auto& owner = owners_[slice_];
      if (!owner) owner = std::make_shared<grpc::Slice>(s);
      out = Buffer::view_of(owner, reinterpret_cast<const std::byte*>(s.begin()) + offset_, n);
      advance(n);
      return true;
    }
    BufferBuilder copy(n);
    std::size_t done = 0;
    while (done < n) {
      settle();
      const auto& cur = slices_[slice_];
      const std::size_t chunk = std::min(n - done, cur.size() - offset_);
      std::memcpy(copy.data().data() + done, cur.begin() + offset_, chunk);
      done += chunk;
      advance(chunk);
    }
    out = std::move(copy).freeze(n);
    return true;
  }
  bool skip(std::size_t n) {
    if (n > size_ - position_) return false;
    while (n > 0) {
      settle();
      const std::size_t chunk = std::min(n, slices_[slice_].size() - offset_);
      advance(chunk);
      n -= chunk;
    }
    return true;
  }
  // Skips a field of `wire_type` whose tag has been read.
  bool skip_field(std::uint32_t wire_type) {
    std::uint64_t v = 0;
    switch (wire_type) {
      case kVarint:
        return varint(v);
      case kFixed64:
        return skip(8);
      case kLengthDelimited:
        return varint(v) && skip(v);
      case kFixed32:
        return skip(4);
      default:
        return false;  // groups (never in relay.proto) and invalid types
    }
  }
  // A length-delimited field's length; where it ends (absolute) in `field_end`, false past
  // `limit`.
  bool length(std::size_t limit, std::size_t& field_end) {
    std::uint64_t n = 0;
    if (!varint(n) || n > limit - position_) return false;
    field_end = position_ + n;
    return true;
  }

 private:
  bool byte(std::uint8_t& out) {
    if (position_ == size_) return false;
    settle();
    out = slices_[slice_].begin()[offset_];
    advance(1);
    return true;
  }
  void settle() {  // onto a slice with bytes left (callers check that some are)
    while (offset_ == slices_[slice_].size()) {
      ++slice_;
      offset_ = 0;
    }
  }
  void advance(std::size_t n) {
    offset_ += n;
    position_ += n;
  }

  std::vector<grpc::Slice> slices_;
  std::vector<std::shared_ptr<const void>> owners_;  // per slice, once a payload views it
  std::size_t size_ = 0;
  std::size_t slice_ = 0;
  std::size_t offset_ = 0;
  std::size_t position_ = 0;
};

// Reads fields until `end`: `on(field, wire_type)` returns false for a malformed field, or
// reads the field (true) or leaves it (nullopt: skipped as unknown).
template <class On>
bool fields(SliceReader& r, std::size_t end, On&& on) {
  while (r.position() < end) {
    std::uint64_t tag = 0;
    if (!r.varint(tag)) return false;
    const auto field = static_cast<std::uint32_t>(tag >> 3);
    const auto wire_type = static_cast<std::uint32_t>(tag & 7);
    if (field == 0) return false;
    const std::optional<bool> read = on(field, wire_type);
    if (read.has_value() ? !*read : !r.skip_field(wire_type)) return false;
  }
  return r.position() == end;
}

bool read_item(SliceReader& r, std::size_t limit, ItemFields& out) {
  return fields(r, limit, [&](std::uint32_t field, std::uint32_t type) -> std::optional<bool> {
    std::uint64_t v = 0;
    std::size_t field_end = 0;
    if (field == kItemPayload && type == kLengthDelimited)
      return r.length(limit, field_end) && r.take(field_end - r.position(), out.payload);
    if (field == kItemSequence && type == kVarint) {
      if (!r.varint(v)) return false;
      out.sequence = v;
      return true;
    }
    if (field == kItemTimestamp && type == kVarint) {
      if (!r.varint(v)) return false;
      out.timestamp_ns = static_cast<std::int64_t>(v);
      return true;
    }
    if (field == kItemFlags && type == kVarint) {
      if (!r.varint(v)) return false;
      out.flags = static_cast<std::uint32_t>(v);  // (protobuf's uint32: the low 32 bits)
      return true;
    }
    return std::nullopt;  // the topic (the subscriber's own) and anything newer
  });
}

// A length-delimited Item field at the reader: appended to `items`.
bool read_nested_item(SliceReader& r, std::size_t limit, std::vector<ItemFields>& items) {
  std::size_t end = 0;
  if (!r.length(limit, end)) return false;
  items.emplace_back();
  return read_item(r, end, items.back());
}

}  // namespace

grpc::Slice referencing_slice(const Buffer& b) {
  auto* held = new Buffer(b);  // released by gRPC through the callback
  // (gRPC's slice takes a mutable pointer; it never writes through it.)
  return {const_cast<std::byte*>(held->data()),  // NOLINT(cppcoreguidelines-pro-type-const-cast)
          held->size(), [](void* p) { delete static_cast<Buffer*>(p); }, held};
}

grpc::ByteBuffer ItemWriter::encode(Envelope envelope, std::span<const ItemFields> items) {
  pending_.clear();
  slices_.clear();
  if (items.size() == 1) {
    item(envelope == Envelope::publish_request ? kPublishItem : kEventItem, items.front());
  } else if (envelope == Envelope::publish_request) {
    for (const auto& f : items) item(kPublishItems, f);
  } else {
    std::size_t batch = 0;
    for (const auto& f : items) batch += field_size(item_size(f));
    tag(kEventBatch, kLengthDelimited);
    varint(batch);
    for (const auto& f : items) item(kBatchItems, f);
  }
  flush();
  grpc::ByteBuffer out(slices_.data(), slices_.size());
  slices_.clear();  // (the ByteBuffer holds its own references)
  return out;
}

void ItemWriter::item(std::uint32_t field, const ItemFields& f) {
  tag(field, kLengthDelimited);
  varint(item_size(f));
  if (!f.topic.empty()) {
    tag(kItemTopic, kLengthDelimited);
    varint(f.topic.size());
    bytes(f.topic.data(), f.topic.size());
  }
  if (!f.payload.empty()) {
    tag(kItemPayload, kLengthDelimited);
    varint(f.payload.size());
    payload(f.payload);
  }
  if (f.sequence != 0) {
    tag(kItemSequence, kVarint);
    varint(f.sequence);
  }
  if (f.timestamp_ns != 0) {
    tag(kItemTimestamp, kVarint);
    varint(static_cast<std::uint64_t>(f.timestamp_ns));
  }
  if (f.flags != 0) {
    tag(kItemFlags, kVarint);
    varint(f.flags);
  }
}

void ItemWriter::tag(std::uint32_t field, std::uint32_t wire_type) {
  varint((static_cast<std::uint64_t>(field) << 3) | wire_type);
}

void ItemWriter::varint(std::uint64_t v) {
  std::array<char, 10> out{};
  std::size_t n = 0;
  while (v >= 0x80) {
    out[n++] = static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out[n++] = static_cast<char>(v);
  pending_.append(out.data(), n);
}

void ItemWriter::bytes(const void* data, std::size_t size) {
  pending_.append(static_cast<const char*>(data), size);
}

void ItemWriter::payload(const Buffer& b) {
  if (b.size() < kReferencedPayload) {
    bytes(b.data(), b.size());
    return;
  }
  flush();
  slices_.push_back(referencing_slice(b));
}

void ItemWriter::flush() {
  if (pending_.empty()) return;
  slices_.emplace_back(pending_.data(), pending_.size());  // (copies)
  pending_.clear();
}

bool decode_subscribe_event(const grpc::ByteBuffer& in, SubscribeEventView& out) {
  out.kind = SubscribeEventView::Kind::unknown;
  out.items.clear();
  out.lost = 0;
  out.reason.clear();
  SliceReader r(in);
  const std::size_t end = r.size();
  std::uint32_t member = 0;  // the oneof's member last seen
  return fields(r, end, [&](std::uint32_t field, std::uint32_t type) -> std::optional<bool> {
    if (type != kLengthDelimited ||
        (field != kEventItem && field != kEventGap && field != kEventBatch)) {
      return std::nullopt;
    }
    // A oneof: another member replaces the one before; the same member again merges into it
    // (protobuf's rule for a message field seen twice).
    if (field != member) {
      out.items.clear();
      out.lost = 0;
      out.reason.clear();
      member = field;
    }
    std::size_t stop = 0;
    if (!r.length(end, stop)) return false;
    if (field == kEventItem) {
      out.kind = SubscribeEventView::Kind::items;
      if (out.items.empty()) out.items.emplace_back();
      return read_item(r, stop, out.items.back());
    }
    if (field == kEventBatch) {
      out.kind = SubscribeEventView::Kind::items;
      return fields(r, stop, [&](std::uint32_t f, std::uint32_t t) -> std::optional<bool> {
        if (f == kBatchItems && t == kLengthDelimited) return read_nested_item(r, stop, out.items);
        return std::nullopt;
      });
    }
    out.kind = SubscribeEventView::Kind::gap;
    return fields(r, stop, [&](std::uint32_t f, std::uint32_t t) -> std::optional<bool> {
      std::uint64_t v = 0;
      if (f == kGapLost && t == kVarint) {
        if (!r.varint(v)) return false;
        out.lost = v;
        return true;
      }
      if (f == kGapReason && t == kLengthDelimited) {
        std::size_t reason_end = 0;
        Buffer reason;
        if (!r.length(stop, reason_end) || !r.take(reason_end - r.position(), reason)) return false;
        out.reason.assign(reason.view());
        return true;
      }
      return std::nullopt;
    });
  });
}

}  // namespace sluice::wire

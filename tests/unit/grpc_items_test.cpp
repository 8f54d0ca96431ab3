// Items on the gRPC wire (src/wire/grpc_items.hpp): large payloads leave as the Buffer's own
// bytes (same address, one reference more while gRPC holds them), small ones are copied; what
// is written is exactly what protobuf writes, and what protobuf writes decodes back.
#include "grpc_items.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "sluice/v1/relay.pb.h"

namespace sluice::wire {
namespace {

std::string flat(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(b.Dump(&slices).ok());
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

Buffer bytes_of(std::size_t n, char fill) {
  return Buffer(std::string(n, fill));
}

// What protobuf's generated Item holds for `f`.
void fill(v1::Item* item, const ItemFields& f) {
  item->set_topic(std::string(f.topic));
  item->set_payload(std::string(f.payload.view()));
  item->set_sequence(f.sequence);
  item->set_timestamp_ns(f.timestamp_ns);
}

TEST(GrpcItems, ALargePayloadLeavesAsTheBuffersOwnBytes) {
  const Buffer frame = bytes_of(1 << 20, 'f');
  const long before = frame.use_count();
  ItemWriter writer;
  std::vector<ItemFields> items{{"camera", frame, 7, 42}};
  {
    const grpc::ByteBuffer out = writer.encode(Envelope::subscribe_event, items);
    items.clear();
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(out.Dump(&slices).ok());
    bool found = false;
    for (const auto& s : slices) {
      if (reinterpret_cast<const std::byte*>(s.begin()) == frame.data()) {
        EXPECT_EQ(s.size(), frame.size());
        found = true;
      }
    }
    EXPECT_TRUE(found) << "no slice points at the topic's allocation";
    EXPECT_GT(frame.use_count(), before);  // the write holds a reference
    slices.clear();
  }
  EXPECT_EQ(frame.use_count(), before);  // released with the ByteBuffer
}

TEST(GrpcItems, SmallPayloadsAreCopiedNotReferenced) {
  const Buffer small = bytes_of(16, 's');
  const long before = small.use_count();
  ItemWriter writer;
  const std::vector<ItemFields> items{{"t", small, 1, 1}, {"t", small, 2, 2}};
  const grpc::ByteBuffer out = writer.encode(Envelope::subscribe_event, items);
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(out.Dump(&slices).ok());
  EXPECT_EQ(slices.size(), 1U);              // one slice of framing and bytes
  EXPECT_EQ(small.use_count(), before + 2);  // (only `items` still holds them)
}

TEST(GrpcItems, WritesWhatProtobufWrites) {
  ItemWriter writer;
  const Buffer big = bytes_of(kReferencedPayload + 3, 'b');
  const Buffer small = bytes_of(5, 's');
  const std::vector<ItemFields> items{
      {"topic", big, 1, 1700000000000000000}, {"", small, 2, -5}, {"", Buffer(), 0, 0}};

  v1::SubscribeEvent event;
  for (const auto& f : items) fill(event.mutable_batch()->add_items(), f);
  EXPECT_EQ(flat(writer.encode(Envelope::subscribe_event, items)), event.SerializeAsString());

  v1::PublishRequest request;
  for (const auto& f : items) fill(request.add_items(), f);
  EXPECT_EQ(flat(writer.encode(Envelope::publish_request, items)), request.SerializeAsString());

  v1::PublishRequest one;
  one.mutable_item()->set_topic("topic");
  one.mutable_item()->set_payload(std::string(small.view()));
  one.mutable_item()->set_sequence(9);
  const std::vector<ItemFields> single{{"topic", small, 9, 0}};
  EXPECT_EQ(flat(writer.encode(Envelope::publish_request, single)), one.SerializeAsString());
}

// `bytes` as a ByteBuffer cut into slices of `piece` bytes (how gRPC hands over what it read).
grpc::ByteBuffer in_pieces(const std::string& bytes, std::size_t piece) {
  std::vector<grpc::Slice> slices;
  for (std::size_t at = 0; at < bytes.size(); at += piece)
    slices.emplace_back(bytes.data() + at, std::min(piece, bytes.size() - at));
  return {slices.data(), slices.size()};
}

TEST(GrpcItems, DecodesWhatProtobufWritesInAnySlicing) {
  v1::SubscribeEvent event;
  std::vector<std::string> payloads{std::string(100'000, 'x'), "", std::string(17, 'y')};
  for (std::size_t i = 0; i < payloads.size(); ++i) {
    auto* item = event.mutable_batch()->add_items();
    item->set_topic("camera");
    item->set_payload(payloads[i]);
    item->set_sequence(i + 1);
    item->set_timestamp_ns(-static_cast<std::int64_t>(i));
  }
  const std::string wire = event.SerializeAsString();
  for (const std::size_t piece : {std::size_t{1}, std::size_t{7}, std::size_t{4096}, wire.size()}) {
    SubscribeEventView view;
    ASSERT_TRUE(decode_subscribe_event(in_pieces(wire, piece), view)) << piece;
    ASSERT_EQ(view.kind, SubscribeEventView::Kind::items);
    ASSERT_EQ(view.items.size(), payloads.size());
    for (std::size_t i = 0; i < payloads.size(); ++i) {
      EXPECT_EQ(view.items[i].payload.view(), payloads[i]);
      EXPECT_EQ(view.items[i].sequence, i + 1);
      EXPECT_EQ(view.items[i].timestamp_ns, -static_cast<std::int64_t>(i));
    }
  }
}

TEST(GrpcItems, APayloadInsideOneReceivedSliceIsViewedNotCopied) {
  v1::SubscribeEvent event;
  event.mutable_item()->set_payload(std::string(1 << 16, 'v'));
  const std::string wire = event.SerializeAsString();
  const grpc::ByteBuffer in = in_pieces(wire, wire.size());
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(in.Dump(&slices).ok());
  SubscribeEventView view;
  ASSERT_TRUE(decode_subscribe_event(in, view));
  const auto* start = reinterpret_cast<const std::byte*>(slices.front().begin());
  EXPECT_GE(view.items.front().payload.data(), start);
  EXPECT_LT(view.items.front().payload.data(), start + wire.size());
}

TEST(GrpcItems, DecodesGapsAndSkipsWhatItDoesNotKnow) {
  v1::SubscribeEvent gap;
  gap.mutable_gap()->set_lost(12);
  gap.mutable_gap()->set_reason("slow_consumer");
  std::string wire = gap.SerializeAsString();
  wire += std::string("\x78\x05", 2);  // field 15, varint 5: from a newer relay
  SubscribeEventView view;
  ASSERT_TRUE(decode_subscribe_event(in_pieces(wire, 3), view));
  EXPECT_EQ(view.kind, SubscribeEventView::Kind::gap);
  EXPECT_EQ(view.lost, 12U);
  EXPECT_EQ(view.reason, "slow_consumer");
}

TEST(GrpcItems, RefusesMalformedEvents) {
  v1::SubscribeEvent event;
  event.mutable_item()->set_payload("hello");
  const std::string wire = event.SerializeAsString();
  SubscribeEventView view;
  for (std::size_t cut = 1; cut < wire.size(); ++cut)  // every truncation
    EXPECT_FALSE(decode_subscribe_event(in_pieces(wire.substr(0, cut), 2), view)) << cut;
  const std::string bad_length = std::string("\x0a\x7f", 2) + "short";  // item longer than left
  EXPECT_FALSE(decode_subscribe_event(in_pieces(bad_length, 4), view));
  const std::string group = std::string("\x0b", 1);  // a group start: not in relay.proto
  EXPECT_FALSE(decode_subscribe_event(in_pieces(group, 1), view));
}

}  // namespace
}  // namespace sluice::wire

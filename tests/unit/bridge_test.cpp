// How cluster topics' items cross between relays: the header in front of each NATS message
// (bridge_codec.hpp) and what a receiving relay makes of the order they arrive in
// (bridge_sequence.hpp).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "relay/bridge_codec.hpp"
#include "relay/bridge_sequence.hpp"

namespace sluice::relay::bridge {
namespace {

using namespace std::chrono_literals;

TEST(BridgeCodec, AHeaderReadsBackAsWritten) {
  Header h;
  h.flags = kLossless | (1 << kItemFlagsShift);  // (an item flagged delta)
  h.origin = 0x0123456789abcdefULL;
  h.sequence = 42;
  h.item_sequence = ~std::uint64_t{0};
  h.timestamp_ns = -5;
  const auto bytes = encode(h);
  const auto back = decode(bytes);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->flags, kLossless | (1 << kItemFlagsShift));
  EXPECT_EQ(back->origin, h.origin);
  EXPECT_EQ(back->sequence, 42U);
  EXPECT_EQ(back->item_sequence, h.item_sequence);
  EXPECT_EQ(back->timestamp_ns, -5);
  EXPECT_EQ(bytes[0], 'S');  // (little-endian fields at fixed offsets: docs/cluster.md)
  EXPECT_EQ(bytes[16], 42);
}

TEST(BridgeCodec, AnythingElseIsRefused) {
  Header h;
  h.sequence = 1;
  auto bytes = encode(h);
  EXPECT_FALSE(decode(std::span(bytes).first(kHeaderBytes - 1)));  // short
  for (const std::size_t at : {0U, 1U, 2U, 4U, 7U}) {  // magic, version, a length unbatched
    auto bad = bytes;
    bad[at] ^= 0x40;
    EXPECT_FALSE(decode(bad)) << at;
  }
  auto flags = bytes;
  flags[3] = 0x80;  // an unknown flag
  EXPECT_FALSE(decode(flags));
  Header zero;  // sequence 0: never sent
  EXPECT_FALSE(decode(encode(zero)));
}

TEST(BridgeCodec, ABatchIsReadRecordByRecordAndABrokenOneNotAtAll) {
  std::vector<unsigned char> batch;
  const std::vector<std::string> payloads{"one", "", std::string(1000, 'x')};
  const std::vector<std::uint64_t> sequences{10, 11, 15};  // (a real-time batch may jump)
  for (std::size_t i = 0; i < payloads.size(); ++i) {
    Header h;
    h.flags = kLossless;
    h.sequence = sequences[i];
    const std::size_t at = batch.size();
    batch.resize(at + kHeaderBytes + payloads[i].size());
    EXPECT_EQ(put_record(batch.data() + at, h, payloads[i].data(),
                         static_cast<std::uint32_t>(payloads[i].size())),
              kHeaderBytes + payloads[i].size());
  }
  std::vector<std::pair<std::uint64_t, std::string>> seen;
  const auto collect = [&](const Header& h, std::size_t at, std::size_t size) {
    EXPECT_EQ(h.flags, kLossless | kBatched);
    EXPECT_EQ(h.length, size);
    seen.emplace_back(h.sequence,
                      std::string(batch.begin() + static_cast<std::ptrdiff_t>(at),
                                  batch.begin() + static_cast<std::ptrdiff_t>(at + size)));
  };
  ASSERT_TRUE(for_each_record(batch, collect));
  ASSERT_EQ(seen.size(), 3U);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(seen[i].first, sequences[i]);
    EXPECT_EQ(seen[i].second, payloads[i]);
  }
  seen.clear();
  auto cut = batch;
  cut.pop_back();  // (the last record is short: nothing of the batch is read)
  EXPECT_FALSE(for_each_record(cut, collect));
  EXPECT_TRUE(seen.empty());
  Header single;  // (not batched: one record, the rest its payload; a length is refused)
  single.sequence = 1;
  single.length = 5;
  EXPECT_FALSE(decode(encode(single)));
}

TEST(BridgeSequence, RealtimeAnnouncesEachJumpExactlyAndDropsRepeats) {
  OriginSequence<int> s;
  EXPECT_EQ(s.realtime(10), 0U);  // (the first sets the start: no gap)
  EXPECT_EQ(s.realtime(11), 0U);
  EXPECT_EQ(s.realtime(15), 3U);  // 12, 13, 14 lost
  EXPECT_FALSE(s.realtime(15));   // a repeat
  EXPECT_FALSE(s.realtime(12));   // too late: already announced lost
  EXPECT_EQ(s.realtime(16), 0U);
}

struct Delivered {
  std::vector<std::pair<int, std::uint64_t>> items;  // (item, lost before it)
  auto fn() {
    return [this](int&& v, std::uint64_t lost) { items.emplace_back(v, lost); };
  }
};

TEST(BridgeSequence, LosslessDeliversInOrderHoldingWhatCameEarly) {
  OriginSequence<int> s;
  Delivered d;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(s.lossless(1, 1, t0, d.fn()));
  EXPECT_TRUE(s.ahead(3));
  EXPECT_TRUE(s.lossless(3, 3, t0, d.fn()));  // held: 2 is missing
  EXPECT_TRUE(s.lossless(4, 4, t0, d.fn()));
  EXPECT_EQ(s.held(), 2U);
  EXPECT_FALSE(s.lossless(3, 3, t0, d.fn()));  // a repeat of a held one
  EXPECT_TRUE(s.lossless(2, 2, t0, d.fn()));   // the missing one: all three go
  EXPECT_FALSE(s.lossless(2, 2, t0, d.fn()));  // a redelivery
  EXPECT_EQ(s.held(), 0U);
  const std::vector<std::pair<int, std::uint64_t>> want{{1, 0}, {2, 0}, {3, 0}, {4, 0}};
  EXPECT_EQ(d.items, want);
}

TEST(BridgeSequence, LosslessGivesUpOnAMissingItemAfterTheTimeoutWithAGap) {
  OriginSequence<int> s;
  Delivered d;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(s.lossless(1, 1, t0, d.fn()));
  EXPECT_TRUE(s.lossless(4, 4, t0, d.fn()));
  EXPECT_TRUE(s.lossless(5, 5, t0 + 1s, d.fn()));
  EXPECT_EQ(s.expire(t0 + 5s, 10s, d.fn()), 0U);   // not yet
  EXPECT_EQ(s.expire(t0 + 10s, 10s, d.fn()), 2U);  // 2 and 3 given up on
  const std::vector<std::pair<int, std::uint64_t>> want{{1, 0}, {4, 2}, {5, 0}};
  EXPECT_EQ(d.items, want);
  EXPECT_FALSE(s.lossless(3, 3, t0 + 11s, d.fn()));  // (late: a repeat now)
}

// A start given (the consumer's first stream sequence): what arrives first does not set it, so
// the first message, delivered late, is not taken for a repeat; starting again drops what is held.
TEST(BridgeSequence, AGivenStartHoldsWhatArrivesBeforeTheFirst) {
  OriginSequence<int> s;
  Delivered d;
  const auto t0 = std::chrono::steady_clock::now();
  s.start_at(7);
  EXPECT_TRUE(s.lossless(8, 8, t0, d.fn()));  // held: 7 comes again later
  EXPECT_TRUE(d.items.empty());
  EXPECT_TRUE(s.lossless(7, 7, t0, d.fn()));
  const std::vector<std::pair<int, std::uint64_t>> want{{7, 0}, {8, 0}};
  EXPECT_EQ(d.items, want);
  EXPECT_TRUE(s.behind(8));
  EXPECT_FALSE(s.behind(9));
  EXPECT_TRUE(s.lossless(11, 11, t0, d.fn()));  // held
  s.start_at(1);                                // (numbering starts again)
  EXPECT_EQ(s.held(), 0U);
  EXPECT_FALSE(s.behind(1));
  EXPECT_TRUE(s.lossless(1, 1, t0, d.fn()));
  EXPECT_EQ(d.items.back(), std::make_pair(1, std::uint64_t{0}));
}

}  // namespace
}  // namespace sluice::relay::bridge

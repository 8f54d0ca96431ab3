// What a relay receives from other relays through NATS (bytes anyone on the NATS system may
// publish on the bridge's subjects): the item header (bridge_codec.hpp), and the order its
// sequence numbers arrive in (bridge_sequence.hpp). Invariants: a header is accepted only as
// the encoder writes it; whatever order sequences arrive in, a real-time receiver delivers them
// increasing with each jump announced exactly, and a lossless one delivers them increasing with
// nothing skipped but what a timeout gives up on (announced exactly).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>

#include "bridge_codec.hpp"
#include "bridge_sequence.hpp"
#include "fuzz_check.hpp"

using sluice::relay::bridge::decode;
using sluice::relay::bridge::encode;
using sluice::relay::bridge::kHeaderBytes;
using sluice::relay::bridge::OriginSequence;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const unsigned char> bytes(data, size);
  if (const auto h = decode(bytes)) {
    const auto again = encode(*h);
    FUZZ_CHECK(std::memcmp(again.data(), data, kHeaderBytes) == 0);
  }
  // A batch's records tile it exactly, each within it.
  std::size_t covered = 0;
  const bool whole = sluice::relay::bridge::for_each_record(
      bytes, [&](const sluice::relay::bridge::Header& /*h*/, std::size_t at, std::size_t n) {
        FUZZ_CHECK(at >= kHeaderBytes && at + n <= size);
        covered += kHeaderBytes + n;
      });
  FUZZ_CHECK(!whole || covered == size);
  // The rest as sequence numbers (2 bytes each, small: so that they collide and reorder), the
  // top bit of each a clock tick of 6 s (past the 5 s reorder timeout used here).
  OriginSequence<std::uint64_t> realtime;
  OriginSequence<std::uint64_t> lossless;
  std::optional<std::uint64_t> rt_last;
  std::optional<std::uint64_t> ll_last;
  auto now = std::chrono::steady_clock::time_point{};
  const auto deliver = [&](std::uint64_t&& seq, std::uint64_t lost) {
    if (ll_last) FUZZ_CHECK(seq == *ll_last + 1 + lost);
    FUZZ_CHECK(!ll_last || lost == 0 || seq > *ll_last);
    ll_last = seq;
  };
  for (std::size_t i = 0; i + 1 < size; i += 2) {
    const unsigned v = data[i] | (unsigned{data[i + 1]} << 8U);
    if ((v & 0x8000U) != 0) {
      now += std::chrono::seconds(6);
      (void)lossless.expire(now, std::chrono::seconds(5), deliver);
    }
    const std::uint64_t seq = 1 + (v & 0x3FFU);
    if (const auto lost = realtime.realtime(seq)) {
      if (rt_last) FUZZ_CHECK(seq == *rt_last + 1 + *lost);
      rt_last = seq;
    } else {
      FUZZ_CHECK(rt_last && seq <= *rt_last);
    }
    std::uint64_t copy = seq;
    (void)lossless.lossless(seq, std::move(copy), now, deliver);
  }
  return 0;
}

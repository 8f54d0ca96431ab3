#include "sluice/channel.hpp"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "sluice/buffer.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;

ChannelConfig config(OverflowPolicy policy, std::size_t max_items,
                     std::size_t max_bytes = kUnlimitedBytes) {
  ChannelConfig c;
  c.name = "test";
  c.policy = policy;
  c.max_items = max_items;
  c.max_bytes = max_bytes;
  return c;
}

template <class T>
void expect_stats_add_up(const Channel<T>& ch) {
  const ChannelStats s = ch.stats();
  EXPECT_EQ(s.sent, s.received + s.dropped.total() + s.len)
      << "sent " << s.sent << " received " << s.received << " dropped " << s.dropped.total()
      << " len " << s.len;
}

long voluntary_switches() {
  rusage u{};
  getrusage(RUSAGE_THREAD, &u);
  return u.ru_nvcsw;
}

// ---- block ----------------------------------------------------------------------------------

TEST(ChannelBlock, SendWaitsForRoomAndSucceedsWhenAReceiverFreesIt) {
  Channel<int> ch(config(OverflowPolicy::block, 2));
  ASSERT_TRUE(ch.send(1));
  ASSERT_TRUE(ch.send(2));
  std::atomic<bool> started{false};
  std::atomic<bool> sent{false};
  std::thread producer([&] {
    started = true;
    auto r = ch.send(3, std::chrono::steady_clock::now() + 30s);
    EXPECT_EQ(r.status, SendStatus::ok) << r.message;
    sent = true;
  });
  // The producer is running (not merely created) before the wait: on a loaded machine a
  // thread may not run at all within 50 ms, and the check below would prove nothing.
  while (!started.load()) std::this_thread::yield();
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(sent.load());  // still blocked: the channel is full
  EXPECT_EQ(*ch.recv(), 1);
  producer.join();
  EXPECT_EQ(*ch.recv(), 2);
  EXPECT_EQ(*ch.recv(), 3);
  const auto s = ch.stats();
  EXPECT_GT(s.blocked_seconds, 0.0);
  EXPECT_EQ(s.timeouts, 0U);
  expect_stats_add_up(ch);
}

TEST(ChannelBlock, SendTimesOutWithAMessageNamingChannelBytesLimitAndSetting) {
  auto c = config(OverflowPolicy::block, 8, 100);
  c.name = "camera-7";
  Channel<std::string> ch(c);
  ASSERT_TRUE(ch.send(std::string(60, 'a')));
  std::string item(60, 'b');
  auto r = ch.send_for(std::move(item), 30ms);
  ASSERT_EQ(r.status, SendStatus::timeout);
  EXPECT_EQ(item.size(), 60U) << "the caller keeps the item on timeout";
  EXPECT_NE(r.message.find("camera-7"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("60 B"), std::string::npos) << r.message;             // queued bytes
  EXPECT_NE(r.message.find("max_bytes 100 B"), std::string::npos) << r.message;  // the limit
  EXPECT_NE(r.message.find("raise max_bytes"), std::string::npos) << r.message;  // the knob
  const auto s = ch.stats();
  EXPECT_EQ(s.timeouts, 1U);
  EXPECT_EQ(s.dropped.total(), 0U) << "a timeout is not a loss: the caller kept the item";
  expect_stats_add_up(ch);
}

TEST(ChannelBlock, SendWithoutDeadlineUsesMaxWait) {
  auto c = config(OverflowPolicy::block, 1);
  c.max_wait = 20ms;
  Channel<int> ch(c);
  ASSERT_TRUE(ch.send(1));
  EXPECT_EQ(ch.send(2).status, SendStatus::timeout);
}

TEST(ChannelBlock, TrySendOnAFullChannelAnswersWouldBlockAndTheCallerKeepsTheItem) {
  Channel<std::unique_ptr<int>> ch([] {
    auto c = config(OverflowPolicy::block, 1);
    c.account_bytes = false;
    return c;
  }());
  ASSERT_TRUE(ch.try_send(std::make_unique<int>(1)));
  auto item = std::make_unique<int>(2);
  EXPECT_EQ(ch.try_send(std::move(item)).status, SendStatus::would_block);
  ASSERT_NE(item, nullptr);  // not moved from
  EXPECT_EQ(*item, 2);
  EXPECT_EQ(ch.stats().rejected, 1U);
}

TEST(ChannelBlock, BlockedReceiverSleepsUntilWokenInsteadOfPolling) {
  Channel<int> ch(config(OverflowPolicy::block, 4));
  long switches = 0;
  std::thread receiver([&] {
    const long before = voluntary_switches();
    auto r = ch.recv(std::chrono::steady_clock::now() + 30s);
    switches = voluntary_switches() - before;
    EXPECT_EQ(*r, 42);
  });
  std::this_thread::sleep_for(300ms);
  ASSERT_TRUE(ch.send(42));
  receiver.join();
  // A 10 ms poll loop would switch out ~30 times in 300 ms; a parked thread sleeps once
  // (plus the few yields of its short spin phase).
  EXPECT_LE(switches, 12) << "receiver woke " << switches << " times while waiting";
}

TEST(ChannelBlock, BlockedSenderSleepsUntilWokenInsteadOfPolling) {
  Channel<int> ch(config(OverflowPolicy::block, 1));
  ASSERT_TRUE(ch.send(1));
  long switches = 0;
  std::thread sender([&] {
    const long before = voluntary_switches();
    auto r = ch.send(2, std::chrono::steady_clock::now() + 30s);
    switches = voluntary_switches() - before;
    EXPECT_TRUE(r.ok()) << r.message;
  });
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(*ch.recv(), 1);
  sender.join();
  EXPECT_LE(switches, 12) << "sender woke " << switches << " times while waiting";
  EXPECT_EQ(*ch.recv(), 2);
}

// ---- drop_oldest / drop_newest / reject -------------------------------------------------------

TEST(ChannelDropOldest, NewItemsEnterOldestLeaveAndAreCountedAsOverflow) {
  Channel<int> ch(config(OverflowPolicy::drop_oldest, 4));
  std::uint32_t evicted = 0;
  for (int i = 0; i < 10; ++i) {
    auto r = ch.send(i);
    ASSERT_EQ(r.status, SendStatus::ok);  // never waits, never fails for lack of room
    evicted += r.evicted;
  }
  EXPECT_EQ(evicted, 6U);
  for (int i = 6; i < 10; ++i) EXPECT_EQ(*ch.try_recv(), i);
  const auto s = ch.stats();
  EXPECT_EQ(s.dropped[DropReason::overflow], 6U);
  EXPECT_EQ(s.received, 4U);
  EXPECT_EQ(s.sent, 10U);
  expect_stats_add_up(ch);
}

TEST(ChannelDropOldest, ByteBudgetEvictsAsManyAsNeeded) {
  Channel<std::string> ch(config(OverflowPolicy::drop_oldest, 100, 100));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(ch.send(std::string(20, static_cast<char>('a' + i))));
  auto r = ch.send(std::string(70, 'z'));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.evicted, 4U);  // 100 → 20 + 70: four 20-byte items had to go
  EXPECT_EQ(ch.queue_bytes(), 90U);
  EXPECT_EQ(ch.try_recv()->front(), 'e');
  EXPECT_EQ(ch.try_recv()->size(), 70U);
  expect_stats_add_up(ch);
}

TEST(ChannelDropNewest, FullChannelRefusesTheNewItemAndCountsIt) {
  Channel<int> ch(config(OverflowPolicy::drop_newest, 3));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ch.send(i));
  auto r = ch.send(99);
  EXPECT_EQ(r.status, SendStatus::dropped);
  EXPECT_EQ(r.reason, DropReason::overflow);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(*ch.try_recv(), i);  // the old ones are intact
  EXPECT_EQ(ch.stats().dropped[DropReason::overflow], 1U);
  expect_stats_add_up(ch);
}

TEST(ChannelReject, FullChannelAnswersWouldBlockAtOnceAndItIsNotALoss) {
  Channel<std::string> ch(config(OverflowPolicy::reject, 2));
  ASSERT_TRUE(ch.send(std::string("a")));
  ASSERT_TRUE(ch.send(std::string("b")));
  std::string c = "c";
  const auto t0 = std::chrono::steady_clock::now();
  auto r = ch.send(std::move(c), t0 + 10s);  // a deadline does not make reject wait
  EXPECT_EQ(r.status, SendStatus::would_block);
  EXPECT_EQ(c, "c");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  const auto s = ch.stats();
  EXPECT_EQ(s.rejected, 1U);
  EXPECT_EQ(s.dropped.total(), 0U);
  expect_stats_add_up(ch);
}

// ---- budgets -----------------------------------------------------------------------------------

TEST(ChannelBudget, BytesAndItemsAreBothEnforced) {
  Channel<std::string> ch(config(OverflowPolicy::reject, 3, 250));
  ASSERT_TRUE(ch.send(std::string(100, 'a')));
  ASSERT_TRUE(ch.send(std::string(100, 'b')));
  EXPECT_EQ(ch.send(std::string(100, 'c')).status, SendStatus::would_block);  // bytes
  ASSERT_TRUE(ch.send(std::string(10, 'd')));
  EXPECT_EQ(ch.send(std::string(1, 'e')).status, SendStatus::would_block);  // items
  EXPECT_EQ(ch.queue_bytes(), 210U);
  EXPECT_EQ(ch.len(), 3U);
}

TEST(ChannelBudget, OversizedItemIsAdmittedOnlyIntoAnEmptyChannel) {
  Channel<std::string> ch(config(OverflowPolicy::reject, 8, 100));
  ASSERT_TRUE(ch.send(std::string(50, 'a')));
  EXPECT_EQ(ch.send(std::string(500, 'b')).status, SendStatus::would_block);
  ASSERT_TRUE(ch.try_recv());
  ASSERT_TRUE(ch.send(std::string(500, 'b')));  // empty: the big one gets through
  EXPECT_EQ(ch.queue_bytes(), 500U);
  EXPECT_EQ(ch.send(std::string(1, 'c')).status, SendStatus::would_block);
  EXPECT_EQ(ch.stats().max_queue_bytes_seen, 500U);  // budget + one item, never more
}

TEST(ChannelBudget, BlockedOversizedItemWaitsUntilTheChannelIsEmpty) {
  Channel<std::string> ch(config(OverflowPolicy::block, 8, 100));
  ASSERT_TRUE(ch.send(std::string(30, 'a')));
  ASSERT_TRUE(ch.send(std::string(30, 'b')));
  std::thread big([&] {
    EXPECT_TRUE(ch.send(std::string(1000, 'z'), std::chrono::steady_clock::now() + 30s));
  });
  EXPECT_EQ(ch.recv()->front(), 'a');
  EXPECT_EQ(ch.recv()->front(), 'b');
  EXPECT_EQ(ch.recv()->size(), 1000U);
  big.join();
}

TEST(ChannelBudget, MaxItemBytesRefusesHeavyItemsAsTooLarge) {
  auto c = config(OverflowPolicy::block, 8, 100);
  c.max_item_bytes = 64;
  c.name = "telemetry";
  Channel<std::string> ch(c);
  std::string heavy(65, 'h');
  auto r = ch.send(std::move(heavy));
  EXPECT_EQ(r.status, SendStatus::dropped);
  EXPECT_EQ(r.reason, DropReason::too_large);
  EXPECT_NE(r.message.find("telemetry"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("max_item_bytes 64 B"), std::string::npos) << r.message;
  EXPECT_TRUE(ch.send(std::string(64, 'o')));
  const auto s = ch.stats();
  EXPECT_EQ(s.dropped[DropReason::too_large], 1U);
  EXPECT_EQ(s.len, 1U);
  expect_stats_add_up(ch);
}

TEST(ChannelBudget, HighWaterMarkIsTheTruePeak) {
  Channel<std::string> ch(config(OverflowPolicy::block, 100, 10'000));
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(ch.send(std::string(100, 'x')));
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(ch.try_recv());
  for (int round = 0; round < 50; ++round) {  // a consumer that keeps up
    ASSERT_TRUE(ch.send(std::string(100, 'y')));
    ASSERT_TRUE(ch.try_recv());
  }
  const auto s = ch.stats();
  EXPECT_EQ(s.max_queue_bytes_seen, 700U);
  EXPECT_EQ(s.queue_bytes, 0U);
}

// ---- close -------------------------------------------------------------------------------------

TEST(ChannelClose, ReceiversDrainThenSeeClosedAndSendersSeeClosedAtOnce) {
  Channel<int> ch(config(OverflowPolicy::block, 4));
  ASSERT_TRUE(ch.send(1));
  ASSERT_TRUE(ch.send(2));
  ch.close();
  EXPECT_TRUE(ch.is_closed());
  auto r = ch.send(3);
  EXPECT_EQ(r.status, SendStatus::closed);
  EXPECT_NE(r.message.find("closed"), std::string::npos);
  EXPECT_EQ(ch.try_send(3).status, SendStatus::closed);
  EXPECT_EQ(*ch.recv(), 1);
  EXPECT_EQ(*ch.try_recv(), 2);
  EXPECT_EQ(ch.recv().status, RecvStatus::closed);
  EXPECT_EQ(ch.try_recv().status, RecvStatus::closed);
  ch.close();  // idempotent
  EXPECT_TRUE(ch.stats().closed);
  expect_stats_add_up(ch);
}

TEST(ChannelClose, WakesABlockedReceiver) {
  Channel<int> ch(config(OverflowPolicy::block, 4));
  std::thread receiver([&] { EXPECT_EQ(ch.recv().status, RecvStatus::closed); });
  std::this_thread::sleep_for(30ms);
  ch.close();
  receiver.join();
}

TEST(ChannelClose, WakesABlockedSenderWhichKeepsItsItem) {
  Channel<std::string> ch(config(OverflowPolicy::block, 1));
  ASSERT_TRUE(ch.send(std::string("first")));
  std::thread sender([&] {
    std::string item = "second";
    EXPECT_EQ(ch.send(std::move(item)).status, SendStatus::closed);
    EXPECT_EQ(item, "second");
  });
  std::this_thread::sleep_for(30ms);
  ch.close();
  sender.join();
  EXPECT_EQ(*ch.recv(), "first");  // what was queued is still delivered
}

// ---- receive deadlines
// ---------------------------------------------------------------------------

TEST(ChannelRecv, DeadlinePassesWithTimeoutAndTryRecvWithWouldBlock) {
  Channel<int> ch(config(OverflowPolicy::block, 4));
  EXPECT_EQ(ch.try_recv().status, RecvStatus::would_block);
  EXPECT_EQ(ch.recv_for(20ms).status, RecvStatus::timeout);
  EXPECT_EQ(ch.recv(std::chrono::steady_clock::now() - 1s).status, RecvStatus::timeout);
}

TEST(ChannelRecv, ItemsFromOneProducerArriveInOrder) {
  Channel<int> ch(config(OverflowPolicy::block, 16));
  std::thread producer([&] {
    for (int i = 0; i < 100'000; ++i) ASSERT_TRUE(ch.send(i));
    ch.close();
  });
  int expected = 0;
  for (auto r = ch.recv(); r.ok(); r = ch.recv()) ASSERT_EQ(*r, expected++);
  producer.join();
  EXPECT_EQ(expected, 100'000);
}

// ---- stats, latency, lifetime, configuration -------------------------------------------------

TEST(ChannelStats, LatencyIsRecordedForEverySampledItem) {
  auto c = config(OverflowPolicy::block, 16);
  c.latency = LatencySampling::every_item;
  Channel<int> ch(c);
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(ch.send(i));
    std::this_thread::sleep_for(1ms);
    ASSERT_TRUE(ch.recv());
  }
  const auto s = ch.stats();
  EXPECT_EQ(s.latency_ns.count(), 10U);
  EXPECT_GE(s.latency_ns.p50(), 900'000U);  // each item waited at least ~1 ms
}

TEST(ChannelStats, AdaptiveSamplingMeasuresAQuietStreamEveryItem) {
  Channel<int> ch(config(OverflowPolicy::block, 16));
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(ch.send(i));
    std::this_thread::sleep_for(2ms);  // a quiet stream: samples are > 1 ms apart
    ASSERT_TRUE(ch.recv());
  }
  EXPECT_EQ(ch.stats().latency_ns.count(), 5U);
}

TEST(ChannelStats, OffRecordsNoLatency) {
  auto c = config(OverflowPolicy::block, 16);
  c.latency = LatencySampling::off;
  Channel<int> ch(c);
  ASSERT_TRUE(ch.send(1));
  ASSERT_TRUE(ch.recv());
  EXPECT_EQ(ch.stats().latency_ns.count(), 0U);
}

TEST(ChannelLifetime, DestroyingAChannelDestroysTheItemsStillQueued) {
  auto payload = std::make_shared<int>(7);
  {
    auto c = config(OverflowPolicy::block, 8);
    c.account_bytes = false;
    Channel<std::shared_ptr<int>> ch(c);
    ASSERT_TRUE(ch.send(payload));
    ASSERT_TRUE(ch.send(payload));
    EXPECT_EQ(payload.use_count(), 3);
  }
  EXPECT_EQ(payload.use_count(), 1);
}

TEST(ChannelLifetime, BufferPayloadsTravelWithoutCopies) {
  Channel<Buffer> ch(config(OverflowPolicy::block, 8, 1 << 20));
  Buffer frame = Buffer::copy(std::string(4096, 'f'));
  ASSERT_TRUE(ch.send(frame));
  auto r = ch.recv();
  EXPECT_EQ(r->data(), frame.data());
  EXPECT_EQ(ch.stats().max_queue_bytes_seen, 4096U);
}

TEST(ChannelConfig, InvalidValuesNameTheSettingTheValueAndTheRange) {
  auto expect_invalid = [](ChannelConfig c, const std::string& setting, const std::string& value) {
    try {
      Channel<int> ch(std::move(c));
      ADD_FAILURE() << "accepted an invalid " << setting;
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(setting), std::string::npos) << what;
      EXPECT_NE(what.find(value), std::string::npos) << what;
      EXPECT_NE(what.find("accepted"), std::string::npos) << what;
    }
  };
  expect_invalid(config(OverflowPolicy::block, 0), "max_items", "0");
  expect_invalid(config(OverflowPolicy::block, 8, 0), "max_bytes", "0");
  auto c = config(OverflowPolicy::block, 8);
  c.max_wait = -1ms;
  expect_invalid(c, "max_wait", "-1000000 ns");
  c = config(OverflowPolicy::block, 8, 1000);
  c.account_bytes = false;
  expect_invalid(c, "max_bytes", "1000");
  c = config(OverflowPolicy::block, 8);
  c.name.clear();
  expect_invalid(c, "name", "\"\"");
}

TEST(ChannelConfig, PolicyNamesRoundTrip) {
  for (auto p : {OverflowPolicy::block, OverflowPolicy::drop_oldest, OverflowPolicy::drop_newest,
                 OverflowPolicy::reject}) {
    EXPECT_EQ(parse_overflow_policy(to_string(p)), p);
  }
  EXPECT_EQ(parse_overflow_policy("drop-oldest"), std::nullopt);
  for (auto r : kAllDropReasons) EXPECT_EQ(parse_drop_reason(to_string(r)), r);
}

TEST(ChannelConfig, ItemsWithoutSizeNeedAccountingOff) {
  struct Opaque {
    std::string a;
  };
  auto c = config(OverflowPolicy::block, 4);
  EXPECT_THROW(Channel<Opaque>{c}, std::invalid_argument);
  c.account_bytes = false;
  Channel<Opaque> ch(c);
  ASSERT_TRUE(ch.send(Opaque{"x"}));
  EXPECT_EQ(ch.recv()->a, "x");
  EXPECT_EQ(ch.queue_bytes(), 0U);
}

TEST(ChannelConfig, NonPowerOfTwoCapacityWrapsCorrectly) {
  Channel<int> ch(config(OverflowPolicy::reject, 3));
  for (int lap = 0; lap < 100; ++lap) {
    ASSERT_TRUE(ch.send(lap * 3));
    ASSERT_TRUE(ch.send(lap * 3 + 1));
    ASSERT_TRUE(ch.send(lap * 3 + 2));
    ASSERT_EQ(ch.send(-1).status, SendStatus::would_block);
    for (int i = 0; i < 3; ++i) ASSERT_EQ(*ch.try_recv(), lap * 3 + i);
  }
  expect_stats_add_up(ch);
}

}  // namespace
}  // namespace sluice

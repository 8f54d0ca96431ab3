// Broadcast<T>: storage once, per-subscriber depth, gaps, lossless gating, eviction, hooks.
#include "sluice/broadcast.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>  // before Asio with Boost 1.74 and C++20
#include <vector>

#include "sluice/buffer.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;

BroadcastConfig cfg(BroadcastMode mode, std::size_t capacity = 16) {
  BroadcastConfig c;
  c.name = "cam";
  c.mode = mode;
  c.capacity = capacity;
  return c;
}

TEST(Broadcast, EverySubscriberReceivesEveryItemInOrder) {
  Broadcast<int> b(cfg(BroadcastMode::lossy));
  auto s1 = b.subscribe("a", 8);
  auto s2 = b.subscribe("b", 8);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(b.publish(i));
  for (auto* s : {&s1, &s2}) {
    for (int i = 0; i < 5; ++i) {
      auto r = s->try_recv();
      ASSERT_EQ(r.status, RecvStatus::ok);
      EXPECT_EQ(*r, i);
    }
    EXPECT_EQ(s->try_recv().status, RecvStatus::would_block);
  }
}

TEST(Broadcast, PayloadIsStoredOnceAndSharedNotCopied) {
  Broadcast<Buffer> b(cfg(BroadcastMode::lossy));
  std::vector<Subscription<Buffer>> subs;
  for (int i = 0; i < 3; ++i) subs.push_back(b.subscribe("s" + std::to_string(i)));
  Buffer frame(std::string(1 << 20, 'p'));
  const Buffer original = frame;
  ASSERT_TRUE(b.publish(std::move(frame)));
  for (auto& s : subs) {
    auto r = s.try_recv();
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r->shares_allocation_with(original));
    EXPECT_EQ(r->data(), original.data());
  }
}

TEST(Broadcast, SubscriberSeesOnlyItemsPublishedAfterItJoined) {
  Broadcast<int> b(cfg(BroadcastMode::lossy));
  ASSERT_TRUE(b.publish(1));
  auto s = b.subscribe("late");
  EXPECT_EQ(s.try_recv().status, RecvStatus::would_block);
  ASSERT_TRUE(b.publish(2));
  EXPECT_EQ(*s.try_recv(), 2);
}

TEST(Broadcast, LossySlowSubscriberGetsOneGapThenTheNewestItems) {
  Broadcast<int> b(cfg(BroadcastMode::lossy, 16));
  auto slow = b.subscribe("slow", 4);
  auto fast = b.subscribe("fast", 16);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(b.publish(i));  // never waits

  auto gap = slow.try_recv();
  ASSERT_EQ(gap.status, RecvStatus::gap);
  EXPECT_EQ(gap.lost, 6U);
  EXPECT_EQ(gap.reason, DropReason::slow_consumer);
  for (int i = 6; i < 10; ++i) EXPECT_EQ(*slow.try_recv(), i);
  EXPECT_EQ(slow.try_recv().status, RecvStatus::would_block);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(*fast.try_recv(), i);  // unaffected

  const auto st = slow.stats();
  EXPECT_EQ(st.received, 4U);
  EXPECT_EQ(st.lost[DropReason::slow_consumer], 6U);
  EXPECT_EQ(st.received + st.lost.total(), 10U);
  EXPECT_EQ(fast.stats().lost.total(), 0U);
}

TEST(Broadcast, LossyRingSmallerThanTheBacklogStillReportsEveryLoss) {
  Broadcast<int> b(cfg(BroadcastMode::lossy, 4));
  auto s = b.subscribe("s", 4);
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(b.publish(i));
  std::uint64_t lost = 0;
  std::vector<int> got;
  for (auto r = s.try_recv(); r.status != RecvStatus::would_block; r = s.try_recv()) {
    if (r.status == RecvStatus::gap) lost += r.lost;
    if (r.ok()) got.push_back(*r);
  }
  EXPECT_EQ(got, (std::vector<int>{96, 97, 98, 99}));
  EXPECT_EQ(lost + got.size(), 100U);
}

TEST(Broadcast, DepthAndConfigurationAreValidatedWithClearMessages) {
  Broadcast<int> b(cfg(BroadcastMode::lossy, 8));
  try {
    (void)b.subscribe("greedy", 9);
    FAIL() << "depth above capacity accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("depth 9"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("capacity = 8"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)b.subscribe(""), std::invalid_argument);

  BroadcastConfig bad = cfg(BroadcastMode::lossy, 0);
  try {
    Broadcast<int> never(bad);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("capacity = 0"), std::string::npos) << e.what();
  }
  BroadcastConfig evict_lossy = cfg(BroadcastMode::lossy);
  evict_lossy.evict_after = 1s;
  EXPECT_THROW(Broadcast<int>{evict_lossy}, std::invalid_argument);
  EXPECT_EQ(parse_broadcast_mode("lossless"), BroadcastMode::lossless);
  EXPECT_FALSE(parse_broadcast_mode("sometimes").has_value());
}

TEST(Broadcast, LosslessTryPublishWouldBlockAtTheSlowestDepth) {
  Broadcast<int> b(cfg(BroadcastMode::lossless, 8));
  auto fast = b.subscribe("fast", 8);
  auto slow = b.subscribe("slow", 2);
  ASSERT_TRUE(b.try_publish(1));
  ASSERT_TRUE(b.try_publish(2));
  int three = 3;
  auto r = b.try_publish(std::move(three));
  EXPECT_EQ(r.status, SendStatus::would_block);
  EXPECT_EQ(three, 3);  // the caller keeps it
  EXPECT_EQ(*slow.try_recv(), 1);
  EXPECT_TRUE(b.try_publish(3));
  EXPECT_EQ(b.stats().would_block, 1U);
  for (int i = 1; i <= 3; ++i) EXPECT_EQ(*fast.try_recv(), i);
}

TEST(Broadcast, LosslessByteBudgetHoldsThePublisherBackAndAdmitsAnOversizedItemWhenDrained) {
  BroadcastConfig c = cfg(BroadcastMode::lossless, 64);
  c.max_bytes = 10;
  c.max_wait = 20ms;
  Broadcast<std::string> b(c);
  auto s = b.subscribe("viewer", 64);
  ASSERT_TRUE(b.try_publish(std::string(6, 'a')));
  ASSERT_TRUE(b.try_publish(std::string(4, 'b')));  // 10 bytes outstanding: at the budget
  std::string more(1, 'c');
  EXPECT_EQ(b.try_publish(std::move(more)).status, SendStatus::would_block);
  EXPECT_EQ(s.stats().lag_bytes, 10U);
  auto r = b.publish(std::string(1, 'c'));
  ASSERT_EQ(r.status, SendStatus::timeout);
  EXPECT_NE(r.message.find("10 bytes behind, max_bytes 10"), std::string::npos) << r.message;
  EXPECT_EQ(*s.try_recv(), "aaaaaa");  // frees 6 bytes
  EXPECT_TRUE(b.try_publish(std::string(5, 'c')));
  EXPECT_EQ(*s.try_recv(), "bbbb");
  EXPECT_EQ(*s.try_recv(), "ccccc");
  // Heavier than the whole budget: admitted once the subscriber has everything.
  EXPECT_TRUE(b.try_publish(std::string(100, 'x')));
  EXPECT_EQ(b.try_publish(std::string(1, 'y')).status, SendStatus::would_block);
  EXPECT_EQ(s.try_recv()->size(), 100U);
  EXPECT_TRUE(b.try_publish(std::string(1, 'y')));

  BroadcastConfig lossy = cfg(BroadcastMode::lossy);
  lossy.max_bytes = 10;
  EXPECT_THROW(Broadcast<std::string>{lossy}, std::invalid_argument);
}

TEST(Broadcast, QueueBytesIsWhatTheFurthestBehindSubscriberHoldsAgainstTheBudget) {
  BroadcastConfig c = cfg(BroadcastMode::lossless, 64);
  c.max_bytes = 100;
  Broadcast<std::string> b(c);
  EXPECT_EQ(b.queue_bytes(), 0U);  // nobody to hold anything
  auto fast = b.subscribe("fast", 64);
  auto slow = b.subscribe("slow", 64);
  ASSERT_TRUE(b.try_publish(std::string(30, 'a')));
  ASSERT_TRUE(b.try_publish(std::string(20, 'b')));
  EXPECT_EQ(b.queue_bytes(), 50U);
  ASSERT_TRUE(fast.try_recv());
  ASSERT_TRUE(fast.try_recv());
  EXPECT_EQ(b.queue_bytes(), 50U);  // the slow one still holds both
  ASSERT_TRUE(slow.try_recv());
  EXPECT_EQ(b.queue_bytes(), 20U);
  slow.unsubscribe();
  EXPECT_EQ(b.queue_bytes(), 0U);

  Broadcast<std::string> unbudgeted(cfg(BroadcastMode::lossless));
  auto s = unbudgeted.subscribe("s");
  ASSERT_TRUE(unbudgeted.try_publish(std::string(5, 'x')));
  EXPECT_EQ(unbudgeted.queue_bytes(), 0U);  // no budget: not counted
}

// R4 in-process: a producer 10x faster than its only consumer on a byte-budgeted lossless
// broadcast: nothing lost, in order, and the consumer's outstanding bytes never above the
// budget plus one item (sampled while it runs).
TEST(Broadcast, FastProducerSlowConsumerStaysWithinTheByteBudgetAndLosesNothing) {
  BroadcastConfig c = cfg(BroadcastMode::lossless, 256);
  c.max_bytes = 64 * 1024;
  Broadcast<std::string> b(c);
  auto s = b.subscribe("slow", 256);
  constexpr int kItems = 400;
  constexpr std::size_t kItemBytes = 4096;
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> worst{0};
  std::thread sampler([&] {
    while (!done) {
      const auto lag_bytes = s.stats().lag_bytes;
      if (lag_bytes > worst) worst = lag_bytes;
      std::this_thread::sleep_for(100us);
    }
  });
  std::thread consumer([&] {
    for (int i = 0; i < kItems; ++i) {
      auto r = s.recv();
      ASSERT_TRUE(r.ok());
      ASSERT_EQ(r->substr(0, std::to_string(i).size() + 1), std::to_string(i) + ":");
      std::this_thread::sleep_for(50us);  // slower than the producer
    }
  });
  for (int i = 0; i < kItems; ++i) {
    std::string item = std::to_string(i) + ":";
    item.resize(kItemBytes, 'p');
    ASSERT_TRUE(b.publish(std::move(item)));
  }
  consumer.join();
  done = true;
  sampler.join();
  EXPECT_LE(worst.load(), c.max_bytes + kItemBytes);
  EXPECT_GT(worst.load(), c.max_bytes / 2);  // the budget was actually reached
  EXPECT_EQ(s.stats().lost.total(), 0U);
  EXPECT_GT(b.stats().blocked_seconds, 0.0);
}

TEST(Broadcast, LosslessPublishTimesOutNamingTheSlowestSubscriber) {
  BroadcastConfig c = cfg(BroadcastMode::lossless, 4);
  c.max_wait = 20ms;
  Broadcast<int> b(c);
  auto slow = b.subscribe("dashboard", 2);
  ASSERT_TRUE(b.publish(1));
  ASSERT_TRUE(b.publish(2));
  auto r = b.publish(3);
  ASSERT_EQ(r.status, SendStatus::timeout);
  EXPECT_NE(r.message.find("'cam'"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("'dashboard'"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("2 items behind"), std::string::npos) << r.message;
  EXPECT_NE(r.message.find("max_wait"), std::string::npos) << r.message;
  EXPECT_EQ(b.stats().timeouts, 1U);
  EXPECT_GT(b.stats().blocked_seconds, 0.0);
}

TEST(Broadcast, LosslessPublisherWakesWhenTheSlowSubscriberCatchesUp) {
  Broadcast<int> b(cfg(BroadcastMode::lossless, 4));
  auto s = b.subscribe("s", 1);
  std::thread consumer([&] {
    for (int expect = 0; expect < 1000; ++expect) {
      auto r = s.recv();
      ASSERT_TRUE(r.ok());
      ASSERT_EQ(*r, expect);
    }
  });
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(b.publish(i));
  consumer.join();
  EXPECT_EQ(s.stats().lost.total(), 0U);
}

TEST(Broadcast, LeavingReleasesALosslessPublisher) {
  Broadcast<int> b(cfg(BroadcastMode::lossless, 4));
  auto s = b.subscribe("leaver", 1);
  ASSERT_TRUE(b.publish(1));
  std::thread leaver([&] {
    std::this_thread::sleep_for(20ms);
    s.unsubscribe();
  });
  EXPECT_TRUE(b.publish(2));  // waits until the subscriber leaves
  leaver.join();
  EXPECT_EQ(b.subscriber_count(), 0U);
  EXPECT_EQ(s.try_recv().status, RecvStatus::closed);
}

TEST(Broadcast, EvictAfterRemovesTheHostageTakerWhoHearsItOnce) {
  BroadcastConfig c = cfg(BroadcastMode::lossless, 4);
  c.evict_after = 20ms;
  c.max_wait = 5s;
  Broadcast<int> b(c);
  auto fast = b.subscribe("fast", 4);
  auto stuck = b.subscribe("stuck", 1);
  ASSERT_TRUE(b.publish(1));
  EXPECT_TRUE(b.publish(2));  // waits 20 ms, evicts "stuck", publishes
  EXPECT_EQ(b.stats().evicted, 1U);
  EXPECT_EQ(b.subscriber_count(), 1U);
  auto r = stuck.try_recv();
  EXPECT_EQ(r.status, RecvStatus::evicted);
  EXPECT_EQ(r.reason, DropReason::evicted);
  EXPECT_EQ(stuck.try_recv().status, RecvStatus::closed);
  EXPECT_TRUE(stuck.stats().evicted);
  EXPECT_EQ(*fast.try_recv(), 1);
  EXPECT_EQ(*fast.try_recv(), 2);
}

TEST(Broadcast, CloseLetsSubscribersDrainThenSaysClosed) {
  Broadcast<int> b(cfg(BroadcastMode::lossless, 4));
  auto s = b.subscribe("s", 4);
  ASSERT_TRUE(b.publish(1));
  b.close();
  EXPECT_EQ(b.publish(2).status, SendStatus::closed);
  EXPECT_EQ(*s.try_recv(), 1);
  EXPECT_EQ(s.try_recv().status, RecvStatus::closed);
  EXPECT_EQ(s.recv().status, RecvStatus::closed);
}

TEST(Broadcast, CloseWakesABlockedReceiver) {
  Broadcast<int> b(cfg(BroadcastMode::lossy));
  auto s = b.subscribe("s");
  std::thread closer([&] {
    std::this_thread::sleep_for(20ms);
    b.close();
  });
  EXPECT_EQ(s.recv().status, RecvStatus::closed);
  closer.join();
}

TEST(Broadcast, SubscriptionMayOutliveItsBroadcast) {
  Subscription<std::string> s;
  {
    Broadcast<std::string> b(cfg(BroadcastMode::lossy));
    s = b.subscribe("survivor");
    ASSERT_TRUE(b.publish(std::string("last words")));
  }
  EXPECT_EQ(*s.try_recv(), "last words");
  EXPECT_EQ(s.try_recv().status, RecvStatus::closed);
}

TEST(Broadcast, RecvForTimesOut) {
  Broadcast<int> b(cfg(BroadcastMode::lossy));
  auto s = b.subscribe("s");
  EXPECT_EQ(s.recv_for(5ms).status, RecvStatus::timeout);
}

TEST(Broadcast, StatsCountPublishedReceivedLagAndLatency) {
  Broadcast<int> b(cfg(BroadcastMode::lossy, 16));
  auto s = b.subscribe("s", 8);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(b.publish(i));
  EXPECT_EQ(s.lag(), 6U);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(s.try_recv().ok());
  const auto st = b.stats();
  EXPECT_EQ(st.published, 6U);
  ASSERT_EQ(st.subscribers.size(), 1U);
  EXPECT_EQ(st.subscribers[0].name, "s");
  EXPECT_EQ(st.subscribers[0].received, 4U);
  EXPECT_EQ(st.subscribers[0].lag, 2U);
  EXPECT_EQ(st.subscribers[0].max_lag, 6U);
  EXPECT_GT(st.latency_ns.count(), 0U);
}

TEST(BroadcastHooks, ReadableFiresOnPublishAndAtOnceWhenReady) {
  Broadcast<int> b(cfg(BroadcastMode::lossy));
  auto s = b.subscribe("s");
  int fired = 0;
  s.on_readable([&] { ++fired; });
  EXPECT_EQ(fired, 0);
  ASSERT_TRUE(b.publish(1));
  EXPECT_EQ(fired, 1);
  s.on_readable([&] { ++fired; });  // already readable: at once
  EXPECT_EQ(fired, 2);
}

TEST(BroadcastHooks, WritableFiresWhenTheSlowestSubscriberMovesOn) {
  Broadcast<int> b(cfg(BroadcastMode::lossless, 4));
  auto s = b.subscribe("s", 1);
  ASSERT_TRUE(b.publish(1));
  int fired = 0;
  b.on_writable([&] { ++fired; });
  EXPECT_EQ(fired, 0);
  ASSERT_TRUE(s.try_recv().ok());
  EXPECT_EQ(fired, 1);
}

// One Asio thread serves several subscriptions without a thread each.
TEST(BroadcastHooks, OneAsioThreadServesManySubscriptions) {
  constexpr int kSubs = 4;
  constexpr int kItems = 5000;
  Broadcast<int> b(cfg(BroadcastMode::lossless, 64));
  std::vector<Subscription<int>> subs;
  for (int i = 0; i < kSubs; ++i) subs.push_back(b.subscribe("s" + std::to_string(i), 32));

  boost::asio::io_context io;
  auto guard = boost::asio::make_work_guard(io);
  std::vector<long> sums(kSubs, 0);
  int closed = 0;
  std::function<void(int)> drain = [&](int i) {
    for (;;) {
      auto r = subs[i].try_recv();
      if (r.ok()) {
        sums[i] += *r;
        continue;
      }
      if (r.status == RecvStatus::closed) {
        if (++closed == kSubs) guard.reset();
        return;
      }
      subs[i].on_readable([&, i] { boost::asio::post(io, [&, i] { drain(i); }); });
      return;
    }
  };
  for (int i = 0; i < kSubs; ++i) boost::asio::post(io, [&, i] { drain(i); });
  std::thread loop([&] { io.run(); });
  for (int n = 0; n < kItems; ++n) ASSERT_TRUE(b.publish(n));
  b.close();
  loop.join();
  for (long sum : sums) EXPECT_EQ(sum, static_cast<long>(kItems) * (kItems - 1) / 2);
}

}  // namespace
// An item is held only while a subscriber still needs it: with no subscriber nothing is kept;
// the last subscriber to receive an item releases it; a subscriber leaving releases what it
// had not read; a lapped one releases what it skipped.
TEST(BroadcastRetention, ItemsAreHeldOnlyUntilTheLastSubscriberPassesThem) {
  for (const auto mode : {BroadcastMode::lossless, BroadcastMode::lossy}) {
    BroadcastConfig c;
    c.capacity = 16;
    c.default_depth = 8;
    c.mode = mode;
    Broadcast<Buffer> b(c);
    const auto item = [](char ch) { return Buffer(std::string(1000, ch)); };
    for (int i = 0; i < 10; ++i) ASSERT_TRUE(b.try_publish(item('a')).ok());
    EXPECT_EQ(b.retained_bytes(), 0U) << "no subscriber: nothing kept";
    auto fast = b.subscribe("fast");
    auto slow = b.subscribe("slow");
    for (int i = 0; i < 6; ++i) ASSERT_TRUE(b.try_publish(item('b')).ok());
    EXPECT_EQ(b.retained_bytes(), 6000U);
    for (int i = 0; i < 6; ++i) ASSERT_EQ(fast.try_recv().status, RecvStatus::ok);
    EXPECT_EQ(b.retained_bytes(), 6000U) << "the slow one still needs them";
    for (int i = 0; i < 2; ++i) ASSERT_EQ(slow.try_recv().status, RecvStatus::ok);
    EXPECT_EQ(b.retained_bytes(), 4000U) << "both passed two";
    slow.unsubscribe();
    EXPECT_EQ(b.retained_bytes(), 0U) << "what only the leaver still needed is released";
    EXPECT_EQ(b.stats().retained_bytes, 0U);
  }
  // Lossy: a lapped subscriber releases what it skips.
  BroadcastConfig c;
  c.capacity = 8;
  c.default_depth = 2;
  Broadcast<Buffer> b(c);
  auto lapped = b.subscribe("lapped");
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(b.try_publish(Buffer(std::string(100, 'x'))).ok());
  EXPECT_EQ(b.retained_bytes(), 600U);
  EXPECT_EQ(lapped.try_recv().status, RecvStatus::gap);
  EXPECT_EQ(b.retained_bytes(), 200U) << "the skipped four are gone";
  EXPECT_EQ(lapped.try_recv().status, RecvStatus::ok);
  EXPECT_EQ(lapped.try_recv().status, RecvStatus::ok);
  EXPECT_EQ(b.retained_bytes(), 0U);
}

// Under concurrency the count stays exact: two subscribers on their own threads read every
// item of a lossless broadcast; once both have, nothing is held.
TEST(BroadcastRetention, ConcurrentReadersReleaseEveryItemExactlyOnce) {
  BroadcastConfig c;
  c.capacity = 64;
  c.default_depth = 64;
  c.mode = BroadcastMode::lossless;
  Broadcast<Buffer> b(c);
  auto one = b.subscribe("one");
  auto two = b.subscribe("two");
  constexpr int kItems = 20000;
  const auto read_all = [&](Subscription<Buffer>& sub) {
    for (int i = 0; i < kItems; ++i) ASSERT_EQ(sub.recv().status, RecvStatus::ok);
  };
  std::thread a([&] { read_all(one); });
  std::thread d([&] { read_all(two); });
  for (int i = 0; i < kItems; ++i) ASSERT_TRUE(b.publish(Buffer(std::string(64, 'p'))).ok());
  a.join();
  d.join();
  EXPECT_EQ(b.retained_bytes(), 0U);
}

// Retention: a subscriber that left comes back where it was.

namespace {
BroadcastConfig retaining(BroadcastMode mode, std::size_t retain,
                          std::size_t retain_bytes = kUnlimitedBytes) {
  BroadcastConfig c = cfg(mode, 8);
  c.retain = retain;
  c.retain_bytes = retain_bytes;
  c.default_depth = 4;
  c.max_wait = 0ms;
  return c;
}
}  // namespace

TEST(BroadcastRetention, ResumesAtARetainedPositionWithNothingLostOrRepeated) {
  Broadcast<int> b(retaining(BroadcastMode::lossless, 5));
  auto first = b.subscribe("viewer");
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(b.publish(i));
  ASSERT_EQ(*first.try_recv(), 0);
  const std::uint64_t resume_at = first.position();  // 1: it has item 0 only
  first.unsubscribe();
  for (int i = 3; i < 6; ++i) ASSERT_TRUE(b.publish(i));  // nobody subscribed: kept anyway
  auto again = b.subscribe_from(resume_at, "viewer");
  EXPECT_EQ(again.joined_at(), resume_at);
  for (int i = 1; i < 6; ++i) {
    auto r = again.try_recv();
    ASSERT_EQ(r.status, RecvStatus::ok) << i;
    EXPECT_EQ(*r, i);
  }
  EXPECT_EQ(again.try_recv().status, RecvStatus::would_block);
}

TEST(BroadcastRetention, APositionNoLongerRetainedStartsAtTheOldestAndSaysWhere) {
  Broadcast<int> b(retaining(BroadcastMode::lossy, 3));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(b.publish(i));
  EXPECT_EQ(b.stats().retained_from, 7U);
  auto s = b.subscribe_from(2, "late", 4);
  EXPECT_EQ(s.joined_at(), 7U);  // 2..6 are gone: the caller announces 5 lost
  for (int i = 7; i < 10; ++i) EXPECT_EQ(*s.try_recv(), i);
  auto ahead = b.subscribe_from(1000, "ahead");
  EXPECT_EQ(ahead.joined_at(), 10U);  // beyond what was published: live
}

TEST(BroadcastRetention, WithoutRetentionAPastPositionStartsLive) {
  Broadcast<int> b(cfg(BroadcastMode::lossless));
  auto keep = b.subscribe("keep", 8);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(b.publish(i));
  auto s = b.subscribe_from(0, "late");
  EXPECT_EQ(s.joined_at(), 4U);
  EXPECT_EQ(s.try_recv().status, RecvStatus::would_block);
  EXPECT_EQ(b.stats().retained_from, 4U);
}

TEST(BroadcastRetention, BoundedByItemsAndBytesAndReleasedWhenDropped) {
  Broadcast<Buffer> b(retaining(BroadcastMode::lossy, 6, 250));
  std::vector<Buffer> mine;
  for (int i = 0; i < 10; ++i) {
    Buffer item(std::string(100, static_cast<char>('a' + i)));
    mine.push_back(item);
    ASSERT_TRUE(b.publish(std::move(item)));
    EXPECT_LE(b.retained_bytes(), 250U);
  }
  EXPECT_EQ(b.retained_bytes(), 200U);  // the two newest: a third would weigh 300
  EXPECT_EQ(b.stats().retained_from, 8U);
  // What retention let go is released: only our own reference is left.
  for (int i = 0; i < 8; ++i) EXPECT_EQ(mine[i].use_count(), 1) << i;
  EXPECT_EQ(mine[9].use_count(), 2);
  auto s = b.subscribe_from(0, "late", 4);
  EXPECT_EQ(s.joined_at(), 8U);
  auto r = s.try_recv();
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->shares_allocation_with(mine[8]));  // the retained item itself, not a copy
  // An item heavier than retain_bytes alone is not retained.
  ASSERT_TRUE(b.publish(Buffer(std::string(300, 'z'))));
  EXPECT_EQ(b.stats().retained_from, 11U);
}

TEST(BroadcastRetention, AResumedLosslessSubscriberHoldsThePublisherUntilWithinDepth) {
  Broadcast<int> b(retaining(BroadcastMode::lossless, 8));
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(b.publish(i));
  auto s = b.subscribe_from(0, "resumed", 2);
  EXPECT_EQ(b.try_publish(8).status, SendStatus::would_block);  // 8 behind, depth 2
  for (int i = 0; i < 7; ++i) ASSERT_EQ(*s.try_recv(), i);
  EXPECT_TRUE(b.try_publish(8).ok());
  EXPECT_EQ(*s.try_recv(), 7);
  EXPECT_EQ(*s.try_recv(), 8);
  const auto st = b.stats();
  ASSERT_EQ(st.subscribers.size(), 1U);
  EXPECT_EQ(st.subscribers[0].received, 9U);
  EXPECT_EQ(st.subscribers[0].joined_at, 0U);
}

TEST(BroadcastRetention, ARetainedStartMoreThanDepthBehindIsLappedOnALossyOne) {
  Broadcast<int> b(retaining(BroadcastMode::lossy, 8));
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(b.publish(i));
  auto s = b.subscribe_from(0, "resumed", 3);
  auto r = s.try_recv();
  ASSERT_EQ(r.status, RecvStatus::gap);
  EXPECT_EQ(r.lost, 5U);
  for (int i = 5; i < 8; ++i) EXPECT_EQ(*s.try_recv(), i);
}

TEST(BroadcastRetention, RejectsMoreThanCapacity) {
  auto c = retaining(BroadcastMode::lossy, 9);  // capacity 8
  EXPECT_THROW(Broadcast<int>{c}, std::invalid_argument);
}

TEST(BroadcastRetention, ResumesRacingWithPublishesLoseOnlyWhatTheyAreToldOf) {
  // Subscribers leave and come back at their position while a publisher runs: each sees the
  // items in order, never one twice, and misses only what its joined_at() says it missed.
  auto c = retaining(BroadcastMode::lossless, 256);
  c.capacity = 256;
  c.default_depth = 64;
  c.max_wait = 5s;
  Broadcast<std::uint64_t> b(c);
  constexpr std::uint64_t kItems = 20000;
  std::vector<std::thread> readers;
  std::atomic<int> failures{0};
  std::atomic<std::uint64_t> resumed_exactly{0};
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&, name = std::string(r == 0 ? "r0" : "r1")] {
      std::uint64_t next = 0;
      std::uint64_t skipped = 0;
      std::uint64_t received = 0;
      auto s = b.subscribe_from(0, name);
      if (s.joined_at() != 0) failures.fetch_add(1);
      while (next < kItems) {
        auto got = s.recv_for(5s);
        if (!got.ok() || *got != next) {
          failures.fetch_add(1);
          return;
        }
        ++next;
        ++received;
        if (next % 97 == 0 && next < kItems) {  // leave and come back where it was
          s.unsubscribe();
          s = b.subscribe_from(next, name);
          if (s.joined_at() < next) failures.fetch_add(1);  // never a repeat
          if (s.joined_at() == next) resumed_exactly.fetch_add(1);
          skipped += s.joined_at() - next;
          next = s.joined_at();
        }
      }
      if (received + skipped != kItems) failures.fetch_add(1);
    });
  }
  while (b.subscriber_count() < 2) std::this_thread::yield();
  for (std::uint64_t i = 0; i < kItems; ++i) ASSERT_TRUE(b.publish(std::uint64_t{i}).ok());
  for (auto& t : readers) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(resumed_exactly.load(), 0U);
}

// --- Groups: a newcomer starts at the latest item that depends on no earlier one ------------

namespace video {
// A frame of a video: a keyframe, or a delta frame that depends on the frames before it.
struct Frame {
  std::uint64_t index = 0;
  bool delta = false;
  Buffer bytes;
};
bool depends_on_earlier(const Frame& f) {
  return f.delta;
}
std::size_t size_bytes(const Frame& f) {
  return f.bytes.size();
}
}  // namespace video

static_assert(Grouped<video::Frame>);
static_assert(!Grouped<int>);

namespace {
constexpr std::uint64_t kGop = 5;  // a keyframe every 5 frames
video::Frame frame_at(std::uint64_t i, std::size_t bytes = 10) {
  return {i, i % kGop != 0, Buffer(std::string(bytes, 'v'))};
}
BroadcastConfig grouping(BroadcastMode mode, std::size_t capacity = 16) {
  BroadcastConfig c = retaining(mode, 0);  // (retaining nothing otherwise)
  c.capacity = capacity;
  c.group_items = capacity;
  return c;
}
}  // namespace

TEST(BroadcastGroups, ANewcomerStartsAtTheLatestKeyframeAndGetsEverythingAfterIt) {
  for (const auto mode : {BroadcastMode::lossy, BroadcastMode::lossless}) {
    Broadcast<video::Frame> b(grouping(mode));
    // Nobody subscribes: the current group is kept anyway (keyframe 5 and its deltas).
    for (std::uint64_t i = 0; i < 8; ++i) ASSERT_TRUE(b.publish(frame_at(i)));
    EXPECT_EQ(b.stats().group_items, 3U);
    EXPECT_EQ(b.stats().retained_from, 5U);  // where subscribe_from() can start, too
    EXPECT_EQ(b.retained_bytes(), 30U);      // what it keeps, it reports
    // (Real-time: a depth below the group's length. Lossless: a newcomer behind by more than
    // its depth would hold the publisher back.)
    auto late = b.subscribe_at_group("late", mode == BroadcastMode::lossy ? 2 : 8);
    EXPECT_EQ(late.joined_at(), 5U);
    for (std::uint64_t i = 8; i < 10; ++i) ASSERT_TRUE(b.publish(frame_at(i)));
    for (std::uint64_t i = 5; i < 10; ++i) {
      auto r = late.try_recv();
      ASSERT_EQ(r.status, RecvStatus::ok) << i;  // not lapped for the group it started with
      EXPECT_EQ(r->index, i);
    }
    // The next keyframe starts the next group: the previous one is let go.
    ASSERT_TRUE(b.publish(frame_at(10)));
    EXPECT_EQ(b.stats().group_items, 1U);
    EXPECT_EQ(b.subscribe_at_group("later").joined_at(), 10U);
    // subscribe() still starts at the next item.
    EXPECT_EQ(b.subscribe("live").joined_at(), 11U);
  }
}

TEST(BroadcastGroups, ANewcomerBehindIsLappedOnlyForWhatComesAfterItJoined) {
  Broadcast<video::Frame> b(grouping(BroadcastMode::lossy));
  for (std::uint64_t i = 0; i < 9; ++i) ASSERT_TRUE(b.publish(frame_at(i)));
  auto s = b.subscribe_at_group("slow", 2);  // joins at 5, four items behind
  ASSERT_EQ(s.joined_at(), 5U);
  EXPECT_EQ(s.stats().lapped, 0U);
  for (std::uint64_t i = 9; i < 12; ++i) ASSERT_TRUE(b.publish(frame_at(i)));  // 3 > depth
  EXPECT_EQ(s.stats().lapped, 5U);  // of 7 behind, the 2 most recent remain
  auto r = s.try_recv();
  ASSERT_EQ(r.status, RecvStatus::gap);
  EXPECT_EQ(r.lost, 5U);  // 5..9 skipped
  EXPECT_EQ(s.try_recv()->index, 10U);
  EXPECT_EQ(s.try_recv()->index, 11U);
}

TEST(BroadcastGroups, AStreamWithoutDeltaItemsKeepsNothing) {
  Broadcast<video::Frame> b(grouping(BroadcastMode::lossy));
  for (std::uint64_t i = 0; i < 10; ++i)
    ASSERT_TRUE(b.publish(video::Frame{i, false, Buffer("k")}));
  EXPECT_EQ(b.retained_bytes(), 0U);
  EXPECT_EQ(b.stats().group_items, 0U);
  EXPECT_EQ(b.subscribe_at_group("x").joined_at(), 10U);
}

TEST(BroadcastGroups, AGroupThatOutgrowsItsItemsOrBytesIsReleasedWhole) {
  {  // items: a group of 5 does not fit in 4
    auto c = grouping(BroadcastMode::lossy, 8);
    c.group_items = 4;
    Broadcast<video::Frame> b(c);
    std::vector<video::Frame> mine;
    for (std::uint64_t i = 0; i < 9; ++i) {
      mine.push_back(frame_at(i));
      ASSERT_TRUE(b.publish(video::Frame(mine.back())));
    }
    EXPECT_EQ(b.stats().group_items, 4U);  // 5..8
    ASSERT_TRUE(b.publish(frame_at(9)));   // the 5th
    EXPECT_EQ(b.stats().group_items, 0U);
    EXPECT_EQ(b.retained_bytes(), 0U);
    for (const auto& f : mine) EXPECT_EQ(f.bytes.use_count(), 1) << f.index;  // released
    EXPECT_EQ(b.subscribe_at_group("late").joined_at(), 10U);  // waits for the next one
  }
  {  // bytes: 3 frames of 100 fit in 250 no more
    auto c = grouping(BroadcastMode::lossy, 16);
    c.group_bytes = 250;
    Broadcast<video::Frame> b(c);
    for (std::uint64_t i = 0; i < 7; ++i) {
      ASSERT_TRUE(b.publish(frame_at(i, 100)));
      EXPECT_LE(b.retained_bytes(), 250U);
    }
    EXPECT_EQ(b.stats().group_items, 2U);  // 5, 6
    ASSERT_TRUE(b.publish(frame_at(7, 100)));
    EXPECT_EQ(b.stats().group_items, 0U);  // 5..7 weigh 300
    EXPECT_EQ(b.retained_bytes(), 0U);
  }
}

TEST(BroadcastGroups, RejectsMoreThanCapacity) {
  auto c = grouping(BroadcastMode::lossy, 8);
  c.group_items = 9;
  EXPECT_THROW(Broadcast<video::Frame>{c}, std::invalid_argument);
}

TEST(BroadcastGroups, NewcomersRacingWithPublishesStartAtAKeyframeInOrder) {
  // Subscribers keep joining at the group while a publisher runs: each one's first item is a
  // keyframe (or, lapped, a gap first), then items in order, never one twice.
  auto c = grouping(BroadcastMode::lossy, 64);
  Broadcast<video::Frame> b(c);
  constexpr std::uint64_t kItems = 20000;
  std::atomic<bool> done{false};
  std::atomic<int> failures{0};
  std::atomic<std::uint64_t> joins{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      while (b.published() < 2 * kGop) std::this_thread::yield();  // (delta frames were seen)
      while (!done.load()) {
        auto s = b.subscribe_at_group("newcomer", 8);
        joins.fetch_add(1);
        std::uint64_t next = s.joined_at();
        bool first = true;
        for (int n = 0; n < 50 && !done.load(); ++n) {
          auto got = s.recv_for(100ms);
          if (got.status == RecvStatus::gap) {
            next += got.lost;
            first = false;
            continue;
          }
          if (got.status == RecvStatus::timeout) continue;
          if (!got.ok() || got->index != next || (first && got->delta)) failures.fetch_add(1);
          first = false;
          ++next;
        }
      }
    });
  }
  // (At least kItems, and on until the readers have joined a few times: they may start late.)
  for (std::uint64_t i = 0; i < kItems || (joins.load() < 20 && i < 1000 * kItems); ++i) {
    ASSERT_TRUE(b.publish(frame_at(i)).ok());
  }
  done.store(true);
  for (auto& t : readers) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GE(joins.load(), 20U);
}

}  // namespace sluice

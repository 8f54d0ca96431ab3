// PriorityChannel: shedding order, critical/control never dropped, priority order with
// anti-starvation, budgets, outcomes, hooks, stats.
#include "sluice/priority_channel.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace sluice {
namespace {

using namespace std::chrono_literals;

PriorityChannelConfig small(std::size_t overall, std::size_t per_class = 100) {
  PriorityChannelConfig c;
  c.name = "robot";
  c.max_items = overall;
  for (auto& b : c.classes) b.max_items = per_class;
  return c;
}

std::vector<std::pair<Priority, int>> drain(PriorityChannel<int>& ch) {
  std::vector<std::pair<Priority, int>> out;
  for (auto r = ch.try_recv(); r.ok(); r = ch.try_recv()) out.emplace_back(r->priority, r->item);
  return out;
}

TEST(PriorityChannel, ReceivesMostImportantFirstFifoWithinAClass) {
  PriorityChannel<int> ch(small(100));
  ASSERT_TRUE(ch.send(Priority::bulk, 1));
  ASSERT_TRUE(ch.send(Priority::important, 2));
  ASSERT_TRUE(ch.send(Priority::control, 3));
  ASSERT_TRUE(ch.send(Priority::critical, 4));
  ASSERT_TRUE(ch.send(Priority::control, 5));
  const auto got = drain(ch);
  const std::vector<std::pair<Priority, int>> want{{Priority::control, 3},
                                                   {Priority::control, 5},
                                                   {Priority::critical, 4},
                                                   {Priority::important, 2},
                                                   {Priority::bulk, 1}};
  EXPECT_EQ(got, want);
}

TEST(PriorityChannel, UnderPressureShedsBulkOldestFirstThenImportant) {
  PriorityChannel<int> ch(small(4));
  ASSERT_TRUE(ch.send(Priority::bulk, 1));
  ASSERT_TRUE(ch.send(Priority::bulk, 2));
  ASSERT_TRUE(ch.send(Priority::important, 3));
  ASSERT_TRUE(ch.send(Priority::important, 4));
  auto r = ch.send(Priority::critical, 10);  // full: displaces bulk 1
  ASSERT_TRUE(r);
  EXPECT_EQ(r.evicted, 1U);
  ASSERT_TRUE(ch.send(Priority::critical, 11));  // displaces bulk 2
  ASSERT_TRUE(ch.send(Priority::critical, 12));  // no bulk left: displaces important 3
  const auto s = ch.stats();
  EXPECT_EQ(s[Priority::bulk].dropped[DropReason::priority_shed], 2U);
  EXPECT_EQ(s[Priority::important].dropped[DropReason::priority_shed], 1U);
  EXPECT_EQ(s[Priority::critical].dropped.total(), 0U);
  const auto got = drain(ch);
  const std::vector<std::pair<Priority, int>> want{{Priority::critical, 10},
                                                   {Priority::critical, 11},
                                                   {Priority::critical, 12},
                                                   {Priority::important, 4}};
  EXPECT_EQ(got, want);
}

TEST(PriorityChannel, AnItemNeverDisplacesAMoreImportantOne) {
  PriorityChannel<int> ch(small(2));
  ASSERT_TRUE(ch.send(Priority::critical, 1));
  ASSERT_TRUE(ch.send(Priority::important, 2));
  auto r = ch.send(Priority::bulk, 3);  // nothing less important than bulk to shed
  EXPECT_EQ(r.status, SendStatus::dropped);
  EXPECT_EQ(r.reason, DropReason::priority_shed);
  auto i = ch.send(Priority::important, 4);  // displaces its own class's oldest
  EXPECT_TRUE(i);
  EXPECT_EQ(i.evicted, 1U);
  EXPECT_EQ(drain(ch), (std::vector<std::pair<Priority, int>>{{Priority::critical, 1},
                                                              {Priority::important, 4}}));
}

TEST(PriorityChannel, BulkClassBudgetDropsItsOwnOldest) {
  PriorityChannelConfig c = small(100);
  c[Priority::bulk].max_items = 2;
  PriorityChannel<int> ch(c);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(ch.send(Priority::bulk, i));
  EXPECT_EQ(drain(ch),
            (std::vector<std::pair<Priority, int>>{{Priority::bulk, 3}, {Priority::bulk, 4}}));
  EXPECT_EQ(ch.stats()[Priority::bulk].dropped[DropReason::priority_shed], 3U);
}

// The seed's deque(maxlen=...) silently evicted critical messages. Here a full critical class
// makes its producer wait or be rejected: a critical item is never lost.
TEST(PriorityChannel, CriticalIsNeverDroppedItsProducerIsRejectedOrTimesOut) {
  PriorityChannelConfig c = small(100, 3);
  c.protected_full = PriorityChannelConfig::ProtectedFull::reject;
  PriorityChannel<int> ch(c);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ch.send(Priority::critical, i));
  int extra = 99;
  auto r = ch.send(Priority::critical, std::move(extra));
  EXPECT_EQ(r.status, SendStatus::would_block);
  EXPECT_EQ(extra, 99);  // the producer keeps it

  PriorityChannelConfig b = small(3);
  b.protected_full = PriorityChannelConfig::ProtectedFull::block;
  b.max_wait = 20ms;
  PriorityChannel<int> blocking(b);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(blocking.send(Priority::control, i));
  auto t = blocking.send(Priority::critical, 7);
  EXPECT_EQ(t.status, SendStatus::timeout);
  EXPECT_NE(t.message.find("'robot'"), std::string::npos) << t.message;
  EXPECT_NE(t.message.find("never dropped"), std::string::npos) << t.message;
  const auto s = blocking.stats();
  EXPECT_EQ(s[Priority::critical].timeouts, 1U);
  EXPECT_EQ(s[Priority::control].dropped.total() + s[Priority::critical].dropped.total(), 0U);
  EXPECT_EQ(drain(blocking).size(), 3U);
}

TEST(PriorityChannel, BlockedCriticalProducerProceedsWhenAConsumerMakesRoom) {
  PriorityChannel<int> ch(small(100, 1));
  ASSERT_TRUE(ch.send(Priority::critical, 1));
  std::thread consumer([&] {
    std::this_thread::sleep_for(20ms);
    auto r = ch.recv();
    EXPECT_EQ(r->item, 1);
  });
  EXPECT_TRUE(ch.send(Priority::critical, 2));  // waits for the receive
  consumer.join();
  EXPECT_EQ(ch.try_recv()->item, 2);
}

TEST(PriorityChannel, ALowerClassIsServedAtLeastOnceEveryNPlusOneReceives) {
  PriorityChannelConfig c = small(1000, 1000);
  c.starvation_limit = 3;
  PriorityChannel<int> ch(c);
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(ch.send(Priority::control, i));
  ASSERT_TRUE(ch.send(Priority::bulk, 100));
  ASSERT_TRUE(ch.send(Priority::bulk, 101));
  const auto got = drain(ch);
  // control, control, control, bulk, control x3, bulk, control...
  ASSERT_GE(got.size(), 8U);
  EXPECT_EQ(got[3], (std::pair<Priority, int>{Priority::bulk, 100}));
  EXPECT_EQ(got[7], (std::pair<Priority, int>{Priority::bulk, 101}));
  EXPECT_EQ(ch.stats().starvation_serves, 2U);
}

// Every class starving at once (default limit 8; 30 control, 60 critical, 40 important and 40
// bulk items queued): the classes that reach the limit together are served one after another,
// and each waits no longer than the contract's bound — limit + 1 receives for critical, + 2 for
// important, + 3 for bulk — measured as the receives between its serves while it has items.
TEST(PriorityChannel, EveryClassStarvingAtOnceIsServedWithinItsBound) {
  PriorityChannelConfig c = small(1000, 1000);
  PriorityChannel<int> ch(c);
  const std::array<int, kPriorityCount> queued{30, 60, 40, 40};
  for (std::size_t p = 0; p < kPriorityCount; ++p) {
    for (int i = 0; i < queued[p]; ++i) ASSERT_TRUE(ch.send(static_cast<Priority>(p), i));
  }
  const auto got = drain(ch);
  ASSERT_EQ(got.size(), 170U);
  // The order the contract implies at the start: 8 control, then critical, important, bulk.
  for (std::size_t i = 0; i < 8; ++i) EXPECT_EQ(got[i].first, Priority::control) << i;
  EXPECT_EQ(got[8].first, Priority::critical);
  EXPECT_EQ(got[9].first, Priority::important);
  EXPECT_EQ(got[10].first, Priority::bulk);
  std::array<int, kPriorityCount> left = queued;
  std::array<std::size_t, kPriorityCount> since{};  // receives since the class was last served
  std::array<std::size_t, kPriorityCount> worst{};
  for (const auto& [p, value] : got) {
    const auto served = static_cast<std::size_t>(p);
    for (std::size_t k = 0; k < kPriorityCount; ++k) {
      if (left[k] == 0) continue;
      ++since[k];
      if (k == served) {
        worst[k] = std::max(worst[k], since[k]);
        since[k] = 0;
      }
    }
    --left[served];
  }
  const std::size_t limit = c.starvation_limit;
  EXPECT_LE(worst[1], limit + 1) << "critical";
  EXPECT_LE(worst[2], limit + 2) << "important";
  EXPECT_LE(worst[3], limit + 3) << "bulk";
  EXPECT_EQ(worst[3], limit + 3) << "the bound for bulk is reached here, so it is the bound";
}

TEST(PriorityChannel, CloseDrainsThenClosedAndSendersSeeClosed) {
  PriorityChannel<int> ch(small(10));
  ASSERT_TRUE(ch.send(Priority::bulk, 1));
  ch.close();
  EXPECT_EQ(ch.send(Priority::control, 2).status, SendStatus::closed);
  EXPECT_EQ(ch.recv()->item, 1);
  EXPECT_EQ(ch.recv().status, RecvStatus::closed);
}

TEST(PriorityChannel, HooksAndTimeouts) {
  PriorityChannel<int> ch(small(10, 1));
  EXPECT_EQ(ch.recv_for(5ms).status, RecvStatus::timeout);
  int readable = 0;
  ch.on_readable([&] { ++readable; });
  ASSERT_TRUE(ch.send(Priority::critical, 1));
  EXPECT_EQ(readable, 1);
  int writable = 0;
  ch.on_writable([&] { ++writable; });  // critical class full: not yet
  EXPECT_EQ(writable, 0);
  ASSERT_TRUE(ch.try_recv().ok());
  EXPECT_EQ(writable, 1);
}

TEST(PriorityChannel, BytesAreBudgetedPerClassAndOverall) {
  PriorityChannelConfig c;
  c.name = "bytes";
  c.max_bytes = 10;
  PriorityChannel<std::string> ch(c);
  ASSERT_TRUE(ch.send(Priority::bulk, std::string(6, 'b')));
  auto r = ch.send(Priority::important, std::string(6, 'i'));  // 12 > 10: bulk is shed
  ASSERT_TRUE(r);
  EXPECT_EQ(r.evicted, 1U);
  const auto s = ch.stats();
  EXPECT_EQ(s.queue_bytes, 6U);
  EXPECT_LE(s.max_queue_bytes_seen, 10U + 6U);
}

TEST(PriorityChannel, ConfigurationIsValidatedWithNames) {
  PriorityChannelConfig c;
  c[Priority::critical].max_items = 0;
  try {
    PriorityChannel<int> ch(c);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("classes[critical].max_items"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(parse_priority("important"), Priority::important);
  EXPECT_FALSE(parse_priority("urgent").has_value());
}

}  // namespace
}  // namespace sluice

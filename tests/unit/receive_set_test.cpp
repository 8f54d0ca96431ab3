// ReceiveSet: round-robin fairness (a quiet source next to a flooding one is not starved),
// waking without polling, closed when all are, summed queue bytes.
#include "sluice/receive_set.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

namespace sluice {
namespace {

using namespace std::chrono_literals;

ChannelConfig config(std::string name, std::size_t items) {
  ChannelConfig c;
  c.name = std::move(name);
  c.max_items = items;
  c.policy = OverflowPolicy::block;
  return c;
}

TEST(ReceiveSet, AQuietChannelIsServedBetweenTheItemsOfAFloodingOne) {
  Channel<std::string> flood(config("flood", 1024));
  Channel<std::string> quiet(config("quiet", 16));
  ReceiveSet<std::string> set;
  ASSERT_EQ(set.add(flood), 0U);
  ASSERT_EQ(set.add(quiet), 1U);
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(flood.try_send(std::to_string(i)));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(quiet.try_send(std::to_string(1000 + i)));
  EXPECT_EQ(set.len(), 1005U);
  EXPECT_EQ(set.queue_bytes(), flood.queue_bytes() + quiet.queue_bytes());
  // While both have items, they alternate: the five quiet items come within ten receives.
  std::vector<std::size_t> order;
  for (int i = 0; i < 10; ++i) {
    auto r = set.try_recv();
    ASSERT_TRUE(r.ok());
    order.push_back(r->index);
  }
  EXPECT_EQ(order, (std::vector<std::size_t>{0, 1, 0, 1, 0, 1, 0, 1, 0, 1}));
  EXPECT_EQ(quiet.len(), 0U);
}

TEST(ReceiveSet, RecvWaitsAndIsWokenByASendOnAnyChannel) {
  Channel<int> a(config("a", 4));
  Channel<int> b(config("b", 4));
  ReceiveSet<int> set;
  set.add(a);
  set.add(b);
  EXPECT_EQ(set.try_recv().status, RecvStatus::would_block);
  EXPECT_EQ(set.recv_for(10ms).status, RecvStatus::timeout);
  std::thread sender([&] {
    std::this_thread::sleep_for(20ms);
    ASSERT_TRUE(b.try_send(7));
  });
  auto r = set.recv_for(10s);
  sender.join();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->index, 1U);
  EXPECT_EQ(r->item, 7);
}

TEST(ReceiveSet, ClosedOnlyOnceEveryChannelIsClosedAndDrained) {
  Channel<int> a(config("a", 4));
  Channel<int> b(config("b", 4));
  ReceiveSet<int> set;
  set.add(a);
  set.add(b);
  ASSERT_TRUE(a.try_send(1));
  a.close();
  b.close();
  auto first = set.recv_for(1s);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->item, 1);
  EXPECT_EQ(set.recv_for(1s).status, RecvStatus::closed);
}

// The CPU time this thread has used.
std::chrono::nanoseconds thread_cpu_time() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return std::chrono::seconds(t.tv_sec) + std::chrono::nanoseconds(t.tv_nsec);
}

// A closed channel is always "ready" (it answers closed at once); a set that kept returning
// to it would burn a core for the whole wait. The receiver waits 300 ms on the open channel
// and uses a small part of that in CPU time (a spinning wait uses nearly all of it).
TEST(ReceiveSet, AClosedChannelDoesNotMakeTheOthersSpin) {
  Channel<int> a(config("a", 4));
  Channel<int> b(config("b", 4));
  ReceiveSet<int> set;
  set.add(a);
  set.add(b);
  a.close();
  const auto cpu_before = thread_cpu_time();
  const auto wall_before = std::chrono::steady_clock::now();
  EXPECT_EQ(set.recv_for(300ms).status, RecvStatus::timeout);
  const auto cpu = thread_cpu_time() - cpu_before;
  const auto wall = std::chrono::steady_clock::now() - wall_before;
  EXPECT_GE(wall, 300ms);
  EXPECT_LT(cpu, wall / 4) << "the receiver used "
                           << std::chrono::duration<double, std::milli>(cpu).count()
                           << " ms of CPU in a 300 ms wait";
}

// Threads: a flooding producer that always has room to fill, a quiet one sending 200 items,
// one consumer. Every item of both arrives, in order per channel, and the quiet channel never
// builds a backlog beyond its capacity (its producer never times out).
TEST(ReceiveSet, UnderAFloodTheQuietProducerIsNeverHeldUp) {
  Channel<int> flood(config("flood", 256));
  Channel<int> quiet(config("quiet", 8));
  ReceiveSet<int> set;
  set.add(flood);
  set.add(quiet);
  std::atomic<bool> stop{false};
  std::thread flooder([&] {
    int i = 0;
    while (!stop.load()) {
      if (flood.send(int{i}, std::chrono::steady_clock::now() + 50ms).ok()) ++i;
    }
    flood.close();
  });
  int quiet_timeouts = 0;
  std::thread quiet_sender([&] {
    for (int i = 0; i < 200; ++i) {
      if (!quiet.send(int{i}, std::chrono::steady_clock::now() + 5s).ok()) ++quiet_timeouts;
      std::this_thread::sleep_for(200us);
    }
    quiet.close();
    stop.store(true);
  });
  int next_flood = 0, next_quiet = 0;
  for (;;) {
    auto r = set.recv_for(10s);
    if (r.status == RecvStatus::closed) break;
    ASSERT_TRUE(r.ok()) << to_string(r.status);
    if (r->index == 0) {
      EXPECT_EQ(r->item, next_flood++);
    } else {
      EXPECT_EQ(r->item, next_quiet++);
    }
  }
  flooder.join();
  quiet_sender.join();
  EXPECT_EQ(next_quiet, 200);
  EXPECT_EQ(quiet_timeouts, 0);
  EXPECT_GT(next_flood, 0);
  EXPECT_EQ(quiet.stats().dropped.total(), 0U);
}

}  // namespace
}  // namespace sluice

// Readiness hooks: how an event loop waits on many channels without a thread each.
#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <memory>
#include <thread>
#include <utility>  // before Asio with Boost 1.74 and C++20 (see DESIGN.md)
#include <vector>

#include "sluice/channel.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;

ChannelConfig small(std::size_t items, OverflowPolicy policy = OverflowPolicy::block) {
  ChannelConfig c;
  c.name = "hooked";
  c.max_items = items;
  c.policy = policy;
  return c;
}

TEST(ChannelHooks, ReadableFiresAtOnceWhenAnItemIsQueued) {
  Channel<int> ch(small(4));
  ASSERT_TRUE(ch.send(1));
  int fired = 0;
  ch.on_readable([&] { ++fired; });
  EXPECT_EQ(fired, 1);
}

TEST(ChannelHooks, ReadableFiresOnceOnTheNextSendOnly) {
  Channel<int> ch(small(4));
  int fired = 0;
  ch.on_readable([&] { ++fired; });
  EXPECT_EQ(fired, 0);
  ASSERT_TRUE(ch.send(1));
  EXPECT_EQ(fired, 1);
  ASSERT_TRUE(ch.send(2));
  EXPECT_EQ(fired, 1);  // one-shot
}

TEST(ChannelHooks, WritableFiresWhenAReceiveFreesRoom) {
  Channel<int> ch(small(2));
  ASSERT_TRUE(ch.send(1));
  ASSERT_TRUE(ch.send(2));
  int fired = 0;
  ch.on_writable([&] { ++fired; });
  EXPECT_EQ(fired, 0);
  ASSERT_TRUE(ch.try_recv());
  EXPECT_EQ(fired, 1);
  EXPECT_TRUE(ch.try_send(3));
}

TEST(ChannelHooks, WritableWatchesTheByteBudgetToo) {
  ChannelConfig c = small(100);
  c.max_bytes = 10;
  c.policy = OverflowPolicy::reject;
  Channel<std::string> ch(c);
  ASSERT_TRUE(ch.send(std::string(10, 'x')));
  int fired = 0;
  ch.on_writable([&] { ++fired; });
  EXPECT_EQ(fired, 0);
  ASSERT_TRUE(ch.try_recv());
  EXPECT_EQ(fired, 1);
}

TEST(ChannelHooks, CloseFiresBothKinds) {
  Channel<int> ch(small(1));
  ASSERT_TRUE(ch.send(1));
  int readable = 0;
  int writable = 0;
  ChannelConfig c = small(1);
  Channel<int> empty(c);
  empty.on_readable([&] { ++readable; });
  ch.on_writable([&] { ++writable; });
  empty.close();
  ch.close();
  EXPECT_EQ(readable, 1);
  EXPECT_EQ(writable, 1);
}

// One Asio thread drains eight channels fed by four producer threads: the loop never blocks
// on a channel and no thread is dedicated to one.
TEST(ChannelHooks, OneAsioThreadServesManyChannels) {
  constexpr int kChannels = 8;
  constexpr int kProducers = 4;
  constexpr int kPerProducer = 20'000;
  std::vector<std::unique_ptr<Channel<int>>> channels;
  for (int i = 0; i < kChannels; ++i) channels.push_back(std::make_unique<Channel<int>>(small(64)));

  boost::asio::io_context io;
  auto guard = boost::asio::make_work_guard(io);
  std::vector<long> sums(kChannels, 0);
  std::vector<int> counts(kChannels, 0);
  int closed = 0;

  // drain(i): take everything available, then re-arm. Runs only on the io thread.
  std::function<void(int)> drain = [&](int i) {
    for (;;) {
      auto r = channels[i]->try_recv();
      if (r.ok()) {
        sums[i] += *r;
        ++counts[i];
        continue;
      }
      if (r.status == RecvStatus::closed) {
        if (++closed == kChannels) guard.reset();
        return;
      }
      channels[i]->on_readable([&, i] { boost::asio::post(io, [&, i] { drain(i); }); });
      return;
    }
  };
  for (int i = 0; i < kChannels; ++i) boost::asio::post(io, [&, i] { drain(i); });
  std::thread loop([&] { io.run(); });

  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int n = 0; n < kPerProducer; ++n) {
        ASSERT_TRUE(channels[(p + n) % kChannels]->send(n));
      }
    });
  }
  for (auto& t : producers) t.join();
  for (auto& ch : channels) ch->close();
  loop.join();

  long total = 0;
  int received = 0;
  for (int i = 0; i < kChannels; ++i) {
    total += sums[i];
    received += counts[i];
  }
  EXPECT_EQ(received, kProducers * kPerProducer);
  EXPECT_EQ(total, static_cast<long>(kProducers) * kPerProducer * (kPerProducer - 1) / 2);
}

// The writable hook lets an event loop produce into a channel without ever blocking on it.
TEST(ChannelHooks, AsioProducerWaitsForRoomWithoutBlockingTheLoop) {
  Channel<int> ch(small(8));
  constexpr int kItems = 50'000;
  boost::asio::io_context io;
  // While the producer waits for room, the loop may have nothing queued: keep it running
  // until the producer is done.
  auto guard = boost::asio::make_work_guard(io);
  int next = 0;
  int timer_ticks = 0;
  std::function<void()> produce = [&] {
    while (next < kItems) {
      auto r = ch.try_send(int{next});
      if (r.ok()) {
        ++next;
        continue;
      }
      ASSERT_EQ(r.status, SendStatus::would_block);
      ch.on_writable([&] { boost::asio::post(io, produce); });
      return;
    }
    ch.close();
    guard.reset();
  };
  // A timer on the same loop keeps firing while the producer waits for room.
  boost::asio::steady_timer timer(io);
  std::function<void()> tick = [&] {
    if (++timer_ticks == 3 || ch.is_closed()) return;
    timer.expires_after(1ms);
    timer.async_wait([&](auto) { tick(); });
  };
  boost::asio::post(io, produce);
  boost::asio::post(io, tick);
  std::thread loop([&] { io.run(); });

  long expected = 0;
  for (auto r = ch.recv(); r.ok(); r = ch.recv()) {
    ASSERT_EQ(*r, expected++);
    if (expected % 10'000 == 0) std::this_thread::sleep_for(5ms);  // a slow consumer
  }
  loop.join();
  EXPECT_EQ(expected, kItems);
  EXPECT_GE(timer_ticks, 1);
}

}  // namespace
}  // namespace sluice

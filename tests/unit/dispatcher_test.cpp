// Dispatcher: routing by smoothed latency and credit, health and probes, overflow policies,
// and what happens to the items of a worker that fails, stalls or leaves (never lost
// silently). Time is explicit where the behaviour depends on it.
#include "sluice/dispatcher.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace sluice {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Item = std::string;

struct Failure {
  Item item;
  DropReason reason;
  std::string message;
};

struct Fixture {
  explicit Fixture(DispatcherConfig c = {})
      : d(std::move(c), [this](Item&& item, DropReason reason, std::string_view message) {
          failures.push_back({std::move(item), reason, std::string(message)});
        }) {}
  std::vector<Failure> failures;
  Dispatcher<Item> d;
};

WorkerConfig worker(std::string name, std::uint32_t concurrent = 1, std::size_t queue = 4) {
  WorkerConfig w;
  w.name = std::move(name);
  w.max_concurrent = concurrent;
  w.queue_items = queue;
  return w;
}

void expect_counters_add_up(const DispatcherStats& s) {
  EXPECT_EQ(s.accepted, s.completed + s.failed + s.queued + s.in_flight);
}

TEST(Dispatcher, WithoutWorkersDropsAsNoWorkerAndSaysSo) {
  Fixture f;
  auto r = f.d.try_route("a");
  EXPECT_EQ(r.status, RouteStatus::dropped);
  EXPECT_EQ(r.reason, DropReason::no_worker);
  EXPECT_NE(r.message.find("has no worker"), std::string::npos) << r.message;
  EXPECT_EQ(f.d.stats().dropped[DropReason::no_worker], 1U);
}

TEST(Dispatcher, CreditsBoundWhatAWorkerHoldsAndTheQueueBoundsTheRest) {
  Fixture f;
  auto w = f.d.join(worker("gpu", /*concurrent=*/2, /*queue=*/3));
  for (const char* s : {"a", "b", "c"}) ASSERT_TRUE(f.d.try_route(s)) << s;
  auto full = f.d.try_route("d");
  EXPECT_EQ(full.status, RouteStatus::dropped);
  EXPECT_EQ(full.reason, DropReason::overflow);
  EXPECT_NE(full.message.find("is full"), std::string::npos) << full.message;

  auto t1 = w.try_take();
  auto t2 = w.try_take();
  ASSERT_TRUE(t1 && t2);
  EXPECT_EQ(t1->item, "a");
  EXPECT_EQ(t2->item, "b");
  EXPECT_FALSE(w.try_take()) << "a third item while two credits are used";
  EXPECT_TRUE(w.complete(t1->id));
  auto t3 = w.try_take();
  ASSERT_TRUE(t3);
  EXPECT_EQ(t3->item, "c");
  const auto s = f.d.stats();
  EXPECT_EQ(s.accepted, 3U);
  EXPECT_EQ(s.completed, 1U);
  EXPECT_EQ(s.in_flight, 2U);
  EXPECT_EQ(s.workers.at(0).max_in_flight_seen, 2U);
  expect_counters_add_up(s);
}

TEST(Dispatcher, RejectLeavesTheItemWithTheCaller) {
  DispatcherConfig c;
  c.overflow = OverflowPolicy::reject;
  Fixture f(c);
  auto w = f.d.join(worker("w", 1, 1));
  ASSERT_TRUE(f.d.try_route("a"));
  Item b = "b";
  auto r = f.d.try_route(std::move(b));
  EXPECT_EQ(r.status, RouteStatus::would_block);
  EXPECT_EQ(b, "b");  // NOLINT(bugprone-use-after-move): not moved from unless routed
  EXPECT_EQ(f.d.stats().rejected, 1U);
  EXPECT_EQ(f.d.stats().dropped.total(), 0U);
}

TEST(Dispatcher, BlockWaitsForRoomThenTimesOutWithTheItemKept) {
  DispatcherConfig c;
  c.overflow = OverflowPolicy::block;
  Fixture f(c);
  auto w = f.d.join(worker("w", 1, 1));
  ASSERT_TRUE(f.d.try_route("a"));
  Item b = "b";
  auto r = f.d.route(std::move(b), Clock::now() + 20ms);
  EXPECT_EQ(r.status, RouteStatus::timeout);
  EXPECT_EQ(b, "b");  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(f.d.stats().timeouts, 1U);

  // Room frees when the worker takes "a": a blocked route goes through.
  std::thread taker([&] {
    std::this_thread::sleep_for(20ms);
    auto t = w.try_take();
    EXPECT_TRUE(t);
  });
  auto ok = f.d.route(std::move(b), Clock::now() + 10s);
  taker.join();
  EXPECT_TRUE(ok) << ok.message;
}

TEST(Dispatcher, PrefersTheFasterWorkerByItsSmoothedLatency) {
  Fixture f;
  auto fast = f.d.join(worker("fast", 1, 8));
  auto slow = f.d.join(worker("slow", 1, 8));
  const auto t0 = Clock::now();
  // Teach it the latencies: one item each.
  ASSERT_TRUE(f.d.try_route("x"));
  ASSERT_TRUE(f.d.try_route("y"));
  auto a = fast.try_take(t0);
  auto b = slow.try_take(t0);
  ASSERT_TRUE(a && b);
  fast.complete(a->id, t0 + 10ms);
  slow.complete(b->id, t0 + 40ms);
  // Both idle: the next item goes to the fast one.
  auto r = f.d.try_route("z");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.worker_id, fast.id());
}

// A virtual-time simulation at saturation: items every 5 ms, a worker taking 10 ms and one
// taking 40 ms (4× slower), one credit each, queues of 4. The fast one must get ≥ 75 %.
TEST(Dispatcher, UnderSaturationTheFourTimesFasterWorkerGetsAtLeastThreeQuarters) {
  Fixture f;
  auto fast = f.d.join(worker("fast", 1, 4));
  auto slow = f.d.join(worker("slow", 1, 4));
  struct Sim {
    Dispatcher<Item>::Worker* w;
    std::chrono::milliseconds cost;
    std::optional<std::pair<std::uint64_t, Clock::time_point>> busy;  // task, finishes at
    int done = 0;
  };
  std::vector<Sim> sims = {{&fast, 10ms, {}, 0}, {&slow, 40ms, {}, 0}};
  const auto t0 = Clock::now();
  for (int ms = 0; ms < 20'000; ++ms) {
    const auto now = t0 + std::chrono::milliseconds(ms);
    for (auto& s : sims) {
      if (s.busy && s.busy->second <= now) {
        EXPECT_TRUE(s.w->complete(s.busy->first, now));
        ++s.done;
        s.busy.reset();
      }
      if (!s.busy) {
        if (auto t = s.w->try_take(now)) s.busy = {{t->id, now + s.cost}};
      }
    }
    if (ms % 5 == 0) (void)f.d.try_route("frame", now);
    for (auto& s : sims) {  // take at once what was just routed to an idle worker
      if (!s.busy) {
        if (auto t = s.w->try_take(now)) s.busy = {{t->id, now + s.cost}};
      }
    }
  }
  const double total = sims[0].done + sims[1].done;
  ASSERT_GT(total, 2000);
  EXPECT_GE(sims[0].done / total, 0.75) << sims[0].done << " fast, " << sims[1].done << " slow";
  const auto s = f.d.stats();
  EXPECT_GT(s.dropped[DropReason::overflow], 0U) << "the simulation is meant to saturate";
  expect_counters_add_up(s);
}

TEST(Dispatcher, AFailedItemIsReroutedOnceThenFailedWithItsReason) {
  Fixture f;
  auto a = f.d.join(worker("a"));
  auto b = f.d.join(worker("b"));
  ASSERT_TRUE(f.d.try_route("item"));
  auto t = a.try_take();  // both unmeasured and idle: the oldest worker gets it
  ASSERT_TRUE(t);
  EXPECT_TRUE(a.fail(t->id, "CUDA out of memory"));
  EXPECT_FALSE(a.try_take()) << "a retry goes to another worker";
  auto again = b.try_take();
  ASSERT_TRUE(again);
  EXPECT_EQ(again->item, "item");
  EXPECT_EQ(again->attempt, 2U);
  EXPECT_EQ(f.d.stats().rerouted, 1U);
  EXPECT_TRUE(b.fail(again->id, "CUDA out of memory"));
  ASSERT_EQ(f.failures.size(), 1U);
  EXPECT_EQ(f.failures[0].item, "item");
  EXPECT_EQ(f.failures[0].reason, DropReason::worker_failed);
  EXPECT_NE(f.failures[0].message.find("CUDA out of memory"), std::string::npos);
  EXPECT_NE(f.failures[0].message.find("attempt 2 of 2"), std::string::npos)
      << f.failures[0].message;
  const auto s = f.d.stats();
  EXPECT_EQ(s.failed_by_reason[DropReason::worker_failed], 1U);
  expect_counters_add_up(s);
}

TEST(Dispatcher, AWorkerIsUnhealthyAfterConsecutiveErrorsAndProbedToRecover) {
  DispatcherConfig c;
  c.unhealthy_after = 3;
  c.probe_after = 1s;
  c.max_attempts = 1;
  Fixture f(c);
  auto w = f.d.join(worker("flaky", 1, 4));
  const auto t0 = Clock::now();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(f.d.try_route("x", t0));
    auto t = w.try_take(t0);
    ASSERT_TRUE(t);
    EXPECT_TRUE(w.fail(t->id, "boom", t0));
  }
  EXPECT_EQ(w.stats()->health, WorkerHealth::unhealthy);
  EXPECT_EQ(f.failures.size(), 3U);
  auto refused = f.d.try_route("y", t0 + 500ms);
  EXPECT_EQ(refused.reason, DropReason::no_worker);
  EXPECT_NE(refused.message.find("unhealthy"), std::string::npos) << refused.message;

  // After probe_after, one probe item; its success makes the worker healthy again.
  auto probe = f.d.try_route("probe", t0 + 1s);
  ASSERT_TRUE(probe) << probe.message;
  EXPECT_EQ(w.stats()->probes, 1U);
  EXPECT_FALSE(f.d.try_route("second", t0 + 1s)) << "only one probe at a time";
  auto t = w.try_take(t0 + 1s);
  ASSERT_TRUE(t);
  EXPECT_TRUE(w.complete(t->id, t0 + 1s + 5ms));
  EXPECT_EQ(w.stats()->health, WorkerHealth::healthy);
  EXPECT_TRUE(f.d.try_route("z", t0 + 2s));
}

TEST(Dispatcher, AnItemHeldPastTheTaskTimeoutIsReroutedAndTheLateResultRefused) {
  DispatcherConfig c;
  c.task_timeout = 2s;
  Fixture f(c);
  auto stalled = f.d.join(worker("stalled"));
  ASSERT_TRUE(f.d.try_route("x"));
  const auto t0 = Clock::now();
  auto t = stalled.try_take(t0);
  ASSERT_TRUE(t);
  auto healthy = f.d.join(worker("healthy"));
  f.d.poll(t0 + 1s);
  EXPECT_FALSE(healthy.try_take(t0 + 1s)) << "not timed out yet";
  f.d.poll(t0 + 2s);
  auto again = healthy.try_take(t0 + 2s);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->item, "x");
  EXPECT_EQ(stalled.stats()->timeouts, 1U);
  EXPECT_FALSE(stalled.complete(t->id, t0 + 3s));
  EXPECT_EQ(stalled.stats()->late_results, 1U);
  EXPECT_TRUE(healthy.complete(again->id, t0 + 3s));
  EXPECT_TRUE(f.failures.empty());
  expect_counters_add_up(f.d.stats());
}

TEST(Dispatcher, AWorkerThatLeavesGivesItsItemsToTheOthers) {
  Fixture f;
  auto leaving = f.d.join(worker("leaving", 1, 8));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(f.d.try_route("item" + std::to_string(i)));
  auto held = leaving.try_take();
  ASSERT_TRUE(held);
  auto staying = f.d.join(worker("staying", 4, 8));
  leaving.leave();
  std::vector<std::string> got;
  while (auto t = staying.try_take()) {
    got.push_back(t->item);
    EXPECT_TRUE(staying.complete(t->id));
  }
  EXPECT_EQ(got.size(), 3U);
  EXPECT_TRUE(f.failures.empty());
  const auto s = f.d.stats();
  EXPECT_EQ(s.completed, 3U);
  EXPECT_EQ(s.rerouted, 3U);
  expect_counters_add_up(s);
}

TEST(Dispatcher, TheLastWorkerLeavingFailsEveryItemItHeldWithAReason) {
  Fixture f;
  {
    auto only = f.d.join(worker("only", 1, 8));
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(f.d.try_route("item" + std::to_string(i)));
    ASSERT_TRUE(only.try_take());
  }  // the handle's destructor leaves
  ASSERT_EQ(f.failures.size(), 3U);
  for (const auto& x : f.failures) {
    EXPECT_EQ(x.reason, DropReason::worker_failed);
    EXPECT_NE(x.message.find("worker only left"), std::string::npos) << x.message;
  }
  const auto s = f.d.stats();
  EXPECT_EQ(s.failed, 3U);
  expect_counters_add_up(s);
}

TEST(Dispatcher, AWorkerWithItsQueueEightyPercentFullIsOverloaded) {
  Fixture f;
  auto w = f.d.join(worker("w", 1, 5));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(f.d.try_route("x"));
  EXPECT_EQ(w.stats()->health, WorkerHealth::healthy);
  ASSERT_TRUE(f.d.try_route("x"));  // 4 of 5
  EXPECT_EQ(w.stats()->health, WorkerHealth::overloaded);
  // A new healthy worker takes the next item although the overloaded one has room.
  auto fresh = f.d.join(worker("fresh", 1, 5));
  auto r = f.d.try_route("y");
  ASSERT_TRUE(r);
  EXPECT_EQ(r.worker_id, fresh.id());
}

TEST(Dispatcher, AWorkerSlowerThanTheThresholdIsSlow) {
  DispatcherConfig c;
  c.slow_latency = 100ms;
  Fixture f(c);
  auto w = f.d.join(worker("w"));
  const auto t0 = Clock::now();
  ASSERT_TRUE(f.d.try_route("x"));
  auto t = w.try_take(t0);
  ASSERT_TRUE(t);
  w.complete(t->id, t0 + 300ms);
  EXPECT_EQ(w.stats()->health, WorkerHealth::slow);
  EXPECT_EQ(w.stats()->smoothed_latency, 300ms);
}

TEST(Dispatcher, OnReadyFiresWhenAnItemArrivesAndWhenTheWorkerLeaves) {
  Fixture f;
  auto w = f.d.join(worker("w"));
  int fired = 0;
  w.on_ready([&] { ++fired; });
  EXPECT_EQ(fired, 0);
  ASSERT_TRUE(f.d.try_route("x"));
  EXPECT_EQ(fired, 1);
  ASSERT_TRUE(w.try_take());
  w.on_ready([&] { ++fired; });
  EXPECT_EQ(fired, 1);
  w.leave();
  EXPECT_EQ(fired, 2);
}

TEST(Dispatcher, CloseFailsQueuedItemsAndRefusesNewOnes) {
  Fixture f;
  auto w = f.d.join(worker("w", 1, 4));
  ASSERT_TRUE(f.d.try_route("a"));
  ASSERT_TRUE(f.d.try_route("b"));
  auto held = w.try_take();
  ASSERT_TRUE(held);
  f.d.close();
  EXPECT_EQ(f.d.try_route("c").status, RouteStatus::closed);
  ASSERT_EQ(f.failures.size(), 1U);
  EXPECT_EQ(f.failures[0].item, "b");
  EXPECT_EQ(f.failures[0].reason, DropReason::no_worker);
  EXPECT_TRUE(w.complete(held->id));  // what was in flight may still finish
  expect_counters_add_up(f.d.stats());
}

TEST(Dispatcher, BadSettingsAreNamed) {
  DispatcherConfig c;
  c.name = "infer";
  c.overflow = OverflowPolicy::drop_oldest;
  try {
    c.validate();
    FAIL() << "drop_oldest accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("infer"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("overflow"), std::string::npos) << e.what();
  }
  Dispatcher<Item> d(DispatcherConfig{});
  WorkerConfig w;
  w.name = "gpu0";
  w.max_concurrent = 0;
  try {
    (void)d.join(w);
    FAIL() << "max_concurrent 0 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("max_concurrent"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sluice

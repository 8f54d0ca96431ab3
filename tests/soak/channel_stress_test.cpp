// Stress: many producers and consumers, random item sizes, invariants checked throughout.
//
// Scale: SLUICE_STRESS_ITEMS (default 1,000,000) items per test. The same binary runs under
// ThreadSanitizer in `make test`.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sluice/channel.hpp"
#include "stress_scale.hpp"

namespace stress {

// An item that weighs what it says: random sizes without allocating payloads, so the test
// stresses the channel rather than malloc.
struct Item {
  std::uint32_t producer = 0;
  std::uint32_t seq = 0;
  std::uint32_t weight = 0;
};
inline std::size_t size_bytes(const Item& item) {
  return item.weight;
}

}  // namespace stress

namespace sluice {
namespace {

using ::stress::Item;
using namespace std::chrono_literals;

std::uint64_t scale() {
  return stress::items();
}

struct Invariants {
  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> samples{0};
  std::atomic<std::uint64_t> worst_bytes{0};
  std::atomic<std::uint64_t> violations{0};
};

// Samples the channel's stats until told to stop; records any queue bytes over the bound.
template <class T>
std::thread start_sampler(const Channel<T>& ch, std::uint64_t bound_bytes, Invariants& inv) {
  return std::thread([&ch, bound_bytes, &inv] {
    while (!inv.done.load()) {
      const auto s = ch.stats();
      const std::uint64_t qb = std::max<std::uint64_t>(s.queue_bytes, ch.queue_bytes());
      if (qb > inv.worst_bytes) inv.worst_bytes = qb;
      if (qb > bound_bytes || s.len > ch.config().max_items) inv.violations.fetch_add(1);
      inv.samples.fetch_add(1);
      std::this_thread::sleep_for(50us);
    }
  });
}

TEST(ChannelStress, BlockPolicyFourByFourEveryItemExactlyOnceWithinBudget) {
  constexpr std::uint32_t kProducers = 4;
  constexpr std::uint32_t kConsumers = 4;
  constexpr std::uint32_t kMaxWeight = 4096;
  const std::uint64_t total = scale();
  const std::uint64_t per_producer = total / kProducers;

  ChannelConfig c;
  c.name = "stress-block";
  c.policy = OverflowPolicy::block;
  c.max_items = 256;
  c.max_bytes = 64 * 1024;  // the byte budget binds long before the item budget
  c.max_wait = 60s;
  Channel<Item> ch(c);

  std::vector<std::unique_ptr<std::atomic<std::uint8_t>[]>> seen;
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    seen.emplace_back(new std::atomic<std::uint8_t>[per_producer]());
  }

  Invariants inv;
  std::thread sampler = start_sampler(ch, c.max_bytes + kMaxWeight, inv);

  std::vector<std::thread> threads;
  std::atomic<std::uint64_t> order_violations{0};
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      std::mt19937 rng(p);
      std::uniform_int_distribution<std::uint32_t> weight(1, kMaxWeight);
      for (std::uint32_t s = 0; s < per_producer; ++s) {
        auto r = ch.send(Item{p, s, weight(rng)});
        ASSERT_EQ(r.status, SendStatus::ok) << r.message;
      }
    });
  }
  for (std::uint32_t k = 0; k < kConsumers; ++k) {
    threads.emplace_back([&] {
      std::vector<std::int64_t> last(kProducers, -1);
      for (auto r = ch.recv(); r.ok(); r = ch.recv()) {
        seen[r->producer][r->seq].fetch_add(1, std::memory_order_relaxed);
        // Per producer, one consumer sees items in the order they were sent.
        if (static_cast<std::int64_t>(r->seq) <= last[r->producer]) order_violations++;
        last[r->producer] = r->seq;
      }
    });
  }
  for (std::uint32_t p = 0; p < kProducers; ++p) threads[p].join();
  ch.close();
  for (std::uint32_t k = 0; k < kConsumers; ++k) threads[kProducers + k].join();
  inv.done = true;
  sampler.join();

  std::uint64_t missing = 0;
  std::uint64_t duplicated = 0;
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    for (std::uint64_t s = 0; s < per_producer; ++s) {
      const auto n = seen[p][s].load();
      missing += n == 0;
      duplicated += n > 1;
    }
  }
  EXPECT_EQ(missing, 0U);
  EXPECT_EQ(duplicated, 0U);
  EXPECT_EQ(order_violations.load(), 0U);
  EXPECT_EQ(inv.violations.load(), 0U) << "worst queue bytes " << inv.worst_bytes.load();
  EXPECT_GT(inv.samples.load(), 0U);

  const auto s = ch.stats();
  EXPECT_EQ(s.queue_bytes, 0U);
  EXPECT_EQ(s.len, 0U);
  EXPECT_EQ(s.sent, per_producer * kProducers);
  EXPECT_EQ(s.received, per_producer * kProducers);
  EXPECT_EQ(s.dropped.total(), 0U);
  EXPECT_LE(s.max_queue_bytes_seen, c.max_bytes + kMaxWeight);
  EXPECT_GT(s.latency_ns.count(), 0U);
}

TEST(ChannelStress, DropOldestFourByFourCountsAddUpAndNothingIsDuplicated) {
  constexpr std::uint32_t kProducers = 4;
  constexpr std::uint32_t kConsumers = 4;
  constexpr std::uint32_t kMaxWeight = 1024;
  const std::uint64_t per_producer = scale() / 4 / kProducers;

  ChannelConfig c;
  c.name = "stress-drop-oldest";
  c.policy = OverflowPolicy::drop_oldest;
  c.max_items = 64;
  c.max_bytes = 16 * 1024;
  Channel<Item> ch(c);

  std::vector<std::unique_ptr<std::atomic<std::uint8_t>[]>> seen;
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    seen.emplace_back(new std::atomic<std::uint8_t>[per_producer]());
  }
  Invariants inv;
  std::thread sampler = start_sampler(ch, c.max_bytes + kMaxWeight, inv);

  std::atomic<std::uint64_t> evicted_reported{0};
  std::atomic<std::uint64_t> received{0};
  std::vector<std::thread> threads;
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    threads.emplace_back([&, p] {
      std::mt19937 rng(p + 100);
      std::uniform_int_distribution<std::uint32_t> weight(1, kMaxWeight);
      for (std::uint32_t s = 0; s < per_producer; ++s) {
        auto r = ch.send(Item{p, s, weight(rng)});
        ASSERT_EQ(r.status, SendStatus::ok);
        evicted_reported += r.evicted;
      }
    });
  }
  for (std::uint32_t k = 0; k < kConsumers; ++k) {
    threads.emplace_back([&, k] {
      std::uint64_t n = 0;
      for (auto r = ch.recv(); r.ok(); r = ch.recv()) {
        seen[r->producer][r->seq].fetch_add(1, std::memory_order_relaxed);
        if (++n % 64 == 0 && k == 0) std::this_thread::yield();  // one slower consumer
      }
      received += n;
    });
  }
  for (std::uint32_t p = 0; p < kProducers; ++p) threads[p].join();
  ch.close();
  for (std::uint32_t k = 0; k < kConsumers; ++k) threads[kProducers + k].join();
  inv.done = true;
  sampler.join();

  std::uint64_t duplicated = 0;
  std::uint64_t delivered = 0;
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    for (std::uint64_t s = 0; s < per_producer; ++s) {
      const auto n = seen[p][s].load();
      duplicated += n > 1;
      delivered += n;
    }
  }
  const auto s = ch.stats();
  EXPECT_EQ(duplicated, 0U);
  EXPECT_EQ(inv.violations.load(), 0U) << "worst queue bytes " << inv.worst_bytes.load();
  EXPECT_EQ(s.sent, per_producer * kProducers);
  EXPECT_EQ(s.received, received.load());
  EXPECT_EQ(s.received, delivered);
  EXPECT_EQ(s.dropped[DropReason::overflow], evicted_reported.load());
  EXPECT_EQ(s.sent, s.received + s.dropped.total() + s.len);  // no silent loss
  EXPECT_EQ(s.len, 0U);
  EXPECT_EQ(s.queue_bytes, 0U);
}

TEST(ChannelStress, RejectPolicyProducersRetryAndLoseNothing) {
  constexpr std::uint32_t kProducers = 2;
  const std::uint64_t per_producer = scale() / 8 / kProducers;
  ChannelConfig c;
  c.name = "stress-reject";
  c.policy = OverflowPolicy::reject;
  c.max_items = 16;
  Channel<std::uint64_t> ch(c);

  std::vector<std::thread> producers;
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (std::uint64_t s = 0; s < per_producer; ++s) {
        std::uint64_t v = p * per_producer + s;
        while (ch.try_send(std::uint64_t{v}).status == SendStatus::would_block) {
          std::this_thread::yield();
        }
      }
    });
  }
  std::uint64_t sum = 0;
  std::uint64_t n = 0;
  std::thread consumer([&] {
    for (auto r = ch.recv(); r.ok(); r = ch.recv()) {
      sum += *r;
      ++n;
    }
  });
  for (auto& t : producers) t.join();
  ch.close();
  consumer.join();
  const std::uint64_t total = per_producer * kProducers;
  EXPECT_EQ(n, total);
  EXPECT_EQ(sum, total * (total - 1) / 2);
  const auto s = ch.stats();
  EXPECT_EQ(s.dropped.total(), 0U);
  EXPECT_EQ(s.sent, total);
}

}  // namespace
}  // namespace sluice

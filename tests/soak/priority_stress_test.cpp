// Stress: 4 producers of mixed classes, 2 consumers, a budget small enough to shed constantly.
// Invariants: critical and control are never lost (every one sent is received exactly once, in
// order per producer); per class, sent == received + dropped at the end. Runs under TSan.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "sluice/priority_channel.hpp"
#include "stress_scale.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;

std::uint64_t scale() {
  return stress::items();
}

struct Msg {
  std::uint32_t producer = 0;
  std::uint32_t seq = 0;  // per producer and class
};

TEST(PriorityStress, FourProducersTwoConsumersProtectedClassesNeverLost) {
  constexpr std::uint32_t kProducers = 4;
  const std::uint64_t per_producer = scale() / 4 / kProducers;
  PriorityChannelConfig c;
  c.name = "stress";
  c.max_items = 64;
  for (auto& b : c.classes) b.max_items = 32;
  c.max_wait = 60s;
  PriorityChannel<Msg> ch(c);

  // sent[p][class]: how many each producer sent successfully (protected ones must all arrive).
  std::vector<std::array<std::atomic<std::uint64_t>, kPriorityCount>> sent(kProducers);
  std::vector<std::thread> producers;
  for (std::uint32_t p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      std::mt19937 rng(p);
      std::discrete_distribution<int> pick({1, 2, 3, 6});  // control .. bulk
      std::array<std::uint32_t, kPriorityCount> seq{};
      for (std::uint64_t n = 0; n < per_producer; ++n) {
        const auto cls = static_cast<Priority>(pick(rng));
        const auto ci = static_cast<std::size_t>(cls);
        auto r = ch.send(cls, Msg{p, seq[ci]});
        if (is_protected(cls)) {
          ASSERT_EQ(r.status, SendStatus::ok) << r.message;
        }
        if (r.ok()) sent[p][ci].fetch_add(1);
        ++seq[ci];
      }
    });
  }
  std::atomic<std::uint64_t> order_violations{0};
  std::vector<std::array<std::vector<std::uint32_t>, kPriorityCount>> got(2);
  std::vector<std::thread> consumers;
  for (int k = 0; k < 2; ++k) {
    consumers.emplace_back([&, k] {
      for (auto r = ch.recv(); r.ok(); r = ch.recv()) {
        const auto ci = static_cast<std::size_t>(r->priority);
        // Keep (producer, seq) of protected items to check exactly-once later.
        if (is_protected(r->priority)) {
          got[static_cast<std::size_t>(k)][ci].push_back(r->item.producer << 24 | r->item.seq);
        }
      }
    });
  }
  for (auto& t : producers) t.join();
  ch.close();
  for (auto& t : consumers) t.join();

  const auto s = ch.stats();
  for (std::size_t ci = 0; ci < kPriorityCount; ++ci) {
    const auto& cs = s.classes[ci];
    EXPECT_EQ(cs.sent, cs.received + cs.dropped.total()) << to_string(static_cast<Priority>(ci));
    // A send answered ok entered the queue; the rest of `sent` were refused as dropped.
    std::uint64_t ok = 0;
    for (std::uint32_t p = 0; p < kProducers; ++p) ok += sent[p][ci].load();
    EXPECT_LE(ok, cs.sent);
    EXPECT_EQ(cs.len, 0U);
  }
  for (auto cls : {Priority::control, Priority::critical}) {
    const auto ci = static_cast<std::size_t>(cls);
    EXPECT_EQ(s[cls].dropped.total(), 0U);
    std::uint64_t sent_total = 0;
    for (std::uint32_t p = 0; p < kProducers; ++p) sent_total += sent[p][ci].load();
    // Every protected item arrived exactly once.
    std::vector<std::uint8_t> seen(kProducers * (per_producer + 1), 0);
    std::uint64_t received = 0;
    for (int k = 0; k < 2; ++k) {
      for (std::uint32_t key : got[static_cast<std::size_t>(k)][ci]) {
        const std::uint32_t p = key >> 24;
        const std::uint32_t seq = key & 0xffffff;
        ++seen[p * (per_producer + 1) + seq];
        ++received;
      }
    }
    EXPECT_EQ(received, sent_total) << to_string(cls);
    for (auto n : seen) EXPECT_LE(n, 1) << to_string(cls);
    EXPECT_GT(sent_total, 0U);
  }
  EXPECT_GT(s[Priority::bulk].dropped[DropReason::priority_shed], 0U) << "never under pressure";
}

}  // namespace
}  // namespace sluice

// AdaptiveBudget against a simulated consumer whose speed changes: the budget converges and
// the queueing latency stays within 2× the target in steady state, at every speed.
#include "sluice/adaptive_budget.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <stdexcept>
#include <string>

namespace sluice {
namespace {

using namespace std::chrono_literals;
using Clock = AdaptiveBudget::Clock;

struct Phase {
  double bytes_per_ms;  // the consumer's speed
  int ms;
};

struct PhaseResult {
  std::chrono::nanoseconds max_latency{0};  // in steady state
  double busy = 0;                          // fraction of the consumer's capacity used
  std::size_t budget_at_end = 0;
};

// A producer that always has data (flooding) admits 1000-byte items while the queue holds
// less than the budget; a consumer drains `bytes_per_ms`. Virtual time, 1 ms steps.
std::vector<PhaseResult> simulate(AdaptiveBudget& budget, const std::vector<Phase>& phases,
                                  std::chrono::milliseconds settle) {
  constexpr std::size_t kItem = 1000;
  std::deque<Clock::time_point> queue;
  const auto t0 = Clock::now();
  int ms = 0;
  double credit = 0;
  std::vector<PhaseResult> out;
  for (const Phase& p : phases) {
    PhaseResult r;
    double used = 0, capacity = 0;
    for (int i = 0; i < p.ms; ++i, ++ms) {
      const auto now = t0 + std::chrono::milliseconds(ms);
      const bool steady = std::chrono::milliseconds(i) >= settle;
      // Producer.
      bool refused = false;
      while (!refused) {
        if ((queue.size() + 1) * kItem <= budget.bytes()) {
          queue.push_back(now);
        } else {
          refused = true;
        }
      }
      budget.saturated(now);
      // Consumer.
      credit += p.bytes_per_ms;
      if (steady) capacity += p.bytes_per_ms;
      while (credit >= kItem && !queue.empty()) {
        const auto latency = now - queue.front();
        queue.pop_front();
        credit -= kItem;
        if (steady) {
          used += kItem;
          r.max_latency = std::max(r.max_latency, latency);
        }
        budget.observe(latency, now);
      }
      if (queue.empty()) credit = std::min(credit, static_cast<double>(kItem));  // no hoarding
    }
    r.busy = capacity > 0 ? used / capacity : 0;
    r.budget_at_end = budget.bytes();
    out.push_back(r);
  }
  return out;
}

AdaptiveBudgetConfig config() {
  AdaptiveBudgetConfig c;
  c.name = "frames";
  c.min_bytes = 4 << 10;
  c.max_bytes = 16 << 20;
  c.initial_bytes = 1 << 20;  // far too deep at first: about 1 s of queue
  c.target_latency = 50ms;
  c.interval = 50ms;
  c.increase_bytes = 4 << 10;
  return c;
}

TEST(AdaptiveBudget, ConvergesAndHoldsLatencyWithinTwiceTheTargetAsTheConsumerChangesSpeed) {
  AdaptiveBudget budget(config());
  // 1 MB/s, then 4× slower, then 8× faster than that, then back.
  const auto results =
      simulate(budget, {{1000, 10'000}, {250, 10'000}, {2000, 10'000}, {1000, 10'000}}, 5s);
  const double speeds[] = {1000, 250, 2000, 1000};
  for (std::size_t i = 0; i < results.size(); ++i) {
    SCOPED_TRACE("phase " + std::to_string(i) + " at " + std::to_string(speeds[i]) + " B/ms");
    std::printf(
        "phase %zu: consumer %.0f B/ms, steady max latency %.1f ms, busy %.3f, "
        "budget %zu B (target x speed = %.0f B)\n",
        i, speeds[i], std::chrono::duration<double, std::milli>(results[i].max_latency).count(),
        results[i].busy, results[i].budget_at_end, 50 * speeds[i]);
    EXPECT_LE(results[i].max_latency, 100ms) << "steady-state latency above 2× the target";
    // Not bought by starving the consumer: the queue rarely runs dry.
    EXPECT_GE(results[i].busy, 0.9);
    // The budget tracks the speed: near target × speed (a saw-tooth between ½ and 1×).
    const double ideal = 50 * speeds[i];
    EXPECT_GE(static_cast<double>(results[i].budget_at_end), 0.3 * ideal);
    EXPECT_LE(static_cast<double>(results[i].budget_at_end), 1.5 * ideal);
  }
  const auto s = budget.stats();
  EXPECT_GT(s.decreases, 0U);
  EXPECT_GT(s.increases, 0U);
}

TEST(AdaptiveBudget, StaysWithinItsBounds) {
  auto c = config();
  c.min_bytes = 100'000;
  c.max_bytes = 120'000;
  c.initial_bytes = 110'000;
  AdaptiveBudget budget(c);
  const auto t0 = Clock::now();
  for (int i = 0; i < 100; ++i) {
    budget.observe(1s, t0 + i * 50ms);
    EXPECT_GE(budget.bytes(), c.min_bytes);
  }
  for (int i = 100; i < 200; ++i) {
    budget.saturated(t0 + i * 50ms);
    budget.observe(1ms, t0 + i * 50ms);
    EXPECT_LE(budget.bytes(), c.max_bytes);
  }
  EXPECT_EQ(budget.bytes(), c.max_bytes);
}

TEST(AdaptiveBudget, ABudgetNobodyReachesDoesNotGrow) {
  AdaptiveBudget budget(config());
  const auto t0 = Clock::now();
  for (int i = 0; i < 100; ++i) budget.observe(1ms, t0 + i * 50ms);
  EXPECT_EQ(budget.bytes(), config().initial_bytes);
}

TEST(AdaptiveBudget, BadSettingsAreNamed) {
  auto c = config();
  c.initial_bytes = 1;
  try {
    AdaptiveBudget b(c);
    FAIL() << "initial_bytes below min_bytes accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("initial_bytes"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("frames"), std::string::npos) << e.what();
  }
  c = config();
  c.decrease_factor = 1.0;
  EXPECT_THROW(AdaptiveBudget{c}, std::invalid_argument);
}

}  // namespace
}  // namespace sluice

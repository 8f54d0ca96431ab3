// SlowConsumerDetector: slow after N slow writes in the window or K timeouts in a row; healthy
// after M good writes; events name the sink, the evidence and the action.
#include "sluice/slow_consumer.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>

namespace sluice {
namespace {

using namespace std::chrono_literals;

TEST(SlowConsumer, FiveSlowWritesAmongTheLastTwentyMakeASinkSlow) {
  SlowConsumerDetector d;  // defaults: 5 over 500 ms among 20
  for (int i = 0; i < 4; ++i) {
    EXPECT_FALSE(d.record_write("viewer-1", 600ms));
    EXPECT_FALSE(d.record_write("viewer-1", 10ms));
  }
  EXPECT_FALSE(d.is_slow("viewer-1"));
  auto e = d.record_write("viewer-1", 501ms);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind, SinkEvent::Kind::became_slow);
  EXPECT_EQ(e->sink, "viewer-1");
  EXPECT_EQ(e->action, SlowAction::drop);
  EXPECT_NE(e->reason.find("5 of the last 9"), std::string::npos) << e->reason;
  EXPECT_TRUE(d.is_slow("viewer-1"));
  EXPECT_FALSE(d.record_write("viewer-1", 900ms));  // already slow: no second event
}

TEST(SlowConsumer, SlowWritesSpreadBeyondTheWindowDoNotAccumulate) {
  SlowConsumerDetector d;
  for (int round = 0; round < 10; ++round) {
    EXPECT_FALSE(d.record_write("s", 600ms));
    for (int i = 0; i < 19; ++i) EXPECT_FALSE(d.record_write("s", 1ms));
  }
  EXPECT_FALSE(d.is_slow("s"));
}

TEST(SlowConsumer, TenTimeoutsInARowStallASinkAndTheActionIsThePolicys) {
  SlowConsumerConfig c;
  c.slow_writes = 20;  // leave only the timeout rule
  SlowConsumerDetector d(c);
  for (int i = 0; i < 9; ++i) EXPECT_FALSE(d.record_timeout("ws-7"));
  EXPECT_FALSE(d.record_write("ws-7", 1ms));  // a completed write ends the run
  for (int i = 0; i < 9; ++i) EXPECT_FALSE(d.record_timeout("ws-7"));
  auto e = d.record_timeout("ws-7");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind, SinkEvent::Kind::stalled);
  EXPECT_EQ(e->action, SlowAction::disconnect);  // stall_action's default; `action` is drop
  EXPECT_NE(e->reason.find("10 write timeouts in a row"), std::string::npos) << e->reason;
  EXPECT_TRUE(d.is_slow("ws-7"));
  EXPECT_FALSE(d.record_timeout("ws-7"));  // one event per run
  const auto h = d.health();
  ASSERT_EQ(h.size(), 1U);
  EXPECT_EQ(h[0].stalls, 1U);
  EXPECT_EQ(h[0].times_slow, 1U);
}

// Seed 003's viewer that reads a frame every 200 ms: each send times out once, then completes.
// It is slow (the policy drops for it), and never stalls; one that stops reading then stalls.
TEST(SlowConsumer, ALateSinkIsSlowButOnlyAStoppedOneStalls) {
  SlowConsumerDetector d;
  std::optional<SinkEvent> slow;
  for (int i = 0; i < 100; ++i) {
    if (auto e = d.record_timeout("late")) {
      EXPECT_EQ(e->kind, SinkEvent::Kind::became_slow);
      EXPECT_FALSE(slow) << "a second event: " << e->reason;
      slow = e;
    }
    EXPECT_FALSE(d.record_write("late", 200ms));
  }
  ASSERT_TRUE(slow);
  EXPECT_EQ(slow->action, SlowAction::drop);
  for (int i = 0; i < 9; ++i) EXPECT_FALSE(d.record_timeout("late"));
  auto e = d.record_timeout("late");
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind, SinkEvent::Kind::stalled);
  EXPECT_EQ(e->action, SlowAction::disconnect);
}

TEST(SlowConsumer, RecoversAfterGoodWritesInARowThenCanBeSlowAgain) {
  SlowConsumerConfig c;
  c.healthy_after = 3;
  SlowConsumerDetector d(c);
  for (int i = 0; i < 5; ++i) (void)d.record_write("s", 1s);
  ASSERT_TRUE(d.is_slow("s"));
  EXPECT_FALSE(d.record_write("s", 1ms));
  EXPECT_FALSE(d.record_write("s", 1s));  // breaks the run
  EXPECT_FALSE(d.record_write("s", 1ms));
  EXPECT_FALSE(d.record_write("s", 1ms));
  auto e = d.record_write("s", 1ms);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->kind, SinkEvent::Kind::recovered);
  EXPECT_FALSE(d.is_slow("s"));
  EXPECT_FALSE(d.record_write("s", 1s));  // history was cleared: one bad write is not enough
  for (int i = 0; i < 3; ++i) (void)d.record_write("s", 1s);
  EXPECT_TRUE(d.record_write("s", 1s));  // 5 again
  const auto h = d.health();
  ASSERT_EQ(h.size(), 1U);
  EXPECT_EQ(h[0].times_slow, 2U);
}

TEST(SlowConsumer, SinksAreIndependentAndCanBeRemoved) {
  SlowConsumerDetector d;
  for (int i = 0; i < 5; ++i) (void)d.record_write("slow", 1s);
  for (int i = 0; i < 5; ++i) (void)d.record_write("fast", 1ms);
  EXPECT_TRUE(d.is_slow("slow"));
  EXPECT_FALSE(d.is_slow("fast"));
  d.remove("slow");
  EXPECT_FALSE(d.is_slow("slow"));
  EXPECT_EQ(d.health().size(), 1U);
}

TEST(SlowConsumer, BadConfigurationIsNamed) {
  SlowConsumerConfig c;
  c.slow_writes = 30;
  try {
    SlowConsumerDetector d(c);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("slow_writes = 30"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sluice

// FrameGate: seed 001's state table and scenarios, replayed with an explicit clock, and the
// recovery the seed lacked.
#include "sluice/frame_gate.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace sluice {
namespace {

using namespace std::chrono_literals;
using Clock = FrameGate::Clock;

FrameGateConfig thirty_fps(std::size_t in_flight = 1) {
  FrameGateConfig c;
  c.name = "camera";
  c.fps(30);
  c.max_in_flight = in_flight;
  c.window_frames = 30;
  return c;
}

// Drives a gate at 30 fps with a stage that takes `processing` per frame and handles
// `in_flight` frames concurrently (done() is called when each finishes).
struct Replay {
  explicit Replay(FrameGate& g) : gate(g) {}
  FrameGate& gate;
  Clock::time_point now = Clock::time_point{} + 1s;
  std::uint64_t next = 0;
  std::vector<std::pair<Clock::time_point, std::uint64_t>> running;  // finish time, frame
  int slow_downs = 0;
  int resumes = 0;
  int admitted = 0;
  int dropped = 0;

  // Runs `frames` frames; returns the last admission.
  Admission run(int frames, std::chrono::nanoseconds processing) {
    Admission last;
    for (int i = 0; i < frames; ++i) {
      // Finish what is due.
      for (auto it = running.begin(); it != running.end();) {
        if (it->first <= now) {
          gate.done(it->second, processing);
          it = running.erase(it);
        } else {
          ++it;
        }
      }
      last = gate.admit(next, now);
      if (last.admitted) {
        ++admitted;
        running.emplace_back(now + processing, next);
      } else {
        ++dropped;
      }
      if (last.signal && last.signal->kind == GateSignal::Kind::slow_down) ++slow_downs;
      if (last.signal && last.signal->kind == GateSignal::Kind::resume) ++resumes;
      ++next;
      now += 33'333'333ns;
    }
    return last;
  }
};

TEST(FrameGate, FastStageAdmitsEveryFrameAndStaysNormal) {
  FrameGate gate(thirty_fps());
  Replay r(gate);
  const Admission last = r.run(300, 10ms);
  EXPECT_EQ(r.admitted, 300);
  EXPECT_EQ(r.dropped, 0);
  EXPECT_EQ(last.state, GateState::normal);
  EXPECT_EQ(r.slow_downs, 0);
}

// Seed: "if processing_time > frame_interval: drop". A 50 ms stage at 30 fps gets the frames
// it can take; the others are dropped as in_flight / frame_late, each reported.
TEST(FrameGate, SlowStageGetsFramesAtItsOwnPaceRestDropped) {
  FrameGate gate(thirty_fps());
  Replay r(gate);
  r.run(300, 50ms);
  EXPECT_GT(r.admitted, 140);  // ~ every other frame: the stage is kept busy
  EXPECT_LT(r.admitted, 160);
  EXPECT_EQ(r.admitted + r.dropped, 300);
  const auto s = gate.stats();
  EXPECT_GT(s.dropped[DropReason::in_flight] + s.dropped[DropReason::frame_late], 0U);
  EXPECT_EQ(s.offered, 300U);
  EXPECT_EQ(s.admitted + s.dropped.total(), 300U);
}

// A stage that works on 4 frames at once, 100 ms each, takes 40 frames a second: at 30 fps it
// keeps up, so nothing is dropped although each frame takes three frame intervals.
TEST(FrameGate, PipelinedStageThatKeepsUpInAggregateLosesNothing) {
  FrameGate gate(thirty_fps(4));
  Replay r(gate);
  r.run(300, 100ms);
  EXPECT_EQ(r.dropped, 0);
  EXPECT_EQ(gate.stats().state, GateState::normal);
}

// Seed's table: normal < 10 %, warning 10-30 %, critical > 30 % with one slow_down.
TEST(FrameGate, StatesFollowTheWindowedDropRateAndSlowDownIsSentOnce) {
  FrameGate gate(thirty_fps());
  Replay r(gate);
  EXPECT_EQ(r.run(30, 10ms).state, GateState::normal);
  // 50 ms per frame at 30 fps: about half the frames dropped -> critical.
  const Admission critical = r.run(60, 50ms);
  EXPECT_EQ(critical.state, GateState::critical);
  EXPECT_GT(critical.drop_rate, 0.30);
  EXPECT_EQ(r.slow_downs, 1);  // once, not once per frame
  EXPECT_EQ(gate.stats().slow_downs, 1U);
}

TEST(FrameGate, WarningBetweenTheThresholds) {
  FrameGateConfig c = thirty_fps();
  c.window_frames = 10;
  FrameGate gate(c);
  auto t = Clock::time_point{} + 1s;
  // Frame 0 admitted and never done: frame 1 is dropped (in flight); then done, then 8 more.
  ASSERT_TRUE(gate.admit(0, t));
  const Admission d = gate.admit(1, t + 33ms);
  EXPECT_FALSE(d.admitted);
  EXPECT_EQ(d.reason, DropReason::in_flight);
  gate.done(0, 5ms);
  Admission last;
  for (std::uint64_t f = 2; f < 10; ++f) {
    last = gate.admit(f, t + f * 33ms);
    ASSERT_TRUE(last.admitted);
    gate.done(f, 5ms);
  }
  EXPECT_DOUBLE_EQ(last.drop_rate, 0.1);  // 1 of the last 10
  EXPECT_EQ(last.state, GateState::warning);
}

// The seed's runaway: once its cumulative rate passed 10 % it dropped everything forever.
// Ours: when the stage speeds up, frames are admitted again, the state returns to normal,
// resume is signalled, and slow_down is re-armed for the next overload.
TEST(FrameGate, RecoversAfterTheStageSpeedsUpAndRearmsSlowDown) {
  FrameGate gate(thirty_fps());
  Replay r(gate);
  r.run(90, 80ms);  // overload: critical, slow_down
  ASSERT_EQ(r.slow_downs, 1);
  EXPECT_EQ(gate.stats().state, GateState::critical);

  const int admitted_before = r.admitted;
  const Admission after = r.run(90, 10ms);  // the stage is fast again
  EXPECT_EQ(after.state, GateState::normal);
  EXPECT_EQ(r.resumes, 1);
  // Within one window of the speed-up every frame is admitted again.
  EXPECT_GE(r.admitted - admitted_before, 90 - 30);

  r.run(90, 80ms);  // a second overload signals again
  EXPECT_EQ(r.slow_downs, 2);
}

// A pipelined stage (4 frames in flight) that falls behind: the gate sheds on drop rate while
// the stage is busy, and never drops while it is idle.
TEST(FrameGate, ShedsOnDropRateOnlyWhileTheStageIsBusy) {
  FrameGate gate(thirty_fps(4));
  Replay r(gate);
  r.run(120, 200ms);  // 6 frame intervals per frame, 4 at a time: overloaded
  const auto s = gate.stats();
  EXPECT_GT(s.dropped[DropReason::drop_rate], 0U);
  // Idle stage: the next frame is admitted whatever the recent drop rate.
  FrameGate idle(thirty_fps(4));
  auto t = Clock::time_point{} + 1s;
  for (std::uint64_t f = 0; f < 4; ++f) ASSERT_TRUE(idle.admit(f, t));
  for (std::uint64_t f = 4; f < 10; ++f) EXPECT_FALSE(idle.admit(f, t + 1ms).admitted);
  for (std::uint64_t f = 0; f < 4; ++f) idle.done(f, 10ms);
  EXPECT_TRUE(idle.admit(10, t + 40ms).admitted);
}

TEST(FrameGate, ConfigurationFromTheSeedsEnvironmentVariables) {
  ::setenv("STREAM_DROP_THRESHOLD", "0.2", 1);
  ::setenv("STREAM_SLOWDOWN_THRESHOLD", "0.5", 1);
  FrameGateConfig c;
  c.from_env();
  EXPECT_DOUBLE_EQ(c.drop_threshold, 0.2);
  EXPECT_DOUBLE_EQ(c.slowdown_threshold, 0.5);

  ::setenv("STREAM_DROP_THRESHOLD", "ten percent", 1);
  try {
    FrameGateConfig bad;
    bad.from_env();
    FAIL() << "accepted a non-number";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("STREAM_DROP_THRESHOLD"), std::string::npos) << e.what();
  }
  ::unsetenv("STREAM_DROP_THRESHOLD");
  ::unsetenv("STREAM_SLOWDOWN_THRESHOLD");

  FrameGateConfig inverted;
  inverted.drop_threshold = 0.4;
  inverted.slowdown_threshold = 0.3;
  try {
    FrameGate g(inverted);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("STREAM_SLOWDOWN_THRESHOLD"), std::string::npos)
        << e.what();
  }
  EXPECT_DOUBLE_EQ(FrameGateConfig{}.drop_threshold, 0.10);
  EXPECT_DOUBLE_EQ(FrameGateConfig{}.slowdown_threshold, 0.30);
}

}  // namespace
}  // namespace sluice

// A processing stage end to end over the relay's WebSocket endpoints, on 127.0.0.1 with real
// clients and real workers (sluice::StageWorker, what `sluice worker` runs): a client publishes at
// 30 fps into a stage whose worker takes 50 ms a frame; it is told about exactly the frames that
// were dropped, gets slow_down once the windowed drop rate passes 30 %, and resume after the worker
// is sped up, after which the drop rate stays below 10 % (no runaway). And routing by speed:
// of two workers, the one 4× faster takes at least three quarters of the frames.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../integration/loopback.hpp"
#include "../integration/relay_scene.hpp"
#include "../integration/ws_async.hpp"
#include "../integration/ws_client.hpp"
#include "image_model.hpp"
#include "sluice/client/stage_worker.hpp"
#include "sluice/relay/server.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::AsyncWs;
using testing::frame;
using testing::index_of;
using testing::loopback;
using testing::metric;

constexpr unsigned kWidth = 64;
constexpr unsigned kHeight = 48;

// A synthetic camera image: a gradient that moves with the frame index.
std::string rgb_image(std::uint64_t index) {
  std::string px(std::size_t{kWidth} * kHeight * 3, '\0');
  for (std::size_t i = 0; i < px.size(); ++i) px[i] = static_cast<char>((i + index * 7) & 0xff);
  return px;
}

RelayConfig stage_relay(double fps, std::size_t max_in_flight) {
  RelayConfig c = loopback();
  c.max_sessions = 20;
  TopicConfig camera;
  camera.name = "camera";
  camera.mode = TopicMode::realtime;
  StageConfig st;
  st.fps = fps;
  st.max_in_flight = max_in_flight;
  st.results_topic = "camera.results";
  camera.stage = st;
  c.topics.push_back(camera);
  return c;
}

// A worker on its own thread.
struct RunningWorker {
  RunningWorker(std::uint16_t port, const std::string& name, std::chrono::milliseconds delay)
      : model([&] {
          cli::ImageModelOptions o;
          o.width = kWidth;
          o.height = kHeight;
          o.delay = delay;
          return o;
        }()),
        worker(
            [&] {
              StageWorkerOptions o;
              o.port = port;
              o.topic = "camera";
              o.name = name;
              return o;
            }(),
            [this](const WorkFrame& f) { return model(f); }) {
    worker.connect();
    thread = std::thread([this] { why = worker.run(); });
  }
  ~RunningWorker() {
    worker.stop();
    thread.join();
  }
  cli::ImageModel model;
  StageWorker worker;
  std::string why;
  std::thread thread;
};

struct Notices {
  std::set<std::uint64_t> dropped;
  std::map<std::string, int> by_reason;
  std::vector<std::pair<std::size_t, double>> slow_downs;  // (event position, drop_rate)
  std::vector<std::pair<std::size_t, double>> resumes;
};

Notices notices(const AsyncWs& publisher) {
  Notices n;
  const auto events = publisher.events();
  for (std::size_t i = 0; i < events.size(); ++i) {
    const auto& e = events[i];
    if (e.contains("dropped")) {
      EXPECT_TRUE(n.dropped.insert(e["frame_index"].get<std::uint64_t>()).second)
          << "frame " << e["frame_index"] << " announced twice";
      ++n.by_reason[e["reason"].get<std::string>()];
    } else if (e.value("warning", "") == "slow_down") {
      n.slow_downs.emplace_back(i, e["drop_rate"].get<double>());
    } else if (e.contains("resume")) {
      n.resumes.emplace_back(i, e["drop_rate"].get<double>());
    }
  }
  return n;
}

// Publishes frames [first, last) at `fps`.
void publish(AsyncWs& publisher, std::uint64_t first, std::uint64_t last, double fps) {
  const auto interval =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / fps));
  auto next = Clock::now();
  for (std::uint64_t i = first; i < last; ++i) {
    publisher.send(frame(i, 0, rgb_image(i)));
    next += interval;
    std::this_thread::sleep_until(next);
  }
}

std::set<std::uint64_t> result_indices(const AsyncWs& viewer) {
  std::set<std::uint64_t> out;
  for (const auto& m : viewer.messages()) {
    if (!m.text) {
      EXPECT_TRUE(out.insert(index_of(m.bytes)).second) << "result twice: " << index_of(m.bytes);
    }
  }
  return out;
}

TEST(StageGating, DropNoticesForExactlyTheDroppedFramesSlowDownThenResumeNoRunaway) {
  testing::RelayScene relay(stage_relay(30, 1));
  const auto port = relay.http_port();
  RunningWorker worker(port, "model", 50ms);  // slower than the 33 ms frame interval
  AsyncWs viewer;
  ASSERT_TRUE(viewer.connect(port, "/v1/ws/subscribe/camera.results?name=results"));
  AsyncWs camera;
  ASSERT_TRUE(camera.connect(port, "/v1/ws/publish/camera")) << camera.error();
  ASSERT_TRUE(testing::wait_for_sessions(port, 3));

  // 1) 4 s at 30 fps into a 50 ms stage: the gate sheds, the client is told to slow down.
  constexpr std::uint64_t kSlowFrames = 120;
  publish(camera, 0, kSlowFrames, 30);
  ASSERT_TRUE(camera.wait(
      [](const auto& ms) {
        for (const auto& m : ms)
          if (m.text && m.bytes.find("slow_down") != std::string::npos) return true;
        return false;
      },
      5s))
      << "no slow_down while a 50 ms stage was fed 30 fps";
  const std::size_t events_before_speed_up = camera.events().size();

  // 2) The model gets faster: the client is told to resume, and drops all but stop.
  worker.model.set_delay(0ms);
  constexpr std::uint64_t kFastFrames = 180;
  publish(camera, kSlowFrames, kSlowFrames + kFastFrames, 30);
  constexpr std::uint64_t kTotal = kSlowFrames + kFastFrames;

  // Every frame ends as a result or as a drop notice: wait for all of them.
  const auto settled = [&] {
    return notices(camera).dropped.size() + result_indices(viewer).size() >= kTotal;
  };
  const auto deadline = Clock::now() + 10s;
  while (!settled() && Clock::now() < deadline) std::this_thread::sleep_for(20ms);

  const Notices n = notices(camera);
  const auto results = result_indices(viewer);
  // Exactly the dropped frames were announced: drops and results partition what was sent.
  for (const auto i : n.dropped) EXPECT_EQ(results.count(i), 0U) << "frame " << i << " both";
  EXPECT_EQ(n.dropped.size() + results.size(), kTotal);
  for (std::uint64_t i = 0; i < kTotal; ++i) {
    EXPECT_TRUE(n.dropped.count(i) + results.count(i) == 1) << "frame " << i << " unaccounted";
  }
  // The drops are the gate's (the worker never failed, a worker was always there).
  for (const auto& [reason, count] : n.by_reason) {
    EXPECT_TRUE(reason == "frame_late" || reason == "drop_rate" || reason == "in_flight")
        << reason << " x" << count;
  }

  // slow_down came once the windowed rate passed 30 %, while the stage was slow.
  ASSERT_FALSE(n.slow_downs.empty());
  EXPECT_GT(n.slow_downs.front().second, 0.30);
  EXPECT_LT(n.slow_downs.front().first, events_before_speed_up);
  // resume came after the speed-up, and afterwards the drop rate stayed low.
  ASSERT_FALSE(n.resumes.empty()) << "no resume after the worker sped up\n" << relay.stats_json();
  EXPECT_GE(n.resumes.back().first, events_before_speed_up);
  EXPECT_LT(n.resumes.back().second, 0.10);
  std::uint64_t late_drops = 0;
  constexpr std::uint64_t kTail = 90;  // the last 3 s
  for (std::uint64_t i = kTotal - kTail; i < kTotal; ++i) late_drops += n.dropped.count(i);
  EXPECT_LT(static_cast<double>(late_drops) / kTail, 0.10)
      << late_drops << " of the last " << kTail << " frames dropped: a runaway";
  std::printf("seed 001: %zu results, %zu drops (", results.size(), n.dropped.size());
  for (const auto& [reason, count] : n.by_reason) std::printf(" %s=%d", reason.c_str(), count);
  std::printf(
      " ), first slow_down at drop rate %.2f, last resume at %.2f, %llu of the last %llu "
      "frames dropped\n",
      n.slow_downs.front().second, n.resumes.back().second,
      static_cast<unsigned long long>(late_drops), static_cast<unsigned long long>(kTail));

  // The relay counted the same drops, by reason, and the results it published.
  double counted = 0;
  for (const char* reason : {"frame_late", "drop_rate", "in_flight"}) {
    const double v =
        metric(port, "sluice_stage_dropped_total", std::string("reason=\"") + reason + "\"");
    if (v > 0) counted += v;
  }
  EXPECT_EQ(counted, static_cast<double>(n.dropped.size()));
  EXPECT_EQ(metric(port, "sluice_stage_results_total", "stage=\"camera\""),
            static_cast<double>(results.size()));
  EXPECT_EQ(metric(port, "sluice_stage_signals_total", "kind=\"slow_down\""),
            static_cast<double>(n.slow_downs.size()));
  EXPECT_GE(metric(port, "sluice_worker_completed_total", "worker=\"model\""),
            static_cast<double>(results.size()));

  // Results carry the transform: the size line and the downscaled grayscale image.
  const auto ms = viewer.messages();
  const auto first = std::find_if(ms.begin(), ms.end(), [](const auto& m) { return !m.text; });
  ASSERT_NE(first, ms.end());
  const std::string body = first->bytes.substr(16);
  const auto line = nlohmann::json::parse(body.substr(0, body.find('\n')));
  EXPECT_EQ(line["width"], kWidth / 4);
  EXPECT_EQ(line["height"], kHeight / 4);
  EXPECT_EQ(body.size() - body.find('\n') - 1, std::size_t{kWidth / 4} * (kHeight / 4));
  camera.close();
  viewer.close();
}

TEST(StageRouting, TheFourTimesFasterWorkerTakesAtLeastThreeQuarters) {
  // A stage that two workers can serve at once; frames faster than both together.
  testing::RelayScene relay(stage_relay(100, 2));
  const auto port = relay.http_port();
  RunningWorker fast(port, "fast", 10ms);
  RunningWorker slow(port, "slow", 40ms);
  AsyncWs camera;
  ASSERT_TRUE(camera.connect(port, "/v1/ws/publish/camera"));
  ASSERT_TRUE(testing::wait_for_sessions(port, 3));
  publish(camera, 0, 300, 100);
  const auto deadline = Clock::now() + 10s;
  while (metric(port, "sluice_stage_in_flight", "stage=\"camera\"") > 0 &&
         Clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  const double f = static_cast<double>(fast.worker.processed());
  const double s = static_cast<double>(slow.worker.processed());
  std::printf("routing: fast worker %.0f frames, slow %.0f (%.1f %% to the fast one)\n", f, s,
              100 * f / (f + s));
  ASSERT_GT(f + s, 50);
  EXPECT_GE(f / (f + s), 0.75);
  camera.close();
}

}  // namespace
}  // namespace sluice

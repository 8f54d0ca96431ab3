// A camera's slow subscriber over the relay's WebSocket endpoints, on 127.0.0.1 with real
// Beast clients and real threads: a 30 fps x 1 MiB camera, two fast subscribers and one that
// reads a frame every 200 ms (memory flat); and subscribe/unsubscribe churn while publishing: no
// file descriptor left open, memory back near its baseline).
//
// Short in CI (SLUICE_SOAK_SECONDS, default 12; SLUICE_CHURN_CYCLES, default 100); `make soak`
// runs the benchmark's figures (600 s, 1000 cycles). Memory is the resident set of this
// process, which holds the relay and its clients (the clients reuse nothing across frames, so
// a leak on either side shows). Under AddressSanitizer the resident set is not the program's
// (quarantine, shadow memory): there the memory checks are skipped, the rest still runs.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "../integration/loopback.hpp"
#include "../integration/relay_scene.hpp"
#include "../integration/ws_client.hpp"
#include "../soak/stress_scale.hpp"
#include "sluice/relay/server.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define SLUICE_RSS_MEANINGFUL 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLUICE_RSS_MEANINGFUL 0
#endif
#endif
#ifndef SLUICE_RSS_MEANINGFUL
#define SLUICE_RSS_MEANINGFUL 1
#endif

namespace sluice {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace websocket = boost::beast::websocket;
using testing::frame;
using testing::index_of;
using testing::loopback;
using testing::metric;
using testing::WsClient;

constexpr double kMiB = 1024.0 * 1024.0;

double rss_mib() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size = 0;
  std::uint64_t resident = 0;
  statm >> size >> resident;
  return double(resident) * double(sysconf(_SC_PAGESIZE)) / kMiB;
}

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd"))
    ++n;
  return n;
}

// Publishes 30 frames a second of `bytes` each, paced by the clock, until `stop`; then one
// more frame whose payload is "end" (and whose index is the count of frames before it).
std::uint64_t publish_30fps(WsClient& pub, std::size_t bytes, const std::atomic<bool>& stop) {
  const std::string payload(bytes, 'c');
  const auto start = Clock::now();
  std::uint64_t i = 0;
  while (!stop.load()) {
    std::this_thread::sleep_until(start + i * 33333us);
    pub.send_binary(frame(i, unix_now_ns(), payload));
    ++i;
  }
  pub.send_binary(frame(i, unix_now_ns(), "end"));
  return i;
}
bool is_end(const std::string& f) {
  return f.size() == ws::kFrameHeaderBytes + 3 && f.substr(ws::kFrameHeaderBytes) == "end";
}

// The fast subscribers receive every frame in order; the slow one's losses are all
// announced as gaps (frames + announced losses = frames published) and counted in /metrics
// under its name; the resident set stays flat after a warm-up.
TEST(SlowSubscriber, FastOnesGetEveryFrameTheSlowOnesLossesAreAnnouncedMemoryStaysFlat) {
  RelayConfig c = loopback();
  c.defaults.mode = TopicMode::realtime;
  c.defaults.depth = 32;  // a fast viewer may fall 1 s behind (a busy CI machine) and lose nothing
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  const auto seconds = stress::soak_seconds();

  WsClient fast[2];
  ASSERT_FALSE(fast[0].connect(port, "/v1/ws/subscribe/camera?name=fast-0&depth=32"));
  ASSERT_FALSE(fast[1].connect(port, "/v1/ws/subscribe/camera?name=fast-1&depth=32"));
  WsClient slow;
  ASSERT_FALSE(slow.connect(port, "/v1/ws/subscribe/camera?name=slow&depth=4"));
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/camera"));

  // Each viewer reads until the "end" frame.
  auto fast_reader = [&](WsClient& viewer, std::uint64_t& got, std::string& failure) {
    for (std::uint64_t i = 0;; ++i) {
      bool text = false;
      std::string bytes;
      if (auto ec = viewer.read(text, bytes)) {
        failure = "read: " + ec.message();
        return;
      }
      if (text || index_of(bytes) != i) {
        failure = "frame " + std::to_string(i) + " expected, got " +
                  (text ? bytes : "frame " + std::to_string(index_of(bytes)));
        return;
      }
      if (is_end(bytes)) return;
      got = i + 1;
    }
  };
  std::uint64_t fast_got[2] = {0, 0};
  std::string fast_failure[2];
  std::thread fast_threads[2] = {
      std::thread(fast_reader, std::ref(fast[0]), std::ref(fast_got[0]), std::ref(fast_failure[0])),
      std::thread(fast_reader, std::ref(fast[1]), std::ref(fast_got[1]),
                  std::ref(fast_failure[1]))};

  std::uint64_t slow_frames = 0;
  std::uint64_t slow_announced = 0;
  std::string slow_failure;
  std::thread slow_thread([&] {
    std::uint64_t next = 0;  // the index the next frame must have
    for (;;) {
      bool text = false;
      std::string bytes;
      if (auto ec = slow.read(text, bytes)) {
        slow_failure = "read: " + ec.message();
        return;
      }
      if (text) {
        const auto j = nlohmann::json::parse(bytes, nullptr, false);
        if (!j.contains("gap") || j["reason"] != "slow_consumer") {
          slow_failure = "unexpected event " + bytes;
          return;
        }
        slow_announced += j["gap"].get<std::uint64_t>();
        next += j["gap"].get<std::uint64_t>();
        continue;
      }
      if (index_of(bytes) != next) {  // a loss nobody announced
        slow_failure = "frame " + std::to_string(next) + " expected after the gaps, got " +
                       std::to_string(index_of(bytes));
        return;
      }
      if (is_end(bytes)) return;
      ++slow_frames;
      ++next;
      std::this_thread::sleep_for(200ms);  // seed 003's slow viewer
    }
  });

  std::atomic<bool> stop{false};
  std::uint64_t published = 0;
  std::thread publisher([&] { published = publish_30fps(pub, 1 << 20, stop); });

  // Warm-up: a third of the run, at least 6 s (the allocator's arenas and the socket buffers
  // reach their working size); then the resident set may not grow.
  const auto start = Clock::now();
  const auto warm = std::max<Clock::duration>(6s, std::chrono::seconds(seconds) / 3);
  std::this_thread::sleep_until(start + warm);
  const double rss_warm = rss_mib();
  double rss_peak = rss_warm;
  while (Clock::now() < start + std::chrono::seconds(seconds)) {
    std::this_thread::sleep_for(250ms);
    rss_peak = std::max(rss_peak, rss_mib());
  }
  stop = true;
  publisher.join();
  for (auto& t : fast_threads) t.join();
  slow_thread.join();

  const std::uint64_t total = published;
  // (Under the sanitizers, masking and copying 1 MiB frames costs the publisher half its pace.)
  ASSERT_GT(total, 10 * seconds) << "the publisher fell far behind 30 fps";
  for (int v = 0; v < 2; ++v) {
    EXPECT_EQ(fast_failure[v], "") << "fast viewer " << v;
    EXPECT_EQ(fast_got[v], total) << "fast viewer " << v;
  }
  EXPECT_EQ(slow_failure, "");
  EXPECT_EQ(slow_frames + slow_announced, total);
  EXPECT_GT(slow_announced, 0U) << "a viewer at 5 fps of a 30 fps camera loses frames";
  EXPECT_GT(slow_frames, seconds * 5 / 2) << "the slow viewer was served (about 5 fps)";
  EXPECT_EQ(metric(port, "sluice_subscriber_dropped_total", "subscriber=\"slow\""),
            double(slow_announced));
  EXPECT_EQ(metric(port, "sluice_subscriber_dropped_total", "subscriber=\"fast-0\""), 0.0);
  // It was found slow (late sends), never stalled: it stayed connected to the end.
  EXPECT_EQ(metric(port, "sluice_slow_viewers_total", "kind=\"stalled\""), -1.0);

  const double minutes = double(seconds) / 60.0;
  // R3: < 1 MiB/min, with 2 MiB of noise. A run shorter than a minute (CI's 12 s) ends before
  // the allocator's arenas reach their working size (the 120 s and 600 s runs level off after
  // about 40 s, at ~125 MiB; with the viewers on event loops of their own, glibc's per-thread
  // arenas step up by as much as 24 MiB in the first 12 s, from run to run): there the check is
  // only that growth stays under 32 frames, a sixth of the 180 MiB a leak of every frame would
  // add after the 6 s warm-up; `make soak` checks the real figure.
  const double allowed = seconds < 60 ? 32.0 : std::max(2.0, 1.0 * minutes);
  std::printf(
      "R3: %llu frames in %llu s; slow viewer %llu frames + %llu announced as gaps; "
      "RSS after warm-up %.1f MiB, peak after %.1f MiB (growth %.2f MiB, allowed %.1f)\n",
      static_cast<unsigned long long>(total), static_cast<unsigned long long>(seconds),
      static_cast<unsigned long long>(slow_frames), static_cast<unsigned long long>(slow_announced),
      rss_warm, rss_peak, rss_peak - rss_warm, allowed);
  if (SLUICE_RSS_MEANINGFUL) {
    EXPECT_LE(rss_peak - rss_warm, allowed);
  }

  for (auto* client : {&pub, &fast[0], &fast[1], &slow})
    client->s.close(websocket::close_code::normal);
}

// Churn: subscribers join and leave while a camera publishes; half leave with a close handshake,
// half vanish (the TCP connection dropped mid-stream). Afterwards the relay holds no session, this
// process no extra descriptor, and the resident set is back within 5 MiB of its baseline.
TEST(SubscriberChurn, LeavesNoDescriptorAndMemoryReturnsToBaseline) {
  RelayConfig c = loopback();
  c.defaults.mode = TopicMode::realtime;
  c.defaults.depth = 8;
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/camera"));
  std::atomic<bool> stop{false};
  std::thread publisher([&] { publish_30fps(pub, 64 * 1024, stop); });

  auto cycle = [&](std::uint64_t i) {
    WsClient viewer;
    ASSERT_FALSE(viewer.connect(port, "/v1/ws/subscribe/camera?name=churn-" + std::to_string(i)));
    bool text = false;
    std::string bytes;
    ASSERT_FALSE(viewer.read(text, bytes));  // joined: a frame (or a gap) arrived
    if (i % 2 == 0) {
      viewer.s.close(websocket::close_code::normal);
    } else {
      viewer.s.next_layer().close();  // vanishes mid-stream
    }
  };
  for (std::uint64_t i = 0; i < 10; ++i) cycle(i);   // warm-up: allocator pools, topic ring full
  ASSERT_TRUE(testing::wait_for_sessions(port, 1));  // the publisher only
  std::this_thread::sleep_for(200ms);  // the relay's side of the last HTTP scrape closes
  const std::size_t fds_base = open_fds();
  const double rss_base = rss_mib();

  const auto cycles = stress::churn_cycles();
  for (std::uint64_t i = 10; i < 10 + cycles; ++i) {
    cycle(i);
    if (::testing::Test::HasFatalFailure()) break;
  }
  ASSERT_TRUE(testing::wait_for_sessions(port, 1))
      << "sessions still open: " << metric(port, "sluice_sessions");
  std::size_t fds_after = open_fds();  // (sockets close asynchronously: allow a moment)
  for (auto deadline = Clock::now() + 5s; fds_after != fds_base && Clock::now() < deadline;
       fds_after = open_fds())
    std::this_thread::sleep_for(50ms);
  const double rss_after = rss_mib();
  stop = true;
  publisher.join();

  std::printf("R5: %llu cycles; fds %zu -> %zu; RSS %.1f -> %.1f MiB\n",
              static_cast<unsigned long long>(cycles), fds_base, fds_after, rss_base, rss_after);
  EXPECT_EQ(fds_after, fds_base);
  if (SLUICE_RSS_MEANINGFUL) {
    EXPECT_LE(rss_after - rss_base, 5.0);
  }
  // Every viewer's series left /metrics with it.
  EXPECT_EQ(metric(port, "sluice_subscriber_received_total", "subscriber=\"churn-"), -1.0);
  pub.s.close(websocket::close_code::normal);
}

}  // namespace
}  // namespace sluice

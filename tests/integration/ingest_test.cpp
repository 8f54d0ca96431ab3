// sluice::media::Ingest with real parts: GStreamer pipelines, a real RTSP camera stand-in
// (gst-rtsp-server: tests/media/rtsp_camera.cpp), the real relay on 127.0.0.1 and its C++
// client. What each test asserts is in its name.
#include "sluice/media/ingest.hpp"

#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "build_paths.hpp"
#include "ingest_publisher.hpp"
#include "peers/nats_server.hpp"  // free_port, ChildProcess
#include "relay_scene.hpp"
#include "sluice/client/client.hpp"

extern char** environ;

namespace sluice::testing {
namespace {

using namespace std::chrono_literals;
using media::Ingest;
using media::IngestFrame;
using media::IngestOptions;
using media::IngestOutput;

// A directory of its own, removed at the end.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("sluice-ingest-" + std::to_string(getpid()) + "-" + std::to_string(bench::free_port()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool gst_launch(const std::string& pipeline) {
  return std::system(("gst-launch-1.0 -q " + pipeline + " > /dev/null 2>&1").c_str()) == 0;
}

// The stand-in camera: rtsp://127.0.0.1:port/cam until destroyed (or stop()).
class Camera {
 public:
  explicit Camera(std::uint16_t port) : port_(port) { start(); }
  ~Camera() { stop(); }
  Camera(const Camera&) = delete;
  Camera& operator=(const Camera&) = delete;
  void start() {
    const std::string port = std::to_string(port_);
    const std::string camera = testing::beside_binary(SLUICE_RTSP_CAMERA);
    const char* argv[] = {camera.c_str(), port.c_str(), "h264", "30", nullptr};
    ASSERT_EQ(
        posix_spawn(&pid_, camera.c_str(), nullptr, nullptr, const_cast<char**>(argv), environ), 0);
    for (int i = 0; i < 100 && !listening(); ++i) std::this_thread::sleep_for(50ms);
    ASSERT_TRUE(listening()) << "the camera did not listen on " << port_;
  }
  void stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);  // (a camera that loses power: no goodbye)
    waitpid(pid_, nullptr, 0);
    pid_ = 0;
  }
  std::string uri() const { return "rtsp://127.0.0.1:" + std::to_string(port_) + "/cam"; }

 private:
  bool listening() const {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port_);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    close(fd);
    return ok;
  }
  std::uint16_t port_;
  pid_t pid_ = 0;
};

TopicConfig topic(const std::string& name, TopicMode mode) {
  TopicConfig t;
  t.name = name;
  t.mode = mode;
  t.depth = 64;
  return t;
}

// What a subscriber got: the payloads, in order, and the gaps.
struct Received {
  std::mutex mu;
  std::vector<std::string> payloads;
  std::uint64_t lost = 0;
  std::size_t count() {
    const std::lock_guard lock(mu);
    return payloads.size();
  }
};

std::thread reading(client::Subscriber& sub, Received& got) {
  return std::thread([&sub, &got] {
    client::SubscriberEvent e;
    while (sub.next(e)) {
      const std::lock_guard lock(got.mu);
      if (e.kind == client::SubscriberEvent::Kind::gap) {
        got.lost += e.lost;
      } else {
        got.payloads.emplace_back(reinterpret_cast<const char*>(e.payload.data()),
                                  e.payload.size());
      }
    }
  });
}

// A relay with topic `name`, a subscriber reading it into `got`, and a publisher to it.
struct Scene {
  RelayScene relay;
  client::Subscriber sub;
  Received got;
  std::thread reader;
  client::Publisher pub;

  Scene(const std::string& name, TopicMode mode)
      : relay(config(name, mode)), sub(options(relay, name)), pub(publisher(relay, name)) {
    reader = reading(sub, got);
  }
  ~Scene() {
    sub.cancel();
    reader.join();
  }
  Scene(const Scene&) = delete;
  Scene& operator=(const Scene&) = delete;
  Scene(Scene&&) = delete;
  Scene& operator=(Scene&&) = delete;

  static RelayConfig config(const std::string& name, TopicMode mode) {
    RelayConfig c;
    c.topics.push_back(topic(name, mode));
    return c;
  }
  static client::SubscriberOptions options(const RelayScene& r, const std::string& name) {
    client::SubscriberOptions so;
    so.target = r.target;
    so.topic = name;
    so.depth = 64;
    return so;
  }
  static client::PublisherOptions publisher(const RelayScene& r, const std::string& name) {
    client::PublisherOptions po;
    po.target = r.target;
    po.topic = name;
    return po;
  }
};

template <class F>
bool eventually(F&& done, std::chrono::milliseconds limit = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return done();
}

void expect_accounted(const media::IngestStats& s) {
  EXPECT_EQ(s.frames, s.handed + s.queued + s.dropped_backpressure + s.dropped_slow_down +
                          s.dropped_until_keyframe);
}

// An H.264 file ingested (encoded: access units passed through) into a lossless topic and read
// back by a subscriber is, concatenated, exactly what GStreamer's own demuxer and parser write
// from the same file — every access unit, in order, not a byte changed.
TEST(Ingest, AnEncodedFileArrivesByteForByte) {
  TempDir dir;
  const auto mp4 = dir.path / "in.mp4";
  const auto reference = dir.path / "reference.h264";
  ASSERT_TRUE(
      gst_launch("videotestsrc num-buffers=90 ! video/x-raw,width=320,height=240,"
                 "framerate=30/1 ! openh264enc gop-size=30 ! h264parse ! mp4mux ! "
                 "filesink location=" +
                 mp4.string()));
  ASSERT_TRUE(gst_launch("filesrc location=" + mp4.string() +
                         " ! qtdemux ! h264parse config-interval=-1 ! "
                         "video/x-h264,stream-format=byte-stream,alignment=au ! filesink "
                         "location=" +
                         reference.string()));
  Scene scene("file", TopicMode::lossless);
  ASSERT_TRUE(scene.sub.subscribed());
  IngestOptions o;
  o.uri = "file://" + mp4.string();
  o.pace = false;
  o.queue_frames = 2;  // (a file's reader waits for room: nothing is dropped however small)
  std::vector<bool> keyframes;
  Ingest ingest(o, [&](IngestFrame&& f) {
    keyframes.push_back(f.keyframe);
    ASSERT_TRUE(scene.pub.publish(std::move(f.payload), f.timestamp_ns).ok());
  });
  ingest.start();
  ASSERT_TRUE(ingest.wait_finished(30s)) << ingest.stats().last_error;
  ASSERT_TRUE(scene.pub.close().ok());
  const auto s = ingest.stats();
  EXPECT_EQ(s.frames, 90U);
  EXPECT_EQ(s.handed, 90U);
  EXPECT_EQ(s.keyframes, 3U);  // (a keyframe every 30)
  ASSERT_EQ(keyframes.size(), 90U);
  EXPECT_TRUE(keyframes[0] && keyframes[30] && keyframes[60] && !keyframes[1]);
  EXPECT_NE(s.caps.find("video/x-h264"), std::string::npos) << s.caps;
  expect_accounted(s);
  ASSERT_TRUE(eventually([&] { return scene.got.count() == 90; }));
  std::string joined;
  {
    const std::lock_guard lock(scene.got.mu);
    for (const auto& p : scene.got.payloads) joined += p;
  }
  const std::string expected = read_all(reference);
  ASSERT_FALSE(expected.empty());
  EXPECT_EQ(joined.size(), expected.size());
  EXPECT_TRUE(joined == expected) << "the ingested access units differ from GStreamer's";
}

// An RTSP camera ingested into a real-time topic; the camera dies mid-stream (SIGKILL) and comes
// back on the same address: the ingest notices (an error or source_timeout), reconnects with
// backoff, and frames flow again to the same subscriber.
TEST(Ingest, AnRtspCameraThatGoesAwayIsReconnected) {
  Camera camera(bench::free_port());
  Scene scene("cam", TopicMode::realtime);
  ASSERT_TRUE(scene.sub.subscribed());
  auto& got = scene.got;
  IngestOptions o;
  o.uri = camera.uri();
  o.reconnect_min = 100ms;
  o.reconnect_max = 400ms;
  o.source_timeout = 2s;
  Ingest ingest(
      o, [&](IngestFrame&& f) { (void)scene.pub.publish(std::move(f.payload), f.timestamp_ns); });
  ingest.start();
  ASSERT_TRUE(eventually([&] { return got.count() >= 30; })) << ingest.stats().last_error;
  EXPECT_NE(ingest.stats().caps.find("video/x-h264"), std::string::npos);
  EXPECT_EQ(ingest.stats().keyframes > 0, true);
  camera.stop();
  ASSERT_TRUE(eventually([&] { return !ingest.stats().connected; }));
  const std::size_t before = got.count();
  EXPECT_FALSE(ingest.stats().last_error.empty());
  camera.start();
  ASSERT_TRUE(eventually([&] { return got.count() >= before + 30; }, 30s))
      << ingest.stats().last_error;
  const auto s = ingest.stats();
  EXPECT_GE(s.reconnects, 1U);
  EXPECT_TRUE(s.connected);
  ingest.stop();
  expect_accounted(ingest.stats());
  (void)scene.pub.close();
}

// A sink that blocks (a throttled topic) fills the ingest's queue: frames are then dropped at
// the source (backpressure), and, the output being encoded, the frames after a drop up to the
// next keyframe too (until_keyframe) — so what the sink gets after any loss starts with a
// keyframe. Every frame is accounted for.
TEST(Ingest, ABlockedSinkDropsAtTheSourceAndResumesAtAKeyframe) {
  IngestOptions o;
  o.uri = "test://";
  o.width = 160;
  o.height = 120;
  o.fps = 30;  // (VP8, a keyframe every 30 frames)
  o.queue_frames = 4;
  std::mutex mu;
  std::vector<bool> keys;
  std::atomic<int> calls{0};
  Ingest ingest(o, [&](IngestFrame&& f) {
    if (calls++ == 5) std::this_thread::sleep_for(1500ms);  // (blocked, as by a full topic)
    const std::lock_guard lock(mu);
    keys.push_back(f.keyframe);
  });
  ingest.start();
  ASSERT_TRUE(eventually([&] { return calls.load() > 50; }, 30s));
  ingest.stop();
  const auto s = ingest.stats();
  EXPECT_GT(s.dropped_backpressure, 0U);
  EXPECT_GT(s.dropped_until_keyframe, 0U);
  EXPECT_EQ(s.dropped_slow_down, 0U);
  expect_accounted(s);
  const std::lock_guard lock(mu);
  ASSERT_GT(keys.size(), 10U);
  EXPECT_TRUE(keys[0]);
  // The frames queued before the drop (4 at most) go first, then a keyframe.
  std::size_t first_after_block = 6 + o.queue_frames;
  ASSERT_GT(keys.size(), first_after_block);
  bool resumed_at_key = false;
  for (std::size_t i = 6; i <= first_after_block; ++i) resumed_at_key |= keys[i];
  EXPECT_TRUE(resumed_at_key);
}

// A relay that holds the producer back (a lossless topic whose subscriber reads nothing) costs
// the ingest queue_frames frames, not its publisher's byte window of old frames: the publisher
// never holds more than queue_frames frames the relay has not acknowledged, and the rest are
// dropped at the source (slow_down, backpressure, until a keyframe) — every frame accounted for.
TEST(Ingest, AThrottlingRelayCostsQueueFramesAndTheSourceDrops) {
  RelayConfig c;
  auto t = topic("held", TopicMode::lossless);
  t.max_queue_items = 8;
  t.max_wait = 60s;  // (held back, not refused, for the whole test)
  c.topics.push_back(t);
  RelayScene relay(c);
  client::SubscriberOptions so;
  so.target = relay.target;
  so.topic = "held";
  so.name = "reads-nothing";
  client::Subscriber stuck(so);
  ASSERT_TRUE(stuck.subscribed());
  IngestOptions o;
  o.uri = "test://";
  o.output = IngestOutput::raw;  // (225 KiB frames: the subscriber's transport fills at once)
  o.width = 320;
  o.height = 240;
  o.fps = 30;
  o.queue_frames = 4;
  client::PublisherOptions po;
  po.target = relay.target;
  po.topic = "held";
  media::IngestPublisher ingest(o, po);
  ingest.start();
  std::uint64_t most_unacked = 0;
  ASSERT_TRUE(eventually(
      [&] {
        const auto s = ingest.stats();
        most_unacked = std::max(most_unacked, s.handed - std::min(s.handed, ingest.acked()));
        // (two seconds of frames at 30 fps dropped: as slow_down told, or for want of room)
        return s.dropped_backpressure + s.dropped_slow_down + s.dropped_until_keyframe >= 60;
      },
      30s))
      << "frames " << ingest.stats().frames << ", handed " << ingest.stats().handed << ", acked "
      << ingest.acked();
  EXPECT_LE(most_unacked, o.queue_frames + 1);  // (+1: the frame the sink holds, waiting for room)
  ingest.stop();
  expect_accounted(ingest.stats());
  stuck.cancel();
}

// Told to slow down, a decoded output passes every other frame (the rest counted slow_down);
// told to resume, every frame again.
TEST(Ingest, SlowDownHalvesADecodedOutputAtTheSource) {
  IngestOptions o;
  o.uri = "test://";
  o.output = IngestOutput::raw;
  o.width = 64;
  o.height = 48;
  o.fps = 30;
  std::atomic<std::uint64_t> handed{0};
  std::atomic<std::size_t> size{0};
  Ingest ingest(o, [&](IngestFrame&& f) {
    size = f.payload.size();
    ++handed;
  });
  ingest.start();
  ASSERT_TRUE(eventually([&] { return handed.load() >= 10; }));
  EXPECT_EQ(size.load(), 64U * 48U * 3U);  // RGB, rows packed
  ingest.set_slowed(true);
  const auto before = ingest.stats();
  ASSERT_TRUE(eventually([&] { return ingest.stats().frames >= before.frames + 20; }));
  ingest.set_slowed(false);
  const auto slowed = ingest.stats();
  ingest.stop();
  const std::uint64_t seen = slowed.frames - before.frames;
  const std::uint64_t dropped = slowed.dropped_slow_down - before.dropped_slow_down;
  EXPECT_GE(dropped, seen / 2 - 1);
  EXPECT_LE(dropped, seen / 2 + 1);
  EXPECT_EQ(slowed.dropped_backpressure, 0U);
  expect_accounted(ingest.stats());
}

// JPEG output is JPEG (SOI marker), at the size asked for; a URI of another scheme is refused
// naming what is accepted.
TEST(Ingest, JpegOutputAndABadUriIsRefusedByName) {
  IngestOptions o;
  o.uri = "test://";
  o.output = IngestOutput::jpeg;
  o.width = 64;
  o.height = 48;
  o.fps = 10;
  std::mutex mu;
  std::string first;
  Ingest ingest(o, [&](IngestFrame&& f) {
    const std::lock_guard lock(mu);
    if (first.empty())
      first.assign(reinterpret_cast<const char*>(f.payload.data()), f.payload.size());
  });
  ingest.start();
  ASSERT_TRUE(eventually([&] {
    const std::lock_guard lock(mu);
    return !first.empty();
  }));
  ingest.stop();
  ASSERT_GT(first.size(), 4U);
  EXPECT_EQ(static_cast<unsigned char>(first[0]), 0xFF);
  EXPECT_EQ(static_cast<unsigned char>(first[1]), 0xD8);
  EXPECT_NE(ingest.stats().caps.find("image/jpeg"), std::string::npos);
  IngestOptions bad;
  bad.uri = "http://example.com/cam";
  try {
    Ingest refused(bad, [](IngestFrame&&) {});
    FAIL() << "an http:// source was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("rtsp://"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sluice::testing

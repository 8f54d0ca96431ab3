// What "slow" means, tried from outside with real clients on the real relay (127.0.0.1,
// ephemeral ports): a subscriber is judged by its progress (bytes reaching it), per topic mode.
//   - Real-time: a late reader (it reads, slowly) stays and loses frames, each loss announced,
//     the gaps adding up exactly; one that stops is ended (4008) and what it was shown before
//     is bounded by its depth and the kernel buffers, whatever the frame size.
//   - Lossless: a stuck subscriber holds the producer back (RESOURCE_EXHAUSTED after max_wait,
//     the producer resends) and loses nothing; with evict_after_ms it is removed and the
//     producer flows again. A gRPC subscriber that pauses at random is throttling, not evicted.
//   - A window (?window=N): what a reader is shown is at most N frames (plus its depth) behind,
//     whatever the kernel buffers hold.
//   - A subscriber's oversized message is a refusal like any other: counted, logged, 1009.
// No timing is asserted: the invariants are counts (frames, gaps, positions, close codes).
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../soak/stress_scale.hpp"
#include "relay_scene.hpp"
#include "sluice/client/client.hpp"
#include "sluice/relay/protocol.hpp"
#include "ws_client.hpp"

namespace sluice::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace websocket = boost::beast::websocket;

RelayConfig one_topic(TopicMode mode, std::size_t depth = 4) {
  RelayConfig c;
  TopicConfig t;
  t.name = "feed";
  t.mode = mode;
  t.depth = depth;
  c.topics.push_back(t);
  return c;
}

// Shuts the client's socket after `limit` unless done first: a read that would wait forever
// fails instead.
class Deadline {
 public:
  Deadline(WsClient& client, std::chrono::seconds limit)
      : thread_([this, fd = client.s.next_layer().native_handle(), limit] {
          const auto end = Clock::now() + limit;
          while (!done_.load() && Clock::now() < end) std::this_thread::sleep_for(20ms);
          if (!done_.load()) ::shutdown(fd, SHUT_RDWR);
        }) {}
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;
  ~Deadline() {
    done_ = true;
    thread_.join();
  }

 private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

// Publishes frames of `bytes` every `every` until `stop`; `latest` is the newest index sent.
// Returns how many it sent.
std::uint64_t publish_paced(WsClient& pub, std::size_t bytes, std::chrono::microseconds every,
                            const std::atomic<bool>& stop, std::atomic<std::int64_t>& latest) {
  const std::string payload(bytes, 'p');
  const auto start = Clock::now();
  std::uint64_t i = 0;
  while (!stop.load()) {
    std::this_thread::sleep_until(start + i * every);
    latest.store(static_cast<std::int64_t>(i));
    pub.send_binary(frame(i, 0, payload));
    ++i;
  }
  return i;
}

// What a WebSocket reader saw: frames, gaps, how it ended. `check` accounts: every frame's
// index is the one after the previous frame plus the gaps announced between them.
struct Seen {
  std::uint64_t frames = 0;
  std::uint64_t lost = 0;
  std::uint64_t first = 0;
  std::uint64_t next = 0;  // the index expected next
  bool started = false;
  bool consistent = true;
  std::int64_t worst_behind = 0;  // the most the publisher was ahead of a frame when it was read
  int close_code = 0;
  std::string close_reason;

  // One message; false once the socket ended.
  bool take(WsClient& c, const std::atomic<std::int64_t>* latest = nullptr) {
    bool text = false;
    std::string bytes;
    if (auto ec = c.read(text, bytes)) {
      close_code = static_cast<int>(c.s.reason().code);
      close_reason = std::string(c.s.reason().reason.c_str());
      return false;
    }
    if (text) {
      const auto j = nlohmann::json::parse(bytes);
      if (j.contains("gap")) {
        lost += j["gap"].get<std::uint64_t>();
        next += j["gap"].get<std::uint64_t>();
      }
      return true;
    }
    const std::uint64_t index = index_of(bytes);
    if (latest != nullptr)
      worst_behind = std::max(worst_behind, latest->load() - static_cast<std::int64_t>(index));
    if (!started) {
      started = true;
      first = index;
      next = index;
    }
    consistent = consistent && index == next;
    next = index + 1;
    ++frames;
    return true;
  }
};

// Real-time: readers taking a 16 KiB frame every 20 ms and every 80 ms from a producer at
// 100 frames a second, on default kernel buffers. Both are late; both stay (no 4008), lose
// frames announced as gaps that add up exactly, and are shown as late.
TEST(Judgement, LateRealtimeReadersStayAndTheirGapsAddUp) {
  RelayScene relay(one_topic(TopicMode::realtime));
  const auto port = relay.http_port();
  WsClient steady;
  WsClient slower;
  ASSERT_FALSE(steady.connect(port, "/v1/ws/subscribe/feed?name=steady"));
  ASSERT_FALSE(slower.connect(port, "/v1/ws/subscribe/feed?name=slower"));
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/feed"));
  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> latest{-1};
  std::uint64_t sent = 0;
  std::thread publisher(
      [&] { sent = publish_paced(pub, std::size_t{16} * 1024, 10ms, stop, latest); });
  Seen seen[2];
  std::vector<std::thread> readers;
  WsClient* clients[2] = {&steady, &slower};
  const std::chrono::milliseconds pace[2] = {20ms, 80ms};
  std::atomic<bool> publishing{true};
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&, r] {
      Deadline deadline(*clients[r], 60s);
      // At its pace while the producer publishes; then at full speed to the last frame.
      while (seen[r].take(*clients[r])) {
        if (publishing.load()) std::this_thread::sleep_for(pace[r]);
        if (!publishing.load() && seen[r].started && seen[r].next >= sent) break;
      }
    });
  }
  std::this_thread::sleep_for(5s);
  stop = true;
  publisher.join();
  publishing = false;
  for (auto& t : readers) t.join();
  for (int r = 0; r < 2; ++r) {
    SCOPED_TRACE(r == 0 ? "every 20 ms" : "every 80 ms");
    std::printf(
        "late reader %s: %llu frames, %llu lost in gaps, of %llu published\n",
        r == 0 ? "every 20 ms" : "every 80 ms", static_cast<unsigned long long>(seen[r].frames),
        static_cast<unsigned long long>(seen[r].lost), static_cast<unsigned long long>(sent));
    EXPECT_EQ(seen[r].close_code, 0) << "ended: " << seen[r].close_reason;
    EXPECT_TRUE(seen[r].consistent) << "frames and gaps do not account for every index";
    EXPECT_EQ(seen[r].next, sent) << "it did not reach the last frame";
    EXPECT_EQ(seen[r].first + seen[r].frames + seen[r].lost, sent);
    EXPECT_GT(seen[r].lost, 0U) << "a late reader of a real-time topic loses frames";
  }
  EXPECT_GE(relay.metric("sluice_slow_viewers_total", "kind=\"slow\""), 1);
  EXPECT_LT(relay.metric("sluice_slow_viewers_total", "kind=\"stalled\""), 1);
  EXPECT_LT(relay.metric("sluice_ws_closes_total", "code=\"4008\""), 1);
  pub.s.close(websocket::close_code::normal);
  steady.s.close(websocket::close_code::normal);
  slower.s.close(websocket::close_code::normal);
}

// Real-time: a reader with a 4 KiB receive buffer that stops reading is ended (4008, the reason
// naming both settings), for small frames (300 B: many fit in one write) and large ones
// (1 MiB); what it was sent after it stopped is bounded by its depth and the kernel buffers
// (limits.viewer_send_buffer_bytes and its own), not by the relay's write batches.
class StoppedReader : public ::testing::TestWithParam<std::size_t> {};

TEST_P(StoppedReader, IsEndedAndWhatItWasSentIsBounded) {
  const std::size_t bytes = GetParam();
  constexpr std::size_t kDepth = 16;
  constexpr std::uint64_t kBuffers = 4096;
  RelayConfig c = one_topic(TopicMode::realtime, kDepth);
  c.viewer_send_buffer_bytes = kBuffers;
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  WsClient stuck;
  stuck.s.next_layer().open(boost::asio::ip::tcp::v4());
  stuck.s.next_layer().set_option(boost::asio::socket_base::receive_buffer_size(kBuffers));
  ASSERT_FALSE(stuck.connect(port, "/v1/ws/subscribe/feed?name=stuck"));
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/feed"));
  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> latest{-1};
  std::thread publisher([&] { publish_paced(pub, bytes, 33ms, stop, latest); });
  Seen seen;
  Deadline deadline(stuck, 90s);
  while (seen.frames < 10) ASSERT_TRUE(seen.take(stuck)) << seen.close_reason;
  const std::int64_t stopped_at = latest.load();
  // It reads nothing until the relay has closed a session with 4008.
  const auto give_up = Clock::now() + 60s;
  while (relay.metric("sluice_ws_closes_total", "code=\"4008\"") < 1 && Clock::now() < give_up)
    std::this_thread::sleep_for(20ms);
  stop = true;
  publisher.join();
  std::uint64_t after = 0;
  std::uint64_t newest = 0;
  const std::uint64_t before = seen.frames;
  while (seen.take(stuck)) {
    if (seen.frames > before) newest = seen.next - 1;
    after = seen.frames - before;
  }
  EXPECT_EQ(seen.close_code, 4008) << seen.close_reason;
  EXPECT_EQ(seen.close_reason,
            "slow consumer: no progress in 10 x 100 ms (limits.max_send_timeouts, "
            "limits.send_timeout_ms)");
  EXPECT_TRUE(seen.consistent);
  // The bound: its depth, the frame being written and one batch of at most a depth's frames
  // more, and what the two kernels hold (the relay's send buffer and its receive buffer,
  // each doubled by the kernel, twice over for slack).
  const std::uint64_t kernels = 2 * (2 * kBuffers + 2 * kBuffers) / (bytes + 24) + 1;
  const std::uint64_t bound = 2 * kDepth + 2 + kernels;
  EXPECT_LE(after, bound) << "frames sent after it stopped reading";
  std::printf(
      "stopped reader, %zu-byte frames: %llu frames reached it after it stopped (bound %llu)\n",
      bytes, static_cast<unsigned long long>(after), static_cast<unsigned long long>(bound));
  // None of what it got after it stopped is older than that bound either.
  if (after > 0) {
    EXPECT_LE(static_cast<std::int64_t>(newest) - stopped_at, static_cast<std::int64_t>(bound) + 60)
        << "(the producer went on for up to 2 s at 30 fps)";
  }
  EXPECT_GE(relay.metric("sluice_slow_viewers_total", "kind=\"stalled\""), 1);
  EXPECT_GE(relay.metric("sluice_refusals_total", "kind=\"slow_consumer\""), 1);
  pub.s.close(websocket::close_code::normal);
}

INSTANTIATE_TEST_SUITE_P(FrameSizes, StoppedReader,
                         ::testing::Values(std::size_t{300}, std::size_t{1} << 20),
                         [](const auto& p) { return p.param == 300 ? "300B" : "1MiB"; });

client::PublisherOptions producer(const RelayScene& relay) {
  client::PublisherOptions o;
  o.target = relay.target;
  o.topic = "feed";
  o.initial_backoff = 50ms;
  o.max_retries = 1000;  // (it keeps trying: the test bounds it)
  return o;
}

RelayConfig lossless(std::chrono::milliseconds max_wait, std::chrono::milliseconds evict_after) {
  RelayConfig c = one_topic(TopicMode::lossless);
  c.topics[0].max_queue_bytes = 64 * 1024;
  c.topics[0].max_wait = max_wait;
  c.topics[0].evict_after = evict_after;
  c.viewer_send_buffer_bytes = 4096;
  return c;
}

// Lossless: a subscriber stuck for 2.5 s on a topic whose max_wait_ms is 300. The producer is
// held back, gets RESOURCE_EXHAUSTED (counted), resends; the subscriber is not evicted and, once
// it reads again, gets every item exactly once, in order.
TEST(Judgement, AStuckLosslessSubscriberHoldsTheProducerBackAndLosesNothing) {
  RelayScene relay(lossless(300ms, 0ms));
  const auto port = relay.http_port();
  WsClient sub;
  sub.s.next_layer().open(boost::asio::ip::tcp::v4());
  sub.s.next_layer().set_option(boost::asio::socket_base::receive_buffer_size(4096));
  ASSERT_FALSE(sub.connect(port, "/v1/ws/subscribe/feed?name=stuck"));
  constexpr std::uint64_t kItems = 2000;
  std::thread producing([&] {
    client::Publisher pub(producer(relay));
    const std::string payload(1024, 'x');
    for (std::uint64_t i = 0; i < kItems; ++i) {
      ASSERT_TRUE(pub.publish(Buffer::copy(payload)).ok());
    }
    ASSERT_TRUE(pub.close().ok());
  });
  Seen seen;
  Deadline deadline(sub, 120s);
  while (seen.frames < 5) ASSERT_TRUE(seen.take(sub));
  std::this_thread::sleep_for(2500ms);  // stuck
  while (seen.frames < kItems && seen.take(sub)) {
  }
  producing.join();
  EXPECT_EQ(seen.close_code, 0) << seen.close_reason;
  EXPECT_EQ(seen.frames, kItems);
  EXPECT_EQ(seen.lost, 0U);
  EXPECT_TRUE(seen.consistent);
  EXPECT_GE(relay.metric("sluice_topic_publish_timeouts_total", "topic=\"feed\""), 1);
  EXPECT_GE(relay.metric("sluice_slow_viewers_total", "kind=\"stalled\""), 1);
  EXPECT_LT(relay.metric("sluice_ws_closes_total", "code=\"4008\""), 1);
  sub.s.close(websocket::close_code::normal);
}

// Lossless with evict_after_ms: a subscriber that never reads again is removed once it made no
// progress that long (4008 naming the setting), and the producer flows on to the end; another
// subscriber gets everything.
TEST(Judgement, WithEvictAfterAStuckLosslessSubscriberIsRemovedAndTheProducerFlows) {
  RelayScene relay(lossless(300ms, 1000ms));
  const auto port = relay.http_port();
  WsClient healthy;
  ASSERT_FALSE(healthy.connect(port, "/v1/ws/subscribe/feed?name=healthy"));
  WsClient stuck;
  stuck.s.next_layer().open(boost::asio::ip::tcp::v4());
  stuck.s.next_layer().set_option(boost::asio::socket_base::receive_buffer_size(4096));
  ASSERT_FALSE(stuck.connect(port, "/v1/ws/subscribe/feed?name=stuck"));
  constexpr std::uint64_t kItems = 2000;
  std::thread producing([&] {
    client::Publisher pub(producer(relay));
    const std::string payload(1024, 'x');
    for (std::uint64_t i = 0; i < kItems; ++i) ASSERT_TRUE(pub.publish(Buffer::copy(payload)).ok());
    ASSERT_TRUE(pub.close().ok());
  });
  Seen seen;
  {
    Deadline deadline(healthy, 120s);
    while (seen.frames < kItems && seen.take(healthy)) {
    }
  }
  producing.join();
  EXPECT_EQ(seen.frames, kItems);
  EXPECT_TRUE(seen.consistent);
  Seen gone;
  Deadline deadline(stuck, 30s);
  while (gone.take(stuck)) {
  }
  EXPECT_EQ(gone.close_code, 4008);
  EXPECT_EQ(gone.close_reason, "slow consumer: no progress in 1000 ms (topics.evict_after_ms)");
  EXPECT_TRUE(gone.consistent);
  healthy.s.close(websocket::close_code::normal);
}

// A gRPC subscriber of a lossless topic (1 MiB, 5 s) that pauses 0-300 ms at random and
// otherwise reads: every item exactly once, the producer held back meanwhile, never evicted.
TEST(Judgement, AGrpcSubscriberPausingAtRandomThrottlesAndIsNotEvicted) {
  RelayConfig c = one_topic(TopicMode::lossless);
  c.topics[0].max_queue_bytes = 1 << 20;
  c.topics[0].max_wait = 5000ms;
  RelayScene relay(c);
  const std::uint64_t items = std::max<std::uint64_t>(stress::items() / 4, 20'000);
  const std::uint64_t pause_every = items / 40;  // 40 pauses, about 6 s in all
  client::SubscriberOptions so;
  so.target = relay.target;
  so.topic = "feed";
  so.name = "pausing";
  client::Subscriber sub(so);
  ASSERT_TRUE(sub.subscribed());
  std::atomic<std::uint64_t> slow_downs{0};
  std::thread producing([&] {
    client::PublisherOptions o = producer(relay);
    client::Publisher pub(o, [&](const client::PublisherEvent& e) {
      if (e.kind == client::PublisherEvent::Kind::slow_down) ++slow_downs;
    });
    const std::string payload(512, 'x');
    for (std::uint64_t i = 0; i < items; ++i) ASSERT_TRUE(pub.publish(Buffer::copy(payload)).ok());
    ASSERT_TRUE(pub.close().ok());
  });
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> pause_ms(0, 300);
  std::uint64_t got = 0;
  std::uint64_t gaps = 0;
  bool in_order = true;
  client::SubscriberEvent e;
  while (got < items && sub.next(e)) {
    if (e.kind == client::SubscriberEvent::Kind::gap) {
      ++gaps;
      continue;
    }
    in_order = in_order && e.sequence == got;
    ++got;
    if (got % pause_every == 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms(rng)));
  }
  producing.join();
  EXPECT_EQ(got, items);
  std::printf("pausing gRPC subscriber: %llu of %llu items, %llu slow_downs to the producer\n",
              static_cast<unsigned long long>(got), static_cast<unsigned long long>(items),
              static_cast<unsigned long long>(slow_downs.load()));
  EXPECT_EQ(gaps, 0U);
  EXPECT_TRUE(in_order);
  EXPECT_GE(slow_downs.load(), 1U) << "the producer was never held back";
  EXPECT_LT(relay.metric("sluice_refusals_total", "kind=\"slow_consumer\""), 1);
  sub.cancel();
}

// A windowed reader (?window=4, acknowledging every two frames it processed, as the clients do)
// on default kernel buffers: after a pause it is given at most its window of frames from before
// the pause, then a gap, then fresh frames (without a window, the kernels' buffers would hand it
// everything published meanwhile, up to megabytes).
TEST(Judgement, AWindowedReaderIsGivenAtMostItsWindowFromBeforeAPause) {
  constexpr std::uint64_t kDepth = 4;
  constexpr std::uint64_t kWindow = 4;
  RelayScene relay(one_topic(TopicMode::realtime, kDepth));
  const auto port = relay.http_port();
  WsClient reader;
  ASSERT_FALSE(reader.connect(port, "/v1/ws/subscribe/feed?name=windowed&window=4"));
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/feed"));
  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> latest{-1};
  std::thread publisher([&] { publish_paced(pub, 300, 2ms, stop, latest); });
  Seen seen;
  std::uint64_t before_gap = 0;  // frames it got after the pause, before the first gap
  {
    Deadline deadline(reader, 60s);
    const auto ack = [&] {
      if (seen.frames % 2 == 0) reader.send_text(nlohmann::json{{"ack", seen.frames}}.dump());
    };
    while (seen.frames < 20 && seen.take(reader)) ack();
    std::this_thread::sleep_for(1s);  // paused: reads and acknowledges nothing
    const std::uint64_t lost = seen.lost;
    const std::uint64_t frames = seen.frames;
    while (seen.lost == lost && seen.take(reader)) {
      if (seen.frames > frames) ack();
    }
    before_gap = seen.frames - frames;
    while (seen.frames < frames + 40 && seen.take(reader)) ack();
  }
  stop = true;
  publisher.join();
  EXPECT_EQ(seen.close_code, 0) << seen.close_reason;
  EXPECT_TRUE(seen.consistent);
  EXPECT_GT(seen.lost, 100U) << "the pause lapped it";
  EXPECT_LE(before_gap, kWindow) << "frames from before the pause";
  std::printf("windowed reader after a 1 s pause: %llu frames from before it, then a gap\n",
              static_cast<unsigned long long>(before_gap));
  // Paused, it was late, not stalled (the window bounds what the relay holds for it).
  EXPECT_LT(relay.metric("sluice_slow_viewers_total", "kind=\"stalled\""), 1);
  pub.s.close(websocket::close_code::normal);
  reader.s.close(websocket::close_code::normal);
}

// A bad acknowledgement gets an error event, and the session goes on; acknowledgements without
// a window are answered so.
TEST(Judgement, BadAcknowledgementsAreNamedAndChangeNothing) {
  RelayScene relay(one_topic(TopicMode::realtime));
  const auto port = relay.http_port();
  WsClient windowed;
  ASSERT_FALSE(windowed.connect(port, "/v1/ws/subscribe/feed?name=w&window=2"));
  windowed.send_text(R"({"ack": 5})");
  bool text = false;
  std::string bytes;
  ASSERT_FALSE(windowed.read(text, bytes));
  EXPECT_TRUE(text);
  EXPECT_NE(bytes.find("ack 5 is outside 0 to 0"), std::string::npos) << bytes;
  WsClient plain;
  ASSERT_FALSE(plain.connect(port, "/v1/ws/subscribe/feed?name=p"));
  plain.send_text(R"({"ack": 0})");
  ASSERT_FALSE(plain.read(text, bytes));
  EXPECT_NE(bytes.find("?window=N"), std::string::npos) << bytes;
  WsClient bad;
  bad.refused(port, "/v1/ws/subscribe/feed?window=0");
  EXPECT_EQ(bad.http_status, 400);
  EXPECT_NE(bad.http_body.find("window"), std::string::npos);
  windowed.s.close(websocket::close_code::normal);
  plain.s.close(websocket::close_code::normal);
}

// A subscriber that sends a message over what a subscribe socket reads: 1009, through the one
// refusal path (counted by kind and close code, logged).
TEST(Judgement, ASubscribersOversizedMessageIsARefusalLikeAnyOther) {
  RelayScene relay(one_topic(TopicMode::realtime));
  const auto port = relay.http_port();
  WsClient sub;
  ASSERT_FALSE(sub.connect(port, "/v1/ws/subscribe/feed?name=big"));
  boost::beast::error_code ec;
  sub.s.binary(true);
  sub.s.write(boost::asio::buffer(std::string(100 * 1024, 'b')), ec);
  Seen seen;
  Deadline deadline(sub, 30s);
  while (seen.take(sub)) {
  }
  // (The close frame may be lost to the reset that closing a socket with the rest of the
  // message unread causes: the relay's counts are what this asserts.)
  EXPECT_TRUE(seen.close_code == 1009 || seen.close_code == 0) << seen.close_code;
  // (Beast sends the close as it reads the header; the relay's count follows on its loop)
  const auto give_up = Clock::now() + 10s;
  while (relay.metric("sluice_ws_closes_total", "code=\"1009\"") < 1 && Clock::now() < give_up)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(relay.metric("sluice_refusals_total", "kind=\"frame_too_big\""), 1);
  EXPECT_EQ(relay.metric("sluice_ws_closes_total", "code=\"1009\""), 1);
}

}  // namespace
}  // namespace sluice::testing

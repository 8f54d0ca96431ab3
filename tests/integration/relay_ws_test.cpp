// The relay's WebSocket endpoints on 127.0.0.1 (ephemeral ports), driven by real Beast clients.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

#include "loopback.hpp"
#include "relay_scene.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay/protocol.hpp"
#include "sluice/relay/server.hpp"
#include "ws_client.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;
namespace websocket = boost::beast::websocket;

using testing::frame;
using testing::index_of;
using testing::loopback;
using testing::WsClient;

// Connects a subscriber that will read nothing, with a 4 KiB receive buffer: the relay's
// writes to it soon wait (recent kernels let an unread socket's buffer grow to 32 MiB).
boost::beast::error_code connect_unread(WsClient& client, std::uint16_t port,
                                        const std::string& target) {
  client.s.next_layer().open(boost::asio::ip::tcp::v4());
  client.s.next_layer().set_option(boost::asio::socket_base::receive_buffer_size(4096));
  return client.connect(port, target);
}

// Shuts a client's socket down after `limit` unless the test is done first: a blocking read
// that would wait forever fails instead (SO_RCVTIMEO does not end Asio's synchronous reads).
class Watchdog {
 public:
  Watchdog(WsClient& client, std::chrono::seconds limit)
      : thread_([this, fd = client.s.next_layer().native_handle(), limit] {
          std::unique_lock lock(mu_);
          if (!cv_.wait_for(lock, limit, [this] { return done_; })) ::shutdown(fd, SHUT_RDWR);
        }) {}
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog() {
    {
      std::lock_guard lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

TEST(RelayWs, FramesFromAPublisherReachEveryViewerWithTheirHeader) {
  testing::RelayScene relay(loopback());
  const auto port = relay.http_port();
  WsClient a;
  WsClient b;
  ASSERT_FALSE(a.connect(port, "/v1/ws/subscribe/cam?name=a"));
  ASSERT_FALSE(b.connect(port, "/v1/ws/subscribe/cam?name=b%20two"));
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/cam"));
  constexpr int kFrames = 100;
  for (int i = 0; i < kFrames; ++i)
    pub.send_binary(frame(i, 1000 + i, "frame-" + std::to_string(i)));
  for (WsClient* viewer : {&a, &b}) {
    for (int i = 0; i < kFrames; ++i) {
      bool text = true;
      std::string bytes;
      ASSERT_FALSE(viewer->read(text, bytes));
      ASSERT_FALSE(text) << bytes;
      EXPECT_EQ(index_of(bytes), static_cast<std::uint64_t>(i));
      EXPECT_EQ(bytes.substr(16), "frame-" + std::to_string(i));
    }
  }
  EXPECT_NE(relay.stats_json().find("\"b two\""), std::string::npos);  // names are decoded
  // Viewers have their series in /metrics, like gRPC subscribers.
  const std::string metrics = testing::http_get(port, "/metrics").second;
  EXPECT_NE(metrics.find("subscriber=\"b two\",topic=\"cam\"} 100"), std::string::npos) << metrics;
  pub.s.close(websocket::close_code::normal);
  a.s.close(websocket::close_code::normal);
  b.s.close(websocket::close_code::normal);
}

// ?header=24 adds the item's flags (and 4 reserved bytes) to the frame header, both ways, per
// session: a publisher's flags reach a viewer that asked for them (and gRPC subscribers: the
// item's flags), a viewer on the 16-byte header gets exactly the frames it always did, and the
// relay says which header a session has. A frame shorter than its session's header, or another
// header length, is refused naming what is accepted.
TEST(RelayWs, The24ByteHeaderCarriesTheFlagsBothWaysThe16ByteOneIsUnchanged) {
  testing::RelayScene relay(loopback());
  const auto port = relay.http_port();
  WsClient flagged;
  WsClient plain;
  ASSERT_FALSE(flagged.connect(port, "/v1/ws/subscribe/cam?name=flagged&header=24"));
  ASSERT_FALSE(plain.connect(port, "/v1/ws/subscribe/cam?name=plain"));
  EXPECT_EQ(flagged.response["Sluice-Header"], "24");
  EXPECT_EQ(plain.response["Sluice-Header"], "16");
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/cam?header=24"));
  EXPECT_EQ(pub.response["Sluice-Header"], "24");
  constexpr int kFrames = 30;
  for (int i = 0; i < kFrames; ++i) {
    std::string f = testing::flagged_frame(i, 1000 + i, static_cast<std::uint32_t>(i % 4),
                                           "frame-" + std::to_string(i));
    f[20] = 'x';  // reserved: ignored
    pub.send_binary(f);
  }
  for (int i = 0; i < kFrames; ++i) {
    bool text = true;
    std::string bytes;
    ASSERT_FALSE(flagged.read(text, bytes));
    ASSERT_FALSE(text) << bytes;
    ASSERT_EQ(bytes.size(), ws::kFlaggedFrameHeaderBytes + ("frame-" + std::to_string(i)).size());
    const auto h = ws::decode(bytes.data(), ws::kFlaggedFrameHeaderBytes);
    EXPECT_EQ(h.index, static_cast<std::uint64_t>(i));
    EXPECT_EQ(h.timestamp_ns, 1000 + i);
    EXPECT_EQ(h.flags, static_cast<std::uint32_t>(i % 4));
    EXPECT_EQ(bytes.substr(20, 4), std::string(4, '\0'));  // reserved: sent as zero
    EXPECT_EQ(bytes.substr(24), "frame-" + std::to_string(i));
    ASSERT_FALSE(plain.read(text, bytes));
    ASSERT_FALSE(text) << bytes;
    EXPECT_EQ(index_of(bytes), static_cast<std::uint64_t>(i));
    EXPECT_EQ(bytes.substr(16), "frame-" + std::to_string(i));
  }
  // A frame with only the 16-byte header on a 24-byte session: refused, the session goes on.
  pub.send_binary(frame(99, 0, ""));
  bool text = false;
  std::string event;
  ASSERT_FALSE(pub.read(text, event));
  ASSERT_TRUE(text);
  EXPECT_NE(event.find("24-byte header"), std::string::npos) << event;
  pub.send_binary(testing::flagged_frame(kFrames, 0, kItemDelta, "after"));
  std::string bytes;
  ASSERT_FALSE(flagged.read(text, bytes));
  EXPECT_EQ(ws::decode(bytes.data(), ws::kFlaggedFrameHeaderBytes).flags, kItemDelta);
  // Any other length: 400 before the upgrade, naming the parameter.
  WsClient odd;
  EXPECT_EQ(odd.connect(port, "/v1/ws/subscribe/cam?header=20"),
            websocket::error::upgrade_declined);
  EXPECT_EQ(odd.http_status, 400U);
  EXPECT_NE(odd.http_body.find("'header'"), std::string::npos) << odd.http_body;
  pub.s.close(websocket::close_code::normal);
  flagged.s.close(websocket::close_code::normal);
  plain.s.close(websocket::close_code::normal);
}

// Producers' large frames are read into blocks the relay recycles (relay/frame_buffer.hpp):
// frames of 256 KiB reach the viewer intact, one after another (each read into a block an
// earlier frame gave back); once small frames have pushed the large ones out of the topic, their
// blocks are kept for reuse, which /metrics shows (bounded at 64 MiB).
TEST(RelayWs, LargeFramesArriveIntactAndTheirBlocksAreKeptForReuse) {
  RelayConfig c = loopback();
  c.defaults.mode = TopicMode::realtime;
  c.defaults.depth = 4;  // the topic holds 8 frames at most
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  EXPECT_EQ(testing::metric(port, "sluice_frame_pool_spare_bytes"), 0.0);
  WsClient viewer;
  ASSERT_FALSE(viewer.connect(port, "/v1/ws/subscribe/big?name=v"));
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/big"));
  const auto send_and_receive = [&](int i, const std::string& payload) {
    pub.send_binary(frame(i, 1000 + i, payload));
    bool text = true;
    std::string bytes;
    ASSERT_FALSE(viewer.read(text, bytes));
    ASSERT_FALSE(text) << bytes;
    ASSERT_EQ(index_of(bytes), static_cast<std::uint64_t>(i));
    ASSERT_EQ(bytes.substr(16), payload) << "frame " << i;
  };
  int i = 0;
  for (; i < 40; ++i) {
    std::string payload(256 * 1024, static_cast<char>('a' + i % 26));
    payload.replace(0, 8, std::to_string(10'000'000 + i));  // each frame's own bytes
    send_and_receive(i, payload);
    if (HasFatalFailure()) return;
  }
  for (; i < 60; ++i) {
    send_and_receive(i, "small-" + std::to_string(i));
    if (HasFatalFailure()) return;
  }
  // (A block comes back when its last reference goes, on whichever thread that is.)
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  double spare = 0;
  while ((spare = testing::metric(port, "sluice_frame_pool_spare_bytes")) < 256.0 * 1024 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GE(spare, 256.0 * 1024);
  EXPECT_LE(spare, 64.0 * 1024 * 1024);
  pub.s.close(websocket::close_code::normal);
  viewer.s.close(websocket::close_code::normal);
}

// server.threads: viewers are spread over the event-loop threads (the one with the fewest
// first). With one thread and with three, every viewer receives every frame of a lossless
// topic in order while /metrics is scraped from another loop; viewers leaving (half cleanly,
// half by dropping the connection) take their series and their loop's count with them.
TEST(RelayWs, ViewersOnEveryEventLoopGetEveryFrameAndLeaveNothingBehind) {
  for (const unsigned threads : {1U, 3U}) {
    SCOPED_TRACE("server.threads = " + std::to_string(threads));
    RelayConfig c = loopback();
    c.threads = threads;
    testing::RelayScene relay(c);
    const auto port = relay.http_port();
    constexpr int kViewers = 5;
    constexpr int kFrames = 2000;
    std::vector<std::unique_ptr<WsClient>> viewers;
    for (int v = 0; v < kViewers; ++v) {
      viewers.push_back(std::make_unique<WsClient>());
      ASSERT_FALSE(
          viewers.back()->connect(port, "/v1/ws/subscribe/spread?name=v" + std::to_string(v)));
    }
    ASSERT_TRUE(testing::wait_for_sessions(port, kViewers));
    // Each loop serves some viewers: counts 2, 2, 1 (or 5 on the one loop).
    double served = 0;
    for (unsigned t = 0; t < threads; ++t) {
      const std::string name = t == 0 ? "sluice-io" : "sluice-io-" + std::to_string(t);
      const double n = testing::metric(port, "sluice_io_thread_viewers", "\"" + name + "\"");
      EXPECT_GE(n, 1) << name;
      served += n;
    }
    EXPECT_EQ(served, kViewers);

    WsClient pub;
    ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/spread"));
    std::atomic<bool> done{false};
    std::thread scraper([&] {  // scrapes read every viewer's series meanwhile
      while (!done.load()) (void)testing::http_get(port, "/metrics");
    });
    std::vector<std::thread> readers;
    readers.reserve(kViewers);
    std::vector<int> in_order(kViewers, 0);
    for (int v = 0; v < kViewers; ++v) {
      readers.emplace_back([&, v] {
        for (int i = 0; i < kFrames; ++i) {
          bool text = true;
          std::string bytes;
          if (viewers[v]->read(text, bytes) || text) return;
          if (index_of(bytes) != static_cast<std::uint64_t>(i)) return;
          if (bytes.substr(16) != std::string(100 + i % 900, char('a' + i % 26))) return;
          in_order[v] = i + 1;
        }
      });
    }
    for (int i = 0; i < kFrames; ++i)
      pub.send_binary(frame(i, 1, std::string(100 + i % 900, char('a' + i % 26))));
    for (auto& r : readers) r.join();
    for (int v = 0; v < kViewers; ++v) EXPECT_EQ(in_order[v], kFrames) << "viewer " << v;

    // Leave while the scrapes go on: the even ones close, the odd ones vanish.
    for (int v = 0; v < kViewers; ++v) {
      if (v % 2 == 0) {
        viewers[v]->s.close(websocket::close_code::normal);
      } else {
        boost::system::error_code ec;
        viewers[v]->s.next_layer().close(ec);
      }
    }
    EXPECT_TRUE(testing::wait_for_sessions(port, 1));  // the publisher
    done = true;
    scraper.join();
    const std::string metrics = testing::http_get(port, "/metrics").second;
    EXPECT_EQ(metrics.find("subscriber=\"v"), std::string::npos) << metrics;
    for (unsigned t = 0; t < threads; ++t) {
      const std::string name = t == 0 ? "sluice-io" : "sluice-io-" + std::to_string(t);
      EXPECT_EQ(testing::metric(port, "sluice_io_thread_viewers", "\"" + name + "\""), 0) << name;
    }
    pub.s.close(websocket::close_code::normal);
  }
}

TEST(RelayWs, ALappedViewerGetsGapEventsBeforeItsNextFrame) {
  RelayConfig c = loopback();
  c.defaults.mode = TopicMode::realtime;
  c.defaults.depth = 2;
  // The viewer reads nothing until everything is sent; on a slow machine (sanitizers) that
  // takes long enough to be disconnected as a slow consumer, which is not what this tests.
  c.send_timeout = 60s;
  testing::RelayScene relay(c);
  WsClient viewer;
  ASSERT_FALSE(viewer.connect(relay.http_port(), "/v1/ws/subscribe/camera?name=late"));
  WsClient pub;
  ASSERT_FALSE(pub.connect(relay.http_port(), "/v1/ws/publish/camera"));
  constexpr int kFrames = 2000;  // 32 MiB: more than the socket buffers hold
  const std::string payload(std::size_t{16} * 1024, 'f');
  for (int i = 0; i < kFrames; ++i) pub.send_binary(frame(i, 0, payload));
  std::uint64_t got = 0;
  std::uint64_t lost = 0;
  std::uint64_t last = 0;
  while (got + lost < kFrames) {
    bool text = false;
    std::string bytes;
    ASSERT_FALSE(viewer.read(text, bytes));
    if (text) {
      const auto j = nlohmann::json::parse(bytes);
      ASSERT_TRUE(j.contains("gap")) << bytes;
      EXPECT_EQ(j["reason"], "slow_consumer");
      lost += j["gap"].get<std::uint64_t>();
    } else {
      ++got;
      last = index_of(bytes);
    }
  }
  EXPECT_EQ(got + lost, static_cast<std::uint64_t>(kFrames));
  EXPECT_GT(lost, 0U);
  EXPECT_EQ(last, static_cast<std::uint64_t>(kFrames - 1));
}

TEST(RelayWs, BadFramesGetTheirErrorAndOthersAreUntouched) {
  RelayConfig c = loopback();
  c.max_frame_bytes = 1024;
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  WsClient viewer;
  ASSERT_FALSE(viewer.connect(port, "/v1/ws/subscribe/t?name=v"));

  WsClient chatty;  // text that is not JSON, a frame shorter than the header: error events
  ASSERT_FALSE(chatty.connect(port, "/v1/ws/publish/t"));
  chatty.send_text("not json {");
  chatty.send_binary("short");
  bool text = false;
  std::string bytes;
  ASSERT_FALSE(chatty.read(text, bytes));
  EXPECT_TRUE(text);
  EXPECT_NE(bytes.find("invalid JSON"), std::string::npos) << bytes;
  ASSERT_FALSE(chatty.read(text, bytes));
  EXPECT_NE(bytes.find("16-byte header"), std::string::npos) << bytes;
  chatty.send_binary(frame(1, 0, "still fine"));  // the session goes on

  WsClient big;  // over the frame limit: closed with 1009
  ASSERT_FALSE(big.connect(port, "/v1/ws/publish/t"));
  big.send_binary(frame(2, 0, std::string(4096, 'x')));
  const auto ec = big.read(text, bytes);
  // The close frame arrived (its code is kept); answering it may find the socket already
  // gone (broken pipe, not connected), which is fine.
  EXPECT_TRUE(ec) << "the oversized frame's connection stayed open";
  EXPECT_EQ(big.s.reason().code, websocket::close_code::too_big) << ec.message();

  // A frame header alone that declares more than the limit: closed with 1009 as the header
  // arrives, without waiting for a payload byte (nor for the idle timeout).
  WsClient header_only;
  ASSERT_FALSE(header_only.connect(port, "/v1/ws/publish/t"));
  const std::array<unsigned char, 14> head{0x82, 0xFF, 0, 0, 0, 0, 0, 0x10, 0, 0,  // 1 MiB
                                           1,    2,    3, 4};                      // mask
  boost::asio::write(header_only.s.next_layer(), boost::asio::buffer(head));
  {
    Watchdog watchdog(header_only, 10s);
    const auto header_ec = header_only.read(text, bytes);
    EXPECT_TRUE(header_ec);
    EXPECT_EQ(header_only.s.reason().code, websocket::close_code::too_big) << header_ec.message();
  }
  EXPECT_GE(relay.metric("sluice_ws_closes_total", "code=\"1009\""), 2);

  ASSERT_FALSE(viewer.read(text, bytes));  // the viewer saw the good frame, nothing else
  EXPECT_FALSE(text);
  EXPECT_EQ(bytes.substr(16), "still fine");
}

// Control events are never dropped: a publisher that keeps sending bad text frames and reads
// none of the error events gets each of them, in order, up to the point where 64 wait unread
// in its outgoing queue; then the relay closes it with 1008 naming why. Others are untouched.
TEST(RelayWs, APublisherLeavingItsEventsUnreadIsClosedNoEventIsDropped) {
  RelayConfig c = loopback();
  c.handshake_timeout = 60s;  // the close waits while this test reads every event (sanitizers)
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  WsClient viewer;
  ASSERT_FALSE(viewer.connect(port, "/v1/ws/subscribe/t?name=v"));
  WsClient deaf;
  deaf.s.next_layer().open(boost::asio::ip::tcp::v4());
  deaf.s.next_layer().set_option(boost::asio::socket_base::receive_buffer_size(4096));
  ASSERT_FALSE(deaf.connect(port, "/v1/ws/publish/t"));
  // Each unknown event is answered with an error quoting its first 100 characters. Sent until
  // the relay says (in /metrics) that it closed a session with 1008: by then more events were
  // due than the socket buffers hold, the queue filled, and the relay stopped reading.
  const std::string pad(80, 'p');
  int sent = 0;
  bool closed = false;
  bool done = false;  // (outlives the write left pending)
  std::string event;
  while (!closed && sent < 200000) {
    event = R"({"n":)" + std::to_string(sent) + R"(,"pad":")" + pad + R"("})";
    deaf.s.text(true);
    done = false;
    deaf.s.async_write(boost::asio::buffer(event),
                       [&](boost::beast::error_code, std::size_t) { done = true; });
    for (;;) {  // until the write completes, or the relay has closed us
      deaf.io.restart();
      deaf.io.run_for(100ms);
      if (done) break;
      if (testing::metric(port, "sluice_ws_closes_total", "code=\"1008\"") >= 1) {
        closed = true;
        break;
      }
    }
    sent += done ? 1 : 0;
  }
  ASSERT_TRUE(closed) << "the relay read 200000 events' worth without closing";
  // Now read: every event, in order, then the close (the write left pending fails later).
  int next = 0;
  boost::beast::flat_buffer b;
  std::function<void(boost::beast::error_code, std::size_t)> on_read =
      [&](boost::beast::error_code ec, std::size_t) {
        if (ec) return;
        const auto error =
            nlohmann::json::parse(boost::beast::buffers_to_string(b.data())).value("error", "");
        b.clear();
        if (error.find("{\"n\":" + std::to_string(next) + ",") == std::string::npos) {
          ADD_FAILURE() << "expected the error for event " << next << ", got " << error;
          return;
        }
        ++next;
        deaf.s.async_read(b, on_read);
      };
  deaf.s.async_read(b, on_read);
  deaf.io.restart();
  deaf.io.run_for(30s);
  EXPECT_EQ(deaf.s.reason().code, websocket::close_code::policy_error);
  EXPECT_EQ(std::string(deaf.s.reason().reason.c_str()),
            "64 control events unread: the peer is not reading its socket");
  EXPECT_GT(next, 64);
  EXPECT_LT(next, sent);

  WsClient pub;  // the topic and its viewer are fine
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/t"));
  pub.send_binary(frame(7, 0, "after"));
  bool text = true;
  std::string bytes;
  ASSERT_FALSE(viewer.read(text, bytes));
  EXPECT_EQ(bytes.substr(16), "after");
}

// Silent peers do not hold connections: a TCP client that sends nothing, or half a request,
// is closed after handshake_timeout; a WebSocket peer that answers no ping is closed after
// idle_timeout; one that reads (and so answers pings) stays, however quiet the topic.
TEST(RelayWs, SilentClientsAreClosedAfterTheTimeoutsAQuietReaderStays) {
  RelayConfig c = loopback();
  c.handshake_timeout = 300ms;
  c.idle_timeout = 600ms;
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  const boost::asio::ip::tcp::endpoint at(boost::asio::ip::make_address("127.0.0.1"), port);

  // Closed by the relay: a read on the client's side ends (within 10 s, or the test fails).
  auto closed_by_relay = [](boost::asio::io_context& io, auto& stream) {
    bool ended = false;
    auto buffer = std::make_shared<std::array<char, 4096>>();
    std::function<void(boost::beast::error_code, std::size_t)> on_read =
        [&](boost::beast::error_code ec, std::size_t) {
          if (ec) {
            ended = true;
            return;
          }
          stream.async_read_some(boost::asio::buffer(*buffer), on_read);
        };
    stream.async_read_some(boost::asio::buffer(*buffer), on_read);
    io.restart();
    io.run_for(10s);
    return ended;
  };
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket mute(io);
  mute.connect(at);
  EXPECT_TRUE(closed_by_relay(io, mute)) << "a client that sent nothing";
  boost::asio::ip::tcp::socket slow(io);
  slow.connect(at);
  boost::asio::write(slow, boost::asio::buffer(std::string("GET /metrics HTTP/1.1\r\n")));
  EXPECT_TRUE(closed_by_relay(io, slow)) << "a client that sent half a request";

  WsClient deaf;  // never reads: answers no ping
  ASSERT_FALSE(deaf.connect(port, "/v1/ws/subscribe/quiet?name=deaf"));
  WsClient reader;  // reads all along on a topic where nothing is published
  ASSERT_FALSE(reader.connect(port, "/v1/ws/subscribe/quiet?name=reader"));
  boost::beast::flat_buffer got;
  bool read_done = false;
  boost::beast::error_code read_ec;
  reader.s.async_read(got, [&](boost::beast::error_code ec, std::size_t) {
    read_done = true;
    read_ec = ec;
  });
  reader.io.run_for(1500ms);  // 2.5 idle timeouts: pings come and are answered
  EXPECT_FALSE(read_done) << read_ec.message();

  bool text = false;
  std::string bytes;
  EXPECT_TRUE(deaf.read(text, bytes)) << "the deaf viewer is still connected: " << bytes;

  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/quiet"));
  pub.send_binary(frame(1, 0, "at last"));
  reader.io.restart();
  reader.io.run_for(10s);
  ASSERT_TRUE(read_done);
  ASSERT_FALSE(read_ec) << read_ec.message();
  EXPECT_EQ(boost::beast::buffers_to_string(got.data()).substr(16), "at last");
}

// A publisher that vanishes in the middle of a frame (its header announced 1000 bytes, 10
// came): its session ends and frees its slot; the topic and its viewer carry on.
TEST(RelayWs, APublisherVanishingMidFrameHarmsNoOne) {
  RelayConfig c = loopback();
  c.max_sessions = 3;
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  WsClient viewer;
  ASSERT_FALSE(viewer.connect(port, "/v1/ws/subscribe/t?name=v"));
  {
    WsClient gone;
    ASSERT_FALSE(gone.connect(port, "/v1/ws/publish/t"));
    // FIN + binary; masked, 16-bit length 1000; the mask; 10 bytes of the 1000.
    const unsigned char partial[] = {0x82, 0x80 | 126, 0x03, 0xE8, 1,   2,   3,   4,   'a',
                                     'b',  'c',        'd',  'e',  'f', 'g', 'h', 'i', 'j'};
    boost::asio::write(gone.s.next_layer(), boost::asio::buffer(partial));
    gone.s.next_layer().close();
  }
  // Its slot comes back (the relay notices on its own thread): two more publishers fit
  // beside the viewer.
  ASSERT_TRUE(testing::wait_for_sessions(port, 1));
  WsClient a;
  WsClient b;
  ASSERT_FALSE(a.connect(port, "/v1/ws/publish/t"));
  ASSERT_FALSE(b.connect(port, "/v1/ws/publish/t"));
  b.send_binary(frame(2, 0, "intact"));
  bool text = true;
  std::string bytes;
  ASSERT_FALSE(viewer.read(text, bytes));
  EXPECT_FALSE(text);
  EXPECT_EQ(bytes.substr(16), "intact");
}

TEST(RelayWs, RefusalsAreHttpErrorsBeforeTheUpgrade) {
  RelayConfig c = loopback();
  c.auto_create = false;
  c.max_subscribers = 1;
  TopicConfig known;
  known.name = "known";
  c.topics.push_back(known);
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  {
    WsClient unknown;
    EXPECT_EQ(unknown.connect(port, "/v1/ws/subscribe/nowhere"),
              websocket::error::upgrade_declined);
    EXPECT_EQ(unknown.http_status, 404U);
    EXPECT_NE(unknown.http_body.find("auto_create"), std::string::npos) << unknown.http_body;
  }
  {
    WsClient bad;
    EXPECT_EQ(bad.connect(port, "/v1/ws/publish/bad%20name"), websocket::error::upgrade_declined);
    EXPECT_EQ(bad.http_status, 400U);
  }
  {
    WsClient nowhere;
    EXPECT_EQ(nowhere.connect(port, "/v1/ws/elsewhere"), websocket::error::upgrade_declined);
    EXPECT_EQ(nowhere.http_status, 404U);
  }
  WsClient first;
  ASSERT_FALSE(first.connect(port, "/v1/ws/subscribe/known?name=only"));
  WsClient second;
  EXPECT_EQ(second.connect(port, "/v1/ws/subscribe/known"), websocket::error::upgrade_declined);
  EXPECT_EQ(second.http_status, 503U);
  EXPECT_NE(second.http_body.find("SLUICE_MAX_SUBSCRIBERS"), std::string::npos) << second.http_body;
  first.s.close(websocket::close_code::normal);
}

// The bytes waiting in the kernel to be sent on the relay's socket of the connection whose
// relay end is `relay_port` and whose client end is local port `peer_port` (/proc/net/tcp's
// tx_queue); -1 if there is no such connection.
long kernel_unsent_bytes(std::uint16_t relay_port, std::uint16_t peer_port) {
  std::ifstream tcp("/proc/net/tcp");
  std::string line;
  std::getline(tcp, line);  // the header
  while (std::getline(tcp, line)) {
    std::istringstream in(line);
    std::string slot;
    std::string local;
    std::string remote;
    std::string state;
    std::string queues;
    in >> slot >> local >> remote >> state >> queues;
    const auto port_of = [](const std::string& address) {
      return static_cast<std::uint16_t>(
          std::stoul(address.substr(address.find(':') + 1), nullptr, 16));
    };
    if (port_of(local) == relay_port && port_of(remote) == peer_port)
      return std::stol(queues.substr(0, queues.find(':')), nullptr, 16);
  }
  return -1;
}

// limits.viewer_send_buffer_bytes bounds what waits in the relay's kernel for a viewer that
// does not read: with 64 KiB (the kernel doubles it), a viewer that stopped reading holds at
// most a few hundred KiB there while 16 MiB are published (without the bound, 2.9 MB were
// measured), /metrics shows it (sluice_subscriber_unsent_bytes), and a fast viewer still gets
// every 256 KiB frame whole through a buffer smaller than one frame.
TEST(RelayWs, AViewersSendBufferBoundsWhatWaitsInTheKernelForIt) {
  RelayConfig c = loopback();
  c.viewer_send_buffer_bytes = 64 * 1024;
  c.defaults.mode = TopicMode::realtime;  // the stuck viewer loses frames, the publisher goes on
  c.defaults.depth = 8;
  c.max_send_timeouts = 1000;  // (the stuck viewer stays connected while it is measured)
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  WsClient stuck;
  stuck.s.next_layer().open(boost::asio::ip::tcp::v4());
  stuck.s.next_layer().set_option(boost::asio::socket_base::receive_buffer_size(4096));
  ASSERT_FALSE(stuck.connect(port, "/v1/ws/subscribe/feed?name=stuck"));
  const std::uint16_t stuck_port = stuck.s.next_layer().local_endpoint().port();
  WsClient fast;
  ASSERT_FALSE(fast.connect(port, "/v1/ws/subscribe/feed?name=fast&depth=8"));
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/feed"));
  constexpr int kFrames = 64;  // 16 MiB
  long most = 0;
  for (int i = 0; i < kFrames; ++i) {
    std::string payload(256 * 1024, static_cast<char>('a' + i % 26));
    pub.send_binary(frame(i, 0, payload));
    bool text = true;
    std::string bytes;
    ASSERT_FALSE(fast.read(text, bytes));  // one at a time: the fast viewer loses nothing
    ASSERT_FALSE(text) << bytes;
    ASSERT_EQ(index_of(bytes), static_cast<std::uint64_t>(i));
    ASSERT_EQ(bytes.substr(16), payload);
    most = std::max(most, kernel_unsent_bytes(port, stuck_port));
  }
  EXPECT_GT(most, 0) << "the stuck viewer's connection was not found in /proc/net/tcp";
  EXPECT_LE(most, 3 * 64 * 1024) << "bytes waiting in the kernel for the stuck viewer";
  // /metrics shows it too (sampled at each send timeout while the viewer's send waits).
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  double unsent = 0;
  while ((unsent = testing::metric(port, "sluice_subscriber_unsent_bytes",
                                   "subscriber=\"stuck\"")) <= 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_GT(unsent, 0.0) << "sluice_subscriber_unsent_bytes of the stuck viewer";
  EXPECT_LE(unsent, 3.0 * 64 * 1024);
  EXPECT_GE(testing::metric(port, "sluice_subscriber_unsent_bytes", "subscriber=\"fast\""), 0.0);
  // The stats say the same per subscriber, with the judge's verdict on its sends: late once 5 of
  // its last 20 sends timed out (it stays: max_send_timeouts is high here).
  nlohmann::json stats;
  const auto stuck_late = [&stats] {
    for (const auto& sub : stats["topics"][0]["subscribers"]) {
      if (sub["name"] == "stuck") return sub.value("sends", "") == "late";
    }
    return false;
  };
  do {
    stats = nlohmann::json::parse(testing::http_get(port, "/v1/stats").second);
  } while (!stuck_late() && std::chrono::steady_clock::now() < deadline + 10s &&
           (std::this_thread::sleep_for(20ms), true));
  const auto& subs = stats["topics"][0]["subscribers"];
  ASSERT_EQ(subs.size(), 2U);
  for (const auto& sub : subs) {
    ASSERT_TRUE(sub.contains("kernel_unsent_bytes")) << sub.dump();
    if (sub["name"] == "stuck") {
      EXPECT_GT(sub["kernel_unsent_bytes"].get<double>(), 0.0) << sub.dump();
      EXPECT_LE(sub["kernel_unsent_bytes"].get<double>(), 3.0 * 64 * 1024);
      EXPECT_EQ(sub["sends"], "late") << sub.dump();
    } else {
      // A reader is never judged stalled (it may be late for a moment on a slow build, as
      // under ThreadSanitizer: the verdict is taken at whatever instant the stats are read).
      EXPECT_NE(sub["sends"], "stalled") << sub.dump();
      EXPECT_GT(sub["received"].get<double>(), 0.0) << sub.dump();
    }
  }
  pub.s.close(websocket::close_code::normal);
  fast.s.close(websocket::close_code::normal);
}

// A viewer of a real-time topic that stops reading is disconnected once nothing has reached it
// for max_send_timeouts send timeouts, with close code 4008 and a reason naming both settings;
// the publisher and the other viewer (its depth holds the whole burst) carry on and lose
// nothing. (A lossless topic's stuck viewer holds its producer back instead:
// subscriber_judgement_test.cpp.)
TEST(RelayWs, AViewerThatStopsReadingIsDisconnectedAndOthersCarryOn) {
  RelayConfig c = loopback();
  c.send_timeout = 100ms;  // the stuck viewer goes after 0.5 s; the fast one has margin
  c.max_send_timeouts = 5;
  TopicConfig feed;
  feed.name = "feed";
  feed.mode = TopicMode::realtime;
  feed.depth = 1024;  // (the fast viewer is never lapped by the 400 frames)
  c.topics.push_back(feed);
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  WsClient fast;
  ASSERT_FALSE(fast.connect(port, "/v1/ws/subscribe/feed?name=fast&depth=1024"));
  // A small receive buffer: the relay's writes to the stuck viewer soon wait, however large
  // the kernel would let an unread socket's buffer grow (tcp_rmem; 32 MiB on recent kernels).
  WsClient stuck;
  stuck.s.next_layer().open(boost::asio::ip::tcp::v4());
  stuck.s.next_layer().set_option(boost::asio::socket_base::receive_buffer_size(4096));
  ASSERT_FALSE(stuck.connect(port, "/v1/ws/subscribe/feed?name=stuck"));
  constexpr int kFrames = 400;  // 25 MiB
  std::atomic<int> fast_got{0};
  std::thread fast_reader([&] {
    for (int i = 0; i < kFrames; ++i) {
      bool text = false;
      std::string bytes;
      ASSERT_FALSE(fast.read(text, bytes));
      if (text) {  // nothing but frames for a fast viewer that is never lapped
        ADD_FAILURE() << bytes;
        return;
      }
      ASSERT_EQ(index_of(bytes), static_cast<std::uint64_t>(i));
      ++fast_got;
    }
  });
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/feed"));
  std::thread publisher([&] {
    const std::string payload(std::size_t{64} * 1024, 'p');
    for (int i = 0; i < kFrames; ++i) pub.send_binary(frame(i, 0, payload));
  });
  // The stuck viewer reads nothing until the relay says (in /metrics) that it closed a session
  // with 4008; on a slow machine (sanitizers) that can take a while, but not forever.
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  while (testing::metric(port, "sluice_ws_closes_total", "code=\"4008\"") < 1) {
    if (std::chrono::steady_clock::now() > give_up) {
      ADD_FAILURE() << "the stuck viewer was not disconnected within 60 s";
      stuck.s.next_layer().shutdown(boost::asio::socket_base::shutdown_both);  // (ends the reads)
      break;
    }
    std::this_thread::sleep_for(20ms);
  }
  int stuck_got = 0;
  boost::beast::error_code ec;
  std::atomic<bool> read_all{false};
  std::thread watchdog([&] {  // a relay that never closes it fails the test, not hangs it
    for (int i = 0; i < 3000 && !read_all.load(); ++i) std::this_thread::sleep_for(20ms);
    if (!read_all.load()) stuck.s.next_layer().shutdown(boost::asio::socket_base::shutdown_both);
  });
  for (;;) {
    bool text = false;
    std::string bytes;
    ec = stuck.read(text, bytes);
    if (ec) break;
    stuck_got += text ? 0 : 1;
  }
  read_all = true;
  watchdog.join();
  EXPECT_EQ(ec, websocket::error::closed) << ec.message();
  EXPECT_EQ(static_cast<int>(stuck.s.reason().code), 4008);
  EXPECT_EQ(std::string(stuck.s.reason().reason.c_str()),
            "slow consumer: no progress in 5 x 100 ms (limits.max_send_timeouts, "
            "limits.send_timeout_ms)");
  EXPECT_LT(stuck_got, kFrames);
  publisher.join();
  fast_reader.join();
  EXPECT_EQ(fast_got.load(), kFrames);
}

// A publisher whose frame waits max_wait_ms on a full lossless topic: the topic_full refusal,
// as WebSocket says it (an error event with the whole message and the frame's index, then
// 1013 naming the setting), counted like a gRPC one in /metrics and /v1/stats.
TEST(RelayWs, AFrameThatWaitsPastMaxWaitIsRefusedWith1013AndCounted) {
  RelayConfig c = loopback();
  c.defaults.max_queue_bytes = 64 * 1024;
  c.defaults.max_wait = 300ms;
  c.send_timeout = 30s;  // the stuck subscriber is not judged within this test
  // Its frames wait in the topic, not in kernel buffers (which would take 192 KiB at once).
  c.viewer_send_buffer_bytes = 4096;
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  WsClient stuck;  // reads nothing
  ASSERT_FALSE(connect_unread(stuck, port, "/v1/ws/subscribe/full?name=stuck"));
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/full"));
  Watchdog watchdog(pub, 30s);  // a relay that never refuses fails the test, not the run
  const std::string payload(std::size_t{16} * 1024, 'x');
  for (int i = 0; i < 12; ++i) pub.send_binary(frame(i, 0, payload));  // 192 KiB > budget
  std::vector<nlohmann::json> events;
  for (;;) {
    bool text = false;
    std::string bytes;
    if (pub.read(text, bytes)) break;  // the close
    ASSERT_TRUE(text);
    events.push_back(nlohmann::json::parse(bytes));
  }
  ASSERT_GE(events.size(), 2U);
  EXPECT_EQ(events.front().value("warning", ""), "slow_down");
  const auto& error = events.back();
  EXPECT_NE(error.value("error", "").find("topic 'full' is full"), std::string::npos) << error;
  EXPECT_TRUE(error.contains("frame_index")) << error;
  EXPECT_EQ(static_cast<int>(pub.s.reason().code), 1013);
  EXPECT_EQ(std::string(pub.s.reason().reason.c_str()),
            "topic full past max_wait_ms (SLUICE_MAX_WAIT_MS)");
  EXPECT_EQ(relay.metric("sluice_topic_publish_timeouts_total", "topic=\"full\""), 1.0);
  EXPECT_NE(relay.stats_json().find("\"timeouts\": 1"), std::string::npos) << relay.stats_json();
}

// Names are the clients' own and show as labels: raw bytes that are not UTF-8 (%FF%FE) and a
// name longer than 128 bytes of two-byte characters reach /metrics as valid UTF-8, cut on a
// character boundary; every line of /metrics stays valid for a scraper. (The same over gRPC:
// RelayGrpc.HostileNamesLeaveMetricsValidUtf8.)
TEST(RelayWs, HostileNamesLeaveMetricsValidUtf8) {
  testing::RelayScene relay;
  const auto port = relay.http_port();
  std::string long_name;
  for (int i = 0; i < 100; ++i) long_name += "%C3%A9";  // "é" x 100: 200 bytes
  WsClient raw;
  ASSERT_FALSE(raw.connect(port, "/v1/ws/subscribe/t?name=bad%FF%FEname"));
  WsClient longer;
  ASSERT_FALSE(longer.connect(port, "/v1/ws/subscribe/t?name=" + long_name));
  ASSERT_TRUE(testing::wait_for_sessions(port, 2));
  const std::string text = testing::http_get(port, "/metrics").second;
  EXPECT_EQ(metrics::valid_utf8(text), text);
  EXPECT_NE(text.find("subscriber=\"bad\xEF\xBF\xBD\xEF\xBF\xBDname\""), std::string::npos);
  std::string kept;  // 64 x "é": 128 bytes, whole characters
  for (int i = 0; i < 64; ++i) kept += "\xC3\xA9";
  EXPECT_NE(text.find("subscriber=\"" + kept + "\""), std::string::npos);
  EXPECT_EQ(text.find(kept + "\xC3"), std::string::npos);  // no half character after the cut
}

// A topic holds a frame only while a subscriber still needs it (what sluice_topic_retained_bytes
// shows): 32 frames of 256 KiB to a topic with no subscriber leave nothing held (their memory
// goes back to the frame pool at once), and with a subscriber that has read them all, nothing
// either; one that has read half holds the rest.
TEST(RelayWs, ATopicHoldsOnlyWhatASubscriberStillNeeds) {
  testing::RelayScene relay;
  const auto port = relay.http_port();
  const std::string payload(std::size_t{256} * 1024, 'f');
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/cam"));
  for (int i = 0; i < 32; ++i) pub.send_binary(frame(i, 0, payload));
  const auto published = [&](double n) {
    for (int i = 0; i < 500; ++i) {
      if (relay.metric("sluice_topic_published_total", "topic=\"cam\"") == n) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  };
  ASSERT_TRUE(published(32));
  EXPECT_EQ(relay.metric("sluice_topic_retained_bytes", "topic=\"cam\""), 0.0);
  EXPECT_GE(relay.metric("sluice_frame_pool_spare_bytes"), 256.0 * 1024);  // freed, pooled
  WsClient viewer;
  ASSERT_FALSE(viewer.connect(port, "/v1/ws/subscribe/cam?name=v"));
  ASSERT_TRUE(testing::wait_for_sessions(port, 2));
  for (int i = 32; i < 64; ++i) pub.send_binary(frame(i, 0, payload));
  for (int i = 32; i < 64; ++i) {
    bool text = false;
    std::string bytes;
    ASSERT_FALSE(viewer.read(text, bytes));
    ASSERT_EQ(index_of(bytes), static_cast<std::uint64_t>(i));
  }
  // The viewer has every frame; the relay lets go of each once it is written to the viewer.
  bool released = false;
  for (int i = 0; i < 500 && !released; ++i) {
    released = relay.metric("sluice_topic_retained_bytes", "topic=\"cam\"") == 0.0;
    if (!released) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(released);
  EXPECT_NE(relay.stats_json().find("\"retained_bytes\": 0"), std::string::npos);
}

// A lossless topic's item limit is a setting (max_queue_items), and when it is the one that
// binds, the producer is told so: small frames fill 8 items long before 100 MiB, and slow_down
// and the timeout name max_queue_items, not the byte budget.
TEST(RelayWs, WhenTheItemLimitBindsTheEventsNameIt) {
  RelayConfig c = loopback();
  c.defaults.max_queue_items = 8;
  c.defaults.max_wait = 300ms;
  c.send_timeout = 30s;
  c.viewer_send_buffer_bytes = 4096;
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  WsClient stuck;  // reads nothing
  ASSERT_FALSE(connect_unread(stuck, port, "/v1/ws/subscribe/small?name=stuck"));
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/small"));
  Watchdog watchdog(pub, 30s);
  const std::string payload(std::size_t{16} * 1024, 'x');  // 24 x 16 KiB: far under 100 MiB
  for (int i = 0; i < 24; ++i) pub.send_binary(frame(i, 0, payload));
  std::vector<nlohmann::json> events;
  for (;;) {
    bool text = false;
    std::string bytes;
    if (pub.read(text, bytes)) break;
    events.push_back(nlohmann::json::parse(bytes));
  }
  ASSERT_GE(events.size(), 2U);
  EXPECT_EQ(events.front().value("limit", ""), "max_queue_items") << events.front();
  const std::string error = events.back().value("error", "");
  EXPECT_NE(error.find("of max_queue_items 8"), std::string::npos) << error;
  EXPECT_NE(error.find("SLUICE_MAX_QUEUE_ITEMS"), std::string::npos) << error;
  EXPECT_NE(relay.stats_json().find("\"max_queue_items\": 8"), std::string::npos);
}

// A viewer that comes back gives the topic's epoch and the position it had reached (the
// upgrade's Sluice-Epoch and Sluice-Position, plus what it received): on a topic that retains
// items it continues there, with nothing lost or repeated; what is no longer retained is one
// gap (retention); another run of the topic is a gap of unknown size (relay_restart).
TEST(RelayWs, AViewerThatComesBackResumesWhereItWasOrIsToldWhatItMissed) {
  RelayConfig c = loopback();
  c.defaults.retain_items = 8;
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  WsClient first;
  ASSERT_FALSE(first.connect(port, "/v1/ws/subscribe/cam?name=v"));
  const std::string epoch(first.response["Sluice-Epoch"]);
  ASSERT_EQ(epoch.size(), 16U);
  ASSERT_EQ(first.response["Sluice-Position"], "0");
  WsClient pub;
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/cam"));
  const auto publish = [&](int from, int to) {
    for (int i = from; i < to; ++i) pub.send_binary(frame(i, 0, "frame " + std::to_string(i)));
    for (int i = 0; i < 500; ++i) {
      if (relay.metric("sluice_topic_published_total", "topic=\"cam\"") == to) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  };
  const auto read_frame = [](WsClient& viewer) -> std::pair<bool, std::string> {
    bool text = false;
    std::string bytes;
    EXPECT_FALSE(viewer.read(text, bytes));
    return {text, bytes};
  };
  ASSERT_TRUE(publish(0, 5));
  for (int i = 0; i < 3; ++i) ASSERT_EQ(index_of(read_frame(first).second), std::uint64_t(i));
  first.s.close(websocket::close_code::normal);  // gone, having received 0..2: position 3
  ASSERT_TRUE(publish(5, 9));

  WsClient back;  // exact: 3..8 are all retained (8 items)
  ASSERT_FALSE(back.connect(port, "/v1/ws/subscribe/cam?name=v&epoch=" + epoch + "&from=3"));
  EXPECT_EQ(back.response["Sluice-Position"], "3");
  for (int i = 3; i < 9; ++i) {
    const auto [text, bytes] = read_frame(back);
    ASSERT_FALSE(text) << bytes;
    ASSERT_EQ(index_of(bytes), std::uint64_t(i));
  }
  back.s.close(websocket::close_code::normal);
  ASSERT_TRUE(publish(9, 20));  // retained now: 12..19

  WsClient late;  // from 9: 9..11 are gone
  ASSERT_FALSE(late.connect(port, "/v1/ws/subscribe/cam?name=v&epoch=" + epoch + "&from=9"));
  EXPECT_EQ(late.response["Sluice-Position"], "9");  // the gap's 3 items, then 12
  const auto [gap_text, gap] = read_frame(late);
  ASSERT_TRUE(gap_text);
  EXPECT_EQ(nlohmann::json::parse(gap), (nlohmann::json{{"gap", 3}, {"reason", "retention"}}));
  for (int i = 12; i < 20; ++i) ASSERT_EQ(index_of(read_frame(late).second), std::uint64_t(i));

  WsClient other;  // an epoch of another run: after a gap, the oldest retained item
  ASSERT_FALSE(other.connect(port, "/v1/ws/subscribe/cam?name=v&epoch=0123456789abcdef&from=3"));
  EXPECT_EQ(other.response["Sluice-Position"], "12");
  ASSERT_TRUE(testing::wait_for_sessions(port, 3));
  ASSERT_TRUE(publish(20, 21));
  const auto [restart_text, restart] = read_frame(other);
  ASSERT_TRUE(restart_text);
  EXPECT_EQ(nlohmann::json::parse(restart),
            (nlohmann::json{{"gap", 0}, {"reason", "relay_restart"}}));
  for (int i = 12; i < 21; ++i) ASSERT_EQ(index_of(read_frame(other).second), std::uint64_t(i));

  EXPECT_EQ(relay.metric("sluice_subscriber_resumes_total", "outcome=\"exact\""), 1.0);
  EXPECT_EQ(relay.metric("sluice_subscriber_resumes_total", "outcome=\"retention\""), 1.0);
  EXPECT_EQ(relay.metric("sluice_subscriber_resumes_total", "outcome=\"relay_restart\""), 1.0);
  // What it retains stays within retain_items.
  EXPECT_EQ(relay.metric("sluice_topic_retained_bytes", "topic=\"cam\""),
            double(8 * (6 + 2)));  // "frame 13" .. "frame 20": 8 items of 8 bytes

  WsClient bad;
  EXPECT_TRUE(bad.connect(port, "/v1/ws/subscribe/cam?epoch=" + epoch + "&from=x"));
  EXPECT_EQ(bad.http_status, 400U);
  EXPECT_NE(bad.http_body.find("'from'"), std::string::npos) << bad.http_body;
}

}  // namespace
}  // namespace sluice

// The C++ client (Publisher, Subscriber) against the real relay on 127.0.0.1, ephemeral ports.
#include "sluice/client/client.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "loopback.hpp"
#include "relay_scene.hpp"
#include "sluice/relay/server.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using client::Publisher;
using client::PublisherEvent;
using client::PublisherOptions;
using client::Subscriber;
using client::SubscriberEvent;
using client::SubscriberOptions;

constexpr int kResourceExhausted = 8;
constexpr int kNotFound = 5;

// The relay on loopback (see relay_scene.hpp).
using Relay = testing::RelayScene;

PublisherOptions pub_options(const Relay& relay, const std::string& topic) {
  PublisherOptions o;
  o.target = relay.target;
  o.topic = topic;
  return o;
}

SubscriberOptions sub_options(const Relay& relay, const std::string& topic,
                              const std::string& name) {
  SubscriberOptions o;
  o.target = relay.target;
  o.topic = topic;
  o.name = name;
  return o;
}

// Records publisher events from the reader thread.
struct EventLog {
  std::mutex mu;
  std::vector<PublisherEvent> events;
  std::function<void(const PublisherEvent&)> callback() {
    return [this](const PublisherEvent& e) {
      std::lock_guard lock(mu);
      events.push_back(e);
    };
  }
  int count(PublisherEvent::Kind kind) {
    std::lock_guard lock(mu);
    int n = 0;
    for (const auto& e : events) n += e.kind == kind;
    return n;
  }
};

TEST(Client, PublisherToSubscriberEveryItemOnceInOrderWithItsStamp) {
  Relay relay(RelayConfig{});
  Subscriber sub(sub_options(relay, "telemetry", "dash"));
  EventLog log;
  Publisher pub(pub_options(relay, "telemetry"), log.callback());
  constexpr int kItems = 500;
  for (int i = 0; i < kItems; ++i) {
    ASSERT_TRUE(pub.publish(Buffer(std::to_string(i)), 1000 + i).ok());
  }
  ASSERT_TRUE(pub.close().ok());
  EXPECT_EQ(pub.unacknowledged(), 0U);
  EXPECT_EQ(pub.stats().acked, static_cast<std::uint64_t>(kItems));
  EXPECT_GE(log.count(PublisherEvent::Kind::ack), 1);
  for (int i = 0; i < kItems; ++i) {
    SubscriberEvent e;
    ASSERT_TRUE(sub.next(e));
    ASSERT_EQ(e.kind, SubscriberEvent::Kind::item);
    EXPECT_EQ(e.sequence, static_cast<std::uint64_t>(i));
    EXPECT_EQ(e.payload.view(), std::to_string(i));
    EXPECT_EQ(e.timestamp_ns, 1000 + i);
  }
  EXPECT_EQ(sub.stats().items, static_cast<std::uint64_t>(kItems));
  sub.cancel();
  SubscriberEvent e;
  EXPECT_FALSE(sub.next(e));
  EXPECT_EQ(sub.finish().code, 1);  // CANCELLED
}

// Payloads on both sides of the size from which the gRPC path sends references instead of
// copies (4 KiB), and of gRPC's 64 KiB receive pieces, in batches and alone, each byte checked:
// the bytes that arrive are the bytes published. The publisher's Buffers are dropped as soon as
// publish() returns (the write holds its own reference).
TEST(Client, PayloadsOfEverySizeArriveByteForByte) {
  Relay relay(RelayConfig{});
  Subscriber sub(sub_options(relay, "sizes", "checker"));
  Publisher pub(pub_options(relay, "sizes"));
  const std::vector<std::size_t> sizes{0,     1,     16,    4095,    4096,    4097,
                                       65535, 65536, 65537, 100'000, 1 << 20, 3'000'001};
  const auto pattern = [](std::size_t size, std::size_t salt) {
    std::string bytes(size, '\0');
    for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>((i * 31 + salt) & 0xff);
    return bytes;
  };
  for (int round = 0; round < 3; ++round) {
    for (std::size_t k = 0; k < sizes.size(); ++k)
      ASSERT_TRUE(pub.publish(Buffer(pattern(sizes[k], k + round))).ok());
  }
  ASSERT_TRUE(pub.close().ok());
  for (int round = 0; round < 3; ++round) {
    for (std::size_t k = 0; k < sizes.size(); ++k) {
      SubscriberEvent e;
      ASSERT_TRUE(sub.next(e));
      ASSERT_EQ(e.kind, SubscriberEvent::Kind::item);
      ASSERT_EQ(e.payload.size(), sizes[k]);
      EXPECT_TRUE(e.payload.view() == pattern(sizes[k], k + round)) << sizes[k];
    }
  }
  sub.cancel();
}

// A subscriber that stops reading for longer than max_wait: the relay ends the producer's call
// with RESOURCE_EXHAUSTED; the Publisher backs off, reopens and resends exactly what the topic
// lacked. The subscriber then sees every item exactly once, in order.
TEST(Client, PublisherRetriesAfterResourceExhaustedWithoutLossOrDuplicates) {
  RelayConfig c;
  c.defaults.max_queue_bytes = 64 * 1024;
  c.defaults.max_wait = 300ms;
  c.send_timeout = 1s;  // a subscriber paused 1.5 s is late, not stalled (that takes 10 s here)
  Relay relay(c);
  Subscriber sub(sub_options(relay, "logs", "late"));
  constexpr int kItems = 3000;  // 48 MiB: more than the transport buffers absorb
  constexpr std::size_t kBytes = 16 * 1024;
  EventLog log;
  PublisherOptions o = pub_options(relay, "logs");
  o.window_bytes = 1 << 20;
  o.initial_backoff = 100ms;
  o.max_backoff = 400ms;
  o.max_retries = 20;
  Publisher pub(o, log.callback());
  client::Status result;
  std::thread producer([&] {
    for (int i = 0; i < kItems && result.ok(); ++i) {
      result = pub.publish(Buffer(std::string(kBytes, static_cast<char>('a' + i % 26))));
    }
    if (result.ok()) result = pub.close();
  });
  std::this_thread::sleep_for(1500ms);  // stalled: the topic stays full past max_wait
  for (int i = 0; i < kItems; ++i) {
    SubscriberEvent e;
    ASSERT_TRUE(sub.next(e));
    ASSERT_EQ(e.kind, SubscriberEvent::Kind::item);
    ASSERT_EQ(e.sequence, static_cast<std::uint64_t>(i));  // none lost, none twice
    ASSERT_EQ(e.payload.size(), kBytes);
    ASSERT_EQ(e.payload.view()[0], static_cast<char>('a' + i % 26));
  }
  producer.join();
  EXPECT_TRUE(result.ok()) << result.to_string();
  const auto stats = pub.stats();
  EXPECT_EQ(stats.acked, static_cast<std::uint64_t>(kItems));
  EXPECT_GE(stats.retries, 1U);
  EXPECT_EQ(static_cast<std::uint64_t>(log.count(PublisherEvent::Kind::retrying)), stats.retries);
  EXPECT_GE(stats.slow_downs, 1U);
  sub.cancel();
}

TEST(Client, PublisherGivesUpAfterMaxRetriesWithTheRelaysMessage) {
  RelayConfig c;
  c.defaults.max_queue_bytes = 64 * 1024;
  c.defaults.max_wait = 200ms;
  c.send_timeout = 10s;  // the stuck subscriber stays stuck: it is not judged within the test
  Relay relay(c);
  Subscriber stuck(sub_options(relay, "logs", "stuck"));  // never reads
  PublisherOptions o = pub_options(relay, "logs");
  o.window_bytes = 1 << 20;
  o.initial_backoff = 50ms;
  o.max_retries = 1;
  EventLog log;
  Publisher pub(o, log.callback());
  client::Status result;
  for (int i = 0; i < 8000 && result.ok(); ++i) {
    result = pub.publish(Buffer(std::string(16 * 1024, 'x')));
  }
  if (result.ok()) result = pub.close();
  EXPECT_EQ(result.code, kResourceExhausted) << result.to_string();
  EXPECT_NE(result.message.find("SLUICE_MAX_QUEUE_BYTES"), std::string::npos) << result.message;
  EXPECT_EQ(log.count(PublisherEvent::Kind::retrying), 1);
  EXPECT_GT(pub.unacknowledged(), 0U);  // reported, not silently lost
  EXPECT_EQ(pub.publish(Buffer(std::string("later"))).code, kResourceExhausted);  // sticky
  stuck.cancel();
}

// A relay never reached (nothing listens at the target) is an error at once, naming the
// address and what it should be, with no retries: the backoff is for a relay that went away.
TEST(Client, ARelayNeverReachedFailsFastNamingTheAddress) {
  std::uint16_t unused = 0;
  {  // (a port nothing listens on: bound, then closed)
    boost::asio::io_context io;
    boost::asio::ip::tcp::acceptor a(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
    unused = a.local_endpoint().port();
  }
  const std::string target = "127.0.0.1:" + std::to_string(unused);
  PublisherOptions po;
  po.target = target;
  po.topic = "nowhere";
  Publisher pub(po);
  (void)pub.publish(Buffer::copy("x"));
  const auto closed = pub.close();
  EXPECT_EQ(closed.code, 14) << closed.to_string();  // UNAVAILABLE
  EXPECT_NE(closed.message.find("cannot reach the relay at " + target), std::string::npos)
      << closed.message;
  EXPECT_EQ(pub.stats().retries, 0U);
  SubscriberOptions so;
  so.target = target;
  so.topic = "nowhere";
  so.reconnect = true;
  Subscriber sub(so);
  EXPECT_FALSE(sub.subscribed());
  SubscriberEvent e;
  EXPECT_FALSE(sub.next(e));
  const auto ended = sub.finish();
  EXPECT_EQ(ended.code, 14) << ended.to_string();
  EXPECT_NE(ended.message.find("cannot reach the relay at " + target), std::string::npos)
      << ended.message;
  EXPECT_EQ(sub.stats().reconnects, 0U);
}

TEST(Client, SubscriberSeesGapNoticesOnARealtimeTopic) {
  RelayConfig c;
  c.defaults.mode = TopicMode::realtime;
  c.defaults.depth = 2;
  Relay relay(c);
  Subscriber sub(sub_options(relay, "camera", "viewer"));
  constexpr int kFrames = 2000;
  {
    Publisher pub(pub_options(relay, "camera"));
    for (int i = 0; i < kFrames; ++i)
      ASSERT_TRUE(pub.publish(Buffer(std::string(16 * 1024, 'f'))).ok());
    ASSERT_TRUE(pub.close().ok());
  }
  std::uint64_t got = 0;
  std::uint64_t lost = 0;
  std::uint64_t last = 0;
  std::thread stopper;
  const auto status = sub.run(
      [&](SubscriberEvent& e) {
        ++got;
        last = e.sequence;
        if (got + lost == kFrames) sub.cancel();
      },
      [&](std::uint64_t n, const std::string& reason) {
        lost += n;
        EXPECT_EQ(reason, "slow_consumer");
        if (got + lost == kFrames) sub.cancel();
      });
  EXPECT_EQ(got + lost, static_cast<std::uint64_t>(kFrames));
  EXPECT_GT(lost, 0U);
  EXPECT_EQ(last, static_cast<std::uint64_t>(kFrames - 1));
  EXPECT_EQ(sub.stats().lost, lost);
  EXPECT_EQ(status.code, 1);  // ended by cancel()
}

TEST(Client, RefusalsArriveAsStatusesNamingTheProblem) {
  RelayConfig c;
  c.auto_create = false;
  Relay relay(c);
  Subscriber sub(sub_options(relay, "nowhere", "s"));
  SubscriberEvent e;
  EXPECT_FALSE(sub.next(e));
  EXPECT_EQ(sub.finish().code, kNotFound);

  Publisher pub(pub_options(relay, "nowhere"));
  client::Status st = pub.publish(Buffer(std::string("x")));
  if (st.ok()) st = pub.close();
  EXPECT_EQ(st.code, kNotFound) << st.to_string();
  EXPECT_NE(st.message.find("auto_create"), std::string::npos);

  Publisher nobody([] {
    PublisherOptions o;
    o.target = "127.0.0.1:1";  // nothing listens there
    o.topic = "t";
    o.max_retries = 2;  // (a relay that went away is retried; one never reached is not)
    o.initial_backoff = 10ms;
    return o;
  }());
  st = nobody.publish(Buffer(std::string("x")));
  if (st.ok()) st = nobody.close();
  EXPECT_EQ(st.code, 14) << st.to_string();  // UNAVAILABLE, at once
  EXPECT_EQ(nobody.stats().retries, 0U);
}

}  // namespace
// Items just under 1 MiB followed by items at the frame limit: the Publisher never puts a
// large item into a batch that already holds a megabyte (the batch would be over what the relay
// accepts in one message), so every item arrives.
TEST(Client, ABatchNeverGrowsPastWhatTheRelayAccepts) {
  RelayConfig c;
  c.max_frame_bytes = 5u << 20;
  Relay relay(c);
  Subscriber sub(sub_options(relay, "big", "s"));
  PublisherOptions o = pub_options(relay, "big");
  o.window_bytes = 64u << 20;
  Publisher pub(o);
  constexpr int kPairs = 6;
  for (int i = 0; i < kPairs; ++i) {
    ASSERT_TRUE(pub.publish(Buffer(std::string((1u << 20) - 1, 'a'))).ok());
    ASSERT_TRUE(pub.publish(Buffer(std::string(5u << 20, 'b'))).ok());
  }
  const auto closed = pub.close();
  EXPECT_TRUE(closed.ok()) << closed.to_string();
  for (int i = 0; i < 2 * kPairs; ++i) {
    SubscriberEvent e;
    ASSERT_TRUE(sub.next(e));
    ASSERT_EQ(e.sequence, static_cast<std::uint64_t>(i));
    EXPECT_EQ(e.payload.size(), i % 2 == 0 ? (1u << 20) - 1 : 5u << 20);
  }
  sub.cancel();
}

// The relay restarts under load: the Publisher reconnects and resends what it has no ack for,
// the Subscriber reconnects and resumes — a relay_restart gap (its position belonged to the
// old run), then from the oldest item the new run retains: every item once, in order.
TEST(Client, PublisherAndSubscriberRideOutARelayRestart) {
  RelayConfig c = testing::loopback();
  c.defaults.retain_items = 1024;
  auto first = std::make_unique<RelayServer>(c);
  first->start();
  const std::string target = "127.0.0.1:" + std::to_string(first->grpc_port());
  PublisherOptions po;
  po.target = target;
  po.topic = "restart";
  po.initial_backoff = 50ms;
  po.max_backoff = 200ms;
  po.max_retries = 100;
  Publisher pub(po);
  SubscriberOptions so;
  so.target = target;
  so.topic = "restart";
  so.name = "viewer";
  so.reconnect = true;
  so.reconnect_for = 20s;
  Subscriber sub(so);
  constexpr std::uint64_t kItems = 400;
  std::vector<std::uint64_t> got;
  std::vector<std::string> gaps;
  std::thread reader([&] {
    for (SubscriberEvent e; got.size() < kItems && sub.next(e);) {
      if (e.kind == SubscriberEvent::Kind::item) {
        got.push_back(e.sequence);
      } else {
        gaps.push_back(e.reason + ":" + std::to_string(e.lost));
      }
    }
  });
  for (std::uint64_t i = 0; i < kItems / 2; ++i)
    ASSERT_TRUE(pub.publish(Buffer("item " + std::to_string(i))).ok());
  while (pub.stats().acked < kItems / 2) std::this_thread::sleep_for(5ms);
  while (sub.stats().items < kItems / 2) std::this_thread::sleep_for(5ms);

  first->shutdown();  // calls end; both clients retry against the port
  first.reset();
  for (std::uint64_t i = kItems / 2; i < kItems; ++i)
    ASSERT_TRUE(pub.publish(Buffer("item " + std::to_string(i))).ok());  // (queued: unacked)
  std::this_thread::sleep_for(300ms);                                    // (a few failed attempts)
  RelayConfig again = c;
  again.grpc_port = static_cast<std::uint16_t>(std::stoi(target.substr(target.rfind(':') + 1)));
  RelayServer second(again);
  second.start();
  EXPECT_TRUE(pub.close().ok());
  reader.join();

  ASSERT_EQ(got.size(), kItems);
  for (std::uint64_t i = 0; i < kItems; ++i) ASSERT_EQ(got[i], i) << "every item once, in order";
  EXPECT_EQ(gaps, std::vector<std::string>{"relay_restart:0"});
  // At least once: a slow machine may still reach the stopping relay first (it resumes there
  // exactly, without a gap) before the new one.
  EXPECT_GE(sub.stats().reconnects, 1U);
  EXPECT_GE(pub.stats().retries, 1U);
  EXPECT_EQ(pub.stats().acked, kItems);
  sub.cancel();
}

// Without the relay coming back, a reconnecting Subscriber gives up after reconnect_for and
// says so (a supervisor can tell it from a normal end).
TEST(Client, ASubscriberWhoseRelayDoesNotComeBackEndsUnavailable) {
  auto relay = std::make_unique<Relay>();
  SubscriberOptions so = sub_options(*relay, "gone", "viewer");
  so.reconnect = true;
  so.reconnect_for = 500ms;
  Subscriber sub(so);
  relay.reset();
  SubscriberEvent e;
  EXPECT_FALSE(sub.next(e));
  const auto status = sub.finish();
  EXPECT_EQ(status.code, 14) << status.to_string();  // UNAVAILABLE
  EXPECT_NE(status.message.find("reconnect_for"), std::string::npos) << status.message;
}

}  // namespace sluice

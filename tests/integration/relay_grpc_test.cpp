// The relay on 127.0.0.1 with an ephemeral port, driven by real gRPC clients.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "loopback.hpp"
#include "relay_scene.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay/server.hpp"
#include "sluice/v1/relay.grpc.pb.h"

namespace sluice {
namespace {

using namespace std::chrono_literals;
namespace v1 = ::sluice::v1;

using testing::http_get;
using testing::loopback;

// The relay on loopback with a gRPC stub (see relay_scene.hpp).
using Relay = testing::RelayScene;

v1::PublishRequest item(const std::string& topic, std::uint64_t seq, std::string payload) {
  v1::PublishRequest r;
  r.mutable_item()->set_topic(topic);
  r.mutable_item()->set_sequence(seq);
  r.mutable_item()->set_payload(std::move(payload));
  return r;
}

// Ends a Publish call: WritesDone, read every event, Finish. Returns the status and what the
// events said (acks are cumulative and coalesced).
struct Ended {
  grpc::Status status;
  int acks = 0;
  std::int64_t last_ack = -1;
  int slow_downs = 0;
  int resumes = 0;
  std::vector<v1::PublishEvent::EventCase> order;  // slow_down / resume, as they came
};
template <class Stream>
Ended end_publish(Stream& stream) {
  stream->WritesDone();
  Ended e;
  for (v1::PublishEvent event; stream->Read(&event);) {
    if (event.has_ack()) {
      ++e.acks;
      e.last_ack = static_cast<std::int64_t>(event.ack().sequence());
    } else if (event.has_slow_down() || event.has_resume()) {
      e.slow_downs += event.has_slow_down();
      e.resumes += event.has_resume();
      e.order.push_back(event.event_case());
    }
  }
  e.status = stream->Finish();
  return e;
}

// Publishes one item on a new call, retrying while the relay refuses for the session limit
// (a session's slot frees once its call is done, a moment after the client saw it end).
Ended publish_when_a_slot_is_free(Relay& relay, const std::string& topic, std::string payload) {
  Ended ended;
  for (int attempt = 0; attempt < 200; ++attempt) {
    grpc::ClientContext ctx;
    auto stream = relay.stub->Publish(&ctx);
    stream->Write(item(topic, 1, payload));
    ended = end_publish(stream);
    if (ended.status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    std::this_thread::sleep_for(5ms);
  }
  return ended;
}

// Opens a subscription and waits until the relay has registered it.
std::unique_ptr<grpc::ClientReader<v1::SubscribeEvent>> subscribe(Relay& relay,
                                                                  grpc::ClientContext& ctx,
                                                                  const std::string& topic,
                                                                  const std::string& name) {
  v1::SubscribeRequest req;
  req.set_topic(topic);
  req.set_name(name);
  auto reader = relay.stub->Subscribe(&ctx, req);
  for (int i = 0;
       i < 500 && relay.server.stats_json().find("\"" + name + "\"") == std::string::npos; ++i) {
    std::this_thread::sleep_for(2ms);
  }
  return reader;
}

// Items of a batch not handed out yet, per reader (by address: forget_reader() before a
// reader whose batch was not read to its end goes, or a later one at its address gets them).
std::map<const void*, std::vector<v1::SubscribeEvent>>& pending_by_reader() {
  static thread_local std::map<const void*, std::vector<v1::SubscribeEvent>> pending;
  return pending;
}
template <class Reader>
void forget_reader(Reader& reader) {
  pending_by_reader().erase(reader.get());
}

// Reads one item or gap notice, taking batches apart (the relay batches what queued up).
template <class Reader>
bool read_event(Reader& reader, v1::SubscribeEvent& out) {
  auto& pending = pending_by_reader()[reader.get()];
  if (pending.empty()) {
    v1::SubscribeEvent e;
    if (!reader->Read(&e)) return false;
    if (!e.has_batch()) {
      out = std::move(e);
      return true;
    }
    for (auto it = e.batch().items().rbegin(); it != e.batch().items().rend(); ++it) {
      v1::SubscribeEvent one;
      *one.mutable_item() = *it;
      pending.push_back(std::move(one));
    }
  }
  out = std::move(pending.back());
  pending.pop_back();
  return true;
}

TEST(RelayGrpc, LosslessTopicDeliversEveryItemInOrder) {
  Relay relay(loopback());
  grpc::ClientContext sub_ctx;
  auto reader = subscribe(relay, sub_ctx, "telemetry", "dashboard");

  grpc::ClientContext pub_ctx;
  auto stream = relay.stub->Publish(&pub_ctx);
  constexpr int kItems = 200;
  for (int i = 0; i < kItems; ++i) {
    ASSERT_TRUE(stream->Write(item(i == 0 ? "telemetry" : "", i, "payload-" + std::to_string(i))));
  }
  const Ended ended = end_publish(stream);
  EXPECT_TRUE(ended.status.ok());
  EXPECT_GE(ended.acks, 1);  // coalesced while a write is in flight
  EXPECT_LE(ended.acks, kItems);
  EXPECT_EQ(ended.last_ack, kItems - 1);  // cumulative: everything is in the topic

  for (int i = 0; i < kItems; ++i) {
    v1::SubscribeEvent e;
    ASSERT_TRUE(read_event(reader, e));
    ASSERT_TRUE(e.has_item());
    EXPECT_EQ(e.item().sequence(), static_cast<std::uint64_t>(i));
    EXPECT_EQ(e.item().payload(), "payload-" + std::to_string(i));
    EXPECT_EQ(e.item().topic(), "telemetry");
  }
  sub_ctx.TryCancel();
}

TEST(RelayGrpc, BatchedPublishRequestsArriveInOrderAndCarryOneTopic) {
  Relay relay(loopback());
  grpc::ClientContext sub_ctx;
  auto reader = subscribe(relay, sub_ctx, "batched", "reader");
  grpc::ClientContext pub_ctx;
  auto stream = relay.stub->Publish(&pub_ctx);
  for (int b = 0; b < 10; ++b) {  // 10 batches of 10
    v1::PublishRequest req;
    for (int i = 0; i < 10; ++i) {
      auto* it = req.add_items();
      if (b == 0 && i == 0) it->set_topic("batched");
      it->set_sequence(static_cast<std::uint64_t>(b * 10 + i));
      it->set_payload("payload-" + std::to_string(b * 10 + i));
    }
    ASSERT_TRUE(stream->Write(req));
  }
  const Ended ended = end_publish(stream);
  EXPECT_TRUE(ended.status.ok()) << ended.status.error_message();
  EXPECT_EQ(ended.last_ack, 99);
  for (int i = 0; i < 100; ++i) {
    v1::SubscribeEvent e;
    ASSERT_TRUE(read_event(reader, e));
    ASSERT_EQ(e.item().sequence(), static_cast<std::uint64_t>(i));
    EXPECT_EQ(e.item().payload(), "payload-" + std::to_string(i));
  }
  sub_ctx.TryCancel();

  // A batch naming another topic mid-way is refused with INVALID_ARGUMENT.
  grpc::ClientContext bad_ctx;
  auto bad = relay.stub->Publish(&bad_ctx);
  v1::PublishRequest req;
  req.add_items()->set_topic("one");
  req.add_items()->set_topic("two");
  bad->Write(req);
  const auto status = end_publish(bad).status;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("one topic"), std::string::npos) << status.error_message();
}

TEST(RelayGrpc, StuckConsumerTurnsIntoResourceExhaustedNamingTheSetting) {
  RelayConfig c = loopback();
  c.defaults.max_queue_bytes = 64 * 1024;
  c.defaults.max_wait = 300ms;
  Relay relay(c);
  grpc::ClientContext sub_ctx;
  auto reader = subscribe(relay, sub_ctx, "logs", "stuck");  // never reads

  grpc::ClientContext pub_ctx;
  auto stream = relay.stub->Publish(&pub_ctx);
  const auto start = std::chrono::steady_clock::now();
  // More than gRPC's transport buffers (both directions) can absorb: the relay must stop.
  int written = 0;
  for (int i = 0; i < 8000; ++i, ++written) {
    if (!stream->Write(item("logs", i, std::string(16 * 1024, 'x')))) break;
  }
  EXPECT_LT(written, 8000);
  const grpc::Status status = end_publish(stream).status;
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_NE(status.error_message().find("topic 'logs'"), std::string::npos);
  EXPECT_NE(status.error_message().find("SLUICE_MAX_QUEUE_BYTES"), std::string::npos);
  EXPECT_LT(waited, 300ms + 1s);
  // Counted, in /metrics and in the stats.
  EXPECT_EQ(relay.metric("sluice_topic_publish_timeouts_total", "topic=\"logs\""), 1.0);
  EXPECT_NE(relay.stats_json().find("\"timeouts\": 1"), std::string::npos) << relay.stats_json();
  sub_ctx.TryCancel();
}

// R4 of BENCHMARKS.md as a test: a producer much faster than the only consumer on a lossless
// topic. Nothing is lost (sequence numbers), the producer is slowed to the consumer's pace, and
// the topic's queue bytes, sampled through Stats, never exceed the budget plus one item. Prints
// how many bytes gRPC's transport buffers held on top of the budget.
TEST(RelayGrpc, FastProducerSlowConsumerNoLossWithinBudget) {
  RelayConfig c = loopback();
  c.defaults.max_queue_bytes = 256 * 1024;
  c.defaults.max_wait = 10s;
  Relay relay(c);
  constexpr int kItems = 1500;  // 24 MiB, well past what the transport buffers absorb
  constexpr std::size_t kItemBytes = 16 * 1024;
  grpc::ClientContext sub_ctx;
  auto reader = subscribe(relay, sub_ctx, "r4", "slow");

  std::atomic<bool> done{false};
  std::atomic<std::uint64_t> worst{0};
  std::atomic<int> samples{0};
  std::thread sampler([&] {
    while (!done) {
      grpc::ClientContext ctx;
      v1::StatsReply reply;
      if (relay.stub->Stats(&ctx, v1::StatsRequest{}, &reply).ok()) {
        const auto& j = reply.json();
        const auto at = j.find("\"queue_bytes\": ");
        if (at != std::string::npos) {
          const std::uint64_t qb = std::stoull(j.substr(at + 15));
          if (qb > worst) worst = qb;
          ++samples;
        }
      }
      std::this_thread::sleep_for(5ms);
    }
  });
  std::atomic<int> received{0};
  std::thread consumer([&] {
    for (int i = 0; i < kItems; ++i) {
      v1::SubscribeEvent e;
      ASSERT_TRUE(read_event(reader, e));
      ASSERT_TRUE(e.has_item());
      ASSERT_EQ(e.item().sequence(), static_cast<std::uint64_t>(i));  // none lost, in order
      ++received;
      std::this_thread::sleep_for(1ms);  // the slow consumer: ~16 MB/s
    }
  });
  grpc::ClientContext pub_ctx;
  auto stream = relay.stub->Publish(&pub_ctx);
  std::uint64_t max_ahead = 0;  // items the producer had written beyond what the consumer had
  for (int i = 0; i < kItems; ++i) {
    ASSERT_TRUE(stream->Write(item("r4", i, std::string(kItemBytes, 'r'))));
    max_ahead = std::max<std::uint64_t>(max_ahead, static_cast<std::uint64_t>(i + 1 - received));
  }
  const Ended ended = end_publish(stream);
  EXPECT_TRUE(ended.status.ok());
  consumer.join();
  done = true;
  sampler.join();
  EXPECT_EQ(received.load(), kItems);
  EXPECT_EQ(ended.last_ack, kItems - 1);
  // The producer was told when throttling started; each slow_down is followed by a resume or
  // is the last flow event, never two in a row.
  EXPECT_GE(ended.slow_downs, 1);
  for (std::size_t i = 0; i < ended.order.size(); ++i) {
    const auto want = i % 2 == 0 ? v1::PublishEvent::kSlowDown : v1::PublishEvent::kResume;
    EXPECT_EQ(ended.order[i], want) << "flow event " << i;
  }
  EXPECT_GT(samples.load(), 0);
  EXPECT_LE(worst.load(), c.defaults.max_queue_bytes + kItemBytes);
  const std::uint64_t ahead_bytes = max_ahead * kItemBytes;
  std::printf(
      "R4: topic budget %llu B, worst sampled queue %llu B; producer at most %llu B "
      "ahead of the consumer: gRPC transport buffers held ~%lld B beyond the budget\n",
      static_cast<unsigned long long>(c.defaults.max_queue_bytes),
      static_cast<unsigned long long>(worst.load()), static_cast<unsigned long long>(ahead_bytes),
      static_cast<long long>(ahead_bytes) - static_cast<long long>(c.defaults.max_queue_bytes));
  // The producer was held back at budget + transport buffers, not let run to the end.
  EXPECT_LT(max_ahead, static_cast<std::uint64_t>(kItems) * 3 / 4);
  sub_ctx.TryCancel();
}

TEST(RelayGrpc, UnknownTopicWithAutoCreateOffIsNotFound) {
  RelayConfig c = loopback();
  c.auto_create = false;
  Relay relay(c);
  grpc::ClientContext ctx;
  v1::SubscribeRequest req;
  req.set_topic("nowhere");
  auto reader = relay.stub->Subscribe(&ctx, req);
  v1::SubscribeEvent e;
  EXPECT_FALSE(reader->Read(&e));
  const auto status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(status.error_message().find("auto_create"), std::string::npos);
}

TEST(RelayGrpc, MalformedTopicAndOversizedItemAreRefusedWithoutHarmingOthers) {
  RelayConfig c = loopback();
  c.max_frame_bytes = 1024;
  Relay relay(c);
  {
    grpc::ClientContext ctx;
    auto stream = relay.stub->Publish(&ctx);
    stream->Write(item("bad topic!", 1, "x"));
    const auto status = end_publish(stream).status;
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("topic name"), std::string::npos);
  }
  {
    grpc::ClientContext ctx;
    auto stream = relay.stub->Publish(&ctx);
    stream->Write(item("frames", 1, std::string(2048, 'x')));
    const auto status = end_publish(stream).status;
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("STREAM_MAX_FRAME_SIZE_MB"), std::string::npos);
  }
  // Another producer on another topic is unaffected.
  grpc::ClientContext ctx;
  auto stream = relay.stub->Publish(&ctx);
  EXPECT_TRUE(stream->Write(item("fine", 1, "ok")));
  const Ended ended = end_publish(stream);
  EXPECT_TRUE(ended.status.ok());
  EXPECT_EQ(ended.acks, 1);
  EXPECT_EQ(ended.last_ack, 1);
}

TEST(RelayGrpc, RealtimeTopicSendsGapNoticesToASlowSubscriber) {
  RelayConfig c = loopback();
  c.defaults.mode = TopicMode::realtime;
  c.defaults.depth = 2;
  Relay relay(c);
  grpc::ClientContext sub_ctx;
  auto reader = subscribe(relay, sub_ctx, "camera", "viewer");
  grpc::ClientContext pub_ctx;
  auto stream = relay.stub->Publish(&pub_ctx);
  // 32 MiB: more than the transport buffers between relay and subscriber can hold.
  constexpr int kFrames = 2000;
  for (int i = 0; i < kFrames; ++i) {
    ASSERT_TRUE(stream->Write(item("camera", i, std::string(16 * 1024, 'f'))));
  }
  EXPECT_TRUE(end_publish(stream).status.ok());
  // The subscriber had not read: it gets gap notices (counted) and ends with the newest frame.
  std::uint64_t lost = 0;
  std::uint64_t got = 0;
  std::uint64_t last = 0;
  while (got + lost < kFrames) {
    v1::SubscribeEvent e;
    ASSERT_TRUE(read_event(reader, e));
    if (e.has_gap()) {
      lost += e.gap().lost();
      EXPECT_EQ(e.gap().reason(), "slow_consumer");
    } else {
      ++got;
      last = e.item().sequence();
    }
  }
  EXPECT_EQ(got + lost, static_cast<std::uint64_t>(kFrames));
  EXPECT_GT(lost, 0U);
  EXPECT_EQ(last, static_cast<std::uint64_t>(kFrames - 1));
  sub_ctx.TryCancel();
}

// Each role has its own limit: publishers STREAM_MAX_SESSIONS, subscribers
// SLUICE_MAX_SUBSCRIBERS, and each client address SLUICE_MAX_SESSIONS_PER_CLIENT. A session over
// a limit is refused with a message naming its setting; the others keep working, and a freed
// slot serves the next one.
TEST(RelayGrpc, SessionsOverTheLimitAreRefusedAndOthersKeepWorking) {
  RelayConfig c = loopback();
  c.max_sessions = 1;
  c.max_subscribers = 2;
  Relay relay(c);
  grpc::ClientContext a_ctx;
  auto a = subscribe(relay, a_ctx, "t", "a");
  grpc::ClientContext b_ctx;
  auto b = subscribe(relay, b_ctx, "t", "b");
  {  // a third subscriber is refused, naming its limit
    grpc::ClientContext sub_ctx;
    v1::SubscribeRequest req;
    req.set_topic("t");
    auto reader = relay.stub->Subscribe(&sub_ctx, req);
    v1::SubscribeEvent e;
    EXPECT_FALSE(reader->Read(&e));
    const auto status = reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_NE(status.error_message().find("SLUICE_MAX_SUBSCRIBERS"), std::string::npos)
        << status.error_message();
  }
  {  // a publisher is not: its limit is its own; a second one while it is open is refused
    grpc::ClientContext first_ctx;
    auto first = relay.stub->Publish(&first_ctx);
    ASSERT_TRUE(first->Write(item("t", 0, "first")));
    v1::SubscribeEvent e;
    ASSERT_TRUE(read_event(a, e));  // (the first publisher's session is open by now)
    EXPECT_EQ(e.item().payload(), "first");
    grpc::ClientContext ctx;
    auto second = relay.stub->Publish(&ctx);
    const auto status = end_publish(second).status;
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_NE(status.error_message().find("STREAM_MAX_SESSIONS"), std::string::npos)
        << status.error_message();
    EXPECT_TRUE(end_publish(first).status.ok());
  }
  // The open subscriptions are unaffected; when one leaves, another subscriber gets its slot.
  b_ctx.TryCancel();
  v1::SubscribeEvent e;
  EXPECT_FALSE(b->Read(&e));
  b->Finish();
  ASSERT_TRUE(relay.wait_for_sessions(1));
  grpc::ClientContext c_ctx;
  auto again = subscribe(relay, c_ctx, "t", "again");
  const Ended ended = publish_when_a_slot_is_free(relay, "t", "hello");
  EXPECT_TRUE(ended.status.ok()) << ended.status.error_message();
  for (auto* reader : {&a, &again}) {
    ASSERT_TRUE(read_event(*reader, e));
    EXPECT_EQ(e.item().payload(), "hello");
  }
  EXPECT_EQ(relay.metric("sluice_sessions_refused_total", "limit=\"limits.max_subscribers\""), 1.0);
  EXPECT_GE(relay.metric("sluice_sessions_refused_total", "limit=\"limits.max_sessions\""), 1.0);
  a_ctx.TryCancel();
  c_ctx.TryCancel();
}

// One client address holds at most SLUICE_MAX_SESSIONS_PER_CLIENT sessions of any role.
TEST(RelayGrpc, OneClientAddressIsCappedWhateverTheRole) {
  RelayConfig c = loopback();
  c.max_sessions_per_client = 2;
  Relay relay(c);
  grpc::ClientContext a_ctx;
  auto a = subscribe(relay, a_ctx, "t", "a");
  grpc::ClientContext p_ctx;
  auto p = relay.stub->Publish(&p_ctx);
  ASSERT_TRUE(p->Write(item("t", 0, "x")));
  v1::SubscribeEvent e;
  ASSERT_TRUE(read_event(a, e));
  grpc::ClientContext ctx;
  v1::SubscribeRequest req;
  req.set_topic("t");
  auto third = relay.stub->Subscribe(&ctx, req);
  EXPECT_FALSE(third->Read(&e));
  const auto status = third->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(status.error_message().find("SLUICE_MAX_SESSIONS_PER_CLIENT"), std::string::npos)
      << status.error_message();
  EXPECT_NE(status.error_message().find("127.0.0.1"), std::string::npos) << status.error_message();
  EXPECT_TRUE(end_publish(p).status.ok());
  a_ctx.TryCancel();
}

// Clients that vanish mid-stream (a producer cancelling between writes, a producer cancelling
// while throttled, a subscriber cancelling with items in flight): their calls end, their
// sessions free up, nothing leaks (the suite runs under ASan), and another topic is unaffected.
TEST(RelayGrpc, ClientsCancellingMidStreamLeaveNoTraceAndHarmNoOne) {
  RelayConfig c = loopback();
  c.max_sessions = 3;
  c.defaults.max_queue_bytes = 64 * 1024;
  Relay relay(c);
  {
    grpc::ClientContext sub_ctx;
    auto reader = subscribe(relay, sub_ctx, "busy", "quitter");  // never reads
    grpc::ClientContext pub_ctx;
    auto stream = relay.stub->Publish(&pub_ctx);
    std::thread writer([&] {
      for (int i = 0; i < 4000; ++i) {  // blocks once the topic and the windows are full
        if (!stream->Write(item("busy", i, std::string(16 * 1024, 'b')))) break;
      }
    });
    std::this_thread::sleep_for(200ms);
    pub_ctx.TryCancel();  // the producer vanishes while throttled
    writer.join();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
    sub_ctx.TryCancel();  // the subscriber vanishes with items in flight
    v1::SubscribeEvent e;
    while (reader->Read(&e)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  // All three session slots are free again (the relay releases them as the calls finish, on
  // its own threads: wait for that, then use all three).
  ASSERT_TRUE(testing::wait_for_sessions(relay.server.http_port(), 0));
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::SubscribeEvent>>> readers;
  for (int i = 0; i < 2; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    std::string name = "s";  // (built so: GCC 12 -O2 warns falsely, -Wrestrict, on "s" + ...)
    name.append(std::to_string(i));
    readers.push_back(subscribe(relay, *ctxs.back(), "calm", name));
  }
  const Ended ended = publish_when_a_slot_is_free(relay, "calm", "still here");
  EXPECT_TRUE(ended.status.ok()) << ended.status.error_message();
  for (auto& r : readers) {
    v1::SubscribeEvent e;
    ASSERT_TRUE(read_event(r, e));
    EXPECT_EQ(e.item().payload(), "still here");
  }
  for (auto& ctx : ctxs) ctx->TryCancel();
}

TEST(RelayGrpc, DepthAboveTheTopicCapacityIsInvalidArgument) {
  RelayConfig c = loopback();
  c.defaults.mode = TopicMode::realtime;
  c.defaults.depth = 4;
  Relay relay(c);
  grpc::ClientContext ctx;
  v1::SubscribeRequest req;
  req.set_topic("cam");
  req.set_depth(1000000);
  auto reader = relay.stub->Subscribe(&ctx, req);
  v1::SubscribeEvent e;
  EXPECT_FALSE(reader->Read(&e));
  const auto status = reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("capacity"), std::string::npos) << status.error_message();
}

TEST(RelayHttp, PerSubscriberSeriesAppearWhileSubscribedAndGoWhenItLeaves) {
  Relay relay(loopback());
  auto sub_ctx = std::make_unique<grpc::ClientContext>();
  auto reader = subscribe(relay, *sub_ctx, "imu", "logger");
  grpc::ClientContext pub_ctx;
  auto stream = relay.stub->Publish(&pub_ctx);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(stream->Write(item("imu", i, "abc")));
  ASSERT_TRUE(end_publish(stream).status.ok());
  v1::SubscribeEvent e;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(read_event(reader, e));
  const auto port = relay.server.http_port();
  std::string metrics;
  for (int i = 0; i < 200; ++i) {  // the relay counts an item once its write completed
    metrics = http_get(port, "/metrics").second;
    if (metrics.find("sluice_subscriber_received_total{session=\"") != std::string::npos &&
        metrics.find("subscriber=\"logger\",topic=\"imu\"} 5") != std::string::npos)
      break;
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_NE(metrics.find("subscriber=\"logger\",topic=\"imu\"} 5"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("sluice_subscriber_lag_items{"), std::string::npos);
  EXPECT_NE(metrics.find("sluice_subscriber_dropped_total{reason=\"slow_consumer\""),
            std::string::npos);
  sub_ctx->TryCancel();
  EXPECT_FALSE(reader->Read(&e));
  reader->Finish();
  for (int i = 0; i < 200; ++i) {
    metrics = http_get(port, "/metrics").second;
    if (metrics.find("subscriber=\"logger\"") == std::string::npos) break;
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(metrics.find("subscriber=\"logger\""), std::string::npos) << metrics;
}

TEST(RelayHttp, MetricsHealthAndStatsOverHttp) {
  Relay relay(loopback());
  grpc::ClientContext pub_ctx;
  auto stream = relay.stub->Publish(&pub_ctx);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(stream->Write(item("cam.front", i, "x")));
  ASSERT_TRUE(end_publish(stream).status.ok());

  const auto port = relay.server.http_port();
  ASSERT_NE(port, 0);
  EXPECT_EQ(http_get(port, "/healthz"), (std::pair<unsigned, std::string>{200, "ok\n"}));
  const auto [status, metrics] = http_get(port, "/metrics");
  EXPECT_EQ(status, 200U);
  EXPECT_NE(metrics.find("sluice_topic_published_total{topic=\"cam.front\"} 3"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("# TYPE sluice_topic_queue_bytes gauge"), std::string::npos);
  const auto stats = http_get(port, "/v1/stats");
  EXPECT_EQ(stats.first, 200U);
  EXPECT_NE(stats.second.find("\"name\": \"cam.front\""), std::string::npos) << stats.second;
  EXPECT_EQ(http_get(port, "/nope").first, 404U);
}

TEST(RelayGrpc, ShutdownEndsSubscriberStreamsCleanly) {
  auto relay = std::make_unique<Relay>(loopback());
  grpc::ClientContext ctx;
  auto reader = subscribe(*relay, ctx, "t", "s");
  std::thread stopper([&] {
    std::this_thread::sleep_for(50ms);
    relay->server.shutdown();
  });
  v1::SubscribeEvent e;
  EXPECT_FALSE(reader->Read(&e));
  EXPECT_TRUE(reader->Finish().ok());
  stopper.join();
}

// A gRPC subscriber of a real-time topic that stops reading is judged as a WebSocket one is:
// once no write has completed for max_send_timeouts x send_timeout_ms it leaves the topic and
// its call ends with RESOURCE_EXHAUSTED naming the settings, delivered when it reads again. A
// subscriber that reads (its depth holds the burst) gets everything. (On a lossless topic it
// would hold the producer back instead: subscriber_judgement_test.cpp.)
TEST(RelayGrpc, AStalledSubscriberIsDisconnectedAndTheProducerCarriesOn) {
  RelayConfig c = loopback();
  c.send_timeout = 100ms;
  c.max_send_timeouts = 5;
  c.handshake_timeout = 60s;  // (the stalled call is cancelled only after this)
  c.defaults.mode = TopicMode::realtime;
  c.defaults.depth = 1024;  // (the fast one is never lapped by the 600 items)
  Relay relay(c);
  grpc::ClientContext stuck_ctx;
  auto stuck = subscribe(relay, stuck_ctx, "feed", "stuck");  // reads nothing for now
  grpc::ClientContext fast_ctx;
  auto fast = subscribe(relay, fast_ctx, "feed", "fast");
  constexpr int kItems = 600;  // 38 MiB: far more than gRPC's windows hold for the stuck one
  std::thread reader([&] {
    v1::SubscribeEvent e;
    for (int i = 0; i < kItems; ++i) {
      ASSERT_TRUE(read_event(fast, e));
      ASSERT_EQ(e.item().sequence(), static_cast<std::uint64_t>(i));
    }
  });
  grpc::ClientContext pub_ctx;
  auto stream = relay.stub->Publish(&pub_ctx);
  const std::string payload(std::size_t{64} * 1024, 'p');
  for (int i = 0; i < kItems; ++i) ASSERT_TRUE(stream->Write(item("feed", i, payload)));
  const Ended ended = end_publish(stream);
  EXPECT_TRUE(ended.status.ok()) << ended.status.error_message();
  reader.join();
  // (a real-time producer is never held back: the stuck one is judged after the burst)
  const auto give_up = std::chrono::steady_clock::now() + 60s;
  while (relay.metric("sluice_slow_viewers_total", "kind=\"stalled\"") < 1 &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_GE(relay.metric("sluice_slow_viewers_total", "kind=\"stalled\""), 1.0);
  // The stalled one reads again: what was in flight, then the status naming the settings.
  v1::SubscribeEvent e;
  while (stuck->Read(&e)) {
  }
  const auto status = stuck->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_NE(status.error_message().find("limits.max_send_timeouts"), std::string::npos)
      << status.error_message();
  fast_ctx.TryCancel();
}

// A second relay on a gRPC port in use fails at start, naming the setting and the OS's reason
// (gRPC's default SO_REUSEPORT would have let it share the port and split the clients).
TEST(RelayGrpc, APortInUseIsRefusedAtStartWithTheReason) {
  Relay first(loopback());
  RelayConfig c = loopback();
  c.grpc_port = first.grpc_port();
  RelayServer second(c);
  try {
    second.start();
    FAIL() << "a second relay started on port " << c.grpc_port;
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("server.grpc_port"), std::string::npos) << what;
    EXPECT_NE(what.find("in use"), std::string::npos) << what;
  }
}

// IPv6 loopback works as well as IPv4.
TEST(RelayGrpc, ServesOnIpv6Loopback) {
  RelayConfig c = loopback();
  c.host = "::1";
  RelayServer relay(c);
  relay.start();
  auto stub = v1::Relay::NewStub(grpc::CreateChannel("[::1]:" + std::to_string(relay.grpc_port()),
                                                     grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::StatsReply reply;
  EXPECT_TRUE(stub->Stats(&ctx, v1::StatsRequest{}, &reply).ok());
}

// What the HTTP port cannot read as a request gets a status and a one-line reason, then the
// connection closes: 400 (not HTTP), 414 (request line over 8 KiB), 431 (headers over 8 KiB).
TEST(RelayHttp, MalformedRequestsAreAnsweredWithTheirStatus) {
  Relay relay(loopback());
  const auto raw = [&](const std::string& request) {
    boost::asio::io_context io;
    boost::asio::ip::tcp::socket socket(io);
    socket.connect({boost::asio::ip::make_address("127.0.0.1"), relay.http_port()});
    boost::system::error_code ec;
    boost::asio::write(socket, boost::asio::buffer(request), ec);
    std::string answer;
    std::array<char, 4096> chunk{};
    for (;;) {
      const std::size_t n = socket.read_some(boost::asio::buffer(chunk), ec);
      answer.append(chunk.data(), n);
      if (ec) break;
    }
    return answer;
  };
  EXPECT_EQ(raw("GARBAGE\r\n\r\n").rfind("HTTP/1.1 400 ", 0), 0U);
  const std::string long_target = raw("GET /" + std::string(10000, 'a') + " HTTP/1.1\r\n\r\n");
  EXPECT_EQ(long_target.rfind("HTTP/1.1 414 ", 0), 0U) << long_target.substr(0, 80);
  EXPECT_NE(long_target.find("request line over 8 KiB"), std::string::npos);
  const std::string big_header =
      raw("GET / HTTP/1.1\r\nX-Big: " + std::string(10000, 'a') + "\r\n\r\n");
  EXPECT_EQ(big_header.rfind("HTTP/1.1 431 ", 0), 0U) << big_header.substr(0, 80);
  EXPECT_EQ(http_get(relay.http_port(), "/healthz").first, 200U);  // the port serves on
}

// A gRPC subscriber's name longer than 128 bytes of two-byte characters is cut on a character
// boundary; /metrics stays valid UTF-8.
TEST(RelayGrpc, HostileNamesLeaveMetricsValidUtf8) {
  Relay relay(loopback());
  std::string name;
  for (int i = 0; i < 100; ++i) name += "\xC3\xA9";  // "é" x 100: 200 bytes
  grpc::ClientContext ctx;
  auto reader = subscribe(relay, ctx, "t", name);
  const std::string text = http_get(relay.http_port(), "/metrics").second;
  EXPECT_EQ(metrics::valid_utf8(text), text);
  std::string kept;
  for (int i = 0; i < 64; ++i) kept += "\xC3\xA9";
  EXPECT_NE(text.find("subscriber=\"" + kept + "\""), std::string::npos);
  EXPECT_EQ(text.find(kept + "\xC3"), std::string::npos);
  ctx.TryCancel();
}

TEST(RelayGrpc, ANewTopicOverMaxTopicsIsRefusedNamingTheSettingAndOthersCarryOn) {
  RelayConfig c = loopback();
  c.max_topics = 3;
  c.topic_idle_timeout = 0ms;  // (kept: the count stays at the limit)
  Relay relay(c);
  for (const char* topic : {"t1", "t2", "t3"}) {
    grpc::ClientContext ctx;
    auto stream = relay.stub->Publish(&ctx);
    stream->Write(item(topic, 1, "x"));
    ASSERT_TRUE(end_publish(stream).status.ok()) << topic;
  }
  {
    grpc::ClientContext ctx;
    auto stream = relay.stub->Publish(&ctx);
    stream->Write(item("t4", 1, "x"));
    const auto status = end_publish(stream).status;
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_NE(status.error_message().find("SLUICE_MAX_TOPICS"), std::string::npos)
        << status.error_message();
  }
  {
    grpc::ClientContext ctx;
    auto reader = relay.stub->Subscribe(&ctx, [] {
      v1::SubscribeRequest r;
      r.set_topic("t5");
      return r;
    }());
    v1::SubscribeEvent e;
    EXPECT_FALSE(reader->Read(&e));
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  // The topics there still take items.
  grpc::ClientContext ctx;
  auto stream = relay.stub->Publish(&ctx);
  stream->Write(item("t2", 2, "y"));
  EXPECT_TRUE(end_publish(stream).status.ok());
  EXPECT_EQ(relay.metric("sluice_topics"), 3);
  EXPECT_EQ(relay.metric("sluice_topics_refused_total"), 2);
}

TEST(RelayHttp, IdleTopicsMadeOnFirstUseGoWithTheirSeriesAndUsedOrDeclaredOnesStay) {
  RelayConfig c = loopback();
  c.topic_idle_timeout = 200ms;
  TopicConfig declared;
  declared.name = "declared";
  c.topics.push_back(declared);
  Relay relay(c);
  // "watched" keeps a subscriber throughout; "passing" is published to once, then nobody uses it.
  auto sub_ctx = std::make_unique<grpc::ClientContext>();
  auto reader = subscribe(relay, *sub_ctx, "watched", "watcher");
  for (const char* topic : {"passing", "declared", "watched"}) {
    grpc::ClientContext ctx;
    auto stream = relay.stub->Publish(&ctx);
    stream->Write(item(topic, 1, "x"));
    ASSERT_TRUE(end_publish(stream).status.ok()) << topic;
  }
  const auto port = relay.server.http_port();
  std::string metrics;
  for (int i = 0; i < 1000; ++i) {  // (removed 200 ms after its last use; polled every 100 ms)
    metrics = http_get(port, "/metrics").second;
    if (metrics.find("topic=\"passing\"") == std::string::npos) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(metrics.find("topic=\"passing\""), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("sluice_topic_published_total{topic=\"watched\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("sluice_topic_published_total{topic=\"declared\"} 1"), std::string::npos);
  EXPECT_EQ(relay.metric("sluice_topics_removed_total"), 1);
  EXPECT_EQ(relay.metric("sluice_topics"), 2);
  // The name is free again: using it makes a new topic, counted from zero.
  grpc::ClientContext ctx;
  auto stream = relay.stub->Publish(&ctx);
  stream->Write(item("passing", 7, "again"));
  ASSERT_TRUE(end_publish(stream).status.ok());
  EXPECT_EQ(relay.metric("sluice_topic_published_total", "topic=\"passing\""), 1);
  sub_ctx->TryCancel();
  v1::SubscribeEvent e;
  while (reader->Read(&e)) {
  }
  reader->Finish();
}

// Resuming over gRPC: the call's initial metadata says where it starts (sluice-epoch,
// sluice-position); a call with that epoch and the position reached continues there.
TEST(RelayGrpc, ASubscriberThatComesBackResumesFromItsPosition) {
  RelayConfig c = loopback();
  c.defaults.retain_items = 16;
  Relay relay(c);
  std::string epoch;
  {
    grpc::ClientContext ctx;
    auto reader = subscribe(relay, ctx, "t", "first");
    reader->WaitForInitialMetadata();
    {
      grpc::ClientContext pub_ctx;
      auto stream = relay.stub->Publish(&pub_ctx);
      for (int i = 0; i < 10; ++i) stream->Write(item("t", i, "p" + std::to_string(i)));
      ASSERT_TRUE(end_publish(stream).status.ok());
    }
    const auto& md = ctx.GetServerInitialMetadata();
    ASSERT_EQ(md.count("sluice-epoch"), 1U);
    ASSERT_EQ(md.count("sluice-position"), 1U);
    epoch =
        std::string(md.find("sluice-epoch")->second.data(), md.find("sluice-epoch")->second.size());
    EXPECT_EQ(std::string(md.find("sluice-position")->second.data(),
                          md.find("sluice-position")->second.size()),
              "0");
    for (int i = 0; i < 4; ++i) {
      v1::SubscribeEvent e;
      ASSERT_TRUE(read_event(reader, e));
      ASSERT_EQ(e.item().sequence(), std::uint64_t(i));
    }
    ctx.TryCancel();  // gone at position 4
    v1::SubscribeEvent e;
    while (reader->Read(&e)) {
    }
    reader->Finish();
    forget_reader(reader);
  }
  grpc::ClientContext ctx;
  v1::SubscribeRequest req;
  req.set_topic("t");
  req.set_name("again");
  req.set_epoch(epoch);
  req.set_from_position(4);
  auto reader = relay.stub->Subscribe(&ctx, req);
  for (int i = 4; i < 10; ++i) {
    v1::SubscribeEvent e;
    ASSERT_TRUE(read_event(reader, e));
    ASSERT_TRUE(e.has_item()) << e.DebugString();
    ASSERT_EQ(e.item().sequence(), std::uint64_t(i));
    EXPECT_EQ(e.item().payload(), "p" + std::to_string(i));
  }
  const auto& md = ctx.GetServerInitialMetadata();
  EXPECT_EQ(std::string(md.find("sluice-position")->second.data(),
                        md.find("sluice-position")->second.size()),
            "4");
  EXPECT_EQ(relay.metric("sluice_subscriber_resumes_total", "outcome=\"exact\""), 1.0);
  ctx.TryCancel();
}

// A producer that names itself (sluice-producer) may send again what it has no ack for: the
// topic gets each item once, the producer an ack for all of them.
TEST(RelayGrpc, AProducerThatSendsAgainWhatTheTopicHasPutsEachItemInOnce) {
  Relay relay;
  grpc::ClientContext sub_ctx;
  auto reader = subscribe(relay, sub_ctx, "once", "viewer");
  const auto publish = [&](std::uint64_t from, std::uint64_t to, const std::string& producer) {
    grpc::ClientContext ctx;
    if (!producer.empty()) ctx.AddMetadata(std::string(kProducerKey), producer);
    auto stream = relay.stub->Publish(&ctx);
    for (auto i = from; i <= to; ++i) stream->Write(item("once", i, "p" + std::to_string(i)));
    return end_publish(stream);
  };
  EXPECT_EQ(publish(1, 5, "camera-7").last_ack, 5);
  const Ended again = publish(3, 8, "camera-7");  // 3..5 again (their acks "lost"), then 6..8
  EXPECT_TRUE(again.status.ok());
  EXPECT_EQ(again.last_ack, 8);
  EXPECT_EQ(publish(1, 1, "camera-8").last_ack, 1);  // another producer: its own numbering
  for (std::uint64_t expected : {1, 2, 3, 4, 5, 6, 7, 8, 1}) {
    v1::SubscribeEvent e;
    ASSERT_TRUE(read_event(reader, e));
    ASSERT_TRUE(e.has_item());
    EXPECT_EQ(e.item().sequence(), expected);
  }
  EXPECT_EQ(relay.metric("sluice_publish_duplicates_total", "topic=\"once\""), 3.0);
  EXPECT_NE(relay.stats_json().find("\"published\": 9"), std::string::npos);
  {  // The typed Stats reply says the same as its JSON.
    grpc::ClientContext ctx;
    v1::StatsReply reply;
    ASSERT_TRUE(relay.stub->Stats(&ctx, v1::StatsRequest{}, &reply).ok());
    ASSERT_EQ(reply.topics_size(), 1);
    const auto& t = reply.topics(0);
    EXPECT_EQ(t.name(), "once");
    EXPECT_EQ(t.mode(), "lossless");
    EXPECT_EQ(t.published(), 9U);
    EXPECT_EQ(t.subscribers(), 1U);
    EXPECT_EQ(t.epoch().size(), 16U);
    EXPECT_NE(reply.json().find("\"epoch\": \"" + t.epoch() + "\""), std::string::npos);
  }

  const Ended bad = publish(9, 9, std::string(129, 'x'));
  EXPECT_EQ(bad.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad.status.error_message().find("at most 128"), std::string::npos);
  sub_ctx.TryCancel();
}

}  // namespace
}  // namespace sluice

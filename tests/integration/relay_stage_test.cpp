// A topic's processing stage against the real relay on loopback: bad requests and bad worker
// messages get their documented errors; a worker that fails a frame, stalls or vanishes costs
// no silent loss (the frame goes to another worker, or its publisher is told why).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>

#include "image_model.hpp"
#include "loopback.hpp"
#include "relay_scene.hpp"
#include "sluice/client/stage_worker.hpp"
#include "sluice/relay/server.hpp"
#include "sluice/v1/relay.grpc.pb.h"
#include "ws_async.hpp"
#include "ws_client.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::AsyncWs;
using testing::frame;
using testing::index_of;
using testing::loopback;
using testing::metric;
using testing::WsClient;
using Messages = std::vector<AsyncWs::Message>;

RelayConfig stage_relay(std::size_t max_in_flight = 1,
                        std::chrono::milliseconds task_timeout = 10s) {
  RelayConfig c = loopback();
  c.max_sessions = 20;
  TopicConfig camera;
  camera.name = "camera";
  camera.mode = TopicMode::realtime;
  StageConfig st;
  st.fps = 30;
  st.max_in_flight = max_in_flight;
  st.results_topic = "camera.results";
  st.task_timeout = task_timeout;
  camera.stage = st;
  c.topics.push_back(camera);
  TopicConfig plain;
  plain.name = "plain";
  c.topics.push_back(plain);
  return c;
}

std::size_t count_binary(const Messages& ms) {
  std::size_t n = 0;
  for (const auto& m : ms) n += m.text ? 0 : 1;
  return n;
}
bool has_text(const Messages& ms, const std::string& part) {
  for (const auto& m : ms) {
    if (m.text && m.bytes.find(part) != std::string::npos) return true;
  }
  return false;
}
// The publisher's drop notices: frame index -> the event.
std::map<std::uint64_t, nlohmann::json> drops(const AsyncWs& publisher) {
  std::map<std::uint64_t, nlohmann::json> out;
  for (const auto& e : publisher.events()) {
    if (e.contains("dropped")) out[e["frame_index"].get<std::uint64_t>()] = e;
  }
  return out;
}
std::set<std::uint64_t> results(const AsyncWs& viewer) {
  std::set<std::uint64_t> out;
  for (const auto& m : viewer.messages()) {
    if (!m.text) out.insert(index_of(m.bytes));
  }
  return out;
}

StageWorkerOptions worker_options(std::uint16_t port, const std::string& name) {
  StageWorkerOptions o;
  o.port = port;
  o.topic = "camera";
  o.name = name;
  return o;
}

// What `sluice worker` runs: a frame is one row of RGB pixels, kept at full size.
WorkHandler image_model() {
  cli::ImageModelOptions o;
  o.downscale = 1;
  return [model = std::make_shared<cli::ImageModel>(o)](const WorkFrame& f) { return (*model)(f); };
}

TEST(RelayStage, AWorkerForATopicWithoutAStageIsRefusedWith404) {
  testing::RelayScene relay(stage_relay());
  WsClient w;
  EXPECT_TRUE(w.connect(relay.http_port(), "/v1/ws/work/plain"));
  EXPECT_EQ(w.http_status, 404U);
  EXPECT_NE(w.http_body.find("has no stage"), std::string::npos) << w.http_body;
  EXPECT_NE(w.http_body.find("stage = true"), std::string::npos) << w.http_body;
  // And the example worker says what the relay answered.
  StageWorkerOptions o = worker_options(relay.http_port(), "w");
  o.topic = "plain";
  StageWorker worker(o, image_model());
  try {
    worker.connect();
    FAIL() << "joined a topic without a stage";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("HTTP 404"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("has no stage"), std::string::npos) << e.what();
  }
}

// Two stages that publish their results into each other's topics: both topics are made once
// (no endless recursion), and a result lands in the other topic.
TEST(RelayStage, StagesWhoseResultsFeedEachOtherAreMadeOnce) {
  RelayConfig c = loopback();
  for (const auto& [name, results] : {std::pair{"a", "b"}, std::pair{"b", "a"}}) {
    TopicConfig t;
    t.name = name;
    StageConfig st;
    st.results_topic = results;
    t.stage = st;
    c.topics.push_back(t);
  }
  testing::RelayScene relay(c);
  const auto port = relay.http_port();
  AsyncWs worker;
  ASSERT_TRUE(worker.connect(port, "/v1/ws/work/a?name=w&concurrency=1"));
  AsyncWs viewer;
  ASSERT_TRUE(viewer.connect(port, "/v1/ws/subscribe/b"));
  AsyncWs pub;
  ASSERT_TRUE(pub.connect(port, "/v1/ws/publish/a"));
  ASSERT_TRUE(testing::wait_for_sessions(port, 3));
  pub.send(frame(3, 0, "x"));
  ASSERT_TRUE(worker.wait([](const Messages& ms) { return count_binary(ms) == 1; }, 5s));
  worker.send(frame(3, 0, "result of 3"));
  ASSERT_TRUE(viewer.wait([](const Messages& ms) { return count_binary(ms) == 1; }, 5s));
  EXPECT_EQ(results(viewer), std::set<std::uint64_t>{3});
  const auto stats = nlohmann::json::parse(relay.stats_json());
  EXPECT_EQ(stats["topics"].size(), 2U);
}

TEST(RelayStage, ABadConcurrencyIsRefusedWith400) {
  testing::RelayScene relay(stage_relay());
  for (const char* bad : {"0", "x", "5000"}) {
    WsClient w;
    EXPECT_TRUE(w.connect(relay.http_port(), std::string("/v1/ws/work/camera?concurrency=") + bad));
    EXPECT_EQ(w.http_status, 400U) << bad;
    EXPECT_NE(w.http_body.find("concurrency"), std::string::npos) << w.http_body;
  }
}

TEST(RelayStage, WithoutAWorkerEachFrameIsToldAsDroppedNoWorker) {
  testing::RelayScene relay(stage_relay());
  const auto port = relay.http_port();
  AsyncWs camera;
  ASSERT_TRUE(camera.connect(port, "/v1/ws/publish/camera"));
  for (std::uint64_t i = 0; i < 5; ++i) {
    camera.send(frame(i, 0, "pixels"));
    std::this_thread::sleep_for(40ms);
  }
  ASSERT_TRUE(camera.wait([](const Messages& ms) { return ms.size() >= 5; }, 5s));
  const auto d = drops(camera);
  ASSERT_EQ(d.size(), 5U);
  for (const auto& [i, e] : d) {
    EXPECT_EQ(e["reason"], "no_worker") << e;
    EXPECT_NE(e["detail"].get<std::string>().find("has no worker"), std::string::npos) << e;
  }
  EXPECT_EQ(metric(port, "sluice_stage_dropped_total", "reason=\"no_worker\""), 5.0);
}

TEST(RelayStage, AFrameAWorkerFailsIsToldAsWorkerFailedWithItsError) {
  testing::RelayScene relay(stage_relay());
  const auto port = relay.http_port();
  AsyncWs worker;
  ASSERT_TRUE(worker.connect(port, "/v1/ws/work/camera?name=gpu0&concurrency=1"));
  ASSERT_TRUE(
      worker.wait([](const Messages& ms) { return has_text(ms, "\"worker\":\"gpu0\""); }, 5s))
      << "no hello from the relay";
  AsyncWs camera;
  ASSERT_TRUE(camera.connect(port, "/v1/ws/publish/camera"));
  camera.send(frame(7, 0, "pixels"));
  ASSERT_TRUE(worker.wait([](const Messages& ms) { return count_binary(ms) == 1; }, 5s));
  worker.send(R"({"frame_index":7,"error":"CUDA out of memory"})", /*text=*/true);
  // The only worker failed it: no other can take it, so the publisher is told.
  ASSERT_TRUE(camera.wait([](const Messages& ms) { return has_text(ms, "dropped"); }, 5s));
  const auto d = drops(camera);
  ASSERT_EQ(d.count(7), 1U);
  EXPECT_EQ(d.at(7)["reason"], "worker_failed");
  EXPECT_NE(d.at(7)["detail"].get<std::string>().find("CUDA out of memory"), std::string::npos)
      << d.at(7);
  EXPECT_EQ(metric(port, "sluice_worker_errors_total", "worker=\"gpu0\""), 1.0);
}

TEST(RelayStage, BadWorkerMessagesGetAnErrorAndTheWorkerStaysUsable) {
  testing::RelayScene relay(stage_relay());
  const auto port = relay.http_port();
  AsyncWs worker;
  ASSERT_TRUE(worker.connect(port, "/v1/ws/work/camera?name=w&concurrency=1"));
  AsyncWs viewer;
  ASSERT_TRUE(viewer.connect(port, "/v1/ws/subscribe/camera.results"));
  worker.send("{not json", true);
  worker.send(R"({"hello":1})", true);
  worker.send("short", false);
  worker.send(frame(99, 0, "a result for a frame it was never sent"));
  ASSERT_TRUE(worker.wait([](const Messages& ms) { return ms.size() >= 5; }, 5s));  // +hello
  const auto ms = worker.messages();
  EXPECT_TRUE(has_text(ms, "invalid JSON"));
  EXPECT_TRUE(has_text(ms, "unknown event"));
  EXPECT_TRUE(has_text(ms, "16-byte header"));
  EXPECT_TRUE(has_text(ms, "frame 99 is not held by this worker"));
  // Still a worker: a frame goes to it and its answer reaches the results topic.
  ASSERT_TRUE(testing::wait_for_sessions(port, 2));
  AsyncWs camera;
  ASSERT_TRUE(camera.connect(port, "/v1/ws/publish/camera"));
  camera.send(frame(1, 0, "pixels"));
  ASSERT_TRUE(worker.wait([](const Messages& m) { return count_binary(m) == 1; }, 5s));
  worker.send(frame(1, 0, "result"));
  ASSERT_TRUE(viewer.wait([](const Messages& m) { return count_binary(m) == 1; }, 5s));
  EXPECT_EQ(results(viewer), std::set<std::uint64_t>{1});
}

// A worker that asks for the 24-byte header (?header=24) gets each frame's flags as the
// producer set them, answers with the same header, and its result reaches the results topic;
// a result shorter than that header is refused naming it.
TEST(RelayStage, AWorkerOnThe24ByteHeaderGetsTheFlagsAndAnswersWithIt) {
  testing::RelayScene relay(stage_relay());
  const auto port = relay.http_port();
  AsyncWs worker;
  ASSERT_TRUE(worker.connect(port, "/v1/ws/work/camera?name=w&concurrency=1&header=24"));
  ASSERT_TRUE(worker.wait([](const Messages& ms) { return has_text(ms, "\"worker\":\"w\""); }, 5s));
  AsyncWs viewer;
  ASSERT_TRUE(viewer.connect(port, "/v1/ws/subscribe/camera.results"));
  ASSERT_TRUE(testing::wait_for_sessions(port, 2));
  AsyncWs camera;
  ASSERT_TRUE(camera.connect(port, "/v1/ws/publish/camera?header=24"));
  camera.send(testing::flagged_frame(3, 0, kItemDiscardable, "pixels"));
  ASSERT_TRUE(worker.wait([](const Messages& m) { return count_binary(m) == 1; }, 5s));
  std::string got;
  for (const auto& m : worker.messages()) {
    if (!m.text) got = m.bytes;
  }
  ASSERT_EQ(got.size(), ws::kFlaggedFrameHeaderBytes + 6);
  const auto head = ws::decode(got.data(), ws::kFlaggedFrameHeaderBytes);
  EXPECT_EQ(head.index, 3U);
  EXPECT_EQ(head.flags, kItemDiscardable);
  EXPECT_EQ(got.substr(ws::kFlaggedFrameHeaderBytes), "pixels");
  worker.send(frame(3, 0, ""));  // 16 bytes: short of this session's header
  ASSERT_TRUE(worker.wait([](const Messages& ms) { return has_text(ms, "24-byte header"); }, 5s));
  worker.send(testing::flagged_frame(3, 0, 0, "result"));
  ASSERT_TRUE(viewer.wait([](const Messages& m) { return count_binary(m) == 1; }, 5s));
  EXPECT_EQ(results(viewer), std::set<std::uint64_t>{3});
}

// A worker that takes frames and vanishes (no close handshake) with them in hand: they go to
// the other worker. Every frame is a result or a drop notice, exactly once.
TEST(RelayStage, AWorkerThatVanishesMidStreamCostsNoSilentLoss) {
  testing::RelayScene relay(stage_relay(/*max_in_flight=*/4));
  const auto port = relay.http_port();
  AsyncWs hole;  // takes frames, never answers
  ASSERT_TRUE(hole.connect(port, "/v1/ws/work/camera?name=hole&concurrency=2"));
  StageWorker real(worker_options(port, "real"), image_model());
  real.connect();
  std::thread serving([&] { real.run(); });
  AsyncWs viewer;
  ASSERT_TRUE(viewer.connect(port, "/v1/ws/subscribe/camera.results"));
  AsyncWs camera;
  ASSERT_TRUE(camera.connect(port, "/v1/ws/publish/camera"));
  ASSERT_TRUE(testing::wait_for_sessions(port, 4));
  constexpr std::uint64_t kFrames = 40;
  for (std::uint64_t i = 0; i < kFrames; ++i) {
    camera.send(frame(i, 0, std::string(300, 'x')));
    std::this_thread::sleep_for(33ms);
    if (i == kFrames / 2) {
      ASSERT_GT(count_binary(hole.messages()), 0U) << "the hole took nothing";
      hole.vanish();
    }
  }
  const auto settled = [&] { return drops(camera).size() + results(viewer).size() >= kFrames; };
  const auto deadline = Clock::now() + 10s;
  while (!settled() && Clock::now() < deadline) std::this_thread::sleep_for(20ms);
  const auto d = drops(camera);
  const auto r = results(viewer);
  for (std::uint64_t i = 0; i < kFrames; ++i) {
    EXPECT_EQ(d.count(i) + r.count(i), 1U) << "frame " << i;
  }
  for (const auto& [i, e] : d) EXPECT_NE(e["reason"], "worker_failed") << e;
  EXPECT_GE(metric(port, "sluice_stage_rerouted_total", "stage=\"camera\""), 1.0);
  // The vanished worker's series are gone; the real one's remain.
  EXPECT_EQ(metric(port, "sluice_worker_in_flight", "worker=\"hole\""), -1.0);
  EXPECT_GE(metric(port, "sluice_worker_in_flight", "worker=\"real\""), 0.0);
  real.stop();
  serving.join();
}

// A worker that holds a frame past stage_task_timeout_ms: the frame goes to another worker;
// the late answer is refused with an error naming the frame.
TEST(RelayStage, AFrameHeldPastTheTaskTimeoutGoesToAnotherWorker) {
  testing::RelayScene relay(stage_relay(1, 300ms));
  const auto port = relay.http_port();
  AsyncWs stalled;
  ASSERT_TRUE(stalled.connect(port, "/v1/ws/work/camera?name=stalled&concurrency=1"));
  AsyncWs viewer;
  ASSERT_TRUE(viewer.connect(port, "/v1/ws/subscribe/camera.results"));
  AsyncWs camera;
  ASSERT_TRUE(camera.connect(port, "/v1/ws/publish/camera"));
  ASSERT_TRUE(testing::wait_for_sessions(port, 3));
  camera.send(frame(5, 0, "pixels"));
  ASSERT_TRUE(stalled.wait([](const Messages& ms) { return count_binary(ms) == 1; }, 5s));
  StageWorker real(worker_options(port, "real"), image_model());
  real.connect();
  std::thread serving([&] { real.run(); });
  ASSERT_TRUE(viewer.wait([](const Messages& ms) { return count_binary(ms) == 1; }, 5s))
      << "the stalled worker's frame never reached the other one";
  EXPECT_EQ(results(viewer), std::set<std::uint64_t>{5});
  EXPECT_EQ(metric(port, "sluice_worker_timeouts_total", "worker=\"stalled\""), 1.0);
  stalled.send(frame(5, 0, "too late"));
  ASSERT_TRUE(stalled.wait(
      [](const Messages& ms) { return has_text(ms, "frame 5 is not held by this worker"); }, 5s));
  EXPECT_TRUE(drops(camera).empty());
  real.stop();
  serving.join();
}

// Over gRPC: a worker joins with Work, a producer publishes with Publish; the producer's call
// carries the stage's drop notices.
TEST(RelayStageGrpc, AWorkCallServesFramesAndTheProducerIsToldOfAFailedOne) {
  testing::RelayScene relay(stage_relay());
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(relay.grpc_port()),
                                     grpc::InsecureChannelCredentials());
  auto stub = v1::Relay::NewStub(channel);
  AsyncWs viewer;
  ASSERT_TRUE(viewer.connect(relay.http_port(), "/v1/ws/subscribe/camera.results"));

  grpc::ClientContext work_ctx;
  work_ctx.set_deadline(std::chrono::system_clock::now() + 60s);  // a lost frame fails, not hangs
  auto work = stub->Work(&work_ctx);
  v1::WorkRequest join;
  join.mutable_join()->set_topic("camera");
  join.mutable_join()->set_name("grpc-gpu");
  join.mutable_join()->set_concurrency(1);
  ASSERT_TRUE(work->Write(join));
  v1::WorkEvent event;
  ASSERT_TRUE(work->Read(&event));
  ASSERT_TRUE(event.has_joined());
  EXPECT_EQ(event.joined().results_topic(), "camera.results");

  grpc::ClientContext pub_ctx;
  pub_ctx.set_deadline(std::chrono::system_clock::now() + 60s);
  auto pub = stub->Publish(&pub_ctx);
  for (std::uint64_t i = 1; i <= 2; ++i) {
    v1::PublishRequest req;
    req.mutable_item()->set_topic("camera");
    req.mutable_item()->set_sequence(i);
    req.mutable_item()->set_payload("frame " + std::to_string(i));
    ASSERT_TRUE(pub->Write(req));
    // The worker gets it, answers: a result for the first, an error for the second.
    ASSERT_TRUE(work->Read(&event));
    ASSERT_TRUE(event.has_frame());
    EXPECT_EQ(event.frame().sequence(), i);
    EXPECT_EQ(event.frame().payload(), "frame " + std::to_string(i));
    v1::WorkRequest answer;
    if (i == 1) {
      answer.mutable_result()->set_sequence(i);
      answer.mutable_result()->set_payload("result 1");
    } else {
      answer.mutable_error()->set_sequence(i);
      answer.mutable_error()->set_error("model crashed");
    }
    ASSERT_TRUE(work->Write(answer));
    // Frame 2 must find the gate's one place free: wait until the relay has taken the result
    // (it reached the viewer), not a fixed time (a loaded machine took longer than 50 ms).
    if (i == 1) {
      ASSERT_TRUE(viewer.wait([](const Messages& ms) { return count_binary(ms) == 1; }, 5s));
    }
    std::this_thread::sleep_for(50ms);  // past the gate's frame interval
  }
  ASSERT_TRUE(viewer.wait([](const Messages& ms) { return count_binary(ms) == 1; }, 5s));
  EXPECT_EQ(results(viewer), std::set<std::uint64_t>{1});
  // The producer's call: acks, and the drop notice for frame 2.
  bool told = false;
  v1::PublishEvent pe;
  while (!told && pub->Read(&pe)) {
    if (pe.has_dropped()) {
      EXPECT_EQ(pe.dropped().sequence(), 2U);
      EXPECT_EQ(pe.dropped().reason(), "worker_failed");
      EXPECT_NE(pe.dropped().detail().find("model crashed"), std::string::npos);
      told = true;
    }
  }
  EXPECT_TRUE(told);
  // A result for a frame it does not hold: an error event; the call goes on.
  v1::WorkRequest stray;
  stray.mutable_result()->set_sequence(42);
  ASSERT_TRUE(work->Write(stray));
  ASSERT_TRUE(work->Read(&event));
  ASSERT_TRUE(event.has_error());
  EXPECT_NE(event.error().find("frame 42 is not held"), std::string::npos) << event.error();
  work->WritesDone();
  pub->WritesDone();
  EXPECT_TRUE(work->Finish().ok());
  EXPECT_TRUE(pub->Finish().ok());
}

// A topic without a stage is the same refusal over every transport: not_found (gRPC
// NOT_FOUND here, HTTP 404 before a WebSocket upgrade:
// AWorkerForATopicWithoutAStageIsRefusedWith404).
TEST(RelayStageGrpc, AWorkCallMustJoinATopicWithAStage) {
  testing::RelayScene relay(stage_relay());
  auto stub = v1::Relay::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(relay.grpc_port()), grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext ctx;
    auto work = stub->Work(&ctx);
    v1::WorkRequest join;
    join.mutable_join()->set_topic("plain");
    (void)work->Write(join);
    const auto status = work->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_NE(status.error_message().find("has no stage"), std::string::npos);
  }
  {
    grpc::ClientContext ctx;
    auto work = stub->Work(&ctx);
    v1::WorkRequest result;
    result.mutable_result()->set_sequence(1);
    (void)work->Write(result);
    const auto status = work->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("must be a join"), std::string::npos);
  }
}

}  // namespace
}  // namespace sluice

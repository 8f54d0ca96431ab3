// Who may publish, read and work: principals with tokens and topic patterns, checked for every
// role on both transports, the refusals, the filtered stats and metrics, and the browser
// checks (Origin, Host). The real relay on loopback; gRPC and Beast WebSocket/HTTP clients.
#include <gtest/gtest.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

#include "loopback.hpp"
#include "relay_scene.hpp"
#include "sluice/relay/config.hpp"
#include "ws_client.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using testing::http_get;
using testing::WsClient;
using Relay = testing::RelayScene;

constexpr const char* kCameraToken = "cam-5ecret-token";
constexpr const char* kDashboardToken = "dash-5ecret-token";
constexpr const char* kWorkerToken = "work-5ecret-token";
constexpr const char* kFeederToken = "feed-5ecret-token";

RelayConfig guarded() {
  RelayConfig c = testing::loopback();
  PrincipalConfig camera;
  camera.name = "camera";
  camera.token_sha256 = token_sha256(kCameraToken);
  camera.publish = {"camera.*"};
  PrincipalConfig dashboard;
  dashboard.name = "dashboard";
  dashboard.token_sha256 = token_sha256(kDashboardToken);
  dashboard.subscribe = {"camera.>", "!camera.private"};
  dashboard.stats = {"camera.>"};
  PrincipalConfig worker;
  worker.name = "pool";
  worker.token_sha256 = token_sha256(kWorkerToken);
  worker.work = {"frames"};
  PrincipalConfig feeder;  // publishes anywhere: feeds the subscriptions under test
  feeder.name = "feeder";
  feeder.token_sha256 = token_sha256(kFeederToken);
  feeder.publish = {">"};
  c.principals = {camera, dashboard, worker, feeder};
  TopicConfig frames;
  frames.name = "frames";
  frames.stage = StageConfig{};
  c.topics.push_back(frames);
  return c;
}

void authorize(grpc::ClientContext& ctx, const std::string& token) {
  ctx.AddMetadata("authorization", "Bearer " + token);
}

// One item published with `token` to `topic`: the call's status.
grpc::Status publish(Relay& relay, const std::string& token, const std::string& topic) {
  grpc::ClientContext ctx;
  if (!token.empty()) authorize(ctx, token);
  auto stream = relay.stub->Publish(&ctx);
  v1::PublishRequest r;
  r.mutable_item()->set_topic(topic);
  r.mutable_item()->set_sequence(1);
  r.mutable_item()->set_payload("x");
  stream->Write(r);
  stream->WritesDone();
  for (v1::PublishEvent e; stream->Read(&e);) {
  }
  return stream->Finish();
}

// Subscribes with `token` to `topic`: OK once an item a feeder publishes there arrives, or the
// status the relay refused the subscription with.
grpc::Status subscribe(Relay& relay, const std::string& token, const std::string& topic) {
  grpc::ClientContext ctx;
  if (!token.empty()) authorize(ctx, token);
  ctx.set_deadline(std::chrono::system_clock::now() + 30s);  // (a hang fails, not blocks)
  v1::SubscribeRequest r;
  r.set_topic(topic);
  auto reader = relay.stub->Subscribe(&ctx, r);
  reader->WaitForInitialMetadata();  // sent once the subscription exists, or the refusal came
  const auto fed = publish(relay, kFeederToken, topic);
  v1::SubscribeEvent e;
  if (!reader->Read(&e)) return reader->Finish();  // refused: its status
  ctx.TryCancel();
  while (reader->Read(&e)) {
  }
  reader->Finish();
  return fed;
}

bool mentions_a_token(const std::string& text) {
  for (const char* t : {kCameraToken, kDashboardToken, kWorkerToken}) {
    if (text.find(t) != std::string::npos) return true;
  }
  return false;
}

TEST(RelayAccess, GrpcEachActionIsAllowedOrRefusedByThePrincipalsPatterns) {
  Relay relay(guarded());
  EXPECT_TRUE(publish(relay, kCameraToken, "camera.front").ok());
  const auto other = publish(relay, kCameraToken, "logs");
  EXPECT_EQ(other.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(other.error_message().find("principal 'camera' may not publish topic 'logs'"),
            std::string::npos)
      << other.error_message();
  // '*' is one segment: camera.front.left is not camera.*
  EXPECT_EQ(publish(relay, kCameraToken, "camera.front.left").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(subscribe(relay, kDashboardToken, "camera.front").ok());
  EXPECT_TRUE(subscribe(relay, kDashboardToken, "camera.front.left").ok());  // '>': the rest
  // A denial wins over the pattern that would allow it.
  const auto denied = subscribe(relay, kDashboardToken, "camera.private");
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(subscribe(relay, kCameraToken, "camera.front").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // Work: the pool may work "frames" only.
  {
    grpc::ClientContext ctx;
    authorize(ctx, kDashboardToken);
    auto stream = relay.stub->Work(&ctx);
    v1::WorkRequest join;
    join.mutable_join()->set_topic("frames");
    stream->Write(join);
    stream->WritesDone();
    for (v1::WorkEvent e; stream->Read(&e);) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    grpc::ClientContext ctx;
    authorize(ctx, kWorkerToken);
    auto stream = relay.stub->Work(&ctx);
    v1::WorkRequest join;
    join.mutable_join()->set_topic("frames");
    ASSERT_TRUE(stream->Write(join));
    v1::WorkEvent joined;
    ASSERT_TRUE(stream->Read(&joined));
    EXPECT_TRUE(joined.has_joined());
    ctx.TryCancel();
    stream->Finish();
  }
  EXPECT_FALSE(mentions_a_token(other.error_message() + denied.error_message()));
}

TEST(RelayAccess, GrpcWithoutOrWithAWrongTokenIsUnauthenticatedAndNamesNoToken) {
  Relay relay(guarded());
  const auto none = publish(relay, "", "camera.front");
  EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  const auto wrong = subscribe(relay, "guess", "camera.front");
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(wrong.error_message().find("guess"), std::string::npos) << wrong.error_message();
  // A principal without a token is who clients presenting none are.
  RelayConfig c = guarded();
  PrincipalConfig anyone;
  anyone.name = "visitor";
  anyone.subscribe = {"public.>"};
  c.principals.push_back(anyone);
  Relay open_door(c);
  EXPECT_TRUE(subscribe(open_door, "", "public.news").ok());
  EXPECT_EQ(subscribe(open_door, "", "camera.front").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST(RelayAccess, StatsAndMetricsShowOnlyWhatThePrincipalMaySee) {
  Relay relay(guarded());
  ASSERT_TRUE(publish(relay, kCameraToken, "camera.front").ok());
  {
    grpc::ClientContext ctx;
    authorize(ctx, kDashboardToken);
    v1::StatsReply reply;
    ASSERT_TRUE(relay.stub->Stats(&ctx, v1::StatsRequest{}, &reply).ok());
    EXPECT_NE(reply.json().find("camera.front"), std::string::npos);
    EXPECT_EQ(reply.json().find("\"frames\""), std::string::npos) << reply.json();
  }
  {
    grpc::ClientContext ctx;
    authorize(ctx, kCameraToken);  // no stats permission
    v1::StatsReply reply;
    EXPECT_EQ(relay.stub->Stats(&ctx, v1::StatsRequest{}, &reply).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  const auto port = relay.http_port();
  const std::map<std::string, std::string> dash{
      {"Authorization", std::string("Bearer ") + kDashboardToken}};
  const auto [status, metrics] = http_get(port, "/metrics", false, dash);
  EXPECT_EQ(status, 200U);
  EXPECT_NE(metrics.find("topic=\"camera.front\""), std::string::npos);
  EXPECT_EQ(metrics.find("topic=\"frames\""), std::string::npos);
  EXPECT_FALSE(mentions_a_token(metrics));
  EXPECT_EQ(http_get(port, "/metrics").first, 401U);
  EXPECT_EQ(
      http_get(port, "/v1/stats", false, {{"Authorization", std::string("Bearer ") + kCameraToken}})
          .first,
      403U);
  const auto [stats_status, stats] = http_get(port, "/v1/stats", false, dash);
  EXPECT_EQ(stats_status, 200U);
  EXPECT_FALSE(mentions_a_token(stats));
  EXPECT_EQ(http_get(port, "/healthz").first, 200U);  // (health needs no token)

  // The stats stream: the same view, pushed; refused without the stats permission.
  WsClient stream;
  stream.headers = dash;
  ASSERT_FALSE(stream.connect(port, "/v1/ws/stats?period_ms=100"));
  for (int i = 0; i < 2; ++i) {  // (two snapshots, a period apart)
    bool text = false;
    std::string snapshot;
    ASSERT_FALSE(stream.read(text, snapshot));
    EXPECT_TRUE(text);
    EXPECT_NE(snapshot.find("\"camera.front\""), std::string::npos) << snapshot;
    EXPECT_EQ(snapshot.find("\"frames\""), std::string::npos) << snapshot;
    EXPECT_NE(snapshot.find("\"period_ms\":100"), std::string::npos) << snapshot;
    EXPECT_FALSE(mentions_a_token(snapshot));
  }
  WsClient camera_stream;
  camera_stream.headers = {{"Authorization", std::string("Bearer ") + kCameraToken}};
  EXPECT_TRUE(camera_stream.connect(port, "/v1/ws/stats"));
  EXPECT_EQ(camera_stream.http_status, 403U);
  EXPECT_NE(camera_stream.http_body.find("may not read stats"), std::string::npos);
  WsClient bad_period;
  bad_period.headers = dash;
  EXPECT_TRUE(bad_period.connect(port, "/v1/ws/stats?period_ms=600001"));
  EXPECT_EQ(bad_period.http_status, 400U);
}

TEST(RelayAccess, WebSocketTokensInTheHeaderOrTheSubprotocolAndTheirRefusals) {
  RelayConfig config = guarded();
  Relay relay(config);
  const auto port = relay.http_port();
  WsClient header;
  header.headers = {{"Authorization", std::string("Bearer ") + kDashboardToken}};
  EXPECT_FALSE(header.connect(port, "/v1/ws/subscribe/camera.front"));
  // Browsers cannot set headers: the token rides as a subprotocol, "sluice" is echoed.
  WsClient browser;
  browser.headers = {
      {"Sec-WebSocket-Protocol", std::string("sluice, sluice.bearer.") + kDashboardToken}};
  EXPECT_FALSE(browser.connect(port, "/v1/ws/subscribe/camera.front"));
  EXPECT_EQ(browser.response_protocol, "sluice");
  // A client that offers only its token gets no subprotocol back: a token is never echoed.
  WsClient token_only;
  token_only.headers = {
      {"Sec-WebSocket-Protocol", std::string("sluice.bearer.") + kDashboardToken}};
  EXPECT_FALSE(token_only.connect(port, "/v1/ws/subscribe/camera.front"));
  EXPECT_EQ(token_only.response_protocol, "");
  WsClient anonymous;
  EXPECT_TRUE(anonymous.connect(port, "/v1/ws/subscribe/camera.front"));
  EXPECT_EQ(anonymous.http_status, 401U);
  WsClient in_query;  // token_in_query is off: the query's token is not read
  EXPECT_TRUE(in_query.connect(
      port, std::string("/v1/ws/subscribe/camera.front?token=") + kDashboardToken));
  EXPECT_EQ(in_query.http_status, 401U);
  WsClient camera;
  camera.headers = {{"Authorization", std::string("Bearer ") + kCameraToken}};
  EXPECT_TRUE(camera.connect(port, "/v1/ws/subscribe/camera.front"));
  EXPECT_EQ(camera.http_status, 403U);
  EXPECT_NE(camera.http_body.find("principal 'camera' may not subscribe"), std::string::npos)
      << camera.http_body;
  EXPECT_FALSE(mentions_a_token(camera.http_body + anonymous.http_body));
  WsClient publisher;
  publisher.headers = {{"Authorization", std::string("Bearer ") + kCameraToken}};
  EXPECT_FALSE(publisher.connect(port, "/v1/ws/publish/camera.front"));
  publisher.send_binary(testing::frame(1, 0, "hello"));
  bool text = false;
  std::string bytes;
  ASSERT_FALSE(header.read(text, bytes));
  EXPECT_EQ(bytes.substr(16), "hello");

  config.token_in_query = true;
  Relay query_relay(config);
  WsClient query;
  EXPECT_FALSE(
      query.connect(query_relay.http_port(),
                    std::string("/v1/ws/subscribe/camera.front?token=") + kDashboardToken));
}

TEST(RelayAccess, BrowserOriginsAndHostNamesAreChecked) {
  RelayConfig c = testing::loopback();
  c.server_names = {"relay.example"};
  c.allowed_origins = {"http://127.0.0.1:*", "https://dash.example"};
  Relay relay(c);
  const auto port = relay.http_port();
  WsClient evil;
  evil.headers = {{"Origin", "http://evil.example"}};
  EXPECT_TRUE(evil.connect(port, "/v1/ws/subscribe/t"));
  EXPECT_EQ(evil.http_status, 403U);
  EXPECT_NE(evil.http_body.find("server.allowed_origins"), std::string::npos) << evil.http_body;
  WsClient listed;
  listed.headers = {{"Origin", "https://dash.example"}};
  EXPECT_FALSE(listed.connect(port, "/v1/ws/subscribe/t"));
  WsClient any_port;
  any_port.headers = {{"Origin", "http://127.0.0.1:5173"}};
  EXPECT_FALSE(any_port.connect(port, "/v1/ws/subscribe/t"));
  // Same origin: the page was served under the name the request is addressed to.
  WsClient same;
  same.headers = {{"Host", "relay.example:" + std::to_string(port)},
                  {"Origin", "http://relay.example:" + std::to_string(port)}};
  EXPECT_FALSE(same.connect(port, "/v1/ws/subscribe/t"));
  // DNS rebinding: a page of evil.example whose name now resolves to 127.0.0.1.
  EXPECT_EQ(http_get(port, "/v1/stats", false, {{"Host", "evil.example"}}).first, 421U);
  EXPECT_EQ(http_get(port, "/v1/stats", false, {{"Host", "localhost:1"}}).first, 200U);
  EXPECT_EQ(http_get(port, "/v1/stats", false, {{"Host", "relay.example"}}).first, 200U);
  EXPECT_EQ(http_get(port, "/v1/stats", false, {{"Host", "[::1]:7401"}}).first, 200U);
  EXPECT_EQ(http_get(port, "/v1/stats", false, {{"Host", "127.0.0.1:1"}}).first, 200U);
  // An address literal other than loopback or the address the relay was reached at is no
  // address of this relay's; a request without a Host names none.
  const auto other_ip = http_get(port, "/v1/stats", false, {{"Host", "10.9.8.7"}});
  EXPECT_EQ(other_ip.first, 421U);
  EXPECT_NE(other_ip.second.find("server.allow_any_host"), std::string::npos) << other_ip.second;
  const auto no_host = http_get(port, "/v1/stats", false, {{"Host", ""}});
  EXPECT_EQ(no_host.first, 421U);
  EXPECT_NE(no_host.second.find("without a Host"), std::string::npos) << no_host.second;
  WsClient rebound;
  rebound.headers = {{"Host", "10.9.8.7:80"}};
  EXPECT_TRUE(rebound.connect(port, "/v1/ws/subscribe/t"));
  EXPECT_EQ(rebound.http_status, 421U);
  // (at least one per request: a WebSocket client that is refused asks again for the answer)
  EXPECT_GE(relay.metric("sluice_refusals_total", "kind=\"misdirected\""), 4);

  // server.allow_any_host: any Host, for a relay behind a proxy that rewrites it.
  c.allow_any_host = true;
  Relay any(c);
  EXPECT_EQ(http_get(any.http_port(), "/v1/stats", false, {{"Host", "10.9.8.7"}}).first, 200U);
  EXPECT_EQ(http_get(any.http_port(), "/v1/stats", false, {{"Host", "evil.example"}}).first, 200U);
}

// server.token_in_query lets a WebSocket upgrade carry its token as ?token= (a browser cannot
// set its headers); any other request must use a header, so a token never rides in a link.
TEST(RelayAccess, ATokenInTheQueryOpensWebSocketsOnly) {
  RelayConfig config = guarded();
  config.token_in_query = true;
  Relay relay(config);
  const auto port = relay.http_port();
  WsClient query;
  EXPECT_FALSE(
      query.connect(port, std::string("/v1/ws/subscribe/camera.front?token=") + kDashboardToken));
  EXPECT_EQ(http_get(port, std::string("/v1/stats?token=") + kDashboardToken).first, 401U);
  EXPECT_EQ(http_get(port, std::string("/metrics?token=") + kDashboardToken).first, 401U);
  EXPECT_EQ(http_get(port, "/v1/stats", false,
                     {{"Authorization", std::string("Bearer ") + kDashboardToken}})
                .first,
            200U);
}

}  // namespace
}  // namespace sluice

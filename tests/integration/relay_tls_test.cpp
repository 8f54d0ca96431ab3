// TLS on both ports, with certificates made at test time by the openssl command. gRPC: a client
// that trusts the relay's CA publishes and subscribes (the C++ SDK's TlsOptions); a plaintext
// client and one trusting another CA fail cleanly, and the relay serves on; under mutual TLS
// a client without a certificate is refused and one with a certificate names its principal.
// HTTP/WebSocket: https and wss carry requests and frames (a subscriber on another event loop
// than the one that read its request); a plaintext client gets a 400 saying what the port
// speaks; mutual TLS names the principal; a certificate reload keeps open sessions.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

#include "loopback.hpp"
#include "sluice/client/client.hpp"
#include "sluice/client/stage_worker.hpp"
#include "sluice/relay/server.hpp"
#include "sluice/v1/relay.grpc.pb.h"
#include "test_certificates.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using testing::Certificates;

RelayConfig tls_config(const Certificates& certs, bool mutual) {
  RelayConfig c = testing::loopback();
  c.tls_cert_file = certs.path("relay.pem");
  c.tls_key_file = certs.path("relay.key");
  if (mutual) c.tls_client_ca_file = certs.path("ca.pem");
  return c;
}

// Mutual TLS, and the principal "camera" named by the test client certificate's CN (camera-1):
// it may publish camera.*, nothing else.
RelayConfig mutual_with_camera(const Certificates& certs) {
  RelayConfig c = tls_config(certs, /*mutual=*/true);
  PrincipalConfig camera;
  camera.name = "camera";
  camera.certificate_cn = "camera-1";
  camera.publish = {"camera.*"};
  c.principals.push_back(camera);
  return c;
}

// A Stats call over `credentials`: its status.
grpc::Status stats(std::uint16_t port, const std::shared_ptr<grpc::ChannelCredentials>& creds) {
  auto stub = v1::Relay::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port), creds));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  v1::StatsReply reply;
  return stub->Stats(&ctx, v1::StatsRequest{}, &reply);
}

TEST(RelayTls, ClientsTrustingTheRelaysCaGetThroughOthersFailCleanly) {
  const Certificates certs;
  ASSERT_TRUE(certs.ok) << "openssl could not make the test certificates";
  RelayServer relay(tls_config(certs, /*mutual=*/false));
  relay.start();
  const auto port = relay.grpc_port();
  const std::string target = "127.0.0.1:" + std::to_string(port);

  client::SubscriberOptions so;
  so.target = target;
  so.topic = "secure";
  so.tls.ca_file = certs.path("ca.pem");
  client::Subscriber sub(so);
  client::PublisherOptions po;
  po.target = target;
  po.topic = "secure";
  po.tls.ca_file = certs.path("ca.pem");
  client::Publisher pub(po);
  ASSERT_TRUE(pub.publish(Buffer(std::string("over tls"))).ok());
  ASSERT_TRUE(pub.close().ok());
  client::SubscriberEvent e;
  ASSERT_TRUE(sub.next(e));
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(e.payload.data()), e.payload.size()),
            "over tls");
  sub.cancel();

  // Plaintext to the TLS port, and TLS trusting another CA: UNAVAILABLE, nothing else.
  EXPECT_EQ(stats(port, grpc::InsecureChannelCredentials()).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  grpc::SslCredentialsOptions other;
  other.pem_root_certs = certs.read("other.pem");
  EXPECT_EQ(stats(port, grpc::SslCredentials(other)).error_code(), grpc::StatusCode::UNAVAILABLE);
  grpc::SslCredentialsOptions right;
  right.pem_root_certs = certs.read("ca.pem");
  EXPECT_TRUE(stats(port, grpc::SslCredentials(right)).ok());  // (still serving)
}

TEST(RelayTls, MutualTlsRefusesClientsWithoutACertificateAndNamesThePrincipal) {
  const Certificates certs;
  ASSERT_TRUE(certs.ok) << "openssl could not make the test certificates";
  RelayServer relay(mutual_with_camera(certs));
  relay.start();
  const auto port = relay.grpc_port();

  grpc::SslCredentialsOptions anonymous;
  anonymous.pem_root_certs = certs.read("ca.pem");
  EXPECT_EQ(stats(port, grpc::SslCredentials(anonymous)).error_code(),
            grpc::StatusCode::UNAVAILABLE);

  grpc::SslCredentialsOptions with_cert = anonymous;
  with_cert.pem_cert_chain = certs.read("client.pem");
  with_cert.pem_private_key = certs.read("client.key");
  // The certificate's CN names the principal: it may publish camera.*, not read stats.
  const auto denied = stats(port, grpc::SslCredentials(with_cert));
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(denied.error_message().find("principal 'camera'"), std::string::npos)
      << denied.error_message();
  client::PublisherOptions po;
  po.target = "127.0.0.1:" + std::to_string(port);
  po.topic = "camera.front";
  po.tls = {certs.path("ca.pem"), certs.path("client.pem"), certs.path("client.key")};
  client::Publisher pub(po);
  EXPECT_TRUE(pub.publish(Buffer(std::string("frame"))).ok());
  EXPECT_TRUE(pub.close().ok());
}

// ---- https and wss on the HTTP port ----

namespace ssl = boost::asio::ssl;
namespace http = boost::beast::http;
namespace websocket = boost::beast::websocket;
using boost::asio::ip::tcp;

// A TLS client context trusting `ca` (a file of `certs`), with the client certificate if asked.
std::unique_ptr<ssl::context> client_context(const Certificates& certs, const std::string& ca,
                                             bool client_certificate = false) {
  auto ctx = std::make_unique<ssl::context>(ssl::context::tls_client);
  ctx->load_verify_file(certs.path(ca));
  ctx->set_verify_mode(ssl::verify_peer);
  if (client_certificate) {
    ctx->use_certificate_chain_file(certs.path("client.pem"));
    ctx->use_private_key_file(certs.path("client.key"), ssl::context::pem);
  }
  return ctx;
}

struct HttpsAnswer {
  boost::system::error_code ec;  // the handshake's or the exchange's error, if any
  unsigned status = 0;
  std::string body;
};

// GET https://127.0.0.1:port/target as a client trusting `ca`.
HttpsAnswer https_get(std::uint16_t port, const std::string& target, const Certificates& certs,
                      const std::string& ca = "ca.pem", bool client_certificate = false) {
  boost::asio::io_context io;
  auto ctx = client_context(certs, ca, client_certificate);
  ssl::stream<tcp::socket> stream(io, *ctx);
  HttpsAnswer a;
  stream.next_layer().connect({boost::asio::ip::make_address("127.0.0.1"), port});
  stream.set_verify_callback(ssl::host_name_verification("127.0.0.1"));
  stream.handshake(ssl::stream_base::client, a.ec);
  if (a.ec) return a;
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, "127.0.0.1");
  http::write(stream, req, a.ec);
  if (a.ec) return a;
  boost::beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::read(stream, buffer, res, a.ec);
  if (a.ec && a.ec != ssl::error::stream_truncated) return a;
  a.ec = {};
  a.status = res.result_int();
  a.body = res.body();
  return a;
}

// The value of the first sample of `name` whose line contains `has`, from /metrics over https.
double https_metric(std::uint16_t port, const Certificates& certs, const std::string& name,
                    const std::string& has = "") {
  std::istringstream text(https_get(port, "/metrics", certs).body);
  for (std::string line; std::getline(text, line);) {
    if (line.rfind(name, 0) == 0 && line.find(has) != std::string::npos)
      return std::stod(line.substr(line.rfind(' ') + 1));
  }
  return -1;
}

// A wss:// client (Beast over Asio's TLS stream).
struct WssClient {
  explicit WssClient(const Certificates& certs, const std::string& ca = "ca.pem",
                     bool client_certificate = false)
      : ctx(client_context(certs, ca, client_certificate)), ws(io, *ctx) {}
  boost::system::error_code connect(std::uint16_t port, const std::string& target) {
    boost::system::error_code ec;
    boost::beast::get_lowest_layer(ws).connect({boost::asio::ip::make_address("127.0.0.1"), port},
                                               ec);
    if (!ec) ws.next_layer().handshake(ssl::stream_base::client, ec);
    if (!ec) ws.handshake("127.0.0.1", target, ec);
    return ec;
  }
  void send(const std::string& bytes) {
    ws.binary(true);
    ws.write(boost::asio::buffer(bytes));
  }
  // The next binary message (text events skipped).
  std::string next_frame() {
    for (;;) {
      boost::beast::flat_buffer b;
      ws.read(b);
      if (!ws.got_text()) return boost::beast::buffers_to_string(b.data());
    }
  }
  boost::asio::io_context io;
  std::unique_ptr<ssl::context> ctx;
  websocket::stream<ssl::stream<tcp::socket>> ws;
};

std::string frame_of(std::uint64_t index, const std::string& payload) {
  const auto header = ws::encode({index, static_cast<std::int64_t>(index)});
  return std::string(header.begin(), header.end()) + payload;
}

TEST(RelayTls, HttpsAndWssCarryRequestsAndFramesAPlaintextClientIsToldWhatThePortSpeaks) {
  const Certificates certs;
  ASSERT_TRUE(certs.ok) << "openssl could not make the test certificates";
  RelayConfig c = tls_config(certs, /*mutual=*/false);
  c.threads = 2;  // the subscriber is served by the loop that did not read its request
  RelayServer relay(c);
  relay.start();
  const auto port = relay.http_port();

  const auto health = https_get(port, "/healthz", certs);
  ASSERT_FALSE(health.ec) << health.ec.message();
  EXPECT_EQ(health.status, 200U);
  EXPECT_EQ(health.body, "ok\n");
  EXPECT_EQ(https_get(port, "/v1/stats", certs).status, 200U);

  WssClient sub(certs);
  ASSERT_FALSE(sub.connect(port, "/v1/ws/subscribe/cam?depth=512"));
  WssClient pub(certs);
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/cam"));
  // Small frames (batched into shared TLS records), then large ones (many records each).
  std::vector<std::string> sent;
  for (std::uint64_t i = 0; i < 200; ++i)
    sent.push_back(frame_of(i, std::string(100, 'a' + i % 26)));
  for (std::uint64_t i = 200; i < 203; ++i)
    sent.push_back(frame_of(i, std::string(1 << 20, 'A' + i % 26)));
  std::thread producer([&] {
    for (const auto& f : sent) pub.send(f);
  });
  std::size_t intact = 0;  // frames received whole, in order (the relay stamps its own time)
  for (const auto& f : sent) {
    const auto got = sub.next_frame();
    if (got.size() != f.size() || ws::decode(got.data()).index != ws::decode(f.data()).index ||
        got.compare(ws::kFrameHeaderBytes, std::string::npos, f, ws::kFrameHeaderBytes) != 0)
      break;
    ++intact;
  }
  producer.join();
  EXPECT_EQ(intact, sent.size());

  // Plain HTTP to the TLS port: a plaintext 400 that says so; counted.
  const auto [status, body] = testing::http_get(port, "/healthz");
  EXPECT_EQ(status, 400U);
  EXPECT_NE(body.find("this port speaks TLS"), std::string::npos) << body;
  EXPECT_EQ(https_metric(port, certs, "sluice_tls_handshake_failures_total", "plaintext"), 1);

  // A client trusting another CA fails its handshake; the relay serves on, sessions untouched.
  EXPECT_TRUE(https_get(port, "/healthz", certs, "other.pem").ec);
  EXPECT_EQ(https_get(port, "/healthz", certs).status, 200U);
  pub.send(frame_of(203, "still here"));
  EXPECT_EQ(sub.next_frame().substr(ws::kFrameHeaderBytes), "still here");
}

TEST(RelayTls, MutualTlsOnTheHttpPortNamesThePrincipalFromTheCertificate) {
  const Certificates certs;
  ASSERT_TRUE(certs.ok) << "openssl could not make the test certificates";
  RelayServer relay(mutual_with_camera(certs));
  relay.start();
  const auto port = relay.http_port();

  // No certificate: no answer (TLS 1.3 reports the refusal after the client's handshake).
  const auto anonymous = https_get(port, "/healthz", certs);
  EXPECT_TRUE(anonymous.ec);
  EXPECT_EQ(anonymous.status, 0U);

  WssClient allowed(certs, "ca.pem", /*client_certificate=*/true);
  EXPECT_FALSE(allowed.connect(port, "/v1/ws/publish/camera.front"));
  const auto stats = https_get(port, "/v1/stats", certs, "ca.pem", /*client_certificate=*/true);
  EXPECT_EQ(stats.status, 403U);
  EXPECT_NE(stats.body.find("principal 'camera'"), std::string::npos) << stats.body;
}

// Copies the relay certificate and key of `from` over those the relay was configured with.
void replace_certificate(const Certificates& from, const Certificates& into) {
  namespace fs = std::filesystem;
  for (const char* f : {"relay.pem", "relay.key"})
    fs::copy_file(from.path(f), into.path(f), fs::copy_options::overwrite_existing);
}

TEST(RelayTls, ReloadedCertificatesServeNewConnectionsOpenSessionsCarryOn) {
  const Certificates certs;
  const Certificates renewed;  // another CA, and a relay certificate it signed
  ASSERT_TRUE(certs.ok && renewed.ok) << "openssl could not make the test certificates";
  RelayServer relay(tls_config(certs, /*mutual=*/false));
  relay.start();
  const auto port = relay.http_port();
  WssClient sub(certs);
  ASSERT_FALSE(sub.connect(port, "/v1/ws/subscribe/cam"));

  replace_certificate(renewed, certs);
  EXPECT_EQ(relay.reload_certificates(), "");
  // New connections get the new certificate; the open session carries on.
  EXPECT_TRUE(https_get(port, "/healthz", certs).ec);
  EXPECT_EQ(https_get(port, "/healthz", renewed).status, 200U);
  WssClient pub(renewed);
  ASSERT_FALSE(pub.connect(port, "/v1/ws/publish/cam"));
  pub.send(frame_of(1, "after the reload"));
  EXPECT_EQ(sub.next_frame().substr(ws::kFrameHeaderBytes), "after the reload");
  EXPECT_EQ(https_metric(port, renewed, "sluice_tls_reloads_total", "ok"), 1);

  // A broken key: the reload is refused, naming the setting; the port keeps its certificate.
  std::ofstream(certs.path("relay.key")) << "not a key\n";
  const auto problem = relay.reload_certificates();
  EXPECT_NE(problem.find("server.tls_key_file"), std::string::npos) << problem;
  EXPECT_EQ(https_get(port, "/healthz", renewed).status, 200U);

  // The relay also notices changed files by itself: within seconds a gRPC client trusting the
  // new CA gets through.
  replace_certificate(renewed, certs);
  grpc::SslCredentialsOptions trusting;
  trusting.pem_root_certs = renewed.read("ca.pem");
  bool through = false;
  for (int i = 0; i < 100 && !through; ++i) {
    through = stats(relay.grpc_port(), grpc::SslCredentials(trusting)).ok();
    if (!through) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(through) << "gRPC never presented the renewed certificate";
}

// Waits up to 10 s for `done`.
template <class F>
bool eventually(F done) {
  for (int i = 0; i < 100; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(100ms);
  }
  return done();
}

// A renewal written in steps — garbage first, then a certificate without its key — is noticed
// by the relay itself (no SIGHUP), refused at each step, and both ports serve the certificate
// they had; once the files are whole, both serve the new one.
TEST(RelayTls, AHalfWrittenRenewalLeavesBothPortsOnTheCertificateTheyHad) {
  namespace fs = std::filesystem;
  const Certificates certs;
  const Certificates renewed;
  ASSERT_TRUE(certs.ok && renewed.ok) << "openssl could not make the test certificates";
  RelayServer relay(tls_config(certs, /*mutual=*/false));
  relay.start();
  const auto http = relay.http_port();
  const auto grpc_port = relay.grpc_port();
  grpc::SslCredentialsOptions old_ca;
  old_ca.pem_root_certs = certs.read("ca.pem");
  grpc::SslCredentialsOptions new_ca;
  new_ca.pem_root_certs = renewed.read("ca.pem");
  ASSERT_TRUE(stats(grpc_port, grpc::SslCredentials(old_ca)).ok());
  const auto both_serve_the_old_one = [&] {
    EXPECT_TRUE(stats(grpc_port, grpc::SslCredentials(old_ca)).ok());
    EXPECT_EQ(https_get(http, "/healthz", certs).status, 200U);
  };

  std::ofstream(certs.path("relay.pem")) << "-----BEGIN CERTIFICATE-----\nMIIB\n";
  EXPECT_TRUE(eventually(
      [&] { return https_metric(http, certs, "sluice_tls_reloads_total", "failed") >= 1; }));
  std::this_thread::sleep_for(1500ms);  // (longer than gRPC's file watcher takes to look)
  both_serve_the_old_one();

  fs::copy_file(renewed.path("relay.pem"), certs.path("relay.pem"),
                fs::copy_options::overwrite_existing);  // (its key not yet)
  EXPECT_TRUE(eventually(
      [&] { return https_metric(http, certs, "sluice_tls_reloads_total", "failed") >= 2; }));
  std::this_thread::sleep_for(1500ms);
  both_serve_the_old_one();
  EXPECT_EQ(https_metric(http, certs, "sluice_tls_reloads_total", "\"ok\""), -1);

  fs::copy_file(renewed.path("relay.key"), certs.path("relay.key"),
                fs::copy_options::overwrite_existing);
  EXPECT_TRUE(eventually([&] { return https_get(http, "/healthz", renewed).status == 200U; }));
  EXPECT_TRUE(eventually([&] { return stats(grpc_port, grpc::SslCredentials(new_ca)).ok(); }))
      << "gRPC never presented the renewed certificate";
  EXPECT_EQ(https_metric(http, renewed, "sluice_tls_reloads_total", "\"ok\""), 1);
}

// A client that opens a connection and stalls its TLS handshake (sends nothing, or half a
// ClientHello) is closed after limits.handshake_timeout_ms on both ports — gRPC's own default
// would hold it for 120 s.
TEST(RelayTls, StalledHandshakesAreClosedAtTheHandshakeTimeoutOnBothPorts) {
  const Certificates certs;
  ASSERT_TRUE(certs.ok) << "openssl could not make the test certificates";
  RelayConfig c = tls_config(certs, /*mutual=*/false);
  c.handshake_timeout = 500ms;
  RelayServer relay(c);
  relay.start();
  for (const std::uint16_t port : {relay.grpc_port(), relay.http_port()}) {
    boost::asio::io_context io;  // (outlives its sockets)
    std::vector<std::unique_ptr<boost::asio::ip::tcp::socket>> stalled;
    for (int i = 0; i < 20; ++i) {
      auto s = std::make_unique<boost::asio::ip::tcp::socket>(io);
      s->connect({boost::asio::ip::make_address("127.0.0.1"), port});
      if (i % 2 == 1) {  // a TLS handshake record's header and a little of its body
        static constexpr unsigned char kPartial[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00};
        boost::asio::write(*s, boost::asio::buffer(kPartial));
      }
      const timeval wait{30, 0};  // (far less than gRPC's 120 s)
      ::setsockopt(s->native_handle(), SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
      stalled.push_back(std::move(s));
    }
    const auto start = std::chrono::steady_clock::now();
    int closed = 0;
    for (auto& s : stalled) {
      char byte = 0;
      const auto n = ::recv(s->native_handle(), &byte, 1, 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) ++closed;
    }
    const auto took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(closed, 20) << "port " << port << ": stalled handshakes held open";
    std::printf("port %u: 20 stalled handshakes closed within %.1f s (handshake_timeout_ms 500)\n",
                port, took);
  }
}

TEST(RelayTls, AStageWorkerWorksOverWssWithAClientCertificate) {
  const Certificates certs;
  ASSERT_TRUE(certs.ok) << "openssl could not make the test certificates";
  RelayConfig c = tls_config(certs, /*mutual=*/true);
  TopicConfig camera;
  camera.name = "camera";
  StageConfig st;
  st.results_topic = "camera.results";
  camera.stage = st;
  c.topics.push_back(camera);
  PrincipalConfig worker;
  worker.name = "model";
  worker.certificate_cn = "camera-1";
  worker.work = {"camera"};
  worker.publish = {"camera"};
  worker.subscribe = {"camera.results"};
  c.principals.push_back(worker);
  RelayServer relay(c);
  relay.start();
  const auto port = relay.http_port();

  StageWorkerOptions o;
  o.port = port;
  o.topic = "camera";
  o.tls = {certs.path("ca.pem"), certs.path("client.pem"), certs.path("client.key")};
  StageWorker w(o, [](const WorkFrame& f) { return "seen " + std::string(f.payload); });
  w.connect();
  std::thread serving([&] { w.run(); });
  WssClient results(certs, "ca.pem", /*client_certificate=*/true);
  ASSERT_FALSE(results.connect(port, "/v1/ws/subscribe/camera.results"));
  WssClient producer(certs, "ca.pem", /*client_certificate=*/true);
  ASSERT_FALSE(producer.connect(port, "/v1/ws/publish/camera"));
  producer.send(frame_of(1, "frame one"));
  EXPECT_EQ(results.next_frame().substr(ws::kFrameHeaderBytes), "seen frame one");
  w.stop();
  serving.join();
  EXPECT_EQ(w.processed(), 1U);

  // Without the CA the worker cannot connect, and says why.
  StageWorkerOptions wrong = o;
  wrong.tls.ca_file = certs.path("other.pem");
  StageWorker refused(wrong, [](const WorkFrame&) { return std::string(); });
  try {
    refused.connect();
    ADD_FAILURE() << "a worker trusting another CA connected";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("TLS handshake"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace sluice

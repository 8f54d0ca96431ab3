// TLS on the gRPC port, with certificates made at test time by the openssl command: a client
// that trusts the relay's CA publishes and subscribes (the C++ SDK's TlsOptions); a plaintext
// client and one trusting another CA fail cleanly, and the relay serves on; under mutual TLS
// a client without a certificate is refused and one with a certificate names its principal.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it

#include "loopback.hpp"
#include "sluice/client/client.hpp"
#include "sluice/relay/server.hpp"
#include "sluice/v1/relay.grpc.pb.h"

namespace sluice {
namespace {

using namespace std::chrono_literals;

// A CA, a relay certificate for 127.0.0.1 it signs, a client certificate (CN camera-1) it
// signs, and another CA; in a temporary directory (scripts/make-test-certs.sh).
struct Certificates {
  Certificates() {
    char name[] = "/tmp/sluice_tls_XXXXXX";
    dir = mkdtemp(name);
    ok = std::system(
             (std::string(SLUICE_SOURCE_DIR "/scripts/make-test-certs.sh ") + dir).c_str()) == 0;
  }
  Certificates(const Certificates&) = delete;
  Certificates& operator=(const Certificates&) = delete;
  Certificates(Certificates&&) = delete;
  Certificates& operator=(Certificates&&) = delete;
  ~Certificates() { (void)std::system(("rm -rf " + dir).c_str()); }
  std::string path(const std::string& file) const { return dir + "/" + file; }
  std::string read(const std::string& file) const {
    std::ifstream in(path(file));
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  }
  std::string dir;
  bool ok = false;
};

RelayConfig tls_config(const Certificates& certs, bool mutual) {
  RelayConfig c = testing::loopback();
  c.tls_cert_file = certs.path("relay.pem");
  c.tls_key_file = certs.path("relay.key");
  if (mutual) c.tls_client_ca_file = certs.path("ca.pem");
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
  RelayConfig c = tls_config(certs, /*mutual=*/true);
  PrincipalConfig camera;
  camera.name = "camera";
  camera.certificate_cn = "camera-1";
  camera.publish = {"camera.*"};
  c.principals.push_back(camera);
  RelayServer relay(c);
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

}  // namespace
}  // namespace sluice

// Signed tokens (JWT) an application mints for its users: HS256, Ed25519 and ES256 keys made
// here with OpenSSL, tokens signed here; the relay's answers to good, expired, forged and
// alg-switched tokens, and a session whose token expires while it runs (both transports).
#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it

#include "loopback.hpp"
#include "relay_scene.hpp"
#include "ws_client.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using Relay = testing::RelayScene;

const std::string kSecret = "an-hs256-secret-of-at-least-32-bytes!";

std::string b64url(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (auto& c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  return out;
}

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

nlohmann::json claims(std::int64_t exp_in_s) {
  return {{"sub", "app-user"},
          {"exp", unix_now() + exp_in_s},
          {"sluice", {{"subscribe", {"camera.*"}}, {"publish", {"camera.front"}}}}};
}

std::string signing_input(const std::string& alg, const nlohmann::json& payload) {
  return b64url(nlohmann::json{{"alg", alg}, {"typ", "JWT"}}.dump()) + "." + b64url(payload.dump());
}

std::string hs256(const nlohmann::json& payload, const std::string& secret = kSecret) {
  const std::string in = signing_input("HS256", payload);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(in.data()), in.size(), mac, &n);
  return in + "." + b64url(std::string(reinterpret_cast<char*>(mac), n));
}

// A key pair made now, its public half in a PEM file the relay reads.
struct KeyPair {
  explicit KeyPair(EVP_PKEY* k) : key(k) {
    char name[] = "/tmp/sluice_jwt_key_XXXXXX";
    const int fd = mkstemp(name);
    close(fd);
    path = name;
    FILE* f = std::fopen(path.c_str(), "w");
    PEM_write_PUBKEY(f, key);
    std::fclose(f);
  }
  KeyPair(const KeyPair&) = delete;
  KeyPair& operator=(const KeyPair&) = delete;
  KeyPair(KeyPair&&) = delete;
  KeyPair& operator=(KeyPair&&) = delete;
  ~KeyPair() {
    EVP_PKEY_free(key);
    unlink(path.c_str());
  }
  std::string sign(const std::string& alg, const nlohmann::json& payload) const {
    const std::string in = signing_input(alg, payload);
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    const bool ec = alg == "ES256";
    EVP_DigestSignInit(ctx, nullptr, ec ? EVP_sha256() : nullptr, nullptr, key);
    std::size_t len = 0;
    EVP_DigestSign(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(in.data()),
                   in.size());
    std::string sig(len, '\0');
    EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                   reinterpret_cast<const unsigned char*>(in.data()), in.size());
    sig.resize(len);
    EVP_MD_CTX_free(ctx);
    if (ec) {  // DER -> r || s, as JWS carries it
      const auto* p = reinterpret_cast<const unsigned char*>(sig.data());
      ECDSA_SIG* s = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size()));
      std::string raw(64, '\0');
      BN_bn2binpad(ECDSA_SIG_get0_r(s), reinterpret_cast<unsigned char*>(raw.data()), 32);
      BN_bn2binpad(ECDSA_SIG_get0_s(s), reinterpret_cast<unsigned char*>(raw.data()) + 32, 32);
      ECDSA_SIG_free(s);
      sig = raw;
    }
    return in + "." + b64url(sig);
  }
  EVP_PKEY* key;
  std::string path;
};

RelayConfig signed_tokens(const std::string& key_file = {}) {
  RelayConfig c = testing::loopback();
  c.jwt_hs256_secret = kSecret;
  c.jwt_public_key_file = key_file;
  return c;
}

// One item published with an HS256 token that may publish anywhere.
void feed(Relay& relay, const std::string& topic) {
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + hs256({{"sub", "feeder"},
                                                      {"exp", unix_now() + 60},
                                                      {"sluice", {{"publish", {">"}}}}}));
  auto stream = relay.stub->Publish(&ctx);
  v1::PublishRequest item;
  item.mutable_item()->set_topic(topic);
  item.mutable_item()->set_payload("x");
  stream->Write(item);
  stream->WritesDone();
  for (v1::PublishEvent e; stream->Read(&e);) {
  }
  stream->Finish();
}

// Subscribes with `token`: OK once a fed item arrives (then, with `wait_for_end`, the status
// the stream ends with), or the status of the refusal.
grpc::Status subscribe_status(Relay& relay, const std::string& token, const std::string& topic,
                              bool wait_for_end = false) {
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + token);
  ctx.set_deadline(std::chrono::system_clock::now() + 30s);
  v1::SubscribeRequest r;
  r.set_topic(topic);
  auto reader = relay.stub->Subscribe(&ctx, r);
  reader->WaitForInitialMetadata();
  feed(relay, topic);
  v1::SubscribeEvent e;
  if (!reader->Read(&e)) return reader->Finish();  // refused
  if (!wait_for_end) ctx.TryCancel();
  while (reader->Read(&e)) {
  }
  const auto s = reader->Finish();
  return wait_for_end ? s : grpc::Status::OK;
}

TEST(RelaySignedTokens, Hs256TokensCarryThePrincipalAndItsPatterns) {
  Relay relay(signed_tokens());
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + hs256(claims(60)));
  auto stream = relay.stub->Publish(&ctx);
  v1::PublishRequest item;
  item.mutable_item()->set_topic("camera.back");  // subscribe camera.*, publish camera.front
  item.mutable_item()->set_payload("x");
  stream->Write(item);
  stream->WritesDone();
  for (v1::PublishEvent e; stream->Read(&e);) {
  }
  const auto status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(status.error_message().find("principal 'app-user' may not publish topic 'camera.back'"),
            std::string::npos)
      << status.error_message();
}

TEST(RelaySignedTokens, ExpiredForgedAndAlgSwitchedTokensAreUnauthenticated) {
  const KeyPair ed(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  Relay relay(signed_tokens(ed.path));
  const auto refused = [&](const std::string& token, const std::string& why) {
    const auto s = subscribe_status(relay, token, "camera.front");
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAUTHENTICATED) << why;
    EXPECT_NE(s.error_message().find(why), std::string::npos) << s.error_message();
  };
  refused(hs256(claims(-10)), "expired");
  refused(hs256(claims(60), "another-secret-of-at-least-32-bytes!!"), "bad signature");
  std::string tampered = hs256(claims(60));
  tampered[tampered.find('.') + 5] ^= 1;  // the claims changed after signing
  refused(tampered, "bad signature");
  refused(signing_input("none", claims(60)) + ".", "alg none");
  // Times out of the clock's range are refused, naming the claim (a time past 2262 would wrap
  // around into the past, and one before 1970 is no token's).
  for (const double exp : {-9.3e9, 9.3e9, 1e300}) {
    auto c = claims(60);
    c["exp"] = exp;
    refused(hs256(c), "exp is not a time");
  }
  auto early = claims(60);
  early["nbf"] = 9.3e9;
  refused(hs256(early), "nbf is not a time");
  early["nbf"] = -9.3e9;
  refused(hs256(early), "nbf is not a time");
  auto text = claims(60);
  text["exp"] = "soon";
  refused(hs256(text), "exp is not a time");
}

TEST(RelaySignedTokens, Ed25519AndEs256TokensAreAccepted) {
  const KeyPair ed(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  Relay ed_relay(signed_tokens(ed.path));
  EXPECT_TRUE(subscribe_status(ed_relay, ed.sign("EdDSA", claims(60)), "camera.front").ok());
  EXPECT_EQ(subscribe_status(ed_relay, ed.sign("EdDSA", claims(60)), "logs").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  const KeyPair ec(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  Relay ec_relay(signed_tokens(ec.path));
  EXPECT_TRUE(subscribe_status(ec_relay, ec.sign("ES256", claims(60)), "camera.front").ok());
  // An ES256 relay does not take EdDSA tokens, whatever their header says.
  EXPECT_EQ(subscribe_status(ec_relay, ed.sign("EdDSA", claims(60)), "camera.front").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST(RelaySignedTokens, ASessionEndsWhenItsTokenExpires) {
  Relay relay(signed_tokens());
  const std::string token = hs256(claims(2));  // (exp has whole seconds: 1 to 2 s from now)
  testing::WsClient viewer;
  viewer.headers = {{"Authorization", "Bearer " + token}};
  ASSERT_FALSE(viewer.connect(relay.http_port(), "/v1/ws/subscribe/camera.front"));
  const auto grpc_end = subscribe_status(relay, token, "camera.front", /*wait_for_end=*/true);
  EXPECT_EQ(grpc_end.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_NE(grpc_end.error_message().find("the token of principal 'app-user' expired"),
            std::string::npos)
      << grpc_end.error_message();
  bool text = false;
  std::string bytes;
  while (!viewer.read(text, bytes)) {
  }
  EXPECT_EQ(viewer.s.reason().code, boost::beast::websocket::close_code::policy_error);
  EXPECT_EQ(std::string(viewer.s.reason().reason.c_str()), "token expired");
}

}  // namespace
}  // namespace sluice

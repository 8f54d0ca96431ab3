// Signed tokens (JWT) as a client would forge them. The input is a token's claims (JSON, or
// not): the harness signs them with the relay's HS256 secret, so every byte reaches the claim
// checks behind the signature (times, issuer, sub, the sluice permissions); the same bytes as a
// whole token, unsigned, must be refused. Invariants: nothing crashes or overflows (UBSan:
// exp/nbf at any magnitude); a refusal is unauthenticated and never quotes the secret; an
// accepted token names a principal in valid UTF-8 of at most 128 bytes, is not expired, and
// its exp, if any, is a time the clock can hold (the year 2255 at most).
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "access.hpp"
#include "fuzz_check.hpp"
#include "sluice/metrics.hpp"

namespace {

constexpr std::string_view kSecret = "fuzz-secret-fuzz-secret-fuzz-secret-0123";

std::string base64url(std::string_view in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  std::uint32_t bits = 0;
  int n = 0;
  for (const unsigned char c : in) {
    bits = (bits << 8) | c;
    n += 8;
    while (n >= 6) {
      n -= 6;
      out += kAlphabet[(bits >> n) & 63];
    }
  }
  if (n > 0) out += kAlphabet[(bits << (6 - n)) & 63];
  return out;
}

std::string hs256(std::string_view signed_part) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), kSecret.data(), static_cast<int>(kSecret.size()),
       reinterpret_cast<const unsigned char*>(signed_part.data()), signed_part.size(), mac, &len);
  return std::string(reinterpret_cast<const char*>(mac), len);
}

const sluice::relay::Access& access() {
  static const sluice::RelayConfig config = [] {
    sluice::RelayConfig c;
    c.jwt_hs256_secret = std::string(kSecret);
    return c;
  }();
  static const sluice::relay::Access a(config);
  return a;
}

void check(const sluice::relay::Outcome<sluice::relay::Who>& who) {
  using sluice::relay::RefusalKind;
  if (!who) {
    FUZZ_CHECK(who.refusal().kind == RefusalKind::unauthenticated);
    FUZZ_CHECK(who.refusal().message.find(kSecret) == std::string::npos);
    return;
  }
  const auto& principal = **who;
  FUZZ_CHECK(!principal.name().empty() && principal.name().size() <= 128);
  FUZZ_CHECK(sluice::metrics::valid_utf8(principal.name()) == principal.name());
  if (principal.expires()) {
    FUZZ_CHECK(*principal.expires() > std::chrono::system_clock::now());
    FUZZ_CHECK(*principal.expires() <=
               std::chrono::system_clock::time_point(std::chrono::seconds(9'000'000'000)));
    (void)sluice::relay::steady_expiry(principal);  // (converts between clocks: no overflow)
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view claims(reinterpret_cast<const char*>(data), size);
  const std::string signed_part =
      base64url(R"({"alg":"HS256","typ":"JWT"})") + "." + base64url(claims);
  const std::string token = signed_part + "." + base64url(hs256(signed_part));
  check(access().authenticate(token));

  // The bytes as a token of their own (no valid signature can be in them): refused.
  const auto forged = access().authenticate(claims);
  if (!claims.empty()) FUZZ_CHECK(!forged);
  check(forged);
  return 0;
}

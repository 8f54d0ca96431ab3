#include "access.hpp"

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <utility>

#include "sluice/metrics.hpp"

namespace sluice::relay {

namespace {

// The segment of `s` starting at `pos`, and where the next one starts (npos after the last).
std::pair<std::string_view, std::size_t> segment(std::string_view s, std::size_t pos) {
  const std::size_t dot = s.find('.', pos);
  if (dot == std::string_view::npos) return {s.substr(pos), std::string_view::npos};
  return {s.substr(pos, dot - pos), dot + 1};
}

std::array<unsigned char, 32> sha256(std::string_view bytes) {
  std::array<unsigned char, 32> out{};
  unsigned int n = 0;
  EVP_Digest(bytes.data(), bytes.size(), out.data(), &n, EVP_sha256(), nullptr);
  return out;
}

std::array<unsigned char, 32> from_hex(std::string_view hex) {
  std::array<unsigned char, 32> out{};
  const auto nibble = [](char c) {
    return static_cast<unsigned char>(c <= '9' ? c - '0' : c - 'a' + 10);
  };
  for (std::size_t i = 0; i < out.size() && 2 * i + 1 < hex.size(); ++i)
    out[i] = static_cast<unsigned char>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  return out;
}

}  // namespace

std::string_view to_string(Action action) noexcept {
  static constexpr std::array<std::string_view, kActions> kNames{"publish", "subscribe", "work",
                                                                 "stats"};
  return kNames[static_cast<std::size_t>(action)];
}

bool topic_matches(std::string_view pattern, std::string_view topic) noexcept {
  std::size_t p = 0;
  std::size_t t = 0;
  while (p != std::string_view::npos && t != std::string_view::npos) {
    const auto [want, next_p] = segment(pattern, p);
    if (want == ">") return true;  // the rest: one segment or more (there is one here)
    const auto [got, next_t] = segment(topic, t);
    if (want != "*" && want != got) return false;
    p = next_p;
    t = next_t;
  }
  return p == std::string_view::npos && t == std::string_view::npos;
}

Principal::Principal(std::string name, const PrincipalConfig& permissions, Expiry expires)
    : name_(std::move(name)), expires_(expires) {
  const std::array<const std::vector<std::string>*, kActions> lists{
      &permissions.publish, &permissions.subscribe, &permissions.work, &permissions.stats};
  for (std::size_t a = 0; a < kActions; ++a) {
    for (const auto& pattern : *lists[a]) {
      if (!pattern.empty() && pattern.front() == '!')
        deny_[a].push_back(pattern.substr(1));
      else
        allow_[a].push_back(pattern);
    }
  }
}

std::shared_ptr<const Principal> Principal::everyone() {
  static const std::shared_ptr<const Principal> all = [] {
    std::shared_ptr<Principal> p(new Principal());
    p->name_ = "anonymous";
    p->everything_ = true;
    return p;
  }();
  return all;
}

bool Principal::may(Action action, std::string_view topic) const {
  if (everything_) return true;
  const auto a = static_cast<std::size_t>(action);
  const auto matches = [topic](const std::string& pattern) {
    return topic_matches(pattern, topic);
  };
  return std::ranges::none_of(deny_[a], matches) && std::ranges::any_of(allow_[a], matches);
}

bool Principal::may_any(Action action) const {
  return everything_ || !allow_[static_cast<std::size_t>(action)].empty();
}

// Signed tokens (JWS compact form, RFC 7515/7519). Why not a JWT library: Debian 12's libjwt
// (1.10) has no EdDSA; what remains here is splitting the token and base64url, while every
// signature check is OpenSSL's (HMAC, EVP_DigestVerify). The header's `alg` must be the one
// the configured key is for: a token cannot choose how it is checked ("none", or HS256 with
// the public key as the secret, are refused).
struct Access::Key {
  EVP_PKEY* pkey = nullptr;
  std::string alg;  // "ES256" or "EdDSA"
  Key() = default;
  Key(const Key&) = delete;
  Key& operator=(const Key&) = delete;
  Key(Key&&) = delete;
  Key& operator=(Key&&) = delete;
  ~Key() { EVP_PKEY_free(pkey); }
};

namespace {

std::optional<std::string> base64url(std::string_view in) {
  std::string b64(in);
  for (auto& ch : b64) {
    if (ch == '-')
      ch = '+';
    else if (ch == '_')
      ch = '/';
    else if (ch == '+' || ch == '/' || ch == '=')
      return std::nullopt;
  }
  const std::size_t pad = (4 - b64.size() % 4) % 4;
  if (pad == 3) return std::nullopt;
  b64.append(pad, '=');
  std::string out(b64.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(b64.data()),
                                static_cast<int>(b64.size()));
  if (n < 0) return std::nullopt;
  out.resize(static_cast<std::size_t>(n) - pad);
  return out;
}

bool verify_hs256(const std::string& secret, std::string_view signed_part, std::string_view sig) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
  unsigned int n = 0;
  if (HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
           reinterpret_cast<const unsigned char*>(signed_part.data()), signed_part.size(),
           mac.data(), &n) == nullptr)
    return false;
  return sig.size() == n && CRYPTO_memcmp(mac.data(), sig.data(), n) == 0;
}

bool verify_pkey(EVP_PKEY* key, bool ecdsa, std::string_view signed_part, std::string_view sig) {
  std::string der;
  if (ecdsa) {  // JWS carries r || s (32 bytes each); OpenSSL verifies DER
    if (sig.size() != 64) return false;
    ECDSA_SIG* s = ECDSA_SIG_new();
    BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(sig.data()), 32, nullptr);
    BIGNUM* ss = BN_bin2bn(reinterpret_cast<const unsigned char*>(sig.data()) + 32, 32, nullptr);
    ECDSA_SIG_set0(s, r, ss);
    unsigned char* out = nullptr;
    const int len = i2d_ECDSA_SIG(s, &out);
    if (len > 0) der.assign(reinterpret_cast<const char*>(out), static_cast<std::size_t>(len));
    OPENSSL_free(out);
    ECDSA_SIG_free(s);
    sig = der;
  }
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ok =
      EVP_DigestVerifyInit(ctx, nullptr, ecdsa ? EVP_sha256() : nullptr, nullptr, key) == 1 &&
      EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                       reinterpret_cast<const unsigned char*>(signed_part.data()),
                       signed_part.size()) == 1;
  EVP_MD_CTX_free(ctx);
  return ok;
}

Refusal bad_token(const std::string& why) {
  return Refusal{RefusalKind::unauthenticated, "signed token refused: " + why};
}

}  // namespace

Access::~Access() = default;

Access::Access(const RelayConfig& config) : config_(config), signed_(config.signed_tokens()) {
  if (!config.jwt_public_key_file.empty()) {
    FILE* f = std::fopen(config.jwt_public_key_file.c_str(), "r");
    EVP_PKEY* pkey = f != nullptr ? PEM_read_PUBKEY(f, nullptr, nullptr, nullptr) : nullptr;
    if (f != nullptr) std::fclose(f);
    const int type = pkey != nullptr ? EVP_PKEY_get_base_id(pkey) : 0;
    if (type != EVP_PKEY_EC && type != EVP_PKEY_ED25519) {
      EVP_PKEY_free(pkey);
      throw std::runtime_error("relay: auth.jwt_public_key_file (SLUICE_JWT_PUBLIC_KEY_FILE) " +
                               config.jwt_public_key_file +
                               " is not a PEM public key for ES256 (P-256) or Ed25519");
    }
    key_ = std::make_unique<Key>();
    key_->pkey = pkey;
    key_->alg = type == EVP_PKEY_EC ? "ES256" : "EdDSA";
  }
  for (const auto& p : config.principals) {
    Entry e;
    e.anonymous = p.token_sha256.empty() && p.certificate_cn.empty();
    e.certificate_cn = p.certificate_cn;
    if (!p.token_sha256.empty()) e.sha256 = from_hex(p.token_sha256);
    e.who = std::make_shared<const Principal>(p.name, p);
    principals_.push_back(std::move(e));
  }
}

std::string_view Access::bearer_token(std::string_view authorization) {
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size()) return {};
  for (std::size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != kScheme[i]) return {};
  }
  return authorization.substr(kScheme.size());
}

Outcome<Who> Access::authenticate(std::string_view token, std::string_view certificate_cn) const {
  if (open()) return Principal::everyone();
  if (token.empty() && !certificate_cn.empty()) {
    for (const auto& e : principals_) {
      if (!e.certificate_cn.empty() && e.certificate_cn == certificate_cn) return e.who;
    }
  }
  if (signed_ && std::count(token.begin(), token.end(), '.') == 2) return verify_signed(token);
  if (token.empty()) {
    for (const auto& e : principals_) {
      if (e.anonymous) return e.who;
    }
    return Refusal{RefusalKind::unauthenticated,
                   "a token is required (Authorization: Bearer, gRPC metadata authorization, "
                   "or the WebSocket subprotocol sluice.bearer.<token>)"};
  }
  // Compared with every principal's hash, each in constant time: the time taken says nothing
  // about how much of a token was right.
  const auto presented = sha256(token);
  Who found;
  for (const auto& e : principals_) {
    const bool has_token = e.sha256 != std::array<unsigned char, 32>{};
    if (has_token && CRYPTO_memcmp(presented.data(), e.sha256.data(), presented.size()) == 0)
      found = e.who;
  }
  if (found) return found;
  return Refusal{RefusalKind::unauthenticated, "the token presented names no principal"};
}

Outcome<Who> Access::verify_signed(std::string_view token) const {
  const auto dot1 = token.find('.');
  const auto dot2 = token.find('.', dot1 + 1);
  const auto header = base64url(token.substr(0, dot1));
  const auto payload = base64url(token.substr(dot1 + 1, dot2 - dot1 - 1));
  const auto sig = base64url(token.substr(dot2 + 1));
  if (!header || !payload || !sig) return bad_token("not base64url");
  const auto h = nlohmann::json::parse(*header, nullptr, false);
  const auto claims = nlohmann::json::parse(*payload, nullptr, false);
  if (!h.is_object() || !claims.is_object() || !h.contains("alg") || !h["alg"].is_string())
    return bad_token("malformed header or claims");
  const std::string alg = h["alg"].get<std::string>();
  const std::string_view signed_part = token.substr(0, dot2);
  bool valid = false;
  if (alg == "HS256" && !config_.jwt_hs256_secret.empty()) {
    valid = verify_hs256(config_.jwt_hs256_secret, signed_part, *sig);
  } else if (key_ && alg == key_->alg) {
    valid = verify_pkey(key_->pkey, alg == "ES256", signed_part, *sig);
  } else {
    return bad_token("alg " + alg.substr(0, 20) + " is not one this relay accepts");
  }
  if (!valid) return bad_token("bad signature");
  const auto now = std::chrono::system_clock::now();
  // A NumericDate (RFC 7519: seconds since 1970) as a time, if it is one: 0 to 9e9 (the year
  // 2255; the clock, in nanoseconds, ends in 2262 and a time past it would wrap around).
  const auto at =
      [](const nlohmann::json& v) -> std::optional<std::chrono::system_clock::time_point> {
    if (!v.is_number()) return std::nullopt;
    const double seconds = v.get<double>();
    if (!(seconds >= 0 && seconds <= 9e9)) return std::nullopt;
    return std::chrono::system_clock::time_point(
        std::chrono::seconds(static_cast<std::int64_t>(seconds)));
  };
  constexpr const char* kTimes = " is not a time (seconds since 1970, 0 to 9000000000)";
  Principal::Expiry expires;
  if (claims.contains("exp")) {
    expires = at(claims["exp"]);
    if (!expires) return bad_token(std::string("exp") + kTimes);
    if (*expires <= now) return bad_token("expired");
  }
  if (claims.contains("nbf")) {
    const auto from = at(claims["nbf"]);
    if (!from) return bad_token(std::string("nbf") + kTimes);
    if (*from > now) return bad_token("not valid yet (nbf)");
  }
  if (!config_.jwt_issuer.empty() &&
      (!claims.contains("iss") || claims["iss"] != config_.jwt_issuer))
    return bad_token("issuer is not auth.jwt_issuer");
  if (!claims.contains("sub") || !claims["sub"].is_string() ||
      claims["sub"].get<std::string>().empty())
    return bad_token("no sub (the principal's name)");
  PrincipalConfig permissions;
  if (claims.contains("sluice")) {
    const auto& s = claims["sluice"];
    if (!s.is_object()) return bad_token("the sluice claim is not an object");
    const std::array<std::pair<const char*, std::vector<std::string>*>, kActions> lists{{
        {"publish", &permissions.publish},
        {"subscribe", &permissions.subscribe},
        {"work", &permissions.work},
        {"stats", &permissions.stats},
    }};
    for (const auto& [key, list] : lists) {
      if (!s.contains(key)) continue;
      if (!s[key].is_array()) return bad_token(std::string("sluice.") + key + " is not a list");
      for (const auto& p : s[key]) {
        if (!p.is_string()) return bad_token(std::string("sluice.") + key + " holds a non-string");
        const std::string pattern = p.get<std::string>();
        const std::string_view bare = !pattern.empty() && pattern.front() == '!'
                                          ? std::string_view(pattern).substr(1)
                                          : std::string_view(pattern);
        if (const auto problem = topic_pattern_problem(bare); !problem.empty())
          return bad_token(std::string("sluice.") + key + ": " + problem);
        list->push_back(pattern);
      }
    }
  }
  return std::make_shared<const Principal>(
      metrics::valid_utf8(claims["sub"].get<std::string>(), 128), permissions, expires);
}

std::optional<std::chrono::steady_clock::time_point> steady_expiry(const Principal& who) {
  if (!who.expires()) return std::nullopt;
  const auto left = *who.expires() - std::chrono::system_clock::now();
  return std::chrono::steady_clock::now() +
         std::chrono::duration_cast<std::chrono::steady_clock::duration>(left);
}

Refusal token_expired(const Principal& who) {
  return Refusal{RefusalKind::unauthenticated,
                 "the token of principal '" + who.name() + "' expired", "", "token expired"};
}

std::optional<Refusal> Access::check(const Principal& who, Action action, std::string_view topic) {
  if (who.may(action, topic)) return std::nullopt;
  return Refusal{RefusalKind::permission_denied, "principal '" + who.name() + "' may not " +
                                                     std::string(to_string(action)) + " topic '" +
                                                     std::string(topic.substr(0, 200)) + "'"};
}

}  // namespace sluice::relay

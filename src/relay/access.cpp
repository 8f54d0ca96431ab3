#include "access.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <utility>

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

Principal::Principal(std::string name, const PrincipalConfig& permissions)
    : name_(std::move(name)) {
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
  for (const auto& d : deny_[a]) {
    if (topic_matches(d, topic)) return false;
  }
  for (const auto& p : allow_[a]) {
    if (topic_matches(p, topic)) return true;
  }
  return false;
}

bool Principal::may_any(Action action) const {
  return everything_ || !allow_[static_cast<std::size_t>(action)].empty();
}

Access::Access(const RelayConfig& config) {
  for (const auto& p : config.principals) {
    Entry e;
    e.anonymous = p.token_sha256.empty();
    if (!e.anonymous) e.sha256 = from_hex(p.token_sha256);
    e.who = std::make_shared<const Principal>(p.name, p);
    principals_.push_back(std::move(e));
  }
}

Outcome<Who> Access::authenticate(std::string_view token) const {
  if (open()) return Principal::everyone();
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
    if (!e.anonymous && CRYPTO_memcmp(presented.data(), e.sha256.data(), presented.size()) == 0)
      found = e.who;
  }
  if (found) return found;
  return Refusal{RefusalKind::unauthenticated, "the token presented names no principal"};
}

std::optional<Refusal> Access::check(const Principal& who, Action action, std::string_view topic) {
  if (who.may(action, topic)) return std::nullopt;
  return Refusal{RefusalKind::permission_denied, "principal '" + who.name() + "' may not " +
                                                     std::string(to_string(action)) + " topic '" +
                                                     std::string(topic.substr(0, 200)) + "'"};
}

}  // namespace sluice::relay

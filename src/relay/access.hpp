// Who a client is and what it may do (relay-internal; docs/security.md). Every transport
// authenticates a client with authenticate() (the bearer token it presented: gRPC
// `authorization` metadata; HTTP `Authorization` header, the WebSocket subprotocol
// `sluice.bearer.<token>`, or the `token` query parameter when server.token_in_query is on; or
// the common name of a gRPC client's certificate under mutual TLS),
// and every role checks its action on its topic with check() when it joins; the refusals are
// values (unauthenticated, permission_denied) that each transport tells in its own terms.
//
// With no [[principal]] configured the relay is open: everyone is the anonymous principal,
// allowed everything (config loading refuses that on a non-loopback address unless
// server.allow_anonymous_on_network is set). Otherwise a client without a token is the
// principal configured without one, if any; a token is compared with every principal's
// SHA-256 in constant time. Messages name the principal, the action and the topic; never a
// token.
//
// Thread-safety: immutable after construction; any thread.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "outcome.hpp"
#include "refusal.hpp"
#include "sluice/relay/config.hpp"

namespace sluice::relay {

enum class Action : std::uint8_t { publish, subscribe, work, stats };
inline constexpr std::size_t kActions = 4;
std::string_view to_string(Action action) noexcept;

/// Does `topic` match `pattern` ('.'-separated segments; `*` one segment, `>` the rest)?
bool topic_matches(std::string_view pattern, std::string_view topic) noexcept;

class Principal {
 public:
  using Expiry = std::optional<std::chrono::system_clock::time_point>;
  Principal(std::string name, const PrincipalConfig& permissions, Expiry expires = std::nullopt);
  /// The open relay's anonymous principal: everything allowed.
  static std::shared_ptr<const Principal> everyone();

  const std::string& name() const { return name_; }
  /// When a signed token's principal stops being one (its `exp`): its sessions end then.
  const Expiry& expires() const { return expires_; }
  /// May this principal do `action` on `topic`? (a denial wins over any allowance)
  bool may(Action action, std::string_view topic) const;
  /// May it do `action` on some topic? (e.g. read /metrics at all)
  bool may_any(Action action) const;

 private:
  Principal() = default;
  std::string name_;
  Expiry expires_;
  bool everything_ = false;
  std::array<std::vector<std::string>, kActions> allow_;
  std::array<std::vector<std::string>, kActions> deny_;
};

using Who = std::shared_ptr<const Principal>;

/// When `who`'s token expires, on the steady clock (none: it does not).
std::optional<std::chrono::steady_clock::time_point> steady_expiry(const Principal& who);
/// What ends a session whose token expired (unauthenticated).
Refusal token_expired(const Principal& who);

class Access {
 public:
  /// `config` must outlive this. Throws std::runtime_error if the configured public key
  /// cannot be read.
  explicit Access(const RelayConfig& config);
  ~Access();
  Access(const Access&) = delete;
  Access& operator=(const Access&) = delete;
  Access(Access&&) = delete;
  Access& operator=(Access&&) = delete;

  /// No principal and no signed tokens configured: everyone may do everything.
  bool open() const { return principals_.empty() && !signed_; }
  /// The principal `token` names ("": none was presented), or unauthenticated. A token of
  /// three base64url parts is a signed token (JWT): HS256, ES256 or EdDSA, as configured, its
  /// `alg` the key's; `exp` and `nbf` are checked, `iss` if configured; `sub` is the principal
  /// and the claim `sluice` ({"publish": [patterns], ...}) its permissions.
  /// A client without a token whose verified TLS certificate has the common name
  /// `certificate_cn` is the principal configured with that certificate_cn, if any.
  Outcome<Who> authenticate(std::string_view token, std::string_view certificate_cn = {}) const;
  /// The token in an `Authorization` value ("Bearer <token>", the scheme in any case), else
  /// "". Both transports' headers are read by this one rule.
  static std::string_view bearer_token(std::string_view authorization);
  /// nullopt if `who` may do `action` on `topic`, else permission_denied naming them.
  static std::optional<Refusal> check(const Principal& who, Action action, std::string_view topic);

 private:
  struct Entry {
    std::array<unsigned char, 32> sha256{};
    bool anonymous = false;
    std::string certificate_cn;
    Who who;
  };
  Outcome<Who> verify_signed(std::string_view token) const;

  std::vector<Entry> principals_;
  const RelayConfig& config_;
  bool signed_ = false;
  struct Key;
  std::unique_ptr<Key> key_;  // the public key (ES256 or Ed25519), if configured
};

}  // namespace sluice::relay

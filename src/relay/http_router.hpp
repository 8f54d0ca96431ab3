// What the relay's HTTP port answers (relay-internal): GET /metrics, /healthz and /v1/stats;
// which WebSocket endpoint an upgrade asks for; the query parameters of a target; a refusal
// as an HTTP response (the status from the refusal table). Routing only: the sessions are
// the roles' (publish_session, subscriber_pump, worker_session) and the transports'.
//
// Thread-safety: HttpRouter::get() from any thread (the registries lock themselves); the
// rest are plain functions over values.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "access.hpp"
#include "http_server.hpp"
#include "outcome.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay/protocol.hpp"
#include "topic_registry.hpp"

namespace sluice::relay {

/// A request target split into its path and its query ("a=1&b=2").
struct HttpTarget {
  std::string path;
  std::string query;
  static HttpTarget parse(std::string_view target);
  /// The URL-decoded value of `key` in the query; empty if absent.
  std::string param(std::string_view key) const;
  /// `key` as a whole number from 1 to `max`; 0 if absent; bad_request naming `key` and the
  /// range (`range` says it in words) otherwise.
  Outcome<std::uint64_t> count(std::string_view key, std::uint64_t max,
                               std::string_view range) const;
};

/// A comma-separated header value's items, trimmed ("a, b" -> {"a", "b"}).
std::vector<std::string_view> header_items(std::string_view value);

/// "%41+b" -> "A b".
std::string url_decode(std::string_view in);

/// The WebSocket endpoints: /v1/ws/{publish,subscribe,work}/{topic}, and /v1/ws/stats.
enum class WsEndpoint : std::uint8_t { publish, subscribe, work, stats };
struct WsRoute {
  WsEndpoint endpoint = WsEndpoint::publish;
  std::string topic;  // decoded (none for stats)
  Who who;            // who asks (http_caller)
  // The frames' header: ?header=16 (the default) or 24 (with the items' flags).
  std::size_t frame_header_bytes = ws::kFrameHeaderBytes;
};
/// The endpoint `target` names, or not_found listing the endpoints.
Outcome<WsRoute> ws_route(const HttpTarget& target);

struct RelayCore;

/// A refusal before a WebSocket upgrade: its HTTP status, the message as the body and in the
/// header Sluice-Refusal (%-escaped; for clients that see only headers) (counted:
/// RelayCore::counted).
HttpResponse http_refusal(RelayCore& core, const Refusal& r);

/// Who makes an HTTP request or WebSocket upgrade, once a browser's request passes the checks
/// that keep other web pages out: its Host must be one the relay answers to (a loopback
/// literal, localhost, the address `peer` reached, server.names, or any with
/// server.allow_any_host: else misdirected, 421, against DNS rebinding), and its Origin, if
/// any, the relay's own or one of server.allowed_origins (else permission_denied, 403). Then
/// the token it presents (Authorization: Bearer, the subprotocol sluice.bearer.<token>, or on
/// a WebSocket upgrade ?token= when server.token_in_query) names the principal (else
/// unauthenticated, 401); a caller without a token whose verified client certificate has the
/// common name `peer.certificate_cn` (mutual TLS) is the principal configured with it.
Outcome<Who> http_caller(RelayCore& core, const HttpServer::Request& request,
                         const HttpTarget& target, const HttpPeer& peer);

class HttpRouter {
 public:
  /// `core` must outlive this.
  explicit HttpRouter(RelayCore& core) : core_(core) {}
  /// A GET request's answer: /healthz to anyone; /metrics and /v1/stats to a caller
  /// (http_caller) with stats permission, showing the topics it may see; else 404 naming them.
  HttpResponse answer(const HttpServer::Request& request, const HttpPeer& peer = {}) const;
  /// The answer to `who` for `target` (checks done).
  HttpResponse get(const HttpTarget& target, const Who& who) const;

 private:
  RelayCore& core_;
};

}  // namespace sluice::relay

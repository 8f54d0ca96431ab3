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

#include "http_server.hpp"
#include "outcome.hpp"
#include "sluice/metrics.hpp"
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

/// "%41+b" -> "A b".
std::string url_decode(std::string_view in);

/// The WebSocket endpoints: /v1/ws/{publish,subscribe,work}/{topic}.
enum class WsEndpoint : std::uint8_t { publish, subscribe, work };
struct WsRoute {
  WsEndpoint endpoint = WsEndpoint::publish;
  std::string topic;  // decoded
};
/// The endpoint `target` names, or not_found listing the endpoints.
Outcome<WsRoute> ws_route(const HttpTarget& target);

struct RelayCore;

/// A refusal before a WebSocket upgrade: its HTTP status, the message as the body (counted:
/// RelayCore::counted).
HttpResponse http_refusal(RelayCore& core, const Refusal& r);

class HttpRouter {
 public:
  /// Both must outlive this.
  HttpRouter(const metrics::Registry& metrics, const TopicRegistry& topics)
      : metrics_(metrics), topics_(topics) {}
  /// A GET request's answer: /metrics, /healthz, /v1/stats, or 404 naming them.
  HttpResponse get(const HttpTarget& target) const;

 private:
  const metrics::Registry& metrics_;
  const TopicRegistry& topics_;
};

}  // namespace sluice::relay

#include "http_router.hpp"

#include <cctype>
#include <cstdlib>

#include "relay_core.hpp"
#include "stats_view.hpp"

namespace sluice::relay {

HttpTarget HttpTarget::parse(std::string_view target) {
  const auto qmark = target.find('?');
  if (qmark == std::string_view::npos) return {std::string(target), {}};
  return {std::string(target.substr(0, qmark)), std::string(target.substr(qmark + 1))};
}

std::string HttpTarget::param(std::string_view key) const {
  std::string_view q = query;
  while (!q.empty()) {
    const auto amp = q.find('&');
    const auto pair = q.substr(0, amp);
    if (const auto eq = pair.find('='); eq != std::string_view::npos && pair.substr(0, eq) == key)
      return url_decode(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
  }
  return {};
}

Outcome<std::uint64_t> HttpTarget::count(std::string_view key, std::uint64_t max,
                                         std::string_view range) const {
  const std::string text = param(key);
  if (text.empty()) return std::uint64_t{0};
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (end == text.c_str() || *end != '\0' || text[0] == '-' || v == 0 || v > max) {
    return Refusal{RefusalKind::bad_request,
                   std::string(key) + " '" + text.substr(0, 20) + "': a whole number from 1 to " +
                       std::string(range),
                   ""};
  }
  return std::uint64_t{v};
}

std::string url_decode(std::string_view in) {
  std::string out;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size() &&
        std::isxdigit(static_cast<unsigned char>(in[i + 1])) != 0 &&
        std::isxdigit(static_cast<unsigned char>(in[i + 2])) != 0) {
      out.push_back(static_cast<char>(std::stoi(std::string(in.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(in[i] == '+' ? ' ' : in[i]);
    }
  }
  return out;
}

Outcome<WsRoute> ws_route(const HttpTarget& target) {
  struct Prefix {
    std::string_view path;
    WsEndpoint endpoint;
  };
  constexpr Prefix kEndpoints[] = {{"/v1/ws/publish/", WsEndpoint::publish},
                                   {"/v1/ws/subscribe/", WsEndpoint::subscribe},
                                   {"/v1/ws/work/", WsEndpoint::work}};
  const std::string_view path = target.path;
  for (const auto& e : kEndpoints) {
    if (path.starts_with(e.path))
      return WsRoute{e.endpoint, url_decode(path.substr(e.path.size()))};
  }
  return Refusal{RefusalKind::not_found,
                 "no WebSocket endpoint at " + std::string(path.substr(0, 200)) +
                     " (try /v1/ws/publish/{topic}, /v1/ws/subscribe/{topic}?name=...&depth=... "
                     "or /v1/ws/work/{topic}?name=...&concurrency=...)",
                 ""};
}

HttpResponse http_refusal(RelayCore& core, const Refusal& r) {
  core.counted(r);
  return {codes(r.kind).http_status, "text/plain; charset=utf-8", r.message + "\n"};
}

HttpResponse HttpRouter::get(const HttpTarget& target) const {
  if (target.path == "/metrics")
    return {200, "text/plain; version=0.0.4; charset=utf-8", metrics_.prometheus_text()};
  if (target.path == "/healthz") return {200, "text/plain; charset=utf-8", "ok\n"};
  if (target.path == "/v1/stats") return {200, "application/json", stats_json(topics_)};
  return {404, "text/plain; charset=utf-8",
          "not found: " + target.path.substr(0, 200) + " (try /metrics, /healthz, /v1/stats)\n"};
}

}  // namespace sluice::relay

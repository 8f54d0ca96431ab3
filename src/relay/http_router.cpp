#include "http_router.hpp"

#include <algorithm>
#include <array>
#include <boost/asio/ip/address.hpp>
#include <cctype>
#include <cstdlib>

#include "relay_core.hpp"
#include "stats_view.hpp"
#include "web_assets.hpp"

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

std::vector<std::string_view> header_items(std::string_view value) {
  std::vector<std::string_view> items;
  std::size_t pos = 0;
  while (pos < value.size()) {
    const std::size_t comma = std::min(value.find(',', pos), value.size());
    std::string_view item = value.substr(pos, comma - pos);
    while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
    while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
    if (!item.empty()) items.push_back(item);
    pos = comma + 1;
  }
  return items;
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
  constexpr std::array<Prefix, 3> kEndpoints = {{{"/v1/ws/publish/", WsEndpoint::publish},
                                                 {"/v1/ws/subscribe/", WsEndpoint::subscribe},
                                                 {"/v1/ws/work/", WsEndpoint::work}}};
  const std::string_view path = target.path;
  if (path == "/v1/ws/stats") return WsRoute{WsEndpoint::stats, "", nullptr};
  for (const auto& e : kEndpoints) {
    if (!path.starts_with(e.path)) continue;
    WsRoute route{e.endpoint, url_decode(path.substr(e.path.size())), nullptr};
    if (const std::string header = target.param("header"); header == "24") {
      route.frame_header_bytes = ws::kFlaggedFrameHeaderBytes;
    } else if (!header.empty() && header != "16") {
      return Refusal{RefusalKind::bad_request,
                     "query parameter 'header' must be 16 (frame_index, timestamp_ns) or 24 "
                     "(frame_index, timestamp_ns, flags, reserved)",
                     "header"};
    }
    return route;
  }
  return Refusal{RefusalKind::not_found,
                 "no WebSocket endpoint at " + std::string(path.substr(0, 200)) +
                     " (try /v1/ws/publish/{topic}, /v1/ws/subscribe/{topic}?name=...&depth=..., "
                     "/v1/ws/work/{topic}?name=...&concurrency=... or /v1/ws/stats?period_ms=...)",
                 ""};
}

HttpResponse http_refusal(RelayCore& core, const Refusal& r) {
  core.counted(r);
  // The message again in a header: a WebSocket client library that keeps only the answer's
  // status and headers (websockets before 14, for one) can still tell its user why. Bytes a
  // header may not carry are %XX, as is '%'.
  std::string header;
  for (const char c : r.message) {
    const auto b = static_cast<unsigned char>(c);
    if (b >= 0x20 && b < 0x7F && b != '%') {
      header += c;
    } else {
      static constexpr char kHex[] = "0123456789ABCDEF";
      header += {'%', kHex[b >> 4], kHex[b & 15]};
    }
  }
  return {codes(r.kind).http_status,
          "text/plain; charset=utf-8",
          r.message + "\n",
          {{"Sluice-Refusal", std::move(header)}}};
}

namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& ch : out) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

// The host of a Host header ("name:port", "[::1]:port"), lower case, without its port.
std::string host_of(std::string_view header) {
  if (!header.empty() && header.front() == '[') {
    const auto close = header.find(']');
    return lower(header.substr(1, close == std::string_view::npos ? close : close - 1));
  }
  return lower(header.substr(0, header.find(':')));
}

// Does a request addressed to `host` reach this relay by a name it answers to? A loopback
// literal, localhost, the address the connection reached (`local`: the bound address, or the
// one a wildcard bind was reached at), server.names — or anything with server.allow_any_host.
// Any other name or address is a page's DNS rebinding (or a misdirected request).
bool answers_to(const RelayConfig& config, const std::string& host, const std::string& local) {
  if (config.allow_any_host) return true;
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(host, ec);
  if (!ec && (address.is_loopback() || (!local.empty() && address.to_string() == local)))
    return true;
  if (!ec && address.is_v6() && address.to_v6().is_v4_mapped() &&
      address.to_v6().to_v4().is_loopback())
    return true;
  if (host == "localhost") return true;
  return std::ranges::any_of(config.server_names,
                             [&host](const std::string& name) { return lower(name) == host; });
}

// May a page of `origin` use the relay, addressed as `host_header`?
bool origin_allowed(const RelayConfig& config, const std::string& origin,
                    std::string_view host_header) {
  const std::string o = lower(origin);
  const std::string host = lower(host_header);
  if (o == "http://" + host || o == "https://" + host) return true;  // same origin
  return std::ranges::any_of(config.allowed_origins, [&o](const std::string& allowed) {
    const std::string a = lower(allowed);
    if (a == "*" || a == o) return true;
    if (a.size() <= 2 || a.compare(a.size() - 2, 2, ":*") != 0) return false;
    const std::string base = a.substr(0, a.size() - 2);  // any port, or none
    return o == base || (o.rfind(base + ":", 0) == 0 &&
                         o.find_first_not_of("0123456789", base.size() + 1) == std::string::npos);
  });
}

// The bearer token a request presents: Authorization, the sluice.bearer.* subprotocol, or
// ?token= when server.token_in_query allows it; empty if none.
std::string token_of(const RelayConfig& config, const HttpServer::Request& request,
                     const HttpTarget& target) {
  namespace http = boost::beast::http;
  const auto auth = request[http::field::authorization];
  if (const auto token = Access::bearer_token(std::string_view(auth.data(), auth.size()));
      !token.empty())
    return std::string(token);
  const auto protocols = request[http::field::sec_websocket_protocol];
  for (const auto p : header_items(std::string_view(protocols.data(), protocols.size()))) {
    if (p.rfind(ws::kBearerSubprotocol, 0) == 0)
      return std::string(p.substr(ws::kBearerSubprotocol.size()));
  }
  // (A WebSocket upgrade only: a browser cannot set its headers; any other request can.)
  if (config.token_in_query && boost::beast::websocket::is_upgrade(request))
    return target.param("token");
  return {};
}

}  // namespace

Outcome<Who> http_caller(RelayCore& core, const HttpServer::Request& request,
                         const HttpTarget& target, const HttpPeer& peer) {
  namespace http = boost::beast::http;
  const auto host_header = request[http::field::host];
  const std::string_view host_view(host_header.data(), host_header.size());
  if (!answers_to(core.config, host_of(host_view), peer.local_address)) {
    return Refusal{RefusalKind::misdirected,
                   (host_view.empty() ? std::string("a request without a Host header")
                                      : "this relay does not answer to host '" +
                                            std::string(host_view.substr(0, 100)) + "'") +
                       " (it answers to loopback, the address it was reached at and "
                       "server.names / SLUICE_SERVER_NAMES; server.allow_any_host)"};
  }
  const auto origin = request[http::field::origin];
  if (!origin.empty() && !origin_allowed(core.config, std::string(origin), host_view)) {
    return Refusal{RefusalKind::permission_denied,
                   "pages of origin '" + std::string(origin.substr(0, 100)) +
                       "' may not use this relay (server.allowed_origins / "
                       "SLUICE_ALLOWED_ORIGINS)"};
  }
  return core.access.authenticate(token_of(core.config, request, target), peer.certificate_cn);
}

namespace {

// The dashboard's files (web_assets.hpp), to anyone: they hold no data (the page asks for the
// stats with the caller's token). A policy keeps the page to this relay's own scripts.
// /view/{topic} is the viewer page (view.html), whatever the topic.
std::optional<HttpResponse> web_page(std::string_view path) {
  if (path.starts_with("/view/")) path = "/view.html";
  for (const auto& a : web_assets()) {
    if (a.path != path) continue;
    return HttpResponse{
        200,
        std::string(a.content_type),
        std::string(a.body),
        {{"Cache-Control", "no-cache"},
         {"X-Content-Type-Options", "nosniff"},
         {"Content-Security-Policy",
          "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' blob: data:; "
          "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"}}};
  }
  return std::nullopt;
}

}  // namespace

HttpResponse HttpRouter::answer(const HttpServer::Request& request, const HttpPeer& peer) const {
  const auto target =
      HttpTarget::parse(std::string_view(request.target().data(), request.target().size()));
  if (target.path == "/healthz") return {200, "text/plain; charset=utf-8", "ok\n"};
  if (auto page = web_page(target.path)) return std::move(*page);
  auto who = http_caller(core_, request, target, peer);
  if (!who) return http_refusal(core_, who.refusal());
  return get(target, *who);
}

HttpResponse HttpRouter::get(const HttpTarget& target, const Who& who) const {
  if (target.path == "/healthz") return {200, "text/plain; charset=utf-8", "ok\n"};
  if (target.path != "/metrics" && target.path != "/v1/stats") {
    return {404, "text/plain; charset=utf-8",
            "not found: " + target.path.substr(0, 200) +
                " (try /metrics, /healthz, /v1/stats, /view/{topic}; POST /v1/whep/{topic})\n"};
  }
  const auto reader = StatsReader::join(core_.topics, who);
  if (!reader) return http_refusal(core_, reader.refusal());
  if (target.path == "/metrics") {
    return {200, "text/plain; version=0.0.4; charset=utf-8",
            core_.metrics.prometheus_text(
                [&reader](const metrics::Labels& labels) { return reader->sees(labels); })};
  }
  return {200, "application/json", stats_text(reader->snapshot().json)};
}

}  // namespace sluice::relay

// The HTTP request path as the relay's HTTP server takes it: Beast's parser with the server's
// limits (8 KiB of headers, 8 KiB of body), then the target split into path and query, its
// parameters decoded, the WebSocket route chosen, the caller checked (Host, Origin, token) and
// the GET answered by the router of a real (idle) relay core that authenticates. Invariants: no
// crash, leak or exception; every answer has a status the relay documents and a body; a route's
// topic is what the path names, decoded.
#include <boost/beast/http.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "http_router.hpp"
#include "relay_core.hpp"

using namespace sluice::relay;
namespace http = boost::beast::http;

namespace {

// An idle core that authenticates: a principal with a token, and HS256 signed tokens, so that
// the tokens' parsing (bearer headers, subprotocols, JWTs) is fuzzed too.
RelayCore& core() {
  static auto* c = [] {
    sluice::RelayConfig config;
    config.threads = 1;
    sluice::PrincipalConfig p;
    p.name = "fuzz";
    p.token_sha256 = sluice::token_sha256("fuzz-token");
    p.subscribe = {"camera.>", "!camera.private"};
    p.stats = {">"};
    config.principals.push_back(p);
    config.jwt_hs256_secret = "a-secret-of-at-least-thirty-two-bytes";
    return new RelayCore(config);
  }();
  return *c;
}

void route(std::string_view raw_target) {
  const HttpTarget target = HttpTarget::parse(raw_target);
  FUZZ_CHECK(target.path.size() + target.query.size() <= raw_target.size());
  (void)target.param("name");
  (void)target.count("depth", 1024, "1 to 1024");
  if (auto r = ws_route(target)) {
    FUZZ_CHECK(r->topic.size() <= target.path.size());
  } else {
    FUZZ_CHECK(r.refusal().kind == RefusalKind::not_found);
  }
  static const HttpRouter router(core());
  const HttpResponse answer = router.get(target, Principal::everyone());
  FUZZ_CHECK(answer.status == 200 || answer.status == 400 || answer.status == 404);
  FUZZ_CHECK(!answer.body.empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // A whole request first (request line, headers, body), as the server parses it...
  http::request_parser<http::string_body> parser;
  parser.header_limit(8 * 1024);
  parser.body_limit(std::uint64_t{8} * 1024);
  boost::beast::error_code ec;
  parser.eager(true);
  parser.put(boost::asio::buffer(data, size), ec);
  if (!ec && parser.is_header_done()) {
    const auto target = parser.get().target();
    route(std::string_view(target.data(), target.size()));
    // The checks on who asks (Host, Origin, the token's three places), then the answer.
    const auto who = http_caller(core(), parser.get(),
                                 HttpTarget::parse(std::string_view(target.data(), target.size())),
                                 HttpPeer{"", "127.0.0.1", "127.0.0.1"});
    if (!who) {
      const auto kind = who.refusal().kind;
      FUZZ_CHECK(kind == RefusalKind::misdirected || kind == RefusalKind::permission_denied ||
                 kind == RefusalKind::unauthenticated);
      // (an authentication refusal never quotes a token; the Host and Origin refusals quote
      // the header they refuse, which is no credential)
      if (kind == RefusalKind::unauthenticated)
        FUZZ_CHECK(who.refusal().message.find("fuzz-token") == std::string::npos);
    }
    const HttpResponse answer =
        HttpRouter(core()).answer(parser.get(), HttpPeer{"", "127.0.0.1", "127.0.0.1"});
    FUZZ_CHECK(answer.status != 0 && !answer.body.empty());
  }
  // ...and the bytes as a target alone (what the router sees once a request parses).
  route(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}

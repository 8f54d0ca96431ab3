// A WebSocket upgrade on the relay's HTTP port: which endpoint it asks for, a session slot,
// then the role's adapter (ws_publish.cpp, ws_subscribe.cpp, ws_work.cpp), which starts the
// session or refuses the upgrade. Every refusal is an HTTP response from the refusal table.
#include "ws_upgrade.hpp"

#include "ws_session.hpp"

namespace sluice::relay {

std::optional<HttpResponse> ws_upgrade(RelayCore& core, Connection& connection,
                                       HttpServer::Request& request, const HttpPeer& peer) {
  const auto target =
      HttpTarget::parse(std::string_view(request.target().data(), request.target().size()));
  auto who = http_caller(core, request, target, peer);
  if (!who) return http_refusal(core, who.refusal());
  auto route = ws_route(target);
  if (!route) return http_refusal(core, route.refusal());
  route->who = std::move(*who);
  // (A stats stream counts as a subscriber.)
  static constexpr SessionRole kRoles[] = {SessionRole::publisher, SessionRole::subscriber,
                                           SessionRole::worker,
                                           SessionRole::subscriber};  // by WsEndpoint
  boost::system::error_code ec;
  const auto address = connection.socket.remote_endpoint(ec);
  auto slot = core.admission.admit(kRoles[static_cast<std::size_t>(route->endpoint)],
                                   ec ? std::string("?") : address.address().to_string());
  if (!slot) return http_refusal(core, slot.refusal());
  switch (route->endpoint) {
    case WsEndpoint::publish:
      return ws_publish(core, std::move(*slot), *route, target, connection, request);
    case WsEndpoint::subscribe:
      return ws_subscribe(core, std::move(*slot), *route, target, connection, request);
    case WsEndpoint::work:
      return ws_work(core, std::move(*slot), *route, target, connection, request);
    case WsEndpoint::stats:
      return ws_stats(core, std::move(*slot), *route, target, connection, request);
  }
  return http_refusal(core, {RefusalKind::not_found, "no such WebSocket endpoint"});
}

}  // namespace sluice::relay

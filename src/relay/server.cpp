// The relay (RelayServer): its shared core (relay_core.hpp), the gRPC service over it
// (grpc_service.hpp) and the HTTP port (HttpRouter, with the WebSocket upgrade); starts and
// stops them.
#include "sluice/relay/server.hpp"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <sys/resource.h>

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include "event_log.hpp"
#include "grpc_log.hpp"
#include "grpc_service.hpp"
#include "http_router.hpp"
#include "http_server.hpp"
#include "nats_bridge.hpp"
#include "process_metrics.hpp"
#include "relay_core.hpp"
#include "request_decode.hpp"
#include "stats_view.hpp"
#include "tls.hpp"
#include "whep.hpp"
#include "ws_upgrade.hpp"

namespace sluice {

struct RelayServer::Impl {
  explicit Impl(RelayConfig c) : core(std::move(c)) {}
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  Impl(Impl&&) = delete;
  Impl& operator=(Impl&&) = delete;
  // The loops stop first; the acceptor goes while its io_context exists; the core (with the
  // loops and the sessions their handlers hold) last.
  ~Impl() {
    whep.stop();
    if (bridge) bridge->stop();
    core.loops.stop();
    http.reset();
    bridge.reset();
  }

  // Times out frames the stages' workers hold too long, and removes idle topics; every 100 ms
  // on the main loop.
  void poll_stages() {
    for (const auto& st : core.topics.stages()) st->poll();
    const auto now = std::chrono::steady_clock::now();
    core.topics.remove_idle(now);
    if (tls.enabled() && now >= next_certificate_check) {
      next_certificate_check = now + std::chrono::seconds(1);
      if (tls.files_changed()) {
        const auto problem = reload_certificates();
        if (problem.empty()) {
          relay::log::event(relay::log::Level::info, "certificates_reloaded",
                            {{"cause", "files_changed"}});
        } else {
          relay::log::event(relay::log::Level::warn, "certificates_not_reloaded",
                            {{"cause", "files_changed"}, {"why", problem}});
        }
      }
    }
    core.loops.main().at(std::chrono::steady_clock::now() + std::chrono::milliseconds(100),
                         [this] { poll_stages(); });
  }

  // An accept failed: counted by reason, and told on stderr at most once every 10 s (a
  // relay out of descriptors fails every accept).
  void accept_failed(const std::string& reason) {
    core.metrics
        .counter("sluice_accept_errors_total",
                 "Connections the HTTP port could not accept, by reason (retried after 100 ms)",
                 {{"reason", reason}})
        .inc();
    const auto now = std::chrono::steady_clock::now();
    if (now - last_accept_log < std::chrono::seconds(10)) return;  // (main loop only)
    last_accept_log = now;
    relay::log::event(relay::log::Level::error, "accept_error",
                      {{"reason", reason},
                       {"retry_ms", 100},
                       {"hint",
                        "raise the file descriptor limit (ulimit -n) or lower the session limits "
                        "(docs/operations.md)"}});
  }

  // A TLS handshake on the HTTP port failed: counted by OpenSSL's reason ("plaintext" for a
  // client that spoke plain HTTP to it). Not logged: any client can cause one.
  void tls_failed(const std::string& reason) {
    core.metrics
        .counter("sluice_tls_handshake_failures_total",
                 "TLS handshakes the HTTP port failed, by reason (server.tls_cert_file)",
                 {{"reason", reason}})
        .inc();
  }

  // Reads the certificate files again (SIGHUP, or a change poll_stages saw): both ports serve
  // the new one, or, if it cannot be used, keep the one they had. Counted by outcome.
  std::string reload_certificates() {
    std::string problem = tls.reload();
    if (!tls.enabled()) return problem;
    core.metrics
        .counter("sluice_tls_reloads_total",
                 "Certificate reloads of both ports (SIGHUP or a changed file), by outcome",
                 {{"outcome", problem.empty() ? "ok" : "failed"}})
        .inc();
    return problem;
  }

  relay::RelayCore core;
  relay::TlsContexts tls{core.config};  // (throws at construction: a bad file stops the start)
  std::chrono::steady_clock::time_point next_certificate_check{};
  std::chrono::steady_clock::time_point last_accept_log{};
  relay::GrpcService grpc_service{core};
  relay::HttpRouter router{core};
  relay::WhepService whep{core};  // WebRTC viewers (POST /v1/whep/{topic})
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<relay::HttpServer> http;
  std::unique_ptr<relay::NatsBridge> bridge;  // with [nats]: cluster topics (docs/cluster.md)
  int port = 0;
  bool stopped = false;
};

RelayServer::RelayServer(RelayConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}

RelayServer::~RelayServer() {
  shutdown();
}

namespace {

// gRPC says only that it could not bind; the OS's reason comes from binding the address
// ourselves first (released at once: gRPC binds it next).
void check_grpc_address(const RelayConfig& config) {
  namespace ip = boost::asio::ip;
  boost::system::error_code ec;
  const auto address = ip::make_address(config.host, ec);
  if (ec) {
    throw std::runtime_error("relay: server.host (SLUICE_HOST) = \"" + config.host +
                             "\" is not an IP address to bind (e.g. 127.0.0.1, ::1, 0.0.0.0)");
  }
  boost::asio::io_context io;
  ip::tcp::acceptor probe(io);
  const ip::tcp::endpoint endpoint(address, config.grpc_port);
  probe.open(endpoint.protocol(), ec);
  if (!ec) probe.set_option(ip::tcp::acceptor::reuse_address(true), ec);
  if (!ec) probe.bind(endpoint, ec);
  if (ec) {
    throw std::runtime_error("relay: cannot listen on " + config.host + ":" +
                             std::to_string(config.grpc_port) +
                             " for gRPC (server.grpc_port / SLUICE_GRPC_PORT): " + ec.message());
  }
}

// TLS when a certificate is configured (mutual TLS with a client CA: clients must present a
// certificate it signed), else plaintext. gRPC reads the relay's checked copy of the files
// (TlsContexts::served(), which changes only once a renewal was read and checked) every
// kGrpcCertificateRefreshSeconds with its file watcher — gRPC's C++ API has no reload on
// demand — so a renewal reaches new gRPC connections within a second of the HTTP port's;
// connections already open keep theirs.
constexpr unsigned kGrpcCertificateRefreshSeconds = 1;
std::shared_ptr<grpc::ServerCredentials> grpc_credentials(const relay::TlsContexts& tls) {
  namespace gtls = grpc::experimental;
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  const auto& files = tls.served();
  const bool mutual = !files.ca.empty();
  auto provider = std::make_shared<gtls::FileWatcherCertificateProvider>(
      files.key, files.cert, files.ca, kGrpcCertificateRefreshSeconds);
  gtls::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (mutual) {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  } else {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  }
  return gtls::TlsServerCredentials(options);
}

// The address as gRPC spells it: IPv6 in brackets.
std::string grpc_address(const RelayConfig& config) {
  const bool v6 = config.host.find(':') != std::string::npos;
  return (v6 ? "[" + config.host + "]" : config.host) + ":" + std::to_string(config.grpc_port);
}

}  // namespace

namespace {

// Every connection is a descriptor: the soft limit (often 1024, systemd's default) is raised to
// the hard one at start, as nats-server's runtime does, and both are logged. What one needs:
// docs/operations.md (LimitNOFILE in the packaged unit).
void raise_descriptor_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  const rlim_t was = limit.rlim_cur;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) limit.rlim_cur = was;
  }
  const auto shown = [](rlim_t v) {
    return v == RLIM_INFINITY ? std::int64_t{-1} : static_cast<std::int64_t>(v);
  };
  relay::log::event(
      relay::log::Level::info, "descriptors",
      {{"soft_was", shown(was)}, {"soft", shown(limit.rlim_cur)}, {"hard", shown(limit.rlim_max)}});
}

std::int64_t descriptor_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return -1;
  return static_cast<std::int64_t>(limit.rlim_cur);
}

}  // namespace

void RelayServer::start() {
  const RelayConfig& config = impl_->core.config;
  check_grpc_address(config);
  relay::log::Level level{};
  relay::log::Format format{};
  (void)relay::log::parse_level(config.log_level, level);  // (validated when loaded)
  (void)relay::log::parse_format(config.log_format, format);
  relay::log::configure(level, format);
  relay::bound_grpc_log();  // (a hostile connection's handshake failure is one gRPC log line)
  raise_descriptor_limit();
  // The standard services beside the relay's own: grpc.health.v1.Health (health checkers,
  // load balancers: SERVING until shutdown) and server reflection (grpcurl and other tools
  // discover sluice.v1.Relay). Both are process-wide switches, set before the builder.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address = grpc_address(config);
  builder.AddListeningPort(address, grpc_credentials(impl_->tls), &impl_->port);
  builder.RegisterService(&impl_->grpc_service);
  // One relay per port: gRPC's default SO_REUSEPORT would let a second relay bind the same
  // port and the kernel split clients between the two.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // A peer that stops answering HTTP/2 pings for idle_timeout_ms (gone, frozen, cut off) loses
  // its connection, and its calls free their session slots; one that answers stays, however
  // quiet (as a WebSocket peer that answers pings).
  const auto idle_ms =
      static_cast<int>(std::min<std::int64_t>(config.idle_timeout.count(), INT32_MAX));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, std::max(1, idle_ms / 2));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, std::max(1, idle_ms / 2));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // A connection has handshake_timeout_ms to finish its TLS handshake and HTTP/2 preface, as on
  // the HTTP port (gRPC's own default: 120 s, which lets stalled clients hold descriptors).
  builder.AddChannelArgument(
      GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
      static_cast<int>(std::clamp<std::int64_t>(config.handshake_timeout.count(), 1, INT32_MAX)));
  // The service refuses a request over max_request_bytes with INVALID_ARGUMENT naming the
  // frame limit; gRPC's own limit, twice that, is the backstop that keeps a larger message from
  // being received at all (gRPC answers it with RESOURCE_EXHAUSTED).
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<std::uint64_t>(2 * relay::max_request_bytes(config), INT32_MAX)));
  impl_->server = builder.BuildAndStart();
  if (!impl_->server || impl_->port == 0) {
    throw std::runtime_error("relay: cannot listen on " + address +
                             " (server.grpc_port / SLUICE_GRPC_PORT)");
  }
  if (auto* health = impl_->server->GetHealthCheckService())
    health->SetServingStatus("sluice.v1.Relay", true);
  Impl* impl = impl_.get();
  relay::HttpServer::Options http;
  http.host = config.host;
  http.port = config.http_port;
  http.timeout = config.handshake_timeout;
  http.handler = [impl](const relay::HttpServer::Request& request, const relay::HttpPeer& peer) {
    return impl->router.answer(request, peer);
  };
  http.upgrade = [impl](relay::Connection& connection, relay::HttpServer::Request& request,
                        const relay::HttpPeer& peer) {
    return relay::ws_upgrade(impl->core, connection, request, peer);
  };
  http.accept_error = [impl](const std::string& reason) { impl->accept_failed(reason); };
  http.tls = &impl->tls;
  http.tls_error = [impl](const std::string& reason) { impl->tls_failed(reason); };
  http.other = [impl](relay::HttpServer::Request& request, const relay::HttpPeer& peer,
                      relay::HttpServer::Reply reply) {
    impl->whep.handle(request, peer, std::move(reply));
  };
  http.max_body = relay::HttpServer::BodyLimit{config.whep.max_offer_bytes, "whep.max_offer_bytes"};
  http.descriptor_hint =
      "RLIMIT_NOFILE " + std::to_string(descriptor_limit()) +
      ": raise LimitNOFILE or ulimit -n, or lower limits.max_sessions_per_client; "
      "docs/operations.md";
  impl_->http =
      std::make_unique<relay::HttpServer>(impl->core.loops.main().context(), std::move(http));
  // Declared topics exist from the start: in the stats, the dashboard and (cluster topics) the
  // other relays' lists at once, not only once something uses them.
  for (const auto& t : config.topics) (void)impl_->core.topics.find(t.name);
  if (config.nats.enabled()) impl_->bridge = std::make_unique<relay::NatsBridge>(impl_->core);
  relay::add_process_metrics(impl_->core.metrics);
  impl_->core.loops.main().post([impl] { impl->poll_stages(); });
}

void RelayServer::shutdown() {
  if (!impl_ || !impl_->server || impl_->stopped) return;
  impl_->stopped = true;
  if (auto* health = impl_->server->GetHealthCheckService()) health->Shutdown();  // NOT_SERVING
  impl_->whep.stop();                        // (its viewers end on their loops, which still run)
  if (impl_->bridge) impl_->bridge->stop();  // (what it sent is in NATS; nothing more comes in)
  impl_->core.topics.close_all();
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  impl_->server->Wait();
  impl_->core.loops.stop();
  impl_->http.reset();
}

std::uint16_t RelayServer::grpc_port() const {
  return static_cast<std::uint16_t>(impl_->port);
}

std::uint16_t RelayServer::http_port() const {
  return impl_->http ? impl_->http->port() : 0;
}

std::string RelayServer::reload_certificates() {
  return impl_->reload_certificates();
}

metrics::Registry& RelayServer::metrics() {
  return impl_->core.metrics;
}

std::string RelayServer::stats_json() const {
  return relay::stats_text(relay::StatsReader::everything(impl_->core.topics).snapshot().json);
}

}  // namespace sluice

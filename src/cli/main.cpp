// The `sluice` executable. Subcommands: serve, pub, sub, ingest, worker, config, demo.
#include <systemd/sd-daemon.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "demo.hpp"
#include "demo_traffic.hpp"
#include "ingest.hpp"
#include "pubsub.hpp"
#include "sluice/relay/config.hpp"
#include "sluice/relay/server.hpp"
#include "worker.hpp"

extern const char* const kSluiceVersion;  // "0.x.y (git <revision>)": version.cpp, generated

namespace {

// TLS to the relay (docs/security.md).
void add_tls_options(CLI::App& cmd, sluice::client::TlsOptions& tls) {
  cmd.add_option("--tls-ca", tls.ca_file, "The CA of the relay's certificate: TLS on (PEM)")
      ->envname("SLUICE_TLS_CA");
  cmd.add_option("--tls-cert", tls.cert_file, "Mutual TLS: this client's certificate (PEM)");
  cmd.add_option("--tls-key", tls.key_file, "Mutual TLS: this client's key (PEM)");
}

// `sluice config`: the relay's effective configuration, or the error that stops start-up.
struct ConfigCommand {
  std::string file;
  std::map<std::string, std::string> values;  // flag -> value, for the flags given

  void add(CLI::App* cmd) {
    cmd->add_option("--config", file, "TOML configuration file");
    const auto flags = sluice::relay_setting_flags();
    const auto help = sluice::relay_setting_help();
    for (std::size_t i = 0; i < flags.size(); ++i) {
      const std::string& flag = flags[i];
      cmd->add_option_function<std::string>(
          "--" + flag, [this, flag](const std::string& v) { values[flag] = v; }, help[i]);
    }
  }

  std::optional<sluice::RelayConfig> load() const {
    try {
      return sluice::load_relay_config(
          file.empty() ? std::nullopt : std::optional<std::string>(file),
          [](const char* name) { return std::getenv(name); },  // NOLINT(concurrency-mt-unsafe)
          values);
    } catch (const sluice::ConfigError& e) {
      std::fprintf(stderr, "sluice: %s\n", e.what());
      return std::nullopt;
    }
  }

  int run() const {
    const auto config = load();
    if (!config) return 2;
    std::fputs(sluice::to_toml(*config).c_str(), stdout);
    return 0;
  }

  // `sluice serve`: runs the relay until SIGINT or SIGTERM; SIGHUP reloads its certificates.
  int serve(bool demo) const {
    auto config = load();
    if (!config) return 2;
    if (demo) {
      if (!config->principals.empty() || config->signed_tokens()) {
        std::fprintf(stderr,
                     "sluice: --demo drives the relay with clients that present no token: run "
                     "it on a relay without [[principal]] or signed tokens\n");
        return 2;
      }
      sluice::cli::add_demo_topics(*config);
    }
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread starts
    std::optional<sluice::RelayServer> relay;
    try {
      relay.emplace(*config);
      relay->start();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "sluice: %s\n", e.what());
      return 2;
    }
    sluice::RelayServer& server = *relay;
    // One machine-readable line with the bound addresses.
    const bool tls = !config->tls_cert_file.empty();
    const std::string shown = config->host == "0.0.0.0" || config->host == "::" ? "127.0.0.1"
                              : config->host.find(':') != std::string::npos
                                  ? "[" + config->host + "]"
                                  : config->host;
    std::printf(
        "{\"event\":\"listening\",\"grpc\":\"%s:%u\",\"http\":\"%s:%u\","
        "\"dashboard\":\"%s://%s:%u/\",\"tls\":%s,\"version\":\"%s\"}\n",
        config->host.c_str(), server.grpc_port(), config->host.c_str(), server.http_port(),
        tls ? "https" : "http", shown.c_str(), server.http_port(), tls ? "true" : "false",
        kSluiceVersion);
    server.metrics().gauge_fn("sluice_build_info", "1, labelled with the relay's version",
                              {{"version", kSluiceVersion}}, [] { return 1.0; });
    std::fflush(stdout);
    // Under systemd (Type=notify): ready once both ports listen. Nothing without NOTIFY_SOCKET.
    sd_notifyf(0, "READY=1\nSTATUS=gRPC on %s:%u, HTTP on %s:%u", config->host.c_str(),
               server.grpc_port(), config->host.c_str(), server.http_port());
    // [[ingest]]: the cameras this process serves, published to its own gRPC port.
    std::optional<sluice::cli::ServedIngests> ingests;
    if (!config->ingests.empty()) {
      if (tls) {
        std::fprintf(stderr,
                     "sluice: [[ingest]] entries publish to the relay over plaintext gRPC: run "
                     "`sluice ingest` beside a relay with server.tls_cert_file instead\n");
        server.shutdown();
        return 2;
      }
      try {
        ingests.emplace(config->ingests,
                        (config->host == "0.0.0.0" ? std::string("127.0.0.1")
                         : config->host == "::"    ? std::string("[::1]")
                                                   : shown) +
                            ":" + std::to_string(server.grpc_port()),
                        server.metrics());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "sluice: [[ingest]]: %s\n", e.what());
        server.shutdown();
        return 2;
      }
    }
    std::optional<sluice::cli::DemoTraffic> traffic;
    if (demo) {
      traffic.emplace(server.grpc_port(), server.http_port());
      std::printf(
          "{\"event\":\"demo_traffic\",\"topics\":[\"demo.camera\",\"demo.telemetry\","
          "\"demo.detect\"]}\n");
      std::fflush(stdout);
    }
    int sig = 0;
    for (;;) {
      sigwait(&signals, &sig);
      if (sig != SIGHUP) break;
      sd_notify(0, "RELOADING=1");
      const std::string problem = server.reload_certificates();
      sd_notify(0, "READY=1");
      if (problem.empty()) {
        std::printf("{\"event\":\"certificates_reloaded\"}\n");
      } else {
        std::printf("{\"event\":\"certificates_not_reloaded\",\"why\":%s}\n",
                    nlohmann::json(problem).dump().c_str());
      }
      std::fflush(stdout);
    }
    std::printf("{\"event\":\"stopping\",\"signal\":%d}\n", sig);
    std::fflush(stdout);
    sd_notify(0, "STOPPING=1");
    if (traffic) traffic->stop();
    if (ingests) ingests->stop();
    server.shutdown();
    return 0;
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sluice: real-time streams that stay healthy under overload"};
  app.require_subcommand(1);
  app.option_defaults()->always_capture_default();  // help shows each flag's default
  app.set_version_flag("--version", std::string("sluice ") + kSluiceVersion);

  sluice::cli::DemoOptions demo;
  auto* demo_cmd = app.add_subcommand("demo", "Show a Channel under overload, per policy");
  demo_cmd->add_option("--seconds", demo.seconds, "How long to run")->check(CLI::Range(1, 3600));
  demo_cmd->add_option("--producer-rate", demo.producer_rate, "Items/s offered per producer")
      ->check(CLI::Range(1, 1'000'000));
  demo_cmd->add_option("--consumer-rate", demo.consumer_rate, "Items/s taken per consumer")
      ->check(CLI::Range(1, 1'000'000));
  demo_cmd->add_option("--item-kib", demo.item_kib, "Item size in KiB")
      ->check(CLI::Range(1, 65536));

  ConfigCommand config;
  auto* config_cmd = app.add_subcommand(
      "config",
      "Print the relay's effective configuration (file < environment < flags), or "
      "the error that would stop it");
  config.add(config_cmd);
  ConfigCommand serve;
  auto* serve_cmd =
      app.add_subcommand("serve",
                         "Run the relay with the configuration of `sluice config`; stops on "
                         "SIGINT/SIGTERM, reloads its TLS certificates on SIGHUP");
  serve.add(serve_cmd);
  bool serve_demo = false;
  serve_cmd->add_flag("--demo", serve_demo,
                      "Also drive the relay with synthetic traffic that shows every policy: a "
                      "camera with a slow viewer, a throttled telemetry producer, a stage with "
                      "a fast and a slow worker (docs/dashboard.md)");

  sluice::cli::PubOptions pub;
  auto* pub_cmd = app.add_subcommand(
      "pub", "Publish to a topic: generated items at a rate and size, or lines from stdin");
  pub_cmd->add_option("--server,--target", pub.target, "The relay's gRPC address (host:port)")
      ->envname("SLUICE_SERVER");
  pub_cmd->add_option("--topic", pub.topic, "Topic name")->required();
  pub_cmd->add_flag("--stdin", pub.from_stdin, "One item per line of standard input");
  pub_cmd->add_option("--count", pub.count, "Generated items")->check(CLI::Range(0UL, 1UL << 40));
  pub_cmd->add_option("--size", pub.size, "Bytes per generated item")
      ->check(CLI::Range(0UL, 1UL << 30));
  pub_cmd->add_option("--rate", pub.rate, "Items per second (0: as fast as the relay takes them)")
      ->check(CLI::Range(0.0, 1e9));
  pub_cmd->add_option("--window-bytes", pub.window_bytes, "Unacknowledged bytes in flight")
      ->check(CLI::Range(1UL, 1UL << 40));
  pub_cmd
      ->add_option("--max-retries", pub.max_retries,
                   "Reopen attempts in a row without progress after RESOURCE_EXHAUSTED or "
                   "UNAVAILABLE (the relay restarting)")
      ->check(CLI::Range(0, 1000));
  pub_cmd->add_flag("--quiet", pub.quiet, "No event lines on stderr");
  pub_cmd->add_option("--token", pub.token, "The relay's bearer token (docs/security.md)")
      ->envname("SLUICE_TOKEN");
  add_tls_options(*pub_cmd, pub.tls);

  sluice::cli::SubOptions sub;
  auto* sub_cmd = app.add_subcommand("sub", "Subscribe to a topic; statistics at the end");
  sub_cmd->add_option("--server,--target", sub.target, "The relay's gRPC address (host:port)")
      ->envname("SLUICE_SERVER");
  sub_cmd->add_option("--fallback", sub.fallbacks,
                      "Another relay serving the topic (a cluster topic, host:port; repeat for "
                      "more): reconnecting moves there when the relay does not answer");
  sub_cmd->add_option("--topic", sub.topic, "Topic name")->required();
  sub_cmd->add_option("--name", sub.name, "Subscriber name in the relay's stats");
  sub_cmd->add_option("--depth", sub.depth, "Real-time topics: items kept for us (0: default)");
  sub_cmd->add_option("--count", sub.count, "Stop after this many items (0: until the end)");
  sub_cmd->add_flag("--print", sub.print, "Write each payload to stdout, one per line");
  sub_cmd
      ->add_option("--reconnect-for", sub.reconnect_s,
                   "When the stream ends (the relay stopped, the connection was lost): "
                   "subscribe again and resume for up to this many seconds (0: do not); "
                   "exit 1 if the relay does not come back")
      ->check(CLI::Range(0, 86400));
  sub_cmd->add_option("--token", sub.token, "The relay's bearer token (docs/security.md)")
      ->envname("SLUICE_TOKEN");
  add_tls_options(*sub_cmd, sub.tls);

  sluice::StageWorkerOptions worker;
  auto* worker_cmd = app.add_subcommand(
      "worker",
      "Join a topic's processing stage over WebSocket: grayscale, downscale and mean brightness "
      "of each RGB frame (docs/stages.md)");
  std::string worker_server;
  worker_cmd
      ->add_option("--server", worker_server,
                   "The relay's HTTP address (host:port; the worker speaks WebSocket), instead "
                   "of --host and --port")
      ->envname("SLUICE_HTTP_SERVER");
  worker_cmd->add_option("--host", worker.host, "The relay's host");
  worker_cmd->add_option("--port", worker.port, "The relay's HTTP port");
  worker_cmd->add_option("--topic", worker.topic, "A topic with a stage")->required();
  worker_cmd->add_option("--name", worker.name, "The worker's name in the relay's metrics");
  worker_cmd->add_option("--concurrency", worker.concurrency, "Frames sent before an answer")
      ->check(CLI::Range(1U, 1024U));
  worker_cmd->add_option("--token", worker.token, "The relay's bearer token (docs/security.md)")
      ->envname("SLUICE_TOKEN");
  add_tls_options(*worker_cmd, worker.tls);  // (wss://)
  sluice::cli::ImageModelOptions model;
  worker_cmd->add_option("--width", model.width, "Frame width in pixels (0: one row)");
  worker_cmd->add_option("--height", model.height, "Frame height in pixels (0: from the size)");
  worker_cmd->add_option("--downscale", model.downscale, "Downscale factor per direction")
      ->check(CLI::Range(1U, 64U));
  std::int64_t delay_ms = 0;
  worker_cmd
      ->add_option("--delay-ms", delay_ms,
                   "Extra time per frame, to play a slow model and see the gate work")
      ->check(CLI::Range(0L, 60'000L));

  sluice::cli::IngestCliOptions ingest;
  auto* ingest_cmd = app.add_subcommand(
      "ingest",
      "Publish a camera's or a file's frames to a topic: rtsp://, file://, v4l2://, test:// "
      "(docs/media.md)");
  ingest_cmd
      ->add_option("uri", ingest.ingest.uri,
                   "The source: rtsp://…, file:///…, "
                   "v4l2:///dev/videoN or test://")
      ->required();
  ingest_cmd
      ->add_option("--server,--target", ingest.publisher.target,
                   "The relay's gRPC address (host:port)")
      ->envname("SLUICE_SERVER");
  ingest_cmd->add_option("--topic", ingest.publisher.topic, "Topic name")->required();
  std::string ingest_output = "encoded";
  ingest_cmd
      ->add_option("--output", ingest_output,
                   "encoded (the source's H.264/H.265/VP8/VP9 access units, not re-encoded), "
                   "raw (RGB pictures) or jpeg")
      ->check(CLI::IsMember({"encoded", "raw", "jpeg"}));
  ingest_cmd
      ->add_option("--width", ingest.ingest.width,
                   "raw/jpeg: scale to this width (0: the source's)")
      ->check(CLI::Range(0, 16384));
  ingest_cmd
      ->add_option("--height", ingest.ingest.height,
                   "raw/jpeg: scale to this height (0: the source's)")
      ->check(CLI::Range(0, 16384));
  ingest_cmd
      ->add_option("--fps", ingest.ingest.fps, "raw/jpeg: frames per second (0: the source's)")
      ->check(CLI::Range(0, 1000));
  ingest_cmd
      ->add_option("--queue-frames", ingest.ingest.queue_frames,
                   "Frames waiting for the relay; past that they are dropped at the source, "
                   "counted (backpressure)")
      ->check(CLI::Range(1UL, 4096UL));
  bool ingest_fast = false;
  ingest_cmd->add_flag("--as-fast-as-read", ingest_fast,
                       "A file's frames as fast as they are read, not at their timestamps");
  int source_timeout_ms = 5000;
  ingest_cmd
      ->add_option("--source-timeout-ms", source_timeout_ms,
                   "A live source silent this long is lost (then reconnected)")
      ->check(CLI::Range(100, 600'000));
  ingest_cmd
      ->add_option("--stats-every", ingest.stats_every_s, "Seconds between stats lines (0: none)")
      ->check(CLI::Range(0, 86400));
  ingest_cmd
      ->add_option("--token", ingest.publisher.token, "The relay's bearer token (docs/security.md)")
      ->envname("SLUICE_TOKEN");
  add_tls_options(*ingest_cmd, ingest.publisher.tls);

  // Exit codes: 0, 1 (a runtime failure), 2 (usage or configuration).
  if (argc > 1 && argv[1][0] != '-') {  // (CLI11 would say only "A subcommand is required")
    const std::string asked = argv[1];
    std::string known;
    bool found = false;
    for (const CLI::App* command : app.get_subcommands([](const CLI::App*) { return true; })) {
      found = found || command->check_name(asked);
      known += (known.empty() ? "" : ", ") + command->get_name();
    }
    if (!found) {
      std::fprintf(stderr, "sluice: unknown command '%s'; the commands are %s (sluice --help)\n",
                   asked.substr(0, 64).c_str(), known.c_str());
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // (prints help, the version, or the error)
    return code == 0 ? 0 : 2;
  }
  if (worker_cmd->parsed()) {
    model.delay = std::chrono::milliseconds(delay_ms);
    if (!worker_server.empty()) {  // host:port ([v6]:port too)
      const auto colon = worker_server.rfind(':');
      int port = 0;
      if (colon == std::string::npos ||
          std::sscanf(worker_server.c_str() + colon + 1, "%d", &port) != 1 || port < 1 ||
          port > 65535) {
        std::fprintf(stderr, "sluice worker: --server %s: expected host:port\n",
                     worker_server.c_str());
        return 2;
      }
      worker.host = worker_server.substr(0, colon);
      if (worker.host.size() > 2 && worker.host.front() == '[' && worker.host.back() == ']')
        worker.host = worker.host.substr(1, worker.host.size() - 2);
      worker.port = static_cast<std::uint16_t>(port);
    }
    return sluice::cli::run_worker(worker, model);
  }
  if (ingest_cmd->parsed()) {
    (void)sluice::media::parse_output(ingest_output, ingest.ingest.output);
    ingest.ingest.pace = !ingest_fast;
    ingest.ingest.source_timeout = std::chrono::milliseconds(source_timeout_ms);
    return sluice::cli::run_ingest(ingest);
  }
  if (pub_cmd->parsed()) return sluice::cli::run_pub(pub);
  if (sub_cmd->parsed()) return sluice::cli::run_sub(sub);
  if (demo_cmd->parsed()) return sluice::cli::run_demo(demo);
  if (config_cmd->parsed()) return config.run();
  if (serve_cmd->parsed()) return serve.serve(serve_demo);
  return 0;
}

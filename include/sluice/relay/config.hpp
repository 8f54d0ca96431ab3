// Sluice — the relay's configuration: defaults < TOML file < environment < command line.
//
// Every setting, its file key, environment variable, flag, default and range is listed in
// docs/configuration.md (and by `sluice config --help`). Loading validates everything and
// throws ConfigError with a message that names the setting, where the bad value came from,
// the value and what is accepted; `sluice serve` prints it and exits non-zero.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sluice {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// How a topic meets overload.
enum class TopicMode : std::uint8_t {
  lossless,  // block policy: a byte budget, producers throttled, max_wait, nothing lost
  realtime,  // per-subscriber depth, oldest dropped for a subscriber that falls behind
};
std::string_view to_string(TopicMode mode) noexcept;

/// Where a topic lives (docs/cluster.md): on this relay only, or on every relay attached to the
/// same NATS system ([nats]), each of which fans it out to its own subscribers.
enum class TopicScope : std::uint8_t { local, cluster };
std::string_view to_string(TopicScope scope) noexcept;

/// A processing stage behind a topic (docs/stages.md): its frames pass a FrameGate into a
/// Dispatcher; workers join over /v1/ws/work/{topic}; their results form another topic.
struct StageConfig {
  double fps = 30;                // the gate's nominal frame rate (frame interval)
  std::size_t max_in_flight = 1;  // frames admitted and not yet done (all workers together)
  std::string results_topic;      // empty: "{topic}.results"
  std::size_t worker_queue = 4;   // each worker's queue (items routed, not yet sent to it)
  std::chrono::milliseconds task_timeout{10'000};  // a worker holding a frame longer: timeout
  std::chrono::milliseconds slow_latency{2'000};   // a worker slower than this is "slow"
};

struct TopicConfig {
  std::string name;
  TopicMode mode = TopicMode::lossless;
  std::uint64_t max_queue_bytes = std::uint64_t{100} << 20;  // lossless budget
  std::size_t max_queue_items = 1024;        // lossless: items a subscriber may be behind, too
  std::chrono::milliseconds max_wait{5000};  // lossless
  // Lossless: a subscriber that has made no progress (no byte reached it) this long is ended
  // (slow_consumer), so that the producer can go on; 0: never, a stuck subscriber holds the
  // producer back (RESOURCE_EXHAUSTED after max_wait). At least max_wait when set.
  std::chrono::milliseconds evict_after{0};
  std::size_t depth = 4;  // realtime, per subscriber
  // The most recent items kept for subscribers that come back (resume at their position after
  // a reconnect), within max_queue_bytes; 0: none.
  std::size_t retain_items = 0;
  std::optional<StageConfig> stage;  // none: a plain topic
  // What the payloads are, as a media type ("image/jpeg", "image/png", "application/json"):
  // shown in the stats, and how a dashboard previews them. Empty: opaque bytes.
  std::string content_type;
  // local, or cluster: shared through NATS with the other relays ([nats]; docs/cluster.md).
  TopicScope scope = TopicScope::local;
};

/// [nats]: how the relay reaches NATS to share its cluster topics (docs/cluster.md). No URL:
/// no bridge (a cluster topic is then refused at startup).
struct NatsConfig {
  std::vector<std::string> urls;          // nats://host:port, tried in order and on reconnect
  std::string subject_prefix = "sluice";  // subjects: {prefix}.rt.{topic}, {prefix}.js.{topic}
  std::string credentials_file;           // a NATS .creds file (user JWT and NKey seed)
  std::string token;                      // or a token (never printed)
  // This relay's name among the others (its JetStream consumers are named after it, and the
  // other relays list it); empty: "relay-" and 8 random hex digits, new at every start.
  std::string name;
  // Also reconnect to the servers the NATS cluster announces (not only to `urls`).
  bool discovered_servers = true;
  std::size_t replicas = 1;      // of each lossless topic's JetStream stream (1..5)
  std::string storage = "file";  // of those streams: file or memory
  // A lossless item held back for an earlier one that does not come (its relay went away) is
  // let through after this long, behind a `bridge` gap.
  std::chrono::milliseconds reorder_timeout{10'000};
  bool enabled() const { return !urls.empty(); }
};

/// [whep]: video to browsers over WebRTC (POST /v1/whep/{topic}; docs/media.md). Each viewer is
/// a subscriber of its topic with its own small queue in front of its WebRTC sender.
struct WhepConfig {
  std::size_t max_viewers = 100;  // WebRTC viewers at once (each costs a few threads)
  // The largest SDP offer accepted (a browser's is 3-10 KiB).
  std::uint64_t max_offer_bytes = std::uint64_t{64} * 1024;
  // An offer is answered once the topic's next keyframe is in (its codec decides the answer)
  // and ICE has gathered; the viewer is refused (504) if that takes longer than this.
  std::chrono::milliseconds answer_timeout{8'000};
  // An answered viewer whose WebRTC connection is not up (or is lost) for this long is ended.
  std::chrono::milliseconds connect_timeout{15'000};
  // Frames waiting for the viewer's WebRTC sender (1..64); past it the viewer falls behind in
  // the topic and resumes at a keyframe (counted as its losses).
  std::size_t queue_frames = 4;
  // The addresses ICE offers (host candidates); empty: every non-loopback interface's.
  std::vector<std::string> ice_addresses;
  // stun://host:port and turn(s)://user:password@host:port for viewers on other networks.
  std::string stun_server;
  std::vector<std::string> turn_servers;
};

/// [[ingest]]: a camera (or file, device, test pattern) `sluice serve` reads and publishes to a
/// topic of its own relay, as `sluice ingest` would (docs/media.md): the same options.
struct IngestEntryConfig {
  std::string uri;                 // rtsp://, file://, v4l2://, test://
  std::string topic;               // published to
  std::string output = "encoded";  // encoded, raw, jpeg
  int width = 0;
  int height = 0;
  int fps = 0;
  std::size_t queue_frames = 8;
  std::chrono::milliseconds source_timeout{5000};
  std::string token;  // a principal's bearer token, when the relay authenticates (never printed)
};

/// Who may use the relay ([[principal]] in the file; docs/security.md): a name, the SHA-256 of
/// its bearer token, and per action the topic patterns it may act on. A pattern is a topic name
/// whose '.'-separated segments may be `*` (any one segment) or, last, `>` (one or more
/// segments); a pattern starting with `!` denies, and a denial wins over every allowance.
struct PrincipalConfig {
  std::string name;
  std::string token_sha256;    // lower-case hex; empty (and no certificate_cn): the anonymous one
  std::string certificate_cn;  // a gRPC client certificate with this common name (mTLS)
  std::vector<std::string> publish;
  std::vector<std::string> subscribe;
  std::vector<std::string> work;
  std::vector<std::string> stats;  // /v1/stats, /metrics and Stats show these topics
};

struct RelayConfig {
  // [server]
  std::string host = "127.0.0.1";
  std::uint16_t grpc_port = 7400;  // 0: ephemeral
  std::uint16_t http_port = 7401;  // 0: ephemeral
  unsigned threads =
      0;  // event loops of the HTTP port (WebSocket subscribers spread); 0: one per core
  // With no principal configured, the relay is open to every client; it then refuses to bind
  // an address other than loopback unless this says so.
  bool allow_anonymous_on_network = false;
  // Origins whose web pages may open WebSockets and read the HTTP port (besides the relay's
  // own origin); `*` stands for any port. Requests without Origin (not from a browser) pass.
  std::vector<std::string> allowed_origins{"http://127.0.0.1:*", "http://localhost:*",
                                           "http://[::1]:*"};
  // Host names the HTTP port answers to besides loopback literals, localhost and the address a
  // connection reached (a request naming another host, or none, gets 421: DNS rebinding).
  std::vector<std::string> server_names;
  // Answer to any Host (behind a proxy that rewrites it, say): the check above is off.
  bool allow_any_host = false;
  // Accept a WebSocket's token in its `token` query parameter (it then shows in access logs).
  bool token_in_query = false;
  // TLS on the gRPC port: the certificate chain and its key (PEM files; both or neither), and
  // for mutual TLS the CA that signs clients' certificates (clients must then present one).
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // [limits]
  std::uint64_t max_frame_bytes = std::uint64_t{5} << 20;  // STREAM_MAX_FRAME_SIZE_MB
  std::size_t max_sessions = 10;       // STREAM_MAX_SESSIONS: publishing sessions open at once
  std::size_t max_subscribers = 4096;  // subscribing sessions (gRPC and WebSocket)
  std::size_t max_workers = 1024;      // stage workers
  std::size_t max_sessions_per_client = 1024;  // sessions of any kind from one IP address
  std::size_t max_topics = 1024;  // topics at once, declared and created on first use together
  // Producers a topic remembers (by producer id: their last sequence in it, so that an item a
  // reconnecting producer sends again goes in once); the least recently heard are forgotten.
  std::size_t max_producer_ids = 1024;
  std::chrono::milliseconds send_timeout{100};  // a WebSocket write slower than this times out
  std::size_t max_send_timeouts = 10;           // in a row: the subscriber is disconnected
  // The kernel send buffer (SO_SNDBUF) of each WebSocket subscriber's socket, in bytes; 0: the
  // kernel's own, which grows with use (up to net.ipv4.tcp_wmem's maximum, 4 MiB by default).
  // What a subscriber has not yet taken waits there, outside the topic's depth and byte budget: a
  // bound here bounds that memory and how stale a slow subscriber's frames can get, and makes the
  // send timeouts of a subscriber that stops reading start sooner. The kernel doubles the value
  // and caps it at net.core.wmem_max.
  std::uint64_t viewer_send_buffer_bytes = 0;
  // An HTTP request (and a WebSocket upgrade) must arrive within this; so must a close
  // handshake complete.
  std::chrono::milliseconds handshake_timeout{10'000};
  // A WebSocket peer silent this long is closed; at half of it the relay pings it (a peer that
  // answers pings stays).
  std::chrono::milliseconds idle_timeout{60'000};
  // [log] The relay's log on stderr (docs/operations.md): trace, debug, info, warn, error or
  // off; json or logfmt.
  std::string log_level = "info";
  std::string log_format = "json";
  // [frame_gate]
  double drop_threshold = 0.10;      // STREAM_DROP_THRESHOLD
  double slowdown_threshold = 0.30;  // STREAM_SLOWDOWN_THRESHOLD
  // [topics]
  bool auto_create = true;  // unknown topics are created with `defaults`; else NOT_FOUND
  // A topic created on first use (not declared) that has had no publisher, subscriber or worker
  // for this long is removed, with its series in /metrics; 0: kept as long as the relay runs.
  std::chrono::milliseconds topic_idle_timeout{60'000};
  TopicConfig defaults;  // name unused
  std::vector<TopicConfig> topics;
  NatsConfig nats;
  WhepConfig whep;
  std::vector<IngestEntryConfig> ingests;  // [[ingest]]
  // [[principal]]: none (and no signed tokens) keeps the relay open (loopback only, unless
  // allow_anonymous_on_network)
  std::vector<PrincipalConfig> principals;
  // [auth] Signed tokens (JWT) an application mints without touching this file: their `sub`
  // names the principal, their `sluice` claim its patterns, `exp` ends its sessions.
  std::string jwt_hs256_secret_file;  // HS256 tokens are signed with its bytes (>= 32)
  std::string jwt_hs256_secret;       // (read from that file when loading; never printed)
  std::string jwt_public_key_file;    // PEM: an ES256 (P-256) or Ed25519 public key
  std::string jwt_issuer;             // when set, a token's `iss` must be this
  /// Are clients authenticated (principals or signed tokens configured)?
  bool authenticates() const { return !principals.empty() || signed_tokens(); }
  bool signed_tokens() const { return !jwt_hs256_secret.empty() || !jwt_public_key_file.empty(); }

  /// The declared topic, or nullptr.
  const TopicConfig* topic(std::string_view name) const;
};

/// A topic name: 1–128 characters of [A-Za-z0-9._-]. Returns an empty string if valid, else
/// what is wrong with it.
std::string topic_name_problem(std::string_view name);

/// A topic pattern of a principal's permissions (see PrincipalConfig), without its `!`:
/// empty if valid, else what is wrong with it.
std::string topic_pattern_problem(std::string_view pattern);

/// The SHA-256 of `token`, lower-case hex (what token_sha256 holds).
std::string token_sha256(std::string_view token);

/// Command-line values (already parsed by the CLI); unset ones are absent.
using Overrides = std::map<std::string, std::string>;

/// Builds the configuration: defaults, then the TOML file (if `file` is set), then the
/// environment (`env` returns the value of a variable or nullptr), then `cli` overrides keyed
/// by their flag names without dashes (e.g. "grpc-port"). Throws ConfigError.
RelayConfig load_relay_config(const std::optional<std::string>& file,
                              const std::function<const char*(const char*)>& env,
                              const Overrides& cli);

/// The command-line flag (without dashes) of every setting that has one, in the order of
/// docs/configuration.md: what `load_relay_config` accepts in `cli`.
std::vector<std::string> relay_setting_flags();

/// A flag's help: its file key, its environment variable and its default, e.g.
/// "limits.max_sessions (STREAM_MAX_SESSIONS); default 10; docs/configuration.md".
/// In the order of relay_setting_flags().
std::vector<std::string> relay_setting_help();

/// The effective configuration as TOML (what `sluice config` prints).
std::string to_toml(const RelayConfig& config);

}  // namespace sluice

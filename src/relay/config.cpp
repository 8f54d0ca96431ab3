// The relay's configuration: one table of settings, read from four layers.
#include "sluice/relay/config.hpp"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <toml++/toml.h>

#include <algorithm>
#include <array>
#include <boost/asio/ip/address.hpp>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "event_log.hpp"  // (its level and format names)

namespace sluice {

namespace {

// Where a value came from, for error messages.
struct Source {
  std::string where;  // e.g. "relay.toml key server.grpc_port", "environment SLUICE_GRPC_PORT"
};

[[noreturn]] void bad(const Source& src, const std::string& value, std::string_view accepted) {
  throw ConfigError("invalid configuration: " + src.where + " = \"" + value +
                    "\" (accepted: " + std::string(accepted) + ")");
}

// A whole decimal number in [lo, hi], all of `text`; nothing otherwise.
std::optional<std::int64_t> to_int(const std::string& text, std::int64_t lo, std::int64_t hi) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || end != text.c_str() + text.size() || errno != 0 || v < lo || v > hi)
    return std::nullopt;
  return v;
}

std::int64_t parse_int(const Source& src, const std::string& text, std::int64_t lo, std::int64_t hi,
                       std::string_view accepted) {
  const auto v = to_int(text, lo, hi);
  if (!v) bad(src, text, accepted);
  return *v;
}

double parse_double(const Source& src, const std::string& text, double lo, double hi, bool lo_open,
                    std::string_view accepted) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || errno != 0 || !std::isfinite(v) ||
      v < lo || (lo_open && v == lo) || v > hi) {
    bad(src, text, accepted);
  }
  return v;
}

bool parse_bool(const Source& src, const std::string& text) {
  std::string t = text;
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
  if (t == "true" || t == "1" || t == "yes" || t == "on") return true;
  if (t == "false" || t == "0" || t == "no" || t == "off") return false;
  bad(src, text, "true or false");
}

// Bytes: an integer, optionally with a KiB/MiB/GiB suffix.
std::uint64_t parse_bytes(const Source& src, const std::string& text, std::uint64_t lo,
                          std::uint64_t hi, std::string_view accepted) {
  std::string digits = text;
  std::uint64_t unit = 1;
  for (const auto& [suffix, mult] : {std::pair<std::string_view, std::uint64_t>{"KiB", 1ULL << 10},
                                     {"MiB", 1ULL << 20},
                                     {"GiB", 1ULL << 30}}) {
    if (text.size() > suffix.size() && text.ends_with(suffix)) {
      digits = text.substr(0, text.size() - suffix.size());
      unit = mult;
    }
  }
  const auto n = to_int(digits, 0, static_cast<std::int64_t>(hi / unit));
  if (!n) bad(src, text, accepted);  // (named as written, unit included)
  const std::uint64_t v = static_cast<std::uint64_t>(*n) * unit;
  if (v < lo || v > hi) bad(src, text, accepted);
  return v;
}

bool readable(const std::string& path) {
  return std::ifstream(path).is_open();
}

// Does `path` hold a PEM public key signed tokens can be checked with? (64 KiB read at most)
bool jwt_public_key_usable(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string pem(std::size_t{64} * 1024, '\0');
  in.read(pem.data(), static_cast<std::streamsize>(pem.size()));
  if (!in.is_open() || in.bad()) return false;
  pem.resize(static_cast<std::size_t>(in.gcount()));
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* key = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  const int type = key != nullptr ? EVP_PKEY_get_base_id(key) : 0;
  EVP_PKEY_free(key);
  BIO_free(bio);
  return type == EVP_PKEY_EC || type == EVP_PKEY_ED25519;
}

// "a, b,c" -> {"a", "b", "c"} (empty items dropped).
std::vector<std::string> parse_list(const std::string& text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    const std::size_t comma = std::min(text.find(',', pos), text.size());
    std::string item = text.substr(pos, comma - pos);
    const auto first = item.find_first_not_of(" \t");
    const auto last = item.find_last_not_of(" \t");
    if (first != std::string::npos) out.push_back(item.substr(first, last - first + 1));
    pos = comma + 1;
  }
  return out;
}

TopicScope parse_scope(const Source& src, const std::string& text) {
  if (text == "local") return TopicScope::local;
  if (text == "cluster") return TopicScope::cluster;
  bad(src, text, "local or cluster");
}

// A NATS subject token (the prefix may hold several, '.'-separated).
bool subject_prefix_ok(std::string_view v) {
  if (v.empty() || v.size() > 64 || v.front() == '.' || v.back() == '.') return false;
  return v.find("..") == std::string_view::npos && std::all_of(v.begin(), v.end(), [](char ch) {
           return std::isalnum(static_cast<unsigned char>(ch)) != 0 || ch == '.' || ch == '_' ||
                  ch == '-';
         });
}

TopicMode parse_mode(const Source& src, const std::string& text) {
  if (text == "lossless") return TopicMode::lossless;
  if (text == "realtime") return TopicMode::realtime;
  bad(src, text, "lossless or realtime");
}

// One setting: its names in each layer and how it is applied.
struct Setting {
  std::string key;   // in the file, "section.name"
  std::string env;   // environment variable
  std::string flag;  // command-line flag without dashes
  std::function<void(RelayConfig&, const Source&, const std::string&)> apply;
};

constexpr std::string_view kPort = "0 to 65535 (0: ephemeral)";
constexpr std::string_view kQueueBytes = "1 B to 1 TiB; a number of bytes, or with KiB, MiB, GiB";

// A lossless topic's item limit: its ring has this many slots (about 128 bytes each).
std::size_t parse_queue_items(const Source& s, const std::string& v) {
  return static_cast<std::size_t>(parse_int(s, v, 8, 65'536, "8 to 65536"));
}

std::size_t parse_retain_items(const Source& s, const std::string& v) {
  return static_cast<std::size_t>(parse_int(s, v, 0, 65'536, "0 (none) to 65536"));
}

// A lossless topic retains within its ring of max_queue_items.
void check_retention(const TopicConfig& t, const std::string& where) {
  if (t.evict_after.count() > 0 && t.evict_after < t.max_wait) {
    throw ConfigError(
        "invalid configuration: " + where +
        " evict_after_ms (SLUICE_EVICT_AFTER_MS) = " + std::to_string(t.evict_after.count()) +
        " is below max_wait_ms = " + std::to_string(t.max_wait.count()) +
        " (accepted: 0, never, or max_wait_ms to 3600000: a producer waits "
        "max_wait_ms for a stuck subscriber before one is evicted)");
  }
  if (t.mode == TopicMode::lossless && t.retain_items > t.max_queue_items) {
    throw ConfigError("invalid configuration: " + where +
                      " retain_items (SLUICE_RETAIN_ITEMS) = " + std::to_string(t.retain_items) +
                      " is above max_queue_items = " + std::to_string(t.max_queue_items) +
                      " (accepted on a lossless topic: 0 to max_queue_items)");
  }
}

const std::vector<Setting>& settings() {
  static const std::vector<Setting> table = {
      {"server.host", "SLUICE_HOST", "host",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         // An IP address (IPv6 with or without brackets), or localhost (127.0.0.1).
         constexpr std::string_view kAccepted =
             "an IP address to bind: 127.0.0.1, ::1 or [::1], "
             "0.0.0.0, ::, or localhost";
         std::string host = v == "localhost" ? "127.0.0.1" : v;
         if (host.size() > 2 && host.front() == '[' && host.back() == ']')
           host = host.substr(1, host.size() - 2);
         boost::system::error_code ec;
         (void)boost::asio::ip::make_address(host, ec);
         if (host.empty() || ec) bad(s, v, kAccepted);
         c.host = host;
       }},
      {"server.grpc_port", "SLUICE_GRPC_PORT", "grpc-port",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.grpc_port = static_cast<std::uint16_t>(parse_int(s, v, 0, 65535, kPort));
       }},
      {"server.http_port", "SLUICE_HTTP_PORT", "http-port",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.http_port = static_cast<std::uint16_t>(parse_int(s, v, 0, 65535, kPort));
       }},
      {"server.threads", "SLUICE_THREADS", "threads",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.threads = static_cast<unsigned>(parse_int(s, v, 0, 1024, "0 (one per core) to 1024"));
       }},
      {"server.allow_anonymous_on_network", "SLUICE_ALLOW_ANONYMOUS_ON_NETWORK",
       "allow-anonymous-on-network",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.allow_anonymous_on_network = parse_bool(s, v);
       }},
      {"server.allowed_origins", "SLUICE_ALLOWED_ORIGINS", "allowed-origins",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.allowed_origins = parse_list(v);
         for (const auto& o : c.allowed_origins) {
           if (o != "*" && o.rfind("http://", 0) != 0 && o.rfind("https://", 0) != 0)
             bad(s, v,
                 "origins such as https://dash.example.com or http://localhost:*, comma-separated");
         }
       }},
      {"server.names", "SLUICE_SERVER_NAMES", "server-names",
       [](RelayConfig& c, const Source& /*s*/, const std::string& v) {
         c.server_names = parse_list(v);
       }},
      {"server.allow_any_host", "SLUICE_ALLOW_ANY_HOST", "allow-any-host",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.allow_any_host = parse_bool(s, v);
       }},
      {"server.token_in_query", "SLUICE_TOKEN_IN_QUERY", "token-in-query",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.token_in_query = parse_bool(s, v);
       }},
      {"server.tls_cert_file", "SLUICE_TLS_CERT_FILE", "tls-cert-file",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         if (!v.empty() && !readable(v)) bad(s, v, "a readable PEM certificate chain");
         c.tls_cert_file = v;
       }},
      {"server.tls_key_file", "SLUICE_TLS_KEY_FILE", "tls-key-file",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         if (!v.empty() && !readable(v)) bad(s, v, "a readable PEM private key");
         c.tls_key_file = v;
       }},
      {"server.tls_client_ca_file", "SLUICE_TLS_CLIENT_CA_FILE", "tls-client-ca-file",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         if (!v.empty() && !readable(v)) bad(s, v, "a readable PEM CA certificate");
         c.tls_client_ca_file = v;
       }},
      {"auth.jwt_hs256_secret_file", "SLUICE_JWT_HS256_SECRET_FILE", "jwt-hs256-secret-file",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.jwt_hs256_secret_file = v;
         c.jwt_hs256_secret.clear();
         if (v.empty()) return;
         std::ifstream in(v, std::ios::binary);
         std::string secret(4096, '\0');  // (a secret is short: read 4 KiB at most)
         in.read(secret.data(), static_cast<std::streamsize>(secret.size()));
         if (in.bad() || !in.is_open()) bad(s, v, "a readable file holding the HS256 secret");
         secret.resize(static_cast<std::size_t>(in.gcount()));
         c.jwt_hs256_secret = secret;
         while (!c.jwt_hs256_secret.empty() &&
                (c.jwt_hs256_secret.back() == '\n' || c.jwt_hs256_secret.back() == '\r'))
           c.jwt_hs256_secret.pop_back();
         if (c.jwt_hs256_secret.size() < 32)
           bad(s, v, "a file holding a secret of at least 32 bytes");
       }},
      {"auth.jwt_public_key_file", "SLUICE_JWT_PUBLIC_KEY_FILE", "jwt-public-key-file",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.jwt_public_key_file = v;
         if (!v.empty() && !jwt_public_key_usable(v))
           bad(s, v, "a readable PEM public key, ES256 (P-256) or Ed25519");
       }},
      {"auth.jwt_issuer", "SLUICE_JWT_ISSUER", "jwt-issuer",
       [](RelayConfig& c, const Source& /*s*/, const std::string& v) { c.jwt_issuer = v; }},
      {"limits.max_frame_size_mb", "STREAM_MAX_FRAME_SIZE_MB", "max-frame-size-mb",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         // (at least 1 KiB: a smaller limit refuses every frame a real producer sends)
         const double mb = parse_double(s, v, 1.0 / 1024, 1024, false,
                                        "1 KiB to 1024 MiB, in MiB (0.0009765625 to 1024)");
         c.max_frame_bytes = static_cast<std::uint64_t>(mb * 1024 * 1024);
       }},
      {"limits.max_sessions", "STREAM_MAX_SESSIONS", "max-sessions",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.max_sessions = static_cast<std::size_t>(parse_int(s, v, 1, 100000, "1 to 100000"));
       }},
      {"limits.max_subscribers", "SLUICE_MAX_SUBSCRIBERS", "max-subscribers",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.max_subscribers =
             static_cast<std::size_t>(parse_int(s, v, 1, 1'000'000, "1 to 1000000"));
       }},
      {"limits.max_producer_ids", "SLUICE_MAX_PRODUCER_IDS", "max-producer-ids",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.max_producer_ids =
             static_cast<std::size_t>(parse_int(s, v, 0, 1'000'000, "0 (none) to 1000000"));
       }},
      {"limits.max_workers", "SLUICE_MAX_WORKERS", "max-workers",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.max_workers = static_cast<std::size_t>(parse_int(s, v, 1, 100'000, "1 to 100000"));
       }},
      {"limits.max_sessions_per_client", "SLUICE_MAX_SESSIONS_PER_CLIENT",
       "max-sessions-per-client",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.max_sessions_per_client =
             static_cast<std::size_t>(parse_int(s, v, 1, 1'000'000, "1 to 1000000"));
       }},
      {"limits.max_topics", "SLUICE_MAX_TOPICS", "max-topics",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.max_topics = static_cast<std::size_t>(parse_int(s, v, 1, 1'000'000, "1 to 1000000"));
       }},
      {"limits.send_timeout_ms", "SLUICE_SEND_TIMEOUT_MS", "send-timeout-ms",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.send_timeout = std::chrono::milliseconds(parse_int(s, v, 1, 60'000, "1 to 60000 (ms)"));
       }},
      {"limits.max_send_timeouts", "SLUICE_MAX_SEND_TIMEOUTS", "max-send-timeouts",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.max_send_timeouts = static_cast<std::size_t>(parse_int(s, v, 1, 1000, "1 to 1000"));
       }},
      {"limits.viewer_send_buffer_bytes", "SLUICE_VIEWER_SEND_BUFFER_BYTES",
       "viewer-send-buffer-bytes",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         constexpr std::string_view kAccepted =
             "0 (the kernel's) or 4 KiB to 64 MiB; a number of bytes, or with KiB, MiB";
         const std::uint64_t n = parse_bytes(s, v, 0, 64ULL << 20, kAccepted);
         if (n != 0 && n < 4096) bad(s, v, kAccepted);
         c.viewer_send_buffer_bytes = n;
       }},
      {"limits.handshake_timeout_ms", "SLUICE_HANDSHAKE_TIMEOUT_MS", "handshake-timeout-ms",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.handshake_timeout =
             std::chrono::milliseconds(parse_int(s, v, 1, 600'000, "1 to 600000 (ms)"));
       }},
      {"limits.idle_timeout_ms", "SLUICE_IDLE_TIMEOUT_MS", "idle-timeout-ms",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.idle_timeout =
             std::chrono::milliseconds(parse_int(s, v, 2, 86'400'000, "2 to 86400000 (ms)"));
       }},
      {"frame_gate.drop_threshold", "STREAM_DROP_THRESHOLD", "drop-threshold",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.drop_threshold = parse_double(s, v, 0, 1, true, "a fraction in (0, 1], e.g. 0.10");
       }},
      {"log.level", "SLUICE_LOG_LEVEL", "log-level",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         relay::log::Level level{};
         if (!relay::log::parse_level(v, level))
           bad(s, v, "trace, debug, info, warn, error or off");
         c.log_level = v;
       }},
      {"log.format", "SLUICE_LOG_FORMAT", "log-format",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         relay::log::Format format{};
         if (!relay::log::parse_format(v, format)) bad(s, v, "json or logfmt");
         c.log_format = v;
       }},
      {"frame_gate.slowdown_threshold", "STREAM_SLOWDOWN_THRESHOLD", "slowdown-threshold",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.slowdown_threshold = parse_double(s, v, 0, 1, true, "a fraction in (0, 1], e.g. 0.30");
       }},
      {"topics.auto_create", "SLUICE_AUTO_CREATE", "auto-create",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.auto_create = parse_bool(s, v);
       }},
      {"topics.idle_timeout_ms", "SLUICE_TOPIC_IDLE_TIMEOUT_MS", "topic-idle-timeout-ms",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.topic_idle_timeout = std::chrono::milliseconds(
             parse_int(s, v, 0, 86'400'000, "0 (never) to 86400000 (ms)"));
       }},
      {"topics.mode", "SLUICE_TOPIC_MODE", "topic-mode",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.defaults.mode = parse_mode(s, v);
       }},
      {"topics.max_queue_bytes", "SLUICE_MAX_QUEUE_BYTES", "max-queue-bytes",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.defaults.max_queue_bytes = parse_bytes(s, v, 1, 1ULL << 40, kQueueBytes);
       }},
      {"topics.max_queue_items", "SLUICE_MAX_QUEUE_ITEMS", "max-queue-items",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.defaults.max_queue_items = parse_queue_items(s, v);
       }},
      {"topics.max_wait_ms", "SLUICE_MAX_WAIT_MS", "max-wait-ms",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.defaults.max_wait =
             std::chrono::milliseconds(parse_int(s, v, 0, 3'600'000, "0 to 3600000 (ms)"));
       }},
      {"topics.evict_after_ms", "SLUICE_EVICT_AFTER_MS", "evict-after-ms",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.defaults.evict_after =
             std::chrono::milliseconds(parse_int(s, v, 0, 3'600'000, "0 to 3600000 (ms)"));
       }},
      {"topics.depth", "SLUICE_DEPTH", "depth",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.defaults.depth = static_cast<std::size_t>(parse_int(s, v, 1, 1024, "1 to 1024"));
       }},
      {"topics.retain_items", "SLUICE_RETAIN_ITEMS", "retain-items",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.defaults.retain_items = parse_retain_items(s, v);
       }},
      {"topics.scope", "SLUICE_TOPIC_SCOPE", "topic-scope",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.defaults.scope = parse_scope(s, v);
       }},
      {"nats.urls", "SLUICE_NATS_URLS", "nats-urls",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.nats.urls = parse_list(v);
         for (const auto& u : c.nats.urls) {
           if (u.rfind("nats://", 0) != 0 && u.rfind("tls://", 0) != 0)
             bad(s, v,
                 "NATS URLs such as nats://10.0.0.5:4222 or tls://nats.example.com:4222, "
                 "comma-separated");
         }
       }},
      {"nats.subject_prefix", "SLUICE_NATS_SUBJECT_PREFIX", "nats-subject-prefix",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         if (!subject_prefix_ok(v))
           bad(s, v, "1-64 letters, digits, '_', '-' in '.'-separated tokens, e.g. sluice");
         c.nats.subject_prefix = v;
       }},
      {"nats.credentials_file", "SLUICE_NATS_CREDENTIALS_FILE", "nats-credentials-file",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         if (!v.empty() && !readable(v)) bad(s, v, "a readable NATS .creds file");
         c.nats.credentials_file = v;
       }},
      {"nats.token", "SLUICE_NATS_TOKEN", "nats-token",
       [](RelayConfig& c, const Source& /*s*/, const std::string& v) { c.nats.token = v; }},
      {"nats.name", "SLUICE_NATS_NAME", "nats-name",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         const bool ok =
             v.size() <= 64 && std::all_of(v.begin(), v.end(), [](char ch) {
               return std::isalnum(static_cast<unsigned char>(ch)) != 0 || ch == '_' || ch == '-';
             });
         if (!ok) bad(s, v, "up to 64 letters, digits, '_' and '-' (empty: a random name)");
         c.nats.name = v;
       }},
      {"nats.discovered_servers", "SLUICE_NATS_DISCOVERED_SERVERS", "nats-discovered-servers",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.nats.discovered_servers = parse_bool(s, v);
       }},
      {"nats.replicas", "SLUICE_NATS_REPLICAS", "nats-replicas",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.nats.replicas = static_cast<std::size_t>(parse_int(s, v, 1, 5, "1 to 5"));
       }},
      {"nats.storage", "SLUICE_NATS_STORAGE", "nats-storage",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         if (v != "file" && v != "memory") bad(s, v, "file or memory");
         c.nats.storage = v;
       }},
      {"nats.reorder_timeout_ms", "SLUICE_NATS_REORDER_TIMEOUT_MS", "nats-reorder-timeout-ms",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.nats.reorder_timeout =
             std::chrono::milliseconds(parse_int(s, v, 6000, 3'600'000, "6000 to 3600000 (ms)"));
       }},
      {"whep.max_viewers", "SLUICE_WHEP_MAX_VIEWERS", "whep-max-viewers",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.whep.max_viewers = static_cast<std::size_t>(parse_int(s, v, 0, 10'000, "0 to 10000"));
       }},
      {"whep.max_offer_bytes", "SLUICE_WHEP_MAX_OFFER_BYTES", "whep-max-offer-bytes",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.whep.max_offer_bytes =
             parse_bytes(s, v, 1024, 1ULL << 20, "1 KiB to 1 MiB; a number of bytes, or with KiB");
       }},
      {"whep.answer_timeout_ms", "SLUICE_WHEP_ANSWER_TIMEOUT_MS", "whep-answer-timeout-ms",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.whep.answer_timeout =
             std::chrono::milliseconds(parse_int(s, v, 100, 600'000, "100 to 600000 (ms)"));
       }},
      {"whep.connect_timeout_ms", "SLUICE_WHEP_CONNECT_TIMEOUT_MS", "whep-connect-timeout-ms",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.whep.connect_timeout =
             std::chrono::milliseconds(parse_int(s, v, 100, 600'000, "100 to 600000 (ms)"));
       }},
      {"whep.queue_frames", "SLUICE_WHEP_QUEUE_FRAMES", "whep-queue-frames",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.whep.queue_frames = static_cast<std::size_t>(parse_int(s, v, 1, 64, "1 to 64"));
       }},
      {"whep.ice_addresses", "SLUICE_WHEP_ICE_ADDRESSES", "whep-ice-addresses",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.whep.ice_addresses = parse_list(v);
         for (const auto& a : c.whep.ice_addresses) {
           boost::system::error_code ec;
           (void)boost::asio::ip::make_address(a, ec);
           if (ec) bad(s, v, "IP addresses of this machine, such as 127.0.0.1 or 192.168.1.20");
         }
       }},
      {"whep.stun_server", "SLUICE_WHEP_STUN_SERVER", "whep-stun-server",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         if (!v.empty() && v.rfind("stun://", 0) != 0)
           bad(s, v, "a STUN server as stun://host:port, or empty");
         c.whep.stun_server = v;
       }},
      {"whep.turn_servers", "SLUICE_WHEP_TURN_SERVERS", "whep-turn-servers",
       [](RelayConfig& c, const Source& s, const std::string& v) {
         c.whep.turn_servers = parse_list(v);
         for (const auto& u : c.whep.turn_servers) {
           if (u.rfind("turn://", 0) != 0 && u.rfind("turns://", 0) != 0)
             bad(s, v, "TURN servers as turn://user:password@host:port or turns://...");
         }
       }},
  };
  return table;
}

// A TOML scalar as text (the same parsers then serve every layer).
std::optional<std::string> scalar_text(const toml::node& node) {
  if (const auto* s = node.as_string()) return s->get();
  if (const auto* i = node.as_integer()) return std::to_string(i->get());
  if (const auto* f = node.as_floating_point()) {
    std::ostringstream out;
    out << f->get();
    return out.str();
  }
  if (const auto* b = node.as_boolean()) return b->get() ? "true" : "false";
  if (const auto* a = node.as_array()) {  // a list of strings: comma-separated, as in the env
    std::string out;
    for (const auto& e : *a) {
      const auto* str = e.as_string();
      if (str == nullptr) return std::nullopt;
      out += (out.empty() ? "" : ",") + str->get();
    }
    return out;
  }
  return std::nullopt;
}

constexpr std::array<std::string_view, 16> kTopicKeys = {"mode",
                                                         "scope",
                                                         "retain_items",
                                                         "content_type",
                                                         "max_queue_bytes",
                                                         "max_queue_items",
                                                         "max_wait_ms",
                                                         "evict_after_ms",
                                                         "depth",
                                                         "stage",
                                                         "stage_fps",
                                                         "stage_max_in_flight",
                                                         "stage_results",
                                                         "stage_worker_queue",
                                                         "stage_task_timeout_ms",
                                                         "stage_slow_ms"};

// type/subtype, each 1-63 of RFC 6838's restricted-name characters.
bool media_type(std::string_view v) {
  const auto name_ok = [](std::string_view n) {
    return !n.empty() && n.size() <= 63 && std::all_of(n.begin(), n.end(), [](char ch) {
      return std::isalnum(static_cast<unsigned char>(ch)) != 0 ||
             std::string_view("!#$&-^_.+").find(ch) != std::string_view::npos;
    });
  };
  const auto slash = v.find('/');
  return slash != std::string_view::npos && name_ok(v.substr(0, slash)) &&
         name_ok(v.substr(slash + 1));
}

struct PendingTopic {
  std::string name;
  std::map<std::string, std::pair<Source, std::string>> fields;  // field -> (source, text)
};

// The [[topic]] entries of a file, their keys kept as written (checked once the file is read).
void load_topics(const std::string& path, const toml::node& section,
                 std::vector<PendingTopic>& topics) {
  const auto* list = section.as_array();
  if (list == nullptr) {
    throw ConfigError("invalid configuration file " + path +
                      ": `topic` must be an array of tables ([[topic]])");
  }
  for (const auto& entry : *list) {
    const auto* t = entry.as_table();
    if (t == nullptr) throw ConfigError("invalid configuration file " + path + ": [[topic]]");
    PendingTopic p;
    for (const auto& [k, v] : *t) {
      const std::string key(k.str());
      const auto text = scalar_text(v);
      const Source src{path + " key topic." + key};
      if (!text) bad(src, "(a table or array)", "a string, number or boolean");
      if (key == "name") {
        p.name = *text;
      } else if (std::find(kTopicKeys.begin(), kTopicKeys.end(), key) != kTopicKeys.end()) {
        p.fields[key] = {src, *text};
      } else {
        std::string accepted = "name";
        for (const auto known : kTopicKeys) accepted += ", " + std::string(known);
        throw ConfigError("invalid configuration file " + path + ": unknown key topic." + key +
                          " (accepted: " + accepted + ")");
      }
    }
    topics.push_back(std::move(p));
  }
}

// The [[principal]] entries of a file: name, token or token_sha256, and permission lists.
void load_principals(const std::string& path, const toml::node& section, RelayConfig& c) {
  const auto* list = section.as_array();
  if (list == nullptr) {
    throw ConfigError("invalid configuration file " + path +
                      ": `principal` must be an array of tables ([[principal]])");
  }
  for (const auto& entry : *list) {
    const auto* t = entry.as_table();
    if (t == nullptr) throw ConfigError("invalid configuration file " + path + ": [[principal]]");
    PrincipalConfig p;
    std::optional<std::string> token;
    for (const auto& [k, v] : *t) {
      const std::string key(k.str());
      const Source src{path + " key principal." + key};
      const auto text = scalar_text(v);
      if (!text) bad(src, "(a table)", "a string, or a list of strings");
      std::vector<std::string>* patterns = key == "publish"     ? &p.publish
                                           : key == "subscribe" ? &p.subscribe
                                           : key == "work"      ? &p.work
                                           : key == "stats"     ? &p.stats
                                                                : nullptr;
      if (key == "name") {
        p.name = *text;
      } else if (key == "token") {
        token = *text;
      } else if (key == "certificate_cn") {
        p.certificate_cn = *text;
      } else if (key == "token_sha256") {
        p.token_sha256 = *text;
        const bool hex = p.token_sha256.size() == 64 &&
                         p.token_sha256.find_first_not_of("0123456789abcdef") == std::string::npos;
        if (!hex) bad(src, *text, "64 lower-case hex digits: the SHA-256 of the token");
      } else if (patterns != nullptr) {
        *patterns = parse_list(*text);
        for (const auto& pattern : *patterns) {
          const std::string_view bare =
              pattern.front() == '!' ? std::string_view(pattern).substr(1) : pattern;
          if (const auto problem = topic_pattern_problem(bare); !problem.empty())
            bad(src, pattern, problem);
        }
      } else {
        throw ConfigError("invalid configuration file " + path + ": unknown key principal." + key +
                          " (accepted: name, token, token_sha256, certificate_cn, "
                          "publish, subscribe, work, stats)");
      }
    }
    if (token && !p.token_sha256.empty()) {
      throw ConfigError("invalid configuration file " + path + ": [[principal]] \"" + p.name +
                        "\" has both token and token_sha256 (give one)");
    }
    if (token) p.token_sha256 = token_sha256(*token);
    c.principals.push_back(std::move(p));
  }
}

// The [[ingest]] entries: each a source `sluice serve` publishes to one of its topics.
void load_ingests(const std::string& path, const toml::node& section, RelayConfig& c) {
  const auto* list = section.as_array();
  if (list == nullptr) {
    throw ConfigError("invalid configuration file " + path +
                      ": `ingest` must be an array of tables ([[ingest]])");
  }
  for (const auto& entry : *list) {
    const auto* t = entry.as_table();
    if (t == nullptr) throw ConfigError("invalid configuration file " + path + ": [[ingest]]");
    IngestEntryConfig e;
    for (const auto& [k, v] : *t) {
      const std::string key(k.str());
      const Source src{path + " key ingest." + key};
      const auto text = scalar_text(v);
      if (!text) bad(src, "(a table or array)", "a string or a number");
      if (key == "uri") {
        e.uri = *text;
        if (e.uri.rfind("rtsp://", 0) != 0 && e.uri.rfind("file://", 0) != 0 &&
            e.uri.rfind("v4l2://", 0) != 0 && e.uri.rfind("test://", 0) != 0)
          bad(src, *text, "rtsp://, file://, v4l2:// or test://");
      } else if (key == "topic") {
        e.topic = *text;
        if (const auto problem = topic_name_problem(e.topic); !problem.empty())
          bad(src, *text, problem);
      } else if (key == "output") {
        if (*text != "encoded" && *text != "raw" && *text != "jpeg")
          bad(src, *text, "encoded, raw or jpeg");
        e.output = *text;
      } else if (key == "width" || key == "height" || key == "fps") {
        const int n = static_cast<int>(parse_int(src, *text, 0, 16384, "0 to 16384"));
        (key == "width" ? e.width : key == "height" ? e.height : e.fps) = n;
      } else if (key == "queue_frames") {
        e.queue_frames = static_cast<std::size_t>(parse_int(src, *text, 1, 4096, "1 to 4096"));
      } else if (key == "source_timeout_ms") {
        e.source_timeout =
            std::chrono::milliseconds(parse_int(src, *text, 100, 600'000, "100 to 600000 (ms)"));
      } else if (key == "token") {
        e.token = *text;
      } else {
        throw ConfigError("invalid configuration file " + path + ": unknown key ingest." + key +
                          " (accepted: uri, topic, output, width, height, fps, queue_frames, "
                          "source_timeout_ms, token)");
      }
    }
    if (e.uri.empty() || e.topic.empty()) {
      throw ConfigError("invalid configuration file " + path +
                        ": an [[ingest]] needs a uri and a topic");
    }
    c.ingests.push_back(std::move(e));
  }
}

// A section's keys ([server], [limits], ...), each applied as its setting says.
void load_section(const std::string& path, const std::string& section_name,
                  const toml::node& section, RelayConfig& c) {
  const auto* table = section.as_table();
  if (table == nullptr) {
    throw ConfigError(
        "invalid configuration file " + path + ": unknown key " + section_name +
        " (sections: server, auth, limits, log, frame_gate, topics, nats, whep, [[topic]], "
        "[[principal]] and [[ingest]])");
  }
  for (const auto& [k, v] : *table) {
    const std::string key = section_name + "." + std::string(k.str());
    const auto it = std::find_if(settings().begin(), settings().end(),
                                 [&](const Setting& s) { return s.key == key; });
    if (it == settings().end()) {
      throw ConfigError("invalid configuration file " + path + ": unknown key " + key +
                        " (see docs/configuration.md)");
    }
    const auto text = scalar_text(v);
    const Source src{path + " key " + key};
    if (!text) bad(src, "(a table or array)", "a string, number or boolean");
    it->apply(c, src, *text);
  }
}

void load_file(const std::string& path, RelayConfig& c, std::vector<PendingTopic>& topics) {
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    std::ostringstream m;
    m << "invalid configuration file " << path << ": " << e.description() << " (line "
      << e.source().begin.line << ", column " << e.source().begin.column << ")";
    throw ConfigError(m.str());
  }
  for (const auto& [section_key, section] : root) {
    const std::string section_name(section_key.str());
    if (section_name == "topic") {
      load_topics(path, section, topics);
    } else if (section_name == "principal") {
      load_principals(path, section, c);
    } else if (section_name == "ingest") {
      load_ingests(path, section, c);
    } else {
      load_section(path, section_name, section, c);
    }
  }
}

// The stage_* keys of a [[topic]]: `stage = true` declares the stage, the others tune it.
void apply_stage(const PendingTopic& p, TopicConfig& t) {
  const auto field = [&](const char* key) -> const std::pair<Source, std::string>* {
    const auto it = p.fields.find(key);
    return it == p.fields.end() ? nullptr : &it->second;
  };
  bool declared = false;
  if (const auto* f = field("stage")) {
    if (f->second == "true") {
      declared = true;
    } else if (f->second != "false") {
      bad(f->first, f->second, "true or false");
    }
  }
  StageConfig st;
  if (const auto* f = field("stage_fps")) {
    st.fps = parse_double(f->first, f->second, 0.1, 1000, false, "0.1 to 1000");
  }
  if (const auto* f = field("stage_max_in_flight")) {
    st.max_in_flight =
        static_cast<std::size_t>(parse_int(f->first, f->second, 1, 1024, "1 to 1024"));
  }
  if (const auto* f = field("stage_results")) {
    if (const std::string problem = topic_name_problem(f->second); !problem.empty()) {
      bad(f->first, f->second, "a topic name (" + problem + ")");
    }
    if (f->second == p.name) bad(f->first, f->second, "a topic other than the stage's own");
    st.results_topic = f->second;
  }
  if (const auto* f = field("stage_worker_queue")) {
    st.worker_queue =
        static_cast<std::size_t>(parse_int(f->first, f->second, 1, 1024, "1 to 1024"));
  }
  if (const auto* f = field("stage_task_timeout_ms")) {
    st.task_timeout = std::chrono::milliseconds(
        parse_int(f->first, f->second, 1, 3'600'000, "1 to 3600000 (ms)"));
  }
  if (const auto* f = field("stage_slow_ms")) {
    st.slow_latency = std::chrono::milliseconds(
        parse_int(f->first, f->second, 1, 3'600'000, "1 to 3600000 (ms)"));
  }
  const bool tuned = std::any_of(p.fields.begin(), p.fields.end(),
                                 [](const auto& f) { return f.first.starts_with("stage_"); });
  if (tuned && !declared) {
    throw ConfigError("invalid configuration: [[topic]] \"" + p.name +
                      "\" sets stage_* keys without stage = true");
  }
  if (declared) {
    if (st.results_topic.empty()) st.results_topic = p.name + ".results";
    if (const std::string problem = topic_name_problem(st.results_topic); !problem.empty()) {
      throw ConfigError("invalid configuration: [[topic]] \"" + p.name + "\": results topic \"" +
                        st.results_topic + "\": " + problem + " (set stage_results)");
    }
    t.stage = st;
  }
}

}  // namespace

std::string_view to_string(TopicScope scope) noexcept {
  return scope == TopicScope::local ? "local" : "cluster";
}

std::string_view to_string(TopicMode mode) noexcept {
  return mode == TopicMode::lossless ? "lossless" : "realtime";
}

std::string topic_name_problem(std::string_view name) {
  if (name.empty()) return "a topic name is empty";
  if (name.size() > 128) return "a topic name is longer than 128 characters";
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return "a topic name may hold only letters, digits, '.', '_' and '-'";
  }
  return {};
}

std::string topic_pattern_problem(std::string_view pattern) {
  if (pattern.empty()) return "a topic pattern is empty";
  if (pattern.size() > 128) return "a topic pattern is longer than 128 characters";
  std::size_t start = 0;
  while (start <= pattern.size()) {
    const std::size_t dot = std::min(pattern.find('.', start), pattern.size());
    const std::string_view segment = pattern.substr(start, dot - start);
    if (segment == ">" && dot != pattern.size()) return "'>' may only be the last segment";
    const bool wildcard = segment == "*" || segment == ">";
    if (!wildcard && segment.find_first_of("*>") != std::string_view::npos)
      return "'*' and '>' stand for whole segments (a.*.c, a.>)";
    if (!wildcard && !topic_name_problem(segment).empty())
      return "a segment may hold only letters, digits, '_' and '-'";
    start = dot + 1;
  }
  return {};
}

std::string token_sha256(std::string_view token) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int n = 0;
  if (EVP_Digest(token.data(), token.size(), digest.data(), &n, EVP_sha256(), nullptr) != 1)
    throw ConfigError("cannot compute SHA-256 (OpenSSL)");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out += kHex[digest[i] >> 4];
    out += kHex[digest[i] & 15];
  }
  return out;
}

const TopicConfig* RelayConfig::topic(std::string_view name) const {
  for (const auto& t : topics) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

namespace {

// Principals' names are unique, at most one has no token, and an open relay (no principal)
// binds loopback only unless allow_anonymous_on_network says otherwise.
void check_principals(const RelayConfig& c) {
  std::set<std::string> names;
  std::size_t anonymous = 0;
  bool open_to_anyone = false;
  for (const auto& p : c.principals) {
    if (p.name.empty()) throw ConfigError("invalid configuration: a [[principal]] without a name");
    if (!names.insert(p.name).second) {
      throw ConfigError("invalid configuration: [[principal]] \"" + p.name +
                        "\" is declared twice");
    }
    if (p.token_sha256.empty() && p.certificate_cn.empty()) {
      ++anonymous;
      // (who presents no token may publish or read every topic: the relay is open)
      for (const auto* list : {&p.publish, &p.subscribe}) {
        if (std::find(list->begin(), list->end(), ">") != list->end()) open_to_anyone = true;
      }
    }
  }
  if (anonymous > 1) {
    throw ConfigError(
        "invalid configuration: more than one [[principal]] without a token (at most one: it "
        "is who clients presenting no token are)");
  }
  if (c.tls_cert_file.empty() != c.tls_key_file.empty() ||
      (!c.tls_client_ca_file.empty() && c.tls_cert_file.empty())) {
    throw ConfigError(
        "invalid configuration: server.tls_cert_file and server.tls_key_file go together, and "
        "server.tls_client_ca_file needs them (SLUICE_TLS_CERT_FILE, SLUICE_TLS_KEY_FILE)");
  }
  boost::system::error_code ec;
  const auto address = boost::asio::ip::make_address(c.host, ec);
  if ((!c.authenticates() || open_to_anyone) && !c.allow_anonymous_on_network && !ec &&
      !address.is_loopback()) {
    throw ConfigError(
        "invalid configuration: server.host " + c.host + " is not loopback and " +
        (open_to_anyone ? std::string("a [[principal]] without a token may publish or subscribe "
                                      "to every topic (\">\")")
                        : std::string("no [[principal]] or signed tokens are configured")) +
        ": anyone on the network could publish and read every topic. Configure principals "
        "(docs/security.md), or set server.allow_anonymous_on_network = true "
        "(SLUICE_ALLOW_ANONYMOUS_ON_NETWORK) to run open on purpose");
  }
}

// Cluster topics need [nats], and carry items only (no stage behind them).
void check_cluster(const RelayConfig& c) {
  const auto check = [&](const TopicConfig& t, const std::string& what) {
    if (t.scope != TopicScope::cluster) return;
    if (!c.nats.enabled()) {
      throw ConfigError("invalid configuration: " + what +
                        " has scope = \"cluster\" but nats.urls (SLUICE_NATS_URLS) is empty: "
                        "a cluster topic is shared through NATS (docs/cluster.md)");
    }
    if (t.stage) {
      throw ConfigError("invalid configuration: " + what +
                        " declares a stage and scope = \"cluster\": a stage's topic is local "
                        "(its workers join one relay); set scope = \"local\"");
    }
  };
  check(c.defaults, "[topics]");
  for (const auto& t : c.topics) check(t, "[[topic]] \"" + t.name + "\"");
  if (!c.nats.credentials_file.empty() && !c.nats.token.empty()) {
    throw ConfigError(
        "invalid configuration: nats.credentials_file and nats.token both set (give one)");
  }
}

}  // namespace

RelayConfig load_relay_config(const std::optional<std::string>& file,
                              const std::function<const char*(const char*)>& env,
                              const Overrides& cli) {
  RelayConfig c;
  std::vector<PendingTopic> pending;
  if (file) load_file(*file, c, pending);
  for (const Setting& s : settings()) {
    if (const char* v = env(s.env.c_str())) s.apply(c, Source{"environment " + s.env}, v);
  }
  for (const auto& [flag, value] : cli) {
    const auto it = std::find_if(settings().begin(), settings().end(),
                                 [&f = flag](const Setting& s) { return s.flag == f; });
    if (it == settings().end()) throw ConfigError("unknown setting --" + flag);
    it->apply(c, Source{"command line --" + flag}, value);
  }
  if (c.slowdown_threshold < c.drop_threshold) {
    throw ConfigError("invalid configuration: slowdown_threshold (STREAM_SLOWDOWN_THRESHOLD) = " +
                      std::to_string(c.slowdown_threshold) +
                      " is below drop_threshold (STREAM_DROP_THRESHOLD) = " +
                      std::to_string(c.drop_threshold) + " (accepted: drop_threshold to 1)");
  }
  check_retention(c.defaults, "[topics]");
  // Declared topics inherit the final defaults, then apply their own fields.
  std::set<std::string> names;
  for (auto& p : pending) {
    if (const std::string problem = topic_name_problem(p.name); !problem.empty()) {
      throw ConfigError("invalid configuration: [[topic]] name \"" + p.name + "\": " + problem);
    }
    if (!names.insert(p.name).second) {
      throw ConfigError("invalid configuration: [[topic]] \"" + p.name + "\" is declared twice");
    }
    TopicConfig t = c.defaults;
    t.name = p.name;
    for (const auto& [field, sv] : p.fields) {
      const auto& [src, text] = sv;
      if (field == "mode") t.mode = parse_mode(src, text);
      if (field == "scope") t.scope = parse_scope(src, text);
      if (field == "max_queue_bytes")
        t.max_queue_bytes = parse_bytes(src, text, 1, 1ULL << 40, kQueueBytes);
      if (field == "max_queue_items") t.max_queue_items = parse_queue_items(src, text);
      if (field == "max_wait_ms") {
        t.max_wait =
            std::chrono::milliseconds(parse_int(src, text, 0, 3'600'000, "0 to 3600000 (ms)"));
      }
      if (field == "evict_after_ms") {
        t.evict_after =
            std::chrono::milliseconds(parse_int(src, text, 0, 3'600'000, "0 to 3600000 (ms)"));
      }
      if (field == "depth")
        t.depth = static_cast<std::size_t>(parse_int(src, text, 1, 1024, "1 to 1024"));
      if (field == "retain_items") t.retain_items = parse_retain_items(src, text);
      if (field == "content_type") {
        if (!media_type(text)) bad(src, text, "a media type such as image/jpeg (type/subtype)");
        t.content_type = text;
      }
    }
    apply_stage(p, t);
    check_retention(t, "[[topic]] \"" + t.name + "\"");
    c.topics.push_back(std::move(t));
  }
  check_principals(c);
  check_cluster(c);
  if (c.topics.size() > c.max_topics) {
    throw ConfigError("invalid configuration: " + std::to_string(c.topics.size()) +
                      " topics declared; limits.max_topics (SLUICE_MAX_TOPICS) allows " +
                      std::to_string(c.max_topics));
  }
  return c;
}

std::vector<std::string> relay_setting_help() {
  // The defaults as the file would say them: the effective configuration of no file.
  const toml::table defaults = toml::parse(to_toml(
      load_relay_config(std::nullopt, [](const char*) -> const char* { return nullptr; }, {})));
  std::vector<std::string> help;
  help.reserve(settings().size());
  for (const Setting& s : settings()) {
    std::string text = s.key + " (" + s.env + ")";
    if (const auto node = defaults.at_path(s.key)) {
      std::string value;
      if (const auto* str = node.as_string()) {
        value = str->get().empty() ? "none" : str->get();
      } else if (const auto* arr = node.as_array()) {
        for (const auto& e : *arr) {
          if (const auto* item = e.as_string()) value += (value.empty() ? "" : ",") + item->get();
        }
        if (value.empty()) value = "none";
      } else if (auto text_value = scalar_text(*node.node())) {
        value = *text_value;
      }
      if (!value.empty()) text += "; default " + value;
    }
    help.push_back(text + "; docs/configuration.md");
  }
  return help;
}

std::vector<std::string> relay_setting_flags() {
  std::vector<std::string> flags;
  flags.reserve(settings().size());
  for (const Setting& s : settings()) flags.push_back(s.flag);
  return flags;
}

namespace {

// The shortest text that reads back as the same double (what a round trip needs).
std::string shortest(double v) {
  std::array<char, 32> buf{};
  const auto r = std::to_chars(buf.data(), buf.data() + buf.size(), v);
  return {buf.data(), r.ptr};
}

// A TOML basic string: quoted, with quotes, backslashes and control characters escaped.
std::string toml_quoted(std::string_view text) {
  std::string out = "\"";
  for (const char ch : text) {
    const auto u = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (u < 0x20 || u == 0x7f) {
      std::array<char, 8> esc{};
      std::snprintf(esc.data(), esc.size(), "\\u%04x", u);
      out += esc.data();
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string quoted_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (const auto& i : items)
    out += (out.size() > 1 ? ", " : "") + toml_quoted(std::string_view(i));
  return out + "]";
}

}  // namespace

std::string to_toml(const RelayConfig& c) {
  std::ostringstream o;
  o << "[server]\nhost = \"" << c.host << "\"\ngrpc_port = " << c.grpc_port
    << "\nhttp_port = " << c.http_port << "\nthreads = " << c.threads
    << "\nallow_anonymous_on_network = " << (c.allow_anonymous_on_network ? "true" : "false")
    << "\nallowed_origins = " << quoted_list(c.allowed_origins)
    << "\nnames = " << quoted_list(c.server_names)
    << "\nallow_any_host = " << (c.allow_any_host ? "true" : "false")
    << "\ntoken_in_query = " << (c.token_in_query ? "true" : "false")
    << "\ntls_cert_file = " << toml_quoted(c.tls_cert_file)
    << "\ntls_key_file = " << toml_quoted(c.tls_key_file)
    << "\ntls_client_ca_file = " << toml_quoted(c.tls_client_ca_file)
    << "\n\n[auth]\njwt_hs256_secret_file = " << toml_quoted(c.jwt_hs256_secret_file)
    << "\njwt_public_key_file = " << toml_quoted(c.jwt_public_key_file)
    << "\njwt_issuer = " << toml_quoted(c.jwt_issuer) << "\n\n[limits]\n"
    << "max_frame_size_mb = "
    << shortest(static_cast<double>(c.max_frame_bytes) / (1024.0 * 1024.0))
    << "\nmax_sessions = " << c.max_sessions << "\nmax_subscribers = " << c.max_subscribers
    << "\nmax_workers = " << c.max_workers << "\nmax_producer_ids = " << c.max_producer_ids
    << "\nmax_sessions_per_client = " << c.max_sessions_per_client
    << "\nmax_topics = " << c.max_topics << "\nsend_timeout_ms = " << c.send_timeout.count()
    << "\nmax_send_timeouts = " << c.max_send_timeouts
    << "\nviewer_send_buffer_bytes = " << c.viewer_send_buffer_bytes
    << "\nhandshake_timeout_ms = " << c.handshake_timeout.count()
    << "\nidle_timeout_ms = " << c.idle_timeout.count()
    << "\n\n[log]\nlevel = " << toml_quoted(std::string_view(c.log_level))
    << "\nformat = " << toml_quoted(std::string_view(c.log_format))
    << "\n\n[frame_gate]\ndrop_threshold = " << shortest(c.drop_threshold)
    << "\nslowdown_threshold = " << shortest(c.slowdown_threshold)
    << "\n\n[topics]\nauto_create = " << (c.auto_create ? "true" : "false")
    << "\nidle_timeout_ms = " << c.topic_idle_timeout.count() << "\nmode = \""
    << to_string(c.defaults.mode) << "\"\nmax_queue_bytes = " << c.defaults.max_queue_bytes
    << "\nmax_queue_items = " << c.defaults.max_queue_items
    << "\nmax_wait_ms = " << c.defaults.max_wait.count()
    << "\nevict_after_ms = " << c.defaults.evict_after.count() << "\ndepth = " << c.defaults.depth
    << "\nretain_items = " << c.defaults.retain_items << "\nscope = \""
    << to_string(c.defaults.scope) << "\"\n\n[nats]\nurls = " << quoted_list(c.nats.urls)
    << "\nsubject_prefix = " << toml_quoted(c.nats.subject_prefix)
    << "\ncredentials_file = " << toml_quoted(c.nats.credentials_file)
    << "\nname = " << toml_quoted(c.nats.name)
    << "\ndiscovered_servers = " << (c.nats.discovered_servers ? "true" : "false")
    << "\nreplicas = " << c.nats.replicas << "\nstorage = " << toml_quoted(c.nats.storage)
    << "\nreorder_timeout_ms = " << c.nats.reorder_timeout.count()
    << "\n\n[whep]\nmax_viewers = " << c.whep.max_viewers
    << "\nmax_offer_bytes = " << c.whep.max_offer_bytes
    << "\nanswer_timeout_ms = " << c.whep.answer_timeout.count()
    << "\nconnect_timeout_ms = " << c.whep.connect_timeout.count()
    << "\nqueue_frames = " << c.whep.queue_frames
    << "\nice_addresses = " << quoted_list(c.whep.ice_addresses)
    << "\nstun_server = " << toml_quoted(c.whep.stun_server) << "\n";
  if (!c.whep.turn_servers.empty()) o << "# whep.turn_servers are set (not printed: credentials)\n";
  if (!c.nats.token.empty()) o << "# nats.token is set (not printed)\n";
  for (const auto& t : c.topics) {
    o << "\n[[topic]]\nname = \"" << t.name << "\"\nmode = \"" << to_string(t.mode)
      << "\"\nmax_queue_bytes = " << t.max_queue_bytes
      << "\nmax_queue_items = " << t.max_queue_items << "\nmax_wait_ms = " << t.max_wait.count()
      << "\nevict_after_ms = " << t.evict_after.count() << "\ndepth = " << t.depth
      << "\nretain_items = " << t.retain_items << "\nscope = \"" << to_string(t.scope) << "\"\n";
    if (!t.content_type.empty()) o << "content_type = \"" << t.content_type << "\"\n";
    if (t.stage) {
      o << "stage = true\nstage_fps = " << shortest(t.stage->fps)
        << "\nstage_max_in_flight = " << t.stage->max_in_flight << "\nstage_results = \""
        << t.stage->results_topic << "\"\nstage_worker_queue = " << t.stage->worker_queue
        << "\nstage_task_timeout_ms = " << t.stage->task_timeout.count()
        << "\nstage_slow_ms = " << t.stage->slow_latency.count() << "\n";
    }
  }
  for (const auto& p : c.principals) {  // (the token's hash, never a token)
    o << "\n[[principal]]\nname = " << toml_quoted(p.name);
    if (!p.token_sha256.empty()) o << "\ntoken_sha256 = \"" << p.token_sha256 << "\"";
    if (!p.certificate_cn.empty()) o << "\ncertificate_cn = " << toml_quoted(p.certificate_cn);
    o << "\npublish = " << quoted_list(p.publish) << "\nsubscribe = " << quoted_list(p.subscribe)
      << "\nwork = " << quoted_list(p.work) << "\nstats = " << quoted_list(p.stats) << "\n";
  }
  for (const auto& e : c.ingests) {
    o << "\n[[ingest]]\nuri = " << toml_quoted(e.uri) << "\ntopic = " << toml_quoted(e.topic)
      << "\noutput = " << toml_quoted(e.output) << "\nwidth = " << e.width
      << "\nheight = " << e.height << "\nfps = " << e.fps << "\nqueue_frames = " << e.queue_frames
      << "\nsource_timeout_ms = " << e.source_timeout.count() << "\n";
    if (!e.token.empty()) o << "# token is set (not printed)\n";
  }
  return o.str();
}

}  // namespace sluice

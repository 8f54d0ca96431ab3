// `sluice pub` and `sluice sub`: the client SDK from the command line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sluice/client/client.hpp"

namespace sluice::cli {

struct PubOptions {
  std::string target = "127.0.0.1:7400";
  std::string topic;
  bool from_stdin = false;     // one item per line of standard input, until EOF
  std::uint64_t count = 1000;  // generated items (without --stdin)
  std::uint64_t size = 1024;   // bytes per generated item
  double rate = 0;             // items per second; 0: as fast as the relay takes them
  std::uint64_t window_bytes = 8u << 20;
  int max_retries = 10;
  std::string token;  // --token, or SLUICE_TOKEN
  client::TlsOptions tls;
  bool quiet = false;  // no event lines
};

struct SubOptions {
  std::string target = "127.0.0.1:7400";
  std::vector<std::string> fallbacks;  // other relays serving the topic (--fallback)
  std::string topic;
  std::string name = "sluice-sub";
  std::uint32_t depth = 0;
  std::string token;  // --token, or SLUICE_TOKEN
  client::TlsOptions tls;
  std::uint64_t count = 0;  // stop after this many items; 0: until the stream ends or SIGINT
  bool print = false;       // write each payload to stdout, one per line
  int reconnect_s = 30;     // resume after the stream ends, for up to this long; 0: do not
};

/// Publishes; prints events (stderr) and a JSON summary (stdout). Returns an exit code.
int run_pub(const PubOptions& options);
/// Subscribes; prints a JSON line when subscribed and a JSON summary at the end (stderr, or
/// stdout without --print). Returns an exit code.
int run_sub(const SubOptions& options);

}  // namespace sluice::cli

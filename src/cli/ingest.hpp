// `sluice ingest`: a camera's (or a file's) frames published to a relay topic.
#pragma once

#include <string>

#include "sluice/client/client.hpp"
#include "sluice/media/ingest.hpp"

namespace sluice::cli {

struct IngestCliOptions {
  media::IngestOptions ingest;
  client::PublisherOptions publisher;  // the relay, the topic, the token, TLS
  int stats_every_s = 10;  // a JSON stats line on stdout this often (0: only at the end)
};

/// Publishes the source's frames until SIGINT/SIGTERM, or a file's end. Prints the ingest's
/// events and stats as JSON lines (stdout) and a summary at the end. Returns an exit code: 0,
/// 1 if publishing failed, 2 on a bad option.
int run_ingest(const IngestCliOptions& options);

}  // namespace sluice::cli

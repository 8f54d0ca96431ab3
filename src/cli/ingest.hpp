// `sluice ingest`: a camera's (or a file's) frames published to a relay topic.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "ingest_publisher.hpp"
#include "sluice/client/client.hpp"
#include "sluice/detail/cond_var.hpp"
#include "sluice/detail/thread_annotations.hpp"
#include "sluice/media/ingest.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay/config.hpp"

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

/// The [[ingest]] entries `sluice serve` runs: each an IngestPublisher to the relay's own gRPC
/// port (`grpc_target`), with the entry's token. Their changes go to stdout as JSON lines (the
/// entry's topic and uri added), their counters into `registry` (the relay's /metrics, labelled
/// by topic: sluice_ingest_*) until stop(). Throws std::invalid_argument naming the entry that
/// is wrong.
class ServedIngests {
 public:
  ServedIngests(const std::vector<IngestEntryConfig>& entries, const std::string& grpc_target,
                metrics::Registry& registry);
  ServedIngests(const ServedIngests&) = delete;
  ServedIngests& operator=(const ServedIngests&) = delete;
  ServedIngests(ServedIngests&&) = delete;
  ServedIngests& operator=(ServedIngests&&) = delete;
  ~ServedIngests();  // stop()
  /// Stops every source and closes its publisher (before the relay stops).
  void stop();

 private:
  // Puts ingest `i`'s counters into the registry (read at each scrape), or takes them out.
  void add_series(const media::IngestPublisher& i);
  void remove_series(const media::IngestPublisher& i);

  std::vector<std::unique_ptr<media::IngestPublisher>> ingests_;
  metrics::Registry& registry_;
  Mutex mu_;
  CondVar cv_;
  bool stopping_ SLUICE_GUARDED_BY(mu_) = false;
  std::thread reporter_;
};

/// Prints an ingest's changes as JSON lines (stdout), `extra` fields added: its source lost
/// (the error), reconnecting, and its stats every `every_s` seconds (0: never).
class IngestReporter {
 public:
  explicit IngestReporter(int every_s)
      : every_s_(every_s),
        next_stats_(std::chrono::steady_clock::now() + std::chrono::seconds(every_s)) {}
  void changes(const media::IngestStats& s, const nlohmann::json& extra);

 private:
  int every_s_;
  std::chrono::steady_clock::time_point next_stats_;
  std::uint64_t reconnects_ = 0;
  std::string last_error_;
};

}  // namespace sluice::cli

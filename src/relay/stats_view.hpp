// The stats role (relay-internal): who may read the relay's state, and what it reads. Every
// reader — GET /v1/stats, GET /metrics, the stats stream (/v1/ws/stats) and the Stats RPC —
// joins through StatsReader::join, the one permission check: a principal with no `stats`
// pattern is refused (permission_denied, naming it); one with some sees only the topics they
// match, in the snapshot and in /metrics' topic and stage series. A snapshot is read from each
// topic's own stats at the moment of the call; any thread.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "access.hpp"
#include "outcome.hpp"
#include "sluice/metrics.hpp"
#include "topic_registry.hpp"

namespace sluice::relay {

/// A topic's headline figures, as typed values (the Stats RPC's typed fields).
struct TopicSummary {
  std::string name;
  std::string mode;
  std::uint64_t published = 0;
  std::uint64_t published_bytes = 0;
  std::uint32_t subscribers = 0;
  std::uint64_t queue_bytes = 0;  // the most any subscriber has waiting
  std::uint64_t retained_bytes = 0;
  std::uint64_t lost = 0;  // by all its subscribers
  std::uint64_t evicted = 0;
  std::uint64_t throttled_publishers = 0;
  std::string epoch;
  std::uint64_t retained_from = 0;
};

/// One reading of the topics a reader may see: the whole of it as JSON ({"topics": [...]}, as
/// /v1/stats serves it) and each topic's summary, from the same reads.
struct StatsSnapshot {
  nlohmann::json json;
  std::vector<TopicSummary> topics;
};

class StatsReader {
 public:
  /// `who` as a stats reader, or permission_denied if it may read the stats of no topic.
  /// `topics` must outlive the reader.
  static Outcome<StatsReader> join(const TopicRegistry& topics, Who who);
  /// Every topic, for the relay itself (RelayServer::stats_json).
  static StatsReader everything(const TopicRegistry& topics);

  StatsSnapshot snapshot() const;
  /// May the reader see a /metrics series with these labels? (a topic's or a stage's series
  /// only if it may see that topic)
  bool sees(const metrics::Labels& labels) const;
  const Who& who() const { return who_; }

 private:
  StatsReader(const TopicRegistry& topics, Who who) : topics_(&topics), who_(std::move(who)) {}
  const TopicRegistry* topics_;
  Who who_;  // null: everything
};

/// The JSON as text, as GET /v1/stats serves it.
std::string stats_text(const nlohmann::json& stats);

}  // namespace sluice::relay

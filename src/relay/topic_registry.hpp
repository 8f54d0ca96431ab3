// The relay's topics (relay-internal): found by name, created on first use from the
// configuration (declared, or the defaults when auto_create is on), each with its series in
// /metrics and its stage (and the stage's results topic) when it declares one. There are at most
// limits.max_topics at once. Declared topics and stages' results topics live as long as the
// relay; one made on first use is removed, with its series, once no publisher, subscriber or
// worker has used it for topics.idle_timeout_ms (remove_idle(), called periodically). What
// an empty topic costs is its ring of slots (max_queue_items, or 2 x depth, small entries) and
// its series.
//
// Thread-safety: every member may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "outcome.hpp"
#include "sluice/detail/thread_annotations.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay/config.hpp"
#include "topic.hpp"

namespace sluice::relay {

class TopicRegistry {
 public:
  TopicRegistry(const RelayConfig& config, metrics::Registry& metrics);

  /// `config` and `metrics` must outlive this.
  /// The topic `name`, created if allowed; bad_request (malformed name), not_found (unknown
  /// with auto_create off), too_many_topics (limits.max_topics reached) or not_found (its
  /// stage's results topic cannot be made) otherwise.
  Outcome<std::shared_ptr<Topic>> find(const std::string& name);
  /// Every topic, by name.
  std::vector<std::shared_ptr<Topic>> all() const;
  /// Every stage (for their periodic polls).
  std::vector<std::shared_ptr<Stage>> stages() const;
  /// Closes every topic: subscribers drain what is queued, then see the end (shutdown).
  void close_all();
  /// Removes the removable topics nobody has used for topics.idle_timeout_ms by `now`, and
  /// their series; starts the idle clock of those nobody uses now. Returns how many went.
  std::size_t remove_idle(std::chrono::steady_clock::time_point now);
  /// Topics now.
  std::size_t size() const;
  /// `hook` runs for each topic made from now on, under the registry's lock, before anyone can
  /// use the topic (the bridge to NATS starts sending a cluster topic's items there). Set once,
  /// before the relay serves.
  void on_created(std::function<void(const std::shared_ptr<Topic>&)> hook);

 private:
  Outcome<std::shared_ptr<Topic>> find_locked(const std::string& name) SLUICE_REQUIRES(mu_);
  Outcome<std::shared_ptr<Stage>> make_stage(const std::string& name, const TopicConfig& tc)
      SLUICE_REQUIRES(mu_);
  void register_metrics(Topic& t) SLUICE_REQUIRES(mu_);
  static bool in_use(const std::shared_ptr<Topic>& t);

  const RelayConfig& config_;
  metrics::Registry& metrics_;
  mutable Mutex mu_;
  std::map<std::string, std::shared_ptr<Topic>> topics_ SLUICE_GUARDED_BY(mu_);
  std::function<void(const std::shared_ptr<Topic>&)> created_ SLUICE_GUARDED_BY(mu_);
  std::atomic<std::size_t> count_{0};  // topics_.size(), for readers without the lock
  metrics::Counter& refused_;
  metrics::Counter& removed_;
};

}  // namespace sluice::relay

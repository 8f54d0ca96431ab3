// The relay's topics (relay-internal): found by name, created on first use from the
// configuration (declared, or the defaults when auto_create is on), each with its series in
// /metrics and its stage (and the stage's results topic) when it declares one. Topics live as
// long as the relay.
//
// Thread-safety: every member may be called from any thread.
#pragma once

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
  /// `config` and `metrics` must outlive this.
  TopicRegistry(const RelayConfig& config, metrics::Registry& metrics)
      : config_(config), metrics_(metrics) {}

  /// The topic `name`, created if allowed; bad_request (malformed name), not_found (unknown
  /// with auto_create off) or not_found (its stage's results topic cannot be made) otherwise.
  Outcome<std::shared_ptr<Topic>> find(const std::string& name);
  /// Every topic, by name.
  std::vector<std::shared_ptr<Topic>> all() const;
  /// Every stage (for their periodic polls).
  std::vector<std::shared_ptr<Stage>> stages() const;
  /// Closes every topic: subscribers drain what is queued, then see the end (shutdown).
  void close_all();

 private:
  Outcome<std::shared_ptr<Topic>> find_locked(const std::string& name) SLUICE_REQUIRES(mu_);
  Outcome<std::shared_ptr<Stage>> make_stage(const std::string& name, const TopicConfig& tc)
      SLUICE_REQUIRES(mu_);
  void register_metrics(const std::shared_ptr<Topic>& t);

  const RelayConfig& config_;
  metrics::Registry& metrics_;
  mutable Mutex mu_;
  std::map<std::string, std::shared_ptr<Topic>> topics_ SLUICE_GUARDED_BY(mu_);
};

}  // namespace sluice::relay

// The relay's state as JSON (relay-internal): GET /v1/stats and the Stats RPC. Per topic its
// mode, counters and subscribers, and its stage (gate, dispatcher, workers). Read from each
// topic's own stats at the moment of the call; any thread.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "access.hpp"
#include "topic_registry.hpp"

namespace sluice::relay {

/// Every topic, or those `who` may see (its stats patterns): {"topics": [...]}.
nlohmann::json stats_value(const TopicRegistry& topics, const Principal* who = nullptr);
/// The same, as text.
std::string stats_json(const TopicRegistry& topics, const Principal* who = nullptr);

}  // namespace sluice::relay

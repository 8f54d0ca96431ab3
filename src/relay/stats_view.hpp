// The relay's state as JSON (relay-internal): GET /v1/stats and the Stats RPC. Per topic its
// mode, counters and subscribers, and its stage (gate, dispatcher, workers). Read from each
// topic's own stats at the moment of the call; any thread.
#pragma once

#include <string>

#include "topic_registry.hpp"

namespace sluice::relay {

std::string stats_json(const TopicRegistry& topics);

}  // namespace sluice::relay

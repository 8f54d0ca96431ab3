// A cluster topic's bridge counters by name (relay-internal): what /v1/stats calls each (under
// "bridge") and its /metrics series, in one table read by both (stats_view.cpp,
// topic_registry.cpp).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

#include "topic.hpp"

namespace sluice::relay {

struct BridgeCounterName {
  const char* key;     // in /v1/stats
  const char* metric;  // in /metrics (a counter, label topic)
  const char* help;
  std::atomic<std::uint64_t> BridgeCounters::*value;
};

inline constexpr std::array<BridgeCounterName, 9> kBridgeCounterNames{{
    {"sent_items", "sluice_bridge_sent_items_total",
     "This relay's items sent to NATS (cluster topics)", &BridgeCounters::sent_items},
    {"sent_messages", "sluice_bridge_sent_messages_total",
     "The NATS messages that carried them (a batch: the items waiting together)",
     &BridgeCounters::sent_messages},
    {"sent_bytes", "sluice_bridge_sent_bytes_total", "Their payload bytes",
     &BridgeCounters::sent_bytes},
    {"received_items", "sluice_bridge_received_items_total",
     "Other relays' items put into the topic", &BridgeCounters::received_items},
    {"received_bytes", "sluice_bridge_received_bytes_total", "Their payload bytes",
     &BridgeCounters::received_bytes},
    {"lost", "sluice_bridge_lost_total",
     "Items lost between relays, announced to subscribers as gaps with reason bridge",
     &BridgeCounters::lost},
    {"duplicates", "sluice_bridge_duplicates_total",
     "Repeated items dropped (JetStream redeliveries)", &BridgeCounters::duplicates},
    {"retries", "sluice_bridge_retries_total",
     "Items JetStream refused (its stream full) or did not ack in time, sent again",
     &BridgeCounters::retries},
    {"too_big", "sluice_bridge_too_big_total",
     "This relay's items larger than NATS carries (its servers' max_payload): not sent, "
     "announced by the other relays as bridge gaps",
     &BridgeCounters::too_big},
}};

}  // namespace sluice::relay

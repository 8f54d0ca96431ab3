// The process's own series in /metrics (relay-internal), named as Prometheus' client libraries
// name them, so that dashboards and alerts written for any exporter work on the relay:
// process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
// process_open_fds, process_max_fds, process_start_time_seconds. Read from /proc/self at each
// scrape (Linux); written here because the metrics registry is the core's own (no Prometheus
// client library in the build to take them from).
#pragma once

#include "sluice/metrics.hpp"

namespace sluice::relay {

/// Registers the process_* series in `registry` (each read when scraped).
void add_process_metrics(metrics::Registry& registry);

}  // namespace sluice::relay

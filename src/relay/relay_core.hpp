// What every session of the relay works with (relay-internal), whatever its transport: the
// configuration, the metrics registry, the topics, admission, the frame pool, the judge of
// slow subscribers and the event loops. Each part is a type with its own contract; the roles
// (publish_session, subscriber_pump, worker_session) take a RelayCore& and the transports
// (grpc_*.cpp, ws_*.cpp) take nothing else.
//
// Lifetime: RelayServer owns it. Members are destroyed in reverse order: the loops first
// (with the WebSocket sessions their handlers hold), while everything they use still exists.
#pragma once

#include <utility>

#include "access.hpp"
#include "admission.hpp"
#include "event_log.hpp"
#include "frame_buffer.hpp"
#include "loop_pool.hpp"
#include "refusal.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay/config.hpp"
#include "topic_registry.hpp"

namespace sluice::relay {

// Unread control events (errors, notices) a session holds for its peer before it gives up on it.
constexpr std::size_t kMaxControlQueued = 64;

struct RelayCore {
  explicit RelayCore(RelayConfig c) : config(std::move(c)) {
    metrics.gauge_fn("sluice_frame_pool_spare_bytes",
                     "Memory kept to read producers' large frames into again (at most 64 MiB)", {},
                     [this] { return double(frames.spare_bytes()); });
  }
  RelayCore(const RelayCore&) = delete;
  RelayCore& operator=(const RelayCore&) = delete;
  RelayCore(RelayCore&&) = delete;
  RelayCore& operator=(RelayCore&&) = delete;
  ~RelayCore() { loops.stop(); }

  const RelayConfig config;
  metrics::Registry metrics;
  TopicRegistry topics{config, metrics};
  Admission admission{config, metrics};
  /// Who clients are and what they may do (docs/security.md).
  Access access{config};
  /// Producers' large frames are read into recycled memory (see frame_buffer.hpp).
  FramePool frames;
  LoopPool loops{config.threads, metrics};  // last: see Lifetime

  /// Counts a refusal a transport is telling its peer (sluice_refusals_total{kind}): every
  /// refusal, on every transport, is counted here once.
  const Refusal& counted(const Refusal& r) {
    metrics
        .counter("sluice_refusals_total",
                 "Requests and sessions refused or ended by the relay, by kind (docs/protocol.md)",
                 {{"kind", std::string(to_string(r.kind))}})
        .inc();
    if (log::enabled(log::Level::warn)) {  // (and logged, within the log's bound)
      log::event(log::Level::warn, "refused",
                 {{"kind", std::string(to_string(r.kind))},
                  {"setting", r.setting},
                  {"message", r.message}});
    }
    return r;
  }
};

}  // namespace sluice::relay

// Session admission (relay-internal): every Publish, Subscribe and Work call and every
// WebSocket session holds a SessionSlot for as long as it lives; at most max_sessions
// (STREAM_MAX_SESSIONS) exist at once. One over the limit is refused (too_many_sessions),
// counted in sluice_sessions_refused_total, and nothing else changes.
//
// Thread-safety: every member may be called from any thread (atomics).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "outcome.hpp"
#include "sluice/metrics.hpp"

namespace sluice::relay {

/// One admitted session's place; gives it back when destroyed.
class SessionSlot {
 public:
  SessionSlot() = default;
  SessionSlot(const SessionSlot&) = delete;
  SessionSlot& operator=(const SessionSlot&) = delete;
  SessionSlot(SessionSlot&& o) noexcept : count_(std::exchange(o.count_, nullptr)) {}
  SessionSlot& operator=(SessionSlot&&) = delete;
  ~SessionSlot() {
    if (count_ != nullptr) count_->fetch_sub(1, std::memory_order_acq_rel);
  }

 private:
  friend class Admission;
  explicit SessionSlot(std::atomic<std::size_t>* count) : count_(count) {}
  std::atomic<std::size_t>* count_ = nullptr;
};

class Admission {
 public:
  Admission(std::size_t max_sessions, metrics::Registry& metrics)
      : max_(max_sessions),
        refused_(metrics.counter("sluice_sessions_refused_total",
                                 "Calls refused because max_sessions were open")) {
    metrics.gauge_fn("sluice_sessions", "Open Publish and Subscribe calls", {},
                     [this] { return double(open_.load(std::memory_order_relaxed)); });
    metrics.gauge_fn("sluice_sessions_max", "max_sessions (STREAM_MAX_SESSIONS)", {},
                     [this] { return double(max_); });
  }

  /// A slot for a new session, or too_many_sessions naming the setting.
  Outcome<SessionSlot> admit() {
    if (open_.fetch_add(1, std::memory_order_acq_rel) < max_) return SessionSlot(&open_);
    open_.fetch_sub(1, std::memory_order_acq_rel);
    refused_.inc();
    return Refusal{RefusalKind::too_many_sessions,
                   "too many sessions: max_sessions (STREAM_MAX_SESSIONS / --max-sessions) = " +
                       std::to_string(max_) + " gRPC and WebSocket sessions are already open",
                   "STREAM_MAX_SESSIONS"};
  }
  /// A number for a new session's series in /metrics (label "session").
  std::uint64_t next_id() { return next_id_.fetch_add(1, std::memory_order_relaxed); }

 private:
  const std::size_t max_;
  std::atomic<std::size_t> open_{0};
  std::atomic<std::uint64_t> next_id_{1};
  metrics::Counter& refused_;
};

}  // namespace sluice::relay

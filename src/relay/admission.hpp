// Session admission (relay-internal): every session holds a SessionSlot for as long as it
// lives. Each role has its own limit — publishers max_sessions (STREAM_MAX_SESSIONS),
// subscribers max_subscribers, workers max_workers — and each client IP address at most
// max_sessions_per_client sessions of any role. One over a limit is refused
// (too_many_sessions, naming the setting), counted in sluice_sessions_refused_total{limit},
// and nothing else changes.
//
// Thread-safety: every member may be called from any thread; a slot may be released on any
// thread.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>

#include "outcome.hpp"
#include "sluice/detail/thread_annotations.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay/config.hpp"

namespace sluice::relay {

enum class SessionRole : std::uint8_t { publisher, subscriber, worker };
inline constexpr std::size_t kSessionRoles = 3;
std::string_view to_string(SessionRole role) noexcept;

/// The IP address of a gRPC peer ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000") without its port.
std::string client_of_grpc_peer(std::string_view peer);

class Admission;

/// One admitted session's place; gives it back when destroyed.
class SessionSlot {
 public:
  SessionSlot() = default;
  SessionSlot(const SessionSlot&) = delete;
  SessionSlot& operator=(const SessionSlot&) = delete;
  SessionSlot(SessionSlot&& o) noexcept
      : admission_(std::exchange(o.admission_, nullptr)),
        role_(o.role_),
        client_(std::move(o.client_)) {}
  SessionSlot& operator=(SessionSlot&&) = delete;
  ~SessionSlot();

 private:
  friend class Admission;
  SessionSlot(Admission* admission, SessionRole role, std::string client)
      : admission_(admission), role_(role), client_(std::move(client)) {}
  Admission* admission_ = nullptr;
  SessionRole role_ = SessionRole::publisher;
  std::string client_;
};

class Admission {
 public:
  /// `config` and `metrics` must outlive this, and this every slot.
  Admission(const RelayConfig& config, metrics::Registry& metrics);

  /// A slot for a new session of `role` from `client` (an IP address), or too_many_sessions
  /// naming the limit that binds.
  Outcome<SessionSlot> admit(SessionRole role, const std::string& client);
  /// A number for a new session's series in /metrics (label "session").
  std::uint64_t next_id() { return next_id_.fetch_add(1, std::memory_order_relaxed); }

 private:
  friend class SessionSlot;
  struct Limit {
    std::size_t max;
    const char* setting;  // the environment variable
    const char* key;      // the file key
  };
  void release(SessionRole role, const std::string& client);
  Refusal refuse(const Limit& limit, const std::string& what);

  std::array<Limit, kSessionRoles> limits_;
  const std::size_t per_client_;
  metrics::Registry& metrics_;
  std::array<std::atomic<std::size_t>, kSessionRoles> open_{};
  std::atomic<std::size_t> total_{0};
  std::atomic<std::uint64_t> next_id_{1};
  Mutex mu_;
  std::map<std::string, std::size_t, std::less<>> per_client_open_ SLUICE_GUARDED_BY(mu_);
};

}  // namespace sluice::relay

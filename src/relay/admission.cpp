#include "admission.hpp"

namespace sluice::relay {

std::string_view to_string(SessionRole role) noexcept {
  switch (role) {
    case SessionRole::publisher:
      return "publisher";
    case SessionRole::subscriber:
      return "subscriber";
    case SessionRole::worker:
      return "worker";
  }
  return "?";
}

std::string client_of_grpc_peer(std::string_view peer) {
  if (const auto colon = peer.find(':'); colon != std::string_view::npos)
    peer.remove_prefix(colon + 1);  // the scheme
  if (peer.starts_with('[')) {      // [::1]:5000
    const auto end = peer.find(']');
    return std::string(peer.substr(1, end == std::string_view::npos ? end : end - 1));
  }
  return std::string(peer.substr(0, peer.rfind(':')));
}

SessionSlot::~SessionSlot() {
  if (admission_ != nullptr) admission_->release(role_, client_);
}

Admission::Admission(const RelayConfig& config, metrics::Registry& metrics)
    : limits_{{{config.max_sessions, "STREAM_MAX_SESSIONS", "limits.max_sessions"},
               {config.max_subscribers, "SLUICE_MAX_SUBSCRIBERS", "limits.max_subscribers"},
               {config.max_workers, "SLUICE_MAX_WORKERS", "limits.max_workers"}}},
      per_client_(config.max_sessions_per_client),
      metrics_(metrics) {
  metrics.gauge_fn("sluice_sessions", "Open sessions (every role and transport)", {},
                   [this] { return double(total_.load(std::memory_order_relaxed)); });
  metrics.gauge_fn("sluice_sessions_max", "max_sessions (STREAM_MAX_SESSIONS): publishers", {},
                   [this] { return double(limits_[0].max); });
  for (std::size_t r = 0; r < kSessionRoles; ++r) {
    const metrics::Labels labels{{"role", std::string(to_string(static_cast<SessionRole>(r)))}};
    metrics.gauge_fn("sluice_sessions_open", "Open sessions by role", labels,
                     [this, r] { return double(open_[r].load(std::memory_order_relaxed)); });
    metrics.gauge_fn("sluice_sessions_limit", "The limit of open sessions by role", labels,
                     [this, r] { return double(limits_[r].max); });
  }
}

Outcome<SessionSlot> Admission::admit(SessionRole role, const std::string& client) {
  const Limit& limit = limits_[static_cast<std::size_t>(role)];
  auto& open = open_[static_cast<std::size_t>(role)];
  if (open.fetch_add(1, std::memory_order_acq_rel) >= limit.max) {
    open.fetch_sub(1, std::memory_order_acq_rel);
    return refuse(limit, std::string(to_string(role)) + " sessions");
  }
  {
    MutexLock lock(mu_);
    auto& n = per_client_open_[client];
    if (n >= per_client_) {
      lock.unlock();
      open.fetch_sub(1, std::memory_order_acq_rel);
      return refuse(
          {per_client_, "SLUICE_MAX_SESSIONS_PER_CLIENT", "limits.max_sessions_per_client"},
          "sessions from " + client.substr(0, 64));
    }
    ++n;
  }
  total_.fetch_add(1, std::memory_order_relaxed);
  return SessionSlot(this, role, client);
}

void Admission::release(SessionRole role, const std::string& client) {
  {
    MutexLock lock(mu_);
    if (const auto it = per_client_open_.find(client); it != per_client_open_.end()) {
      if (--it->second == 0) per_client_open_.erase(it);
    }
  }
  open_[static_cast<std::size_t>(role)].fetch_sub(1, std::memory_order_acq_rel);
  total_.fetch_sub(1, std::memory_order_relaxed);
}

Refusal Admission::refuse(const Limit& limit, const std::string& what) {
  metrics_
      .counter("sluice_sessions_refused_total",
               "Sessions refused because a session limit was reached", {{"limit", limit.key}})
      .inc();
  return Refusal{RefusalKind::too_many_sessions,
                 "too many sessions: " + std::string(limit.key) + " (" + limit.setting +
                     ") = " + std::to_string(limit.max) + " " + what + " are already open",
                 limit.setting};
}

}  // namespace sluice::relay

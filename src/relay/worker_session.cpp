#include "worker_session.hpp"

#include <utility>

namespace sluice::relay {

std::optional<Refusal> WorkerSession::join(const WorkerJoin& request) {
  if (auto refusal = Access::check(*request.who, Action::work, request.topic)) return refusal;
  auto t = core_.topics.find(request.topic);
  if (!t) return std::move(t.refusal());
  if (!(*t)->stage) {
    return Refusal{RefusalKind::not_found,
                   "topic '" + (*t)->name +
                       "' has no stage: declare one with stage = true in its [[topic]] "
                       "(docs/stages.md)",
                   ""};
  }
  if (request.concurrency > kMaxConcurrency) {
    return Refusal{RefusalKind::bad_request,
                   "concurrency " + std::to_string(request.concurrency) +
                       ": a whole number from 1 to " + std::to_string(kMaxConcurrency),
                   ""};
  }
  topic_ = std::move(*t);
  name_ = request.name.empty() ? "worker" : metrics::valid_utf8(request.name, 128);
  concurrency_ = request.concurrency == 0 ? kDefaultConcurrency
                                          : static_cast<std::uint32_t>(request.concurrency);
  return std::nullopt;
}

WorkerJoined WorkerSession::enter() {
  member_ = StageMember(topic_->stage, name_, concurrency_);
  return {member_.id(), topic_->name, name_, concurrency_, topic_->stage->config().results_topic};
}

}  // namespace sluice::relay

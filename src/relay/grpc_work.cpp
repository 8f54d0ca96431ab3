// Work over gRPC: a stage worker's bidirectional call over a WorkerSession. The first request
// joins; frames go out one write at a time, at most `concurrency` unanswered; results and
// errors come back by sequence. When the call ends, what the worker held goes elsewhere.
#include <deque>
#include <optional>
#include <string>
#include <utility>

#include "grpc_service.hpp"
#include "worker_session.hpp"

namespace sluice::relay {

namespace {

class WorkReactor final : public GuardedReactor<WorkReactor, WorkRpc> {
 public:
  WorkReactor(RelayCore& core, SessionSlot slot, Who who)
      : core_(core), slot_(std::move(slot)), who_(std::move(who)), worker_(core) {
    expire_with(core, *who_);
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    MutexLock lock(mu_);
    if (finished_) return;
    if (!ok) {  // the worker is done: leave now, so that what it held goes elsewhere
      worker_.leave();
      to_send_.clear();
      reads_done_ = true;
      if (!writing_) finish(grpc::Status::OK);
      return;
    }
    if (auto refusal = on_request()) {
      finish(to_grpc(core_, *refusal));
      return;
    }
    write_next();
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    MutexLock lock(mu_);
    if (!written(ok, "worker")) return;
    if (reads_done_) {
      finish(grpc::Status::OK);
      return;
    }
    write_next();
  }

 private:
  std::optional<Refusal> on_request() SLUICE_REQUIRES(mu_) {
    if (auto refusal = decode(core_, in_, req_)) return refusal;
    if (!worker_.entered()) return join();
    if (req_.has_join()) return Refusal{RefusalKind::bad_request, "a Work call joins once"};
    if (!req_.has_result() && !req_.has_error())
      return Refusal{RefusalKind::bad_request, "a WorkRequest without join, result or error"};
    auto problem =
        req_.has_result()
            ? worker_.result(req_.result().sequence(),
                             Buffer(std::move(*req_.mutable_result()->mutable_payload())))
            : worker_.error(req_.error().sequence(), req_.error().error());
    if (!problem) return std::nullopt;
    if (errors_.size() >= kMaxControlQueued) {
      return Refusal{RefusalKind::events_unread,
                     std::to_string(kMaxControlQueued) +
                         " error events unread: the worker is not reading its call"};
    }
    errors_.push_back(std::move(*problem));
    return std::nullopt;
  }

  std::optional<Refusal> join() SLUICE_REQUIRES(mu_) {
    if (!req_.has_join())
      return Refusal{RefusalKind::bad_request,
                     "the first WorkRequest of a Work call must be a join"};
    const auto& j = req_.join();
    if (auto refusal = worker_.join({who_, j.topic(), j.name(), j.concurrency()})) return refusal;
    joined_ = worker_.enter();
    core_.loops.main().post(later(&WorkReactor::pump));
    return std::nullopt;
  }

  // Takes what the dispatcher has for this worker (within its credit); re-arms the hook.
  void pump() {
    MutexLock lock(mu_);
    if (finished_ || reads_done_ || !worker_.entered()) return;
    worker_.take(to_send_);
    // (the hook only posts: it may run at once, on this thread, under our lock)
    worker_.on_ready([loop = &core_.loops.main(), again = later(&WorkReactor::pump)] {
      loop->post_soon(again);
    });
    write_next();
  }

  void write_next() SLUICE_REQUIRES(mu_) {
    if (writing_ || finished_) return;
    out_.Clear();
    if (joined_) {
      out_.mutable_joined()->set_id(joined_->id);
      out_.mutable_joined()->set_results_topic(joined_->results_topic);
      joined_.reset();
    } else if (!errors_.empty()) {
      out_.set_error(errors_.front());
      errors_.pop_front();
    } else if (!to_send_.empty()) {
      const RelayMessage& m = to_send_.front();
      auto* item = out_.mutable_frame();
      item->set_payload(m.payload.data(), m.payload.size());
      item->set_sequence(m.sequence);
      item->set_timestamp_ns(m.timestamp_ns);
      to_send_.pop_front();
    } else {
      return;
    }
    writing_ = true;
    StartWrite(&out_);
  }

  RelayCore& core_;
  SessionSlot slot_;
  const Who who_;
  grpc::ByteBuffer in_;  // the read in flight
  v1::WorkRequest req_;  // what it holds
  v1::WorkEvent out_;    // the write in flight
  WorkerSession worker_ SLUICE_GUARDED_BY(mu_);
  std::deque<RelayMessage> to_send_ SLUICE_GUARDED_BY(mu_);
  std::deque<std::string> errors_ SLUICE_GUARDED_BY(mu_);      // about the worker's messages
  std::optional<WorkerJoined> joined_ SLUICE_GUARDED_BY(mu_);  // the joined event, when due
  bool reads_done_ SLUICE_GUARDED_BY(mu_) = false;
};

}  // namespace

WorkRpc* GrpcService::work(grpc::CallbackServerContext* ctx) {
  auto who = caller(core_, ctx);
  if (!who) return new Refused<WorkRpc>(core_, who.refusal());
  auto slot = core_.admission.admit(SessionRole::worker, client_of_grpc_peer(ctx->peer()));
  if (!slot) return new Refused<WorkRpc>(core_, slot.refusal());
  return new WorkReactor(core_, std::move(*slot), std::move(*who));
}

}  // namespace sluice::relay

// Subscribe over gRPC: a server-streaming call over a SubscriberPump. One write in flight (a
// gRPC rule): what queued up meanwhile goes out as one Batch; gaps as Gap events; the stream
// ends with OK when the topic closes, or with the pump's refusal. Writes are judged as a
// WebSocket subscriber's are: every send_timeout_ms the write in flight has not completed
// counts as a timeout, and a subscriber whose writes stall max_send_timeouts times in a row
// leaves the topic at once and its call ends (slow_consumer: RESOURCE_EXHAUSTED); if it still
// does not read, the call is cancelled handshake_timeout_ms later.
#include <chrono>
#include <string>
#include <utility>

#include "grpc_items.hpp"
#include "grpc_service.hpp"
#include "subscriber_pump.hpp"

namespace sluice::relay {

namespace {

class SubscribeReactor final : public GuardedReactor<SubscribeReactor, SubscribeRpc> {
 public:
  SubscribeReactor(RelayCore& core, grpc::CallbackServerContext* ctx, SessionSlot slot,
                   std::unique_ptr<SubscriberPump> subscriber, const Principal& who)
      : core_(core), ctx_(ctx), slot_(std::move(slot)), pump_(std::move(subscriber)) {
    expire_with(core, who);
    StartSendInitialMetadata();  // tells the client the subscription exists (Subscriber waits)
    pump();
  }

  void OnWriteDone(bool ok) override {
    {
      MutexLock lock(mu_);
      if (!written(ok, "subscriber")) return;
      if (auto refusal = pump_->write_done()) {
        end(*refusal);
        return;
      }
    }
    pump();
  }

 private:
  static constexpr std::size_t kBatchItems = 256;
  static constexpr std::size_t kBatchBytes = std::size_t{1} << 20;

  // Sends what is there; when nothing is, asks to be called again when something is (outside
  // the lock: the hook may run at once).
  void pump() {
    if (!write()) pump_->arm(later(&SubscribeReactor::pump));
  }
  // False if there was nothing to write.
  bool write() {
    MutexLock lock(mu_);
    if (writing_ || finished_) return true;
    switch (pump_->next(kBatchItems, kBatchBytes)) {
      case SubscriberPump::Next::idle:
        return false;
      case SubscriberPump::Next::end:
        finish(pump_->refusal() ? to_grpc(core_, *pump_->refusal()) : grpc::Status::OK);
        return true;
      case SubscriberPump::Next::items:
        encode_batch();
        break;
      case SubscriberPump::Next::gap: {
        v1::SubscribeEvent gap;
        gap.mutable_gap()->set_lost(pump_->gap());
        gap.mutable_gap()->set_reason(std::string(to_string(pump_->gap_reason())));
        const grpc::Slice bytes(gap.SerializeAsString());
        event_ = grpc::ByteBuffer(&bytes, 1);
        break;
      }
    }
    writing_ = true;
    pump_->write_started();
    judge_later();
    StartWrite(&event_);
    return true;
  }

  // The write in flight is looked at every send_timeout; one timer at a time, none while idle.
  void judge_later() SLUICE_REQUIRES(mu_) {
    if (judging_) return;
    judging_ = true;
    core_.loops.main().at(std::chrono::steady_clock::now() + core_.config.send_timeout,
                          later(&SubscribeReactor::judge));
  }
  void judge() {
    MutexLock lock(mu_);
    judging_ = false;
    if (finished_ || !writing_) return;
    if (pump_->write_age() >= core_.config.send_timeout) {
      if (auto refusal = pump_->write_timed_out()) {
        end(*refusal);
        return;
      }
    }
    judge_later();
  }
  // Ends the call with `r` (the pump has left the topic). The status goes out once the
  // subscriber reads what is in flight; one that never does is cancelled.
  void end(const Refusal& r) SLUICE_REQUIRES(mu_) {
    finish(to_grpc(core_, r));
    core_.loops.main().at(std::chrono::steady_clock::now() + core_.config.handshake_timeout,
                          later(&SubscribeReactor::cancel));
  }
  void cancel() { ctx_->TryCancel(); }

  // The pump's batch as one Item, or as a Batch of them; large payloads are not copied (the
  // write holds a reference to each until gRPC has sent it).
  void encode_batch() SLUICE_REQUIRES(mu_) {
    auto& batch = pump_->batch();
    fields_.clear();
    for (auto& m : batch) {
      fields_.push_back(
          {pump_->topic().name, std::move(m.payload), m.sequence, m.timestamp_ns, m.flags});
    }
    batch.clear();
    event_ = writer_.encode(wire::Envelope::subscribe_event, fields_);
    fields_.clear();  // (what small payloads the write copied are released here)
  }

  RelayCore& core_;
  grpc::CallbackServerContext* ctx_;
  SessionSlot slot_;
  const std::unique_ptr<SubscriberPump> pump_;   // its calls are serialized by mu_
  bool judging_ SLUICE_GUARDED_BY(mu_) = false;  // a judge() is due
  wire::ItemWriter writer_ SLUICE_GUARDED_BY(mu_);
  std::vector<wire::ItemFields> fields_ SLUICE_GUARDED_BY(mu_);  // (scratch, kept for its room)
  grpc::ByteBuffer event_;                                       // the write in flight
};

}  // namespace

SubscribeRpc* GrpcService::subscribe(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in) {
  using Failed = Refused<SubscribeRpc>;
  grpc::ByteBuffer bytes(*in);  // (shares the slices)
  v1::SubscribeRequest req;
  if (auto refusal = decode(core_, bytes, req)) return new Failed(core_, *refusal);
  auto who = caller(core_, ctx);
  if (!who) return new Failed(core_, who.refusal());
  auto slot = core_.admission.admit(SessionRole::subscriber, client_of_grpc_peer(ctx->peer()));
  if (!slot) return new Failed(core_, slot.refusal());
  SubscribeRequest join{*who,        req.topic(), req.name(),
                        req.depth(), req.epoch(), req.from_position()};
  auto pump = SubscriberPump::join(core_, join, "subscriber", /*kernel_unsent=*/false);
  if (!pump) return new Failed(core_, pump.refusal());
  // Where it starts, for a resume later (the initial metadata goes out at once).
  ctx->AddInitialMetadata(std::string(kEpochKey), (*pump)->epoch());
  ctx->AddInitialMetadata(std::string(kPositionKey), std::to_string((*pump)->start_position()));
  return new SubscribeReactor(core_, ctx, std::move(*slot), std::move(*pump), **who);
}

}  // namespace sluice::relay

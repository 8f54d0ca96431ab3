// Subscribe over gRPC: a server-streaming call over a SubscriberPump. One write in flight (a
// gRPC rule): what queued up meanwhile goes out as one Batch; gaps as Gap events; the stream
// ends with OK when the topic closes, or with the pump's refusal. The pump judges its progress
// by the writes gRPC completed: gRPC completes a write once its bytes went out within the
// HTTP/2 stream's flow-control window, which the subscriber opens by reading, so a completion
// is bytes that left (a Batch is kept to kBatchBytes so that a steady reader completes one
// often). A stalled subscriber leaves the topic and its call ends (slow_consumer:
// RESOURCE_EXHAUSTED); if it still does not read, the call is cancelled handshake_timeout_ms
// later.
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
    pump_->watch(
        {[this, run = later_with(&SubscribeReactor::tick)](const std::function<void()>& tick) {
           core_.loops.main().at(std::chrono::steady_clock::now() + core_.config.send_timeout,
                                 [run, tick] { run(tick); });
         },
         [this] {
           return SubscriberPump::Progress{delivered_, in_flight_ != 0};
         },
         [this](const Refusal& r) SLUICE_NO_THREAD_SAFETY_ANALYSIS { end(r); }});
    StartSendInitialMetadata();  // tells the client the subscription exists (Subscriber waits)
    pump();
  }

  void OnWriteDone(bool ok) override {
    {
      MutexLock lock(mu_);
      if (!written(ok, "subscriber")) return;
      delivered_ += in_flight_;
      in_flight_ = 0;
    }
    pump();
  }

 private:
  static constexpr std::size_t kBatchItems = 256;
  static constexpr std::size_t kBatchBytes = std::size_t{256} << 10;

  // Sends what is there; when nothing is, asks to be called again when something is. The hook
  // only posts: it may run at once, on this thread — inside a `later` callback, which holds the
  // reactor's guard that `later` would take again.
  void pump() {
    if (!write()) {
      pump_->arm([loop = &core_.loops.main(), again = later(&SubscribeReactor::pump)] {
        loop->post_soon(again);
      });
    }
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
    in_flight_ = std::max<std::size_t>(event_.Length(), 1);
    pump_->sending();
    StartWrite(&event_);
    return true;
  }

  // The pump's judgement, serialized with the rest (see watch()).
  void tick(const std::function<void()>& judge) {
    MutexLock lock(mu_);
    if (!finished_) judge();
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
  const std::unique_ptr<SubscriberPump> pump_;  // its calls are serialized by mu_
  // The judge's reading (serialized by mu_, like the pump's calls): the bytes of the writes
  // completed so far, and of the one in flight.
  std::uint64_t delivered_ = 0;
  std::size_t in_flight_ = 0;
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

// Subscribe over gRPC: a server-streaming call over a SubscriberPump. One write in flight (a
// gRPC rule): what queued up meanwhile goes out as one Batch; gaps as Gap events; the stream
// ends with OK when the topic closes, or with the pump's refusal.
#include <string>
#include <utility>

#include "grpc_service.hpp"
#include "subscriber_pump.hpp"

namespace sluice::relay {

namespace {

class SubscribeReactor final
    : public GuardedReactor<SubscribeReactor, grpc::ServerWriteReactor<v1::SubscribeEvent>> {
 public:
  SubscribeReactor(SessionSlot slot, std::unique_ptr<SubscriberPump> subscriber)
      : slot_(std::move(slot)), pump_(std::move(subscriber)) {
    StartSendInitialMetadata();  // tells the client the subscription exists (Subscriber waits)
    pump();
  }

  void OnWriteDone(bool ok) override {
    {
      MutexLock lock(mu_);
      if (!written(ok, "subscriber")) return;
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
        finish(pump_->refusal() ? to_grpc(*pump_->refusal()) : grpc::Status::OK);
        return true;
      case SubscriberPump::Next::items:
        encode_batch();
        break;
      case SubscriberPump::Next::gap:
        event_.Clear();
        event_.mutable_gap()->set_lost(pump_->gap());
        event_.mutable_gap()->set_reason(std::string(to_string(pump_->gap_reason())));
        break;
    }
    writing_ = true;
    StartWrite(&event_);
    return true;
  }

  // The pump's batch as one Item, or as a Batch of them.
  void encode_batch() SLUICE_REQUIRES(mu_) {
    event_.Clear();
    auto& batch = pump_->batch();
    const auto encode = [&](v1::Item* item, const RelayMessage& m) {
      item->set_topic(pump_->topic().name);
      item->set_payload(std::string(m.payload.view()));
      item->set_sequence(m.sequence);
      item->set_timestamp_ns(m.timestamp_ns);
    };
    if (batch.size() == 1) {
      encode(event_.mutable_item(), batch.front());
    } else {
      for (const auto& m : batch) encode(event_.mutable_batch()->add_items(), m);
    }
    batch.clear();  // (the payloads are released here)
  }

  SessionSlot slot_;
  const std::unique_ptr<SubscriberPump> pump_;  // its calls are serialized by mu_
  v1::SubscribeEvent event_;                    // the write in flight
};

}  // namespace

grpc::ServerWriteReactor<v1::SubscribeEvent>* GrpcService::Subscribe(
    grpc::CallbackServerContext* ctx, const v1::SubscribeRequest* req) {
  using Failed = Refused<grpc::ServerWriteReactor<v1::SubscribeEvent>>;
  auto slot = core_.admission.admit(SessionRole::subscriber, client_of_grpc_peer(ctx->peer()));
  if (!slot) return new Failed(slot.refusal());
  auto pump = SubscriberPump::join(core_, {req->topic(), req->name(), req->depth()}, "subscriber",
                                   /*kernel_unsent=*/false);
  if (!pump) return new Failed(pump.refusal());
  return new SubscribeReactor(std::move(*slot), std::move(*pump));
}

}  // namespace sluice::relay

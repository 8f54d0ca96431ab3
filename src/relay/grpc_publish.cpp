// Publish over gRPC: a bidirectional call whose requests carry items (one, or a batch, the
// first naming the topic) into a PublishSession, and whose events are the session's, one
// write at a time. The next read starts only once every item read is in the topic: a full
// lossless topic stops reading the call, and HTTP/2 flow control reaches the producer.
#include <string>
#include <utility>

#include "grpc_service.hpp"
#include "publish_session.hpp"

namespace sluice::relay {

namespace {

// A stage's signal (SlowDown or Resume) names the stage and its drop rate.
template <class Signal>
void encode_stage(Signal* signal, PublishEvent& e) {
  signal->set_topic(e.topic);
  signal->set_stage(std::move(e.topic));
  signal->set_drop_rate(e.drop_rate);
}

void encode(PublishEvent& e, v1::PublishEvent& out) {
  using Kind = PublishEvent::Kind;
  switch (e.kind) {
    case Kind::ack:
      out.mutable_ack()->set_sequence(e.sequence);
      break;
    case Kind::slow_down: {
      auto* s = out.mutable_slow_down();
      s->set_topic(std::move(e.topic));
      s->set_queue_bytes(e.queue_bytes);
      s->set_limit_bytes(e.limit_bytes);
      s->set_reason(std::move(e.detail));
      break;
    }
    case Kind::resume:
      out.mutable_resume()->set_topic(std::move(e.topic));
      out.mutable_resume()->set_queue_bytes(e.queue_bytes);
      break;
    case Kind::dropped: {
      auto* d = out.mutable_dropped();
      d->set_sequence(e.sequence);
      d->set_reason(std::string(to_string(e.reason)));
      d->set_detail(std::move(e.detail));
      break;
    }
    case Kind::stage_slow_down:
      encode_stage(out.mutable_slow_down(), e);
      out.mutable_slow_down()->set_reason(std::move(e.detail));
      break;
    case Kind::stage_resume:
      encode_stage(out.mutable_resume(), e);
      break;
  }
}

class PublishReactor final : public GuardedReactor<PublishReactor, PublishRpc> {
 public:
  PublishReactor(RelayCore& core, grpc::CallbackServerContext* ctx, SessionSlot slot,
                 const Who& who)
      : core_(core), ctx_(ctx), slot_(std::move(slot)), session_(core, core.loops.main(), who) {
    expire_with(core, *who);
    session_.connect(later(&PublishReactor::attempt), later_with(&PublishReactor::stage_event));
    const auto& md = ctx->client_metadata();
    if (const auto it = md.find(std::string(kProducerKey)); it != md.end()) {
      MutexLock lock(mu_);  // (refused at its first message)
      bad_producer_ = session_.set_producer(std::string(it->second.data(), it->second.size()));
    }
    StartRead(&in_);
  }

  // The last sequence this call put into the topic, so that a producer whose call ended early
  // (RESOURCE_EXHAUSTED, say) resends exactly what is not there.
  void before_finish() SLUICE_REQUIRES(mu_) {
    if (const auto through = session_.published_through())
      ctx_->AddTrailingMetadata(std::string(kPublishedThroughKey), std::to_string(*through));
  }

  void OnReadDone(bool ok) override {
    MutexLock lock(mu_);
    if (!ok) {  // the producer is done sending
      reads_done_ = true;
      maybe_finish();
      return;
    }
    if (auto refusal = decode()) {
      finish(to_grpc(core_, *refusal));
      return;
    }
    publish();
  }

  void OnWriteDone(bool ok) override {
    MutexLock lock(mu_);
    if (!written(ok, "producer")) return;
    write_next();
    maybe_finish();
  }

 private:
  // The request's items into the session, or why they are refused.
  std::optional<Refusal> decode() SLUICE_REQUIRES(mu_) {
    if (bad_producer_) return bad_producer_;
    if (auto refusal = relay::decode(core_, in_, req_)) return refusal;
    const bool batch = !req_.has_item();
    auto* items = req_.mutable_items();
    if (batch && items->empty())
      return Refusal{RefusalKind::bad_request, "a PublishRequest without items"};
    const v1::Item& first = batch ? items->Get(0) : req_.item();
    if (!first.topic().empty()) {
      if (auto refusal = session_.open(first.topic())) return refusal;
    }
    if (!session_.opened())
      return Refusal{RefusalKind::bad_request,
                     "the first item of a Publish call must name its topic"};
    if (!batch) return add(*req_.mutable_item());
    for (auto& item : *items) {
      if (auto refusal = add(item)) return refusal;
    }
    return std::nullopt;
  }
  std::optional<Refusal> add(v1::Item& item) SLUICE_REQUIRES(mu_) {
    if (!item.topic().empty() && item.topic() != session_.topic().name) {
      return Refusal{RefusalKind::bad_request,
                     "a batch carries one topic: item for '" + item.topic().substr(0, 200) +
                         "' in a batch for '" + session_.topic().name + "'"};
    }
    RelayMessage m{Buffer(std::move(*item.mutable_payload())), item.sequence(),
                   item.timestamp_ns()};
    m.flags = item.flags();
    return session_.add(std::move(m));
  }

  // (a wake-up: the topic has room, or the item's max_wait is up)
  void attempt() {
    MutexLock lock(mu_);
    publish();
  }
  void publish() SLUICE_REQUIRES(mu_) {
    if (finished_) return;
    auto progress = session_.publish();
    if (!progress) {
      finish(to_grpc(core_, progress.refusal()));
      return;
    }
    if (*progress == PublishSession::Progress::all_in) StartRead(&in_);
    write_next();
  }

  // (on the relay's loop) A stage's notice or signal.
  void stage_event(PublishEvent e) {
    MutexLock lock(mu_);
    if (finished_) return;
    if (auto refusal = session_.stage_event(std::move(e))) {
      finish(to_grpc(core_, *refusal));
      return;
    }
    write_next();
  }

  void write_next() SLUICE_REQUIRES(mu_) {
    if (writing_ || finished_) return;
    auto e = session_.next_event(/*acks=*/true);
    if (!e) return;
    out_.Clear();
    encode(*e, out_);
    writing_ = true;
    StartWrite(&out_);
  }
  void maybe_finish() SLUICE_REQUIRES(mu_) {
    if (reads_done_ && !writing_ && session_.drained(/*acks=*/true)) finish(grpc::Status::OK);
  }

  RelayCore& core_;
  grpc::CallbackServerContext* ctx_;
  SessionSlot slot_;
  grpc::ByteBuffer in_;     // the read in flight
  v1::PublishRequest req_;  // what it holds
  PublishSession session_ SLUICE_GUARDED_BY(mu_);
  std::optional<Refusal> bad_producer_ SLUICE_GUARDED_BY(mu_);  // its sluice-producer
  v1::PublishEvent out_;                                        // the write in flight
  bool reads_done_ SLUICE_GUARDED_BY(mu_) = false;
};

}  // namespace

PublishRpc* GrpcService::publish(grpc::CallbackServerContext* ctx) {
  auto who = caller(core_, ctx);
  if (!who) return new Refused<PublishRpc>(core_, who.refusal());
  auto slot = core_.admission.admit(SessionRole::publisher, client_of_grpc_peer(ctx->peer()));
  if (!slot) return new Refused<PublishRpc>(core_, slot.refusal());
  return new PublishReactor(core_, ctx, std::move(*slot), std::move(*who));
}

}  // namespace sluice::relay

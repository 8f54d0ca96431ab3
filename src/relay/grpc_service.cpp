// The relay's gRPC service (callback API, sluice.v1.Relay): Publish, Subscribe and Work
// reactors over the topics; Stats is answered in relay_impl.hpp.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "relay_impl.hpp"
#include "sluice/broadcast.hpp"
#include "stage.hpp"

namespace sluice {

namespace {

using relay::Guard;
using relay::IoThread;
using relay::kMaxControlQueued;
using relay::Refused;
using relay::SessionSlot;
using relay::SubscriberSeries;
using relay::Throttle;
using relay::Topic;
namespace v1 = ::sluice::v1;

// What both streaming reactors share: a lock, finishing once, cancel and done, and a guard
// through which callbacks from other threads (hooks, timers) reach the reactor only while it
// exists.
template <class Derived, class Reactor>
class GuardedReactor : public Reactor {
 public:
  GuardedReactor(const GuardedReactor&) = delete;
  GuardedReactor& operator=(const GuardedReactor&) = delete;
  GuardedReactor(GuardedReactor&&) = delete;
  GuardedReactor& operator=(GuardedReactor&&) = delete;
  ~GuardedReactor() override = default;

  void OnCancel() override {
    std::lock_guard lock(mu_);
    finish(grpc::Status::CANCELLED);
  }
  void OnDone() override {
    guard_->clear();
    delete static_cast<Derived*>(this);
  }

 protected:
  // The guard holds the base pointer: casting to Derived here, before Derived is constructed,
  // would be undefined. The cast happens in `later`, when the callback runs, by which time the
  // derived constructor has begun (callbacks are armed from its body at the earliest).
  GuardedReactor() : guard_(std::make_shared<Guard<GuardedReactor>>()) { guard_->self = this; }
  // A callback that runs `method` on the reactor if it is still there.
  std::function<void()> later(void (Derived::*method)()) const {
    return [g = guard_, method] {
      g->with([method](GuardedReactor& self) { (static_cast<Derived&>(self).*method)(); });
    };
  }
  // A callback that passes its argument to `method` on the reactor if it is still there.
  template <class Arg>
  std::function<void(Arg)> later_with(void (Derived::*method)(Arg)) const {
    return [g = guard_, method](Arg arg) {
      g->with([&](GuardedReactor& self) { (static_cast<Derived&>(self).*method)(std::move(arg)); });
    };
  }
  void finish(const grpc::Status& status) {  // caller holds mu_
    if (finished_) return;
    finished_ = true;
    static_cast<Derived*>(this)->before_finish();
    this->Finish(status);
  }
  void before_finish() {}  // a derived reactor's hook (trailing metadata), caller holds mu_

  std::mutex mu_;
  bool finished_ = false;  // guarded by mu_

 private:
  std::shared_ptr<Guard<GuardedReactor>> guard_;
};

// ---- Subscribe: one outstanding write; the subscription's cursor is the only queue ----
class SubscribeReactor final
    : public GuardedReactor<SubscribeReactor, grpc::ServerWriteReactor<v1::SubscribeEvent>> {
 public:
  SubscribeReactor(RelayServer::Impl& relay, SessionSlot slot, std::shared_ptr<Topic> topic,
                   Subscription<RelayMessage> sub);
  SubscribeReactor(const SubscribeReactor&) = delete;
  SubscribeReactor& operator=(const SubscribeReactor&) = delete;
  SubscribeReactor(SubscribeReactor&&) = delete;
  SubscribeReactor& operator=(SubscribeReactor&&) = delete;
  ~SubscribeReactor() override;

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard lock(mu_);
      writing_ = false;
      if (!ok) {
        finish(grpc::Status(grpc::StatusCode::CANCELLED, "subscriber went away"));
        return;
      }
    }
    pump();
  }

 private:
  // Sends what is there; when nothing is, asks to be called again when something is.
  void pump() {
    bool arm = false;
    {
      std::lock_guard lock(mu_);
      if (writing_ || finished_) return;
      event_.Clear();
      // What queued up while the previous write was in flight goes out as one batch.
      std::size_t items = 0;
      std::size_t bytes = 0;
      v1::Item* single = nullptr;
      while (items < kBatchItems && bytes < kBatchBytes) {
        auto r = held_ ? std::move(*held_) : sub_.try_recv();
        held_.reset();
        if (r.status != RecvStatus::ok) {
          if (items > 0) {
            if (r.status != RecvStatus::would_block) held_ = std::move(r);  // after this batch
            break;
          }
          if (r.status == RecvStatus::gap) {
            auto* gap = event_.mutable_gap();
            gap->set_lost(r.lost);
            gap->set_reason(std::string(to_string(r.reason)));
            writing_ = true;
            StartWrite(&event_);
            return;
          }
          if (r.status == RecvStatus::would_block) {
            arm = true;
            break;
          }
          finish(grpc::Status::OK);  // closed, evicted
          return;
        }
        v1::Item* item = nullptr;
        if (items == 0) {
          item = single = event_.mutable_item();
        } else {
          if (items == 1) {  // a second one: the first moves into a batch
            v1::Item first = std::move(*single);
            event_.mutable_batch()->add_items()->Swap(&first);
          }
          item = event_.mutable_batch()->add_items();
        }
        item->set_topic(topic_->name);
        item->set_payload(std::string(r->payload.view()));
        item->set_sequence(r->sequence);
        item->set_timestamp_ns(r->timestamp_ns);
        ++items;
        bytes += r->payload.size();
      }
      if (items > 0) {
        writing_ = true;
        StartWrite(&event_);
        return;
      }
    }
    if (arm) {
      sub_.on_readable(later(&SubscribeReactor::pump));
    }
  }

  static constexpr std::size_t kBatchItems = 256;
  static constexpr std::size_t kBatchBytes = std::size_t{1} << 20;

  RelayServer::Impl& relay_;
  SessionSlot slot_;
  std::shared_ptr<Topic> topic_;
  Subscription<RelayMessage> sub_;
  SubscriberSeries series_;                       // after sub_: removed before it goes
  v1::SubscribeEvent event_;                      // guarded by mu_ while a write is in flight
  std::optional<RecvResult<RelayMessage>> held_;  // a gap or the end, due after the batch
  bool writing_ = false;
};

// ---- Publish: the next read starts only once the current item is in the topic ----
constexpr std::size_t kMaxStageEventsUnread = 1024;

// A gRPC producer as a stage sees it: each event is posted to the relay's I/O thread, then
// given to the reactor if it is still there (no lock of the reactor's is taken on the thread
// that caused the event, which may hold one).
class GrpcStageListener final : public relay::StageListener {
 public:
  GrpcStageListener(IoThread& io, std::string stage, std::function<void(v1::PublishEvent)> deliver)
      : io_(io), stage_(std::move(stage)), deliver_(std::move(deliver)) {}
  void stage_dropped(std::uint64_t frame_index, DropReason reason,
                     const std::string& detail) override {
    v1::PublishEvent e;
    auto* d = e.mutable_dropped();
    d->set_sequence(frame_index);
    d->set_reason(std::string(to_string(reason)));
    d->set_detail(detail);
    post(std::move(e));
  }
  void stage_signal(const GateSignal& signal) override {
    v1::PublishEvent e;
    if (signal.kind == GateSignal::Kind::slow_down) {
      auto* s = e.mutable_slow_down();
      s->set_topic(stage_);
      s->set_stage(stage_);
      s->set_drop_rate(signal.drop_rate);
      s->set_reason(
          "the stage's windowed drop rate passed the slowdown threshold "
          "(STREAM_SLOWDOWN_THRESHOLD): send fewer frames");
    } else {
      auto* r = e.mutable_resume();
      r->set_topic(stage_);
      r->set_stage(stage_);
      r->set_drop_rate(signal.drop_rate);
    }
    post(std::move(e));
  }

 private:
  void post(v1::PublishEvent e) {
    io_.post([deliver = deliver_, e = std::move(e)]() mutable { deliver(std::move(e)); });
  }
  IoThread& io_;
  const std::string stage_;
  std::function<void(v1::PublishEvent)> deliver_;
};

class PublishReactor final
    : public GuardedReactor<PublishReactor,
                            grpc::ServerBidiReactor<v1::PublishRequest, v1::PublishEvent>> {
 public:
  PublishReactor(RelayServer::Impl& relay, grpc::CallbackServerContext* ctx, SessionSlot slot)
      : relay_(relay), ctx_(ctx), slot_(std::move(slot)) {
    StartRead(&req_);
  }

  // The last sequence number this call put into the topic, so that a producer whose call ended
  // early (RESOURCE_EXHAUSTED, say) resends exactly what is not there.
  void before_finish() {
    if (published_any_) {
      ctx_->AddTrailingMetadata(std::string(kPublishedThroughKey), std::to_string(published_));
    }
  }

  void OnReadDone(bool ok) override {
    std::unique_lock lock(mu_);
    if (!ok) {  // the producer is done sending
      reads_done_ = true;
      maybe_finish();
      return;
    }
    const bool batch = !req_.has_item();
    auto* items = req_.mutable_items();
    if (batch && items->empty()) {
      finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a PublishRequest without items"));
      return;
    }
    const v1::Item& first = batch ? items->Get(0) : req_.item();
    if (!first.topic().empty() && (!topic_ || first.topic() != topic_->name)) {
      grpc::Status status;
      topic_ = relay_.topic(first.topic(), status);
      if (!topic_) {
        finish(status);
        return;
      }
    }
    if (!topic_) {
      finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "the first item of a Publish call must name its topic"));
      return;
    }
    const auto admit = [&](v1::Item& item) {
      if (item.payload().size() > relay_.config.max_frame_bytes) {
        finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "item of " + std::to_string(item.payload().size()) +
                                " bytes exceeds the frame limit of " +
                                std::to_string(relay_.config.max_frame_bytes) +
                                " bytes (STREAM_MAX_FRAME_SIZE_MB)"));
        return false;
      }
      if (!item.topic().empty() && item.topic() != topic_->name) {
        finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "a batch carries one topic: item for '" + item.topic().substr(0, 200) +
                                "' in a batch for '" + topic_->name + "'"));
        return false;
      }
      pending_.push_back(RelayMessage{Buffer(std::move(*item.mutable_payload())), item.sequence(),
                                      item.timestamp_ns()});
      return true;
    };
    const std::size_t before = pending_.size();
    if (batch) {
      for (auto& item : *items) {
        if (!admit(item)) return;
      }
    } else if (!admit(*req_.mutable_item())) {
      return;
    }
    // A topic with a stage: offer the new frames to it (outside our lock: its events come back
    // through the I/O thread into stage_event()).
    std::vector<RelayMessage> offers;
    if (topic_->stage) {
      offers.assign(pending_.begin() + static_cast<std::ptrdiff_t>(before), pending_.end());
      if (!listener_) {
        listener_ = std::make_shared<GrpcStageListener>(relay_.io, topic_->name,
                                                        later_with(&PublishReactor::stage_event));
      }
    }
    const auto stage = topic_->stage;
    const std::weak_ptr<relay::StageListener> listener = listener_;
    lock.unlock();
    for (const auto& m : offers) stage->offer(m, listener);
    attempt();
  }

  // (I/O thread) A stage's drop notice or signal: each is delivered, in order, before acks.
  void stage_event(v1::PublishEvent e) {
    std::lock_guard lock(mu_);
    if (finished_) return;
    if (stage_events_.size() >= kMaxStageEventsUnread) {
      finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          std::to_string(kMaxStageEventsUnread) +
                              " stage events unread: the producer is not reading its Publish "
                              "call's events"));
      return;
    }
    stage_events_.push_back(std::move(e));
    write_next();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mu_);
    writing_ = false;
    if (!ok) {
      finish(grpc::Status(grpc::StatusCode::CANCELLED, "producer went away"));
      return;
    }
    write_next();
    maybe_finish();
  }

 private:
  // Tries to put the pending item into the topic; if there is no room, waits for room (the
  // producer's next message is not read meanwhile) until max_wait.
  void attempt() {
    bool arm = false;
    std::uint64_t bytes = 0;
    {
      std::lock_guard lock(mu_);
      if (finished_ || pending_.empty()) return;
      while (!pending_.empty()) {
        const std::uint64_t seq = pending_.front().sequence;
        bytes = pending_.front().payload.size();
        auto r = topic_->broadcast.try_publish(std::move(pending_.front()));
        if (r.status == SendStatus::ok) {
          pending_.pop_front();
          published_ = seq;
          published_any_ = true;
          ack_ = seq;
          throttle_.admitted();
          continue;
        }
        if (r.status != SendStatus::would_block) {
          finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "topic '" + topic_->name + "' is closed (the relay is stopping)"));
          return;
        }
        switch (throttle_.blocked(*topic_)) {
          case Throttle::Wait::started:
            relay_.io.at(throttle_.deadline(), later(&PublishReactor::attempt));
            break;
          case Throttle::Wait::expired:
            finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, topic_->full_message()));
            return;
          case Throttle::Wait::waiting:
            break;
        }
        arm = true;
        break;
      }
      if (!arm) {
        throttle_.resumed(*topic_);  // (told to the producer by write_next)
        StartRead(&req_);
      }
      write_next();
    }
    if (arm) {
      // Posted, not run inline: the hook may fire at once (room appeared meanwhile) or from a
      // consumer's stack, and attempt() must not re-enter itself or hold up the consumer.
      topic_->broadcast.on_writable(
          [io = &relay_.io, again = later(&PublishReactor::attempt)] { io->post_soon(again); },
          bytes);
    }
  }

  // One write at a time; what waits is coalesced: the flow state the producer has not been
  // told yet, then the newest ack. Caller holds mu_.
  void write_next() {
    if (writing_ || finished_) return;
    out_.Clear();
    if (!stage_events_.empty()) {
      out_ = std::move(stage_events_.front());
      stage_events_.pop_front();
    } else if (throttle_.slowed() != told_slowed_) {
      told_slowed_ = throttle_.slowed();
      const std::uint64_t queued = topic_->broadcast.queue_bytes();
      if (told_slowed_) {
        auto* e = out_.mutable_slow_down();
        e->set_topic(topic_->name);
        e->set_queue_bytes(queued);
        e->set_limit_bytes(topic_->config.max_queue_bytes);
        e->set_reason("topic full: the relay stopped reading this call until subscribers catch up");
      } else {
        auto* e = out_.mutable_resume();
        e->set_topic(topic_->name);
        e->set_queue_bytes(queued);
      }
    } else if (ack_) {
      out_.mutable_ack()->set_sequence(*ack_);
      ack_.reset();
    } else {
      return;
    }
    writing_ = true;
    StartWrite(&out_);
  }
  void maybe_finish() {  // caller holds mu_
    if (reads_done_ && !writing_ && !ack_ && throttle_.slowed() == told_slowed_ &&
        pending_.empty() && stage_events_.empty())
      finish(grpc::Status::OK);
  }

  RelayServer::Impl& relay_;
  grpc::CallbackServerContext* ctx_;
  SessionSlot slot_;
  std::uint64_t published_ = 0;  // the last sequence put into the topic
  bool published_any_ = false;
  v1::PublishRequest req_;
  std::shared_ptr<Topic> topic_;
  std::deque<RelayMessage> pending_;  // read from the producer, not yet in the topic
  Throttle throttle_;
  std::optional<std::uint64_t> ack_;  // the newest ack not yet written
  bool told_slowed_ = false;          // what the last flow event said
  v1::PublishEvent out_;              // the write in flight
  bool writing_ = false;
  bool reads_done_ = false;
  std::shared_ptr<GrpcStageListener> listener_;  // for a topic with a stage
  std::deque<v1::PublishEvent> stage_events_;    // drop notices and signals not yet written
};

// A stage worker over gRPC (Work): the first message joins the topic's stage; frames go out
// one write at a time, at most `concurrency` unanswered (the dispatcher's credit); results and
// errors come back by sequence. When the call ends, what the worker held is re-routed or
// failed.
class WorkReactor final
    : public GuardedReactor<WorkReactor, grpc::ServerBidiReactor<v1::WorkRequest, v1::WorkEvent>> {
 public:
  WorkReactor(RelayServer::Impl& relay, SessionSlot slot) : relay_(relay), slot_(std::move(slot)) {
    StartRead(&req_);
  }
  WorkReactor(const WorkReactor&) = delete;
  WorkReactor& operator=(const WorkReactor&) = delete;
  WorkReactor(WorkReactor&&) = delete;
  WorkReactor& operator=(WorkReactor&&) = delete;
  ~WorkReactor() override = default;  // (member_ leaves: what it held goes elsewhere)

  void OnReadDone(bool ok) override {
    std::lock_guard lock(mu_);
    if (finished_) return;
    if (!ok) {  // the worker is done: leave now, so that what it held goes elsewhere
      member_.leave();
      to_send_.clear();
      reads_done_ = true;
      if (!writing_) finish(grpc::Status::OK);
      return;
    }
    if (!topic_) {
      if (!join()) return;
    } else if (req_.has_join()) {
      finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "a Work call joins once"));
      return;
    } else if (req_.has_result() || req_.has_error()) {
      auto problem =
          req_.has_result()
              ? member_.result(req_.result().sequence(),
                               Buffer(std::move(*req_.mutable_result()->mutable_payload())))
              : member_.error(req_.error().sequence(), req_.error().error());
      if (problem && errors_.size() >= kMaxControlQueued) {
        finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            std::to_string(kMaxControlQueued) +
                                " error events unread: the worker is not reading its call"));
        return;
      }
      if (problem) errors_.push_back(std::move(*problem));
    } else {
      finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "a WorkRequest without join, result or error"));
      return;
    }
    write_next();
    StartRead(&req_);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mu_);
    writing_ = false;
    if (!ok) {
      finish(grpc::Status(grpc::StatusCode::CANCELLED, "worker went away"));
      return;
    }
    if (reads_done_) {
      finish(grpc::Status::OK);
      return;
    }
    write_next();
  }

 private:
  bool join() {  // caller holds mu_
    if (!req_.has_join()) {
      finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "the first WorkRequest of a Work call must be a join"));
      return false;
    }
    const auto& j = req_.join();
    grpc::Status status;
    auto t = relay_.topic(j.topic(), status);
    if (!t) {
      finish(status);
      return false;
    }
    if (!t->stage) {
      finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "topic '" + t->name +
                              "' has no stage: declare one with stage = true in its [[topic]] "
                              "(docs/stages.md)"));
      return false;
    }
    const std::uint32_t concurrency = j.concurrency() == 0 ? 4 : j.concurrency();
    if (concurrency > 1024) {
      finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "concurrency " + std::to_string(concurrency) + ": at most 1024"));
      return false;
    }
    topic_ = t;
    member_ = relay::StageMember(t->stage, j.name().empty() ? "worker" : j.name().substr(0, 128),
                                 concurrency);
    joined_ = true;
    relay_.io.post(later(&WorkReactor::pump));
    return true;
  }

  // Takes what the dispatcher has for this worker (within its credit); re-arms the hook.
  void pump() {
    std::lock_guard lock(mu_);
    if (finished_ || reads_done_ || !member_.joined()) return;
    member_.take(to_send_);
    // (the hook only posts: it may run at once, on this thread, under our lock)
    member_.on_ready(
        [io = &relay_.io, again = later(&WorkReactor::pump)] { io->post_soon(again); });
    write_next();
  }

  void write_next() {  // caller holds mu_
    if (writing_ || finished_) return;
    out_.Clear();
    if (joined_) {
      out_.mutable_joined()->set_id(member_.id());
      out_.mutable_joined()->set_results_topic(topic_->stage->config().results_topic);
      joined_ = false;
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

  RelayServer::Impl& relay_;
  SessionSlot slot_;
  v1::WorkRequest req_;
  v1::WorkEvent out_;
  std::shared_ptr<Topic> topic_;
  relay::StageMember member_;
  std::deque<RelayMessage> to_send_;
  std::deque<std::string> errors_;  // about the worker's messages, bounded by its reads
  bool joined_ = false;             // the joined event is due
  bool writing_ = false;
  bool reads_done_ = false;
};

}  // namespace

SubscribeReactor::SubscribeReactor(RelayServer::Impl& relay, SessionSlot slot,
                                   std::shared_ptr<Topic> topic, Subscription<RelayMessage> sub)
    : relay_(relay),
      slot_(std::move(slot)),
      topic_(std::move(topic)),
      sub_(std::move(sub)),
      series_(relay_.registry, topic_->name, &sub_, relay_.next_session_id.fetch_add(1)) {
  StartSendInitialMetadata();  // tells the client the subscription exists (Subscriber waits)
  pump();
}

SubscribeReactor::~SubscribeReactor() = default;

grpc::ServerWriteReactor<v1::SubscribeEvent>* RelayServer::Impl::Subscribe(
    grpc::CallbackServerContext* /*ctx*/, const v1::SubscribeRequest* req) {
  using Failed = Refused<grpc::ServerWriteReactor<v1::SubscribeEvent>>;
  grpc::Status status;
  SessionSlot slot = session(status);
  if (!slot) return new Failed(status);
  auto t = topic(req->topic(), status);
  if (!t) return new Failed(status);
  auto sub = subscribe(*t, req->name(), "subscriber", req->depth(), status);
  if (!sub) return new Failed(status);
  return new SubscribeReactor(*this, std::move(slot), t, std::move(*sub));
}

grpc::ServerBidiReactor<v1::PublishRequest, v1::PublishEvent>* RelayServer::Impl::Publish(
    grpc::CallbackServerContext* ctx) {
  grpc::Status status;
  SessionSlot slot = session(status);
  if (!slot)
    return new Refused<grpc::ServerBidiReactor<v1::PublishRequest, v1::PublishEvent>>(status);
  return new PublishReactor(*this, ctx, std::move(slot));
}

grpc::ServerBidiReactor<v1::WorkRequest, v1::WorkEvent>* RelayServer::Impl::Work(
    grpc::CallbackServerContext* /*ctx*/) {
  grpc::Status status;
  SessionSlot slot = session(status);
  if (!slot) return new Refused<grpc::ServerBidiReactor<v1::WorkRequest, v1::WorkEvent>>(status);
  return new WorkReactor(*this, std::move(slot));
}

}  // namespace sluice

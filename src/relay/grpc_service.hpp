// The relay's gRPC transport (service sluice.v1.Relay, callback API; relay-internal): each
// call is a thin reactor over a role — Publish over PublishSession (grpc_publish.cpp),
// Subscribe over SubscriberPump (grpc_subscribe.cpp), Work over WorkerSession
// (grpc_work.cpp) — that decodes requests into it and encodes its events. Refusals become
// statuses through the refusal table (to_grpc).
//
// Requests arrive as gRPC byte buffers and are decoded here (decode(), request_decode.hpp), not
// by gRPC: an oversized or malformed request then gets a status that says what is wrong
// (INVALID_ARGUMENT naming the setting or the field) instead of gRPC's own answers, and a
// string that is not UTF-8 writes nothing to stderr. Responses are gRPC's usual typed writes,
// except a subscriber's events: those carry payloads and are encoded by wire::ItemWriter
// (grpc_items.hpp) so that each payload leaves as a reference to the topic's Buffer.
//
// Threading: reactor callbacks run on gRPC's threads; each reactor serializes them with its
// lock. Hooks from other threads (a topic has room, a subscription is readable, a stage's
// notice) reach a reactor through GuardedReactor::later(), only while it exists.
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "refusal.hpp"
#include "relay_core.hpp"
#include "request_decode.hpp"
#include "sluice/detail/thread_annotations.hpp"
#include "sluice/v1/relay.grpc.pb.h"
#include "stats_view.hpp"

namespace sluice::relay {

/// The status that tells a refusal (counted: RelayCore::counted).
inline grpc::Status to_grpc(RelayCore& core, const Refusal& r) {
  core.counted(r);
  return {static_cast<grpc::StatusCode>(codes(r.kind).grpc_code), r.message};
}

// The calls' reactors: requests as byte buffers, responses typed (a subscriber's: bytes).
using PublishRpc = grpc::ServerBidiReactor<grpc::ByteBuffer, v1::PublishEvent>;
using SubscribeRpc = grpc::ServerWriteReactor<grpc::ByteBuffer>;
using WorkRpc = grpc::ServerBidiReactor<grpc::ByteBuffer, v1::WorkEvent>;

// The service: its methods' handlers are replaced by ones that pass requests undecoded.
class GrpcService final : public v1::Relay::CallbackService {
 public:
  explicit GrpcService(RelayCore& core);

 private:
  SubscribeRpc* subscribe(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* in);
  PublishRpc* publish(grpc::CallbackServerContext* ctx);
  WorkRpc* work(grpc::CallbackServerContext* ctx);
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx, const v1::StatsRequest* /*req*/,
                                  v1::StatsReply* reply) override;

  RelayCore& core_;
};

/// Who makes a call: the principal its `authorization: Bearer <token>` metadata names (none:
/// the anonymous one), or unauthenticated.
Outcome<Who> caller(RelayCore& core, const grpc::CallbackServerContext* ctx);

/// `in` decoded into `out` (a request message), or why it is refused.
template <class Message>
std::optional<Refusal> decode(const RelayCore& core, grpc::ByteBuffer& in, Message& out) {
  out.Clear();
  const std::size_t size = in.Length();
  return decode_request(Message::descriptor()->name(), size, max_request_bytes(core.config),
                        [&in, &out] {
                          grpc::ProtoBufferReader reader(&in);
                          return out.ParseFromZeroCopyStream(&reader);
                        });
}

// A call refused before it started: finishes at once with the refusal's status.
template <class Base>
struct Refused final : Base {
  Refused(RelayCore& core, const Refusal& r) { this->Finish(to_grpc(core, r)); }
  void OnDone() override { delete this; }
};

// A reactor's address that callbacks from other threads may use until the reactor is done.
template <class R>
struct Guard {
  Mutex mu;
  R* self SLUICE_GUARDED_BY(mu) = nullptr;
  template <class F>
  void with(F&& f) {
    MutexLock lock(mu);
    if (self != nullptr) f(*self);
  }
  void clear() {
    MutexLock lock(mu);
    self = nullptr;
  }
};

// What the streaming reactors share: a lock, finishing once, cancel and done, and a guard
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
    MutexLock lock(mu_);
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
  GuardedReactor() : guard_(std::make_shared<Guard<GuardedReactor>>()) {
    MutexLock lock(guard_->mu);
    guard_->self = this;
  }
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
  void finish(const grpc::Status& status) SLUICE_REQUIRES(mu_) {
    if (finished_) return;
    finished_ = true;
    static_cast<Derived*>(this)->before_finish();
    this->Finish(status);
  }
  void before_finish() {}  // a derived reactor's hook (trailing metadata), caller holds mu_
  // The call ends (UNAUTHENTICATED) when `who`'s token expires. From the derived constructor.
  void expire_with(RelayCore& core, const Principal& who) {
    const auto when = steady_expiry(who);
    if (!when) return;
    expiry_.emplace(core.loops.main(), *when, [g = guard_, &core, r = token_expired(who)] {
      g->with([&](GuardedReactor& self) {
        MutexLock lock(self.mu_);
        self.finish(to_grpc(core, r));
      });
    });
  }
  // A write completed: false (and the call finished, CANCELLED) if `peer` went away.
  bool written(bool ok, const char* peer) SLUICE_REQUIRES(mu_) {
    writing_ = false;
    if (ok) return true;
    finish(grpc::Status(grpc::StatusCode::CANCELLED, std::string(peer) + " went away"));
    return false;
  }

  Mutex mu_;
  bool finished_ SLUICE_GUARDED_BY(mu_) = false;
  bool writing_ SLUICE_GUARDED_BY(mu_) = false;  // one write in flight at most

 private:
  std::shared_ptr<Guard<GuardedReactor>> guard_;
  std::optional<LoopAlarm> expiry_;  // set once, by the constructor
};

}  // namespace sluice::relay

// A cluster topic's receiving side (see nats_link.hpp, nats_bridge.hpp): the other relays' items
// into the topic while it has subscribers here — real-time from a core NATS subscription,
// lossless from a JetStream consumer in the stream's order, acked once in the topic.
#include <nats/nats.h>

#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "nats_link.hpp"

namespace sluice::relay {

// Puts a lossless item into the topic, waiting for room as a producer does (its batch stays
// unacked meanwhile, which holds JetStream back); false once receiving stops or the topic goes.
bool NatsBridge::Link::deliver(RelayMessage&& m) {
  const std::size_t bytes = m.payload.size();
  const std::uint32_t lost = m.bridge_lost;
  while (!in_stop) {
    const auto t = topic.lock();
    if (!t) return false;
    const auto put = t->put_until(m, Clock::now() + 100ms);  // (`m` intact unless in)
    if (put == Topic::Put::full) continue;  // (a subscriber here is slow: wait, unacked)
    if (put != Topic::Put::in) return false;
    counters->received(bytes, lost);
    return true;
  }
  return false;
}

void NatsBridge::Link::on_rt_msg(natsConnection* /*nc*/, natsSubscription* /*sub*/, natsMsg* raw,
                                 void* self) {
  auto* rx = static_cast<RtReceiver*>(self);
  const std::shared_ptr<natsMsg> msg(raw, natsMsg_Destroy);
  const auto t = rx->topic.lock();
  if (!t) return;
  (void)bridge::for_each_record(
      bytes_of(raw), [&](const bridge::Header& h, std::size_t at, std::size_t bytes) {
        if ((h.flags & bridge::kLossless) != 0) return;  // (not ours: ignored)
        if (!rx->origins.contains(h.origin) && rx->origins.size() >= kMaxOrigins)
          rx->origins.erase(rx->origins.begin());
        const auto lost = rx->origins[h.origin].realtime(h.sequence);
        if (!lost) {
          rx->counters->duplicates.fetch_add(1, std::memory_order_relaxed);
          return;
        }
        auto item = item_of(msg, h, at, bytes, *lost);
        if (t->put(item) == Topic::Put::in) rx->counters->received(bytes, *lost);  // (real-time)
      });
}

void NatsBridge::Link::on_rt_complete(void* receiver) {
  delete static_cast<RtReceiver*>(receiver);  // NOLINT(cppcoreguidelines-owning-memory)
}

void NatsBridge::Link::start_in() {
  receiving = true;
  if (lossless) {  // (receiving is said once its consumer exists)
    in_stop = false;
    in = std::thread([this] { run_lossless_in(); });
    return;
  }
  auto* rx = new RtReceiver{topic, counters, {}};  // NOLINT(cppcoreguidelines-owning-memory)
  natsSubscription* sub = nullptr;
  if (natsConnection_Subscribe(&sub, bridge.nats_->nc, subject.c_str(), &Link::on_rt_msg, rx) !=
      NATS_OK) {
    delete rx;  // NOLINT(cppcoreguidelines-owning-memory)
    receiving = false;
    return;  // (tried again at the next poll)
  }
  counters->receiving = true;
  // What may wait in the client for the topic: its budget (past it the client drops, and the
  // numbering shows the loss).
  const auto bytes = std::min<std::uint64_t>(config.max_queue_bytes, INT32_MAX);
  (void)natsSubscription_SetPendingLimits(sub, 65536, static_cast<int>(bytes));
  (void)natsSubscription_SetOnCompleteCB(sub, &Link::on_rt_complete, rx);
  rt_sub = sub;
}

void NatsBridge::Link::stop_in() {
  if (!receiving) return;
  receiving = false;
  counters->receiving = false;
  if (rt_sub != nullptr) {
    (void)natsSubscription_Unsubscribe(rt_sub);  // (the receiver goes in on_rt_complete)
    natsSubscription_Destroy(rt_sub);
    rt_sub = nullptr;
  }
  in_stop = true;
  if (in.joinable()) in.join();
}

// A push consumer named after this relay, with flow control: the server sends at most
// max_ack_pending (the topic's max_queue_items) unacked batches, and a batch is acked once each of
// its items is in the topic here (the callback waits for room, like a producer). It is deleted
// when receiving stops, and by the server after 30 s without this relay (one that went away).
//
// Batches are taken in the stream's order: the consumer starts at a stream sequence chosen here
// (the stream's next when it is made) and must deliver every message from there, so one that
// arrives ahead of a missing one (delivered while this relay's interest had not yet reached the
// stream's server, or lost in a reconnect: JetStream sends it again after its ack wait) is held,
// unacked, until the missing one comes — or until nats.reorder_timeout_ms, when the receiver
// moves on (what an origin then misses is announced by its sequence, bridge_sequence.hpp). A
// message behind that point is a redelivery of one taken (acked and dropped), unless it is its
// first delivery: then the stream was made anew and the receiver follows it from there.
struct NatsBridge::Link::JsReceiver {
  Link* link = nullptr;
  Mutex mu;  // the callback and the expiry tick
  // Messages by stream sequence (held unacked while ahead of a missing one), and each origin's
  // items by its numbering (a jump: items lost, announced; behind: a repeat).
  bridge::OriginSequence<std::shared_ptr<natsMsg>> stream_order SLUICE_GUARDED_BY(mu);
  std::map<std::uint64_t, bridge::OriginSequence<std::monostate>> origins SLUICE_GUARDED_BY(mu);
  std::promise<void> done;  // the client will not call back any more

  // One batch, due now: each record in order into the topic (the callback waits for room), then
  // the batch acked. Items are used in place in the message.
  void take(std::shared_ptr<natsMsg>&& msg, std::uint64_t /*skipped: the origins count*/)
      SLUICE_REQUIRES(mu) {
    Link& l = *link;
    (void)bridge::for_each_record(
        bytes_of(msg.get()), [&](const bridge::Header& h, std::size_t at, std::size_t bytes)
                                 SLUICE_NO_THREAD_SAFETY_ANALYSIS {  // (called here, under mu)
                                   if ((h.flags & bridge::kLossless) == 0 || h.origin == l.origin)
                                     return;  // (own)
                                   if (!origins.contains(h.origin) && origins.size() >= kMaxOrigins)
                                     origins.erase(origins.begin());
                                   const auto lost = origins[h.origin].realtime(h.sequence);
                                   if (!lost) {
                                     l.counters->duplicates.fetch_add(1, std::memory_order_relaxed);
                                     return;
                                   }
                                   (void)l.deliver(item_of(msg, h, at, bytes, *lost));
                                 });
    natsMsg_Ack(msg.get(), nullptr);
  }
  // (what stream_order calls, under mu, for each batch due)
  auto taker() {
    return [this](std::shared_ptr<natsMsg>&& m, std::uint64_t skipped)
               SLUICE_NO_THREAD_SAFETY_ANALYSIS { take(std::move(m), skipped); };
  }

  void expire(Clock::duration timeout) {
    const MutexLock lock(mu);
    (void)stream_order.expire(Clock::now(), timeout, taker());
    link->counters->pending.store(stream_order.held(), std::memory_order_relaxed);
  }

  static void on_msg(natsConnection* /*nc*/, natsSubscription* /*sub*/, natsMsg* raw, void* self) {
    auto* rx = static_cast<JsReceiver*>(self);
    std::shared_ptr<natsMsg> msg(raw, natsMsg_Destroy);
    jsMsgMetaData* meta = nullptr;
    if (natsMsg_GetMetaData(&meta, msg.get()) != NATS_OK || meta == nullptr) {
      natsMsg_Ack(msg.get(), nullptr);  // (not a JetStream delivery: not ours)
      return;
    }
    const std::uint64_t seq = meta->Sequence.Stream;
    const std::uint64_t deliveries = meta->NumDelivered;
    jsMsgMetaData_Destroy(meta);
    const MutexLock lock(rx->mu);
    if (rx->stream_order.behind(seq)) {
      if (deliveries > 1) {  // (taken before: its ack was late or lost)
        rx->link->counters->duplicates.fetch_add(1, std::memory_order_relaxed);
        natsMsg_Ack(msg.get(), nullptr);
        return;
      }
      rx->stream_order.start_at(seq);  // (a first delivery behind: the stream was made anew)
    }
    // (a later delivery of one held is dropped unacked: the held one is acked when taken)
    (void)rx->stream_order.lossless(seq, std::move(msg), Clock::now(), rx->taker());
  }
  static void on_complete(void* self) { static_cast<JsReceiver*>(self)->done.set_value(); }
};

void NatsBridge::Link::run_lossless_in() {
  JsReceiver rx;
  rx.link = this;
  natsSubscription* sub = nullptr;
  const std::string durable = bridge.name_;
  while (!in_stop && sub == nullptr) {
    jsStreamInfo* si = nullptr;
    if (ensure_stream() &&
        js_GetStreamInfo(&si, jetstream(), stream.c_str(), nullptr, nullptr) == NATS_OK) {
      const std::uint64_t start = si->State.LastSeq + 1;  // (the consumer starts there)
      jsStreamInfo_Destroy(si);
      {
        const MutexLock lock(rx.mu);
        rx.stream_order.start_at(start);
      }
      jsSubOptions so;
      jsSubOptions_Init(&so);
      so.Stream = stream.c_str();
      so.ManualAck = true;
      so.Config.Durable = durable.c_str();
      so.Config.DeliverPolicy = js_DeliverByStartSequence;
      so.Config.OptStartSeq = start;
      so.Config.AckPolicy = js_AckExplicit;
      so.Config.MaxAckPending = static_cast<std::int64_t>(config.max_queue_items);
      so.Config.AckWait = std::chrono::nanoseconds(kConsumerAckWait).count();
      so.Config.FlowControl = true;
      so.Config.Heartbeat = std::chrono::nanoseconds(2s).count();
      so.Config.InactiveThreshold = std::chrono::nanoseconds(30s).count();
      auto err = static_cast<jsErrCode>(0);
      if (js_Subscribe(&sub, jetstream(), subject.c_str(), &JsReceiver::on_msg, &rx, nullptr, &so,
                       &err) != NATS_OK) {
        sub = nullptr;
        // (one left by an earlier run of this relay, within its 30 s: made again from here)
        (void)js_DeleteConsumer(jetstream(), stream.c_str(), durable.c_str(), nullptr, nullptr);
      }
    }
    if (sub == nullptr) {
      for (int i = 0; i < 10 && !in_stop; ++i) std::this_thread::sleep_for(100ms);
    }
  }
  if (sub == nullptr) return;
  (void)natsSubscription_SetPendingLimits(sub, -1, -1);  // (bounded by max_ack_pending)
  (void)natsSubscription_SetOnCompleteCB(sub, &JsReceiver::on_complete, &rx);
  counters->receiving = true;
  const auto timeout = bridge.core_.config.nats.reorder_timeout;
  while (!in_stop) {
    std::this_thread::sleep_for(200ms);
    rx.expire(timeout);
  }
  auto done = rx.done.get_future();
  (void)natsSubscription_Unsubscribe(sub);  // (deletes the consumer)
  done.wait();  // (a callback waiting for room sees in_stop and returns)
  natsSubscription_Destroy(sub);
}

}  // namespace sluice::relay

// A cluster topic's sending side (see nats_link.hpp, nats_bridge.hpp): this relay's items to
// NATS — real-time in messages as they come, lossless in batches to JetStream, one unacked at a
// time, sent again until acked.
#include <nats/nats.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "nats_link.hpp"

namespace sluice::relay {

void NatsBridge::Link::start_out() {
  out = std::thread([this] { run_out(); });
}

void NatsBridge::Link::run_out() {
  Subscription<RelayMessage> sub;
  {
    const auto t = topic.lock();
    if (!t) return;
    auto made = t->take_bridge_subscription();  // (made with the topic: from its first item)
    if (!made) return;
    sub = std::move(*made);
  }
  while (!stopping) {
    bool in_flight = false;
    if (lossless) {
      in_flight = settle_flight();
      if (!in_flight && !gathered.empty()) in_flight = send_gathered();
      if (in_flight && (gathered.size() >= kMaxBatchItems || gathered_bytes >= batch_bytes())) {
        MutexLock lock(flights_mu);  // (full: read nothing until the batch is acked)
        (void)wake_out.wait_for(flights_mu, 100ms);
        continue;
      }
    }
    // (a batch in flight: look at its ack again soon)
    auto r = in_flight ? sub.recv_for(1ms) : sub.recv_for(100ms);
    if (r.status == RecvStatus::timeout) continue;
    if (r.status == RecvStatus::closed || r.status == RecvStatus::evicted) break;
    if (r.status == RecvStatus::gap) {  // (real-time: NATS took too long; receivers see it)
      out_seq += r.lost;
      continue;
    }
    if (r->from_bridge) continue;
    ++out_seq;
    if (!fits(r->payload.size())) continue;
    if (lossless) {
      gathered_bytes += r->payload.size();
      gathered.push_back({out_seq, std::move(*r)});
      continue;
    }
    // Real-time: this item and those already waiting behind it go in one message (nothing waits
    // for more, so batching adds no latency; a burst costs a message per 64 KiB, not per item).
    add_realtime(*r);
    while (scratch_items < kMaxBatchItems && scratch.size() < kRealtimeBatchBytes) {
      auto more = sub.try_recv();
      if (more.status == RecvStatus::gap) {  // (the records' numbering says what was lost)
        out_seq += more.lost;
        continue;
      }
      if (more.status != RecvStatus::ok) break;  // (empty, or closed: the loop sees it again)
      if (more->from_bridge) continue;
      ++out_seq;
      if (!fits(more->payload.size())) continue;
      const auto limit = counters->max_item_bytes.load(std::memory_order_relaxed);
      if (limit != 0 && scratch.size() + bridge::kHeaderBytes + more->payload.size() >
                            limit + bridge::kHeaderBytes) {
        send_realtime();  // (the message would be larger than NATS takes: this one goes first)
      }
      add_realtime(*more);
    }
    send_realtime();
  }
  // (the topic closed: what it had goes out)
  while (lossless && !stopping && (settle_flight() || (!gathered.empty() && send_gathered())))
    std::this_thread::sleep_for(1ms);
  sub.unsubscribe();
  if (const auto t = topic.lock()) t->bridge_subscribers.fetch_sub(1, std::memory_order_acq_rel);
}

// Item `m`, numbered out_seq, joins the real-time batch being made.
void NatsBridge::Link::add_realtime(const RelayMessage& m) {
  bridge::Header h;
  h.origin = origin;
  h.sequence = out_seq;
  h.item_sequence = m.sequence;
  h.timestamp_ns = m.timestamp_ns;
  append_record(scratch, h, m);
  ++scratch_items;
}

// The real-time batch goes out as one core-NATS message (its buffer is kept for the next).
void NatsBridge::Link::send_realtime() {
  // (while reconnecting the client buffers up to 8 MiB; past that the items are lost, and the
  // receivers see the jump in the numbering)
  if (natsConnection_Publish(bridge.nats_->nc, subject.c_str(), scratch.data(),
                             static_cast<int>(scratch.size())) == NATS_OK) {
    counters->sent_items.fetch_add(scratch_items, std::memory_order_relaxed);
    counters->sent_messages.fetch_add(1, std::memory_order_relaxed);
    counters->sent_bytes.fetch_add(scratch.size() - scratch_items * bridge::kHeaderBytes,
                                   std::memory_order_relaxed);
  }
  scratch.clear();
  scratch_items = 0;
}

jsCtx* NatsBridge::Link::jetstream() {
  const MutexLock lock(js_mu);
  if (js == nullptr) {
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = 5000;
    o.PublishAsync.MaxPending = static_cast<std::int64_t>(kMaxInFlight);
    o.PublishAsync.AckHandler = &Link::on_ack;
    o.PublishAsync.AckHandlerClosure = this;
    if (natsConnection_JetStream(&js, bridge.nats_->nc, &o) != NATS_OK) js = nullptr;
  }
  return js;
}

// The topic's stream: interest retention (an item goes once every relay receiving it acked
// it), the topic's byte budget, new items refused when full (the producers' throttle).
bool NatsBridge::Link::ensure_stream() {
  jsCtx* ctx = jetstream();
  if (ctx == nullptr) return false;
  const NatsConfig& nc = bridge.core_.config.nats;
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = stream.c_str();
  std::array<const char*, 1> subjects{subject.c_str()};
  cfg.Subjects = subjects.data();
  cfg.SubjectsLen = 1;
  cfg.Retention = js_InterestPolicy;
  cfg.Discard = js_DiscardNew;
  cfg.MaxBytes = static_cast<std::int64_t>(config.max_queue_bytes);
  cfg.Storage = nc.storage == "memory" ? js_MemoryStorage : js_FileStorage;
  cfg.Replicas = static_cast<std::int64_t>(nc.replicas);
  jsStreamInfo* si = nullptr;
  auto err = static_cast<jsErrCode>(0);
  natsStatus s = js_AddStream(&si, ctx, &cfg, nullptr, &err);
  if (si != nullptr) jsStreamInfo_Destroy(si);
  if (s == NATS_OK || err == JSStreamNameExistErr) return true;
  log::event(log::Level::warn, "nats_stream_unavailable",
             {{"topic", name},
              {"stream", stream},
              {"error", status_text(s)},
              {"hint", s == NATS_TIMEOUT
                           ? "NATS did not answer (a server away or stalled, or JetStream "
                             "electing a leader): retrying"
                           : "JetStream must be enabled on the NATS servers (docs/cluster.md)"}});
  return false;
}

// Whether NATS carries an item of `bytes` (the connected server's max_payload, less the
// header); one it does not is not sent — counted, and announced by the receivers as a gap (its
// number is skipped). Producers' items over it are refused before they get here
// (PublishSession::add); this catches those in the topic when the limit became known.
bool NatsBridge::Link::fits(std::uint64_t bytes) {
  const auto limit = counters->max_item_bytes.load(std::memory_order_relaxed);
  if (limit == 0 || bytes <= limit) return true;
  counters->too_big.fetch_add(1, std::memory_order_relaxed);
  return false;
}

// A batch's bytes: at most a quarter of the stream's (the topic's budget), so that the stream
// can take one while it holds others, and what NATS carries in one message; at least one item.
std::size_t NatsBridge::Link::batch_bytes() const {
  std::size_t most = std::min<std::size_t>(kMaxBatchBytes, config.max_queue_bytes / 4);
  const auto limit = counters->max_item_bytes.load(std::memory_order_relaxed);
  if (limit != 0) most = std::min<std::size_t>(most, limit);
  return most;
}

void NatsBridge::Link::publish_flight(const std::vector<Outgoing>& items) {
  std::size_t size = 0;
  for (const auto& o : items) size += bridge::kHeaderBytes + o.item.payload.size();
  std::vector<unsigned char> bytes;
  bytes.reserve(size);
  for (const auto& o : items) {
    bridge::Header h;
    h.flags = bridge::kLossless;
    h.origin = origin;
    h.sequence = o.seq;
    h.item_sequence = o.item.sequence;
    h.timestamp_ns = o.item.timestamp_ns;
    append_record(bytes, h, o.item);
  }
  const std::uint64_t seq = items.front().seq;
  natsMsg* msg = nullptr;
  if (natsMsg_Create(&msg, subject.c_str(), nullptr, reinterpret_cast<const char*>(bytes.data()),
                     static_cast<int>(bytes.size())) != NATS_OK) {
    return;  // (settle_flight finds it unacked past kAckTimeout: sent again)
  }
  // The message id makes a resend of a batch JetStream already stored a no-op (its duplicate
  // window: 2 minutes by default).
  const std::string id = std::to_string(origin) + "-" + std::to_string(seq);
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MsgId = id.c_str();
  po.MaxWait = 5000;
  jsCtx* ctx = jetstream();
  if (ctx == nullptr || js_PublishMsgAsync(ctx, &msg, &po) != NATS_OK) {
    natsMsg_Destroy(msg);
    const MutexLock lock(flights_mu);
    if (flight.seq == seq) flight.state = Flight::State::failed;
  }
}

void NatsBridge::Link::on_ack(jsCtx* /*js*/, natsMsg* msg, jsPubAck* pa, jsPubAckErr* /*pae*/,
                              void* self) {
  auto* l = static_cast<Link*>(self);
  const auto h = bridge::decode(bytes_of(msg));
  if (h) {
    const MutexLock lock(l->flights_mu);
    if (l->flight.seq == h->sequence && l->flight.state == Flight::State::pending)
      l->flight.state = pa != nullptr ? Flight::State::acked : Flight::State::failed;
  }
  l->wake_out.notify_all();
  natsMsg_Destroy(msg);
}

// After this no ack callback runs for this link (its `this` is the callback's closure): the
// client calls back for a message only while it is in its pending list, and counts it pending
// until the callback has returned. So: wait a little for the acks in flight; take what is still
// pending out of the list (NATS is away: the batch is in the stream or not, and another relay's
// receiver sees either); then wait for a callback already running, which returns at once.
void NatsBridge::Link::forget_pending(jsCtx* ctx) {
  jsPubOptions o;
  jsPubOptions_Init(&o);
  o.MaxWait = 1000;
  if (js_PublishAsyncComplete(ctx, &o) == NATS_OK) return;
  natsMsgList pending{};
  if (js_PublishAsyncGetPendingList(&pending, ctx) == NATS_OK) natsMsgList_Destroy(&pending);
  (void)js_PublishAsyncComplete(ctx, nullptr);
}

// Lets an acked batch go; sends a failed (or unacked past kAckTimeout) one again after a backoff
// (JetStream refuses while the stream is full). Returns whether a batch is in flight.
bool NatsBridge::Link::settle_flight() {
  MutexLock lock(flights_mu);
  if (flight.state == Flight::State::acked) {
    counters->sent_items.fetch_add(flight.items.size(), std::memory_order_relaxed);
    counters->sent_messages.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t bytes = 0;
    for (const auto& o : flight.items) bytes += o.item.payload.size();
    counters->sent_bytes.fetch_add(bytes, std::memory_order_relaxed);
    flight = Flight{};
    retry_backoff = 20ms;
  }
  if (flight.state == Flight::State::pending && Clock::now() - flight.sent > kAckTimeout)
    flight.state = Flight::State::failed;  // (the server went away with the ack)
  counters->pending.store(flight.items.size() + gathered.size(), std::memory_order_relaxed);
  if (flight.state != Flight::State::failed) return flight.state == Flight::State::pending;
  lock.unlock();
  resend_flight();
  return true;
}

// The failed batch goes out again after the backoff (the out thread's: nothing else changes a
// failed batch).
void NatsBridge::Link::resend_flight() {
  std::this_thread::sleep_for(retry_backoff);
  retry_backoff = std::min<std::chrono::milliseconds>(retry_backoff * 2, 1000ms);
  counters->retries.fetch_add(1, std::memory_order_relaxed);
  std::vector<Outgoing> items;
  {
    const MutexLock lock(flights_mu);
    flight.state = Flight::State::pending;
    flight.sent = Clock::now();
    items = flight.items;  // (the Buffers' references)
  }
  if (ensure_stream()) {
    publish_flight(items);
  } else {
    const MutexLock lock(flights_mu);
    flight.state = Flight::State::failed;
  }
}

// The items gathered go out as one batch — as many as one NATS message carries, the rest wait for
// the next (none is in flight). Returns true: one is in flight.
bool NatsBridge::Link::send_gathered() {
  while (!stream_ready && !stopping) {
    stream_ready = ensure_stream();
    if (!stream_ready) std::this_thread::sleep_for(1s);
  }
  const auto limit = counters->max_item_bytes.load(std::memory_order_relaxed);
  std::size_t count = 0;
  std::uint64_t bytes = 0;  // (as NATS counts them: the items and their headers but the first's)
  for (const auto& o : gathered) {
    const std::uint64_t more = o.item.payload.size() + (count == 0 ? 0 : bridge::kHeaderBytes);
    if (count != 0 && limit != 0 && bytes + more > limit) break;
    bytes += more;
    ++count;
  }
  std::vector<Outgoing> items(std::make_move_iterator(gathered.begin()),
                              std::make_move_iterator(gathered.begin() + static_cast<long>(count)));
  gathered.erase(gathered.begin(), gathered.begin() + static_cast<long>(count));
  gathered_bytes = 0;
  for (const auto& o : gathered) gathered_bytes += o.item.payload.size();
  {
    const MutexLock lock(flights_mu);
    flight.seq = items.front().seq;
    flight.items = items;  // (references: one for the flight, one to send)
    flight.state = Flight::State::pending;
    flight.sent = Clock::now();
  }
  publish_flight(items);
  return true;
}

}  // namespace sluice::relay

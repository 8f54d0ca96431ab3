// The bridge to NATS (see nats_bridge.hpp). NATS's own C client (nats.c, Debian libnats-dev)
// does the protocol, reconnects, JetStream's API and acks; this file decides what crosses and
// keeps each topic's promise across it.
#include "nats_bridge.hpp"

#include <nats/nats.h>

#include <array>
#include <chrono>
#include <cstring>
#include <deque>
#include <future>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <stdexcept>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "bridge_codec.hpp"
#include "bridge_sequence.hpp"
#include "event_log.hpp"
#include "topic.hpp"

namespace sluice::relay {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

std::string random_name() {
  return "relay-" + Topic::make_epoch().substr(0, 8);  // (8 random hex digits)
}

std::uint64_t random_origin() {
  std::random_device rd;
  std::uint64_t v = 0;
  while (v == 0) v = (std::uint64_t{rd()} << 32) ^ rd();
  return v;
}

// A JetStream stream's name for a subject: '.' and '_' escaped (names may not hold '.'), so
// distinct topics have distinct streams.
std::string stream_name(const std::string& prefix, const std::string& topic) {
  std::string out;
  for (const char ch : prefix + "." + topic) {
    if (ch == '.') {
      out += "_2E";
    } else if (ch == '_') {
      out += "_5F";
    } else {
      out += ch;
    }
  }
  return out;
}

std::string status_text(natsStatus s) {
  const char* last = nats_GetLastError(nullptr);
  return std::string(natsStatus_GetText(s)) + (last != nullptr && *last != 0 ? ": " : "") +
         (last != nullptr ? last : "");
}

// A NATS message's bytes.
std::span<const unsigned char> bytes_of(natsMsg* msg) {
  const auto* data = reinterpret_cast<const unsigned char*>(natsMsg_GetData(msg));
  const int len = natsMsg_GetDataLength(msg);
  if (data == nullptr || len <= 0) return {};
  return {data, static_cast<std::size_t>(len)};
}

// A record of the NATS message `msg` as a topic item (no copy: the item's Buffer owns the
// message), `lost` items after the one before it from the same relay.
RelayMessage item_of(const std::shared_ptr<natsMsg>& msg, const bridge::Header& h, std::size_t at,
                     std::size_t bytes, std::uint64_t lost) {
  RelayMessage m;
  m.payload =
      Buffer::view_of(std::shared_ptr<const void>(msg),
                      reinterpret_cast<const std::byte*>(bytes_of(msg.get()).data()) + at, bytes);
  m.sequence = h.item_sequence;
  m.timestamp_ns = h.timestamp_ns;
  m.flags = static_cast<std::uint32_t>((h.flags & bridge::kItemFlags) >> bridge::kItemFlagsShift);
  m.from_bridge = true;
  m.bridge_lost = static_cast<std::uint32_t>(
      std::min<std::uint64_t>(lost, std::numeric_limits<std::uint32_t>::max()));
  return m;
}

// Appends item `m` to `out` as a batch record with header `h` (and the item's own flags).
void append_record(std::vector<unsigned char>& out, bridge::Header h, const RelayMessage& m) {
  h.flags |= static_cast<std::uint8_t>((m.flags << bridge::kItemFlagsShift) & bridge::kItemFlags);
  const std::size_t at = out.size();
  out.resize(at + bridge::kHeaderBytes + m.payload.size());
  (void)bridge::put_record(out.data() + at, h, m.payload.data(),
                           static_cast<std::uint32_t>(m.payload.size()));
}

constexpr std::size_t kMaxOrigins = 64;       // relays a topic's receiver follows at once
constexpr auto kInterestGrace = 1s;           // no subscriber this long: stop receiving
constexpr auto kAckTimeout = 6s;              // a JetStream publish not acked by then is sent again
constexpr auto kAnnounceEvery = 1s;           // presence: each relay says what it serves
constexpr auto kPresenceTtl = 3s;             // and is forgotten this long after it last said so
constexpr std::size_t kMaxPeers = 256;        // relays remembered (a new one past that: ignored)
constexpr int kMaxPresenceBytes = 64 * 1024;  // a presence message's size (longer: ignored)
// A consumer's batch not acked by then is delivered again (one on its way when a NATS server
// went away is late, not lost): shorter than nats.reorder_timeout_ms (at least 6 s), so that it
// comes again before the receiver gives up on it.
constexpr auto kConsumerAckWait = 3s;
constexpr std::size_t kMaxBatchItems = 1024;                    // a lossless batch's items
constexpr std::size_t kMaxBatchBytes = std::size_t{512} << 10;  // and bytes (one item: any size)
// A real-time message: the items waiting when the bridge sends, up to this many bytes (one item:
// any size). Small, so that a receiver's share of a burst comes in pieces it can take at once.
constexpr std::size_t kRealtimeBatchBytes = std::size_t{64} << 10;

}  // namespace

// ------------------------------------------------------------------------------------------
// The connection

struct NatsBridge::Connection {
  natsOptions* opts = nullptr;
  natsConnection* nc = nullptr;
  metrics::Counter* reconnects = nullptr;
  metrics::Counter* disconnects = nullptr;
  std::atomic<bool> up{false};
  // The connected server's max_payload (its INFO), as of the last (re)connect; 0: never yet.
  std::atomic<std::int64_t> max_payload{0};

  Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  Connection(Connection&&) = delete;
  Connection& operator=(Connection&&) = delete;
  ~Connection() { close(); }
  void close() {
    if (nc != nullptr) {
      natsConnection_Close(nc);
      natsConnection_Destroy(nc);
      nc = nullptr;
    }
    if (opts != nullptr) {
      natsOptions_Destroy(opts);
      opts = nullptr;
    }
  }
  static void connected(natsConnection* nc, void* self) {
    auto* c = static_cast<Connection*>(self);
    c->max_payload = natsConnection_GetMaxPayload(nc);
    c->up = true;
    log::event(log::Level::info, "nats_connected", {});
  }
  static void disconnected(natsConnection* /*nc*/, void* self) {
    auto* c = static_cast<Connection*>(self);
    if (c->up.exchange(false)) {
      c->disconnects->inc();
      log::event(log::Level::warn, "nats_disconnected", {{"hint", "reconnecting (nats.urls)"}});
    }
  }
  static void reconnected(natsConnection* nc, void* self) {
    auto* c = static_cast<Connection*>(self);
    c->max_payload = natsConnection_GetMaxPayload(nc);
    c->up = true;
    c->reconnects->inc();
    std::array<char, 256> url{};
    (void)natsConnection_GetConnectedUrl(nc, url.data(), url.size());
    log::event(log::Level::info, "nats_reconnected", {{"url", std::string(url.data())}});
  }
};

// ------------------------------------------------------------------------------------------
// Presence: the other relays' announcements, {"relay": name, "topics": {topic: subscribers}}

struct NatsBridge::Presence {
  struct Peer {
    Clock::time_point seen;
    std::map<std::string, std::uint64_t> topics;  // cluster topic: its subscribers there
  };
  std::string self;
  natsSubscription* sub = nullptr;  // (made by the bridge's constructor, ended by stop())
  Mutex mu;
  std::map<std::string, Peer> peers SLUICE_GUARDED_BY(mu);

  static void on_msg(natsConnection* /*nc*/, natsSubscription* /*sub*/, natsMsg* raw,
                     void* closure) {
    const std::unique_ptr<natsMsg, decltype(&natsMsg_Destroy)> msg(raw, natsMsg_Destroy);
    auto& p = **static_cast<std::shared_ptr<Presence>*>(closure);
    const char* data = natsMsg_GetData(raw);
    const int len = natsMsg_GetDataLength(raw);
    if (data == nullptr || len <= 0 || len > kMaxPresenceBytes) return;
    Peer peer{Clock::now(), {}};
    std::string name;
    try {
      const auto j = nlohmann::json::parse(data, data + len);
      name = j.at("relay").get<std::string>();
      for (const auto& [topic, subscribers] : j.at("topics").items())
        peer.topics[topic] = subscribers.get<std::uint64_t>();
    } catch (const nlohmann::json::exception&) {
      return;  // (not a relay's announcement: ignored)
    }
    if (name.empty() || name == p.self) return;
    const MutexLock lock(p.mu);
    if (!p.peers.contains(name) && p.peers.size() >= kMaxPeers) return;
    p.peers[name] = std::move(peer);
  }
  static void on_complete(void* closure) {
    delete static_cast<std::shared_ptr<Presence>*>(
        closure);  // NOLINT(cppcoreguidelines-owning-memory)
  }
};

// ------------------------------------------------------------------------------------------
// One cluster topic

struct NatsBridge::Link {
  Link(NatsBridge& b, const std::shared_ptr<Topic>& t)
      : bridge(b),
        topic(t),
        name(t->name),
        config(t->config),
        lossless(t->config.mode == TopicMode::lossless),
        subject(b.core_.config.nats.subject_prefix + (lossless ? ".js." : ".rt.") + t->name),
        stream(stream_name(b.core_.config.nats.subject_prefix, t->name)),
        counters(t->bridge) {}
  Link(const Link&) = delete;
  Link& operator=(const Link&) = delete;
  Link(Link&&) = delete;
  Link& operator=(Link&&) = delete;
  ~Link() {
    stop_in();
    stopping = true;
    wake_out.notify_all();
    if (out.joinable()) out.join();
    jsCtx* ctx = nullptr;
    {
      const MutexLock lock(js_mu);
      ctx = std::exchange(js, nullptr);
    }
    if (ctx != nullptr) {
      forget_pending(ctx);
      jsCtx_Destroy(ctx);
    }
  }

  NatsBridge& bridge;
  const std::weak_ptr<Topic> topic;
  const std::string name;
  const TopicConfig config;
  const bool lossless;
  const std::string subject;
  const std::string stream;
  const std::shared_ptr<BridgeCounters> counters;
  const std::uint64_t origin = random_origin();
  std::atomic<bool> stopping{false};

  // --- out: this relay's items to NATS
  std::thread out;
  std::uint64_t out_seq = 0;           // (out thread)
  std::vector<unsigned char> scratch;  // (out thread: a real-time batch's bytes, reused)
  std::size_t scratch_items = 0;       // (out thread: and its items)
  Mutex js_mu;
  // Lossless: made by the out thread or the in thread, whichever first needs it (jetstream());
  // destroyed once both have been joined.
  jsCtx* js SLUICE_GUARDED_BY(js_mu) = nullptr;
  // Lossless: the batch sent to JetStream and not yet acked (one at a time, so that items
  // reach the stream in order), and the items gathered meanwhile for the next one. The ack
  // handler marks it on the client's thread.
  // An item of this relay's and its number among them (out_seq): numbers are consecutive
  // but for items lost on the way (lapped, or too big for NATS), which the receivers announce.
  struct Outgoing {
    std::uint64_t seq = 0;
    RelayMessage item;
  };
  struct Flight {
    std::uint64_t seq = 0;  // its first item's
    std::vector<Outgoing> items;
    enum class State : std::uint8_t { none, pending, acked, failed } state = State::none;
    Clock::time_point sent = Clock::now();
  };
  Mutex flights_mu;
  CondVar wake_out;
  Flight flight SLUICE_GUARDED_BY(flights_mu);
  std::vector<Outgoing> gathered;               // (out thread)
  std::size_t gathered_bytes = 0;               // (out thread)
  std::chrono::milliseconds retry_backoff{20};  // (out thread)
  bool stream_ready = false;                    // (out thread)

  // --- in: other relays' items into the topic (only while it has subscribers here)
  Clock::time_point last_interest = Clock::now();
  natsSubscription* rt_sub = nullptr;  // real-time
  struct RtReceiver;                   // its callback's state, freed when the client is done
  std::thread in;                      // lossless
  std::atomic<bool> in_stop{false};
  bool receiving = false;  // (poll)

  void start_out();
  void run_out();
  bool ensure_stream();
  jsCtx* jetstream();
  void add_realtime(const RelayMessage& m);
  void send_realtime();
  bool settle_flight();
  void resend_flight();
  bool send_gathered();
  std::size_t batch_bytes() const;
  static void on_ack(jsCtx* js, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* self);
  static void forget_pending(jsCtx* ctx);
  void publish_flight(const std::vector<Outgoing>& items);
  bool fits(std::uint64_t bytes);

  void start_in();
  void stop_in();
  void run_lossless_in();
  struct JsReceiver;
  static void on_rt_msg(natsConnection* nc, natsSubscription* sub, natsMsg* raw, void* self);
  static void on_rt_complete(void* receiver);
  bool deliver(RelayMessage&& m);
};

struct NatsBridge::Link::RtReceiver {
  std::weak_ptr<Topic> topic;
  std::shared_ptr<BridgeCounters> counters;
  std::map<std::uint64_t, bridge::OriginSequence<std::monostate>> origins;
};

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
// (PublishSession::check_size); this catches those in the topic when the limit became known.
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

// --- in

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

// ------------------------------------------------------------------------------------------

NatsBridge::NatsBridge(RelayCore& core)
    : core_(core),
      name_(core.config.nats.name.empty() ? random_name() : core.config.nats.name),
      nats_(std::make_unique<Connection>()) {
  const NatsConfig& c = core.config.nats;
  auto& m = core.metrics;
  nats_->reconnects = &m.counter("sluice_nats_reconnects_total",
                                 "Times the bridge's NATS connection came back (nats.urls)");
  nats_->disconnects =
      &m.counter("sluice_nats_disconnects_total", "Times the bridge's NATS connection was lost");
  Connection* conn = nats_.get();
  m.gauge_fn("sluice_nats_connected", "1 while the bridge is connected to NATS", {},
             [conn] { return conn->up ? 1.0 : 0.0; });
  const auto check = [](natsStatus s, const char* what) {
    if (s != NATS_OK)
      throw std::runtime_error(std::string("relay: NATS client refused ") + what + ": " +
                               status_text(s));
  };
  check(natsOptions_Create(&nats_->opts), "its options");
  std::vector<const char*> urls;
  urls.reserve(c.urls.size());
  for (const auto& u : c.urls) urls.push_back(u.c_str());
  natsOptions* o = nats_->opts;
  check(natsOptions_SetServers(o, urls.data(), static_cast<int>(urls.size())),
        "nats.urls (SLUICE_NATS_URLS)");
  check(natsOptions_SetName(o, ("sluice " + name_).c_str()), "nats.name (SLUICE_NATS_NAME)");
  check(natsOptions_SetNoRandomize(o, true), "no_randomize");  // (nats.urls in order)
  check(natsOptions_SetNoEcho(o, true), "no_echo");
  check(natsOptions_SetIgnoreDiscoveredServers(o, !c.discovered_servers),
        "nats.discovered_servers (SLUICE_NATS_DISCOVERED_SERVERS)");  // (this relay's items are in
                                                                      // its topic)
  check(natsOptions_SetMaxReconnect(o, -1), "max_reconnect");
  check(natsOptions_SetReconnectWait(o, 250), "reconnect_wait");
  check(natsOptions_SetReconnectBufSize(o, 8 * 1024 * 1024), "reconnect_buf_size");
  check(natsOptions_SetRetryOnFailedConnect(o, true, &Connection::connected, conn),
        "retry_on_failed_connect");
  check(natsOptions_SetDisconnectedCB(o, &Connection::disconnected, conn), "disconnected_cb");
  check(natsOptions_SetReconnectedCB(o, &Connection::reconnected, conn), "reconnected_cb");
  if (!c.credentials_file.empty()) {
    check(natsOptions_SetUserCredentialsFromFiles(o, c.credentials_file.c_str(), nullptr),
          "nats.credentials_file (SLUICE_NATS_CREDENTIALS_FILE)");
  }
  if (!c.token.empty()) check(natsOptions_SetToken(o, c.token.c_str()), "nats.token");
  const natsStatus s = natsConnection_Connect(&nats_->nc, o);
  if (s == NATS_OK) {
    nats_->max_payload = natsConnection_GetMaxPayload(nats_->nc);
    nats_->up = true;
  } else if (s != NATS_NOT_YET_CONNECTED) {
    check(s, "to connect (nats.urls)");
  } else {
    log::event(
        log::Level::warn, "nats_unavailable",
        {{"urls", c.urls.front()}, {"hint", "retrying; cluster topics stay local meanwhile"}});
  }
  presence_ = std::make_shared<Presence>();
  presence_->self = name_;
  auto* closure =
      new std::shared_ptr<Presence>(presence_);  // NOLINT(cppcoreguidelines-owning-memory)
  const std::string relays = c.subject_prefix + ".relays";
  if (natsConnection_Subscribe(&presence_->sub, nats_->nc, relays.c_str(), &Presence::on_msg,
                               closure) == NATS_OK) {
    (void)natsSubscription_SetOnCompleteCB(presence_->sub, &Presence::on_complete, closure);
  } else {
    presence_->sub = nullptr;
    delete closure;  // NOLINT(cppcoreguidelines-owning-memory)
  }
  // Each cluster topic is linked as it is made (topics made before: now), by the control thread.
  core_.topics.on_created([this](const std::shared_ptr<Topic>& t) { attach(t); });
  for (const auto& t : core_.topics.all()) attach(t);
  control_ = std::thread([this] { run_control(); });
}

NatsBridge::~NatsBridge() {
  stop();
}

void NatsBridge::stop() {
  {
    const MutexLock lock(mu_);
    if (stopped_) return;
    stopped_ = true;
    attaching_.clear();
  }
  wake_.notify_all();
  core_.topics.on_created({});
  if (control_.joinable()) control_.join();  // (it lets every link go)
  if (presence_->sub != nullptr) {
    (void)natsSubscription_Unsubscribe(presence_->sub);  // (its closure goes in on_complete)
    natsSubscription_Destroy(presence_->sub);
    presence_->sub = nullptr;
  }
  nats_->close();
}

void NatsBridge::attach(const std::shared_ptr<Topic>& t) {
  if (t->config.scope != TopicScope::cluster) return;
  // (from its first item: its producers' items over it are refused from the start)
  t->bridge->max_item_bytes.store(carried_.load(std::memory_order_relaxed),
                                  std::memory_order_relaxed);
  {
    const MutexLock lock(mu_);
    if (stopped_) return;
    attaching_.push_back(t);
  }
  wake_.notify_all();
}

// The control thread: links the topics attach() queued, tends the links every 100 ms, announces
// every second; at the end, lets every link go (each stops its threads).
void NatsBridge::run_control() {
  for (;;) {
    std::vector<std::weak_ptr<Topic>> made;
    {
      MutexLock lock(mu_);
      if (!stopped_ && attaching_.empty()) (void)wake_.wait_for(mu_, 100ms);
      if (stopped_) break;
      made.swap(attaching_);
    }
    for (const auto& w : made) {
      if (const auto t = w.lock()) link(t);
    }
    const auto now = Clock::now();
    tend(now);
    if (now - announced_ >= kAnnounceEvery) {
      announced_ = now;
      announce();
    }
  }
  for (auto& [name, l] : links_) {  // (all at once, then each waits for its own threads)
    l->stopping = true;
    l->in_stop = true;
    l->wake_out.notify_all();
  }
  links_.clear();
}

// What NATS carries of one item: the connected server's max_payload less the bridge's header (0:
// not connected yet). Said in the log when it is less than the relay's frame limit, each time it
// changes: producers' larger items to cluster topics are refused.
std::uint64_t NatsBridge::item_limit() {
  const std::int64_t payload = nats_->max_payload.load();
  if (payload <= static_cast<std::int64_t>(bridge::kHeaderBytes)) return 0;
  const std::uint64_t carried = static_cast<std::uint64_t>(payload) - bridge::kHeaderBytes;
  if (carried != told_limit_ && carried < core_.config.max_frame_bytes) {
    log::event(log::Level::warn, "nats_max_payload_below_frame_limit",
               {{"max_payload", payload},
                {"max_frame_bytes", core_.config.max_frame_bytes},
                {"hint", "cluster topics refuse items over " + std::to_string(carried) +
                             " bytes: raise max_payload in nats-server's configuration, or "
                             "lower limits.max_frame_size_mb (docs/cluster.md)"}});
  }
  told_limit_ = carried;
  carried_.store(carried, std::memory_order_relaxed);
  return carried;
}

void NatsBridge::link(const std::shared_ptr<Topic>& t) {
  if (auto it = links_.find(t->name); it != links_.end()) {
    if (!it->second->topic.expired()) return;
    links_.erase(it);  // (the topic was removed and is made again)
  }
  auto l = std::make_unique<Link>(*this, t);
  l->start_out();
  links_.emplace(t->name, std::move(l));
}

// Starts or stops receiving as subscribers here come and go, lets go of removed topics, and
// tells each topic what NATS carries of an item.
void NatsBridge::tend(Clock::time_point now) {
  const std::uint64_t carried = item_limit();
  for (auto it = links_.begin(); it != links_.end();) {
    Link& l = *it->second;
    l.counters->max_item_bytes.store(carried, std::memory_order_relaxed);
    const auto t = l.topic.lock();
    if (!t) {  // (removed: its subscription saw the close)
      it = links_.erase(it);
      continue;
    }
    if (t->user_subscribers() > 0) {
      l.last_interest = now;
      if (!l.receiving) l.start_in();
    } else if (l.receiving && now - l.last_interest > kInterestGrace) {
      l.stop_in();
    }
    ++it;
  }
}

// Says which cluster topics this relay serves (with their subscribers), forgets the relays that
// stopped saying so, and records per topic the relays that serve it.
void NatsBridge::announce() {
  const auto now = Clock::now();
  nlohmann::json topics = nlohmann::json::object();
  std::vector<std::pair<std::shared_ptr<Topic>, std::uint64_t>> mine;
  for (const auto& [name, link] : links_) {
    if (auto t = link->topic.lock()) {
      const std::uint64_t subscribers = t->user_subscribers();
      topics[name] = subscribers;
      mine.emplace_back(std::move(t), subscribers);
    }
  }
  const std::string said = nlohmann::json{{"relay", name_}, {"topics", std::move(topics)}}.dump();
  const std::string subject = core_.config.nats.subject_prefix + ".relays";
  if (said.size() <= static_cast<std::size_t>(kMaxPresenceBytes)) {
    (void)natsConnection_Publish(nats_->nc, subject.c_str(), said.data(),
                                 static_cast<int>(said.size()));
  }
  const MutexLock lock(presence_->mu);
  std::erase_if(presence_->peers,
                [&](const auto& p) { return now - p.second.seen > kPresenceTtl; });
  for (const auto& [t, subscribers] : mine) {
    std::vector<BridgeCounters::Relay> relays{{name_, subscribers, true}};
    for (const auto& [peer, p] : presence_->peers) {
      if (const auto it = p.topics.find(t->name); it != p.topics.end())
        relays.push_back({peer, it->second, false});
    }
    t->bridge->set_relays(std::move(relays));
  }
}

}  // namespace sluice::relay

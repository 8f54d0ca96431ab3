// What the bridge to NATS's files share (relay-internal; see nats_bridge.hpp for the contract):
// the connection, one cluster topic's link (its state; its sending side is nats_link_out.cpp,
// its receiving side nats_link_in.cpp, the bridge that makes and tends links nats_bridge.cpp),
// and the helpers and bounds they use. NATS's own C client (nats.c, Debian libnats-dev) does
// the protocol, reconnects, JetStream's API and acks; these files decide what crosses and keep
// each topic's promise across it.
#pragma once

#include <nats/nats.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "bridge_codec.hpp"
#include "bridge_sequence.hpp"
#include "event_log.hpp"
#include "nats_bridge.hpp"
#include "sluice/detail/cond_var.hpp"
#include "topic.hpp"

namespace sluice::relay {

namespace nats_link {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

inline std::uint64_t random_origin() {
  std::random_device rd;
  std::uint64_t v = 0;
  while (v == 0) v = (std::uint64_t{rd()} << 32) ^ rd();
  return v;
}

// A JetStream stream's name for a subject: '.' and '_' escaped (names may not hold '.'), so
// distinct topics have distinct streams.
inline std::string stream_name(const std::string& prefix, const std::string& topic) {
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

inline std::string status_text(natsStatus s) {
  const char* last = nats_GetLastError(nullptr);
  return std::string(natsStatus_GetText(s)) + (last != nullptr && *last != 0 ? ": " : "") +
         (last != nullptr ? last : "");
}

// A NATS message's bytes.
inline std::span<const unsigned char> bytes_of(natsMsg* msg) {
  const auto* data = reinterpret_cast<const unsigned char*>(natsMsg_GetData(msg));
  const int len = natsMsg_GetDataLength(msg);
  if (data == nullptr || len <= 0) return {};
  return {data, static_cast<std::size_t>(len)};
}

// A record of the NATS message `msg` as a topic item (no copy: the item's Buffer owns the
// message), `lost` items after the one before it from the same relay.
inline RelayMessage item_of(const std::shared_ptr<natsMsg>& msg, const bridge::Header& h,
                            std::size_t at, std::size_t bytes, std::uint64_t lost) {
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
inline void append_record(std::vector<unsigned char>& out, bridge::Header h,
                          const RelayMessage& m) {
  h.flags |= static_cast<std::uint8_t>((m.flags << bridge::kItemFlagsShift) & bridge::kItemFlags);
  const std::size_t at = out.size();
  out.resize(at + bridge::kHeaderBytes + m.payload.size());
  (void)bridge::put_record(out.data() + at, h, m.payload.data(),
                           static_cast<std::uint32_t>(m.payload.size()));
}

inline constexpr std::size_t kMaxOrigins = 64;  // relays a topic's receiver follows at once
inline constexpr auto kAckTimeout = 6s;  // a JetStream publish not acked by then is sent again
// A consumer's batch not acked by then is delivered again (one on its way when a NATS server
// went away is late, not lost): shorter than nats.reorder_timeout_ms (at least 6 s), so that it
// comes again before the receiver gives up on it.
inline constexpr auto kConsumerAckWait = 3s;
inline constexpr std::size_t kMaxBatchItems = 1024;  // a lossless batch's items
inline constexpr std::size_t kMaxBatchBytes = std::size_t{512}
                                              << 10;  // and bytes (one item: any size)
// A real-time message: the items waiting when the bridge sends, up to this many bytes (one item:
// any size). Small, so that a receiver's share of a burst comes in pieces it can take at once.
inline constexpr std::size_t kRealtimeBatchBytes = std::size_t{64} << 10;

}  // namespace nats_link

using namespace nats_link;  // (these files' own helpers)

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

}  // namespace sluice::relay

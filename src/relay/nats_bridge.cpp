// The bridge to NATS (see nats_bridge.hpp): the connection's options, the presence of the other
// relays, and the control thread that makes, tends and lets go of each cluster topic's link
// (nats_link.hpp; its sides in nats_link_out.cpp and nats_link_in.cpp).
#include "nats_bridge.hpp"

#include <nats/nats.h>

#include <array>
#include <chrono>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "nats_link.hpp"

namespace sluice::relay {

namespace {

std::string random_name() {
  return "relay-" + Topic::make_epoch().substr(0, 8);  // (8 random hex digits)
}

constexpr auto kInterestGrace = 1s;           // no subscriber this long: stop receiving
constexpr auto kAnnounceEvery = 1s;           // presence: each relay says what it serves
constexpr auto kPresenceTtl = 3s;             // and is forgotten this long after it last said so
constexpr std::size_t kMaxPeers = 256;        // relays remembered (a new one past that: ignored)
constexpr int kMaxPresenceBytes = 64 * 1024;  // a presence message's size (longer: ignored)

}  // namespace

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

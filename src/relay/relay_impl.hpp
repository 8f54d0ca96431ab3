// What the relay's parts share (relay-internal): its topics, the state of RelayServer::Impl
// (configuration, metrics, sessions, event loops), and the helpers every kind of session uses.
// The gRPC service is in grpc_service.cpp, the WebSocket sessions in ws_service.cpp, the
// public RelayServer in server.cpp.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "frame_buffer.hpp"
#include "http_server.hpp"
#include "io_thread.hpp"
#include "sluice/broadcast.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay_server.hpp"
#include "sluice/slow_consumer.hpp"
#include "sluice/v1/relay.grpc.pb.h"
#include "stage.hpp"

namespace sluice::relay {

using Clock = std::chrono::steady_clock;

// Unread control events (errors, notices) a session holds for its peer before it gives up on it.
constexpr std::size_t kMaxControlQueued = 64;

struct Topic {
  Topic(std::string n, const TopicConfig& c) : name(std::move(n)), config(c), broadcast(make(c)) {}
  static BroadcastConfig make(const TopicConfig& c) {
    BroadcastConfig b;
    b.name = c.name.empty() ? "topic" : c.name;
    if (c.mode == TopicMode::lossless) {
      b.mode = BroadcastMode::lossless;
      b.capacity = 1024;
      b.default_depth = 1024;  // the byte budget is what binds
      b.max_bytes = c.max_queue_bytes;
      b.max_wait = c.max_wait;
    } else {
      b.mode = BroadcastMode::lossy;
      b.capacity = std::max<std::size_t>(2 * c.depth, 8);
      b.default_depth = c.depth;
    }
    return b;
  }
  // Why a publish gave up after max_wait: the topic, the slowest subscriber, its bytes, the
  // limit, and the settings to change.
  std::string full_message() const {
    const auto s = broadcast.stats();
    std::string slowest = "(none)";
    std::uint64_t bytes = 0;
    for (const auto& sub : s.subscribers) {
      if (sub.lag_bytes >= bytes) {
        bytes = sub.lag_bytes;
        slowest = sub.name;
      }
    }
    return "topic '" + name + "' is full: waited " + std::to_string(config.max_wait.count()) +
           " ms for room; subscriber '" + slowest + "' holds " + std::to_string(bytes) +
           " bytes of max_queue_bytes " + std::to_string(config.max_queue_bytes) +
           ". Speed up the consumer, or raise max_queue_bytes (SLUICE_MAX_QUEUE_BYTES) or "
           "max_wait_ms (SLUICE_MAX_WAIT_MS)";
  }

  std::string name;
  TopicConfig config;
  Broadcast<RelayMessage> broadcast;
  std::shared_ptr<relay::Stage> stage;  // when the topic declares one
};

// A publisher held back by a full lossless topic: when throttling starts (slow_down), when it
// ends (resume, once the topic has drained to half its budget), and the max_wait deadline of
// the item that waits. Shared by the gRPC and WebSocket publishers; its owner serializes calls.
class Throttle {
 public:
  enum class Wait : std::uint8_t {
    started,  // the first refusal of this item: arm a wake-up at deadline()
    waiting,  // refused again before the deadline
    expired,  // past max_wait: give up
  };
  /// An item found no room now.
  Wait blocked(const Topic& t) {
    slowed_ = true;
    const auto now = Clock::now();
    if (!waiting_) {  // max_wait counts from when this item first found no room
      waiting_ = true;
      deadline_ = now + t.config.max_wait;
      return Wait::started;
    }
    return now >= deadline_ ? Wait::expired : Wait::waiting;
  }
  /// An item went in: the next one that has to wait gets its own deadline.
  void admitted() { waiting_ = false; }
  /// Ends throttling if the topic has drained to half its budget; true if it just ended.
  bool resumed(const Topic& t) {
    if (!slowed_ || t.broadcast.queue_bytes() > t.config.max_queue_bytes / 2) return false;
    slowed_ = false;
    return true;
  }
  bool slowed() const { return slowed_; }
  Clock::time_point deadline() const { return deadline_; }

 private:
  bool slowed_ = false;
  bool waiting_ = false;
  Clock::time_point deadline_;
};

// A reactor's address that callbacks from other threads may use until the reactor is done.
template <class R>
struct Guard {
  std::mutex mu;
  R* self = nullptr;
  template <class F>
  void with(F&& f) {
    std::lock_guard lock(mu);
    if (self != nullptr) f(*self);
  }
  void clear() {
    std::lock_guard lock(mu);
    self = nullptr;
  }
};

// Counts a call against max_sessions (STREAM_MAX_SESSIONS) for as long as it lives.
class SessionSlot {
 public:
  SessionSlot() = default;
  SessionSlot(std::atomic<std::size_t>& count, std::size_t limit) {
    if (count.fetch_add(1, std::memory_order_acq_rel) < limit) {
      count_ = &count;
    } else {
      count.fetch_sub(1, std::memory_order_acq_rel);
    }
  }
  SessionSlot(const SessionSlot&) = delete;
  SessionSlot& operator=(const SessionSlot&) = delete;
  SessionSlot(SessionSlot&& o) noexcept : count_(std::exchange(o.count_, nullptr)) {}
  SessionSlot& operator=(SessionSlot&&) = delete;
  ~SessionSlot() {
    if (count_ != nullptr) count_->fetch_sub(1, std::memory_order_acq_rel);
  }
  explicit operator bool() const noexcept { return count_ != nullptr; }

 private:
  std::atomic<std::size_t>* count_ = nullptr;
};

// A call refused before it started: finishes at once with `status`.
template <class Base>
struct Refused final : Base {
  explicit Refused(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

// A subscriber's series in /metrics (labels topic, subscriber, session), read from its
// Subscription at scrape time and removed when this goes (the registry serializes removal with
// scrapes). The subscription must outlive this, or be inactive by the time it is read.
class SubscriberSeries {
 public:
  // `unsent` (WebSocket viewers): where the viewer's loop leaves the bytes its socket last
  // held unsent in the kernel, shown as sluice_subscriber_unsent_bytes; like `sub`, it must
  // outlive this.
  SubscriberSeries(metrics::Registry& registry, const std::string& topic,
                   const Subscription<RelayMessage>* sub, std::uint64_t session,
                   const std::atomic<std::uint64_t>* unsent = nullptr)
      : registry_(registry),
        labels_{
            {"topic", topic}, {"subscriber", sub->name()}, {"session", std::to_string(session)}},
        lost_labels_(with_reason(labels_)) {
    if (unsent != nullptr) {
      registry_.gauge_fn(
          "sluice_subscriber_unsent_bytes",
          "Bytes in the kernel's send buffer not yet taken by this WebSocket viewer (sampled "
          "when a send completes or times out)",
          labels_, [unsent] { return double(unsent->load(std::memory_order_relaxed)); });
    }
    registry_.counter_fn(
        "sluice_subscriber_received_total", "Items this subscriber received", labels_,
        [this, sub] { return read(sub, [&] { return double(sub->stats().received); }); });
    registry_.counter_fn(
        "sluice_subscriber_dropped_total", "Items this subscriber lost, by reason", lost_labels_,
        [this, sub] {
          return read(sub, [&] { return double(sub->stats().lost[DropReason::slow_consumer]); });
        });
    registry_.gauge_fn("sluice_subscriber_lag_items", "Items published and not yet received",
                       labels_,
                       [this, sub] { return read(sub, [&] { return double(sub->lag()); }); });
    registry_.gauge_fn(
        "sluice_subscriber_lag_bytes", "Bytes published and not yet received (lossless topics)",
        labels_, [this, sub] { return read(sub, [&] { return double(sub->stats().lag_bytes); }); });
  }
  SubscriberSeries(const SubscriberSeries&) = delete;
  SubscriberSeries& operator=(const SubscriberSeries&) = delete;
  SubscriberSeries(SubscriberSeries&&) = delete;
  SubscriberSeries& operator=(SubscriberSeries&&) = delete;
  ~SubscriberSeries() {
    for (const char* name : {"sluice_subscriber_received_total", "sluice_subscriber_lag_items",
                             "sluice_subscriber_lag_bytes"})
      registry_.remove(name, labels_);
    registry_.remove("sluice_subscriber_dropped_total", lost_labels_);
    registry_.remove("sluice_subscriber_unsent_bytes", labels_);  // (if a viewer's)
  }

  // Leaves the topic: for a subscriber on another thread than the scrapes (a WebSocket viewer
  // on a loop of its own), whose series must not read the subscription as it goes.
  void leave(Subscription<RelayMessage>& sub) {
    std::lock_guard lock(mu_);
    sub.unsubscribe();
  }

 private:
  template <class F>
  double read(const Subscription<RelayMessage>* sub, F&& f) const {
    std::lock_guard lock(mu_);
    return sub->active() ? f() : 0.0;
  }
  static metrics::Labels with_reason(metrics::Labels labels) {
    labels.emplace_back("reason", std::string(to_string(DropReason::slow_consumer)));
    return labels;
  }
  metrics::Registry& registry_;
  const metrics::Labels labels_;
  const metrics::Labels lost_labels_;
  mutable std::mutex mu_;  // leave() against the scrapes
};

}  // namespace sluice::relay

namespace sluice {

struct RelayServer::Impl final : v1::Relay::CallbackService {
  using Clock = relay::Clock;
  using HttpServer = relay::HttpServer;
  using IoThread = relay::IoThread;
  using SessionSlot = relay::SessionSlot;
  using Topic = relay::Topic;

  explicit Impl(RelayConfig c) : config(std::move(c)) {
    registry.gauge_fn("sluice_sessions", "Open Publish and Subscribe calls", {},
                      [this] { return double(sessions.load(std::memory_order_relaxed)); });
    registry.gauge_fn("sluice_sessions_max", "max_sessions (STREAM_MAX_SESSIONS)", {},
                      [this] { return double(config.max_sessions); });
    for (IoThread* l : loops()) {
      registry.gauge_fn("sluice_io_thread_viewers",
                        "WebSocket viewers each event-loop thread serves (server.threads)",
                        {{"thread", l->name()}},
                        [l] { return double(l->viewers.load(std::memory_order_relaxed)); });
    }
    registry.gauge_fn("sluice_frame_pool_spare_bytes",
                      "Memory kept to read producers' large frames into again (at most 64 MiB)", {},
                      [this] { return double(frames.spare_bytes()); });
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  Impl(Impl&&) = delete;
  Impl& operator=(Impl&&) = delete;
  // The I/O threads stop first; the acceptor goes while its io_context exists; then `io` and
  // `more_io` (the last members) are destroyed first, and with them the WebSocket sessions
  // their handlers hold, while everything they refer to is still there.
  ~Impl() override {
    stop_io();
    http_server.reset();
  }

  // The topic `name`, created with the defaults if allowed; nullptr and a status otherwise.
  std::shared_ptr<Topic> topic(const std::string& name, grpc::Status& status) {
    if (const std::string problem = topic_name_problem(name); !problem.empty()) {
      status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "topic \"" + name.substr(0, 200) + "\": " + problem);
      return nullptr;
    }
    std::lock_guard lock(mu);
    return topic_locked(name, status);
  }
  std::shared_ptr<Topic> topic_locked(const std::string& name, grpc::Status& status) {
    if (auto it = topics.find(name); it != topics.end()) return it->second;
    const TopicConfig* declared = config.topic(name);
    if (declared == nullptr && !config.auto_create) {
      status = grpc::Status(grpc::StatusCode::NOT_FOUND,
                            "topic '" + name +
                                "' does not exist and auto_create is off (declare it in the "
                                "configuration file, or set SLUICE_AUTO_CREATE=true)");
      return nullptr;
    }
    TopicConfig tc = declared != nullptr ? *declared : config.defaults;
    tc.name = name;
    auto t = std::make_shared<Topic>(name, tc);
    // In the map first: a results topic whose own stage's results are this topic finds it
    // (stages A -> B -> A) instead of making it again, forever.
    topics.emplace(name, t);
    if (tc.stage) {
      // Its results form a topic of their own (declared, or made with the defaults).
      grpc::Status results_status;
      auto results = topic_locked(tc.stage->results_topic, results_status);
      if (!results) {
        topics.erase(name);
        status = grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                              "topic '" + name + "': its stage's results topic '" +
                                  tc.stage->results_topic +
                                  "' cannot be made: " + results_status.error_message());
        return nullptr;
      }
      t->stage = std::make_shared<relay::Stage>(
          name, *tc.stage, config.drop_threshold, config.slowdown_threshold,
          // (weak: two stages may publish into each other's topics; the map owns topics)
          [weak = std::weak_ptr<Topic>(results)](RelayMessage&& m) {
            const auto r = weak.lock();
            return r && r->broadcast.try_publish(std::move(m)).status == SendStatus::ok;
          },
          registry);
    }
    register_metrics(t);
    return t;
  }

  // Times out frames the stages' workers hold too long; every 100 ms on the I/O thread.
  void poll_stages() {
    std::vector<std::shared_ptr<relay::Stage>> stages;
    {
      std::lock_guard lock(mu);
      for (const auto& [name, t] : topics) {
        if (t->stage) stages.push_back(t->stage);
      }
    }
    for (const auto& st : stages) st->poll();
    io.at(Clock::now() + std::chrono::milliseconds(100), [this] { poll_stages(); });
  }

  // The calls of sluice.v1.Relay (grpc_service.cpp), except Stats, answered here.
  grpc::ServerWriteReactor<v1::SubscribeEvent>* Subscribe(grpc::CallbackServerContext* ctx,
                                                          const v1::SubscribeRequest* req) override;
  grpc::ServerBidiReactor<v1::PublishRequest, v1::PublishEvent>* Publish(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerBidiReactor<v1::WorkRequest, v1::WorkEvent>* Work(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx, const v1::StatsRequest* /*req*/,
                                  v1::StatsReply* reply) override {
    reply->set_json(stats_json());
    auto* r = ctx->DefaultReactor();
    r->Finish(grpc::Status::OK);
    return r;
  }

  // Series read from the topic's own stats at scrape time.
  void register_metrics(const std::shared_ptr<Topic>& t) {
    const metrics::Labels labels{{"topic", t->name}};
    std::weak_ptr<Topic> weak = t;
    const auto stat = [weak](auto pick) {
      return [weak, pick]() -> double {
        const auto topic = weak.lock();
        return topic ? pick(topic->broadcast.stats()) : 0.0;
      };
    };
    registry.counter_fn("sluice_topic_published_total", "Items published to the topic", labels,
                        stat([](const BroadcastStats& s) { return double(s.published); }));
    registry.counter_fn("sluice_topic_publish_timeouts_total",
                        "Publishes that gave up after max_wait (RESOURCE_EXHAUSTED)", labels,
                        stat([](const BroadcastStats& s) { return double(s.timeouts); }));
    registry.gauge_fn("sluice_topic_subscribers", "Current subscribers", labels, [weak] {
      const auto topic = weak.lock();
      return topic ? double(topic->broadcast.subscriber_count()) : 0.0;
    });
    registry.gauge_fn("sluice_topic_queue_bytes",
                      "Bytes the furthest-behind subscriber has outstanding", labels, [weak] {
                        const auto topic = weak.lock();
                        return topic ? double(topic->broadcast.queue_bytes()) : 0.0;
                      });
    registry.counter_fn(
        "sluice_topic_dropped_total", "Items lost by current subscribers, by reason",
        {{"topic", t->name}, {"reason", "slow_consumer"}}, stat([](const BroadcastStats& s) {
          std::uint64_t lost = 0;
          for (const auto& sub : s.subscribers) lost += sub.lost[DropReason::slow_consumer];
          return double(lost);
        }));
  }

  void http(const std::string& target, unsigned& status, std::string& type,
            std::string& body) const {
    if (target == "/metrics") {
      type = "text/plain; version=0.0.4; charset=utf-8";
      body = registry.prometheus_text();
    } else if (target == "/healthz") {
      body = "ok\n";
    } else if (target == "/v1/stats") {
      type = "application/json";
      body = stats_json();
    } else {
      status = 404;
      body = "not found: " + target.substr(0, 200) + " (try /metrics, /healthz, /v1/stats)\n";
    }
  }

  // A WebSocket upgrade on the HTTP port (ws_service.cpp, with the sessions).
  bool upgrade(boost::asio::ip::tcp::socket& socket, HttpServer::Request& request, unsigned& status,
               std::string& body);

  std::string stats_json() const {
    nlohmann::json j;
    j["topics"] = nlohmann::json::array();
    std::lock_guard lock(mu);
    for (const auto& [name, t] : topics) {
      const auto s = t->broadcast.stats();
      nlohmann::json tj;
      tj["name"] = name;
      tj["mode"] = to_string(t->config.mode);
      tj["published"] = s.published;
      tj["max_queue_bytes"] = t->config.max_queue_bytes;
      std::uint64_t worst_bytes = 0;
      tj["subscribers"] = nlohmann::json::array();
      for (const auto& sub : s.subscribers) {
        worst_bytes = std::max(worst_bytes, sub.lag_bytes);
        tj["subscribers"].push_back({{"name", sub.name},
                                     {"received", sub.received},
                                     {"lost", sub.lost.total()},
                                     {"lag", sub.lag},
                                     {"lag_bytes", sub.lag_bytes}});
      }
      tj["queue_bytes"] = worst_bytes;
      tj["timeouts"] = s.timeouts;
      if (t->stage) tj["stage"] = stage_json(*t->stage);
      j["topics"].push_back(std::move(tj));
    }
    return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
  }

  static nlohmann::json stage_json(const relay::Stage& st) {
    const auto g = st.gate_stats();
    const auto d = st.dispatcher_stats();
    nlohmann::json j;
    j["results_topic"] = st.config().results_topic;
    j["gate"] = {{"state", std::string(to_string(g.state))},
                 {"drop_rate", g.drop_rate},
                 {"offered", g.offered},
                 {"admitted", g.admitted},
                 {"done", g.done},
                 {"in_flight", g.in_flight},
                 {"smoothed_processing_ms",
                  std::chrono::duration<double, std::milli>(g.smoothed_processing).count()},
                 {"slow_downs", g.slow_downs},
                 {"resumes", g.resumes}};
    nlohmann::json dropped = nlohmann::json::object();
    for (const DropReason r : kAllDropReasons) {
      if (const auto n = g.dropped[r] + d.dropped[r] + d.failed_by_reason[r]; n > 0) {
        dropped[std::string(to_string(r))] = n;
      }
    }
    j["dropped"] = dropped;
    j["results"] = st.results();
    j["accepted"] = d.accepted;
    j["completed"] = d.completed;
    j["rerouted"] = d.rerouted;
    j["queued"] = d.queued;
    j["in_flight"] = d.in_flight;
    j["workers"] = nlohmann::json::array();
    for (const auto& w : d.workers) {
      j["workers"].push_back(
          {{"id", w.id},
           {"name", w.name},
           {"health", std::string(to_string(w.health))},
           {"in_flight", w.in_flight},
           {"max_concurrent", w.max_concurrent},
           {"queued", w.queued},
           {"queue_items", w.queue_items},
           {"completed", w.completed},
           {"errors", w.errors},
           {"timeouts", w.timeouts},
           {"smoothed_latency_ms",
            std::chrono::duration<double, std::milli>(w.smoothed_latency).count()}});
    }
    return j;
  }

  // A slot for a new Publish or Subscribe call, or an empty one and RESOURCE_EXHAUSTED.
  SessionSlot session(grpc::Status& status) {
    SessionSlot slot(sessions, config.max_sessions);
    if (!slot) {
      sessions_refused.inc();
      status = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            "too many sessions: max_sessions (STREAM_MAX_SESSIONS / "
                            "--max-sessions) = " +
                                std::to_string(config.max_sessions) +
                                " gRPC and WebSocket sessions are already open");
    }
    return slot;
  }

  // Joins `t` as `name` (at most 128 bytes; empty: `fallback`) with `depth` (0: the topic's
  // default); the broadcast's own check refuses a depth above its capacity.
  static std::optional<Subscription<RelayMessage>> subscribe(Topic& t, const std::string& name,
                                                             const char* fallback,
                                                             std::size_t depth,
                                                             grpc::Status& status) {
    try {
      return t.broadcast.subscribe(name.empty() ? fallback : name.substr(0, 128), depth);
    } catch (const std::invalid_argument& e) {
      status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e.what());
      return std::nullopt;
    }
  }

  const RelayConfig config;
  metrics::Registry registry;
  std::unique_ptr<HttpServer> http_server;
  mutable std::mutex mu;
  std::map<std::string, std::shared_ptr<Topic>> topics;  // guarded by mu
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  bool stopped = false;
  std::atomic<std::size_t> sessions{0};
  std::atomic<std::uint64_t> next_session_id{1};
  metrics::Counter& sessions_refused = registry.counter(
      "sluice_sessions_refused_total", "Calls refused because max_sessions were open");
  SlowConsumerDetector viewers{[this] {
    SlowConsumerConfig c;
    c.consecutive_timeouts = config.max_send_timeouts;
    c.action = SlowAction::drop;  // a late viewer stays (real-time depth drops for it)
    c.stall_action = SlowAction::disconnect;
    return c;
  }()};
  // Producers' large frames are read into recycled memory (see relay/frame_buffer.hpp).
  relay::FramePool frames;
  // The viewers' share of server.threads: the loops beyond `io` (none with one thread).
  std::vector<std::unique_ptr<IoThread>> more_io = [this] {
    unsigned n = config.threads != 0 ? config.threads : std::thread::hardware_concurrency();
    std::vector<std::unique_ptr<IoThread>> v;
    for (unsigned i = 1; i < n; ++i)
      v.push_back(std::make_unique<IoThread>("sluice-io-" + std::to_string(i)));
    return v;
  }();
  IoThread io{"sluice-io"};  // last: see ~Impl

  // The loop a new viewer joins: the one serving the fewest (the loops beyond `io` first: it
  // also reads the publishers).
  IoThread& viewer_loop() {
    IoThread* best = &io;
    for (auto& l : more_io) {
      if (l->viewers.load(std::memory_order_relaxed) <=
          best->viewers.load(std::memory_order_relaxed))
        best = l.get();
    }
    return *best;
  }
  std::vector<IoThread*> loops() {
    std::vector<IoThread*> v{&io};
    for (auto& l : more_io) v.push_back(l.get());
    return v;
  }
  // Stops every loop (idempotent): the WebSocket sessions stop where they are.
  void stop_io() {
    for (auto& l : more_io) l->stop();
    io.stop();
  }
};

}  // namespace sluice

// The relay's gRPC service (callback API): Publish, Subscribe, Stats over topics; and its HTTP
// endpoint (Boost.Beast): /metrics, /healthz, /v1/stats.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <thread>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <utility>

#include "sluice/broadcast.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay_server.hpp"
#include "sluice/v1/relay.grpc.pb.h"

namespace sluice {

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = ::sluice::v1;

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
  std::string name;
  TopicConfig config;
  Broadcast<RelayMessage> broadcast;
};

// One Asio thread for the relay's own I/O: the HTTP endpoint and publish deadlines.
class IoThread {
 public:
  IoThread() : work_(boost::asio::make_work_guard(io_)), thread_([this] { io_.run(); }) {}
  IoThread(const IoThread&) = delete;
  IoThread& operator=(const IoThread&) = delete;
  IoThread(IoThread&&) = delete;
  IoThread& operator=(IoThread&&) = delete;
  ~IoThread() { stop(); }

  /// Stops the thread (idempotent); pending timers and connections are dropped.
  void stop() {
    work_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }
  boost::asio::io_context& context() { return io_; }

  /// Runs `fn` on the I/O thread soon (never inside the caller's stack).
  void post(std::function<void()> fn) { boost::asio::post(io_, std::move(fn)); }

  /// Runs `fn` on the I/O thread at `when`.
  void at(Clock::time_point when, std::function<void()> fn) {
    auto timer = std::make_shared<boost::asio::steady_timer>(io_, when);
    timer->async_wait([timer, fn = std::move(fn)](const boost::system::error_code& ec) {
      if (!ec) fn();
    });
  }

 private:
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::thread thread_;
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

// A small HTTP/1.1 server on the relay's I/O thread: one request per connection.
class HttpServer {
 public:
  using Handler = std::function<void(const std::string& target, unsigned& status,
                                     std::string& content_type, std::string& body)>;
  HttpServer(boost::asio::io_context& io, const std::string& host, std::uint16_t port,
             Handler handler)
      : acceptor_(io), handler_(std::move(handler)) {
    namespace ip = boost::asio::ip;
    boost::system::error_code ec;
    const ip::tcp::endpoint endpoint(ip::make_address(host, ec), port);
    if (ec) throw std::runtime_error("relay: invalid host " + host + " (server.host)");
    acceptor_.open(endpoint.protocol());
    acceptor_.set_option(ip::tcp::acceptor::reuse_address(true));
    acceptor_.bind(endpoint, ec);
    if (ec) {
      throw std::runtime_error("relay: cannot listen on " + host + ":" + std::to_string(port) +
                               " for HTTP (server.http_port / SLUICE_HTTP_PORT): " + ec.message());
    }
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    accept();
  }
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  HttpServer(HttpServer&&) = delete;
  HttpServer& operator=(HttpServer&&) = delete;
  ~HttpServer() = default;  // after the I/O thread has stopped
  std::uint16_t port() const { return port_; }

 private:
  struct Session {
    explicit Session(boost::asio::ip::tcp::socket s) : socket(std::move(s)) {}
    boost::asio::ip::tcp::socket socket;
    boost::beast::flat_buffer buffer;
    boost::beast::http::request_parser<boost::beast::http::string_body> parser;
    boost::beast::http::response<boost::beast::http::string_body> response;
  };

  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, boost::asio::ip::tcp::socket s) {
      if (!ec) serve(std::make_shared<Session>(std::move(s)));
      if (acceptor_.is_open()) accept();
    });
  }

  void serve(const std::shared_ptr<Session>& session) {
    namespace http = boost::beast::http;
    session->parser.body_limit(8 * 1024);  // requests here are small
    http::async_read(
        session->socket, session->buffer, session->parser,
        [this, session](boost::beast::error_code ec, std::size_t /*bytes*/) {
          if (ec) return;  // the client went away or sent garbage: nothing to answer
          const auto& request = session->parser.get();
          unsigned status = 200;
          std::string type = "text/plain; charset=utf-8";
          std::string body;
          if (request.method() != http::verb::get) {
            status = 405;
            body = "only GET is served here\n";
          } else {
            handler_(std::string(request.target()), status, type, body);
          }
          auto& res = session->response;
          res.version(request.version());
          res.result(status);
          res.set(http::field::content_type, type);
          res.set(http::field::connection, "close");
          res.body() = std::move(body);
          res.prepare_payload();
          http::async_write(session->socket, res, [session](boost::beast::error_code, std::size_t) {
            boost::system::error_code ignored;
            session->socket.shutdown(boost::asio::ip::tcp::socket::shutdown_both, ignored);
          });
        });
  }

  boost::asio::ip::tcp::acceptor acceptor_;
  Handler handler_;
  std::uint16_t port_ = 0;
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

}  // namespace

struct RelayServer::Impl final : v1::Relay::CallbackService {
  explicit Impl(RelayConfig c) : config(std::move(c)) {
    registry.gauge_fn("sluice_sessions", "Open Publish and Subscribe calls", {},
                      [this] { return double(sessions.load(std::memory_order_relaxed)); });
    registry.gauge_fn("sluice_sessions_max", "max_sessions (STREAM_MAX_SESSIONS)", {},
                      [this] { return double(config.max_sessions); });
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  Impl(Impl&&) = delete;
  Impl& operator=(Impl&&) = delete;
  ~Impl() override { io.stop(); }  // before http_server's acceptor is destroyed

  // The topic `name`, created with the defaults if allowed; nullptr and a status otherwise.
  std::shared_ptr<Topic> topic(const std::string& name, grpc::Status& status) {
    if (const std::string problem = topic_name_problem(name); !problem.empty()) {
      status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "topic \"" + name.substr(0, 200) + "\": " + problem);
      return nullptr;
    }
    std::lock_guard lock(mu);
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
    topics.emplace(name, t);
    register_metrics(t);
    return t;
  }

  grpc::ServerWriteReactor<v1::SubscribeEvent>* Subscribe(grpc::CallbackServerContext* ctx,
                                                          const v1::SubscribeRequest* req) override;
  grpc::ServerBidiReactor<v1::PublishRequest, v1::PublishEvent>* Publish(
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
    registry.gauge_fn("sluice_topic_subscribers", "Current subscribers", labels,
                      stat([](const BroadcastStats& s) { return double(s.subscribers.size()); }));
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

  void http(const std::string& target, unsigned& status, std::string& type, std::string& body) {
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
      j["topics"].push_back(std::move(tj));
    }
    return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
  }

  // A slot for a new Publish or Subscribe call, or an empty one and RESOURCE_EXHAUSTED.
  SessionSlot session(grpc::Status& status) {
    SessionSlot slot(sessions, config.max_sessions);
    if (!slot) {
      sessions_refused.inc();
      status = grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                            "too many sessions: " + std::to_string(config.max_sessions) +
                                " Publish/Subscribe calls are open, max_sessions is " +
                                std::to_string(config.max_sessions) +
                                " (STREAM_MAX_SESSIONS / --max-sessions)");
    }
    return slot;
  }

  const RelayConfig config;
  IoThread io;  // stopped before http_server goes (see shutdown and ~Impl)
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
};

namespace {

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

  // Per-subscriber series (topic, subscriber, session), read from sub_ at scrape time and
  // removed before sub_ goes (the registry serializes removal with scrapes).
  void register_metrics();

  RelayServer::Impl& relay_;
  SessionSlot slot_;
  std::shared_ptr<Topic> topic_;
  Subscription<RelayMessage> sub_;
  metrics::Labels labels_;
  v1::SubscribeEvent event_;                      // guarded by mu_ while a write is in flight
  std::optional<RecvResult<RelayMessage>> held_;  // a gap or the end, due after the batch
  bool writing_ = false;
};

// ---- Publish: the next read starts only once the current item is in the topic ----
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
    if (batch) {
      for (auto& item : *items) {
        if (!admit(item)) return;
      }
    } else if (!admit(*req_.mutable_item())) {
      return;
    }
    lock.unlock();
    attempt();
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
          timer_set_ = false;  // the next item that has to wait gets its own deadline
          continue;
        }
        if (r.status != SendStatus::would_block) {
          finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "topic '" + topic_->name + "' is closed (the relay is stopping)"));
          return;
        }
        if (!slowed_) slowed_ = true;
        const auto now = Clock::now();
        if (!timer_set_) {  // max_wait counts from when this item first found no room
          timer_set_ = true;
          deadline_ = now + topic_->config.max_wait;
          relay_.io.at(deadline_, later(&PublishReactor::attempt));
        } else if (now >= deadline_) {
          finish(exhausted());
          return;
        }
        arm = true;
        break;
      }
      if (!arm) {
        if (slowed_ && topic_->broadcast.queue_bytes() <= topic_->config.max_queue_bytes / 2)
          slowed_ = false;  // hysteresis: resume at half the budget
        StartRead(&req_);
      }
      write_next();
    }
    if (arm) {
      // Posted, not run inline: the hook may fire at once (room appeared meanwhile) or from a
      // consumer's stack, and attempt() must not re-enter itself or hold up the consumer.
      topic_->broadcast.on_writable(
          [io = &relay_.io, again = later(&PublishReactor::attempt)] { io->post(again); }, bytes);
    }
  }

  grpc::Status exhausted() const {
    const auto s = topic_->broadcast.stats();
    std::string slowest = "(none)";
    std::uint64_t bytes = 0;
    for (const auto& sub : s.subscribers) {
      if (sub.lag_bytes >= bytes) {
        bytes = sub.lag_bytes;
        slowest = sub.name;
      }
    }
    return {grpc::StatusCode::RESOURCE_EXHAUSTED,
            "topic '" + topic_->name + "' is full: waited " +
                std::to_string(topic_->config.max_wait.count()) + " ms for room; subscriber '" +
                slowest + "' holds " + std::to_string(bytes) + " bytes of max_queue_bytes " +
                std::to_string(topic_->config.max_queue_bytes) +
                ". Speed up the consumer, or raise max_queue_bytes (SLUICE_MAX_QUEUE_BYTES) or "
                "max_wait_ms (SLUICE_MAX_WAIT_MS)"};
  }

  // One write at a time; what waits is coalesced: the flow state the producer has not been
  // told yet, then the newest ack. Caller holds mu_.
  void write_next() {
    if (writing_ || finished_) return;
    out_.Clear();
    if (slowed_ != told_slowed_) {
      told_slowed_ = slowed_;
      const std::uint64_t queued = topic_->broadcast.queue_bytes();
      if (slowed_) {
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
    if (reads_done_ && !writing_ && !ack_ && slowed_ == told_slowed_ && pending_.empty())
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
  Clock::time_point deadline_;
  bool timer_set_ = false;
  std::optional<std::uint64_t> ack_;  // the newest ack not yet written
  bool slowed_ = false;               // the topic is holding this call back
  bool told_slowed_ = false;          // what the last flow event said
  v1::PublishEvent out_;              // the write in flight
  bool writing_ = false;
  bool reads_done_ = false;
};

}  // namespace

SubscribeReactor::SubscribeReactor(RelayServer::Impl& relay, SessionSlot slot,
                                   std::shared_ptr<Topic> topic, Subscription<RelayMessage> sub)
    : relay_(relay), slot_(std::move(slot)), topic_(std::move(topic)), sub_(std::move(sub)) {
  register_metrics();
  StartSendInitialMetadata();  // tells the client the subscription exists (Subscriber waits)
  pump();
}

SubscribeReactor::~SubscribeReactor() {
  for (const char* name : {"sluice_subscriber_received_total", "sluice_subscriber_lag_items",
                           "sluice_subscriber_lag_bytes"})
    relay_.registry.remove(name, labels_);
  auto lost = labels_;
  lost.emplace_back("reason", std::string(to_string(DropReason::slow_consumer)));
  relay_.registry.remove("sluice_subscriber_dropped_total", lost);
}

void SubscribeReactor::register_metrics() {
  labels_ = {{"topic", topic_->name},
             {"subscriber", sub_.name()},
             {"session", std::to_string(relay_.next_session_id.fetch_add(1))}};
  const Subscription<RelayMessage>* sub = &sub_;
  auto& r = relay_.registry;
  r.counter_fn("sluice_subscriber_received_total", "Items this subscriber received", labels_,
               [sub] { return double(sub->stats().received); });
  auto lost = labels_;
  lost.emplace_back("reason", std::string(to_string(DropReason::slow_consumer)));
  r.counter_fn("sluice_subscriber_dropped_total", "Items this subscriber lost, by reason", lost,
               [sub] { return double(sub->stats().lost[DropReason::slow_consumer]); });
  r.gauge_fn("sluice_subscriber_lag_items", "Items published and not yet received", labels_,
             [sub] { return double(sub->lag()); });
  r.gauge_fn("sluice_subscriber_lag_bytes",
             "Bytes published and not yet received (lossless topics)", labels_,
             [sub] { return double(sub->stats().lag_bytes); });
}

grpc::ServerWriteReactor<v1::SubscribeEvent>* RelayServer::Impl::Subscribe(
    grpc::CallbackServerContext* /*ctx*/, const v1::SubscribeRequest* req) {
  using Failed = Refused<grpc::ServerWriteReactor<v1::SubscribeEvent>>;
  grpc::Status status;
  SessionSlot slot = session(status);
  if (!slot) return new Failed(status);
  auto t = topic(req->topic(), status);
  if (!t) return new Failed(status);
  if (req->depth() > t->broadcast.config().capacity) {
    return new Failed(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                   "depth " + std::to_string(req->depth()) + " is above topic '" +
                                       t->name + "''s capacity of " +
                                       std::to_string(t->broadcast.config().capacity) +
                                       " (0 takes the topic's default, " +
                                       std::to_string(t->broadcast.config().default_depth) + ")"));
  }
  const std::string name = req->name().empty() ? "subscriber" : req->name().substr(0, 128);
  return new SubscribeReactor(*this, std::move(slot), t,
                              t->broadcast.subscribe(name, req->depth()));
}

grpc::ServerBidiReactor<v1::PublishRequest, v1::PublishEvent>* RelayServer::Impl::Publish(
    grpc::CallbackServerContext* ctx) {
  grpc::Status status;
  SessionSlot slot = session(status);
  if (!slot)
    return new Refused<grpc::ServerBidiReactor<v1::PublishRequest, v1::PublishEvent>>(status);
  return new PublishReactor(*this, ctx, std::move(slot));
}

RelayServer::RelayServer(RelayConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}

RelayServer::~RelayServer() {
  shutdown();
}

void RelayServer::start() {
  grpc::ServerBuilder builder;
  const std::string address = impl_->config.host + ":" + std::to_string(impl_->config.grpc_port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &impl_->port);
  builder.RegisterService(impl_.get());
  // Our frame limit is enforced with a clear message; leave gRPC's own a little above it.
  builder.SetMaxReceiveMessageSize(static_cast<int>(
      std::min<std::uint64_t>(impl_->config.max_frame_bytes + (1 << 20), INT32_MAX)));
  impl_->server = builder.BuildAndStart();
  if (!impl_->server || impl_->port == 0) {
    throw std::runtime_error("relay: cannot listen on " + address +
                             " (server.grpc_port / SLUICE_GRPC_PORT)");
  }
  Impl* impl = impl_.get();
  impl_->http_server = std::make_unique<HttpServer>(
      impl_->io.context(), impl_->config.host, impl_->config.http_port,
      [impl](const std::string& target, unsigned& status, std::string& type, std::string& body) {
        impl->http(target, status, type, body);
      });
}

void RelayServer::shutdown() {
  if (!impl_ || !impl_->server || impl_->stopped) return;
  impl_->stopped = true;
  {
    std::lock_guard lock(impl_->mu);
    for (auto& [name, t] : impl_->topics) t->broadcast.close();
  }
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  impl_->server->Wait();
  impl_->io.stop();
  impl_->http_server.reset();
}

std::uint16_t RelayServer::grpc_port() const {
  return static_cast<std::uint16_t>(impl_->port);
}

std::uint16_t RelayServer::http_port() const {
  return impl_->http_server ? impl_->http_server->port() : 0;
}

std::string RelayServer::stats_json() const {
  return impl_->stats_json();
}

}  // namespace sluice

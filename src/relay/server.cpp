// The relay's gRPC service (callback API): Publish, Subscribe, Stats over topics; and its HTTP
// endpoint (Boost.Beast): /metrics, /healthz, /v1/stats, and the WebSocket publishers,
// viewers and stage workers.
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <boost/asio/buffer.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it

#include "coalescing_socket.hpp"
#include "frame_buffer.hpp"
#include "sluice/broadcast.hpp"
#include "sluice/metrics.hpp"
#include "sluice/priority_channel.hpp"
#include "sluice/relay_server.hpp"
#include "sluice/slow_consumer.hpp"
#include "sluice/v1/relay.grpc.pb.h"
#include "sluice/ws_frame.hpp"
#include "stage.hpp"

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

// One event loop on one thread: the relay's own (the HTTP endpoint, WebSocket publishers and
// workers, publish deadlines, stage polls) and each of the more that share the viewers
// (server.threads).
class IoThread {
 public:
  explicit IoThread(std::string name)
      : name_(std::move(name)), work_(boost::asio::make_work_guard(io_)), thread_([this] {
          pthread_setname_np(pthread_self(), name_.c_str());  // (in top -H, perf, gdb)
          run();
        }) {}
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
  /// The thread's name (at most 15 bytes shown by the system).
  const std::string& name() const { return name_; }
  /// Socket flushes run at the end of each round of the loop (see run()); I/O thread only.
  relay::FlushQueue& flushes() { return flushes_; }
  /// Completions ready at once, run in bursts (see relay::ReadyQueue); I/O thread only.
  relay::ReadyQueue& ready() { return ready_; }

  /// WebSocket viewers served here (a viewer goes to the loop with the fewest).
  std::atomic<std::size_t> viewers{0};

  /// Runs `fn` on the I/O thread soon (never inside the caller's stack).
  void post(std::function<void()> fn) { boost::asio::post(io_, std::move(fn)); }

  /// Like post(), for wake-ups that come in bursts (a subscription became readable, a topic
  /// has room again). Called on a loop's thread, the post waits for the end of that loop's
  /// round and carries everything due here meanwhile: a publisher's read-ahead of many
  /// messages wakes each viewer loop once, not once per message (a wake-up of a sleeping loop
  /// is a system call and a context switch), as nats-server signals the clients a read fed
  /// once the read is processed. The other loops are woken before the caller's own loop runs
  /// what it put off (a viewer there may write 1 MiB meanwhile). From any other thread: post().
  void post_soon(std::function<void()> fn) {
    IoThread* current = current_;
    if (current == nullptr) {
      post(std::move(fn));
      return;
    }
    current->defer(*this, std::move(fn));
  }

  /// Runs `fn` on the I/O thread at `when`.
  void at(Clock::time_point when, std::function<void()> fn) {
    auto timer = std::make_shared<boost::asio::steady_timer>(io_, when);
    timer->async_wait([timer, fn = std::move(fn)](const boost::system::error_code& ec) {
      if (!ec) fn();
    });
  }

 private:
  // Rounds: wait for a handler, run what else is ready (at most kRound handlers, so that a
  // busy loop still flushes), then flush the connections written to meanwhile: a publisher's
  // read-ahead of many messages fans out in one write per viewer, as nats-server flushes its
  // clients after each read.
  void run() {
    current_ = this;
    constexpr int kRound = 256;
    while (!io_.stopped()) {
      if (io_.run_one() == 0) continue;
      for (int i = 0; i < kRound && io_.poll_one() != 0; ++i) {
      }
      run_deferred();  // (first: the loops woken work while this one writes)
      flushes_.run();
      run_deferred();  // (anything the flushes' completions put off: none may wait for a
                       // next round that an idle loop would not have)
    }
  }

  // What post_soon() put off, for `target`: one post at the end of the round. I/O thread only.
  void defer(IoThread& target, std::function<void()> fn) {
    for (auto& [loop, fns] : deferred_) {
      if (loop == &target) {
        fns.push_back(std::move(fn));
        return;
      }
    }
    deferred_.emplace_back(&target, std::vector<std::function<void()>>{});
    deferred_.back().second.push_back(std::move(fn));
  }
  void run_deferred() {
    for (const bool own : {false, true}) {  // the other loops first
      for (auto& [loop, fns] : deferred_) {
        if (fns.empty() || (loop == this) != own) continue;
        loop->post([fns = std::move(fns)] {
          for (const auto& fn : fns) fn();
        });
        fns.clear();  // (moved from: empty, and valid again)
      }
    }
  }

  static inline thread_local IoThread* current_ = nullptr;  // the loop this thread runs
  // Wake-ups put off to the end of the round, per loop (few: server.threads at most).
  std::vector<std::pair<IoThread*, std::vector<std::function<void()>>>> deferred_;

  const std::string name_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  relay::FlushQueue flushes_;
  relay::ReadyQueue ready_{io_.get_executor()};
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
  using Request = boost::beast::http::request<boost::beast::http::string_body>;
  /// A WebSocket upgrade request: takes the socket (true), or answers with status and body.
  using Upgrade = std::function<bool(boost::asio::ip::tcp::socket& socket, Request& request,
                                     unsigned& status, std::string& body)>;
  /// A client has `timeout` to send its request and read the answer (or upgrade).
  HttpServer(boost::asio::io_context& io, const std::string& host, std::uint16_t port,
             std::chrono::milliseconds timeout, Handler handler, Upgrade upgrade)
      : acceptor_(io),
        timeout_(timeout),
        handler_(std::move(handler)),
        upgrade_(std::move(upgrade)) {
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
    explicit Session(boost::asio::ip::tcp::socket s)
        : socket(std::move(s)), deadline(socket.get_executor()) {}
    boost::asio::ip::tcp::socket socket;
    boost::asio::steady_timer deadline;  // closes a client that takes too long
    boost::beast::flat_buffer buffer;
    boost::beast::http::request_parser<boost::beast::http::string_body> parser;
    Request request;
    boost::beast::http::response<boost::beast::http::string_body> response;
  };

  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, boost::asio::ip::tcp::socket s) {
      if (!ec) {
        // Real-time frames and small control events go out now, not after Nagle's wait for
        // the peer's (delayed) acknowledgement: up to 40 ms per small message otherwise.
        boost::system::error_code opt;
        s.set_option(boost::asio::ip::tcp::no_delay(true), opt);
        serve(std::make_shared<Session>(std::move(s)));
      }
      if (acceptor_.is_open()) accept();
    });
  }

  void serve(const std::shared_ptr<Session>& session) {
    namespace http = boost::beast::http;
    session->parser.body_limit(std::uint64_t{8} * 1024);  // requests here are small
    session->deadline.expires_after(timeout_);
    session->deadline.async_wait(
        [w = std::weak_ptr<Session>(session)](boost::beast::error_code ec) {
          if (auto s = w.lock(); s && !ec) {
            boost::system::error_code ignored;
            s->socket.close(ignored);  // ends the read or write in flight
          }
        });
    http::async_read(
        session->socket, session->buffer, session->parser,
        [this, session](boost::beast::error_code ec, std::size_t /*bytes*/) {
          if (ec) return;  // the client went away or sent garbage: nothing to answer
          session->request = session->parser.release();
          auto& request = session->request;
          unsigned status = 200;
          std::string type = "text/plain; charset=utf-8";
          std::string body;
          if (boost::beast::websocket::is_upgrade(request)) {
            session->deadline.cancel();  // (the WebSocket has its own)
            if (upgrade_(session->socket, request, status, body)) return;  // a WebSocket now
          } else if (request.method() != http::verb::get) {
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
            session->deadline.cancel();
            boost::system::error_code ignored;
            session->socket.shutdown(boost::asio::ip::tcp::socket::shutdown_both, ignored);
          });
        });
  }

  boost::asio::ip::tcp::acceptor acceptor_;
  std::chrono::milliseconds timeout_;
  Handler handler_;
  Upgrade upgrade_;
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

  // A WebSocket upgrade on the HTTP port (defined below with the sessions).
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

namespace {

// A subscriber's series in /metrics (labels topic, subscriber, session), read from its
// Subscription at scrape time and removed when this goes (the registry serializes removal with
// scrapes). The subscription must outlive this, or be inactive by the time it is read.
class SubscriberSeries {
 public:
  SubscriberSeries(metrics::Registry& registry, const std::string& topic,
                   const Subscription<RelayMessage>* sub, std::uint64_t session)
      : registry_(registry),
        labels_{
            {"topic", topic}, {"subscriber", sub->name()}, {"session", std::to_string(session)}},
        lost_labels_(with_reason(labels_)) {
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
constexpr std::size_t kMaxControlQueued = 64;  // unread control events before we give up
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

// ---- WebSocket (on the HTTP port): /v1/ws/publish/{topic}, /v1/ws/subscribe/{topic} ----
//
// Binary frames: a 16-byte header (frame_index u64, timestamp_ns i64, little-endian) and the
// payload. Text frames: JSON control events. Everything runs on the relay's I/O thread; hooks
// from other threads post to it. See docs/protocol.md.

namespace websocket = boost::beast::websocket;
using WsStream = websocket::stream<relay::CoalescingSocket>;
constexpr std::size_t kMaxViewerMessage =
    std::size_t{64} * 1024;  // viewers send no frames: refused

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

class WsPublisher;
class WsWorker;
class WsSubscriber;

std::string json_text(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// One WebSocket message on its way out: a JSON event (text), or a frame (binary: the 16-byte
// header, then the payload Buffer shared with every other viewer).
struct Outgoing {
  std::string text;
  std::optional<RelayMessage> frame;
  std::size_t size_bytes() const {
    return frame ? ws::kFrameHeaderBytes + frame->payload.size() : text.size();
  }
};

// A connection's one outgoing queue. Control events (errors, slow_down, resume) and critical
// ones (gap notices; drop notices) overtake frames and are never dropped: when 64 of a class
// are unread the peer is not reading, and the session is closed (1008) instead. Frames (bulk)
// come from the viewer's subscription one at a time: its cursor stays the real queue.
PriorityChannelConfig outbox_config(const std::string& name) {
  PriorityChannelConfig c;
  c.name = name;
  c[Priority::control].max_items = kMaxControlQueued;
  c[Priority::critical].max_items = kMaxControlQueued;
  c[Priority::important].max_items = 1;  // (unused)
  c[Priority::bulk].max_items = 1;
  c.max_items = 2 * kMaxControlQueued + 2;
  c.max_bytes = kUnlimitedBytes;  // bounded by the items: a frame is at most max_frame_bytes
  c.protected_full = PriorityChannelConfig::ProtectedFull::reject;
  return c;
}

// What every kind of WebSocket session shares: the stream, its slot, the outgoing queue (one
// write at a time), closing once. Everything here runs on the session's loop (`loop`, which
// `socket` belongs to): the relay's I/O thread for publishers and workers, one of the loops
// of server.threads for a viewer.
template <class Derived>
class WsSession : public std::enable_shared_from_this<Derived> {
 public:
  WsSession(RelayServer::Impl& relay, IoThread& loop, SessionSlot slot,
            std::shared_ptr<Topic> topic, boost::asio::ip::tcp::socket socket,
            const std::string& name)
      : relay_(relay),
        loop_(loop),
        slot_(std::move(slot)),
        topic_(std::move(topic)),
        ws_(std::move(socket), socket_options(loop)),
        timer_(ws_.get_executor()),
        out_(outbox_config(name)) {}

  void start(HttpServer::Request request) {
    websocket::stream_base::timeout t{};
    t.handshake_timeout = relay_.config.handshake_timeout;
    t.idle_timeout = relay_.config.idle_timeout;  // pings at half of it keep a quiet peer alive
    t.keep_alive_pings = true;
    ws_.set_option(t);
    // One WebSocket frame per message, written in one gather (header + shared payload). Beast
    // would otherwise cut a message into frames of its 4 KiB write buffer: 256 writes for a
    // 1 MiB frame, each a system call.
    ws_.auto_fragment(false);
    // Publishers' frames are measured as they arrive (WsPublisher::on_read_some: a 1009 with
    // a reason); a viewer sends nothing but control frames, so Beast's own limit is enough.
    // A worker's results are frames like a publisher's.
    if constexpr (std::is_same_v<Derived, WsWorker>) {
      ws_.read_message_max(relay_.config.max_frame_bytes + ws::kFrameHeaderBytes);
    } else {
      ws_.read_message_max(std::is_same_v<Derived, WsPublisher> ? 0 : kMaxViewerMessage);
    }
    request_ = std::move(request);
    ws_.async_accept(request_, [self = this->shared_from_this()](boost::beast::error_code ec) {
      if (!ec) self->opened();
    });
  }

  // Producers (publishers, workers' results) read ahead 64 KiB per system call; viewers read
  // nothing but control frames. Every session's small writes are coalesced.
  static relay::CoalescingSocket::Options socket_options(IoThread& loop) {
    relay::CoalescingSocket::Options o;
    o.flush_queue = &loop.flushes();
    o.ready_queue = &loop.ready();
    o.read_ahead = std::is_same_v<Derived, WsSubscriber> ? 0 : 64 * 1024;
    return o;
  }

  // Writes the queued messages, the most important first, unless a write is in flight: each
  // into the socket's batch while it fits there (flushed at the end of the I/O thread's round,
  // one system call for many messages), then one asynchronous write.
  void write_next() {
    if (writing_ || closing_) return;
    for (;;) {
      self().refill();
      if (closing_) return;
      auto r = out_.try_recv();
      if (r.status != RecvStatus::ok) {
        if (ending_) {  // everything before the end went out
          close(ending_->first, ending_->second);
          return;
        }
        self().idle();
        return;
      }
      // Beast is answering the peer's close (the read ends next): nothing more may follow it.
      if (!ws_.is_open()) return;
      if (!write(std::move(r->item))) return;
    }
  }

 protected:
  Derived& self() { return static_cast<Derived&>(*this); }

  // Queues a message without writing it; false (and the session closing) if its class is full.
  bool enqueue(Priority p, Outgoing m) {
    if (closing_) return false;
    if (out_.try_send(p, std::move(m)).status == SendStatus::ok) return true;
    close(websocket::close_code::policy_error,
          std::to_string(kMaxControlQueued) + " " + std::string(to_string(p)) +
              " events unread: the peer is not reading its socket");
    return false;
  }
  // Queues a JSON event (control by default) and writes it as soon as it is its turn.
  void send_event(const nlohmann::json& event, Priority p = Priority::control) {
    if (enqueue(p, Outgoing{json_text(event), std::nullopt})) write_next();
  }
  // Closes once everything queued so far has been written (at write_next()'s next turn).
  void end_after_queued(websocket::close_code code, std::string reason) {
    ending_.emplace(code, std::move(reason));
  }
  // Closing, or due to close once the queue is written: nothing more is to be queued.
  bool ending() const { return closing_ || ending_.has_value(); }
  bool writing() const { return writing_; }  // a message is being written
  void close(websocket::close_code code, std::string_view reason) {
    if (closing_) return;
    closing_ = true;
    timer_.cancel();
    relay_.registry
        .counter("sluice_ws_closes_total", "WebSocket sessions the relay closed, by close code",
                 {{"code", std::to_string(static_cast<int>(code))}})
        .inc();
    // (Beast holds the close frame back until a write in flight is done.)
    ws_.async_close(
        websocket::close_reason(code, boost::beast::string_view(reason.data(), reason.size())),
        [self = this->shared_from_this()](boost::beast::error_code) {});
    // A peer that does not read lets neither the write in flight nor the close frame out:
    // drop the connection if the close has not completed within the handshake timeout.
    kill_.emplace(ws_.get_executor());
    kill_->expires_after(relay_.config.handshake_timeout);
    kill_->async_wait([w = this->weak_from_this()](boost::beast::error_code ec) {
      if (auto s = w.lock(); s && !ec) boost::beast::get_lowest_layer(s->ws_).close();
    });
  }
  // A callback for hooks on other threads: runs `method` on the session's loop if still alive
  // (from another loop, at the end of its round: IoThread::post_soon).
  std::function<void()> posted(void (Derived::*method)()) {
    return [w = this->weak_from_this(), io = &loop_, method] {
      io->post_soon([w, method] {
        if (auto s = w.lock()) (s.get()->*method)();
      });
    };
  }

  // What a derived session may add (defaults: nothing).
  void refill() {}                      // top up the queue (a viewer: from its subscription)
  void idle() {}                        // nothing to write: arm what will call write_next()
  void taken(const Outgoing& /*m*/) {}  // a message left the queue to be written
  void write_started(const Outgoing& /*m*/) {}  // an asynchronous write: e.g. time it
  bool write_done() { return true; }            // false: stop (the session is ending)

  RelayServer::Impl& relay_;
  IoThread& loop_;
  SessionSlot slot_;
  std::shared_ptr<Topic> topic_;
  WsStream ws_;
  boost::asio::steady_timer timer_;
  HttpServer::Request request_;
  PriorityChannel<Outgoing> out_;
  std::optional<boost::asio::steady_timer> kill_;  // after close(): see there
  bool closing_ = false;

 private:
  // Writes one message as one unframented WebSocket frame, built here rather than by Beast's
  // write operation (one per message, with a completion each): the socket layer keeps each
  // write's bytes together, so these frames and Beast's own control frames (pongs, pings, the
  // close) never interleave. True if it went into the batch; false if an asynchronous write
  // is now in flight (write_done() and write_next() follow its completion).
  bool write(Outgoing m) {
    self().taken(m);
    const bool binary = m.frame.has_value();
    std::size_t head = 0;
    std::uint64_t size = 0;
    if (binary) {
      const auto header = ws::encode({m.frame->sequence, m.frame->timestamp_ns});
      size = ws::kFrameHeaderBytes + m.frame->payload.size();
      head = ws_frame_header(true, size);
      std::memcpy(header_.data() + head, header.data(), header.size());
    } else {
      size = m.text.size();
      head = ws_frame_header(false, size);
    }
    const std::array<boost::asio::const_buffer, 2> parts{
        boost::asio::const_buffer(header_.data(), head + (binary ? ws::kFrameHeaderBytes : 0)),
        binary ? boost::asio::const_buffer(m.frame->payload.data(), m.frame->payload.size())
               : boost::asio::const_buffer(m.text.data(), m.text.size())};
    if (ws_.next_layer().try_append(parts)) return true;
    writing_ = true;
    current_ = std::move(m);  // (the buffers point into it, moved or not: the heap, or header_)
    const std::array<boost::asio::const_buffer, 2> held{
        boost::asio::const_buffer(header_.data(), head + (binary ? ws::kFrameHeaderBytes : 0)),
        binary ? boost::asio::const_buffer(current_.frame->payload.data(),
                                           current_.frame->payload.size())
               : boost::asio::const_buffer(current_.text.data(), current_.text.size())};
    self().write_started(current_);
    // (The layer's async_write_some writes all of it, as one unit; asio::async_write would
    // split it into 64 KiB calls, between which Beast's control frames could slip.)
    ws_.next_layer().async_write_some(
        held, [self = this->shared_from_this()](boost::beast::error_code ec, std::size_t) {
          self->writing_ = false;
          self->current_ = {};  // (a frame's Buffer is released here)
          if (ec || !self->self().write_done()) return;
          self->write_next();
        });
    return false;
  }

  // An unmasked (server) WebSocket frame header with FIN set for `size` payload bytes into
  // header_; its length.
  std::size_t ws_frame_header(bool binary, std::uint64_t size) {
    header_[0] = binary ? 0x82 : 0x81;
    if (size < 126) {
      header_[1] = static_cast<unsigned char>(size);
      return 2;
    }
    if (size <= 0xFFFF) {
      header_[1] = 126;
      header_[2] = static_cast<unsigned char>(size >> 8);
      header_[3] = static_cast<unsigned char>(size);
      return 4;
    }
    header_[1] = 127;
    for (int i = 0; i < 8; ++i) header_[2 + i] = static_cast<unsigned char>(size >> (56 - 8 * i));
    return 10;
  }

  Outgoing current_;  // being written (a frame's Buffer stays alive until then)
  // The WebSocket frame header (at most 10 bytes), then a frame's 16-byte header.
  std::array<unsigned char, 10 + ws::kFrameHeaderBytes> header_{};
  std::optional<std::pair<websocket::close_code, std::string>> ending_;
  bool writing_ = false;
};

// A producer: reads a frame, puts it into the topic, and only then reads the next one (a
// full lossless topic holds the socket back: TCP flow control reaches the producer). On a
// topic with a stage, each frame is also offered to the stage, whose drop notices and
// slow_down / resume signals come back on this socket.
class WsPublisher final : public WsSession<WsPublisher>, public relay::StageListener {
 public:
  WsPublisher(RelayServer::Impl& relay, SessionSlot slot, const std::shared_ptr<Topic>& topic,
              boost::asio::ip::tcp::socket socket)
      : WsSession(relay, relay.io, std::move(slot), topic, std::move(socket),
                  "ws-publisher/" + topic->name) {}
  void opened() { read(); }

  // (any thread) A drop notice: critical, so never dropped and never behind a frame.
  void stage_dropped(std::uint64_t frame_index, DropReason reason,
                     const std::string& detail) override {
    nlohmann::json event{{"frame_index", frame_index},
                         {"dropped", true},
                         {"reason", std::string(to_string(reason))}};
    if (!detail.empty()) event["detail"] = detail;
    post_event(std::move(event), Priority::critical);
  }
  void stage_signal(const GateSignal& signal) override {
    if (signal.kind == GateSignal::Kind::slow_down) {
      post_event(
          {{"warning", "slow_down"}, {"stage", topic_->name}, {"drop_rate", signal.drop_rate}},
          Priority::control);
    } else {
      post_event({{"resume", true}, {"stage", topic_->name}, {"drop_rate", signal.drop_rate}},
                 Priority::control);
    }
  }

 private:
  // Reads into memory the frame's Buffer then owns (relay::FrameBuffer: not zeroed, large
  // blocks recycled): the payload is never copied. Reads piecemeal so that a frame over the
  // limit is refused with 1009 and a reason as soon as its size is known (the header of its
  // first WebSocket frame), before its payload is read.
  void read() {
    if (closing_) return;
    in_.clear();
    read_some();
  }
  void read_some() {
    // (0: as much as the current WebSocket frame still holds, known once its header is read)
    ws_.async_read_some(in_, 0,
                        [self = shared_from_this()](boost::beast::error_code ec, std::size_t) {
                          self->on_read_some(ec);
                        });
  }
  void on_read_some(boost::beast::error_code ec) {
    if (ec) return;  // closed (by either side) or gone
    const std::uint64_t limit = relay_.config.max_frame_bytes + ws::kFrameHeaderBytes;
    const std::uint64_t known = in_.size() + (ws_.is_message_done() ? 0 : ws_.read_size_hint(1));
    if (known > limit) {
      // (a close reason holds 123 bytes at most; a fragmented message's size is known only
      // up to its current WebSocket frame)
      close(websocket::close_code::too_big, "message of at least " + std::to_string(known) +
                                                " B; STREAM_MAX_FRAME_SIZE_MB allows " +
                                                std::to_string(limit) +
                                                " B (with the 16 B header)");
      return;
    }
    if (!ws_.is_message_done()) {
      // Room for the rest of the frame at once: the next reads go straight into it, as large
      // as the socket has (Beast would otherwise grow the buffer from 512 bytes, copying).
      in_.reserve(known);
      read_some();
      return;
    }
    on_read();
  }

  void on_read() {
    const std::size_t size = in_.size();
    if (ws_.got_text()) {
      const std::string_view text = in_.view();
      const auto j = nlohmann::json::parse(text, nullptr, false);
      if (j.is_discarded()) {
        send_event({{"error", "invalid JSON in a text frame"}});
      } else {
        send_event({{"error", "unknown control event (publishers send none yet): " +
                                  std::string(text.substr(0, 100))}});
      }
      read();
      return;
    }
    if (size < ws::kFrameHeaderBytes) {
      send_event({{"error", "a frame of " + std::to_string(size) +
                                " bytes: binary frames start with a 16-byte header "
                                "(frame_index u64, timestamp_ns i64, little-endian)"}});
      read();
      return;
    }
    const Buffer frame = in_.freeze();  // takes the bytes as read; shared from here on
    const auto head = ws::decode(frame.data());
    pending_ = RelayMessage{frame.slice(ws::kFrameHeaderBytes), head.index,
                            head.timestamp_ns != 0 ? head.timestamp_ns : unix_now_ns()};
    if (topic_->stage) topic_->stage->offer(*pending_, weak_from_this());
    attempt();
  }

  void attempt() {
    if (!pending_ || closing_) return;
    const std::uint64_t bytes = pending_->payload.size();
    const std::uint64_t index = pending_->sequence;
    auto r = topic_->broadcast.try_publish(std::move(*pending_));
    if (r.status == SendStatus::ok) {
      pending_.reset();
      throttle_.admitted();
      timer_.cancel();
      if (throttle_.resumed(*topic_))
        send_event({{"resume", true}, {"queue_bytes", topic_->broadcast.queue_bytes()}});
      read();
      return;
    }
    if (r.status != SendStatus::would_block) {
      close(websocket::close_code::going_away, "the relay is stopping");
      return;
    }
    const bool was_slowed = throttle_.slowed();
    const auto wait = throttle_.blocked(*topic_);
    if (!was_slowed) {
      send_event({{"warning", "slow_down"},
                  {"topic", topic_->name},
                  {"queue_bytes", topic_->broadcast.queue_bytes()},
                  {"limit_bytes", topic_->config.max_queue_bytes}});
    }
    if (wait == Throttle::Wait::expired) {
      send_event({{"error", topic_->full_message()}, {"frame_index", index}});
      close(websocket::close_code::try_again_later,
            "topic full past max_wait_ms (SLUICE_MAX_WAIT_MS)");
      return;
    }
    if (wait == Throttle::Wait::started) {
      timer_.expires_at(throttle_.deadline());
      // The timer holds the session while it waits (no read is pending meanwhile).
      timer_.async_wait([self = shared_from_this()](boost::beast::error_code ec) {
        if (!ec) self->attempt();
      });
    }
    topic_->broadcast.on_writable(posted(&WsPublisher::attempt), bytes);
  }

  void post_event(nlohmann::json event, Priority p) {
    relay_.io.post([w = weak_from_this(), event = std::move(event), p] {
      if (auto self = w.lock(); self && !self->ending()) self->send_event(event, p);
    });
  }

  relay::FrameBuffer in_{relay_.frames};  // the frame being read
  std::optional<RelayMessage> pending_;
  Throttle throttle_;
};

// A stage worker (/v1/ws/work/{topic}?name=...&concurrency=...): the relay sends it frames
// (binary, the same 16-byte header as viewers get), at most `concurrency` not yet answered; it
// answers each with a binary result carrying the frame's header (published to the results
// topic) or a text {"frame_index":N,"error":"..."} (the frame goes to another worker or is
// failed, and its publisher told). When it leaves, what it held is re-routed or failed.
class WsWorker final : public WsSession<WsWorker> {
 public:
  WsWorker(RelayServer::Impl& relay, SessionSlot slot, const std::shared_ptr<Topic>& topic,
           boost::asio::ip::tcp::socket socket, std::string name, std::uint32_t concurrency)
      : WsSession(relay, relay.io, std::move(slot), topic, std::move(socket),
                  "ws-worker/" + topic->name + "/" + name),
        name_(std::move(name)),
        concurrency_(concurrency) {}

  void opened() {
    member_ = relay::StageMember(topic_->stage, name_, concurrency_);
    send_event({{"stage", topic_->name},
                {"worker", name_},
                {"id", member_.id()},
                {"concurrency", concurrency_},
                {"results", topic_->stage->config().results_topic}});
    read();
    pump();
  }

 private:
  friend class WsSession<WsWorker>;

  // Takes what the dispatcher has for this worker (within its credit); re-arms the hook.
  void pump() {
    if (ending() || !member_.joined()) return;
    member_.take(to_send_);
    member_.on_ready(posted(&WsWorker::pump));
    write_next();
  }
  void refill() {
    if (frame_queued_ || to_send_.empty() || ending()) return;
    frame_queued_ = enqueue(Priority::bulk, Outgoing{{}, std::move(to_send_.front())});
    to_send_.pop_front();
  }
  void taken(const Outgoing& m) {
    if (m.frame) frame_queued_ = false;
  }

  void read() {
    in_.clear();
    ws_.async_read(in_, [self = shared_from_this()](boost::beast::error_code ec, std::size_t) {
      if (ec) {  // gone, closed, or over the frame limit (Beast answers 1009)
        self->closing_ = true;
        self->timer_.cancel();
        self->member_.leave();  // its frames go to the others now
        return;
      }
      self->on_message();
      self->read();
    });
  }

  void on_message() {
    std::uint64_t index = 0;
    std::optional<std::string> problem;
    if (ws_.got_text()) {
      const auto j = nlohmann::json::parse(in_.view(), nullptr, false);
      if (j.is_discarded()) {
        send_event({{"error", "invalid JSON in a text frame"}});
        return;
      }
      if (!j.is_object() || !j.contains("frame_index") || !j["frame_index"].is_number_unsigned() ||
          !j.contains("error") || !j["error"].is_string()) {
        send_event({{"error",
                     "unknown event: workers send {\"frame_index\":N,\"error\":\"...\"} "
                     "or a binary result: " +
                         std::string(in_.view().substr(0, 100))}});
        return;
      }
      index = j["frame_index"].get<std::uint64_t>();
      problem = member_.error(index, j["error"].get<std::string>());
    } else {
      if (in_.size() < ws::kFrameHeaderBytes) {
        send_event({{"error", "a result of " + std::to_string(in_.size()) +
                                  " bytes: results start with the frame's 16-byte header"}});
        return;
      }
      const Buffer result = in_.freeze();
      index = ws::decode(result.data()).index;
      problem = member_.result(index, result.slice(ws::kFrameHeaderBytes));
    }
    if (problem) send_event({{"error", *problem}, {"frame_index", index}});
  }

  const std::string name_;
  const std::uint32_t concurrency_;
  relay::StageMember member_;             // leaves when the session goes
  std::deque<RelayMessage> to_send_;      // taken, not yet queued to write
  relay::FrameBuffer in_{relay_.frames};  // the message being read (see relay/frame_buffer.hpp)
  bool frame_queued_ = false;
};

// A viewer: the subscription's cursor is its queue of frames; the outgoing queue holds at most
// one of them, behind control events and gap notices (each gap goes out before the frame
// after it). One write at a time; a viewer whose send stays in flight for max_send_timeouts
// send timeouts is disconnected (4008).
class WsSubscriber final : public WsSession<WsSubscriber> {
 public:
  // `socket` belongs to `loop`, where the session runs.
  WsSubscriber(RelayServer::Impl& relay, IoThread& loop, SessionSlot slot,
               const std::shared_ptr<Topic>& topic, boost::asio::ip::tcp::socket socket,
               Subscription<RelayMessage> sub)
      : WsSession(relay, loop, std::move(slot), topic, std::move(socket),
                  "ws-viewer/" + topic->name + "/" + sub.name()),
        sub_(std::move(sub)),
        id_(relay.next_session_id.fetch_add(1)),
        sink_(topic_->name + "/" + sub_.name() + "#" + std::to_string(id_)),
        series_(relay_.registry, topic_->name, &sub_, id_) {
    loop_.viewers.fetch_add(1, std::memory_order_relaxed);
  }
  WsSubscriber(const WsSubscriber&) = delete;
  WsSubscriber& operator=(const WsSubscriber&) = delete;
  WsSubscriber(WsSubscriber&&) = delete;
  WsSubscriber& operator=(WsSubscriber&&) = delete;
  ~WsSubscriber() {
    relay_.viewers.remove(sink_);
    loop_.viewers.fetch_sub(1, std::memory_order_relaxed);
  }

  void opened() {
    read();  // control frames (ping, close) are answered while reading
    write_next();
  }

 private:
  friend class WsSession<WsSubscriber>;

  // Moves the subscription's next frame (and the gap notice before it) into the outgoing
  // queue, unless a frame already waits there.
  void refill() {
    while (!frame_queued_ && !ending()) {
      auto r = sub_.try_recv();
      switch (r.status) {
        case RecvStatus::ok:
          frame_queued_ = enqueue(Priority::bulk, Outgoing{{}, std::move(*r)});
          return;
        case RecvStatus::gap:
          if (!enqueue(Priority::critical,
                       Outgoing{json_text({{"gap", r.lost},
                                           {"reason", std::string(to_string(r.reason))}}),
                                std::nullopt}))
            return;
          continue;  // the frame after the gap
        case RecvStatus::would_block:
          return;
        case RecvStatus::evicted:
          end_after_queued(websocket::close_code::policy_error,
                           "evicted: the topic's publisher could not wait");
          return;
        default:
          end_after_queued(websocket::close_code::normal, "topic closed");
          return;
      }
    }
  }
  // Nothing to write: wake up when the subscription has something.
  void idle() {
    if (sub_armed_ || ending()) return;
    sub_armed_ = true;
    sub_.on_readable(posted(&WsSubscriber::readable));
  }
  void readable() {
    sub_armed_ = false;
    write_next();
  }

  void read() {
    ws_.async_read(in_, [self = shared_from_this()](boost::beast::error_code ec, std::size_t) {
      if (ec) {  // the viewer went away or closed: leave the topic now
        self->series_.leave(self->sub_);
        self->closing_ = true;
        self->timer_.cancel();
        return;
      }
      self->in_.clear();
      self->send_event({{"error", "viewers send no frames on a subscribe socket"}});
      self->read();
    });
  }

  // A frame leaving the queue makes room for the next one.
  void taken(const Outgoing& m) {
    if (m.frame) frame_queued_ = false;
  }
  // Every write that waits on the socket is timed (the detector's input); messages that went
  // into the socket's batch waited on nothing, and a batch that cannot leave makes the next
  // write wait.
  void write_started(const Outgoing& /*m*/) {
    started_ = Clock::now();
    arm_send_timer();
  }
  bool write_done() {
    timer_.cancel();
    return on_sink_event(relay_.viewers.record_write(sink_, Clock::now() - started_));
  }

  // Each send_timeout a frame is still in flight counts as a timeout.
  void arm_send_timer() {
    timer_.expires_after(relay_.config.send_timeout);
    timer_.async_wait([w = weak_from_this()](boost::beast::error_code ec) {
      auto s = w.lock();
      if (!s || ec || !s->writing() || s->closing_) return;
      if (s->on_sink_event(s->relay_.viewers.record_timeout(s->sink_))) s->arm_send_timer();
    });
  }

  // Acts on what the detector found; false once the viewer is being disconnected. A late
  // viewer (slow) stays: on a real-time topic its depth drops for it, announced as gaps.
  bool on_sink_event(const std::optional<SinkEvent>& event) {
    if (!event || event->kind == SinkEvent::Kind::recovered) return true;
    relay_.registry
        .counter("sluice_slow_viewers_total",
                 "WebSocket viewers found slow (late sends) or stalled (sends not completing)",
                 {{"kind", event->kind == SinkEvent::Kind::stalled ? "stalled" : "slow"},
                  {"topic", topic_->name}})
        .inc();
    if (event->action != SlowAction::disconnect) return true;
    disconnect_slow(event->reason);
    return false;
  }

  void disconnect_slow(const std::string& why) {
    send_event({{"error", "disconnected as a slow consumer: " + why +
                              " (limits.send_timeout_ms, limits.max_send_timeouts)"}});
    series_.leave(sub_);  // a lossless topic stops waiting for us now
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(relay_.config.send_timeout);
    close(static_cast<websocket::close_code>(4008),
          "slow consumer: no send done in " + std::to_string(relay_.config.max_send_timeouts) +
              " x " + std::to_string(ms.count()) +
              " ms (limits.max_send_timeouts, limits.send_timeout_ms)");
  }

  Subscription<RelayMessage> sub_;
  const std::uint64_t id_;  // the session label in metrics, and the sink's
  const std::string sink_;
  SubscriberSeries series_;  // reads sub_ (inactive once left, see leave()) from the scrapes
  boost::beast::flat_buffer in_;
  Clock::time_point started_;
  bool frame_queued_ = false;  // a frame waits in the outgoing queue
  bool sub_armed_ = false;     // a readable hook is registered with the subscription
};

std::string url_decode(std::string_view in) {
  std::string out;
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size() &&
        std::isxdigit(static_cast<unsigned char>(in[i + 1])) != 0 &&
        std::isxdigit(static_cast<unsigned char>(in[i + 2])) != 0) {
      out.push_back(static_cast<char>(std::stoi(std::string(in.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(in[i] == '+' ? ' ' : in[i]);
    }
  }
  return out;
}

// The value of `key` in a query string ("a=1&b=2"), decoded; empty if absent.
std::string query_value(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    const auto pair = query.substr(0, amp);
    if (const auto eq = pair.find('='); eq != std::string_view::npos && pair.substr(0, eq) == key)
      return url_decode(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return {};
}

// `socket` (of the relay's loop) as a socket of `loop`: the same connection, now watched by
// that loop's reactor. Nothing is buffered past an upgrade request (the client waits for the
// answer), so nothing is lost. On failure `ec` is set and the connection closed.
boost::asio::ip::tcp::socket move_to(IoThread& loop, boost::asio::ip::tcp::socket& socket,
                                     boost::system::error_code& ec) {
  if (socket.get_executor() == boost::asio::any_io_executor(loop.context().get_executor()))
    return std::move(socket);  // already there
  boost::asio::ip::tcp::socket moved(loop.context());
  const auto protocol = socket.local_endpoint(ec).protocol();
  const int fd = ec ? -1 : socket.release(ec);
  if (!ec) moved.assign(protocol, fd, ec);
  if (ec && fd >= 0) ::close(fd);
  return moved;
}

unsigned http_status(const grpc::Status& s) {
  switch (s.error_code()) {
    case grpc::StatusCode::NOT_FOUND:
      return 404;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return 503;
    default:
      return 400;
  }
}

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

bool RelayServer::Impl::upgrade(boost::asio::ip::tcp::socket& socket, HttpServer::Request& request,
                                unsigned& status, std::string& body) {
  const std::string_view target(request.target().data(), request.target().size());
  const auto qmark = target.find('?');
  const std::string_view path = target.substr(0, qmark);
  const std::string_view query =
      qmark == std::string_view::npos ? std::string_view{} : target.substr(qmark + 1);
  constexpr std::string_view kPublish = "/v1/ws/publish/";
  constexpr std::string_view kSubscribe = "/v1/ws/subscribe/";
  constexpr std::string_view kWork = "/v1/ws/work/";
  const bool publish = path.starts_with(kPublish);
  const bool work = path.starts_with(kWork);
  if (!publish && !work && !path.starts_with(kSubscribe)) {
    status = 404;
    body = "no WebSocket endpoint at " + std::string(path.substr(0, 200)) +
           " (try /v1/ws/publish/{topic}, /v1/ws/subscribe/{topic}?name=...&depth=... or "
           "/v1/ws/work/{topic}?name=...&concurrency=...)\n";
    return false;
  }
  const std::string name = url_decode(path.substr(publish ? kPublish.size()
                                                  : work  ? kWork.size()
                                                          : kSubscribe.size()));
  grpc::Status st;
  SessionSlot slot = session(st);
  if (!slot) {
    status = 503;
    body = st.error_message() + "\n";
    return false;
  }
  auto t = topic(name, st);
  if (!t) {
    status = http_status(st);
    body = st.error_message() + "\n";
    return false;
  }
  if (publish) {
    std::make_shared<WsPublisher>(*this, std::move(slot), t, std::move(socket))
        ->start(std::move(request));
    return true;
  }
  if (work) {
    if (!t->stage) {
      status = 404;
      body = "topic '" + name +
             "' has no stage: declare one with stage = true in its [[topic]] (docs/stages.md)\n";
      return false;
    }
    std::uint32_t concurrency = 4;
    if (const std::string c = query_value(query, "concurrency"); !c.empty()) {
      char* end = nullptr;
      const unsigned long v = std::strtoul(c.c_str(), &end, 10);
      if (end == c.c_str() || *end != '\0' || v == 0 || v > 1024) {
        status = 400;
        body = "concurrency '" + c.substr(0, 20) + "': a whole number from 1 to 1024\n";
        return false;
      }
      concurrency = static_cast<std::uint32_t>(v);
    }
    std::string worker = query_value(query, "name");
    worker = worker.empty() ? "worker" : worker.substr(0, 128);
    std::make_shared<WsWorker>(*this, std::move(slot), t, std::move(socket), std::move(worker),
                               concurrency)
        ->start(std::move(request));
    return true;
  }
  std::size_t depth = 0;  // the topic's default
  if (const std::string d = query_value(query, "depth"); !d.empty()) {
    char* end = nullptr;
    depth = std::strtoul(d.c_str(), &end, 10);
    if (end == d.c_str() || *end != '\0' || depth == 0) {
      status = 400;
      body = "depth '" + d.substr(0, 20) + "': a whole number from 1 to the topic's capacity\n";
      return false;
    }
  }
  auto sub = subscribe(*t, query_value(query, "name"), "viewer", depth, st);
  if (!sub) {
    status = 400;
    body = st.error_message() + "\n";
    return false;
  }
  // The viewer goes to the loop serving the fewest; its socket moves there.
  IoThread& loop = viewer_loop();
  boost::system::error_code ec;
  auto own = move_to(loop, socket, ec);
  if (ec) {
    status = 503;
    body = "cannot hand the connection to an I/O thread: " + ec.message() + "\n";
    return false;
  }
  auto viewer = std::make_shared<WsSubscriber>(*this, loop, std::move(slot), t, std::move(own),
                                               std::move(*sub));
  boost::asio::post(loop.context(), [viewer, request = std::move(request)]() mutable {
    viewer->start(std::move(request));
  });
  return true;
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
      impl_->config.handshake_timeout,
      [impl](const std::string& target, unsigned& status, std::string& type, std::string& body) {
        impl->http(target, status, type, body);
      },
      [impl](boost::asio::ip::tcp::socket& socket, HttpServer::Request& request, unsigned& status,
             std::string& body) { return impl->upgrade(socket, request, status, body); });
  impl_->io.post([impl] { impl->poll_stages(); });
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
  impl_->stop_io();
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

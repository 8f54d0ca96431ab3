// Relay benchmark R6: fan-out to many subscribers (see docs/benchmarks.md). One publisher ->
// 10, 100 and 1000 subscribers of one stream, through the Sluice relay (WebSocket and gRPC)
// and through nats-server (nats.c), same machine, same run.
//
//   make bench-relay   (or ./build/bench/sluice_fanout_bench [--quick] [--runs=N]
//                       [--subscribers=10,100,1000] [--only=nats,ws,grpc])
//
// The servers run as child processes (`sluice serve`, `nats-server`), so that their own CPU
// time and memory are read from /proc apart from the clients'. The clients sit in this process,
// each side on event loops, not a thread per subscriber: WebSocket subscribers on one Asio
// loop, gRPC subscribers as callback reactors (gRPC's own threads), NATS subscribers on one
// libevent loop with nats.c's shared delivery thread. Every subscriber has its own connection
// on every system. The topic is lossless (NATS: pending limits off), so every delivery counts.
//
// Workloads: 64 B at 100 msg/s (paced, a telemetry stream), and 1 KiB as fast as possible.
// Figures per system and subscriber count:
//   delivered   deliveries per second (subscribers x messages / first publish to last receive)
//   CPU/M       the server's CPU seconds per million deliveries (/proc/<pid>/stat)
//   p99         publish -> receive latency, steady clock (one process)
//   RSS/sub     the server's resident memory per idle subscriber, on a fresh server: RSS with
//               the most subscribers connected and nothing published, minus RSS before, over N
#include <event2/event.h>
#include <event2/thread.h>
#include <grpcpp/grpcpp.h>
#include <nats/adapters/libevent.h>
#include <nats/nats.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

#include "build_paths.hpp"
#include "peers/nats_server.hpp"
#include "peers/process_stats.hpp"
#include "peers/relay_process.hpp"
#include "sluice/client/client.hpp"
#include "sluice/histogram.hpp"
#include "sluice/latency.hpp"
#include "sluice/relay/protocol.hpp"
#include "sluice/v1/relay.grpc.pb.h"

namespace {

using namespace std::chrono;
using sluice::Histogram;
using sluice::detail::now_ns;
namespace websocket = boost::beast::websocket;
namespace asio = boost::asio;

struct Workload {
  const char* name;
  std::size_t size;
  double rate;  // messages per second; 0: as fast as possible
};

struct Result {
  std::uint64_t expected = 0;
  std::uint64_t delivered = 0;
  double seconds = 0;
  double server_cpu = 0;  // seconds
  double p99_ms = 0;
  double rss_per_sub = 0;  // bytes
  std::string error;
  double rate() const { return seconds > 0 ? static_cast<double>(delivered) / seconds : 0; }
  double cpu_per_million() const {
    return delivered > 0 ? server_cpu / static_cast<double>(delivered) * 1e6 : 0;
  }
};

using sluice::bench::process_cpu;
using sluice::bench::process_rss;

// What every subscriber records (from one client thread at a time per system, or gRPC's).
struct Sink {
  std::atomic<std::uint64_t> msgs{0};
  std::atomic<std::int64_t> last_ns{0};
  Histogram latency;
  void got(std::int64_t stamp) {
    const std::int64_t now = now_ns();
    if (now > stamp) latency.record(static_cast<std::uint64_t>(now - stamp));
    msgs.fetch_add(1, std::memory_order_relaxed);
    std::int64_t prev = last_ns.load(std::memory_order_relaxed);
    while (now > prev && !last_ns.compare_exchange_weak(prev, now)) {
    }
  }
};

// One system's subscribers, connected and reading until destroyed.
struct Fanout {
  virtual ~Fanout() = default;
  Fanout() = default;
  Fanout(const Fanout&) = delete;
  Fanout& operator=(const Fanout&) = delete;
  Fanout(Fanout&&) = delete;
  Fanout& operator=(Fanout&&) = delete;
  std::string error;
};

// A run: `n` subscribers connect (RSS measured), then `count` messages are published through
// `publish(i, stamp)`, paced at the workload's rate; the figures as above.
template <class Connect, class Publish>
Result measure(pid_t server, int n, const Workload& w, std::uint64_t count, Connect connect,
               Publish publish) {
  Result r;
  r.expected = count * static_cast<std::uint64_t>(n);
  Sink sink;
  const double rss_before = process_rss(server);
  std::unique_ptr<Fanout> subs = connect(sink);
  if (!subs->error.empty()) {
    r.error = subs->error;
    return r;
  }
  std::this_thread::sleep_for(milliseconds(300));  // (the server settles)
  r.rss_per_sub = (process_rss(server) - rss_before) / n;
  const double cpu_before = process_cpu(server);
  const std::int64_t start = now_ns();
  for (std::uint64_t i = 0; i < count && r.error.empty(); ++i) {
    if (w.rate > 0) {
      const auto due = start + static_cast<std::int64_t>(static_cast<double>(i) * 1e9 / w.rate);
      std::this_thread::sleep_until(steady_clock::time_point(nanoseconds(due)));
    }
    r.error = publish(i, now_ns());
  }
  const auto give_up = steady_clock::now() + seconds(60);
  while (sink.msgs.load() < r.expected && steady_clock::now() < give_up) {
    std::this_thread::sleep_for(milliseconds(2));
  }
  r.server_cpu = process_cpu(server) - cpu_before;
  r.delivered = sink.msgs.load();
  r.seconds = static_cast<double>(sink.last_ns.load() - start) / 1e9;
  r.p99_ms = static_cast<double>(sink.latency.snapshot().percentile(0.99)) / 1e6;
  subs.reset();
  return r;
}

// ---- Sluice: `sluice serve` as a child process (peers/relay_process.hpp) ----

using sluice::bench::RelayProcess;

// WebSocket subscribers on one Asio loop, run by two threads (as the NATS side has a loop
// thread and a delivery thread). Each reads 64 KiB per system call and parses the relay's
// frames itself (unmasked, 2-10 header bytes), as nats.c parses its protocol: Beast's read
// operation costs a few allocations per message, which at 1000 subscribers made the client, not
// the relay, the bottleneck (0.47x NATS with Beast's 1.5 KiB reads, 0.8x with 64 KiB ones).
// The upgrade is a plain HTTP request (RFC 6455's sample key); a ping is answered with a pong.
struct WsFanout final : Fanout {
  struct Viewer {
    explicit Viewer(asio::io_context& io) : socket(io) {}
    asio::ip::tcp::socket socket;
    std::vector<char> buffer = std::vector<char>(64 * 1024);
    std::size_t have = 0;  // unparsed bytes at the front of buffer
  };

  WsFanout(std::uint16_t port, const std::string& topic, int n, Sink& sink) : sink_(sink) {
    for (int i = 0; i < n && error.empty(); ++i) {
      auto v = std::make_unique<Viewer>(io_);
      boost::system::error_code ec;
      v->socket.connect({asio::ip::make_address("127.0.0.1"), port}, ec);
      if (!ec) v->socket.set_option(asio::ip::tcp::no_delay(true), ec);
      if (!ec) upgrade(*v, "/v1/ws/subscribe/" + topic, ec);
      if (ec) error = "WebSocket subscriber " + std::to_string(i) + ": " + ec.message();
      viewers_.push_back(std::move(v));
    }
    for (auto& v : viewers_) read(*v);
    for (auto& t : threads_) t = std::thread([this] { io_.run(); });
  }
  ~WsFanout() override {
    io_.stop();
    for (auto& t : threads_) t.join();
  }

 private:
  // The upgrade request, and its answer read up to the blank line (what follows stays).
  static void upgrade(Viewer& v, const std::string& target, boost::system::error_code& ec) {
    const std::string request = "GET " + target +
                                " HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                                "Connection: Upgrade\r\nSec-WebSocket-Key: "
                                "dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    asio::write(v.socket, asio::buffer(request), ec);
    std::string answer;
    while (!ec && answer.find("\r\n\r\n") == std::string::npos) {
      const std::size_t n = v.socket.read_some(asio::buffer(v.buffer), ec);
      answer.append(v.buffer.data(), n);
    }
    if (ec) return;
    if (answer.rfind("HTTP/1.1 101", 0) != 0) {
      ec = asio::error::connection_refused;
      return;
    }
    const std::size_t body = answer.find("\r\n\r\n") + 4;
    v.have = answer.size() - body;
    std::memcpy(v.buffer.data(), answer.data() + body, v.have);
  }

  void read(Viewer& v) {
    if (v.have == v.buffer.size()) v.buffer.resize(v.buffer.size() * 2);  // a frame over 64 KiB
    v.socket.async_read_some(asio::buffer(v.buffer.data() + v.have, v.buffer.size() - v.have),
                             [this, &v](boost::system::error_code ec, std::size_t n) {
                               if (ec) return;
                               v.have += n;
                               parse(v);
                               read(v);
                             });
  }

  // Every whole frame at the front of the buffer; a partial one waits for more bytes.
  void parse(Viewer& v) {
    const auto* p = reinterpret_cast<const unsigned char*>(v.buffer.data());
    std::size_t at = 0;
    for (;;) {
      if (v.have - at < 2) break;
      const unsigned opcode = p[at] & 0x0f;
      std::uint64_t length = p[at + 1] & 0x7f;
      std::size_t header = 2;
      if (length == 126) header = 4;
      if (length == 127) header = 10;
      if (v.have - at < header) break;
      if (length >= 126) {
        length = 0;
        for (std::size_t i = 2; i < header; ++i) length = (length << 8) | p[at + i];
      }
      if (v.have - at < header + length) {
        if (header + length > v.buffer.size()) v.buffer.resize(header + length);
        break;
      }
      const auto* payload = p + at + header;
      if (opcode == 2 && length >= sluice::ws::kFrameHeaderBytes) {
        sink_.got(sluice::ws::decode(payload).timestamp_ns);
      } else if (opcode == 9 && length <= 125) {  // ping: a masked pong (mask 0: same bytes)
        std::string pong{static_cast<char>(0x8a), static_cast<char>(0x80 | length), 0, 0, 0, 0};
        pong.append(reinterpret_cast<const char*>(payload), length);
        boost::system::error_code ignored;
        asio::write(v.socket, asio::buffer(pong), ignored);
      }
      at += header + length;
    }
    std::memmove(v.buffer.data(), v.buffer.data() + at, v.have - at);
    v.have -= at;
  }

  Sink& sink_;
  asio::io_context io_;
  std::vector<std::unique_ptr<Viewer>> viewers_;
  std::array<std::thread, 2> threads_;
};

// gRPC subscribers: callback reactors, a channel (one connection) each.
struct GrpcFanout final : Fanout {
  class Viewer final : public grpc::ClientReadReactor<sluice::v1::SubscribeEvent> {
   public:
    Viewer(GrpcFanout& owner, sluice::v1::Relay::Stub& stub, const std::string& topic)
        : owner_(owner) {
      req_.set_topic(topic);
      stub.async()->Subscribe(&ctx_, &req_, this);
      StartRead(&ev_);
      StartCall();
    }
    void OnReadInitialMetadataDone(bool ok) override { owner_.subscribed(ok); }
    void OnReadDone(bool ok) override {
      if (!ok) return;
      if (ev_.has_item()) owner_.sink_.got(ev_.item().timestamp_ns());
      for (const auto& item : ev_.batch().items()) owner_.sink_.got(item.timestamp_ns());
      StartRead(&ev_);
    }
    void OnDone(const grpc::Status& /*s*/) override { owner_.done(); }
    void cancel() { ctx_.TryCancel(); }

   private:
    GrpcFanout& owner_;
    grpc::ClientContext ctx_;
    sluice::v1::SubscribeRequest req_;
    sluice::v1::SubscribeEvent ev_;
  };

  GrpcFanout(const std::string& target, const std::string& topic, int n, Sink& sink) : sink_(sink) {
    for (int i = 0; i < n; ++i) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // its own connection
      args.SetMaxReceiveMessageSize(-1);
      stubs_.push_back(sluice::v1::Relay::NewStub(
          grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
      viewers_.push_back(std::make_unique<Viewer>(*this, *stubs_.back(), topic));
    }
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, seconds(60), [&] { return answered_ == n; }) || failed_ > 0)
      error = "gRPC subscribers: " + std::to_string(failed_) + " of " + std::to_string(n) +
              " not subscribed";
  }
  ~GrpcFanout() override {
    for (auto& v : viewers_) v->cancel();
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return done_ == viewers_.size(); });
  }

 private:
  void subscribed(bool ok) {
    std::lock_guard lock(mu_);
    ++answered_;
    if (!ok) ++failed_;
    cv_.notify_all();
  }
  void done() {
    std::lock_guard lock(mu_);
    ++done_;
    cv_.notify_all();
  }

  Sink& sink_;
  std::vector<std::unique_ptr<sluice::v1::Relay::Stub>> stubs_;
  std::vector<std::unique_ptr<Viewer>> viewers_;
  std::mutex mu_;
  std::condition_variable cv_;
  int answered_ = 0;
  int failed_ = 0;
  std::size_t done_ = 0;
};

// ---- NATS: nats-server as a child process; subscribers on one libevent loop ----

void on_nats_msg(natsConnection* /*nc*/, natsSubscription* /*sub*/, natsMsg* msg, void* closure) {
  std::int64_t stamp = 0;
  if (natsMsg_GetDataLength(msg) >= 8) std::memcpy(&stamp, natsMsg_GetData(msg), 8);
  static_cast<Sink*>(closure)->got(stamp);
  natsMsg_Destroy(msg);
}

struct NatsFanout final : Fanout {
  NatsFanout(const std::string& url, const std::string& subject, int n, Sink& sink)
      : base_(event_base_new()) {
    loop_ = std::thread([this] { event_base_loop(base_, EVLOOP_NO_EXIT_ON_EMPTY); });
    for (int i = 0; i < n && error.empty(); ++i) {
      natsOptions* o = nullptr;
      natsConnection* nc = nullptr;
      natsSubscription* sub = nullptr;
      natsStatus s = natsOptions_Create(&o);
      if (s == NATS_OK) s = natsOptions_SetURL(o, url.c_str());
      if (s == NATS_OK)
        s = natsOptions_SetEventLoop(o, base_, natsLibevent_Attach, natsLibevent_Read,
                                     natsLibevent_Write, natsLibevent_Detach);
      if (s == NATS_OK) s = natsOptions_UseGlobalMessageDelivery(o, true);
      if (s == NATS_OK) s = natsConnection_Connect(&nc, o);
      if (s == NATS_OK) s = natsConnection_Subscribe(&sub, nc, subject.c_str(), on_nats_msg, &sink);
      if (s == NATS_OK) s = natsSubscription_SetPendingLimits(sub, -1, -1);
      if (s == NATS_OK) s = natsConnection_Flush(nc);
      natsOptions_Destroy(o);
      if (s != NATS_OK) error = std::string("NATS subscriber: ") + natsStatus_GetText(s);
      if (nc != nullptr) connections_.push_back(nc);
      if (sub != nullptr) subs_.push_back(sub);
    }
  }
  ~NatsFanout() override {
    for (auto* s : subs_) natsSubscription_Destroy(s);
    for (auto* c : connections_) natsConnection_Close(c);
    for (auto* c : connections_) natsConnection_Destroy(c);
    event_base_loopbreak(base_);
    loop_.join();
    event_base_free(base_);
  }

 private:
  event_base* base_;
  std::thread loop_;
  std::vector<natsConnection*> connections_;
  std::vector<natsSubscription*> subs_;
};

// ---- The runs ----

std::string payload_of(std::size_t size) {
  return std::string(size, 'p');
}

Result run_nats(const sluice::bench::NatsServer& nats, pid_t pid, int n, const Workload& w,
                std::uint64_t count, int run) {
  const std::string subject = "fanout." + std::to_string(run);
  natsConnection* pub = nullptr;
  if (natsConnection_ConnectTo(&pub, nats.url().c_str()) != NATS_OK) {
    Result r;
    r.error = "cannot connect the NATS publisher";
    return r;
  }
  std::string payload = payload_of(w.size);
  Result r = measure(
      pid, n, w, count,
      [&](Sink& sink) { return std::make_unique<NatsFanout>(nats.url(), subject, n, sink); },
      [&](std::uint64_t /*i*/, std::int64_t stamp) -> std::string {
        std::memcpy(payload.data(), &stamp, 8);
        natsStatus s = natsConnection_Publish(pub, subject.c_str(), payload.data(),
                                              static_cast<int>(payload.size()));
        if (s == NATS_OK && w.rate > 0) s = natsConnection_Flush(pub);
        return s == NATS_OK ? std::string() : natsStatus_GetText(s);
      });
  natsConnection_Destroy(pub);
  return r;
}

Result run_ws(const RelayProcess& relay, int n, const Workload& w, std::uint64_t count, int run) {
  const std::string topic = "fanout.ws." + std::to_string(run);
  asio::io_context io;
  websocket::stream<asio::ip::tcp::socket> pub(io);
  boost::beast::error_code ec;
  std::string frame(sluice::ws::kFrameHeaderBytes + w.size, 'p');
  Result r = measure(
      relay.pid(), n, w, count,
      [&](Sink& sink) {
        auto subs = std::make_unique<WsFanout>(relay.http_port(), topic, n, sink);
        pub.next_layer().connect({asio::ip::make_address("127.0.0.1"), relay.http_port()}, ec);
        if (!ec) pub.next_layer().set_option(asio::ip::tcp::no_delay(true), ec);
        if (!ec) pub.handshake("127.0.0.1", "/v1/ws/publish/" + topic, ec);
        if (ec && subs->error.empty()) subs->error = "WebSocket publisher: " + ec.message();
        pub.binary(true);
        return subs;
      },
      [&](std::uint64_t i, std::int64_t stamp) -> std::string {
        const auto header = sluice::ws::encode({i, stamp});
        std::memcpy(frame.data(), header.data(), header.size());
        pub.write(asio::buffer(frame), ec);
        return ec ? ec.message() : std::string();
      });
  pub.close(websocket::close_code::normal, ec);
  return r;
}

Result run_grpc(const RelayProcess& relay, int n, const Workload& w, std::uint64_t count, int run) {
  const std::string topic = "fanout.grpc." + std::to_string(run);
  std::unique_ptr<sluice::client::Publisher> pub;
  const sluice::Buffer payload = sluice::Buffer::copy(payload_of(w.size));
  Result r = measure(
      relay.pid(), n, w, count,
      [&](Sink& sink) {
        auto subs = std::make_unique<GrpcFanout>(relay.grpc(), topic, n, sink);
        sluice::client::PublisherOptions po;
        po.target = relay.grpc();
        po.topic = topic;
        pub = std::make_unique<sluice::client::Publisher>(po);
        return subs;
      },
      [&](std::uint64_t /*i*/, std::int64_t stamp) -> std::string {
        const auto st = pub->publish(payload, stamp);
        return st.ok() ? std::string() : st.to_string();
      });
  if (pub) (void)pub->close();
  return r;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int repeat = 3;
  std::vector<int> counts{10, 100, 1000};
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a.rfind("--runs=", 0) == 0) {
      repeat = std::max(1, std::stoi(a.substr(7)));
    } else if (a.rfind("--subscribers=", 0) == 0) {
      counts.clear();
      std::stringstream list(a.substr(14));
      for (std::string x; std::getline(list, x, ',');) counts.push_back(std::stoi(x));
    } else if (a.rfind("--only=", 0) == 0) {
      only = a.substr(7);
    } else {
      std::printf(
          "usage: %s [--quick] [--runs=N] [--subscribers=10,100,1000] [--only=nats,ws,grpc]\n",
          argv[0]);
      return 2;
    }
  }
  const auto runs = [&only](const char* family) {
    return only.empty() || only.find(family) != std::string::npos;
  };
  signal(SIGPIPE, SIG_IGN);
  evthread_use_pthreads();
  nats_SetMessageDeliveryPoolSize(1);
  sluice::bench::NatsServer nats;
  RelayProcess relay(sluice::testing::beside_binary(SLUICE_CLI_FROM_BINARY));
  if (!nats.ready() || !relay.ready()) {
    std::printf("nats-server or sluice serve did not start\n");
    return 1;
  }
  std::printf(
      "R6  fan-out: 1 publisher -> N subscribers, each on its own connection; servers as child "
      "processes (sluice serve: %s, nats-server: %s), clients in this process on event loops; "
      "median of %d run%s%s\n",
      relay.grpc().c_str(), nats.url().c_str(), repeat, repeat == 1 ? "" : "s",
      quick ? ", --quick" : "");
  std::printf(
      "    delivered: deliveries/s; CPU/M: server CPU s per million deliveries; p99: publish -> "
      "receive\n");

  struct System {
    const char* name;
    const char* family;
    std::function<Result(int, const Workload&, std::uint64_t, int)> run;
  };
  const std::vector<System> systems{
      {"NATS", "nats",
       [&](int n, const Workload& w, std::uint64_t c, int run) {
         return run_nats(nats, nats.pid(), n, w, c, run);
       }},
      {"Sluice WebSocket", "ws",
       [&](int n, const Workload& w, std::uint64_t c, int run) {
         return run_ws(relay, n, w, c, run);
       }},
      {"Sluice gRPC", "grpc",
       [&](int n, const Workload& w, std::uint64_t c, int run) {
         return run_grpc(relay, n, w, c, run);
       }},
  };
  int run = 0;
  // Memory first, each system on a fresh server (so that no earlier run's freed memory is
  // reused): the most subscribers, connected and idle.
  const int idle = counts.back();
  const Workload none{"idle", 64, 0};
  std::printf("\n  %d idle subscribers (a fresh server each): server RSS per subscriber\n", idle);
  const auto print_idle = [](const char* name, const Result& r) {
    std::printf("      %-17s %6.1f KiB%s%s\n", name, r.rss_per_sub / 1024,
                r.error.empty() ? "" : "  ERROR ", r.error.c_str());
  };
  if (runs("nats")) {
    const sluice::bench::NatsServer fresh;
    print_idle("NATS", run_nats(fresh, fresh.pid(), idle, none, 0, ++run));
  }
  if (runs("ws")) {
    const RelayProcess fresh(sluice::testing::beside_binary(SLUICE_CLI_FROM_BINARY));
    print_idle("Sluice WebSocket", run_ws(fresh, idle, none, 0, ++run));
  }
  if (runs("grpc")) {
    const RelayProcess fresh(sluice::testing::beside_binary(SLUICE_CLI_FROM_BINARY));
    print_idle("Sluice gRPC", run_grpc(fresh, idle, none, 0, ++run));
  }
  const double paced_seconds = quick ? 2 : 5;
  const double deliveries = quick ? 300'000 : 1'000'000;  // per fast run
  for (const Workload& w :
       {Workload{"64 B at 100 msg/s", 64, 100}, Workload{"1 KiB, as fast as possible", 1024, 0}}) {
    std::printf("\n  %s\n", w.name);
    std::vector<double> cpu_at(systems.size());  // CPU/M at the first subscriber count
    for (const int n : counts) {
      const std::uint64_t count =
          w.rate > 0 ? static_cast<std::uint64_t>(w.rate * paced_seconds)
                     : std::max<std::uint64_t>(200, static_cast<std::uint64_t>(deliveries / n));
      std::printf("    %d subscribers, %llu messages\n", n, static_cast<unsigned long long>(count));
      double nats_rate = 0;
      for (std::size_t s = 0; s < systems.size(); ++s) {
        if (!runs(systems[s].family)) continue;
        std::vector<Result> each;
        for (int rep = 0; rep < repeat; ++rep) each.push_back(systems[s].run(n, w, count, ++run));
        const auto med = [&](auto f) {
          std::vector<double> v;
          for (const auto& r : each) v.push_back(f(r));
          return median(v);
        };
        const double rate = med([](const Result& r) { return r.rate(); });
        const double cpu = med([](const Result& r) { return r.cpu_per_million(); });
        std::uint64_t lost = 0;
        std::string error;
        for (const auto& r : each) {
          lost += r.expected - std::min(r.expected, r.delivered);
          if (error.empty()) error = r.error;
        }
        if (s == 0) nats_rate = rate;
        if (n == counts.front()) cpu_at[s] = cpu;
        char ratio[64] = "";
        if (s > 0 && nats_rate > 0)
          std::snprintf(ratio, sizeof ratio, "  ratio %.2fx", rate / nats_rate);
        char growth[64] = "";
        if (n != counts.front() && cpu_at[s] > 0)
          std::snprintf(growth, sizeof growth, "  CPU/M x%.2f of %d subs'", cpu / cpu_at[s],
                        counts.front());
        std::printf("      %-17s delivered %10.0f/s  CPU/M %6.2f s  p99 %8.2f ms%s%s%s%s\n",
                    systems[s].name, rate, cpu, med([](const Result& r) { return r.p99_ms; }),
                    ratio, growth, lost > 0 ? ("  LOST " + std::to_string(lost)).c_str() : "",
                    error.empty() ? "" : ("  ERROR " + error).c_str());
      }
    }
  }
  return 0;
}

// Relay benchmarks R1 and R2 (see docs/benchmarks.md): the Sluice relay over gRPC and over
// WebSocket against nats-server driven by the nats.c client, same machine, same run.
//
//   make bench-relay   (or ./build/bench/sluice_relay_bench [--quick] [--runs=N] [--only=...]
//                       [--secure: each system also over TLS, Sluice with a token too])
//
// R1  1 publisher -> 3 subscribers, as fast as possible, 16 B, 1 KiB and 1 MiB payloads. Delivered
//     bytes/s in total (3 x published bytes / time from the first publish to the last
//     receive). Sluice: a lossless topic (nothing may be lost; the producer is throttled).
//     NATS: core pub/sub with the subscribers' pending limits raised so that it does not drop;
//     whatever it still loses is counted and printed.
// R2  paced: 30 fps x 1 MiB (3 s) and 10,000 msg/s x 64 B (2 s), 3 subscribers, publish ->
//     receive latency (steady clock, one process): p50 / p99 / max. Beside them, the
//     machine's floor for the pattern: plain blocking threads forwarding the same frames over
//     loopback TCP, no relay (run_floor), which no relay here can beat.
//
// Each workload runs --runs times (default 3), every system once per repetition, in turn: on a
// noisy machine one run's ratio says little. R1 prints the median throughput and the median of
// the repetitions' ratios (each against the NATS run beside it), R2 the repetitions' samples
// pooled, with each run's p99.
//
// The Sluice relay runs in this process (RelayServer on 127.0.0.1, ephemeral ports) and is
// driven over gRPC by sluice::client and over WebSocket by Beast clients (16-byte header +
// payload frames); nats-server runs as a child process on a free loopback port.
#include <nats/nats.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

#include "build_paths.hpp"
#include "peers/nats_server.hpp"
#include "peers/process_stats.hpp"
#include "relay/coalescing_socket.hpp"
#include "sluice/buffer.hpp"
#include "sluice/client/client.hpp"
#include "sluice/histogram.hpp"
#include "sluice/latency.hpp"
#include "sluice/relay/protocol.hpp"
#include "sluice/relay/server.hpp"

extern char** environ;

namespace {

using namespace std::chrono;
using sluice::Buffer;
using sluice::Histogram;
using sluice::HistogramSnapshot;
using sluice::bench::free_port;
using sluice::bench::nats_connect;
using sluice::bench::NatsServer;

constexpr int kSubscribers = 3;

using sluice::detail::now_ns;  // steady clock, ns

struct Workload {
  const char* name;
  std::size_t size;
  std::uint64_t count;
  double rate;  // messages per second; 0: as fast as possible
};

struct Result {
  double seconds = 0;
  std::uint64_t delivered = 0;  // messages, all subscribers
  std::uint64_t bytes = 0;      // payload bytes, all subscribers
  std::uint64_t lost = 0;       // expected - delivered
  HistogramSnapshot latency;
  std::string error;
  bool ran = true;  // false: left out by --only
  double cpu = 0;   // CPU seconds of the clients and the server, setup included
  double mb_per_s() const { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e6 : 0; }
};

// The child nats-servers, whose CPU time counts with their clients'.
std::vector<pid_t> g_nats_pids;

// CPU seconds used so far by this process (clients, and the in-process relay) and by
// nats-server: both systems' runs are charged everything they make a CPU do, a figure less
// at the mercy of a noisy machine than throughput.
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  double s = static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
             static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
  for (const pid_t pid : g_nats_pids) s += sluice::bench::process_cpu(pid);
  return s;
}

// What every subscriber of either system records.
struct Sink {
  std::atomic<std::uint64_t> msgs{0};
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::int64_t> last_ns{0};
  Histogram latency;
  void got(std::size_t size, std::int64_t stamp) {
    const std::int64_t now = now_ns();
    if (now > stamp) latency.record(static_cast<std::uint64_t>(now - stamp));
    bytes.fetch_add(size, std::memory_order_relaxed);
    msgs.fetch_add(1, std::memory_order_relaxed);
    std::int64_t prev = last_ns.load(std::memory_order_relaxed);
    while (now > prev && !last_ns.compare_exchange_weak(prev, now)) {
    }
  }
};

// Paces message i of a workload.
void pace(const Workload& w, std::int64_t start, std::uint64_t i) {
  if (w.rate <= 0) return;
  const auto due = start + static_cast<std::int64_t>(static_cast<double>(i) * 1e9 / w.rate);
  std::this_thread::sleep_until(steady_clock::time_point(nanoseconds(due)));
}

Result finish(Sink& sink, const Workload& w, std::int64_t start) {
  const std::uint64_t expected = w.count * kSubscribers;
  const auto give_up = steady_clock::now() + seconds(30);
  while (sink.msgs.load() < expected && steady_clock::now() < give_up) {
    std::this_thread::sleep_for(milliseconds(2));
  }
  Result r;
  r.delivered = sink.msgs.load();
  r.bytes = sink.bytes.load();
  r.lost = expected - std::min(expected, r.delivered);
  r.seconds = static_cast<double>(sink.last_ns.load() - start) / 1e9;
  r.latency = sink.latency.snapshot();
  return r;
}

// ---- Sluice: the relay in this process, sluice::client ----

// How a client reaches a relay that asks for it: a token, TLS (--secure).
struct Security {
  std::string token;
  sluice::client::TlsOptions tls;
};

Result run_sluice(const std::string& target, const Workload& w, int run,
                  const Security& security = {}) {
  std::string topic = "bench.";
  topic.append(std::to_string(run));
  Sink sink;
  std::vector<std::unique_ptr<sluice::client::Subscriber>> subs;
  for (int i = 0; i < kSubscribers; ++i) {
    sluice::client::SubscriberOptions o;
    o.target = target;
    o.topic = topic;
    std::string name = "s";  // (built so: GCC 12 -O2 warns falsely, -Wrestrict, on "s" + ...)
    name.append(std::to_string(i));
    o.name = std::move(name);
    o.token = security.token;
    o.tls = security.tls;
    subs.push_back(std::make_unique<sluice::client::Subscriber>(o));
  }
  std::vector<std::thread> readers;
  for (auto& s : subs) {
    readers.emplace_back([&sink, &w, sub = s.get()] {
      sluice::client::SubscriberEvent e;
      for (std::uint64_t n = 0; n < w.count && sub->next(e);) {
        if (e.kind != sluice::client::SubscriberEvent::Kind::item) continue;
        sink.got(e.payload.size(), e.timestamp_ns);
        ++n;
      }
    });
  }
  sluice::client::PublisherOptions po;
  po.target = target;
  po.topic = topic;
  po.token = security.token;
  po.tls = security.tls;
  sluice::client::Publisher pub(po);
  const Buffer payload = Buffer::copy(std::string(w.size, 'p'));
  const std::int64_t start = now_ns();
  sluice::client::Status st;
  for (std::uint64_t i = 0; i < w.count && st.ok(); ++i) {
    pace(w, start, i);
    st = pub.publish(payload, now_ns());
  }
  if (st.ok()) st = pub.close();
  Result r = finish(sink, w, start);
  if (!st.ok()) r.error = st.to_string();
  for (auto& s : subs) s->cancel();
  for (auto& t : readers) t.join();
  return r;
}

// ---- Sluice over WebSocket: the relay's HTTP port, Beast clients ----

namespace websocket = boost::beast::websocket;
// The clients sit on the relay's own socket layer: viewers read 64 KiB per system call (Beast
// alone reads 1536 bytes at a time), the publisher batches its writes and flushes when a
// message is due, as nats.c buffers publishes and flushes them.
using WsClient = websocket::stream<sluice::relay::CoalescingSocket>;

sluice::relay::CoalescingSocket::Options viewer_socket() {
  sluice::relay::CoalescingSocket::Options o;
  o.read_ahead = 64 * 1024;
  return o;
}

// A WebSocket client connected and upgraded (nullptr if that failed): wss:// with the
// security's CA (the TLS session under the same socket layer), its token in the request.
std::unique_ptr<WsClient> ws_connect(boost::asio::io_context& io,
                                     const sluice::relay::CoalescingSocket::Options& options,
                                     std::uint16_t port, const std::string& target,
                                     const Security& security, boost::asio::ssl::context* tls) {
  boost::beast::error_code ec;
  sluice::relay::Connection c{boost::asio::ip::tcp::socket(io), nullptr};
  c.socket.connect({boost::asio::ip::make_address("127.0.0.1"), port}, ec);
  // As the NATS and gRPC clients do: small messages leave at once (no Nagle delay).
  if (!ec) c.socket.set_option(boost::asio::ip::tcp::no_delay(true), ec);
  if (!ec && tls != nullptr) {
    c.tls = std::make_unique<sluice::relay::TlsStream>(c.socket, *tls);
    c.tls->handshake(boost::asio::ssl::stream_base::client, ec);
  }
  if (ec) return nullptr;
  auto ws = std::make_unique<WsClient>(std::move(c), options);
  if (!security.token.empty()) {
    ws->set_option(
        websocket::stream_base::decorator([t = security.token](websocket::request_type& req) {
          req.set(boost::beast::http::field::authorization, "Bearer " + t);
        }));
  }
  ws->handshake("127.0.0.1", target, ec);
  return ec ? nullptr : std::move(ws);
}

// The client's TLS context for `security` (nullptr: plaintext).
std::unique_ptr<boost::asio::ssl::context> ws_tls(const Security& security) {
  if (security.tls.ca_file.empty()) return nullptr;
  auto ctx = std::make_unique<boost::asio::ssl::context>(boost::asio::ssl::context::tls_client);
  ctx->load_verify_file(security.tls.ca_file);
  ctx->set_verify_mode(boost::asio::ssl::verify_peer);
  return ctx;
}

Result run_sluice_ws(std::uint16_t port, const Workload& w, int run,
                     const Security& security = {}) {
  std::string topic = "bench.ws.";
  topic.append(std::to_string(run));
  Sink sink;
  Result failed;
  std::vector<std::unique_ptr<boost::asio::io_context>> ios;
  std::vector<std::unique_ptr<WsClient>> viewers;
  const auto tls = ws_tls(security);
  for (int i = 0; i < kSubscribers; ++i) {
    ios.push_back(std::make_unique<boost::asio::io_context>());
    std::string target = "/v1/ws/subscribe/" + topic + "?name=v";
    target.append(std::to_string(i));
    viewers.push_back(ws_connect(*ios.back(), viewer_socket(), port, target, security, tls.get()));
    if (!viewers.back()) {
      failed.error = "cannot subscribe over WebSocket";
      return failed;
    }
    viewers.back()->read_message_max(0);
  }
  std::vector<std::thread> readers;
  for (auto& v : viewers) {
    readers.emplace_back([&sink, &w, ws = v.get()] {
      boost::beast::flat_buffer b;
      for (std::uint64_t n = 0; n < w.count;) {
        boost::beast::error_code ec;
        b.clear();
        ws->read(b, ec);
        if (ec) return;
        if (ws->got_text() || b.size() < sluice::ws::kFrameHeaderBytes)
          continue;  // gap notices (none on lossless)
        sink.got(b.size() - sluice::ws::kFrameHeaderBytes,
                 sluice::ws::decode(b.data().data()).timestamp_ns);
        ++n;
      }
    });
  }
  boost::asio::io_context pub_io;
  auto publisher = ws_connect(pub_io, {}, port, "/v1/ws/publish/" + topic, security, tls.get());
  if (!publisher) {
    failed.error = "cannot publish over WebSocket";
    for (auto& v : viewers) boost::beast::get_lowest_layer(*v).close();
    for (auto& t : readers) t.join();
    return failed;
  }
  WsClient& pub = *publisher;
  pub.binary(true);
  pub.next_layer().sync_batch(true);
  std::string frame(sluice::ws::kFrameHeaderBytes + w.size, 'p');
  // One WebSocket frame per message (Beast's default: 4 KiB frames), masked into a buffer that
  // holds all of it, so that it leaves in one system call as nats.c writes a large payload.
  pub.auto_fragment(false);
  pub.write_buffer_bytes(std::max<std::size_t>(64 * 1024, frame.size() + 14));
  const std::int64_t start = now_ns();
  boost::beast::error_code ec;
  for (std::uint64_t i = 0; i < w.count && !ec; ++i) {
    pace(w, start, i);
    const auto header = sluice::ws::encode({i, now_ns()});
    std::memcpy(frame.data(), header.data(), header.size());
    pub.write(boost::asio::buffer(frame), ec);
    if (w.rate > 0 && !ec) pub.next_layer().flush(ec);  // paced: each message is due now
  }
  if (!ec) pub.next_layer().flush(ec);
  Result r = finish(sink, w, start);
  if (ec) r.error = ec.message();
  pub.close(websocket::close_code::normal, ec);
  for (auto& v : viewers) {  // unblocks a reader still waiting (only if something was lost)
    boost::beast::get_lowest_layer(*v).shutdown(boost::asio::ip::tcp::socket::shutdown_both, ec);
  }
  for (auto& t : readers) t.join();
  return r;
}

// ---- The machine's floor: no relay, plain blocking threads ----

// A connected loopback TCP pair, Nagle off on both ends; false if the system refused.
bool tcp_pair(int& a, int& b) {
  const int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  a = socket(AF_INET, SOCK_STREAM, 0);
  const bool ok = listener >= 0 && a >= 0 &&
                  bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  listen(listener, 1) == 0 &&
                  getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
                  connect(a, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                  (b = accept(listener, nullptr, nullptr)) >= 0;
  if (listener >= 0) close(listener);
  const int one = 1;
  if (ok) {
    setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return ok;
}

// All `n` bytes at `p` through `call` (read or write), however many calls it takes.
template <class Call, class Bytes>
bool transfer_all(Call call, int fd, Bytes* p, std::size_t n) {
  while (n > 0) {
    const ssize_t r = call(fd, p, n);
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}
bool read_all(int fd, char* p, std::size_t n) {
  return transfer_all(::read, fd, p, n);
}
bool write_all(int fd, const char* p, std::size_t n) {
  return transfer_all(::write, fd, p, n);
}

// What any relay of this pattern costs here at the least: a publisher thread writes each frame
// (16-byte header + payload) in one system call over loopback TCP to a forwarder thread, which
// reads the whole frame and writes it to 3 reader threads' sockets, one after the other;
// blocking calls, no event loop, no protocol, no queue. A relay's latency can approach this
// figure, not beat it: the same copies through the same kernel on the same 2 CPUs.
Result run_floor(const Workload& w) {
  Sink sink;
  Result failed;
  const std::size_t frame = sluice::ws::kFrameHeaderBytes + w.size;
  int in_w = -1;
  int in_r = -1;
  std::array<int, kSubscribers> out_w{};
  std::array<int, kSubscribers> out_r{};
  out_w.fill(-1);
  out_r.fill(-1);
  bool ok = tcp_pair(in_w, in_r);
  for (int i = 0; ok && i < kSubscribers; ++i) ok = tcp_pair(out_w[i], out_r[i]);
  const auto close_all = [&] {
    for (int fd : {in_w, in_r}) {
      if (fd >= 0) close(fd);
    }
    for (int i = 0; i < kSubscribers; ++i) {
      if (out_w[i] >= 0) close(out_w[i]);
      if (out_r[i] >= 0) close(out_r[i]);
    }
  };
  if (!ok) {
    close_all();
    failed.error = "cannot connect loopback sockets";
    return failed;
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < kSubscribers; ++i) {
    threads.emplace_back([&sink, &w, frame, fd = out_r[i]] {
      std::vector<char> b(frame);
      for (std::uint64_t n = 0; n < w.count && read_all(fd, b.data(), frame); ++n)
        sink.got(w.size, sluice::ws::decode(b.data()).timestamp_ns);
    });
  }
  threads.emplace_back([&w, frame, in_r, &out_w] {
    std::vector<char> b(frame);
    for (std::uint64_t n = 0; n < w.count && read_all(in_r, b.data(), frame); ++n) {
      for (int fd : out_w) write_all(fd, b.data(), frame);
    }
  });
  std::vector<char> f(frame, 'p');
  const std::int64_t start = now_ns();
  for (std::uint64_t i = 0; i < w.count; ++i) {
    pace(w, start, i);
    const auto header = sluice::ws::encode({i, now_ns()});
    std::memcpy(f.data(), header.data(), header.size());
    if (!write_all(in_w, f.data(), frame)) break;
  }
  Result r = finish(sink, w, start);
  for (int fd : out_w) shutdown(fd, SHUT_RDWR);  // unblocks a reader still waiting
  shutdown(in_r, SHUT_RDWR);
  for (auto& t : threads) t.join();
  close_all();
  return r;
}

// ---- NATS: nats-server as a child process, nats.c ----

void on_nats_msg(natsConnection* /*nc*/, natsSubscription* /*sub*/, natsMsg* msg, void* closure) {
  auto* sink = static_cast<Sink*>(closure);
  std::int64_t stamp = 0;
  const int len = natsMsg_GetDataLength(msg);
  if (len >= static_cast<int>(sizeof stamp))
    std::memcpy(&stamp, natsMsg_GetData(msg), sizeof stamp);
  sink->got(static_cast<std::size_t>(len), stamp);
  natsMsg_Destroy(msg);
}

Result run_nats(const NatsServer& server, const Workload& w, int run) {
  const std::string& url = server.url();
  const std::string subject = "bench." + std::to_string(run);
  Sink sink;
  Result failed;
  std::vector<natsConnection*> conns(kSubscribers, nullptr);
  std::vector<natsSubscription*> subs(kSubscribers, nullptr);
  for (int i = 0; i < kSubscribers; ++i) {
    if (nats_connect(&conns[i], url, server.ca()) != NATS_OK ||
        natsConnection_Subscribe(&subs[i], conns[i], subject.c_str(), on_nats_msg, &sink) !=
            NATS_OK) {
      failed.error = "cannot subscribe";
      return failed;
    }
    natsSubscription_SetPendingLimits(subs[i], 10'000'000, 2'000'000'000);
    natsConnection_Flush(conns[i]);  // the server has the subscription
  }
  natsConnection* pub = nullptr;
  if (nats_connect(&pub, url, server.ca()) != NATS_OK) {
    failed.error = "cannot connect the publisher";
    return failed;
  }
  std::string payload(w.size, 'p');
  const std::int64_t start = now_ns();
  for (std::uint64_t i = 0; i < w.count; ++i) {
    pace(w, start, i);
    const std::int64_t stamp = now_ns();
    std::memcpy(payload.data(), &stamp, std::min(sizeof stamp, payload.size()));
    natsConnection_Publish(pub, subject.c_str(), payload.data(), static_cast<int>(payload.size()));
  }
  natsConnection_Flush(pub);
  Result r = finish(sink, w, start);
  for (int i = 0; i < kSubscribers; ++i) {
    natsSubscription_Unsubscribe(subs[i]);
    natsSubscription_Destroy(subs[i]);
    natsConnection_Destroy(conns[i]);
  }
  natsConnection_Destroy(pub);
  return r;
}

Result skipped() {
  Result r;
  r.ran = false;
  return r;
}

// Runs one system's workload and charges it the CPU time used meanwhile.
template <class Run>
Result charged(Run run) {
  const double before = cpu_seconds();
  Result r = run();
  r.cpu = cpu_seconds() - before;
  return r;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// "1.23x", or why there is no ratio (a system left out, or a run that measured nothing).
std::string times(double num, double den) {
  if (num <= 0 || den <= 0) return "none (nothing measured)";
  char text[32];
  std::snprintf(text, sizeof text, "%.2fx", num / den);
  return text;
}

// One system's results over the repetitions of a workload (each repetition runs every system
// once, in turn; the order rotates so that none always goes first).
struct Runs {
  std::vector<Result> each;

  bool ran() const { return !each.empty() && each.front().ran; }
  template <class F>
  std::vector<double> values(F f) const {
    std::vector<double> v;
    for (const Result& r : each) v.push_back(f(r));
    return v;
  }
  double mb_per_s() const {
    return median(values([](const Result& r) { return r.mb_per_s(); }));
  }
  double cpu() const {
    return median(values([](const Result& r) { return r.cpu; }));
  }
  std::uint64_t delivered() const {
    std::uint64_t n = 0;
    for (const Result& r : each) n += r.delivered;
    return n;
  }
  std::uint64_t lost() const {
    std::uint64_t n = 0;
    for (const Result& r : each) n += r.lost;
    return n;
  }
  std::string error() const {
    for (const Result& r : each) {
      if (!r.error.empty()) return "  error: " + r.error;
    }
    return "";
  }
  // Every repetition's samples together.
  HistogramSnapshot latency() const {
    HistogramSnapshot all;
    for (const Result& r : each) all.merge(r.latency);
    return all;
  }
  double p99() const { return static_cast<double>(latency().percentile(0.99)); }
};

// "a b c" with `digits` decimals.
std::string listed(const std::vector<double>& v, int digits) {
  std::string out;
  for (double x : v) {
    char text[32];
    std::snprintf(text, sizeof text, "%s%.*f", out.empty() ? "" : " ", digits, x);
    out += text;
  }
  return out;
}

// Throughput against NATS: the median of the repetitions' ratios (each measured close in time
// to its own NATS run), and each of them.
std::string throughput_ratio(const Runs& sluice, const Runs& nats) {
  if (!nats.ran()) return "(NATS not run)";
  std::vector<double> each;
  for (std::size_t i = 0; i < sluice.each.size() && i < nats.each.size(); ++i) {
    const double n = nats.each[i].mb_per_s();
    each.push_back(n > 0 ? sluice.each[i].mb_per_s() / n : 0.0);
  }
  return "ratio " + times(median(each), 1.0) + " (runs " + listed(each, 2) + ")";
}

void print_throughput(const char* who, const Runs& r, const Runs& nats, std::size_t item_size) {
  if (!r.ran()) {
    std::printf("      %-22s (not run: --only)\n", who);
    return;
  }
  const bool peer = &r == &nats;  // (NATS itself: no ratio)
  // Small items: what counts is messages (the same ratio).
  char msgs[48] = "";
  if (item_size < 1024) {
    std::snprintf(msgs, sizeof msgs, " (%.2f M msgs/s)",
                  r.mb_per_s() / static_cast<double>(item_size));
  }
  std::printf("      %-22s %8.1f MB/s%s  CPU %.2f s   runs %s MB/s%s%s%s\n", who, r.mb_per_s(),
              msgs, r.cpu(),
              listed(r.values([](const Result& x) { return x.mb_per_s(); }), 1).c_str(),
              peer ? "" : "   ", peer ? "" : throughput_ratio(r, nats).c_str(),
              (r.lost() > 0 ? "  LOST " + std::to_string(r.lost()) : std::string()).c_str());
  if (const std::string e = r.error(); !e.empty()) std::printf("      %s\n", e.c_str());
}

void print_latency(const char* who, const Runs& r) {
  if (!r.ran()) {
    std::printf("      %-22s (not run: --only)\n", who);
    return;
  }
  const HistogramSnapshot l = r.latency();
  std::printf(
      "      %-22s p50 %8.1f us  p99 %8.1f us  max %8.1f us  (%llu received, %llu lost; CPU %.2f "
      "s per run; p99 per run %s ms)%s\n",
      who, static_cast<double>(l.percentile(0.5)) / 1e3,
      static_cast<double>(l.percentile(0.99)) / 1e3, static_cast<double>(l.max()) / 1e3,
      static_cast<unsigned long long>(r.delivered()), static_cast<unsigned long long>(r.lost()),
      r.cpu(),
      listed(r.values([](const Result& x) {
        return static_cast<double>(x.latency.percentile(0.99)) / 1e6;
      }),
             2)
          .c_str(),
      r.error().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  bool secure = false;   // --secure: each system also over TLS (Sluice: and with a token)
  std::string only;      // --only=nats,grpc,ws,r1,r2 (default: all)
  unsigned threads = 0;  // --threads=N: the relay's server.threads (0: one per core)
  int repeat = 3;        // --runs=N: repetitions of each workload (--quick: 1)
  bool repeat_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      quick = true;
    } else if (a == "--secure") {
      secure = true;
    } else if (a.rfind("--only=", 0) == 0) {
      only = a.substr(7);
    } else if (a.rfind("--threads=", 0) == 0) {
      threads = static_cast<unsigned>(std::stoul(a.substr(10)));
    } else if (a.rfind("--runs=", 0) == 0) {
      repeat = std::max(1, std::stoi(a.substr(7)));
      repeat_set = true;
    } else {
      std::printf(
          "usage: %s [--quick] [--secure] [--only=nats,grpc,ws,floor,r1,r2] [--threads=N] "
          "[--runs=N]\n",
          argv[0]);
      return 2;
    }
  }
  // --only names systems (nats, grpc, ws, floor) and may name workloads (r1, r2): those run.
  const auto named = [&only](std::initializer_list<const char*> names) {
    return std::any_of(names.begin(), names.end(),
                       [&only](const char* x) { return only.find(x) != std::string::npos; });
  };
  const auto runs = [&](const char* who) {
    return !named({"nats", "grpc", "ws", "floor"}) || named({who});
  };
  const auto workload = [&](const char* id) { return !named({"r1", "r2"}) || named({id}); };
  if (quick && !repeat_set) repeat = 1;

  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  signal(SIGPIPE, SIG_IGN);
  alarm(600);  // a benchmark that hangs ends, loudly, instead of holding the machine

  sluice::RelayConfig config;
  config.grpc_port = 0;
  config.http_port = 0;
  config.threads = threads;
  config.log_level = "warn";  // (no session lines between the figures)
  sluice::RelayServer relay(config);
  relay.start();
  const std::string target = "127.0.0.1:" + std::to_string(relay.grpc_port());

  // --secure: a second relay with TLS on both ports and a principal's token, and a second
  // nats-server with TLS, whose costs are then measured against their plaintext selves in the
  // same run (certificates made now).
  std::optional<sluice::RelayServer> secure_relay;
  std::string secure_target;
  Security security;
  std::string certs;
  if (secure) {
    char dir[] = "/tmp/sluice_bench_tls_XXXXXX";
    certs = mkdtemp(dir);
    if (std::system(
            (sluice::testing::source_dir() + "/scripts/make-test-certs.sh " + certs).c_str()) !=
        0) {
      std::printf("could not make certificates (is openssl installed?)\n");
      return 1;
    }
    sluice::RelayConfig sc = config;
    sc.tls_cert_file = certs + "/relay.pem";
    sc.tls_key_file = certs + "/relay.key";
    sluice::PrincipalConfig bench;
    bench.name = "bench";
    bench.token_sha256 = sluice::token_sha256("bench-token");
    bench.publish = {">"};
    bench.subscribe = {">"};
    sc.principals.push_back(bench);
    secure_relay.emplace(sc);
    secure_relay->start();
    secure_target = "127.0.0.1:" + std::to_string(secure_relay->grpc_port());
    security.token = "bench-token";
    security.tls.ca_file = certs + "/ca.pem";
  }

  NatsServer nats;
  std::optional<NatsServer> nats_tls;
  if (secure) nats_tls.emplace(certs + "/relay.pem", certs + "/relay.key", certs + "/ca.pem");
  if (!nats.ready() || (nats_tls && !nats_tls->ready())) {
    std::printf("nats-server did not start (is the nats-server package installed?)\n");
    return 1;
  }
  g_nats_pids.push_back(nats.pid());
  if (nats_tls) g_nats_pids.push_back(nats_tls->pid());
  std::printf(
      "Relay benchmarks: Sluice relay (gRPC, in-process, %s) vs nats-server (%s), %d "
      "subscribers%s%s\n\n",
      target.c_str(), nats.url().c_str(), kSubscribers, quick ? ", --quick" : "",
      secure ? ", --secure: each also over TLS (Sluice: with a token)" : "");

  // The systems of this run, in the order printed; the first, NATS, is the peer of the ratios.
  // With --secure each is followed by itself over TLS.
  struct System {
    std::string name;
    const char* family;  // what --only names
    std::function<Result(const Workload&)> run;
    int plain = -1;  // a TLS system: its plaintext self (for the cost of TLS)
    bool floor = false;
  };
  int run = 0;
  std::vector<System> systems;
  systems.push_back({"NATS", "nats", [&](const Workload& w) { return run_nats(nats, w, ++run); }});
  if (secure) {
    systems.push_back(
        {"NATS TLS", "nats", [&](const Workload& w) { return run_nats(*nats_tls, w, ++run); }, 0});
  }
  const int grpc_at = static_cast<int>(systems.size());
  systems.push_back(
      {"Sluice gRPC", "grpc", [&](const Workload& w) { return run_sluice(target, w, ++run); }});
  if (secure) {
    systems.push_back(
        {"Sluice gRPC TLS+token", "grpc",
         [&](const Workload& w) { return run_sluice(secure_target, w, ++run, security); },
         grpc_at});
  }
  const int ws_at = static_cast<int>(systems.size());
  systems.push_back({"Sluice WebSocket", "ws", [&](const Workload& w) {
                       return run_sluice_ws(relay.http_port(), w, ++run);
                     }});
  if (secure) {
    systems.push_back({"Sluice wss+token", "ws",
                       [&](const Workload& w) {
                         return run_sluice_ws(secure_relay->http_port(), w, ++run, security);
                       },
                       ws_at});
  }
  systems.push_back({"floor", "floor", [](const Workload& w) { return run_floor(w); }, -1, true});

  // A workload `repeat` times against each system (those --only names), the systems in turn,
  // starting with a different one each time.
  const auto run_all = [&](const Workload& w, bool with_floor) {
    const std::size_t n = systems.size();
    std::vector<Runs> r(n);
    for (int rep = 0; rep < repeat; ++rep) {
      for (std::size_t k = 0; k < n; ++k) {
        const std::size_t who = (k + static_cast<std::size_t>(rep)) % n;
        const System& sys = systems[who];
        const bool on = runs(sys.family) && (with_floor || !sys.floor);
        r[who].each.push_back(on ? charged([&] { return sys.run(w); }) : skipped());
      }
    }
    return r;
  };
  // With --secure: what TLS (and the token) cost each system, against its plaintext self.
  const auto tls_costs = [&](const std::vector<Runs>& r, const char* what, auto measure) {
    for (std::size_t i = 0; i < systems.size(); ++i) {
      const int p = systems[i].plain;
      if (p < 0 || !r[i].ran() || !r[static_cast<std::size_t>(p)].ran()) continue;
      std::printf("      %s over %s: %s %s\n", systems[i].name.c_str(),
                  systems[static_cast<std::size_t>(p)].name.c_str(),
                  times(measure(r[i]), measure(r[static_cast<std::size_t>(p)])).c_str(), what);
    }
  };
  const std::uint64_t scale = quick ? 4 : 1;
  if (workload("r1")) {
    std::printf(
        "R1  1 publisher -> %d subscribers, as fast as possible; delivered MB/s in total (median "
        "of %d run%s)%s\n",
        kSubscribers, repeat, repeat == 1 ? "" : "s",
        secure ? "; ratios of the TLS rows against NATS TLS" : "");
    for (const Workload& w :
         {Workload{"16 B", 16, 2'000'000 / scale, 0}, Workload{"1 KiB", 1024, 200'000 / scale, 0},
          Workload{"1 MiB", 1 << 20, 400 / scale, 0}}) {
      std::printf("  %s x %llu\n", w.name, static_cast<unsigned long long>(w.count));
      const auto r = run_all(w, false);
      for (std::size_t i = 0; i < systems.size(); ++i) {
        const Runs& peer = systems[i].plain >= 0 ? r[1] : r[0];  // (TLS: against NATS TLS)
        if (!systems[i].floor) print_throughput(systems[i].name.c_str(), r[i], peer, w.size);
      }
      tls_costs(r, "of the throughput", [](const Runs& x) { return x.mb_per_s(); });
    }
  }
  if (workload("r2")) {
    std::printf(
        "\nR2  paced, %d subscribers; publish -> receive latency (%d run%s, samples pooled)\n",
        kSubscribers, repeat, repeat == 1 ? "" : "s");
    for (const Workload& w : {Workload{"30 fps x 1 MiB", 1 << 20, quick ? 30U : 90U, 30},
                              Workload{"10000/s x 64 B", 64, 20'000 / scale, 10'000}}) {
      std::printf("  %s (%llu messages a run)\n", w.name, static_cast<unsigned long long>(w.count));
      const auto r = run_all(w, true);
      for (std::size_t i = 0; i < systems.size(); ++i) print_latency(systems[i].name.c_str(), r[i]);
      tls_costs(r, "the p99", [](const Runs& x) { return x.p99(); });
      const auto of = [](const Runs& a, const Runs& b) {
        return a.ran() && b.ran() ? times(a.p99(), b.p99()) : std::string("not run");
      };
      const Runs& floor = r.back();
      for (std::size_t i = 1; i + 1 < systems.size(); ++i) {
        if (!r[i].ran() || std::string_view(systems[i].family) == "nats") continue;
        // (over TLS against NATS over TLS)
        std::printf("      p99 ratio %s/%s: %s (above 1: Sluice is faster)%s%s\n",
                    systems[i].plain >= 0 ? "NATS TLS" : "NATS", systems[i].name.c_str(),
                    of(r[systems[i].plain >= 0 ? 1 : 0], r[i]).c_str(),
                    floor.ran() ? "; over the floor's (no relay, plain threads): " : "",
                    floor.ran() ? of(r[i], floor).c_str() : "");
      }
    }
  }
  relay.shutdown();
  if (secure_relay) secure_relay->shutdown();
  nats_Close();
  return 0;
}

// R7 (docs/benchmarks.md): one producer → 3 relays × 10 subscribers each, over a 3-node NATS
// cluster (nats-server child processes, routes on loopback), against NATS alone (30 nats.c
// subscribers, 10 on each node, the producer on node 0). Real-time cluster topics (core NATS).
// For 1 KiB and 1 MiB items: delivered bytes/s (all subscribers), p50/p99 publish→receive
// latency (the producer's stamp, Unix clock, one host), and what NATS carried: bytes the NATS
// servers sent (routes and clients, from /varz) per item published. "one relay" is the same 30
// gRPC subscribers on a single relay without NATS: what this machine's gRPC fan-out delivers
// alone, the ceiling for Sluice over NATS here. Each size is sent as fast as
// the producer can (a burst) and then paced (a rate both sides should sustain: what each loses
// at a steady rate, and its latency then).
//
// Run: make bench-cluster (or ./build/bench/sluice_cluster_bench).
#include <arpa/inet.h>
#include <nats/nats.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "peers/nats_cluster.hpp"
#include "sluice/client/client.hpp"
#include "sluice/relay/protocol.hpp"
#include "sluice/relay/server.hpp"

namespace {

using namespace std::chrono_literals;
using sluice::bench::NatsCluster;

constexpr std::size_t kRelays = 3;
constexpr std::size_t kPerRelay = 10;

// out_bytes summed over the cluster's /varz (what every server sent: to clients and routes).
double nats_out_bytes(const NatsCluster& nats) {
  double total = 0;
  for (std::size_t i = 0; i < nats.size(); ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(nats.monitor_port(i));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      close(fd);
      continue;
    }
    const std::string req = "GET /varz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    (void)!write(fd, req.data(), req.size());
    std::string body;
    char buf[4096];
    for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;)
      body.append(buf, static_cast<std::size_t>(n));
    close(fd);
    const auto at = body.find("\"out_bytes\":");
    if (at != std::string::npos) total += std::strtod(body.c_str() + at + 12, nullptr);
  }
  return total;
}

struct Result {
  double mb_per_s = 0;  // delivered, all subscribers
  double p50_us = 0;
  double p99_us = 0;
  double delivered = 0;      // fraction of published × subscribers
  double wire_per_item = 0;  // NATS bytes sent per item published, in payloads
};

double percentile(std::vector<std::int64_t>& v, double q) {
  if (v.empty()) return 0;
  const auto k = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return static_cast<double>(v[k]) / 1000.0;
}

// Latencies and bytes from many receiving threads.
struct Collector {
  std::mutex mu;
  std::vector<std::int64_t> latency_ns;
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::uint64_t> items{0};
  void add(std::int64_t stamp, std::size_t size) {
    const std::int64_t lat = sluice::unix_now_ns() - stamp;
    bytes += size;
    ++items;
    const std::lock_guard lock(mu);
    latency_ns.push_back(lat);
  }
};

// Waits until every subscriber has what it will get (nothing new for 300 ms); the seconds from
// `t0` to the last delivery.
double wait_quiet(const Collector& c, std::chrono::steady_clock::time_point t0) {
  for (std::uint64_t last = ~0ULL; last != c.items.load();) {
    last = c.items.load();
    std::this_thread::sleep_for(300ms);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - 0.3;
}

Result finish(Collector& c, std::uint64_t items, std::size_t size, double seconds,
              double wire_bytes) {
  Result r;
  r.mb_per_s = static_cast<double>(c.bytes) / seconds / 1e6;
  r.p50_us = percentile(c.latency_ns, 0.5);
  r.p99_us = percentile(c.latency_ns, 0.99);
  r.delivered = static_cast<double>(c.items) / static_cast<double>(items * kRelays * kPerRelay);
  r.wire_per_item = wire_bytes / static_cast<double>(items) / static_cast<double>(size);
  return r;
}

// The producer's pace: item i leaves at t0 + i × interval (zero: as fast as it can).
void pace(std::chrono::steady_clock::time_point t0, std::uint64_t i,
          std::chrono::nanoseconds interval) {
  if (interval.count() > 0)
    std::this_thread::sleep_until(t0 + interval * static_cast<std::int64_t>(i));
}

// Sluice: three relays over the NATS cluster, or (`one_relay`) the same 30 subscribers on one
// relay without NATS — the machine's floor for this fan-out over gRPC, measured in the same run.
Result run_sluice(std::uint64_t items, std::size_t size, std::chrono::nanoseconds interval,
                  bool one_relay = false) {
  std::optional<NatsCluster> nats;
  if (!one_relay) nats.emplace(3);
  std::vector<std::unique_ptr<sluice::RelayServer>> relays;
  for (std::size_t i = 0; i < (one_relay ? 1 : kRelays); ++i) {
    sluice::RelayConfig c;
    c.grpc_port = 0;
    c.http_port = 0;
    c.log_level = "warn";
    if (nats) c.nats.urls = {nats->url(i)};
    sluice::TopicConfig t;
    t.name = "r7";
    t.mode = sluice::TopicMode::realtime;
    t.scope = one_relay ? sluice::TopicScope::local : sluice::TopicScope::cluster;
    t.depth = 64;
    c.topics.push_back(t);
    relays.push_back(std::make_unique<sluice::RelayServer>(c));
    relays.back()->start();
  }
  Collector col;
  std::vector<std::unique_ptr<sluice::client::Subscriber>> subs;
  std::vector<std::thread> readers;
  for (std::size_t r = 0; r < kRelays; ++r) {
    for (std::size_t k = 0; k < kPerRelay; ++k) {
      sluice::client::SubscriberOptions o;
      o.target = "127.0.0.1:" + std::to_string(relays[one_relay ? 0 : r]->grpc_port());
      o.topic = "r7";
      o.name = "s" + std::to_string(r) + "-" + std::to_string(k);
      o.depth = 64;
      subs.push_back(std::make_unique<sluice::client::Subscriber>(o));
      auto* s = subs.back().get();
      readers.emplace_back([s, &col] {
        sluice::client::SubscriberEvent e;
        while (s->next(e)) {
          if (e.kind == sluice::client::SubscriberEvent::Kind::item)
            col.add(e.timestamp_ns, e.payload.size());
        }
      });
    }
  }
  std::this_thread::sleep_for(1500ms);  // (the bridges subscribe; NATS spreads the interest)
  const double wire0 = nats ? nats_out_bytes(*nats) : 0;
  sluice::client::PublisherOptions po;
  po.target = "127.0.0.1:" + std::to_string(relays[0]->grpc_port());
  po.topic = "r7";
  const auto t0 = std::chrono::steady_clock::now();
  {
    sluice::client::Publisher pub(po);
    const std::string payload(size, 'p');
    for (std::uint64_t i = 0; i < items; ++i) {
      pace(t0, i, interval);
      (void)pub.publish(sluice::Buffer::copy(payload));
    }
    (void)pub.close();
  }
  const double seconds = wait_quiet(col, t0);
  const double wire = nats ? nats_out_bytes(*nats) - wire0 : 0;
  for (auto& s : subs) s->cancel();
  for (auto& t : readers) t.join();
  return finish(col, items, size, seconds, wire);
}

void on_nats_msg(natsConnection* /*nc*/, natsSubscription* /*sub*/, natsMsg* msg, void* closure) {
  auto* col = static_cast<Collector*>(closure);
  std::int64_t stamp = 0;
  if (natsMsg_GetDataLength(msg) >= 8) std::memcpy(&stamp, natsMsg_GetData(msg), 8);
  col->add(stamp, static_cast<std::size_t>(natsMsg_GetDataLength(msg)));
  natsMsg_Destroy(msg);
}

Result run_nats(std::uint64_t items, std::size_t size, std::chrono::nanoseconds interval) {
  NatsCluster nats(3);
  Collector col;
  std::vector<natsConnection*> conns;
  std::vector<natsSubscription*> subs;
  for (std::size_t r = 0; r < kRelays; ++r) {
    for (std::size_t k = 0; k < kPerRelay; ++k) {
      natsConnection* nc = nullptr;
      natsSubscription* sub = nullptr;
      natsConnection_ConnectTo(&nc, nats.url(r).c_str());
      natsConnection_Subscribe(&sub, nc, "r7", on_nats_msg, &col);
      // (as roomy as the server's own limit: a subscriber behind is cut off by NATS, counted)
      natsSubscription_SetPendingLimits(sub, 65536, 256 << 20);
      natsConnection_Flush(nc);
      conns.push_back(nc);
      subs.push_back(sub);
    }
  }
  std::this_thread::sleep_for(1500ms);
  const double wire0 = nats_out_bytes(nats);
  natsConnection* pub = nullptr;
  natsConnection_ConnectTo(&pub, nats.url(0).c_str());
  std::string payload(size, 'p');
  const auto t0 = std::chrono::steady_clock::now();
  for (std::uint64_t i = 0; i < items; ++i) {
    pace(t0, i, interval);
    const std::int64_t now = sluice::unix_now_ns();
    std::memcpy(payload.data(), &now, 8);
    natsConnection_Publish(pub, "r7", payload.data(), static_cast<int>(payload.size()));
  }
  natsConnection_Flush(pub);
  const double seconds = wait_quiet(col, t0);
  const double wire = nats_out_bytes(nats) - wire0;
  for (auto* s : subs) natsSubscription_Destroy(s);
  for (auto* c : conns) natsConnection_Destroy(c);
  natsConnection_Destroy(pub);
  return finish(col, items, size, seconds, wire);
}

void print(const char* who, const Result& r) {
  std::printf(
      "    %-12s %9.1f MB/s delivered  p50 %9.1f us  p99 %9.1f us  delivered %5.1f %%  "
      "NATS sent %.2f payloads per item\n",
      who, r.mb_per_s, r.p50_us, r.p99_us, 100 * r.delivered, r.wire_per_item);
}

}  // namespace

int main() {
  std::printf(
      "R7: 1 producer -> 3 relays x 10 subscribers (real-time cluster topic) vs NATS alone "
      "(30 subscribers, 10 per node); 3-node NATS cluster on loopback\n");
  struct Case {
    std::size_t size;
    std::uint64_t items;
    std::uint64_t per_second;  // 0: unpaced
  };
  for (const Case c : {Case{1024, 20000, 0}, Case{1024, 20000, 10000}, Case{1 << 20, 200, 0},
                       Case{1 << 20, 150, 30}}) {
    std::printf(
        "  %zu B x %llu items, %s\n", c.size, static_cast<unsigned long long>(c.items),
        c.per_second == 0 ? "unpaced" : (std::to_string(c.per_second) + " per second").c_str());
    const std::chrono::nanoseconds interval{c.per_second == 0 ? 0 : 1'000'000'000 / c.per_second};
    const Result n = run_nats(c.items, c.size, interval);
    const Result s = run_sluice(c.items, c.size, interval);
    const Result one = run_sluice(c.items, c.size, interval, true);
    print("NATS alone", n);
    print("Sluice", s);
    print("one relay", one);
    std::printf(
        "    ratio (Sluice / NATS): throughput %.2fx, p99 %.2fx, NATS bytes per item %.2fx\n",
        n.mb_per_s > 0 ? s.mb_per_s / n.mb_per_s : 0, n.p99_us > 0 ? s.p99_us / n.p99_us : 0,
        n.wire_per_item > 0 ? s.wire_per_item / n.wire_per_item : 0);
    std::printf("    Sluice over NATS / one relay without it (the gRPC fan-out's floor): %.2fx\n",
                one.mb_per_s > 0 ? s.mb_per_s / one.mb_per_s : 0);
  }
  nats_Close();
  return 0;
}

// Broadcast benchmarks B1-B3 (see docs/benchmarks.md), peers measured in the same run.
//
//   make bench-broadcast        (or ./build/bench/sluice_broadcast_bench [--quick])
//
// B1  1 publisher -> 1, 3, 8 subscribers, uint64_t items, as fast as possible.
//     Sluice lossless (capacity 1024, depth 1024) against: the same ring in lossy mode (what
//     it delivers and what it drops), and a mutex + condition-variable deque per subscriber
//     (bounded to 1024, lossless), the fan-out everyone writes first. Delivered msg/s in total.
// B2  3 subscribers, depth 4, publish->receive latency: (a) 30 fps x 1 MiB, (b) 10,000 msg/s
//     x 64 B, 3 s each. Reference in the same run: the platform's wake-up latency (a
//     condition variable's notify_all to three parked threads), the floor for any receiver
//     that parks between items.
// B3  30 fps x 1 MiB, depth 4, K = 1, 3, 8, 32 subscribers, 10 s each, each K in a fresh
//     child process: peak RSS per K and the spread across K (payload stored once).
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "peers/mutex_deque.hpp"
#include "sluice/broadcast.hpp"
#include "sluice/buffer.hpp"
#include "sluice/histogram.hpp"

namespace {

using namespace std::chrono;
using sluice::Broadcast;
using sluice::BroadcastConfig;
using sluice::BroadcastMode;
using sluice::Buffer;
using sluice::RecvStatus;

bool g_quick = false;

// (Built with append, not "s" + to_string(i): GCC 12 -O2 warns falsely (-Wrestrict) on that.)
std::string subscriber_name(int i) {
  std::string name = "s";
  name.append(std::to_string(i));
  return name;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::int64_t now_ns() {
  return duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count();
}

// ---------------------------------------------------------------------------- B1

struct Delivery {
  double delivered_per_s = 0;
  double dropped_fraction = 0;
};

Delivery sluice_fanout(int subscribers, BroadcastMode mode, std::uint64_t items) {
  BroadcastConfig c;
  c.name = "b1";
  c.mode = mode;
  c.capacity = 1024;
  c.default_depth = 1024;
  c.latency = sluice::LatencySampling::off;
  Broadcast<std::uint64_t> b(c);
  std::vector<sluice::Subscription<std::uint64_t>> subs;
  for (int i = 0; i < subscribers; ++i) subs.push_back(b.subscribe(subscriber_name(i)));
  std::vector<std::uint64_t> got(static_cast<std::size_t>(subscribers), 0);
  std::vector<std::uint64_t> lost(static_cast<std::size_t>(subscribers), 0);
  std::vector<std::thread> threads;
  const auto start = steady_clock::now();
  for (int i = 0; i < subscribers; ++i) {
    threads.emplace_back([&, i] {
      std::uint64_t n = 0;
      std::uint64_t l = 0;
      for (auto r = subs[i].recv(); r.status != RecvStatus::closed; r = subs[i].recv()) {
        if (r.ok()) ++n;
        if (r.status == RecvStatus::gap) l += r.lost;
      }
      got[static_cast<std::size_t>(i)] = n;
      lost[static_cast<std::size_t>(i)] = l;
    });
  }
  for (std::uint64_t i = 0; i < items; ++i) (void)b.publish(std::uint64_t{i});
  b.close();
  for (auto& t : threads) t.join();
  const double secs = duration<double>(steady_clock::now() - start).count();
  std::uint64_t delivered = 0;
  std::uint64_t dropped = 0;
  for (int i = 0; i < subscribers; ++i) {
    delivered += got[static_cast<std::size_t>(i)];
    dropped += lost[static_cast<std::size_t>(i)];
  }
  if (mode == BroadcastMode::lossless &&
      delivered != items * static_cast<std::uint64_t>(subscribers)) {
    std::fprintf(stderr, "B1: lossless broadcast lost items!\n");
    std::exit(1);
  }
  return {static_cast<double>(delivered) / secs,
          static_cast<double>(dropped) / static_cast<double>(delivered + dropped)};
}

// The baseline: one bounded mutex + condvar deque per subscriber (bench/peers/mutex_deque.hpp);
// the publisher pushes to each.
using sluice::bench::MutexDeque;

double mutex_fanout(int subscribers, std::uint64_t items) {
  std::vector<std::unique_ptr<MutexDeque>> queues;
  for (int i = 0; i < subscribers; ++i) queues.push_back(std::make_unique<MutexDeque>(1024));
  std::atomic<std::uint64_t> delivered{0};
  std::vector<std::thread> threads;
  const auto start = steady_clock::now();
  for (int i = 0; i < subscribers; ++i) {
    threads.emplace_back([&, i] {
      std::uint64_t v = 0;
      std::uint64_t n = 0;
      while (queues[static_cast<std::size_t>(i)]->pop(v)) ++n;
      delivered += n;
    });
  }
  for (std::uint64_t i = 0; i < items; ++i) {
    for (auto& q : queues) q->push(i);
  }
  for (auto& q : queues) q->close();
  for (auto& t : threads) t.join();
  return static_cast<double>(delivered.load()) /
         duration<double>(steady_clock::now() - start).count();
}

void b1() {
  const std::uint64_t items = g_quick ? 100'000 : 1'000'000;
  std::printf(
      "\n=== B1 broadcast fan-out, %llu uint64 items, delivered msg/s in total (median of 3) ===\n",
      static_cast<unsigned long long>(items));
  std::printf("%-5s %22s %22s %30s %8s  %s\n", "subs", "mutex deque fan-out", "sluice lossless",
              "sluice lossy (dropped)", "ratio", "target");
  for (int k : {1, 3, 8}) {
    std::vector<double> mutex;
    std::vector<double> lossless;
    std::vector<double> lossy;
    std::vector<double> lossy_drop;
    for (int rep = 0; rep < 3; ++rep) {
      mutex.push_back(mutex_fanout(k, items));
      lossless.push_back(sluice_fanout(k, BroadcastMode::lossless, items).delivered_per_s);
      const Delivery d = sluice_fanout(k, BroadcastMode::lossy, items);
      lossy.push_back(d.delivered_per_s);
      lossy_drop.push_back(d.dropped_fraction);
    }
    const double m = median(mutex);
    const double s = median(lossless);
    const double ratio = s / m;
    std::string target = ratio >= 3 ? ">= 3x met" : ">= 3x NOT MET";
    if (k == 3) target += s >= 2e6 ? ", >= 2 M/s met" : ", >= 2 M/s NOT MET";
    std::printf("%-5d %18.2f M/s %18.2f M/s %18.2f M/s (%4.1f%%) %7.2fx  %s\n", k, m / 1e6, s / 1e6,
                median(lossy) / 1e6, 100 * median(lossy_drop), ratio, target.c_str());
  }
}

// ---------------------------------------------------------------------------- B2

// The platform's wake-up latency: notify_all three threads parked on a condition variable,
// measure notify -> each one running. Any receiver that parks between items pays this; on a
// 2-vCPU VM the second and third wake on a halted vCPU.
sluice::HistogramSnapshot condvar_wakeup(int rate_hz, int seconds) {
  std::mutex mu;
  std::condition_variable cv;
  std::int64_t stamp = 0;
  bool done = false;
  sluice::Histogram h;
  std::vector<std::thread> waiters;
  for (int i = 0; i < 3; ++i) {
    waiters.emplace_back([&] {
      std::unique_lock lock(mu);
      std::int64_t seen = 0;
      for (;;) {
        cv.wait(lock, [&] { return stamp != seen || done; });
        if (done) return;
        seen = stamp;
        h.record(static_cast<std::uint64_t>(now_ns() - stamp));
      }
    });
  }
  const auto interval = nanoseconds(1'000'000'000 / rate_hz);
  auto next = steady_clock::now();
  const auto end = next + std::chrono::seconds(seconds);
  while (steady_clock::now() < end) {
    next += interval;
    std::this_thread::sleep_until(next);
    {
      std::lock_guard lock(mu);
      stamp = now_ns();
    }
    cv.notify_all();
  }
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_all();
  for (auto& w : waiters) w.join();
  return h.snapshot();
}

struct LatencyRun {
  sluice::HistogramSnapshot latency;
  std::uint64_t dropped = 0;
  std::uint64_t received = 0;
  std::uint64_t published = 0;
};

LatencyRun sluice_latency(int rate_hz, std::size_t payload, int seconds) {
  BroadcastConfig c;
  c.name = "b2";
  c.mode = BroadcastMode::lossy;
  c.capacity = 8;
  c.default_depth = 4;
  Broadcast<Buffer> b(c);
  constexpr int kSubs = 3;
  std::vector<sluice::Subscription<Buffer>> subs;
  for (int i = 0; i < kSubs; ++i) subs.push_back(b.subscribe(subscriber_name(i)));
  sluice::Histogram h;
  std::atomic<std::uint64_t> dropped{0};
  std::atomic<std::uint64_t> received{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kSubs; ++i) {
    threads.emplace_back([&, i] {
      for (auto r = subs[i].recv(); r.status != RecvStatus::closed; r = subs[i].recv()) {
        if (r.status == RecvStatus::gap) dropped += r.lost;
        if (!r.ok()) continue;
        std::int64_t stamp = 0;
        std::memcpy(&stamp, r->data(), sizeof stamp);
        h.record(static_cast<std::uint64_t>(now_ns() - stamp));
        ++received;
      }
    });
  }
  const auto interval = nanoseconds(1'000'000'000 / rate_hz);
  auto next = steady_clock::now();
  const auto end = next + std::chrono::seconds(seconds);
  std::uint64_t published = 0;
  while (steady_clock::now() < end) {
    next += interval;
    std::this_thread::sleep_until(next);
    std::string bytes(payload, 'x');
    const std::int64_t stamp = now_ns();
    std::memcpy(bytes.data(), &stamp, sizeof stamp);
    (void)b.publish(Buffer(std::move(bytes)));
    ++published;
  }
  b.close();
  for (auto& t : threads) t.join();
  return {h.snapshot(), dropped.load(), received.load(), published};
}

void b2() {
  const int seconds = g_quick ? 1 : 3;
  std::printf("\n=== B2 publish->receive latency, 3 subscribers, depth 4, %d s each ===\n",
              seconds);
  struct Case {
    const char* name;
    int rate;
    std::size_t bytes;
  };
  for (const Case& k : {Case{"(a) 30 fps x 1 MiB", 30, std::size_t{1} << 20},
                        Case{"(b) 10000/s x 64 B", 10'000, 64}}) {
    const auto wake = condvar_wakeup(k.rate, seconds);
    const LatencyRun run = sluice_latency(k.rate, k.bytes, seconds);
    std::printf(
        "%-20s platform: condvar wake of 3, p50 %7.1f us p99 %7.1f us | sluice p50 %7.1f us "
        "p99 %7.1f us max %7.1f us, received %llu (%llu published x 3), dropped %llu   target p99 "
        "<= 50 us and 0 dropped: %s\n",
        k.name, static_cast<double>(wake.p50()) / 1e3, static_cast<double>(wake.p99()) / 1e3,
        static_cast<double>(run.latency.p50()) / 1e3, static_cast<double>(run.latency.p99()) / 1e3,
        static_cast<double>(run.latency.max()) / 1e3, static_cast<unsigned long long>(run.received),
        static_cast<unsigned long long>(run.published),
        static_cast<unsigned long long>(run.dropped),
        run.latency.p99() <= 50'000 && run.dropped == 0 ? "met" : "NOT MET");
  }
}

// ---------------------------------------------------------------------------- B3

// In a child process: 30 fps x 1 MiB to `k` subscribers for `seconds`; returns peak RSS (KiB).
long b3_peak_rss_kib(int k, int seconds) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    BroadcastConfig c;
    c.name = "b3";
    c.mode = BroadcastMode::lossy;
    c.capacity = 4;
    c.default_depth = 4;
    Broadcast<Buffer> b(c);
    std::vector<sluice::Subscription<Buffer>> subs;
    for (int i = 0; i < k; ++i) subs.push_back(b.subscribe(subscriber_name(i)));
    std::vector<std::thread> threads;
    std::atomic<std::uint64_t> checksum{0};
    for (int i = 0; i < k; ++i) {
      threads.emplace_back([&, i] {
        for (auto r = subs[i].recv(); r.status != RecvStatus::closed; r = subs[i].recv()) {
          if (r.ok()) checksum += std::to_integer<unsigned>(r->bytes()[r->size() - 1]);
        }
      });
    }
    auto next = steady_clock::now();
    for (int f = 0; f < seconds * 30; ++f) {
      next += microseconds(33'333);
      std::this_thread::sleep_until(next);
      (void)b.publish(Buffer(std::string(std::size_t{1} << 20, static_cast<char>('a' + f % 26))));
    }
    b.close();
    for (auto& t : threads) t.join();
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    const long kib = ru.ru_maxrss;
    (void)!write(fds[1], &kib, sizeof kib);
    _exit(0);
  }
  close(fds[1]);
  long kib = -1;
  (void)!read(fds[0], &kib, sizeof kib);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return kib;
}

void b3() {
  const int seconds = g_quick ? 2 : 10;
  std::printf("\n=== B3 30 fps x 1 MiB, depth 4, %d s per subscriber count, peak RSS ===\n",
              seconds);
  long lo = -1;
  long hi = -1;
  for (int k : {1, 3, 8, 32}) {
    const long kib = b3_peak_rss_kib(k, seconds);
    std::printf("K = %-3d peak RSS %8.1f MiB\n", k, static_cast<double>(kib) / 1024.0);
    lo = lo < 0 ? kib : std::min(lo, kib);
    hi = std::max(hi, kib);
  }
  const double spread = static_cast<double>(hi - lo) / 1024.0;
  std::printf("spread across K: %.1f MiB   target <= 8 MiB: %s\n", spread,
              spread <= 8.0 ? "met" : "NOT MET");
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> only;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      g_quick = true;
    } else if (arg == "B1" || arg == "B2" || arg == "B3") {
      only.push_back(arg);
    } else {
      std::fprintf(stderr, "usage: %s [--quick] [B1] [B2] [B3]\n", argv[0]);
      return 2;
    }
  }
  const auto want = [&](const char* id) {
    return only.empty() || std::find(only.begin(), only.end(), id) != only.end();
  };
  if (want("B1")) b1();
  if (want("B2")) b2();
  if (want("B3")) b3();
  return 0;
}

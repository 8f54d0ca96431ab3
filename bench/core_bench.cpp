// Core benchmarks C1-C3 (see BENCHMARKS.md): Sluice's Channel against peers, in one run.
//
//   make bench                      (or ./build/bench/sluice_core_bench [gbench flags])
//
// C1  1 producer -> 1 consumer, uint64_t, bounded to 1024 items, blocking send/recv.
//     Peers: a mutex + two condition variables around a std::deque bounded to 1024;
//     moodycamel::BlockingConcurrentQueue bounded by a 1024-slot LightweightSemaphore;
//     boost::lockfree::spsc_queue<1024> with spinning push/pop (no blocking at all).
// C2  2P->2C and 4P->4C, same item and bound; peers: the mutex deque and moodycamel.
// C3  byte accounting on vs off, in the C1 workload and in a single-thread try_send/try_recv
//     pair (the quieter measure of the per-message cost).
//
// Each case moves kBatch messages per iteration with real threads and reports messages per
// second of wall time (median of the repetitions). After Google Benchmark's own table, a summary
// prints each peer's figure, Sluice's, the ratio and the target, from this same run.
#include <benchmark/benchmark.h>
#include <concurrentqueue/blockingconcurrentqueue.h>
#include <concurrentqueue/lightweightsemaphore.h>

#include <boost/lockfree/spsc_queue.hpp>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "peers/mutex_deque.hpp"
#include "sluice/channel.hpp"
#include "sluice/detail/wait.hpp"
#include "sluice/priority_channel.hpp"

namespace {

constexpr std::size_t kBound = 1024;
constexpr std::uint64_t kBatch = 1 << 18;  // messages per iteration
constexpr int kRepetitions = 3;

// ---- the queues under test, behind one shape: push(v) blocks for room, pop() for an item ----

class SluiceQueue {
 public:
  explicit SluiceQueue(bool account_bytes = true) : ch_(config(account_bytes)) {}
  void push(std::uint64_t v) { (void)ch_.send(std::uint64_t{v}); }
  std::uint64_t pop() { return *ch_.recv().value; }

 private:
  static sluice::ChannelConfig config(bool account_bytes) {
    sluice::ChannelConfig c;
    c.name = "bench";
    c.max_items = kBound;
    c.policy = sluice::OverflowPolicy::block;
    c.account_bytes = account_bytes;
    if (!account_bytes) c.max_bytes = sluice::kUnlimitedBytes;  // a byte budget needs accounting
    return c;
  }
  sluice::Channel<std::uint64_t> ch_;
};

// PriorityChannel on the same lossless workload: class `critical` (never dropped, so a full
// channel blocks its producer like Channel's block policy), bounded to 1024 items.
class PriorityQueue {
 public:
  PriorityQueue() : ch_(config()) {}
  void push(std::uint64_t v) { (void)ch_.send(sluice::Priority::critical, std::uint64_t{v}); }
  std::uint64_t pop() { return ch_.recv().value->item; }

 private:
  static sluice::PriorityChannelConfig config() {
    sluice::PriorityChannelConfig c;
    c.name = "bench";
    c.max_items = kBound;
    c[sluice::Priority::critical].max_items = kBound;
    return c;
  }
  sluice::PriorityChannel<std::uint64_t> ch_;
};

// The baseline everyone writes first: one lock, two condition variables.
class MutexDequeQueue {
 public:
  void push(std::uint64_t v) { q_.push(v); }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    q_.pop(v);
    return v;
  }

 private:
  sluice::bench::MutexDeque q_{kBound};
};

// moodycamel's blocking queue is unbounded; a counting semaphore of free slots bounds it, the
// way its documentation suggests.
class MoodycamelQueue {
 public:
  MoodycamelQueue()
      : q_(kBound), slots_(static_cast<moodycamel::LightweightSemaphore::ssize_t>(kBound)) {}
  void push(std::uint64_t v) {
    slots_.wait();
    q_.enqueue(v);
  }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    q_.wait_dequeue(v);
    slots_.signal();
    return v;
  }

 private:
  moodycamel::BlockingConcurrentQueue<std::uint64_t> q_;
  moodycamel::LightweightSemaphore slots_;
};

// Wait-free single-producer single-consumer ring; both sides spin (no blocking).
class BoostSpscSpinQueue {
 public:
  void push(std::uint64_t v) {
    while (!q_.push(v)) sluice::detail::cpu_relax();
  }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    while (!q_.pop(v)) sluice::detail::cpu_relax();
    return v;
  }

 private:
  boost::lockfree::spsc_queue<std::uint64_t, boost::lockfree::capacity<kBound>> q_;
};

// ---- the workload ----

// Moves kBatch messages from `producers` threads to `consumers` threads through a fresh queue;
// checks that the sum received is the sum sent.
template <class Queue, class... Args>
void transfer(benchmark::State& state, int producers, int consumers, Args... args) {
  for (auto _ : state) {
    auto q = std::make_unique<Queue>(args...);
    const std::uint64_t per_producer = kBatch / static_cast<std::uint64_t>(producers);
    const std::uint64_t per_consumer = kBatch / static_cast<std::uint64_t>(consumers);
    std::vector<std::uint64_t> sums(static_cast<std::size_t>(consumers), 0);
    std::vector<std::thread> threads;
    for (int c = 0; c < consumers; ++c) {
      threads.emplace_back([&, c] {
        std::uint64_t sum = 0;
        for (std::uint64_t i = 0; i < per_consumer; ++i) sum += q->pop();
        sums[static_cast<std::size_t>(c)] = sum;
      });
    }
    for (int p = 0; p < producers; ++p) {
      threads.emplace_back([&] {
        for (std::uint64_t i = 1; i <= per_producer; ++i) q->push(i);
      });
    }
    for (auto& t : threads) t.join();
    std::uint64_t total = 0;
    for (auto s : sums) total += s;
    const std::uint64_t expected =
        static_cast<std::uint64_t>(producers) * per_producer * (per_producer + 1) / 2;
    if (total != expected) state.SkipWithError("sum received != sum sent");
    benchmark::DoNotOptimize(total);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kBatch));
}

// One thread alternates try_send and try_recv: the per-message cost without any contention.
void try_pair(benchmark::State& state, bool account_bytes) {
  sluice::ChannelConfig c;
  c.name = "bench";
  c.max_items = kBound;
  c.account_bytes = account_bytes;
  if (!account_bytes) c.max_bytes = sluice::kUnlimitedBytes;
  sluice::Channel<std::uint64_t> ch(c);
  std::uint64_t sum = 0;
  for (auto _ : state) {
    for (std::uint64_t i = 0; i < 1024; ++i) (void)ch.try_send(std::uint64_t{i});
    for (std::uint64_t i = 0; i < 1024; ++i) sum += *ch.try_recv().value;
  }
  benchmark::DoNotOptimize(sum);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * 1024));
}

void register_all() {
  const auto threaded = [](benchmark::internal::Benchmark* b) {
    b->UseRealTime()
        ->Unit(benchmark::kMillisecond)
        ->Repetitions(kRepetitions)
        ->ReportAggregatesOnly(true)
        ->MinTime(0.3);
  };
  threaded(benchmark::RegisterBenchmark("C1/sluice", transfer<SluiceQueue, bool>, 1, 1, true));
  threaded(benchmark::RegisterBenchmark("C1/mutex_deque", transfer<MutexDequeQueue>, 1, 1));
  threaded(benchmark::RegisterBenchmark("C1/moodycamel_blocking", transfer<MoodycamelQueue>, 1, 1));
  threaded(benchmark::RegisterBenchmark("C1/boost_spsc_spin", transfer<BoostSpscSpinQueue>, 1, 1));
  for (int n : {2, 4}) {
    const std::string w = "C2/" + std::to_string(n) + "x" + std::to_string(n) + "/";
    threaded(benchmark::RegisterBenchmark((w + "sluice").c_str(), transfer<SluiceQueue, bool>, n, n,
                                          true));
    threaded(
        benchmark::RegisterBenchmark((w + "mutex_deque").c_str(), transfer<MutexDequeQueue>, n, n));
    threaded(benchmark::RegisterBenchmark((w + "moodycamel_blocking").c_str(),
                                          transfer<MoodycamelQueue>, n, n));
  }
  threaded(benchmark::RegisterBenchmark("C3/sluice_accounting_off", transfer<SluiceQueue, bool>, 1,
                                        1, false));
  // P1: PriorityChannel against Channel, same lossless workload (Channel's figures: C1, C2).
  threaded(benchmark::RegisterBenchmark("P1/1x1/priority", transfer<PriorityQueue>, 1, 1));
  threaded(benchmark::RegisterBenchmark("P1/2x2/priority", transfer<PriorityQueue>, 2, 2));
  for (bool on : {true, false}) {
    benchmark::RegisterBenchmark(on ? "C3/try_pair_accounting_on" : "C3/try_pair_accounting_off",
                                 try_pair, on)
        ->Repetitions(kRepetitions)
        ->ReportAggregatesOnly(true);
  }
}

// ---- the summary: peers and Sluice side by side ----

// Keeps Google Benchmark's console output and remembers each case's median msg/s.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::string, double> rate;  // "C1/sluice" -> messages per second

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.error_occurred) continue;
      const bool median = run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      if (!median && run.run_type == Run::RT_Aggregate) continue;
      const auto it = run.counters.find("items_per_second");
      if (it == run.counters.end()) continue;
      if (median || rate.count(run.run_name.function_name) == 0) {
        rate[run.run_name.function_name] = it->second.value;
      }
    }
  }
};

double get(const SummaryReporter& r, const std::string& name) {
  const auto it = r.rate.find(name);
  return it == r.rate.end() ? 0.0 : it->second;
}

void print_ratio(const SummaryReporter& r, const std::string& workload, const std::string& peer,
                 double target) {
  const double sluice = get(r, workload + "/sluice");
  const double other = get(r, workload + "/" + peer);
  if (sluice == 0 || other == 0) return;
  const double ratio = sluice / other;
  std::printf("%-6s %-22s %10.2f M/s   sluice %10.2f M/s   ratio %6.2fx", workload.c_str(),
              peer.c_str(), other / 1e6, sluice / 1e6, ratio);
  if (target > 0) {
    std::printf("   target >= %.0fx %s", target, ratio >= target ? "met" : "NOT MET");
  }
  std::printf("\n");
}

void print_summary(const SummaryReporter& r) {
  std::printf("\n=== Sluice core vs peers (same run, median of %d, messages per second) ===\n",
              kRepetitions);
  print_ratio(r, "C1", "mutex_deque", 2);
  print_ratio(r, "C1", "moodycamel_blocking", 4);
  print_ratio(r, "C1", "boost_spsc_spin", 0);
  for (const char* w : {"C2/2x2", "C2/4x4"}) {
    print_ratio(r, w, "mutex_deque", 2);
    print_ratio(r, w, "moodycamel_blocking", 0);
  }
  for (const char* w : {"1x1", "2x2"}) {
    const double channel = get(r, std::string(w) == "1x1" ? "C1/sluice" : "C2/2x2/sluice");
    const double priority = get(r, std::string("P1/") + w + "/priority");
    if (channel > 0 && priority > 0) {
      std::printf(
          "P1/%s  channel (block)     %10.2f M/s   priority  %10.2f M/s   ratio %6.2fx"
          " (PriorityChannel / Channel)\n",
          w, channel / 1e6, priority / 1e6, priority / channel);
    }
  }
  const auto ns = [&](const std::string& name) {
    const double v = get(r, name);
    return v == 0 ? 0.0 : 1e9 / v;
  };
  const double on = ns("C1/sluice");
  const double off = ns("C3/sluice_accounting_off");
  const double pair_on = ns("C3/try_pair_accounting_on");
  const double pair_off = ns("C3/try_pair_accounting_off");
  std::printf(
      "C3     byte accounting, C1 threaded: on %.1f ns/msg, off %.1f ns/msg, cost %+.1f ns"
      "   target <= 10 ns %s\n",
      on, off, on - off, on - off <= 10 ? "met" : "NOT MET");
  std::printf(
      "C3     byte accounting, one thread try_send+try_recv: on %.1f ns/msg, off %.1f "
      "ns/msg, cost %+.1f ns   target <= 10 ns %s\n",
      pair_on, pair_off, pair_on - pair_off, pair_on - pair_off <= 10 ? "met" : "NOT MET");
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  print_summary(reporter);
  benchmark::Shutdown();
  return 0;
}

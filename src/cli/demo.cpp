// A fast producer and a slow consumer on four channels, one per overflow policy. Once a
// second, one line per channel: what is queued, the high-water mark, sent/received, and every
// drop by reason. Memory stays within the budget whatever the policy; only the kind of
// pressure differs.
#include "demo.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sluice/buffer.hpp"
#include "sluice/channel.hpp"

namespace sluice::cli {
namespace {

using Clock = std::chrono::steady_clock;

std::string kib(std::uint64_t bytes) {
  std::array<char, 32> out{};
  std::snprintf(out.data(), out.size(), "%.0f KiB", static_cast<double>(bytes) / 1024.0);
  return out.data();
}

void print_line(int second, const ChannelStats& s) {
  std::string drops;
  for (auto r : kAllDropReasons) {
    if (s.dropped[r] != 0) {
      drops.append(" ").append(to_string(r)).append("=").append(std::to_string(s.dropped[r]));
    }
  }
  if (drops.empty()) drops = " none";
  std::printf(
      "t=%2ds %-11s queue %8s/%s (%3llu items) hwm %8s  sent %5llu recv %5llu  dropped:%s  "
      "rejected %llu  timeouts %llu  blocked %.2fs  p99 %.1f ms\n",
      second, std::string(to_string(s.policy)).c_str(), kib(s.queue_bytes).c_str(),
      kib(s.max_bytes).c_str(), static_cast<unsigned long long>(s.len),
      kib(s.max_queue_bytes_seen).c_str(), static_cast<unsigned long long>(s.sent),
      static_cast<unsigned long long>(s.received), drops.c_str(),
      static_cast<unsigned long long>(s.rejected), static_cast<unsigned long long>(s.timeouts),
      s.blocked_seconds, static_cast<double>(s.latency_ns.p99()) / 1e6);
}

}  // namespace

int run_demo(const DemoOptions& o) {
  const std::size_t item_bytes = static_cast<std::size_t>(o.item_kib) * 1024;
  std::printf(
      "sluice demo: producers offer %d items/s of %d KiB, consumers take %d items/s.\n"
      "Each channel: max_items 64, max_bytes %s. Same load, four overflow policies.\n\n",
      o.producer_rate, o.item_kib, o.consumer_rate, kib(32 * item_bytes).c_str());

  std::vector<std::unique_ptr<Channel<Buffer>>> channels;
  for (auto policy : {OverflowPolicy::block, OverflowPolicy::drop_oldest,
                      OverflowPolicy::drop_newest, OverflowPolicy::reject}) {
    ChannelConfig c;
    c.name = std::string("demo-") + std::string(to_string(policy));
    c.policy = policy;
    c.max_items = 64;
    c.max_bytes = 32 * item_bytes;  // the byte budget binds first
    c.max_wait = std::chrono::milliseconds(200);
    channels.push_back(std::make_unique<Channel<Buffer>>(c));
  }

  const Buffer payload = Buffer::copy(std::string(item_bytes, 'p'));
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (auto& ch : channels) {
    threads.emplace_back([&, ch = ch.get()] {  // the fast producer, paced
      const auto interval = std::chrono::nanoseconds(1'000'000'000 / o.producer_rate);
      auto next = Clock::now();
      while (!stop) {
        // A block-policy send may wait up to max_wait, then time out; the producer keeps the
        // item. A reject-policy send answers would_block at once; the producer keeps it too.
        (void)ch->send(Buffer(payload));
        next += interval;
        std::this_thread::sleep_until(next);
      }
    });
    threads.emplace_back([&, ch = ch.get()] {  // the slow consumer
      const auto interval = std::chrono::nanoseconds(1'000'000'000 / o.consumer_rate);
      auto next = Clock::now();
      while (ch->recv().ok()) {
        next += interval;
        std::this_thread::sleep_until(next);
      }
    });
  }

  const auto start = Clock::now();
  for (int second = 1; second <= o.seconds; ++second) {
    std::this_thread::sleep_until(start + std::chrono::seconds(second));
    for (auto& ch : channels) print_line(second, ch->stats());
    std::printf("\n");
    std::fflush(stdout);
  }
  stop = true;
  for (auto& ch : channels) ch->close();
  for (auto& t : threads) t.join();

  std::printf(
      "block: the producer waited (blocked time, timeouts), nothing was lost.\n"
      "drop_oldest: the producer never waited; the oldest items left, each counted.\n"
      "drop_newest: the producer never waited; new items were refused, each counted.\n"
      "reject: the producer was told at once (rejected) and kept each item (this demo skips it).\n"
      "In every case queue bytes stayed within max_bytes.\n");
  return 0;
}

}  // namespace sluice::cli

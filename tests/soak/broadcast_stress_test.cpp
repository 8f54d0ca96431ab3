// Stress: subscribers join and leave at random while a publisher publishes as fast as it can.
//
// Lossless: every subscriber receives every item published while it was subscribed, in order.
// Lossy:    for every subscriber, received + lost == published since it joined (at close).
// Scale: SLUICE_STRESS_ITEMS (default 1,000,000; the sanitizer runs use fewer). Runs under
// ThreadSanitizer in `make test`.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "sluice/broadcast.hpp"
#include "stress_scale.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;

std::uint64_t scale() {
  return stress::items();
}

struct Outcome {
  std::uint64_t sessions = 0;
  std::uint64_t received = 0;
  std::uint64_t lost = 0;
  std::uint64_t order_violations = 0;
  std::uint64_t accounting_violations = 0;
};

// One subscriber thread: joins, receives a random number of items (or until closed), leaves,
// again and again. Items are sequence numbers 0, 1, 2, ...
std::atomic<std::uint64_t> g_sessions{0};  // sessions started, all subscribers

void churn(Broadcast<std::uint64_t>& b, int id, bool lossless, std::atomic<bool>& stop,
           Outcome& out) {
  std::mt19937 rng(static_cast<unsigned>(id));
  std::uniform_int_distribution<int> session_len(1, 5000);
  std::uniform_int_distribution<std::size_t> depth(1, 32);
  while (!stop.load()) {
    auto sub = b.subscribe("sub-" + std::to_string(id), depth(rng));
    ++out.sessions;
    g_sessions.fetch_add(1);
    const int want = session_len(rng);
    std::int64_t last = -1;  // last sequence number received in this session
    std::uint64_t first = 0;
    std::uint64_t got = 0;
    std::uint64_t lost = 0;
    bool closed = false;
    bool ended_on_gap = false;  // then where the gap ends is not known to the test
    for (int n = 0; n < want; ++n) {
      auto r = sub.recv_for(200ms);
      if (r.status == RecvStatus::closed) {
        closed = true;
        break;
      }
      if (r.status == RecvStatus::timeout) continue;
      if (r.status == RecvStatus::gap) {
        lost += r.lost;
        ended_on_gap = true;
        if (lossless) ++out.order_violations;  // a lossless subscriber never has gaps
        continue;
      }
      ASSERT_EQ(r.status, RecvStatus::ok);
      const std::uint64_t seq = *r;
      if (last < 0) {
        first = seq;
      } else if (lossless ? seq != static_cast<std::uint64_t>(last) + 1
                          : seq <= static_cast<std::uint64_t>(last)) {
        ++out.order_violations;
      }
      last = static_cast<std::int64_t>(seq);
      ended_on_gap = false;
      ++got;
    }
    // Whatever it got, the subscriber's own counters agree with what it saw.
    const auto st = sub.stats();
    if (st.received != got || st.lost.total() != lost) ++out.accounting_violations;
    // Every item from the one it joined at to the last it received was received or counted
    // lost; after close, up to the last item published.
    const std::uint64_t end = closed ? b.stats().published : static_cast<std::uint64_t>(last + 1);
    if ((closed || (got > 0 && !ended_on_gap)) &&
        st.received + st.lost.total() != end - st.joined_at) {
      ++out.accounting_violations;
    }
    if (lossless && got > 0 && first != st.joined_at) ++out.order_violations;
    out.received += got;
    out.lost += lost;
    if (closed) return;
  }
}

void run(bool lossless) {
  const std::uint64_t items = scale();
  BroadcastConfig c;
  c.name = lossless ? "stress-lossless" : "stress-lossy";
  c.mode = lossless ? BroadcastMode::lossless : BroadcastMode::lossy;
  c.capacity = 32;
  c.max_wait = 60s;
  Broadcast<std::uint64_t> b(c);

  constexpr int kSubscribers = 4;
  std::atomic<bool> stop{false};
  std::vector<Outcome> outcomes(kSubscribers);
  std::vector<std::thread> threads;
  for (int i = 0; i < kSubscribers; ++i) {
    threads.emplace_back([&, i] { churn(b, i, lossless, stop, outcomes[i]); });
  }
  // Publish `items`, and go on until subscribers have come and gone a few times each (a lossy
  // publisher can finish 1 M items before anyone churns), within 20 s at most.
  g_sessions = 0;
  const auto give_up = std::chrono::steady_clock::now() + 20s;
  std::uint64_t published = 0;
  for (std::uint64_t seq = 0; seq < items || (g_sessions.load() < 3 * kSubscribers &&
                                              std::chrono::steady_clock::now() < give_up);
       ++seq) {
    ++published;
    auto r = b.publish(std::uint64_t{seq});
    ASSERT_EQ(r.status, SendStatus::ok) << r.message;
  }
  stop = true;
  b.close();
  for (auto& t : threads) t.join();

  std::uint64_t sessions = 0;
  std::uint64_t received = 0;
  for (const auto& o : outcomes) {
    EXPECT_EQ(o.order_violations, 0U);
    EXPECT_EQ(o.accounting_violations, 0U);
    if (lossless) {
      EXPECT_EQ(o.lost, 0U);
    }
    sessions += o.sessions;
    received += o.received;
  }
  EXPECT_GT(sessions, static_cast<std::uint64_t>(kSubscribers));
  EXPECT_GT(received, 0U);
  const auto st = b.stats();
  EXPECT_EQ(st.published, published);
  EXPECT_EQ(st.evicted, 0U);
}

TEST(BroadcastStress, LosslessChurnEveryItemInOrderWhileSubscribed) {
  run(true);
}
TEST(BroadcastStress, LossyChurnReceivedPlusLostAddsUp) {
  run(false);
}

}  // namespace
}  // namespace sluice

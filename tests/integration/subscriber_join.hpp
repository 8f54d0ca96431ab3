// Test helper: join a thread that reads a client::Subscriber, without hanging a failing test.
#pragma once

#include <atomic>
#include <chrono>
#include <thread>

#include "sluice/client/client.hpp"

namespace sluice::testing {

/// Joins `t` (a reader of `sub`), cancelling `sub` if it has not seen its last item within
/// `limit` (a test that fails does not hang).
inline void join_within(std::thread& t, client::Subscriber& sub,
                        std::chrono::seconds limit = std::chrono::seconds(60)) {
  std::atomic<bool> joined{false};
  std::thread watchdog([&] {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!joined && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!joined) sub.cancel();
  });
  t.join();
  joined = true;
  watchdog.join();
}

}  // namespace sluice::testing

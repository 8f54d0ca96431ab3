// How many items a stress test moves: SLUICE_STRESS_ITEMS, default 1,000,000. `make test` sets
// fewer under the sanitizers; `make soak` sets many more.
#pragma once

#include <cstdint>
#include <cstdlib>

namespace sluice::stress {

inline std::uint64_t items() {
  // Read once at the start of a test, before its threads exist.
  if (const char* env = std::getenv("SLUICE_STRESS_ITEMS")) {  // NOLINT(concurrency-mt-unsafe)
    return std::strtoull(env, nullptr, 10);
  }
  return 1'000'000;
}

}  // namespace sluice::stress

// How long stress and soak tests run. SLUICE_STRESS_ITEMS: items a stress test moves (default
// 1,000,000; `make test` sets fewer under the sanitizers). SLUICE_SOAK_SECONDS: how long a
// relay soak publishes (default 12; `make soak`: 600). SLUICE_CHURN_CYCLES: subscribe and
// unsubscribe cycles (default 100; `make soak`: 1000). Each is read once at the start of a
// test, before its threads exist.
#pragma once

#include <cstdint>
#include <cstdlib>

namespace sluice::stress {

inline std::uint64_t from_env(const char* name, std::uint64_t fallback) {
  if (const char* env = std::getenv(name)) {  // NOLINT(concurrency-mt-unsafe)
    return std::strtoull(env, nullptr, 10);
  }
  return fallback;
}

inline std::uint64_t items() {
  return from_env("SLUICE_STRESS_ITEMS", 1'000'000);
}
inline std::uint64_t soak_seconds() {
  return from_env("SLUICE_SOAK_SECONDS", 12);
}
inline std::uint64_t churn_cycles() {
  return from_env("SLUICE_CHURN_CYCLES", 100);
}

}  // namespace sluice::stress

// Sluice — send→receive latency, sampled so that a busy stream does not read the clock for
// every item. Shared by Channel and Broadcast.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "sluice/histogram.hpp"

namespace sluice {

/// How a stream measures send→receive latency.
enum class LatencySampling : std::uint8_t {
  adaptive,    // every item while the stream is quiet; at most ~20,000 samples a second when
               // it is busy (the sampling stride doubles or halves to keep samples 50 µs–1 ms
               // apart). The default: exact for 30 fps streams, cheap for 20 M msg/s ones.
  every_item,  // read the clock on every send and receive (two clock reads per item)
  off,         // no latency histogram
};

namespace detail {

/// steady_clock, in nanoseconds.
std::int64_t now_ns() noexcept;

/// The sampler and histogram of one stream. Producers call stamp(position) and store the
/// result with the item; consumers call record(stamp). Thread-safe; never blocks.
class LatencySampler {
 public:
  explicit LatencySampler(LatencySampling mode) noexcept : mode_(mode) {}

  /// The send time to store with the item at `position`, or 0 if it is not sampled.
  std::int64_t stamp(std::uint64_t position) const noexcept {
    if (mode_ == LatencySampling::off) return 0;
    if ((position & mask_.load(std::memory_order_relaxed)) != 0) return 0;
    return now_ns();
  }

  /// Records a sampled item's latency (no-op for stamp 0) and, in adaptive mode, steers the
  /// stride to keep samples 50 µs – 1 ms apart. Racy between consumers by design: it only
  /// steers a sampling rate.
  void record(std::int64_t stamp_ns) noexcept {
    if (stamp_ns == 0) return;
    const std::int64_t now = now_ns();
    histogram_.record(static_cast<std::uint64_t>(std::max<std::int64_t>(now - stamp_ns, 0)));
    if (mode_ != LatencySampling::adaptive) return;
    const std::int64_t gap = now - last_.exchange(now, std::memory_order_relaxed);
    const std::uint64_t mask = mask_.load(std::memory_order_relaxed);
    if (gap < 50'000 && mask < 4095) {
      mask_.store(mask * 2 + 1, std::memory_order_relaxed);
    } else if (gap > 1'000'000 && mask > 0) {
      mask_.store(mask >> 1, std::memory_order_relaxed);
    }
  }

  HistogramSnapshot snapshot() const { return histogram_.snapshot(); }

 private:
  const LatencySampling mode_;
  // Read by every producer, written about once per sample: its own cache line.
  alignas(64) std::atomic<std::uint64_t> mask_{0};  // stamp positions with (pos & mask) == 0
  std::atomic<std::int64_t> last_{0};
  Histogram histogram_;
};

}  // namespace detail
}  // namespace sluice

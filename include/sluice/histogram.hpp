// Sluice — log-linear histograms for latencies (nanoseconds) and other non-negative values.
//
// Buckets: values 0–15 exactly, then 8 sub-buckets per power of two (relative error ≤ 12.5 %),
// up to 2^64 − 1. 496 buckets, fixed: memory never grows with the number of samples.
//
// Histogram: record() is lock-free and wait-free apart from the running maximum (a CAS that
// only retries while the maximum is being raised); any number of threads may record while
// others take snapshots. A snapshot is a consistent-enough copy: each bucket is read
// atomically, but samples recorded during the copy may or may not be included.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace sluice {

inline constexpr std::size_t kHistogramBuckets = 496;

/// Index of the bucket holding `value`.
constexpr std::size_t histogram_bucket(std::uint64_t value) noexcept {
  if (value < 16) return static_cast<std::size_t>(value);
  const int exp = 63 - __builtin_clzll(value);  // ≥ 4
  const auto sub = static_cast<std::size_t>((value >> (exp - 3)) & 7U);
  return 16 + static_cast<std::size_t>(exp - 4) * 8 + sub;
}
/// Smallest value that lands in bucket `index`.
constexpr std::uint64_t histogram_bucket_lower(std::size_t index) noexcept {
  if (index < 16) return index;
  const std::size_t exp = (index - 16) / 8 + 4;
  const std::uint64_t sub = (index - 16) % 8;
  return (8 + sub) << (exp - 3);
}
/// Largest value that lands in bucket `index`.
constexpr std::uint64_t histogram_bucket_upper(std::size_t index) noexcept {
  if (index < 16) return index;
  const std::size_t exp = (index - 16) / 8 + 4;
  return histogram_bucket_lower(index) + ((std::uint64_t{1} << (exp - 3)) - 1);
}

/// A copy of a histogram's counts. A plain value.
class HistogramSnapshot {
 public:
  HistogramSnapshot() : counts_(kHistogramBuckets, 0) {}

  std::uint64_t count() const noexcept { return count_; }
  std::uint64_t sum() const noexcept { return sum_; }
  std::uint64_t max() const noexcept { return max_; }
  double mean() const noexcept {
    return count_ ? static_cast<double>(sum_) / static_cast<double>(count_) : 0.0;
  }
  /// The value at quantile q in [0, 1]: the upper bound of the bucket holding the
  /// ceil(q × count)-th smallest sample, never above max(). 0 when empty.
  std::uint64_t percentile(double q) const noexcept;
  std::uint64_t p50() const noexcept { return percentile(0.50); }
  std::uint64_t p99() const noexcept { return percentile(0.99); }
  std::uint64_t p999() const noexcept { return percentile(0.999); }

  const std::vector<std::uint64_t>& counts() const noexcept { return counts_; }

  /// Adds another snapshot's samples into this one.
  void merge(const HistogramSnapshot& other);

 private:
  friend class Histogram;
  std::vector<std::uint64_t> counts_;
  std::uint64_t count_ = 0;
  std::uint64_t sum_ = 0;
  std::uint64_t max_ = 0;
};

/// A concurrent histogram. Thread-safe; never blocks.
class Histogram {
 public:
  Histogram() = default;
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;
  Histogram(Histogram&&) = delete;
  Histogram& operator=(Histogram&&) = delete;
  ~Histogram() = default;

  void record(std::uint64_t value) noexcept {
    buckets_[histogram_bucket(value)].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(value, std::memory_order_relaxed);
    std::uint64_t seen = max_.load(std::memory_order_relaxed);
    while (value > seen && !max_.compare_exchange_weak(seen, value, std::memory_order_relaxed)) {
    }
  }

  HistogramSnapshot snapshot() const;

 private:
  std::array<std::atomic<std::uint64_t>, kHistogramBuckets> buckets_{};
  std::atomic<std::uint64_t> sum_{0};
  std::atomic<std::uint64_t> max_{0};
};

}  // namespace sluice

#include "sluice/histogram.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <thread>
#include <vector>

namespace sluice {
namespace {

TEST(Histogram, BucketsCoverEveryValueWithBoundedError) {
  for (std::uint64_t v : {0ULL, 1ULL, 15ULL, 16ULL, 17ULL, 100ULL, 1000ULL, 123456789ULL,
                          (1ULL << 40) + 12345, ~0ULL}) {
    const auto i = histogram_bucket(v);
    ASSERT_LT(i, kHistogramBuckets);
    EXPECT_LE(histogram_bucket_lower(i), v);
    EXPECT_GE(histogram_bucket_upper(i), v);
    // Relative width ≤ 12.5 %.
    EXPECT_LE(histogram_bucket_upper(i) - histogram_bucket_lower(i), v / 8 + 1);
  }
  // Buckets tile the number line: each starts right after the previous ends.
  for (std::size_t i = 1; i < kHistogramBuckets; ++i) {
    ASSERT_EQ(histogram_bucket_lower(i), histogram_bucket_upper(i - 1) + 1) << i;
  }
}

TEST(Histogram, PercentilesOfAKnownDistribution) {
  Histogram h;
  for (std::uint64_t v = 1; v <= 1000; ++v) h.record(v * 1000);  // 1 µs … 1 ms
  auto s = h.snapshot();
  EXPECT_EQ(s.count(), 1000U);
  EXPECT_EQ(s.max(), 1'000'000U);
  EXPECT_NEAR(static_cast<double>(s.p50()), 500'000.0, 500'000.0 * 0.125);
  EXPECT_NEAR(static_cast<double>(s.p99()), 990'000.0, 990'000.0 * 0.125);
  EXPECT_NEAR(s.mean(), 500'500.0, 1.0);
  EXPECT_EQ(s.percentile(1.0), 1'000'000U);
  EXPECT_EQ(HistogramSnapshot{}.p99(), 0U);
}

TEST(Histogram, ConcurrentRecordsAreAllCounted) {
  Histogram h;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&h, t] {
      for (int i = 0; i < 50'000; ++i) h.record(static_cast<std::uint64_t>(i * (t + 1)));
    });
  }
  for (auto& t : threads) t.join();
  auto s = h.snapshot();
  EXPECT_EQ(s.count(), 200'000U);
  EXPECT_EQ(s.max(), 49'999U * 4);
}

TEST(Histogram, MergeAddsSamples) {
  Histogram a;
  Histogram b;
  a.record(10);
  b.record(1000);
  b.record(20);
  auto s = a.snapshot();
  s.merge(b.snapshot());
  EXPECT_EQ(s.count(), 3U);
  EXPECT_EQ(s.max(), 1000U);
  EXPECT_EQ(s.sum(), 1030U);
}

}  // namespace
}  // namespace sluice

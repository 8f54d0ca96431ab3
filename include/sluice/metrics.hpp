// Sluice — metrics: counters, gauges and latency histograms in one registry, exposed as
// Prometheus text (format 0.0.4) and as a JSON snapshot.
//
// Contract
// - A metric is a family (name, help, type) and a set of label values. registry.counter(),
//   .gauge(), .histogram() return a reference to the one series for (name, labels), creating
//   it on first use; the reference stays valid as long as the registry (series are never
//   removed, except by remove(), which the owner of a dynamic label set such as a subscriber
//   name calls when it goes away).
// - gauge_fn() registers a gauge read at scrape time (queue bytes of a channel, say); the
//   callback must be cheap and thread-safe; remove() unregisters it.
// - Names must match [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]* (not
//   starting with "__"); anything else throws std::invalid_argument naming the offender. A
//   name used with two types throws too. Label *values* may be any UTF-8: the exposition
//   escapes backslash, double quote and newline.
// - Histograms record nanoseconds and are exposed in seconds (Prometheus convention), with
//   fixed `le` bounds from 1 µs to 10 s; counts per bound have the resolution of sluice's
//   log-linear histogram (within 12.5 %).
// - Thread-safety: recording (inc/set/add/record) is lock-free; creating series, removing
//   them and rendering take the registry's mutex. Rendering is consistent per series.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "sluice/detail/thread_annotations.hpp"
#include "sluice/histogram.hpp"

namespace sluice::metrics {

/// Label name → value, in the order given (rendered sorted by name).
using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void inc(std::uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

class Gauge {
 public:
  void set(double v) noexcept { value_.store(v, std::memory_order_relaxed); }
  void add(double v) noexcept { value_.fetch_add(v, std::memory_order_relaxed); }
  double value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

/// Latency in nanoseconds; exposed in seconds.
class LatencyHistogram {
 public:
  void record(std::uint64_t ns) noexcept { h_.record(ns); }
  HistogramSnapshot snapshot() const { return h_.snapshot(); }

 private:
  Histogram h_;
};

enum class Type : std::uint8_t { counter, gauge, histogram };

class Registry {
 public:
  Registry() = default;
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;
  Registry(Registry&&) = delete;
  Registry& operator=(Registry&&) = delete;
  ~Registry() = default;

  Counter& counter(std::string_view name, std::string_view help, const Labels& labels = {});
  Gauge& gauge(std::string_view name, std::string_view help, const Labels& labels = {});
  LatencyHistogram& histogram(std::string_view name, std::string_view help,
                              const Labels& labels = {});
  /// A gauge computed at scrape time. Replaces an earlier callback for the same series.
  void gauge_fn(std::string_view name, std::string_view help, const Labels& labels,
                std::function<double()> read);
  /// A counter whose value is read at scrape time from a monotonic source (a component's own
  /// stats). Replaces an earlier callback for the same series.
  void counter_fn(std::string_view name, std::string_view help, const Labels& labels,
                  std::function<double()> read);
  /// Removes one series (e.g. a subscriber that left). Returns whether it existed.
  bool remove(std::string_view name, const Labels& labels);

  /// Prometheus text exposition format 0.0.4.
  std::string prometheus_text() const;
  /// The series `keep` accepts (by their labels), in the same format; a family left without
  /// series is left out.
  std::string prometheus_text(const std::function<bool(const Labels&)>& keep) const;
  /// {"name": {"type": ..., "help": ..., "series": [{"labels": {...}, "value": ...}, ...]}}
  /// Histograms give count, sum_seconds, p50/p99/max_seconds.
  std::string json() const;

 private:
  struct Series {
    Labels labels;  // sorted by name
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<LatencyHistogram> histogram;
    std::function<double()> read;
  };
  struct Family {
    std::string help;
    Type type = Type::counter;
    std::map<std::string, Series> series;  // key: rendered labels
  };
  Series& series(std::string_view name, std::string_view help, Type type, const Labels& labels)
      SLUICE_REQUIRES(mu_);

  mutable Mutex mu_;
  std::map<std::string, Family, std::less<>> families_ SLUICE_GUARDED_BY(mu_);
};

/// Escapes a label value for the exposition format: \ → \\, " → \", newline → \n.
/// Invalid UTF-8 (a byte that starts no character, a truncated or overlong sequence, a
/// surrogate) is replaced by U+FFFD first: every line of the exposition is valid UTF-8.
std::string escape_label_value(std::string_view value);

/// `text` as valid UTF-8 (each invalid byte replaced by U+FFFD), at most `max_bytes` long, cut
/// at a character boundary. For names that clients give and labels show.
std::string valid_utf8(std::string_view text, std::size_t max_bytes = std::string::npos);

}  // namespace sluice::metrics

#include "sluice/metrics.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace sluice::metrics {

namespace {

bool valid_metric_name(std::string_view s) {
  if (s.empty()) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
    const bool digit = c >= '0' && c <= '9';
    if (!(alpha || (i > 0 && digit))) return false;
  }
  return true;
}

bool valid_label_name(std::string_view s) {
  if (s.empty() || s.substr(0, 2) == "__") return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    const bool digit = c >= '0' && c <= '9';
    if (!(alpha || (i > 0 && digit))) return false;
  }
  return true;
}

std::string_view type_name(Type t) {
  switch (t) {
    case Type::counter:
      return "counter";
    case Type::gauge:
      return "gauge";
    case Type::histogram:
      return "histogram";
  }
  return "untyped";
}

std::string escape_help(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (const char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string format_double(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  std::array<char, 32> buf{};
  std::snprintf(buf.data(), buf.size(), "%.17g", v);
  return buf.data();
}

// {a="1",b="2"} with `extra` appended (for le=...), or "" when empty.
std::string render_labels(const Labels& labels, std::string_view extra = {}) {
  if (labels.empty() && extra.empty()) return {};
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    if (!first) out += ',';
    first = false;
    out += k;
    out += "=\"";
    out += escape_label_value(v);
    out += '"';
  }
  if (!extra.empty()) {
    if (!first) out += ',';
    out += extra;
  }
  out += '}';
  return out;
}

// Upper bounds of the exposed buckets, in seconds: 1-2.5-5 per decade, 1 µs .. 10 s.
const std::vector<double>& bucket_bounds() {
  static const std::vector<double> bounds = [] {
    std::vector<double> b;
    for (double decade = 1e-6; decade < 10; decade *= 10) {
      for (double m : {1.0, 2.5, 5.0}) b.push_back(m * decade);
    }
    b.push_back(10.0);
    return b;
  }();
  return bounds;
}

// Samples at or below `seconds`, at the histogram's bucket resolution.
std::uint64_t count_at_or_below(const HistogramSnapshot& s, double seconds) {
  const auto limit = static_cast<std::uint64_t>(seconds * 1e9);
  std::uint64_t n = 0;
  const auto& counts = s.counts();
  for (std::size_t i = 0; i < counts.size(); ++i) {
    if (histogram_bucket_upper(i) > limit) break;
    n += counts[i];
  }
  return n;
}

}  // namespace

namespace {

// The length of the valid UTF-8 character at the start of `s` (1-4), or 0 if there is none.
std::size_t utf8_char(std::string_view s) {
  const auto b = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  std::size_t n = 0;
  std::uint32_t cp = 0;
  if ((c & 0xE0) == 0xC0) {
    n = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (s.size() < n) return 0;
  for (std::size_t i = 1; i < n; ++i) {
    if ((b(i) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(i) & 0x3F);
  }
  constexpr std::uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

}  // namespace

std::string valid_utf8(std::string_view text, std::size_t max_bytes) {
  constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  std::string out;
  out.reserve(std::min(text.size(), max_bytes));
  while (!text.empty()) {
    const std::size_t n = utf8_char(text);
    const std::string_view piece = n == 0 ? kReplacement : text.substr(0, n);
    if (out.size() + piece.size() > max_bytes) break;
    out += piece;
    text.remove_prefix(n == 0 ? 1 : n);
  }
  return out;
}

std::string escape_label_value(std::string_view raw) {
  const std::string value = valid_utf8(raw);
  std::string out;
  out.reserve(value.size());
  for (const char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

Registry::Series& Registry::series(std::string_view name, std::string_view help, Type type,
                                   const Labels& labels) {
  if (!valid_metric_name(name)) {
    throw std::invalid_argument("metrics: invalid metric name \"" + std::string(name) +
                                "\" (accepted: [a-zA-Z_:][a-zA-Z0-9_:]*)");
  }
  Labels sorted = labels;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    if (!valid_label_name(sorted[i].first) || sorted[i].first == "le") {
      throw std::invalid_argument("metrics: invalid label name \"" + sorted[i].first + "\" on " +
                                  std::string(name) +
                                  " (accepted: [a-zA-Z_][a-zA-Z0-9_]*, not __*, not le)");
    }
    if (i > 0 && sorted[i].first == sorted[i - 1].first) {
      throw std::invalid_argument("metrics: label \"" + sorted[i].first + "\" given twice on " +
                                  std::string(name));
    }
  }
  auto it = families_.find(name);
  if (it == families_.end()) {
    it = families_.emplace(std::string(name), Family{std::string(help), type, {}}).first;
  } else if (it->second.type != type) {
    throw std::invalid_argument("metrics: " + std::string(name) + " is a " +
                                std::string(type_name(it->second.type)) + ", not a " +
                                std::string(type_name(type)));
  }
  const std::string key = render_labels(sorted);
  auto& s = it->second.series[key];
  if (s.labels.empty()) s.labels = std::move(sorted);
  return s;
}

Counter& Registry::counter(std::string_view name, std::string_view help, const Labels& labels) {
  MutexLock lock(mu_);
  Series& s = series(name, help, Type::counter, labels);
  if (!s.counter) s.counter = std::make_unique<Counter>();
  return *s.counter;
}

Gauge& Registry::gauge(std::string_view name, std::string_view help, const Labels& labels) {
  MutexLock lock(mu_);
  Series& s = series(name, help, Type::gauge, labels);
  if (!s.gauge) s.gauge = std::make_unique<Gauge>();
  return *s.gauge;
}

LatencyHistogram& Registry::histogram(std::string_view name, std::string_view help,
                                      const Labels& labels) {
  MutexLock lock(mu_);
  Series& s = series(name, help, Type::histogram, labels);
  if (!s.histogram) s.histogram = std::make_unique<LatencyHistogram>();
  return *s.histogram;
}

void Registry::gauge_fn(std::string_view name, std::string_view help, const Labels& labels,
                        std::function<double()> read) {
  MutexLock lock(mu_);
  Series& s = series(name, help, Type::gauge, labels);
  s.read = std::move(read);
}

void Registry::counter_fn(std::string_view name, std::string_view help, const Labels& labels,
                          std::function<double()> read) {
  MutexLock lock(mu_);
  Series& s = series(name, help, Type::counter, labels);
  s.read = std::move(read);
}

bool Registry::remove(std::string_view name, const Labels& labels) {
  MutexLock lock(mu_);
  auto it = families_.find(name);
  if (it == families_.end()) return false;
  Labels sorted = labels;
  std::sort(sorted.begin(), sorted.end());
  const bool removed = it->second.series.erase(render_labels(sorted)) > 0;
  if (it->second.series.empty()) families_.erase(it);
  return removed;
}

std::string Registry::prometheus_text() const {
  return prometheus_text([](const Labels&) { return true; });
}

std::string Registry::prometheus_text(const std::function<bool(const Labels&)>& keep) const {
  MutexLock lock(mu_);
  std::string out;
  for (const auto& [name, family] : families_) {
    bool any = false;
    for (const auto& [key, s] : family.series) any = any || keep(s.labels);
    if (!any) continue;
    out += "# HELP " + name + " " + escape_help(family.help) + "\n";
    out += "# TYPE " + name + " " + std::string(type_name(family.type)) + "\n";
    for (const auto& [key, s] : family.series) {
      if (!keep(s.labels)) continue;
      switch (family.type) {
        case Type::counter:
          out += name + key + " " +
                 (s.read ? format_double(s.read())
                         : std::to_string(s.counter ? s.counter->value() : 0)) +
                 "\n";
          break;
        case Type::gauge: {
          const double v = s.read ? s.read() : (s.gauge ? s.gauge->value() : 0.0);
          out += name + key + " " + format_double(v) + "\n";
          break;
        }
        case Type::histogram: {
          const HistogramSnapshot snap =
              s.histogram ? s.histogram->snapshot() : HistogramSnapshot{};
          for (const double le : bucket_bounds()) {
            out += name + "_bucket" + render_labels(s.labels, "le=\"" + format_double(le) + "\"") +
                   " " + std::to_string(count_at_or_below(snap, le)) + "\n";
          }
          out += name + "_bucket" + render_labels(s.labels, "le=\"+Inf\"") + " " +
                 std::to_string(snap.count()) + "\n";
          out.append(name).append("_sum").append(key).append(" ");
          out.append(format_double(static_cast<double>(snap.sum()) / 1e9)).append("\n");
          out.append(name).append("_count").append(key).append(" ");
          out.append(std::to_string(snap.count())).append("\n");
          break;
        }
      }
    }
  }
  return out;
}

std::string Registry::json() const {
  MutexLock lock(mu_);
  nlohmann::json root = nlohmann::json::object();
  for (const auto& [name, family] : families_) {
    nlohmann::json f;
    f["type"] = type_name(family.type);
    f["help"] = family.help;
    f["series"] = nlohmann::json::array();
    for (const auto& [key, s] : family.series) {
      nlohmann::json entry;
      entry["labels"] = nlohmann::json::object();
      for (const auto& [k, v] : s.labels) entry["labels"][k] = v;
      switch (family.type) {
        case Type::counter:
          if (s.read) {
            entry["value"] = s.read();
          } else {
            entry["value"] = s.counter ? s.counter->value() : 0;
          }
          break;
        case Type::gauge:
          entry["value"] = s.read ? s.read() : (s.gauge ? s.gauge->value() : 0.0);
          break;
        case Type::histogram: {
          const HistogramSnapshot snap =
              s.histogram ? s.histogram->snapshot() : HistogramSnapshot{};
          entry["count"] = snap.count();
          entry["sum_seconds"] = static_cast<double>(snap.sum()) / 1e9;
          entry["p50_seconds"] = static_cast<double>(snap.p50()) / 1e9;
          entry["p99_seconds"] = static_cast<double>(snap.p99()) / 1e9;
          entry["max_seconds"] = static_cast<double>(snap.max()) / 1e9;
          break;
        }
      }
      f["series"].push_back(std::move(entry));
    }
    root[name] = std::move(f);
  }
  // Invalid UTF-8 in a label value is replaced rather than thrown at scrape time.
  return root.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace sluice::metrics

// Metrics registry: series, types, names, escaping; the exposition is checked by the real
// Prometheus parser (python3-prometheus-client) as well as by string checks.
#include "sluice/metrics.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace sluice::metrics {
namespace {

TEST(Metrics, CountersAndGaugesRenderWithSortedLabels) {
  Registry r;
  r.counter("sluice_dropped_total", "Items dropped", {{"topic", "cam"}, {"reason", "overflow"}})
      .inc(3);
  r.gauge("sluice_queue_bytes", "Bytes queued", {{"topic", "cam"}}).set(1024);
  const std::string text = r.prometheus_text();
  EXPECT_NE(text.find("# TYPE sluice_dropped_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("sluice_dropped_total{reason=\"overflow\",topic=\"cam\"} 3\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("sluice_queue_bytes{topic=\"cam\"} 1024\n"), std::string::npos) << text;
}

TEST(Metrics, SameSeriesIsTheSameObject) {
  Registry r;
  Counter& a = r.counter("c_total", "c", {{"k", "v"}});
  Counter& b = r.counter("c_total", "c", {{"k", "v"}});
  EXPECT_EQ(&a, &b);
  a.inc();
  b.inc();
  EXPECT_EQ(a.value(), 2U);
}

TEST(Metrics, GaugeFunctionIsReadAtScrapeTimeAndRemovable) {
  Registry r;
  double level = 5;
  r.gauge_fn("level", "a level", {{"tank", "a"}}, [&] { return level; });
  level = 7;
  EXPECT_NE(r.prometheus_text().find("level{tank=\"a\"} 7\n"), std::string::npos);
  EXPECT_TRUE(r.remove("level", {{"tank", "a"}}));
  EXPECT_EQ(r.prometheus_text().find("level{"), std::string::npos);
  EXPECT_FALSE(r.remove("level", {{"tank", "a"}}));
}

TEST(Metrics, HistogramsAreCumulativeInSeconds) {
  Registry r;
  auto& h = r.histogram("latency_seconds", "publish to receive", {{"topic", "t"}});
  h.record(500);               // 0.5 us
  h.record(2'000'000);         // 2 ms
  h.record(3'000'000'000ULL);  // 3 s
  const std::string text = r.prometheus_text();
  EXPECT_NE(text.find("latency_seconds_bucket{topic=\"t\",le=\"9.9999999999999995e-07\"} 1\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("latency_seconds_bucket{topic=\"t\",le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("latency_seconds_count{topic=\"t\"} 3\n"), std::string::npos);
}

TEST(Metrics, BadNamesAndTypeClashesAreRefusedByName) {
  Registry r;
  EXPECT_THROW(r.counter("9lives", "x"), std::invalid_argument);
  EXPECT_THROW(r.counter("ok_total", "x", {{"__reserved", "v"}}), std::invalid_argument);
  EXPECT_THROW(r.counter("ok_total", "x", {{"a-b", "v"}}), std::invalid_argument);
  r.counter("thing", "x");
  try {
    r.gauge("thing", "x");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("thing is a counter"), std::string::npos) << e.what();
  }
}

TEST(Metrics, LabelValuesAreEscaped) {
  EXPECT_EQ(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

TEST(Metrics, JsonSnapshotParses) {
  Registry r;
  r.counter("c_total", "c", {{"topic", "q\"uote"}}).inc(2);
  r.histogram("h_seconds", "h").record(1000);
  const auto j = nlohmann::json::parse(r.json());
  EXPECT_EQ(j["c_total"]["series"][0]["value"], 2);
  EXPECT_EQ(j["c_total"]["series"][0]["labels"]["topic"], "q\"uote");
  EXPECT_EQ(j["h_seconds"]["series"][0]["count"], 1);
}

// The real parser: a topic name with quotes, backslashes and a newline survives the round trip.
TEST(Metrics, PrometheusClientParserReadsTheExposition) {
  Registry r;
  const std::string nasty = "cam \"front\"\\left\nline2";
  r.counter("sluice_items_total", "Items\nreceived \\ total", {{"topic", nasty}}).inc(42);
  r.gauge("sluice_queue_bytes", "Bytes", {{"topic", nasty}}).set(1.5);
  r.histogram("sluice_latency_seconds", "Latency", {{"topic", nasty}}).record(1'000'000);
  char path[] = "/tmp/sluice_metrics_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  {
    std::ofstream out(path);
    out << r.prometheus_text();
  }
  const std::string script =
      "import sys\n"
      "from prometheus_client.parser import text_string_to_metric_families\n"
      "text = open(sys.argv[1]).read()\n"
      "for f in text_string_to_metric_families(text):\n"
      "    for s in f.samples:\n"
      "        print(repr((s.name, s.labels.get('topic'), s.value)))\n";
  // Debian's python3 (where python3-prometheus-client lives), not a python3 earlier on PATH.
  const std::string cmd =
      "/usr/bin/python3 - " + std::string(path) + " 2>&1 <<'PY'\n" + script + "PY\n";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string output;
  std::array<char, 4096> buf{};
  while (fgets(buf.data(), buf.size(), p) != nullptr) output += buf.data();
  const int status = pclose(p);
  unlink(path);
  ASSERT_EQ(status, 0) << "python3-prometheus-client could not parse:\n" << output;
  EXPECT_NE(output.find("('sluice_items_total', 'cam \"front\"\\\\left\\nline2', 42.0)"),
            std::string::npos)
      << output;
  EXPECT_NE(output.find("sluice_latency_seconds_count"), std::string::npos) << output;
}

}  // namespace
}  // namespace sluice::metrics

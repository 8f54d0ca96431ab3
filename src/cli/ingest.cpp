// `sluice ingest` over sluice::media::IngestPublisher (an Ingest whose sink is a Publisher): it
// publishes, blocking while the relay throttles, which fills the ingest's queue and drops at
// the source; the relay's slow_down / resume thin the frames at the source.
#include "ingest.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "console.hpp"
#include "sluice/relay/protocol.hpp"

namespace sluice::cli {

namespace {

nlohmann::json to_json(const media::IngestStats& s) {
  return {{"frames", s.frames},
          {"published", s.handed},
          {"queued", s.queued},
          {"bytes", s.bytes},
          {"keyframes", s.keyframes},
          {"dropped",
           {{"backpressure", s.dropped_backpressure},
            {"slow_down", s.dropped_slow_down},
            {"until_keyframe", s.dropped_until_keyframe}}},
          {"reconnects", s.reconnects},
          {"connected", s.connected},
          {"caps", s.caps},
          {"last_error", s.last_error}};
}

}  // namespace

int run_ingest(const IngestCliOptions& o) {
  Mutex mu;
  CondVar cv;
  bool interrupted = false;  // (under mu)
  SignalWatch watch([&] {
    const MutexLock lock(mu);
    interrupted = true;
    cv.notify_all();
  });
  std::unique_ptr<media::IngestPublisher> ingest;
  try {
    ingest = std::make_unique<media::IngestPublisher>(
        o.ingest, o.publisher, [](const client::PublisherEvent& e) {
          print_line(stdout, {{"event", std::string(client::to_string(e.kind))},
                              {"queue_bytes", e.queue_bytes}});
        });
  } catch (const std::exception& e) {
    print_line(stderr, {{"error", e.what()}});
    return 2;
  }
  ingest->start();
  print_line(stdout, {{"event", "ingest_started"},
                      {"uri", o.ingest.uri},
                      {"output", media::to_string(o.ingest.output)},
                      {"topic", o.publisher.topic},
                      {"server", o.publisher.target}});
  IngestReporter report(o.stats_every_s);
  while (true) {
    {
      const MutexLock lock(mu);
      if (!interrupted) (void)cv.wait_for(mu, std::chrono::milliseconds(200));
      if (interrupted || ingest->failed().has_value()) break;
    }
    const auto s = ingest->stats();
    report.changes(s, {});
    if (s.finished) break;
  }
  ingest->stop();
  bool stopped_by_signal = false;
  {
    const MutexLock lock(mu);
    stopped_by_signal = interrupted;
  }
  // Interrupted, the last acks are waited for 1 s at most (a relay that is unreachable would hold
  // a SIGTERM up for the publisher's whole retry budget): then the summary says what is not
  // acknowledged and the process ends at once, exit 0.
  auto closing = std::async(std::launch::async, [&ingest] { return ingest->close(); });
  if (stopped_by_signal && closing.wait_for(std::chrono::seconds(1)) != std::future_status::ready) {
    nlohmann::json summary = to_json(ingest->stats());
    summary["event"] = "summary";
    summary["acked"] = ingest->acked();
    summary["error"] = "interrupted before the relay acknowledged every frame";
    print_line(stdout, summary);
    std::fflush(stdout);
    std::_Exit(0);  // (the publisher's threads still wait for the relay: not joined)
  }
  const auto closed = closing.get();
  nlohmann::json summary = to_json(ingest->stats());
  summary["event"] = "summary";
  summary["acked"] = ingest->acked();
  // (a file that could not be read ends the ingest with its error: exit 1)
  const auto end = ingest->stats();
  const bool unread = end.finished && !end.last_error.empty();
  const auto failed = ingest->failed();
  if (failed) {
    summary["error"] = failed->to_string();
  } else if (!closed.ok()) {
    summary["error"] = closed.to_string();
  } else if (unread) {
    summary["error"] = end.last_error;
  }
  print_line(stdout, summary);
  if (stopped_by_signal) return failed ? 1 : 0;  // (stopped as asked; a refusal still counts)
  return failed || !closed.ok() || unread ? 1 : 0;
}

namespace {

// An ingest's series: its name and help, the stats field it shows, whether it is a counter
// (else a gauge), and its labels besides the topic.
struct IngestSeries {
  const char* name;
  const char* help;
  std::uint64_t media::IngestStats::*field;
  bool counter;
  metrics::Labels extra;
};

const std::vector<IngestSeries>& ingest_series() {
  using S = media::IngestStats;
  static constexpr const char* kDropped =
      "Frames an [[ingest]] entry dropped at its source, by reason";
  static const std::vector<IngestSeries> kSeries = {
      {"sluice_ingest_frames_total",
       "Frames an [[ingest]] entry's pipeline produced",
       &S::frames,
       true,
       {}},
      {"sluice_ingest_published_total",
       "Frames an [[ingest]] entry handed to its topic",
       &S::handed,
       true,
       {}},
      {"sluice_ingest_bytes_total",
       "Payload bytes an [[ingest]] entry handed to its topic",
       &S::bytes,
       true,
       {}},
      {"sluice_ingest_keyframes_total",
       "Keyframes among an [[ingest]] entry's frames",
       &S::keyframes,
       true,
       {}},
      {"sluice_ingest_reconnects_total",
       "Times an [[ingest]] entry's live source was lost and built again",
       &S::reconnects,
       true,
       {}},
      {"sluice_ingest_dropped_total",
       kDropped,
       &S::dropped_backpressure,
       true,
       {{"reason", "backpressure"}}},
      {"sluice_ingest_dropped_total",
       kDropped,
       &S::dropped_slow_down,
       true,
       {{"reason", "slow_down"}}},
      {"sluice_ingest_dropped_total",
       kDropped,
       &S::dropped_until_keyframe,
       true,
       {{"reason", "until_keyframe"}}},
      {"sluice_ingest_queued",
       "Frames waiting to be handed to the topic now",
       &S::queued,
       false,
       {}},
  };
  return kSeries;
}

constexpr const char* kConnected = "sluice_ingest_connected";

metrics::Labels labels_of(const media::IngestPublisher& i, const metrics::Labels& extra) {
  metrics::Labels l = extra;
  l.emplace_back("topic", i.publisher_options().topic);
  return l;
}

}  // namespace

void ServedIngests::add_series(const media::IngestPublisher& i) {
  for (const auto& s : ingest_series()) {
    auto read = [&i, f = s.field] { return static_cast<double>(i.stats().*f); };
    if (s.counter) {
      registry_.counter_fn(s.name, s.help, labels_of(i, s.extra), read);
    } else {
      registry_.gauge_fn(s.name, s.help, labels_of(i, s.extra), read);
    }
  }
  registry_.gauge_fn(kConnected, "1 while an [[ingest]] entry's source is playing",
                     labels_of(i, {}), [&i] { return i.stats().connected ? 1.0 : 0.0; });
}

void ServedIngests::remove_series(const media::IngestPublisher& i) {
  for (const auto& s : ingest_series()) registry_.remove(s.name, labels_of(i, s.extra));
  registry_.remove(kConnected, labels_of(i, {}));
}

ServedIngests::ServedIngests(const std::vector<IngestEntryConfig>& entries,
                             const std::string& grpc_target, metrics::Registry& registry)
    : registry_(registry) {
  for (const auto& e : entries) {
    media::IngestOptions in;
    in.uri = e.uri;
    if (!media::parse_output(e.output, in.output))
      throw std::invalid_argument("[[ingest]] " + e.uri + ": output " + e.output);
    in.width = e.width;
    in.height = e.height;
    in.fps = e.fps;
    in.queue_frames = e.queue_frames;
    in.source_timeout = e.source_timeout;
    client::PublisherOptions pub;
    pub.target = grpc_target;
    pub.topic = e.topic;
    pub.token = e.token;
    const nlohmann::json about = {{"topic", e.topic}, {"uri", e.uri}};
    ingests_.push_back(std::make_unique<media::IngestPublisher>(
        in, pub, [about](const client::PublisherEvent& ev) {
          nlohmann::json j = about;
          j["event"] = std::string(client::to_string(ev.kind));
          j["queue_bytes"] = ev.queue_bytes;
          print_line(stdout, j);
        }));
  }
  for (auto& i : ingests_) {
    add_series(*i);
    i->start();
    print_line(stdout, {{"event", "ingest_started"},
                        {"uri", i->options().uri},
                        {"output", media::to_string(i->options().output)},
                        {"topic", i->publisher_options().topic}});
  }
  if (ingests_.empty()) return;
  reporter_ = std::thread([this] {
    std::vector<IngestReporter> reports(ingests_.size(), IngestReporter(60));
    const MutexLock lock(mu_);
    for (auto next = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
         !stopping_;) {
      if (cv_.wait_until(mu_, next)) continue;  // (woken: stopping, or not yet time)
      next += std::chrono::milliseconds(500);
      for (std::size_t n = 0; n < ingests_.size(); ++n) {
        const auto& i = *ingests_[n];
        reports[n].changes(i.stats(),
                           {{"topic", i.publisher_options().topic}, {"uri", i.options().uri}});
      }
    }
  });
}

ServedIngests::~ServedIngests() {
  stop();
}

void ServedIngests::stop() {
  {
    const MutexLock lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  if (reporter_.joinable()) reporter_.join();
  for (auto& i : ingests_) {
    remove_series(*i);  // (before the ingest goes: a scrape reads it)
    i->stop();
    (void)i->close();
  }
}

void IngestReporter::changes(const media::IngestStats& s, const nlohmann::json& extra) {
  if (s.last_error != last_error_ || s.reconnects != reconnects_) {
    if (!s.last_error.empty() && s.last_error != last_error_) {
      nlohmann::json j = extra;
      j["event"] = "source_lost";
      j["error"] = s.last_error;
      print_line(stdout, j);
    }
    if (s.reconnects != reconnects_) {
      nlohmann::json j = extra;
      j["event"] = "reconnecting";
      j["reconnects"] = s.reconnects;
      print_line(stdout, j);
    }
    last_error_ = s.last_error;
    reconnects_ = s.reconnects;
  }
  if (every_s_ > 0 && std::chrono::steady_clock::now() >= next_stats_) {
    nlohmann::json j = to_json(s);
    for (const auto& [k, v] : extra.items()) j[k] = v;
    j["event"] = "stats";
    print_line(stdout, j);
    next_stats_ += std::chrono::seconds(every_s_);
  }
}

}  // namespace sluice::cli

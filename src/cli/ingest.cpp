// `sluice ingest` over sluice::media::Ingest and sluice::client::Publisher: the ingest's sink
// publishes (blocking while the relay throttles, which fills the ingest's queue and drops at
// the source); the relay's slow_down / resume thin the frames at the source.
#include "ingest.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
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
  std::mutex mu;
  std::condition_variable cv;
  bool interrupted = false;
  SignalWatch watch([&] {
    const std::lock_guard lock(mu);
    interrupted = true;
    cv.notify_all();
  });
  std::unique_ptr<media::Ingest> ingest;
  std::atomic<bool> slowed{false};
  client::Publisher pub(o.publisher, [&](const client::PublisherEvent& e) {
    if (e.kind != client::PublisherEvent::Kind::slow_down &&
        e.kind != client::PublisherEvent::Kind::resume)
      return;
    slowed = e.kind == client::PublisherEvent::Kind::slow_down;
    print_line(stdout,
               {{"event", std::string(client::to_string(e.kind))}, {"queue_bytes", e.queue_bytes}});
  });
  client::Status failed;
  std::atomic<bool> failing{false};
  try {
    ingest = std::make_unique<media::Ingest>(o.ingest, [&](media::IngestFrame&& f) {
      if (failing) return;
      // (a delta frame is marked: after a loss the relay resumes each viewer at a keyframe)
      const auto s = pub.publish(std::move(f.payload), f.timestamp_ns, f.keyframe ? 0 : kItemDelta);
      if (!s.ok()) {
        failing = true;
        const std::lock_guard lock(mu);
        failed = s;
        cv.notify_all();
      }
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
  std::uint64_t reconnects = 0;
  std::string last_error;
  auto next_stats = std::chrono::steady_clock::now() + std::chrono::seconds(o.stats_every_s);
  while (true) {
    {
      std::unique_lock lock(mu);
      if (cv.wait_for(lock, std::chrono::milliseconds(200),
                      [&] { return interrupted || failing.load(); }))
        break;
    }
    ingest->set_slowed(slowed);
    const auto s = ingest->stats();
    if (s.last_error != last_error || s.reconnects != reconnects) {
      if (!s.last_error.empty() && s.last_error != last_error)
        print_line(stdout, {{"event", "source_lost"}, {"error", s.last_error}});
      if (s.reconnects != reconnects)
        print_line(stdout, {{"event", "reconnecting"}, {"reconnects", s.reconnects}});
      last_error = s.last_error;
      reconnects = s.reconnects;
    }
    if (s.finished) break;
    if (o.stats_every_s > 0 && std::chrono::steady_clock::now() >= next_stats) {
      nlohmann::json j = to_json(s);
      j["event"] = "stats";
      print_line(stdout, j);
      next_stats += std::chrono::seconds(o.stats_every_s);
    }
  }
  ingest->stop();
  const auto closed = pub.close();
  nlohmann::json summary = to_json(ingest->stats());
  summary["event"] = "summary";
  summary["acked"] = pub.stats().acked;
  // (a file that could not be read ends the ingest with its error: exit 1)
  const auto end = ingest->stats();
  const bool unread = end.finished && !end.last_error.empty();
  if (failing) {
    summary["error"] = failed.to_string();
  } else if (!closed.ok()) {
    summary["error"] = closed.to_string();
  } else if (unread) {
    summary["error"] = end.last_error;
  }
  print_line(stdout, summary);
  return failing || !closed.ok() || unread ? 1 : 0;
}

}  // namespace sluice::cli

// `sluice pub` / `sluice sub` over sluice::client.
#include "pubsub.hpp"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <functional>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "console.hpp"
#include "sluice/client/client.hpp"
#include "sluice/histogram.hpp"
#include "sluice/relay/protocol.hpp"  // unix_now_ns

namespace sluice::cli {

namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

int run_pub(const PubOptions& o) {
  std::atomic<bool> interrupted{false};  // SIGINT/SIGTERM: stop, flush, summarize
  SignalWatch watch([&interrupted] { interrupted = true; });  // (before the client's threads)
  client::PublisherOptions po;
  po.target = o.target;
  po.topic = o.topic;
  po.token = o.token;
  po.tls = o.tls;
  po.window_bytes = o.window_bytes;
  po.max_retries = o.max_retries;
  client::Publisher pub(po, [&o](const client::PublisherEvent& e) {
    if (o.quiet || e.kind == client::PublisherEvent::Kind::ack) return;
    nlohmann::json j{{"event", std::string(client::to_string(e.kind))}};
    if (e.kind == client::PublisherEvent::Kind::retrying) {
      j["backoff_ms"] = e.backoff.count();
      j["status"] = e.message;
    } else {
      j["queue_bytes"] = e.queue_bytes;
      if (e.kind == client::PublisherEvent::Kind::slow_down) j["limit_bytes"] = e.limit_bytes;
    }
    print_line(stderr, j);
  });

  const auto start = Clock::now();
  client::Status status;
  Progress progress([&pub, start] {
    const auto s = pub.stats();
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    return "sent " + std::to_string(s.published) + ", acked " + std::to_string(s.acked) + " (" +
           std::to_string(static_cast<std::uint64_t>(secs > 0 ? double(s.acked) / secs : 0)) +
           "/s), slow_downs " + std::to_string(s.slow_downs) + ", retries " +
           std::to_string(s.retries);
  });
  if (o.from_stdin) {
    for (std::string line; status.ok() && !interrupted && std::getline(std::cin, line);) {
      status = pub.publish(Buffer(std::move(line)));
    }
  } else {
    const std::string payload(o.size, 'x');
    for (std::uint64_t i = 0; i < o.count && status.ok() && !interrupted; ++i) {
      if (o.rate > 0) {
        std::this_thread::sleep_until(
            start + std::chrono::duration_cast<Clock::duration>(
                        std::chrono::duration<double>(static_cast<double>(i) / o.rate)));
      }
      status = pub.publish(Buffer::copy(payload));
    }
  }
  if (status.ok()) status = pub.close();
  progress.stop();
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const auto s = pub.stats();
  // Rates count what the relay acknowledged (is in the topic), not what was handed over.
  const double acked_bytes =
      s.published > 0 ? double(s.bytes) * double(s.acked) / double(s.published) : 0.0;
  nlohmann::json summary{{"event", "published"},
                         {"topic", o.topic},
                         {"sent", s.published},
                         {"acked", s.acked},
                         {"unacknowledged", pub.unacknowledged()},
                         {"bytes", s.bytes},
                         {"seconds", seconds},
                         {"acked_per_s", seconds > 0 ? double(s.acked) / seconds : 0.0},
                         {"acked_mb_per_s", seconds > 0 ? acked_bytes / seconds / 1e6 : 0.0},
                         {"slow_downs", s.slow_downs},
                         {"resumes", s.resumes},
                         {"retries", s.retries},
                         {"resent", s.resent},
                         {"interrupted", interrupted.load()},
                         {"status", status.to_string()}};
  if (!status.ok()) summary["refused"] = status.message;  // why the rest did not go in
  print_line(stdout, summary);
  return status.ok() ? 0 : 1;
}

int run_sub(const SubOptions& o) {
  client::SubscriberOptions so;
  so.target = o.target;
  so.fallback_targets = o.fallbacks;
  so.topic = o.topic;
  so.token = o.token;
  so.tls = o.tls;
  so.name = o.name;
  so.depth = o.depth;
  so.reconnect = o.reconnect_s > 0;
  so.reconnect_for = std::chrono::seconds(o.reconnect_s);
  std::atomic<client::Subscriber*> current{nullptr};
  std::atomic<bool> ended_by_us{false};  // a signal, or --count reached
  SignalWatch watch([&current, &ended_by_us] {
    ended_by_us = true;
    if (auto* s = current.load()) s->cancel();
  });
  client::Subscriber sub(so);
  current = &sub;
  std::FILE* report = o.print ? stderr : stdout;
  if (sub.subscribed()) {  // (a refusal is told in the summary, not after "subscribed")
    print_line(report, {{"event", "subscribed"}, {"topic", o.topic}, {"name", o.name}});
  }

  Histogram latency;
  constexpr std::int64_t kHourNs = std::int64_t{3600} * 1'000'000'000;
  std::uint64_t other_clock = 0;  // items whose stamps are not wall-clock time
  const auto start = Clock::now();
  std::uint64_t items = 0;
  Progress progress([&sub, start] {
    const auto s = sub.stats();
    const double secs = std::chrono::duration<double>(Clock::now() - start).count();
    return "received " + std::to_string(s.items) + " (" +
           std::to_string(static_cast<std::uint64_t>(secs > 0 ? double(s.items) / secs : 0)) +
           "/s), gaps " + std::to_string(s.gaps) + ", lost " + std::to_string(s.lost) +
           ", reconnects " + std::to_string(s.reconnects);
  });
  const auto status = sub.run(
      [&](client::SubscriberEvent& e) {
        // Latency only from wall-clock stamps (what the SDKs and the relay put by default): a
        // stamp more than an hour away from now is another clock (a media timestamp) and says
        // nothing of latency; such items are counted apart.
        const std::int64_t age = unix_now_ns() - e.timestamp_ns;
        if (age > -kHourNs && age < kHourNs) {
          latency.record(static_cast<std::uint64_t>(std::max<std::int64_t>(age, 0)));
        } else {
          ++other_clock;
        }
        if (o.print) {
          std::fwrite(e.payload.data(), 1, e.payload.size(), stdout);
          std::fputc('\n', stdout);
        }
        if (++items == o.count) {
          ended_by_us = true;
          sub.cancel();
        }
      },
      [&](std::uint64_t lost, const std::string& reason) {
        print_line(stderr, {{"event", "gap"}, {"lost", lost}, {"reason", reason}});
      });
  current = nullptr;
  progress.stop();
  std::fflush(stdout);
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const auto s = sub.stats();
  const auto h = latency.snapshot();
  const bool measured = s.items > other_clock;
  // Ended by us (count reached, or a signal) is a normal end; the relay ending the stream
  // (it stopped and did not come back, or closed the topic) is not: a supervisor must see it.
  const bool ok = ended_by_us.load() && (status.ok() || status.code == 1);
  print_line(report,
             {{"event", "received"},
              {"topic", o.topic},
              {"items", s.items},
              {"bytes", s.bytes},
              {"gaps", s.gaps},
              {"lost", s.lost},
              {"seconds", seconds},
              {"latency_p50_us", measured ? nlohmann::json(double(h.percentile(0.5)) / 1e3)
                                          : nlohmann::json(nullptr)},
              {"latency_p99_us", measured ? nlohmann::json(double(h.percentile(0.99)) / 1e3)
                                          : nlohmann::json(nullptr)},
              {"latency_items", s.items - std::min(s.items, other_clock)},
              {"other_clock_items", other_clock},
              {"reconnects", s.reconnects},
              {"status", ok            ? std::string("OK")
                         : status.ok() ? std::string("UNAVAILABLE: the relay ended the stream")
                                       : status.to_string()}});
  return ok ? 0 : 1;
}

}  // namespace sluice::cli

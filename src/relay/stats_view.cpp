#include "stats_view.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "bridge_counters.hpp"

namespace sluice::relay {

namespace {

double ms(std::chrono::nanoseconds d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

nlohmann::json gate_json(const FrameGateStats& g) {
  return {{"state", std::string(to_string(g.state))},
          {"drop_rate", g.drop_rate},
          {"offered", g.offered},
          {"admitted", g.admitted},
          {"done", g.done},
          {"in_flight", g.in_flight},
          {"smoothed_processing_ms", ms(g.smoothed_processing)},
          {"slow_downs", g.slow_downs},
          {"resumes", g.resumes}};
}

nlohmann::json worker_json(const WorkerStats& w) {
  return {{"id", w.id},
          {"name", w.name},
          {"health", std::string(to_string(w.health))},
          {"in_flight", w.in_flight},
          {"max_concurrent", w.max_concurrent},
          {"queued", w.queued},
          {"queue_items", w.queue_items},
          {"completed", w.completed},
          {"errors", w.errors},
          {"timeouts", w.timeouts},
          {"smoothed_latency_ms", ms(w.smoothed_latency)}};
}

nlohmann::json stage_json(const Stage& st) {
  const auto g = st.gate_stats();
  const auto d = st.dispatcher_stats();
  nlohmann::json j;
  j["results_topic"] = st.config().results_topic;
  j["gate"] = gate_json(g);
  j["drop_threshold"] = st.drop_threshold();
  j["slowdown_threshold"] = st.slowdown_threshold();
  nlohmann::json dropped = nlohmann::json::object();
  for (const DropReason r : kAllDropReasons) {
    if (const auto n = g.dropped[r] + d.dropped[r] + d.failed_by_reason[r]; n > 0)
      dropped[std::string(to_string(r))] = n;
  }
  j["dropped"] = dropped;
  j["results"] = st.results();
  j["accepted"] = d.accepted;
  j["completed"] = d.completed;
  j["rerouted"] = d.rerouted;
  j["queued"] = d.queued;
  j["in_flight"] = d.in_flight;
  j["workers"] = nlohmann::json::array();
  for (const auto& w : d.workers) j["workers"].push_back(worker_json(w));
  return j;
}

nlohmann::json topic_json(const Topic& t, TopicSummary& sum) {
  const auto s = t.broadcast.stats();
  nlohmann::json tj;
  tj["name"] = t.name;
  tj["mode"] = to_string(t.config.mode);
  tj["content_type"] = t.config.content_type;
  tj["published"] = s.published;
  const auto published_bytes = t.published_bytes.load(std::memory_order_relaxed);
  const auto throttled_publishers = t.throttled_publishers.load(std::memory_order_relaxed);
  tj["published_bytes"] = published_bytes;
  tj["throttled_publishers"] = throttled_publishers;
  tj["throttled_total"] = t.throttled_total.load(std::memory_order_relaxed);
  tj["would_block"] = s.would_block;
  tj["blocked_seconds"] = s.blocked_seconds;
  tj["evicted"] = s.evicted;
  tj["latency_p99_ms"] = static_cast<double>(s.latency_ns.percentile(0.99)) / 1e6;
  tj["latency_p50_ms"] = static_cast<double>(s.latency_ns.percentile(0.5)) / 1e6;
  tj["max_queue_bytes"] = t.config.max_queue_bytes;
  tj["max_queue_items"] = t.config.max_queue_items;
  std::uint64_t worst_bytes = 0;
  tj["subscribers"] = nlohmann::json::array();
  // Each subscriber's extras: the first not yet taken with its name and first sequence.
  std::vector<SubscriberExtras> extras;
  std::vector<std::pair<std::uint64_t, SubscriberExtras::Verdict>> sampled;  // unsent, verdict
  std::vector<std::uint64_t> skipped;                                        // until_keyframe
  t.with_extras([&](const std::vector<SubscriberExtras>& all) {
    extras = all;
    for (const auto& e : all) {
      sampled.emplace_back(e.unsent ? e.unsent->load(std::memory_order_relaxed) : 0,
                           e.verdict->load(std::memory_order_relaxed));
      skipped.push_back(e.until_keyframe ? e.until_keyframe->load(std::memory_order_relaxed) : 0);
    }
  });
  std::vector<bool> taken(extras.size(), false);
  for (const auto& sub : s.subscribers) {
    worst_bytes = std::max(worst_bytes, sub.lag_bytes);
    nlohmann::json lost = nlohmann::json::object();
    for (const DropReason r : kAllDropReasons) {
      if (sub.lost[r] > 0) lost[std::string(to_string(r))] = sub.lost[r];
    }
    tj["subscribers"].push_back({{"name", sub.name},
                                 {"received", sub.received},
                                 {"lost", sub.lost.total()},
                                 {"lost_by_reason", lost},
                                 {"depth", sub.depth},
                                 {"lag", sub.lag},
                                 {"lag_bytes", sub.lag_bytes},
                                 {"max_lag", sub.max_lag},
                                 {"evicted", sub.evicted}});
    auto& j = tj["subscribers"].back();
    for (std::size_t i = 0; i < extras.size(); ++i) {
      if (taken[i] || extras[i].name != sub.name || extras[i].joined_at != sub.joined_at) continue;
      taken[i] = true;
      j["session"] = extras[i].session;
      j["sends"] = SubscriberExtras::verdict_name(sampled[i].second);
      if (extras[i].unsent != nullptr) j["kernel_unsent_bytes"] = sampled[i].first;
      j["until_keyframe"] = skipped[i];
      // (what its session skipped up to a keyframe was taken from the topic, not delivered:
      // lost, reason until_keyframe)
      if (skipped[i] != 0) {
        j["received"] = SubscriberExtras::delivered(sub.received, skipped[i]);
        j["lost"] = sub.lost.total() + skipped[i];
        j["lost_by_reason"]["until_keyframe"] = skipped[i];
      }
      break;
    }
  }
  tj["queue_bytes"] = worst_bytes;
  sum.name = t.name;
  sum.mode = to_string(t.config.mode);
  sum.published = s.published;
  sum.published_bytes = published_bytes;
  sum.subscribers = static_cast<std::uint32_t>(tj["subscribers"].size());
  sum.queue_bytes = worst_bytes;
  sum.retained_bytes = s.retained_bytes;
  for (const auto& j : tj["subscribers"]) sum.lost += j["lost"].get<std::uint64_t>();
  sum.evicted = s.evicted;
  sum.throttled_publishers = throttled_publishers;
  sum.epoch = t.epoch;
  sum.retained_from = s.retained_from;
  tj["retained_bytes"] = s.retained_bytes;
  tj["retained_from"] = s.retained_from;  // the oldest position a subscriber can resume at
  tj["group_items"] = s.group_items;      // a video's current group kept: where a newcomer starts
  tj["epoch"] = t.epoch;
  tj["timeouts"] = t.publish_timeouts.load(std::memory_order_relaxed);
  if (t.stage) tj["stage"] = stage_json(*t.stage);
  tj["scope"] = to_string(t.config.scope);
  if (t.config.scope == TopicScope::cluster) {
    const auto& b = *t.bridge;
    auto& bj = tj["bridge"];
    for (const auto& c : kBridgeCounterNames)
      bj[c.key] = (b.*c.value).load(std::memory_order_relaxed);
    bj["pending"] = b.pending.load(std::memory_order_relaxed);
    bj["receiving"] = b.receiving.load(std::memory_order_relaxed);
    bj["max_item_bytes"] = b.max_item_bytes.load(std::memory_order_relaxed);
    auto& relays = bj["relays"] = nlohmann::json::array();
    for (const auto& r : b.relays()) {
      relays.push_back({{"name", r.name}, {"subscribers", r.subscribers}, {"self", r.self}});
    }
  }
  return tj;
}

}  // namespace

Outcome<StatsReader> StatsReader::join(const TopicRegistry& topics, Who who) {
  if (!who->may_any(Action::stats)) {
    return Refusal{RefusalKind::permission_denied,
                   "principal '" + who->name() + "' may not read stats"};
  }
  return StatsReader(topics, std::move(who));
}

StatsReader StatsReader::everything(const TopicRegistry& topics) {
  return {topics, nullptr};
}

StatsSnapshot StatsReader::snapshot() const {
  StatsSnapshot out;
  out.json["topics"] = nlohmann::json::array();
  for (const auto& t : topics_->all()) {
    if (who_ && !who_->may(Action::stats, t->name)) continue;
    out.json["topics"].push_back(topic_json(*t, out.topics.emplace_back()));
  }
  return out;
}

bool StatsReader::sees(const metrics::Labels& labels) const {
  return std::ranges::all_of(labels, [this](const auto& label) {
    const auto& [name, value] = label;
    return (name != "topic" && name != "stage") || !who_ || who_->may(Action::stats, value);
  });
}

std::string stats_text(const nlohmann::json& stats) {
  return stats.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace sluice::relay

#include "topic_registry.hpp"

#include <functional>
#include <utility>

#include "bridge_counters.hpp"

namespace sluice::relay {

TopicRegistry::TopicRegistry(const RelayConfig& config, metrics::Registry& metrics)
    : config_(config),
      metrics_(metrics),
      refused_(metrics.counter("sluice_topics_refused_total",
                               "New topics refused: limits.max_topics reached")),
      removed_(metrics.counter("sluice_topics_removed_total",
                               "Topics made on first use and removed after "
                               "topics.idle_timeout_ms unused")) {
  // (from the count, not under the lock: a scrape holds the metrics' lock, and creating a topic
  // takes this registry's lock, then the metrics')
  metrics.gauge_fn("sluice_topics", "Topics now", {},
                   [this] { return double(count_.load(std::memory_order_relaxed)); });
  metrics.gauge_fn("sluice_topics_limit", "limits.max_topics", {},
                   [this] { return double(config_.max_topics); });
}

Outcome<std::shared_ptr<Topic>> TopicRegistry::find(const std::string& name) {
  if (const std::string problem = topic_name_problem(name); !problem.empty())
    return Refusal{RefusalKind::bad_request, "topic \"" + name.substr(0, 200) + "\": " + problem,
                   ""};
  MutexLock lock(mu_);
  return find_locked(name);
}

Outcome<std::shared_ptr<Topic>> TopicRegistry::find_locked(const std::string& name) {
  if (auto it = topics_.find(name); it != topics_.end()) return it->second;
  const TopicConfig* declared = config_.topic(name);
  if (declared == nullptr && !config_.auto_create) {
    return Refusal{RefusalKind::not_found,
                   "topic '" + name +
                       "' does not exist and auto_create is off (declare it in the "
                       "configuration file, or set SLUICE_AUTO_CREATE=true)",
                   "SLUICE_AUTO_CREATE"};
  }
  if (topics_.size() >= config_.max_topics) {
    refused_.inc();
    return Refusal{RefusalKind::too_many_topics,
                   "topic '" + name + "' would be topic " + std::to_string(topics_.size() + 1) +
                       "; limits.max_topics (SLUICE_MAX_TOPICS) allows " +
                       std::to_string(config_.max_topics) +
                       " (topics made on first use go after topics.idle_timeout_ms unused)",
                   "SLUICE_MAX_TOPICS"};
  }
  TopicConfig tc = declared != nullptr ? *declared : config_.defaults;
  tc.name = name;
  auto t = std::make_shared<Topic>(name, tc, config_.max_producer_ids,
                                   tc.scope == TopicScope::cluster && config_.nats.enabled());
  t->removable = declared == nullptr && config_.topic_idle_timeout.count() > 0;
  // In the map first: a results topic whose own stage's results are this topic finds it
  // (stages A -> B -> A) instead of making it again, forever.
  topics_.emplace(name, t);
  if (tc.stage) {
    auto stage = make_stage(name, tc);
    if (!stage) {
      topics_.erase(name);
      return std::move(stage.refusal());
    }
    t->stage = std::move(*stage);
  }
  register_metrics(*t);
  count_.store(topics_.size(), std::memory_order_relaxed);
  if (created_) created_(t);
  return t;
}

void TopicRegistry::on_created(std::function<void(const std::shared_ptr<Topic>&)> hook) {
  MutexLock lock(mu_);
  created_ = std::move(hook);
}

Outcome<std::shared_ptr<Stage>> TopicRegistry::make_stage(const std::string& name,
                                                          const TopicConfig& tc) {
  // Its results form a topic of their own (declared, or made with the defaults).
  auto results = find_locked(tc.stage->results_topic);
  if (results) (*results)->removable = false;  // (the stage publishes into it)
  if (!results) {
    Refusal r = std::move(results.refusal());
    r.message = "topic '" + name + "': its stage's results topic '" + tc.stage->results_topic +
                "' cannot be made: " + r.message;
    return r;
  }
  return std::make_shared<Stage>(
      name, *tc.stage, config_.drop_threshold, config_.slowdown_threshold,
      // (weak: two stages may publish into each other's topics; the map owns topics)
      [weak = std::weak_ptr<Topic>(*results)](RelayMessage&& m) {
        const auto r = weak.lock();
        return r && r->put(m) == Topic::Put::in;
      },
      metrics_);
}

std::vector<std::shared_ptr<Topic>> TopicRegistry::all() const {
  MutexLock lock(mu_);
  std::vector<std::shared_ptr<Topic>> v;
  v.reserve(topics_.size());
  for (const auto& [name, t] : topics_) v.push_back(t);
  return v;
}

std::vector<std::shared_ptr<Stage>> TopicRegistry::stages() const {
  MutexLock lock(mu_);
  std::vector<std::shared_ptr<Stage>> v;
  for (const auto& [name, t] : topics_) {
    if (t->stage) v.push_back(t->stage);
  }
  return v;
}

std::size_t TopicRegistry::size() const {
  return count_.load(std::memory_order_relaxed);
}

// In use: a session holds it (publishers, subscribers and workers keep a reference while they
// are there; the map holds the other), or someone is subscribed.
bool TopicRegistry::in_use(const std::shared_ptr<Topic>& t) {
  return t.use_count() > 1 || t->user_subscribers() > 0;
}

std::size_t TopicRegistry::remove_idle(std::chrono::steady_clock::time_point now) {
  std::vector<std::shared_ptr<Topic>> gone;  // (released after the lock)
  {
    MutexLock lock(mu_);
    for (auto it = topics_.begin(); it != topics_.end();) {
      Topic& t = *it->second;
      if (!t.removable || in_use(it->second)) {
        t.idle_since.reset();
        ++it;
        continue;
      }
      if (!t.idle_since) t.idle_since = now;
      if (now - *t.idle_since < config_.topic_idle_timeout) {
        ++it;
        continue;
      }
      for (const auto& [series, labels] : t.series) metrics_.remove(series, labels);
      gone.push_back(std::move(it->second));
      it = topics_.erase(it);
    }
    count_.store(topics_.size(), std::memory_order_relaxed);
  }
  removed_.inc(gone.size());
  return gone.size();
}

void TopicRegistry::close_all() {  // NOLINT(readability-make-member-function-const): closes the
                                   // topics
  for (const auto& t : all()) t->broadcast.close();
}

// Series read from the topic's own stats at scrape time (each noted on the topic, so that
// removing the topic removes them).
void TopicRegistry::register_metrics(Topic& t) {
  const metrics::Labels labels{{"topic", t.name}};
  std::weak_ptr<Topic> weak = topics_.at(t.name);
  const auto read = [weak](auto pick) {
    return [weak, pick]() -> double {
      const auto topic = weak.lock();
      return topic ? pick(*topic) : 0.0;
    };
  };
  const auto stat = [&read](auto pick) {
    return read([pick](const Topic& topic) { return pick(topic.broadcast.stats()); });
  };
  const auto counter = [&](const char* name, const char* help, const metrics::Labels& l,
                           std::function<double()> f) {
    metrics_.counter_fn(name, help, l, std::move(f));
    t.series.emplace_back(name, l);
  };
  const auto gauge = [&](const char* name, const char* help, std::function<double()> f) {
    metrics_.gauge_fn(name, help, labels, std::move(f));
    t.series.emplace_back(name, labels);
  };
  counter("sluice_topic_published_total", "Items published to the topic", labels,
          stat([](const BroadcastStats& s) { return double(s.published); }));
  counter("sluice_topic_publish_timeouts_total",
          "Publishes that gave up after max_wait (RESOURCE_EXHAUSTED, WebSocket 1013)", labels,
          read([](const Topic& topic) {
            return double(topic.publish_timeouts.load(std::memory_order_relaxed));
          }));
  gauge("sluice_topic_subscribers", "Current subscribers",
        read([](const Topic& topic) { return double(topic.broadcast.subscriber_count()); }));
  gauge("sluice_topic_queue_bytes", "Bytes the furthest-behind subscriber has outstanding",
        read([](const Topic& topic) { return double(topic.broadcast.queue_bytes()); }));
  gauge("sluice_topic_queue_items",
        "Items the furthest-behind subscriber has outstanding (max_queue_items)",
        read([](const Topic& topic) { return double(topic.broadcast.queue_items()); }));
  gauge("sluice_topic_retained_bytes",
        "Payload bytes the topic holds for subscribers that have not passed them",
        read([](const Topic& topic) { return double(topic.broadcast.retained_bytes()); }));
  counter("sluice_topic_dropped_total", "Items lost by current subscribers, by reason",
          {{"topic", t.name}, {"reason", "slow_consumer"}}, stat([](const BroadcastStats& s) {
            std::uint64_t lost = 0;
            for (const auto& sub : s.subscribers) lost += sub.lost[DropReason::slow_consumer];
            return double(lost);
          }));
  if (t.config.scope != TopicScope::cluster) return;
  for (const auto& c : kBridgeCounterNames) {
    counter(c.metric, c.help, labels, read([value = c.value](const Topic& topic) {
              return double(((*topic.bridge).*value).load(std::memory_order_relaxed));
            }));
  }
  gauge("sluice_bridge_pending", "Items sent and not yet acked by JetStream, or held for order",
        read([](const Topic& topic) {
          return double(topic.bridge->pending.load(std::memory_order_relaxed));
        }));
}

}  // namespace sluice::relay

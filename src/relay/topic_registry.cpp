#include "topic_registry.hpp"

#include <utility>

namespace sluice::relay {

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
  TopicConfig tc = declared != nullptr ? *declared : config_.defaults;
  tc.name = name;
  auto t = std::make_shared<Topic>(name, tc);
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
  register_metrics(t);
  return t;
}

Outcome<std::shared_ptr<Stage>> TopicRegistry::make_stage(const std::string& name,
                                                          const TopicConfig& tc) {
  // Its results form a topic of their own (declared, or made with the defaults).
  auto results = find_locked(tc.stage->results_topic);
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
        return r && r->broadcast.try_publish(std::move(m)).status == SendStatus::ok;
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

void TopicRegistry::close_all() {  // NOLINT(readability-make-member-function-const): closes the
                                   // topics
  for (const auto& t : all()) t->broadcast.close();
}

// Series read from the topic's own stats at scrape time.
void TopicRegistry::register_metrics(const std::shared_ptr<Topic>& t) {
  const metrics::Labels labels{{"topic", t->name}};
  std::weak_ptr<Topic> weak = t;
  const auto read = [weak](auto pick) {
    return [weak, pick]() -> double {
      const auto topic = weak.lock();
      return topic ? pick(*topic) : 0.0;
    };
  };
  const auto stat = [&read](auto pick) {
    return read([pick](const Topic& topic) { return pick(topic.broadcast.stats()); });
  };
  metrics_.counter_fn("sluice_topic_published_total", "Items published to the topic", labels,
                      stat([](const BroadcastStats& s) { return double(s.published); }));
  metrics_.counter_fn("sluice_topic_publish_timeouts_total",
                      "Publishes that gave up after max_wait (RESOURCE_EXHAUSTED, WebSocket 1013)",
                      labels, read([](const Topic& topic) {
                        return double(topic.publish_timeouts.load(std::memory_order_relaxed));
                      }));
  metrics_.gauge_fn(
      "sluice_topic_subscribers", "Current subscribers", labels,
      read([](const Topic& topic) { return double(topic.broadcast.subscriber_count()); }));
  metrics_.gauge_fn("sluice_topic_queue_bytes",
                    "Bytes the furthest-behind subscriber has outstanding", labels,
                    read([](const Topic& topic) { return double(topic.broadcast.queue_bytes()); }));
  metrics_.gauge_fn("sluice_topic_queue_items",
                    "Items the furthest-behind subscriber has outstanding (max_queue_items)",
                    labels,
                    read([](const Topic& topic) { return double(topic.broadcast.queue_items()); }));
  metrics_.gauge_fn(
      "sluice_topic_retained_bytes",
      "Payload bytes the topic holds for subscribers that have not passed them", labels,
      read([](const Topic& topic) { return double(topic.broadcast.retained_bytes()); }));
  metrics_.counter_fn("sluice_topic_dropped_total", "Items lost by current subscribers, by reason",
                      {{"topic", t->name}, {"reason", "slow_consumer"}},
                      stat([](const BroadcastStats& s) {
                        std::uint64_t lost = 0;
                        for (const auto& sub : s.subscribers)
                          lost += sub.lost[DropReason::slow_consumer];
                        return double(lost);
                      }));
}

}  // namespace sluice::relay

#include "stage.hpp"

#include <algorithm>
#include <utility>

#include "event_log.hpp"

namespace sluice::relay {

namespace {

FrameGateConfig gate_config(const std::string& topic, const StageConfig& c, double drop,
                            double slowdown) {
  FrameGateConfig g;
  g.name = topic;
  g.fps(c.fps);
  g.max_in_flight = c.max_in_flight;
  g.drop_threshold = drop;
  g.slowdown_threshold = slowdown;
  return g;
}

DispatcherConfig dispatcher_config(const std::string& topic, const StageConfig& c) {
  DispatcherConfig d;
  d.name = topic;
  d.overflow = OverflowPolicy::drop_newest;  // the relay's I/O thread never waits
  d.task_timeout = c.task_timeout;
  d.slow_latency = c.slow_latency;
  d.probe_after = std::min<std::chrono::nanoseconds>(c.task_timeout, std::chrono::seconds(1));
  return d;
}

double seconds(std::chrono::nanoseconds d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

Stage::Stage(std::string topic, StageConfig config, double drop_threshold,
             double slowdown_threshold, PublishFn publish_result, metrics::Registry& registry)
    : topic_(std::move(topic)),
      config_(std::move(config)),
      drop_threshold_(drop_threshold),
      slowdown_threshold_(slowdown_threshold),
      publish_(std::move(publish_result)),
      registry_(registry),
      gate_(gate_config(topic_, config_, drop_threshold, slowdown_threshold)),
      dispatcher_(dispatcher_config(topic_, config_),
                  [this](StageItem&& item, DropReason reason, std::string_view message) {
                    gate_.abandon(item.frame.sequence);
                    dropped(item, reason, std::string(message));
                  }),
      results_(&registry.counter("sluice_stage_results_total",
                                 "Results the stage's workers published", {{"stage", topic_}})),
      results_dropped_(&registry.counter(
          "sluice_stage_results_dropped_total",
          "Results the results topic refused (a full lossless topic)", {{"stage", topic_}})) {
  const metrics::Labels labels{{"stage", topic_}};
  frames_ = &registry_.counter("sluice_stage_frames_total", "Frames offered to the stage", labels);
  for (const DropReason r :
       {DropReason::in_flight, DropReason::frame_late, DropReason::drop_rate, DropReason::overflow,
        DropReason::no_worker, DropReason::worker_failed}) {
    dropped_.at(static_cast<std::size_t>(r)) = &registry_.counter(
        "sluice_stage_dropped_total", "Frames the stage did not process, by reason",
        {{"stage", topic_}, {"reason", std::string(to_string(r))}});
  }
  for (const auto kind : {GateSignal::Kind::slow_down, GateSignal::Kind::resume}) {
    signals_.at(static_cast<std::size_t>(kind)) = &registry_.counter(
        "sluice_stage_signals_total", "slow_down and resume signals sent to publishers",
        {{"stage", topic_}, {"kind", std::string(to_string(kind))}});
  }
  registry_.gauge_fn("sluice_stage_in_flight", "Frames held by the stage's workers", labels,
                     [this] { return double(dispatcher_.stats().in_flight); });
  registry_.gauge_fn("sluice_stage_queued", "Frames routed to a worker and not yet sent to it",
                     labels, [this] { return double(dispatcher_.stats().queued); });
  registry_.gauge_fn("sluice_stage_workers", "Workers joined", labels,
                     [this] { return double(dispatcher_.workers()); });
  registry_.gauge_fn("sluice_stage_drop_rate", "The frame gate's windowed drop rate", labels,
                     [this] { return gate_.stats().drop_rate; });
  registry_.gauge_fn("sluice_stage_gate_state",
                     "The frame gate's state: 0 normal, 1 warning, 2 critical", labels,
                     [this] { return double(static_cast<int>(gate_.stats().state)); });
  registry_.gauge_fn("sluice_stage_processing_seconds",
                     "The gate's smoothed processing time (admission to result)", labels,
                     [this] { return seconds(gate_.stats().smoothed_processing); });
  registry_.counter_fn("sluice_stage_rerouted_total",
                       "Frames moved to another worker after a failure, timeout or departure",
                       labels, [this] { return double(dispatcher_.stats().rerouted); });
}

Stage::~Stage() {
  dispatcher_.close();
  const metrics::Labels labels{{"stage", topic_}};
  for (const char* name : {"sluice_stage_in_flight", "sluice_stage_queued", "sluice_stage_workers",
                           "sluice_stage_drop_rate", "sluice_stage_gate_state",
                           "sluice_stage_processing_seconds", "sluice_stage_rerouted_total"}) {
    registry_.remove(name, labels);
  }
}

void Stage::offer(const RelayMessage& frame, const std::weak_ptr<StageListener>& publisher) {
  frames_->inc();
  const auto now = Clock::now();
  const Admission a = gate_.admit(frame.sequence, now);
  if (a.signal) {
    signals_.at(static_cast<std::size_t>(a.signal->kind))->inc();
    if (auto p = publisher.lock()) p->stage_signal(*a.signal);
  }
  StageItem item{frame, publisher, now};
  if (!a.admitted) {
    dropped(item, a.reason, {});
    return;
  }
  auto r = dispatcher_.try_route(std::move(item), now);
  if (r.status == RouteStatus::routed) return;
  // (try_route moved nothing unless it routed or dropped; rebuild what we tell from `frame`)
  gate_.abandon(frame.sequence);
  dropped(StageItem{frame, publisher, now},
          r.status == RouteStatus::dropped ? r.reason : DropReason::no_worker, r.message);
}

Stage::Worker Stage::join(const std::string& name, std::uint32_t concurrency) {
  WorkerConfig w;
  w.name = name;
  w.max_concurrent = concurrency;
  w.queue_items = config_.worker_queue;
  Worker handle = dispatcher_.join(w);
  const metrics::Labels labels{
      {"stage", topic_}, {"worker", name}, {"id", std::to_string(handle.id())}};
  const std::uint64_t id = handle.id();
  const auto stat = [this, id](auto pick) {
    return [this, id, pick]() -> double {
      const auto s = dispatcher_.worker_stats(id);
      return s ? pick(*s) : 0.0;
    };
  };
  registry_.gauge_fn("sluice_worker_in_flight", "Frames the worker holds", labels,
                     stat([](const WorkerStats& s) { return double(s.in_flight); }));
  registry_.gauge_fn("sluice_worker_max_concurrent", "The worker's credit", labels,
                     stat([](const WorkerStats& s) { return double(s.max_concurrent); }));
  registry_.gauge_fn("sluice_worker_queue_fill", "The worker's queue: items / queue_items", labels,
                     stat([](const WorkerStats& s) {
                       return double(s.queued) / double(std::max<std::size_t>(s.queue_items, 1));
                     }));
  registry_.gauge_fn("sluice_worker_latency_seconds", "The worker's smoothed latency", labels,
                     stat([](const WorkerStats& s) { return seconds(s.smoothed_latency); }));
  registry_.gauge_fn("sluice_worker_health",
                     "0 healthy, 1 overloaded, 2 slow, 3 unhealthy (errors or timeouts)", labels,
                     stat([](const WorkerStats& s) { return double(static_cast<int>(s.health)); }));
  registry_.counter_fn("sluice_worker_completed_total", "Frames the worker completed", labels,
                       stat([](const WorkerStats& s) { return double(s.completed); }));
  registry_.counter_fn("sluice_worker_errors_total", "Frames the worker reported failed", labels,
                       stat([](const WorkerStats& s) { return double(s.errors); }));
  registry_.counter_fn("sluice_worker_timeouts_total",
                       "Frames the worker held past stage_task_timeout_ms", labels,
                       stat([](const WorkerStats& s) { return double(s.timeouts); }));
  return handle;
}

void Stage::leave(Worker& worker) {
  if (!worker.joined()) return;
  const auto s = worker.stats();
  const std::uint64_t id = worker.id();
  worker.leave();  // re-routes or fails what it held
  const metrics::Labels labels{
      {"stage", topic_}, {"worker", s ? s->name : std::string()}, {"id", std::to_string(id)}};
  for (const char* name :
       {"sluice_worker_in_flight", "sluice_worker_max_concurrent", "sluice_worker_queue_fill",
        "sluice_worker_latency_seconds", "sluice_worker_health", "sluice_worker_completed_total",
        "sluice_worker_errors_total", "sluice_worker_timeouts_total"}) {
    registry_.remove(name, labels);
  }
}

bool Stage::completed(Worker& worker, const Task& task, Buffer result) {
  const auto now = Clock::now();
  if (!worker.complete(task.id, now)) return false;
  gate_.done(task.item.frame.sequence, now - task.item.admitted);
  RelayMessage out{std::move(result), task.item.frame.sequence, task.item.frame.timestamp_ns};
  if (publish_(std::move(out))) {
    results_->inc();
  } else {
    results_dropped_->inc();
  }
  return true;
}

void Stage::poll() {
  dispatcher_.poll();
  // Workers' health changes go to the log (worker_health); one that left is forgotten.
  std::map<std::uint64_t, WorkerHealth> now;
  for (const auto& w : dispatcher_.stats().workers) {
    now[w.id] = w.health;
    const auto was = health_.find(w.id);
    const WorkerHealth before = was == health_.end() ? WorkerHealth::healthy : was->second;
    if (before != w.health) {
      log::event(w.health == WorkerHealth::healthy ? log::Level::info : log::Level::warn,
                 "worker_health",
                 {{"topic", topic_},
                  {"worker", w.name},
                  {"from", std::string(to_string(before))},
                  {"to", std::string(to_string(w.health))},
                  {"in_flight", w.in_flight},
                  {"queued", w.queued}});
    }
  }
  health_ = std::move(now);
}

metrics::Counter& Stage::counter(DropReason reason) const {
  return *dropped_.at(static_cast<std::size_t>(reason));
}

void Stage::dropped(const StageItem& item, DropReason reason, const std::string& detail) {
  counter(reason).inc();
  if (auto p = item.publisher.lock()) p->stage_dropped(item.frame.sequence, reason, detail);
}

StageMember::StageMember(std::shared_ptr<Stage> stage, const std::string& name,
                         std::uint32_t concurrency)
    : stage_(std::move(stage)), handle_(stage_->join(name, concurrency)) {}

StageMember& StageMember::operator=(StageMember&& other) noexcept {
  if (this != &other) {
    leave();
    stage_ = std::move(other.stage_);
    handle_ = std::move(other.handle_);
    held_ = std::move(other.held_);
  }
  return *this;
}

void StageMember::take(std::deque<RelayMessage>& out) {
  while (auto t = handle_.try_take()) {
    out.push_back(t->item.frame);
    held_.emplace(t->item.frame.sequence, std::move(*t));
  }
}

std::optional<std::string> StageMember::result(std::uint64_t index, Buffer payload) {
  const auto it = held_.find(index);
  if (it == held_.end()) return not_held(index);
  const Stage::Task task = std::move(it->second);
  held_.erase(it);
  if (!stage_->completed(handle_, task, std::move(payload))) return not_held(index);
  return std::nullopt;
}

std::optional<std::string> StageMember::error(std::uint64_t index, const std::string& why) {
  const auto it = held_.find(index);
  if (it == held_.end()) return not_held(index);
  const std::uint64_t task = it->second.id;
  held_.erase(it);
  if (!handle_.fail(task, why.substr(0, 200))) return not_held(index);
  return std::nullopt;
}

void StageMember::leave() {
  held_.clear();
  if (stage_) stage_->leave(handle_);
}

std::string StageMember::not_held(std::uint64_t index) {
  return "frame " + std::to_string(index) +
         " is not held by this worker (it timed out and went to another worker, or was never "
         "sent)";
}

}  // namespace sluice::relay

#include "subscriber_pump.hpp"

#include <stdexcept>
#include <utility>

namespace sluice::relay {

Outcome<std::unique_ptr<SubscriberPump>> SubscriberPump::join(RelayCore& core,
                                                              const SubscribeRequest& r,
                                                              const char* default_name,
                                                              bool kernel_unsent) {
  if (auto refusal = Access::check(*r.who, Action::subscribe, r.topic)) return *refusal;
  auto t = core.topics.find(r.topic);
  if (!t) return std::move(t.refusal());
  try {
    Topic& topic = **t;
    // (a name shows in stats and as a label: valid UTF-8, at most 128 bytes)
    std::string name = r.name.empty() ? default_name : metrics::valid_utf8(r.name, 128);
    // Resuming in this run: at its position. From another run (the relay restarted): it has
    // seen nothing of this one, so from the oldest item retained.
    const bool resumes = !r.resume_epoch.empty() && r.resume_epoch == topic.epoch;
    // A newcomer starts at the latest keyframe the topic keeps (its current group), if any.
    auto sub = resumes ? topic.broadcast.subscribe_from(r.resume_from, name, r.depth)
               : !r.resume_epoch.empty() ? topic.broadcast.subscribe_from(0, name, r.depth)
                                         : topic.broadcast.subscribe_at_group(name, r.depth);
    const std::uint64_t joined = sub.joined_at();
    std::unique_ptr<SubscriberPump> pump(
        new SubscriberPump(core, std::move(*t), std::move(sub), kernel_unsent));
    pump->start_position_ = joined;
    // (a new subscriber starts at a keyframe)
    pump->want_keyframe_ = pump->realtime() || r.start_at_keyframe;
    pump->principal_ = r.who->name();
    log::event(log::Level::info, "session_opened",
               {{"kind", "subscriber"},
                {"topic", pump->topic().name},
                {"principal", pump->principal_},
                {"name", pump->name()},
                {"session", pump->id()},
                {"position", joined}});
    if (r.resume_epoch.empty()) return pump;
    std::string_view outcome = "exact";
    pump->want_keyframe_ = false;  // (exactly where it was: what it decoded goes on; else a gap)
    if (!resumes) {
      outcome = "relay_restart";
      pump->resume_gap(0, DropReason::relay_restart);
    } else if (joined > r.resume_from) {
      outcome = "retention";
      pump->resume_gap(joined - r.resume_from, DropReason::retention);
      pump->start_position_ = r.resume_from;
    }
    core.metrics
        .counter("sluice_subscriber_resumes_total",
                 "Subscribers that came back at a position: exact, or after a gap (retention: "
                 "no longer retained; relay_restart: another run of the topic)",
                 {{"outcome", std::string(outcome)}, {"topic", pump->topic().name}})
        .inc();
    return pump;
  } catch (const std::invalid_argument& e) {  // (the broadcast's own check: depth)
    return Refusal{RefusalKind::bad_request, e.what(), ""};
  }
}

SubscriberPump::SubscriberPump(RelayCore& core, std::shared_ptr<Topic> topic,
                               Subscription<RelayMessage> sub, bool kernel_unsent)
    : core_(core),
      topic_(std::move(topic)),
      sub_(std::move(sub)),
      id_(core.admission.next_id()),
      kernel_unsent_(kernel_unsent),
      series_(core.metrics, topic_->name, sub_, id_, kernel_unsent ? &unsent_ : nullptr,
              until_keyframe_total_) {
  topic_->add_extras({id_, sub_.name(), sub_.stats().joined_at, kernel_unsent_ ? &unsent_ : nullptr,
                      &verdict_, &until_keyframe_total_});
}

void SubscriberPump::resume_gap(std::uint64_t lost, DropReason reason) {
  RecvResult<RelayMessage> gap;
  gap.status = RecvStatus::gap;
  gap.lost = lost;
  gap.reason = reason;
  held_ = std::move(gap);
}

SubscriberPump::~SubscriberPump() {
  if (log::enabled(log::Level::info) && sub_.active()) {
    const auto s = sub_.stats();
    log::event(
        log::Level::info, "session_closed",
        {{"kind", "subscriber"},
         {"topic", topic_->name},
         {"principal", principal_},
         {"name", s.name},
         {"session", id_},
         {"seconds",
          std::chrono::duration<double>(std::chrono::steady_clock::now() - opened_at_).count()},
         {"items", SubscriberExtras::delivered(
                       s.received, until_keyframe_total_.load(std::memory_order_relaxed))},
         {"lost", s.lost.total() + until_keyframe_total_.load(std::memory_order_relaxed)}});
  }
  topic_->remove_extras(id_);
}

SubscriberPump::Next SubscriberPump::next(std::size_t max_items, std::size_t max_bytes) {
  batch_.clear();
  std::size_t bytes = 0;
  while (batch_.size() < max_items && bytes < max_bytes) {
    auto r = held_ ? std::move(*held_) : sub_.try_recv();
    held_.reset();
    if (r.status == RecvStatus::ok && r->bridge_lost != 0) {
      // lost between relays: said before this item (and what it skipped before, first)
      if (!batch_.empty() || skipped_ != 0) {
        held_ = std::move(r);
        return !batch_.empty() ? Next::items : keyframe_gap();
      }
      gap_lost_ = r->bridge_lost;
      gap_reason_ = DropReason::bridge;
      r->bridge_lost = 0;  // (this subscriber's copy)
      held_ = std::move(r);
      want_keyframe_ = realtime();
      return Next::gap;
    }
    if (r.status == RecvStatus::ok && want_keyframe_) {
      if ((r->flags & kItemDelta) != 0) {  // (it would not decode: skipped, told later)
        ++skipped_;
        until_keyframe_total_.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      want_keyframe_ = false;
      if (skipped_ != 0) {
        held_ = std::move(r);
        return keyframe_gap();
      }
    }
    switch (r.status) {
      case RecvStatus::ok:
        bytes += r->payload.size();
        batch_.push_back(std::move(*r));
        continue;
      case RecvStatus::would_block:
        return batch_.empty() ? Next::idle : Next::items;
      default:
        break;
    }
    if (!batch_.empty() || skipped_ != 0) {  // a gap or the end goes after these
      held_ = std::move(r);
      return !batch_.empty() ? Next::items : keyframe_gap();
    }
    if (r.status == RecvStatus::gap) {
      gap_lost_ = r.lost;
      gap_reason_ = r.reason;
      want_keyframe_ = realtime();
      return Next::gap;
    }
    if (r.status == RecvStatus::evicted) {
      end_ = Refusal{RefusalKind::evicted, "evicted: the topic's publisher could not wait", ""};
      log::event(log::Level::warn, "evicted",
                 {{"topic", topic_->name}, {"subscriber", sub_.name()}, {"session", id_}});
    }
    return Next::end;
  }
  return Next::items;
}

SubscriberPump::Next SubscriberPump::keyframe_gap() {
  gap_lost_ = skipped_;
  gap_reason_ = DropReason::until_keyframe;
  skipped_ = 0;
  return Next::gap;
}

void SubscriberPump::arm(std::function<void()> wake) {
  sub_.on_readable(std::move(wake));
}

// Every send_timeout while something waits: progress, or for how long none (see the header).
void SubscriberPump::tick() {
  ticking_ = false;
  if (end_) return;
  using V = SubscriberExtras::Verdict;
  const Progress p = watch_.probe();
  const auto now = std::chrono::steady_clock::now();
  const bool moved = p.delivered != delivered_;
  delivered_ = p.delivered;
  if (!p.waiting && (!p.unprocessed || realtime())) {  // all of it reached the subscriber
    waited_ = false;
    if (!p.unprocessed) {
      verdict(V::ok, "");
      return;
    }
    verdict(V::late, "its window is unacknowledged");  // (paused: looked at again)
    last_progress_ = now;                              // (the network is not what it waits for)
    ticking_ = true;
    watch_.later([this] { tick(); });
    return;
  }
  if (moved) last_progress_ = now;
  const auto still = std::chrono::duration_cast<std::chrono::milliseconds>(now - last_progress_);
  const auto stall = core_.config.send_timeout * static_cast<long>(core_.config.max_send_timeouts);
  const auto evict = topic_->config.evict_after;
  const bool stalled = still >= stall;
  // (real-time: a stall ends it; lossless: only evict_after_ms without progress does)
  const bool ends = realtime() ? stalled : evict.count() > 0 && still >= evict;
  if (stalled || ends) {
    verdict(V::stalled, "no progress in " + std::to_string(still.count()) + " ms");
    if (ends) {
      const Refusal r = stalled_refusal(still);
      leave();
      end_ = r;
      watch_.end(r);
      return;
    }
  } else if (waited_) {
    verdict(V::late, moved ? "behind, making progress"
                           : "behind, no progress in " + std::to_string(still.count()) + " ms");
  }
  waited_ = true;
  ticking_ = true;
  watch_.later([this] { tick(); });
}

// A change of verdict: shown in the stats (sends), counted and logged once.
void SubscriberPump::verdict(SubscriberExtras::Verdict v, std::string_view why) {
  using V = SubscriberExtras::Verdict;
  const V was = verdict_.exchange(v, std::memory_order_relaxed);
  if (was == v) return;
  // (late and back are everyday on a busy relay: debug; a stall, and the way back from one, not)
  const auto level = v == V::stalled     ? log::Level::warn
                     : was == V::stalled ? log::Level::info
                                         : log::Level::debug;
  log::event(level, "slow_subscriber",
             {{"topic", topic_->name},
              {"subscriber", sub_.name()},
              {"session", id_},
              {"verdict", std::string(SubscriberExtras::verdict_name(v))},
              {"was", std::string(SubscriberExtras::verdict_name(was))},
              {"reason", std::string(why)}});
  if (v == V::ok) return;
  core_.metrics
      .counter("sluice_slow_viewers_total",
               "Subscribers found late (behind, making progress) or stalled (no progress for "
               "limits.send_timeout_ms x limits.max_send_timeouts), by topic",
               {{"kind", v == V::stalled ? "stalled" : "slow"}, {"topic", topic_->name}})
      .inc();
}

Refusal SubscriberPump::stalled_refusal(std::chrono::milliseconds still) const {
  const auto ms = core_.config.send_timeout.count();
  const std::string n = std::to_string(core_.config.max_send_timeouts);
  if (!realtime()) {
    const std::string evict = std::to_string(topic_->config.evict_after.count());
    return Refusal{RefusalKind::slow_consumer,
                   "disconnected as a slow consumer: no progress in " +
                       std::to_string(still.count()) + " ms on lossless topic '" + topic_->name +
                       "' (topics.evict_after_ms = " + evict + ")",
                   "topics.evict_after_ms",
                   "slow consumer: no progress in " + evict + " ms (topics.evict_after_ms)"};
  }
  return Refusal{RefusalKind::slow_consumer,
                 "disconnected as a slow consumer: no progress in " +
                     std::to_string(still.count()) + " ms (limits.send_timeout_ms " +
                     std::to_string(ms) + " x limits.max_send_timeouts " + n + ")",
                 "limits.max_send_timeouts",
                 "slow consumer: no progress in " + n + " x " + std::to_string(ms) +
                     " ms (limits.max_send_timeouts, limits.send_timeout_ms)"};
}

void SubscriberPump::leave() {
  series_.leave();
}

}  // namespace sluice::relay

#include "publish_session.hpp"

#include <utility>

namespace sluice::relay {

// The producer as the stage sees it: each notice is posted to the session's loop and handed
// to the transport there (no lock of the transport's is taken on the thread that caused it,
// which may hold the stage's).
class PublishSession::Notices final : public StageListener {
 public:
  Notices(IoThread& loop, std::string stage, std::function<void(PublishEvent)> deliver)
      : loop_(loop), stage_(std::move(stage)), deliver_(std::move(deliver)) {}
  void stage_dropped(std::uint64_t sequence, DropReason reason,
                     const std::string& detail) override {
    PublishEvent e;
    e.kind = PublishEvent::Kind::dropped;
    e.topic = stage_;
    e.sequence = sequence;
    e.reason = reason;
    e.detail = detail;
    post(std::move(e));
  }
  void stage_signal(const GateSignal& signal) override {
    PublishEvent e;
    e.topic = stage_;
    e.drop_rate = signal.drop_rate;
    if (signal.kind == GateSignal::Kind::slow_down) {
      e.kind = PublishEvent::Kind::stage_slow_down;
      e.detail =
          "the stage's windowed drop rate passed the slowdown threshold "
          "(STREAM_SLOWDOWN_THRESHOLD): send fewer frames";
    } else {
      e.kind = PublishEvent::Kind::stage_resume;
    }
    post(std::move(e));
  }

 private:
  void post(PublishEvent e) {
    loop_.post([deliver = deliver_, e = std::move(e)]() mutable { deliver(std::move(e)); });
  }
  IoThread& loop_;
  const std::string stage_;
  std::function<void(PublishEvent)> deliver_;
};

PublishSession::~PublishSession() {
  set_slowed(false);
  if (topic_ && log::enabled(log::Level::info)) {
    log::event(
        log::Level::info, "session_closed",
        {{"kind", "publisher"},
         {"topic", topic_->name},
         {"principal", who_->name()},
         {"seconds",
          std::chrono::duration<double>(std::chrono::steady_clock::now() - opened_at_).count()},
         {"items", items_},
         {"throttles", throttles_}});
  }
}

void PublishSession::set_slowed(bool on) {
  if (on == slowed_) return;
  slowed_ = on;
  if (!topic_) return;
  if (on) {
    ++throttles_;
    topic_->throttled_publishers.fetch_add(1, std::memory_order_relaxed);
    topic_->throttled_total.fetch_add(1, std::memory_order_relaxed);
  } else {
    topic_->throttled_publishers.fetch_sub(1, std::memory_order_relaxed);
  }
  // (the session's first throttle at info; the next ones at debug: counted in session_closed)
  const auto level = throttles_ <= 1 ? log::Level::info : log::Level::debug;
  if (!log::enabled(level)) return;
  log::event(level, on ? "throttle_started" : "throttle_ended",
             {{"topic", topic_->name},
              {"principal", who_->name()},
              {"queue_bytes", topic_->broadcast.queue_bytes()},
              {"limit_bytes", topic_->config.max_queue_bytes}});
}

void PublishSession::connect(std::function<void()> wake,
                             std::function<void(PublishEvent)> stage_event) {
  wake_ = std::move(wake);
  stage_event_ = std::move(stage_event);
  listen();
}

std::optional<Refusal> PublishSession::open(const std::string& name) {
  if (topic_ && topic_->name == name) return std::nullopt;
  if (auto refusal = Access::check(*who_, Action::publish, name)) return refusal;
  auto t = core_.topics.find(name);
  if (!t) return std::move(t.refusal());
  topic_ = std::move(*t);
  opened_at_ = std::chrono::steady_clock::now();
  log::event(log::Level::info, "session_opened",
             {{"kind", "publisher"}, {"topic", topic_->name}, {"principal", who_->name()}});
  listen();
  return std::nullopt;
}

// A topic with a stage hears from it once the session is open and connected.
void PublishSession::listen() {
  if (topic_ && topic_->stage && stage_event_ && !notices_)
    notices_ = std::make_shared<Notices>(loop_, topic_->name, stage_event_);
}

std::optional<Refusal> PublishSession::check_size(std::uint64_t bytes) const {
  const std::uint64_t limit = core_.config.max_frame_bytes;
  if (bytes > limit) {
    return Refusal{RefusalKind::frame_too_big,
                   "item of " + std::to_string(bytes) + " bytes exceeds the frame limit of " +
                       std::to_string(limit) + " bytes (STREAM_MAX_FRAME_SIZE_MB)",
                   "STREAM_MAX_FRAME_SIZE_MB"};
  }
  // A cluster topic's items cross NATS, whose servers carry messages up to their max_payload.
  const std::uint64_t carried = topic_ != nullptr && topic_->config.scope == TopicScope::cluster
                                    ? topic_->bridge->max_item_bytes.load(std::memory_order_relaxed)
                                    : 0;
  if (carried == 0 || bytes <= carried) return std::nullopt;
  return Refusal{RefusalKind::frame_too_big,
                 "item of " + std::to_string(bytes) + " bytes is larger than NATS carries for " +
                     "cluster topic '" + topic_->name + "': " + std::to_string(carried) +
                     " bytes (the NATS servers' max_payload less a 40-byte header). Raise "
                     "max_payload in nats-server's configuration, or keep items within it "
                     "(STREAM_MAX_FRAME_SIZE_MB)",
                 "max_payload"};
}

std::optional<Refusal> PublishSession::set_producer(std::string id) {
  if (id.size() > 128) {
    return Refusal{RefusalKind::bad_request,
                   "a producer id of " + std::to_string(id.size()) +
                       " bytes (at most 128): sluice-producer / producer",
                   ""};
  }
  producer_ = std::move(id);
  return std::nullopt;
}

std::optional<Refusal> PublishSession::add(RelayMessage item) {
  if (auto refusal = check_size(item.payload.size())) return refusal;
  // (A duplicate is not offered to the stage again; publish() decides for the topic.)
  if (topic_->stage && (producer_.empty() || !topic_->producers.seen(producer_, item.sequence)))
    topic_->stage->offer(item, notices_);
  pending_.push_back(std::move(item));
  return std::nullopt;
}

Outcome<PublishSession::Progress> PublishSession::publish() {
  if (pending_.empty()) {
    recheck_slowed();  // (a wake-up for resume)
    return Progress::idle;
  }
  while (!pending_.empty()) {
    const std::uint64_t sequence = pending_.front().sequence;
    const std::uint64_t bytes = pending_.front().payload.size();
    switch (topic_->put(pending_.front(), producer_)) {
      case Topic::Put::duplicate:  // in already: ack it, once
        core_.metrics
            .counter("sluice_publish_duplicates_total",
                     "Items a producer sent again that the topic already had (acked, not "
                     "published twice)",
                     {{"topic", topic_->name}})
            .inc();
        pending_.pop_front();
        ack_ = sequence;
        continue;
      case Topic::Put::in:
        pending_.pop_front();
        published_ = sequence;
        ack_ = sequence;
        ++items_;
        waiting_ = false;  // the next item that has to wait gets its own deadline
        continue;
      case Topic::Put::closed:
        return Refusal{RefusalKind::stopping,
                       "topic '" + topic_->name + "' is closed (the relay is stopping)", ""};
      case Topic::Put::full:
        break;
    }
    if (auto refusal = blocked(bytes)) return std::move(*refusal);
    return Progress::waiting;
  }
  recheck_slowed();
  return Progress::all_in;
}

// Throttling ends once the topic has drained to half its budget. Until then the session is
// woken when it has, whether or not the producer sends more: a producer that waits for resume
// before its next frame must get it.
void PublishSession::recheck_slowed() {
  if (!slowed_) return;
  const std::uint64_t half = topic_->config.max_queue_bytes / 2;
  if (topic_->broadcast.queue_bytes() <= half) {
    set_slowed(false);
    return;
  }
  if (resume_armed_->exchange(true)) return;  // (one hook at a time)
  topic_->broadcast.on_writable(
      [loop = &loop_, wake = wake_, armed = resume_armed_] {
        armed->store(false);
        loop->post_soon(wake);
      },
      topic_->config.max_queue_bytes - half);
}

// The front item found no room: max_wait counts from its first refusal; the session is woken
// when the topic has room for it, or at the deadline.
std::optional<Refusal> PublishSession::blocked(std::uint64_t bytes) {
  set_slowed(true);
  const auto now = std::chrono::steady_clock::now();
  if (!waiting_) {
    waiting_ = true;
    deadline_ = now + topic_->config.max_wait;
    loop_.at(deadline_, wake_);
  } else if (now >= deadline_) {
    topic_->publish_timeouts.fetch_add(1, std::memory_order_relaxed);
    return topic_->full();
  }
  // Posted, not run inline: the hook may fire at once (room appeared meanwhile) or from a
  // consumer's stack, and publish() must not re-enter itself or hold up the consumer.
  topic_->broadcast.on_writable([loop = &loop_, wake = wake_] { loop->post_soon(wake); }, bytes);
  return std::nullopt;
}

std::optional<Refusal> PublishSession::stage_event(PublishEvent e) {
  if (stage_events_.size() >= kMaxStageEventsUnread) {
    return Refusal{RefusalKind::events_unread,
                   std::to_string(kMaxStageEventsUnread) +
                       " stage events unread: the producer is not reading its events",
                   ""};
  }
  stage_events_.push_back(std::move(e));
  return std::nullopt;
}

std::optional<PublishEvent> PublishSession::next_event(bool acks) {
  PublishEvent e;
  if (!stage_events_.empty()) {
    e = std::move(stage_events_.front());
    stage_events_.pop_front();
    return e;
  }
  if (topic_ && slowed_ != told_slowed_) {
    told_slowed_ = slowed_;
    e.kind = slowed_ ? PublishEvent::Kind::slow_down : PublishEvent::Kind::resume;
    e.topic = topic_->name;
    e.queue_bytes = topic_->broadcast.queue_bytes();
    e.limit_bytes = topic_->config.max_queue_bytes;
    if (slowed_) {
      e.limit = std::string(topic_->binding_limit());
      e.detail = "topic full (" + e.limit +
                 "): the relay stopped reading this call until subscribers catch up";
    }
    return e;
  }
  if (acks && ack_) {
    e.kind = PublishEvent::Kind::ack;
    e.sequence = *ack_;
    ack_.reset();
    return e;
  }
  return std::nullopt;
}

bool PublishSession::drained(bool acks) const {
  return pending_.empty() && stage_events_.empty() && slowed_ == told_slowed_ && (!acks || !ack_);
}

}  // namespace sluice::relay

#include "ingest_publisher.hpp"

#include <chrono>
#include <utility>

#include "sluice/relay/protocol.hpp"

namespace sluice::media {

IngestPublisher::IngestPublisher(IngestOptions ingest, client::PublisherOptions publisher,
                                 std::function<void(const client::PublisherEvent&)> on_event)
    : options_(std::move(ingest)),
      publisher_options_(std::move(publisher)),
      publisher_(publisher_options_,
                 [this, on_event = std::move(on_event)](const client::PublisherEvent& e) {
                   if (e.kind == client::PublisherEvent::Kind::ack) {
                     { const MutexLock lock(mu_); }  // (a sink between its test and its wait)
                     acked_.notify_all();
                     return;
                   }
                   if (e.kind != client::PublisherEvent::Kind::slow_down &&
                       e.kind != client::PublisherEvent::Kind::resume)
                     return;
                   if (Ingest* in = ingest_ptr_.load())
                     in->set_slowed(e.kind == client::PublisherEvent::Kind::slow_down);
                   if (on_event) on_event(e);
                 }) {
  ingest_ = std::make_unique<Ingest>(options_, [this](IngestFrame&& f) {
    if (failing_ || !room()) return;
    // (a delta frame is marked: after a loss the relay resumes each viewer at a keyframe)
    const auto s =
        publisher_.publish(std::move(f.payload), f.timestamp_ns, f.keyframe ? 0 : kItemDelta);
    if (!s.ok()) {
      const MutexLock lock(mu_);
      failed_ = s;
      failing_ = true;
    }
  });
  ingest_ptr_.store(ingest_.get());
}

IngestPublisher::~IngestPublisher() {
  stop();
  ingest_ptr_.store(nullptr);
}

void IngestPublisher::start() {
  ingest_->start();
}

// The publisher holds at most queue_frames frames the relay has not acknowledged: while it does,
// the sink waits, the ingest's queue fills and the source drops (or, a file, waits) — so a relay
// that holds the producer back costs queue_frames frames here, not the publisher's byte window
// of old frames. False once stopping.
bool IngestPublisher::room() {
  const MutexLock lock(mu_);
  while (!stopping_ && publisher_.unacknowledged() >= options_.queue_frames)
    (void)acked_.wait_for(mu_, std::chrono::milliseconds(100));  // (acks wake it; 100 ms: a net)
  return !stopping_;
}

void IngestPublisher::stop() {
  {
    const MutexLock lock(mu_);
    stopping_ = true;
  }
  acked_.notify_all();
  ingest_->stop();
}

client::Status IngestPublisher::close() {
  return publisher_.close();
}

std::optional<client::Status> IngestPublisher::failed() const {
  const MutexLock lock(mu_);
  return failed_;
}

IngestStats IngestPublisher::stats() const {
  return ingest_->stats();
}

std::uint64_t IngestPublisher::acked() const {
  return publisher_.stats().acked;
}

}  // namespace sluice::media

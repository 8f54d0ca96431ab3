// A source's frames published to a relay topic: an Ingest whose sink is a client::Publisher —
// what `sluice ingest` runs, and what `sluice serve` runs for each [[ingest]] entry of its
// configuration. Delta frames are marked (kItemDelta: after a loss a subscriber resumes at a
// keyframe); the relay's slow_down thins frames at the source until it says resume; the
// publisher holds at most queue_frames unacknowledged frames (past that the source drops, as when
// the sink is slow: what a relay holding the producer back costs here stays queue_frames frames);
// a publish the relay refuses stops the publishing (failed() says why).
//
// Thread-safety: every member from any thread. Blocking: start() returns once the pipeline is
// built; close() once the publisher's last acks are in (or its call ended).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "sluice/client/client.hpp"
#include "sluice/detail/cond_var.hpp"
#include "sluice/detail/thread_annotations.hpp"
#include "sluice/media/ingest.hpp"

namespace sluice::media {

class IngestPublisher {
 public:
  /// `on_event`: the publisher's slow_down / resume notices (also applied to the ingest).
  /// Throws as Ingest's constructor does (std::invalid_argument naming the option).
  IngestPublisher(IngestOptions ingest, client::PublisherOptions publisher,
                  std::function<void(const client::PublisherEvent&)> on_event = {});
  IngestPublisher(const IngestPublisher&) = delete;
  IngestPublisher& operator=(const IngestPublisher&) = delete;
  IngestPublisher(IngestPublisher&&) = delete;
  IngestPublisher& operator=(IngestPublisher&&) = delete;
  ~IngestPublisher();

  void start();
  /// Stops the source (frames still queued are counted as such); then close() the publisher.
  void stop();
  client::Status close();
  /// Why publishing stopped (the relay refused a publish), if it did.
  std::optional<client::Status> failed() const;
  IngestStats stats() const;
  std::uint64_t acked() const;
  const IngestOptions& options() const { return options_; }
  const client::PublisherOptions& publisher_options() const { return publisher_options_; }

 private:
  const IngestOptions options_;
  const client::PublisherOptions publisher_options_;
  std::atomic<bool> failing_{false};
  bool room();

  mutable Mutex mu_;
  CondVar acked_;  // the publisher's acks
  std::optional<client::Status> failed_ SLUICE_GUARDED_BY(mu_);
  bool stopping_ SLUICE_GUARDED_BY(mu_) = false;
  std::atomic<Ingest*> ingest_ptr_{nullptr};  // for the publisher's notices
  client::Publisher publisher_;
  std::unique_ptr<Ingest> ingest_;  // after the publisher: its sink publishes
};

}  // namespace sluice::media

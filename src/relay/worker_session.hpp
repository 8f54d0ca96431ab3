// A stage worker's session, whatever carries it (relay-internal): joining a topic's stage
// (the topic must declare one; concurrency 1-1024, default 4; a name of at most 128 bytes),
// taking frames within its credit, and its results and errors by sequence. Leaving (leave(),
// or destroying it) gives what it held to the other workers, or fails it and tells its
// producer. The transports (grpc_work.cpp, ws_work.cpp) decode the join and the answers and
// encode the frames and events.
//
// Protocol with the transport: join() (a refusal ends the session before it starts), enter()
// when the transport is ready for frames (at once, or once a WebSocket handshake is done),
// then take() whenever it can write, arming on_ready() when take() found nothing; result() and
// error() for each answer (what they return is an error event for the worker: it answered a
// frame it does not hold; the session goes on).
//
// Thread-safety: not thread-safe; the transport serializes calls. The on_ready hook may run
// on any thread, at once included.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "outcome.hpp"
#include "relay_core.hpp"
#include "stage.hpp"
#include "topic.hpp"

namespace sluice::relay {

/// What a worker asks for (the transport decodes it).
struct WorkerJoin {
  Who who;  // who asks (must be allowed to work the topic's stage)
  std::string topic;
  std::string name;               // empty: "worker"; valid UTF-8 within 128 bytes kept
  std::uint64_t concurrency = 0;  // frames it may hold unanswered; 0: 4; at most 1024
};

/// What the relay tells a worker that joined.
struct WorkerJoined {
  std::uint64_t id = 0;
  std::string stage;
  std::string name;
  std::uint32_t concurrency = 0;
  std::string results_topic;
};

class WorkerSession {
 public:
  static constexpr std::uint32_t kDefaultConcurrency = 4;
  static constexpr std::uint64_t kMaxConcurrency = 1024;

  explicit WorkerSession(RelayCore& core) : core_(core) {}

  /// Checks the request: not_found (no such topic, or a topic without a stage), bad_request.
  std::optional<Refusal> join(const WorkerJoin& request);
  /// Joins the stage (after join()): frames may be routed to this worker from now on.
  WorkerJoined enter();
  bool entered() const noexcept { return member_.joined(); }

  /// Appends the frames the worker may take now (within its credit).
  void take(std::deque<RelayMessage>& out) { member_.take(out); }
  /// One-shot: `fn` runs when take() would find a frame.
  void on_ready(std::function<void()> fn) { member_.on_ready(std::move(fn)); }
  /// The worker's result for frame `sequence` (published to the results topic), or its error
  /// (the frame goes to another worker or is failed): nullopt, or what to tell the worker.
  std::optional<std::string> result(std::uint64_t sequence, Buffer payload) {
    return member_.result(sequence, std::move(payload));
  }
  std::optional<std::string> error(std::uint64_t sequence, const std::string& why) {
    return member_.error(sequence, why);
  }
  /// Leaves the stage (idempotent): what it held goes elsewhere.
  void leave() { member_.leave(); }

 private:
  RelayCore& core_;
  std::shared_ptr<Topic> topic_;
  std::string name_;
  std::uint32_t concurrency_ = kDefaultConcurrency;
  StageMember member_;
};

}  // namespace sluice::relay

// The relay's event loops (relay-internal), server.threads of them: `main` accepts HTTP
// connections and serves /metrics, /v1/stats, WebSocket publishers and workers, publish
// deadlines and stage polls; every loop (the others first) serves WebSocket subscribers, each
// handed to the loop serving the fewest.
//
// Thread-safety: subscriber_loop() and loops() from any thread; stop() from one thread (the
// relay's shutdown or destructor).
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "io_thread.hpp"
#include "sluice/metrics.hpp"

namespace sluice::relay {

class LoopPool {
 public:
  /// `threads` loops in all (0: one per core); each shows its subscribers in /metrics.
  LoopPool(unsigned threads, metrics::Registry& metrics) {
    const unsigned n = threads != 0 ? threads : std::thread::hardware_concurrency();
    for (unsigned i = 1; i < n; ++i)
      more_.push_back(std::make_unique<IoThread>("sluice-io-" + std::to_string(i)));
    for (IoThread* l : loops()) {
      metrics.gauge_fn("sluice_io_thread_viewers",
                       "WebSocket subscribers each event-loop thread serves (server.threads)",
                       {{"thread", l->name()}},
                       [l] { return double(l->subscribers.load(std::memory_order_relaxed)); });
    }
  }
  LoopPool(const LoopPool&) = delete;
  LoopPool& operator=(const LoopPool&) = delete;
  LoopPool(LoopPool&&) = delete;
  LoopPool& operator=(LoopPool&&) = delete;
  ~LoopPool() { stop(); }

  /// The relay's own loop.
  IoThread& main() { return main_; }
  /// The loop a new subscriber joins: the one serving the fewest (the others before `main`,
  /// which also reads the publishers).
  IoThread& subscriber_loop() {
    IoThread* best = &main_;
    for (auto& l : more_) {
      if (l->subscribers.load(std::memory_order_relaxed) <=
          best->subscribers.load(std::memory_order_relaxed))
        best = l.get();
    }
    return *best;
  }
  std::vector<IoThread*> loops() {
    std::vector<IoThread*> v{&main_};
    for (auto& l : more_) v.push_back(l.get());
    return v;
  }
  /// Stops every loop (idempotent): the WebSocket sessions stop where they are.
  void stop() {
    for (auto& l : more_) l->stop();
    main_.stop();
  }

 private:
  std::vector<std::unique_ptr<IoThread>> more_;
  IoThread main_{"sluice-io"};  // last: destroyed first, with the sessions its handlers hold
};

}  // namespace sluice::relay

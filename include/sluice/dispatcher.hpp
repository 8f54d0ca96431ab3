// Sluice — Dispatcher<T>: routes work items to registered workers with credits.
//
// A stage (inference, encoding, any slow transform) is served by workers that join and leave
// at any time. Each worker joins through an RAII handle (Dispatcher::Worker) and declares:
//   max_concurrent  its credit: how many items it may hold at once (taken, not yet reported);
//   queue_items / queue_bytes  its bounded input queue: items routed to it, not yet taken.
// Nothing queues without bound: a full stage applies the dispatcher's overflow policy.
//
// Routing: route(item) gives the item to one worker, chosen in this order:
//   1. only workers whose queue has room (items and bytes);
//   2. healthy workers before degraded ones (overloaded: queue at ≥ overload_fraction of its
//      items; slow: smoothed latency > slow_latency); unhealthy workers (≥ unhealthy_after
//      consecutive errors or timeouts) get nothing, except one probe item (before anyone
//      else) once probe_after has passed since their last failure and they hold nothing: a
//      success makes them healthy, a failure re-routes the item and restarts the wait;
//   3. workers with a free credit and an empty queue before those that would have to queue it;
//   4. the smallest expected completion time: smoothed latency × (queued + in flight + 1) /
//      max_concurrent (a worker with no measurement yet counts as instant, so it gets tried);
//   then the fewest items held, then the oldest worker.
// With two workers, one 4× faster, the fast one takes about 4 items out of 5 under saturation
// and every item when load is light.
//
// Overflow (no worker can take the item): `block` waits for room up to a deadline (then
// `timeout`, the caller keeps the item), `drop_newest` drops the item (counted dropped{overflow},
// or dropped{no_worker} when no worker at all could have taken it: none joined, or all
// unhealthy), `reject` answers `would_block` at once (the caller keeps the item; counted as
// rejected, not a loss). drop_oldest is not a dispatcher policy (validate() refuses it).
//
// Loss: an item accepted by route() is, exactly once, completed by a worker or failed through
// the `on_failed` callback with a reason and a message (DropReason::worker_failed or
// no_worker); never lost silently. At quiescence stats() satisfies
//   accepted == completed + failed + queued + in_flight.
// When an attempt fails (the worker reports fail(), or holds the item longer than
// task_timeout, seen by poll()), the item is re-routed to another worker if it has had fewer
// than max_attempts attempts and another worker has room; otherwise it is failed. A worker
// that leaves (its handle is destroyed or leave() is called) gives back its queued items,
// which are re-routed without counting an attempt, and its in-flight items, which count one.
// A re-routed item goes to the front of the other worker's queue (it is older than what waits
// there) and may take that queue past queue_items: moving an item adds nothing to what the
// stage holds, so it is not failed for lack of room. It is failed when no other worker is
// eligible at all (none left, or all unhealthy). A late complete() for an item already
// re-routed or failed is refused (returns false) and counted as late_results.
//
// Ordering: none across workers; one worker takes its queue in FIFO order.
//
// Blocking: route() under `block` and Worker::take() may block the calling thread (they wait
// on a condition variable, woken by the event that makes progress possible; no polling).
// try_route(), Worker::try_take(), complete(), fail(), poll() and stats() never block for
// longer than the dispatcher's mutex is held. Event loops use Worker::on_ready(): a one-shot
// callback run when the worker can take an item (or was removed).
//
// Thread-safety: every member may be called from any thread. One mutex per dispatcher: the
// intended rate is frames and inference requests (thousands a second), not millions. The
// on_failed and on_ready callbacks run without that mutex held, on the thread whose call made
// them due; they must not block.
//
// Time: the calls that judge time take `now` (tests replay scenarios deterministically); the
// defaults read std::chrono::steady_clock.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "sluice/channel.hpp"
#include "sluice/drop_reason.hpp"
#include "sluice/size_bytes.hpp"

namespace sluice {

enum class WorkerHealth : std::uint8_t { healthy, overloaded, slow, unhealthy };
std::string_view to_string(WorkerHealth health) noexcept;

struct DispatcherConfig {
  std::string name = "stage";
  /// block, drop_newest or reject (see the header comment).
  OverflowPolicy overflow = OverflowPolicy::drop_newest;
  /// How long route() without a deadline waits under `block`. ≥ 0.
  std::chrono::nanoseconds max_wait = std::chrono::seconds(1);
  /// A worker whose queue holds at least this fraction of queue_items is overloaded. (0, 1].
  double overload_fraction = 0.8;
  /// A worker whose smoothed latency is above this is slow. > 0.
  std::chrono::nanoseconds slow_latency = std::chrono::seconds(2);
  /// Consecutive errors or timeouts after which a worker is unhealthy. ≥ 1.
  std::uint32_t unhealthy_after = 3;
  /// An item held longer than this by a worker is a timeout (seen by poll()). > 0.
  std::chrono::nanoseconds task_timeout = std::chrono::seconds(10);
  /// An unhealthy worker gets one probe item this long after its last failure. ≥ 0.
  std::chrono::nanoseconds probe_after = std::chrono::seconds(1);
  /// Weight of the newest latency in the smoothed one (EWMA). (0, 1].
  double smoothing = 0.2;
  /// Attempts an item gets before it is failed (1: never re-routed after a failure). ≥ 1.
  std::uint32_t max_attempts = 2;

  /// Throws std::invalid_argument naming the dispatcher, the setting, the value and the range.
  void validate() const;
};

struct WorkerConfig {
  std::string name = "worker";
  /// Items the worker may hold at once (its credit). ≥ 1.
  std::uint32_t max_concurrent = 4;
  /// Items routed to the worker and not yet taken. ≥ 1.
  std::size_t queue_items = 16;
  /// Bytes of those (size_bytes). ≥ 1. An item heavier than this enters only an empty queue.
  std::size_t queue_bytes = kUnlimitedBytes;

  /// Throws std::invalid_argument naming the worker, the setting, the value and the range.
  void validate() const;
};

struct WorkerStats {
  std::uint64_t id = 0;
  std::string name;
  WorkerHealth health = WorkerHealth::healthy;
  std::uint32_t max_concurrent = 0;
  std::uint32_t in_flight = 0;
  std::uint32_t max_in_flight_seen = 0;
  std::size_t queued = 0;
  std::size_t queue_items = 0;  // the limit
  std::size_t queued_bytes = 0;
  std::uint64_t routed = 0;  // items put in its queue (including re-routed ones)
  std::uint64_t completed = 0;
  std::uint64_t errors = 0;
  std::uint64_t timeouts = 0;
  std::uint64_t late_results = 0;
  std::uint64_t probes = 0;
  std::uint32_t consecutive_failures = 0;
  std::chrono::nanoseconds smoothed_latency{0};  // 0 until the first completion
};

struct DispatcherStats {
  std::string name;
  std::uint64_t accepted = 0;   // items route() took (each counted once)
  std::uint64_t completed = 0;  // by a worker
  std::uint64_t failed = 0;     // through on_failed, after being accepted
  std::uint64_t rerouted = 0;   // moves to another worker (not a loss)
  std::uint64_t rejected = 0;   // would_block answers (not a loss)
  std::uint64_t timeouts = 0;   // route() under block that gave up (not a loss)
  DropCounts dropped;           // refused by route(): overflow, no_worker
  DropCounts failed_by_reason;  // worker_failed, no_worker
  std::size_t queued = 0;
  std::size_t in_flight = 0;
  std::vector<WorkerStats> workers;
};

enum class RouteStatus : std::uint8_t {
  routed,       // a worker's queue holds the item
  dropped,      // lost, counted under `reason` (overflow or no_worker)
  would_block,  // reject, or try_route under block: the caller keeps the item
  timeout,      // block: no room before the deadline; the caller keeps the item
  closed,       // the dispatcher is closed; the caller keeps the item
};
std::string_view to_string(RouteStatus status) noexcept;

struct [[nodiscard]] RouteResult {
  RouteStatus status = RouteStatus::routed;
  DropReason reason = DropReason::overflow;  // when dropped
  std::uint64_t task_id = 0;                 // when routed
  std::uint64_t worker_id = 0;               // when routed
  std::string message;                       // when not routed: what was full, the limits
  bool ok() const noexcept { return status == RouteStatus::routed; }
  explicit operator bool() const noexcept { return ok(); }
};

template <class T>
class Dispatcher {
  static_assert(std::is_copy_constructible_v<T>,
                "Dispatcher<T> keeps a copy of an item a worker holds, to re-route it if the "
                "worker fails; use a cheap-to-copy T (a Buffer, a shared_ptr)");

 public:
  using Clock = std::chrono::steady_clock;
  /// Called once for each accepted item that will never be completed.
  using FailedFn = std::function<void(T&& item, DropReason reason, std::string_view message)>;

  /// An item handed to a worker. Report it with complete() or fail() by id.
  struct Task {
    std::uint64_t id = 0;
    T item;
    std::uint32_t attempt = 1;  // 1 for the first attempt
  };

  class Worker;

  /// Throws std::invalid_argument if the configuration is invalid.
  explicit Dispatcher(DispatcherConfig config, FailedFn on_failed = {})
      : core_(std::make_shared<Core>(std::move(config), std::move(on_failed))) {}
  ~Dispatcher() { close(); }
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;
  Dispatcher(Dispatcher&&) = delete;  // workers' handles hold its state, not its address
  Dispatcher& operator=(Dispatcher&&) = delete;

  /// Registers a worker. Throws std::invalid_argument if its configuration is invalid.
  Worker join(WorkerConfig config) {
    config.validate();
    return Worker(core_, core_->join(std::move(config)));
  }

  /// Routes under the overflow policy; `block` waits until `deadline`. The item is moved from
  /// only when the result is routed or dropped.
  RouteResult route(T&& item, Clock::time_point deadline) {
    return core_->route(item, Clock::now(), deadline, true);
  }
  RouteResult route(T&& item) {
    const auto now = Clock::now();
    return core_->route(item, now, now + core_->config.max_wait, true);
  }
  /// Never waits: under `block`, answers would_block when no worker has room. `now` judges
  /// probes (whether probe_after has passed).
  RouteResult try_route(T&& item, Clock::time_point now = Clock::now()) {
    return core_->route(item, now, now, false);
  }

  /// Times out items held longer than task_timeout (re-routed or failed). Call it
  /// periodically (the relay does every 100 ms): nothing else reads the clock for this.
  void poll(Clock::time_point now = Clock::now()) { core_->poll(now); }

  /// Refuses further routes, fails every queued item (no_worker, "dispatcher closed") and
  /// wakes blocked callers. Items in flight may still be completed or failed. Idempotent.
  void close() { core_->close(); }

  DispatcherStats stats() const { return core_->stats(); }
  /// One worker's figures (what Worker::stats() returns), without the others'; nullopt once
  /// it has left.
  std::optional<WorkerStats> worker_stats(std::uint64_t worker_id) const {
    return core_->stats_of(worker_id);
  }
  const DispatcherConfig& config() const noexcept { return core_->config; }
  std::size_t workers() const {
    std::lock_guard lock(core_->mu);
    return core_->workers.size();
  }

 private:
  struct Held {
    T item;
    std::uint32_t attempt = 1;
    Clock::time_point since;  // taken at (in flight) or routed at (queued)
  };
  struct WorkerState {
    std::uint64_t id = 0;
    WorkerConfig config;
    std::deque<std::pair<std::uint64_t, Held>> queue;  // task id, item
    std::size_t queued_bytes = 0;
    std::map<std::uint64_t, Held> in_flight;
    std::optional<double> smoothed_ns;
    Clock::time_point last_failure{};
    bool probing = false;  // the item it holds is a probe
    std::vector<std::function<void()>> ready_hooks;
    WorkerStats stats;
  };

  struct Core {
    Core(DispatcherConfig c, FailedFn f) : config(std::move(c)), on_failed(std::move(f)) {
      config.validate();
    }

    const DispatcherConfig config;
    const FailedFn on_failed;
    mutable std::mutex mu;
    std::condition_variable cv;  // room for a blocked route(), an item for a blocked take()
    std::map<std::uint64_t, WorkerState> workers;
    std::uint64_t next_worker = 1;
    std::uint64_t next_task = 1;
    bool closed = false;
    DispatcherStats totals;  // counters only; the rest is computed in stats()

    // Deferred work collected under the lock and done after it is released.
    struct Deferred {
      std::vector<std::function<void()>> hooks;
      std::vector<std::tuple<T, DropReason, std::string>> failures;
    };

    void finish(Deferred& d) {
      for (auto& h : d.hooks) h();
      for (auto& [item, reason, message] : d.failures) {
        if (on_failed) on_failed(std::move(item), reason, message);
      }
    }

    std::uint64_t join(WorkerConfig wc) {  // NOLINT(performance-unnecessary-value-param): moved
      std::lock_guard lock(mu);
      const std::uint64_t id = next_worker++;
      WorkerState& w = workers[id];
      w.id = id;
      w.stats.id = id;
      w.stats.name = wc.name;
      w.config = std::move(wc);
      cv.notify_all();
      return id;
    }

    WorkerHealth health(const WorkerState& w) const {
      if (w.stats.consecutive_failures >= config.unhealthy_after) return WorkerHealth::unhealthy;
      if (static_cast<double>(w.queue.size()) >=
          config.overload_fraction * static_cast<double>(w.config.queue_items)) {
        return WorkerHealth::overloaded;
      }
      if (w.smoothed_ns && *w.smoothed_ns > static_cast<double>(config.slow_latency.count())) {
        return WorkerHealth::slow;
      }
      return WorkerHealth::healthy;
    }

    static bool has_room(const WorkerState& w, std::size_t size) {
      if (w.queue.size() >= w.config.queue_items) return false;
      return w.queued_bytes == 0 || w.queued_bytes + size <= w.config.queue_bytes;
    }

    // The best worker for an item of `size` bytes, or nullptr. `any_eligible` tells whether
    // some worker could ever take it (joined and not unhealthy, or due for a probe).
    WorkerState* pick(std::size_t size, Clock::time_point now, std::uint64_t exclude,
                      bool& any_eligible, bool ignore_room = false) {
      WorkerState* best = nullptr;
      std::tuple<int, double, std::size_t, std::uint64_t> best_key{};
      any_eligible = false;
      for (auto& [id, w] : workers) {
        if (id == exclude) continue;
        const WorkerHealth h = health(w);
        int tier = 0;
        if (h == WorkerHealth::unhealthy) {
          const bool probe_due =
              now - w.last_failure >= config.probe_after && w.in_flight.empty() && w.queue.empty();
          if (!probe_due) continue;
          tier = -1;  // probe it now: one item tells whether it recovered
        } else if (h != WorkerHealth::healthy) {
          tier = 2;
        } else if (!(w.in_flight.size() < w.config.max_concurrent && w.queue.empty())) {
          tier = 1;
        }
        any_eligible = true;
        if (!ignore_room && !has_room(w, size)) continue;
        const std::size_t held = w.queue.size() + w.in_flight.size();
        const double expected = w.smoothed_ns.value_or(0.0) * static_cast<double>(held + 1) /
                                static_cast<double>(w.config.max_concurrent);
        const auto key = std::make_tuple(tier, expected, held, id);
        if (best == nullptr || key < best_key) {
          best = &w;
          best_key = key;
        }
      }
      return best;
    }

    void enqueue(WorkerState& w, std::uint64_t task, Held held, Clock::time_point now, Deferred& d,
                 bool front = false) {
      if (health(w) == WorkerHealth::unhealthy) {
        w.probing = true;
        ++w.stats.probes;
      }
      held.since = now;
      w.queued_bytes += size_of(held.item);
      if (front) {
        w.queue.emplace_front(task, std::move(held));
      } else {
        w.queue.emplace_back(task, std::move(held));
      }
      ++w.stats.routed;
      wake(w, d);
    }

    // Moves the worker's ready hooks out if it can take an item now.
    void wake(WorkerState& w, Deferred& d) {
      if (w.queue.empty() || w.in_flight.size() >= w.config.max_concurrent) return;
      for (auto& h : w.ready_hooks) d.hooks.push_back(std::move(h));
      w.ready_hooks.clear();
      cv.notify_all();
    }

    static std::size_t size_of(const T& item) { return size_bytes(item); }

    RouteResult route(T& item, Clock::time_point now, Clock::time_point deadline, bool may_wait) {
      Deferred d;
      RouteResult r;
      {
        std::unique_lock lock(mu);
        for (bool first = true;; first = false) {
          if (!first) now = Clock::now();
          if (closed) {
            r.status = RouteStatus::closed;
            r.message = "dispatcher " + config.name + " is closed";
            break;
          }
          bool any = false;
          WorkerState* w = pick(size_of(item), now, 0, any);
          if (w != nullptr) {
            r.task_id = next_task++;
            r.worker_id = w->id;
            ++totals.accepted;
            enqueue(*w, r.task_id, Held{std::move(item), 1, now}, now, d);
            break;
          }
          if (config.overflow == OverflowPolicy::block && may_wait && now < deadline) {
            cv.wait_until(lock, deadline);
            continue;  // look again; past the deadline, the answer is below
          }
          r.message = full_message(any);
          if (config.overflow == OverflowPolicy::drop_newest) {
            r.status = RouteStatus::dropped;
            r.reason = any ? DropReason::overflow : DropReason::no_worker;
            ++totals.dropped[r.reason];
            T dropped = std::move(item);
            (void)dropped;
          } else if (config.overflow == OverflowPolicy::block && may_wait) {
            r.status = RouteStatus::timeout;
            ++totals.timeouts;
          } else {
            r.status = RouteStatus::would_block;
            ++totals.rejected;
          }
          break;
        }
      }
      finish(d);
      return r;
    }

    std::string full_message(bool any_eligible) const {
      if (workers.empty()) {
        return "stage " + config.name + " has no worker: none has joined";
      }
      if (!any_eligible) {
        return "stage " + config.name + ": all " + std::to_string(workers.size()) +
               " workers are unhealthy (≥ " + std::to_string(config.unhealthy_after) +
               " consecutive errors or timeouts)";
      }
      std::size_t queued = 0;
      std::size_t capacity = 0;
      for (const auto& [id, w] : workers) {
        queued += w.queue.size();
        capacity += w.config.queue_items;
      }
      return "stage " + config.name + " is full: " + std::to_string(workers.size()) +
             " workers hold " + std::to_string(queued) + " queued items of " +
             std::to_string(capacity) + " (worker queue_items, max_concurrent)";
    }

    // An attempt of `held` failed on worker `from`: re-route it or fail it.
    void retry(std::uint64_t task, Held held, std::uint64_t from, bool counts_attempt,
               const std::string& why, Clock::time_point now, Deferred& d) {
      if (counts_attempt && held.attempt >= config.max_attempts) {
        fail_item(std::move(held.item), DropReason::worker_failed,
                  why + " (attempt " + std::to_string(held.attempt) + " of " +
                      std::to_string(config.max_attempts) + ")",
                  d);
        return;
      }
      if (counts_attempt) ++held.attempt;
      bool any = false;
      WorkerState* w = nullptr;
      if (!closed) {
        w = pick(size_of(held.item), now, from, any);
        // Moving an item between workers adds nothing to what the stage holds, so a retry
        // may go past the chosen worker's queue_items rather than be failed for lack of room.
        if (w == nullptr && any) w = pick(size_of(held.item), now, from, any, true);
      }
      if (w == nullptr) {
        fail_item(std::move(held.item), DropReason::worker_failed,
                  why + "; no other worker could take it", d);
        return;
      }
      ++totals.rerouted;
      enqueue(*w, task, std::move(held), now, d, /*front=*/true);  // it is older than the rest
    }

    void fail_item(T&& item, DropReason reason, std::string message, Deferred& d) {
      ++totals.failed;
      ++totals.failed_by_reason[reason];
      d.failures.emplace_back(std::move(item), reason, std::move(message));
    }

    void note_failure(WorkerState& w, Clock::time_point now, Deferred& d) {
      const bool was_unhealthy = health(w) == WorkerHealth::unhealthy;
      ++w.stats.consecutive_failures;
      w.last_failure = now;
      w.probing = false;
      if (!was_unhealthy && health(w) == WorkerHealth::unhealthy) {
        // Its queue would wait behind a failing worker: give it to the others.
        auto queue = std::move(w.queue);
        w.queue.clear();
        w.queued_bytes = 0;
        for (auto& [task, held] : queue) {
          retry(task, std::move(held), w.id, false, "worker " + w.config.name + " became unhealthy",
                now, d);
        }
      }
    }

    // Items held past task_timeout: timeouts.
    void expire(Clock::time_point now, Deferred& d) {
      for (auto& [id, w] : workers) {
        for (auto it = w.in_flight.begin(); it != w.in_flight.end();) {
          if (now - it->second.since < config.task_timeout) {
            ++it;
            continue;
          }
          const std::uint64_t task = it->first;
          Held held = std::move(it->second);
          it = w.in_flight.erase(it);
          ++w.stats.timeouts;
          note_failure(w, now, d);
          retry(task, std::move(held), id, true,
                "worker " + w.config.name + " held it longer than task_timeout (" +
                    std::to_string(config.task_timeout.count() / 1'000'000) + " ms)",
                now, d);
          wake(w, d);
        }
      }
    }

    void poll(Clock::time_point now) {
      Deferred d;
      {
        std::lock_guard lock(mu);
        expire(now, d);
      }
      finish(d);
    }

    std::optional<Task> take(std::uint64_t id, Clock::time_point now,
                             std::optional<Clock::time_point> deadline) {
      Deferred d;
      std::optional<Task> out;
      {
        std::unique_lock lock(mu);
        for (;;) {
          auto it = workers.find(id);
          if (it == workers.end()) break;
          WorkerState& w = it->second;
          if (!w.queue.empty() && w.in_flight.size() < w.config.max_concurrent) {
            auto [task, held] = std::move(w.queue.front());
            w.queue.pop_front();
            w.queued_bytes -= size_of(held.item);
            held.since = now;
            out = Task{task, held.item, held.attempt};
            w.in_flight.emplace(task, std::move(held));
            w.stats.max_in_flight_seen = std::max<std::uint32_t>(
                w.stats.max_in_flight_seen, static_cast<std::uint32_t>(w.in_flight.size()));
            cv.notify_all();  // its queue has room again
            break;
          }
          if (!deadline || closed || Clock::now() >= *deadline) break;
          cv.wait_until(lock, *deadline);
          now = Clock::now();
        }
      }
      finish(d);
      return out;
    }

    bool report(std::uint64_t id, std::uint64_t task, bool ok, std::string_view why,
                Clock::time_point now) {
      Deferred d;
      bool known = false;
      {
        std::lock_guard lock(mu);
        auto wit = workers.find(id);
        if (wit == workers.end()) return false;
        WorkerState& w = wit->second;
        auto it = w.in_flight.find(task);
        if (it == w.in_flight.end()) {
          ++w.stats.late_results;
        } else {
          known = true;
          Held held = std::move(it->second);
          w.in_flight.erase(it);
          const auto sample = static_cast<double>((now - held.since).count());
          if (ok) {
            w.smoothed_ns = w.smoothed_ns
                                ? *w.smoothed_ns + config.smoothing * (sample - *w.smoothed_ns)
                                : sample;
            w.stats.consecutive_failures = 0;
            w.probing = false;
            ++w.stats.completed;
            ++totals.completed;
          } else {
            ++w.stats.errors;
            note_failure(w, now, d);
            retry(task, std::move(held), id, true,
                  "worker " + w.config.name + " failed it: " + std::string(why), now, d);
          }
          wake(w, d);
        }
      }
      finish(d);
      return known;
    }

    void on_ready(std::uint64_t id, std::function<void()> fn) {
      {
        std::lock_guard lock(mu);
        auto it = workers.find(id);
        if (it != workers.end()) {
          const WorkerState& w = it->second;
          if (w.queue.empty() || w.in_flight.size() >= w.config.max_concurrent) {
            it->second.ready_hooks.push_back(std::move(fn));
            return;
          }
        }
      }
      fn();  // ready now, or removed
    }

    void leave(std::uint64_t id) {
      Deferred d;
      {
        std::lock_guard lock(mu);
        auto it = workers.find(id);
        if (it == workers.end()) return;
        WorkerState w = std::move(it->second);
        workers.erase(it);
        const auto now = Clock::now();
        for (auto& [task, held] : w.queue) {
          retry(task, std::move(held), id, false, "worker " + w.config.name + " left", now, d);
        }
        for (auto& [task, held] : w.in_flight) {
          retry(task, std::move(held), id, true,
                "worker " + w.config.name + " left while holding it", now, d);
        }
        for (auto& h : w.ready_hooks) d.hooks.push_back(std::move(h));
        cv.notify_all();
      }
      finish(d);
    }

    void close() {
      Deferred d;
      {
        std::lock_guard lock(mu);
        if (closed) return;
        closed = true;
        for (auto& [id, w] : workers) {
          for (auto& [task, held] : w.queue) {
            fail_item(std::move(held.item), DropReason::no_worker,
                      "dispatcher " + config.name + " closed before a worker took it", d);
          }
          w.queue.clear();
          w.queued_bytes = 0;
          for (auto& h : w.ready_hooks) d.hooks.push_back(std::move(h));
          w.ready_hooks.clear();
        }
        cv.notify_all();
      }
      finish(d);
    }

    WorkerStats worker_stats(const WorkerState& w) const {
      WorkerStats s = w.stats;
      s.health = health(w);
      s.max_concurrent = w.config.max_concurrent;
      s.in_flight = static_cast<std::uint32_t>(w.in_flight.size());
      s.queued = w.queue.size();
      s.queue_items = w.config.queue_items;
      s.queued_bytes = w.queued_bytes;
      s.smoothed_latency =
          std::chrono::nanoseconds(static_cast<std::int64_t>(w.smoothed_ns.value_or(0.0)));
      return s;
    }

    DispatcherStats stats() const {
      std::lock_guard lock(mu);
      DispatcherStats s = totals;
      s.name = config.name;
      for (const auto& [id, w] : workers) {
        s.workers.push_back(worker_stats(w));
        s.queued += w.queue.size();
        s.in_flight += w.in_flight.size();
      }
      return s;
    }

    std::optional<WorkerStats> stats_of(std::uint64_t id) const {
      std::lock_guard lock(mu);
      auto it = workers.find(id);
      if (it == workers.end()) return std::nullopt;
      return worker_stats(it->second);
    }
  };

  std::shared_ptr<Core> core_;
};

/// One worker's membership: RAII (destroying it, or leave(), removes the worker and gives its
/// items back; see Dispatcher). Movable, not copyable. Keeps the dispatcher's state alive, so
/// it may outlive the Dispatcher object (it then sees a closed dispatcher). Thread-safety: its
/// members may be called from any thread, but destroying it races with nothing else on it.
template <class T>
class Dispatcher<T>::Worker {
 public:
  Worker() = default;
  Worker(Worker&& other) noexcept
      : core_(std::move(other.core_)), id_(std::exchange(other.id_, 0)) {}
  Worker& operator=(Worker&& other) noexcept {
    if (this != &other) {
      leave();
      core_ = std::move(other.core_);
      id_ = std::exchange(other.id_, 0);
    }
    return *this;
  }
  ~Worker() { leave(); }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  std::uint64_t id() const noexcept { return id_; }
  bool joined() const noexcept { return core_ != nullptr && id_ != 0; }

  /// The next queued item, if one is queued and the worker has a free credit (the item then
  /// counts as in flight until complete() or fail()); nullopt otherwise. Never waits.
  std::optional<Task> try_take(Clock::time_point now = Clock::now()) {
    return joined() ? core_->take(id_, now, std::nullopt) : std::nullopt;
  }
  /// Like try_take, but waits until `deadline` for an item and a credit. nullopt on timeout,
  /// or when the worker left or the dispatcher closed.
  std::optional<Task> take(Clock::time_point deadline) {
    return joined() ? core_->take(id_, Clock::now(), deadline) : std::nullopt;
  }
  /// One-shot: `fn` runs once try_take() could succeed, or the worker was removed: at once on
  /// this thread if that is already so, otherwise on the thread that made it so (without the
  /// dispatcher's lock). Spurious calls are possible; re-arm after try_take().
  void on_ready(std::function<void()> fn) {
    if (joined()) {
      core_->on_ready(id_, std::move(fn));
    } else {
      fn();
    }
  }
  /// The item `task_id` is done. False if it is not held by this worker any more (it timed out
  /// and was re-routed or failed): counted as a late result.
  bool complete(std::uint64_t task_id, Clock::time_point now = Clock::now()) {
    return joined() && core_->report(id_, task_id, true, {}, now);
  }
  /// The worker could not process it: re-routed or failed (see Dispatcher). Same return.
  bool fail(std::uint64_t task_id, std::string_view why, Clock::time_point now = Clock::now()) {
    return joined() && core_->report(id_, task_id, false, why, now);
  }
  /// Leaves the dispatcher (idempotent): queued items are re-routed, held ones re-routed or
  /// failed, hooks run.
  void leave() {
    if (joined()) core_->leave(id_);
    core_.reset();
    id_ = 0;
  }
  std::optional<WorkerStats> stats() const {
    return joined() ? core_->stats_of(id_) : std::nullopt;
  }

 private:
  friend class Dispatcher<T>;
  Worker(std::shared_ptr<Core> core, std::uint64_t id) : core_(std::move(core)), id_(id) {}
  std::shared_ptr<Core> core_;
  std::uint64_t id_ = 0;
};

}  // namespace sluice

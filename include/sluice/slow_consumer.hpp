// Sluice — SlowConsumerDetector: tells which sinks (sockets, subscribers, workers) cannot keep
// up, from the durations of their writes.
//
// Feed it every write to a sink: record_write(sink, duration) when a write completed, or
// record_timeout(sink) each time a write was pending for a send timeout (a write still pending
// after three timeouts records three). Two findings:
//   - slow: `slow_writes` bad writes (longer than `slow_write`, or timed out) among its last
//     `window_writes` (default: 5 over 500 ms among the last 20). A sink that keeps up, only
//     late, is slow: the policy's `action` (default drop: keep it, it loses data while slow).
//   - stalled: `consecutive_timeouts` timeouts with no write completing in between (default 10;
//     with 100 ms sends, a second): the sink is not draining at all. The policy's
//     `stall_action` (default disconnect). A sink already slow can still stall: the stall is
//     reported, once per run of timeouts (a completed write ends the run).
// A slow sink is healthy again after `healthy_after` good writes in a row (default 20); its
// history is cleared then, so one bad write does not make it slow again at once.
// Each transition is returned as an event naming the sink, the evidence, and the action the
// stream's policy chose (drop frames for that sink, or disconnect it); the caller acts on it.
//
// Thread-safety: all members may be called from any thread (one mutex; this runs per write to
// a socket, not per message in a queue).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/detail/thread_annotations.hpp"

namespace sluice {

enum class SlowAction : std::uint8_t {
  drop,        // keep the sink, skip data for it while slow (e.g. lossy broadcast depth)
  disconnect,  // close the sink
};
std::string_view to_string(SlowAction action) noexcept;

struct SlowConsumerConfig {
  std::chrono::nanoseconds slow_write = std::chrono::milliseconds(500);
  std::size_t slow_writes = 5;
  std::size_t window_writes = 20;
  std::size_t consecutive_timeouts = 10;
  std::size_t healthy_after = 20;
  SlowAction action = SlowAction::drop;              // for a slow sink
  SlowAction stall_action = SlowAction::disconnect;  // for a stalled one
  /// Throws std::invalid_argument naming the setting, its value and what is accepted.
  void validate() const;
};

struct SinkEvent {
  enum class Kind : std::uint8_t { became_slow, stalled, recovered };
  Kind kind = Kind::became_slow;
  std::string sink;
  SlowAction action = SlowAction::drop;  // became_slow: `action`; stalled: `stall_action`
  std::string reason;                    // e.g. "5 of the last 20 writes took over 500 ms"
};

struct SinkHealth {
  std::string sink;
  bool slow = false;
  std::uint64_t writes = 0;
  std::uint64_t slow_writes = 0;  // all time
  std::uint64_t timeouts = 0;     // all time
  std::uint64_t times_slow = 0;   // how often it became slow (stalls included)
  std::uint64_t stalls = 0;       // how often it stalled
  std::chrono::nanoseconds last_write{0};
};

class SlowConsumerDetector {
 public:
  explicit SlowConsumerDetector(SlowConsumerConfig config = {});

  /// A write to `sink` completed in `duration`. Returns a transition, if this write caused one.
  std::optional<SinkEvent> record_write(std::string_view sink, std::chrono::nanoseconds duration);
  /// A write to `sink` timed out. Returns a transition, if this caused one.
  std::optional<SinkEvent> record_timeout(std::string_view sink);
  /// Forgets a sink (it disconnected).
  void remove(std::string_view sink);

  bool is_slow(std::string_view sink) const;
  std::vector<SinkHealth> health() const;
  const SlowConsumerConfig& config() const noexcept { return config_; }

 private:
  struct Sink {
    std::vector<bool> window;  // last window_writes writes: true = slow or timed out
    std::size_t next = 0;
    std::size_t filled = 0;
    std::size_t slow_in_window = 0;
    std::size_t consecutive_timeouts = 0;
    std::size_t consecutive_good = 0;
    SinkHealth health;
  };
  std::optional<SinkEvent> record(std::string_view name, bool timed_out,
                                  std::chrono::nanoseconds duration) SLUICE_EXCLUDES(mu_);

  const SlowConsumerConfig config_;
  mutable Mutex mu_;
  std::map<std::string, Sink, std::less<>> sinks_ SLUICE_GUARDED_BY(mu_);
};

}  // namespace sluice

// Sluice — FrameGate: admission control for real-time frames.
//
// A gate sits in front of a stage that processes frames (inference, encoding, a socket) and
// decides, for each arriving frame, whether the stage gets it. It never queues: a frame is
// admitted now or dropped now, with a reason, so latency never grows with a backlog.
//
// Decision for a frame, in order:
//   in_flight   the stage already holds `max_in_flight` admitted frames not yet done();
//   frame_late  the stage is slower than the frame rate (smoothed processing time divided by
//               max_in_flight > frame interval) and less than that time has passed since the
//               last admission: the stage gets frames at the pace it can take, and its
//               processing time keeps being measured, so the gate notices when it speeds up;
//   drop_rate   the windowed rate of the two drops above exceeds `drop_threshold` and the stage
//               is still busy with an earlier frame: shed load until it catches up (keeps a
//               pipelined stage shallow; an idle stage is never starved). Frames shed this way
//               count as dropped for the state but not as pressure, so shedding cannot feed
//               itself.
// Otherwise the frame is admitted.
//
// State, from the windowed drop rate (all drops, over the last `window_frames` frames):
// normal (< drop_threshold), warning, critical (> slowdown_threshold). Entering critical emits
// `slow_down{drop_rate}` once; returning to normal after that emits `resume` and re-arms
// slow_down. The 30 % / 10 % gap is the hysteresis: the signals do not flap.
//
// Why not a cumulative rate: a gate that drops every frame once the *cumulative* drop rate
// passes 10 %
// raises that rate by dropping, and never admits a frame again (a runaway). Here the
// rate is over a sliding window and shed frames are not pressure, so the gate recovers.
//
// Time is a parameter (`now`), so tests replay scenarios deterministically; the overloads
// without it read std::chrono::steady_clock. Thread-safety: all members may be called from any
// thread (one mutex; a gate decides at frame rate, not at message rate).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sluice/detail/thread_annotations.hpp"
#include "sluice/drop_reason.hpp"

namespace sluice {

enum class GateState : std::uint8_t { normal, warning, critical };
std::string_view to_string(GateState state) noexcept;

struct FrameGateConfig {
  std::string name = "frames";
  /// Time between frames at the nominal rate (33.3 ms = 30 fps). > 0.
  std::chrono::nanoseconds frame_interval = std::chrono::nanoseconds(33'333'333);
  /// Windowed drop rate above which the gate sheds load (env STREAM_DROP_THRESHOLD). (0, 1].
  double drop_threshold = 0.10;
  /// Windowed drop rate above which it signals slow_down (env STREAM_SLOWDOWN_THRESHOLD).
  /// [drop_threshold, 1].
  double slowdown_threshold = 0.30;
  /// The sliding window: the last N frames offered. ≥ 1.
  std::size_t window_frames = 30;
  /// Frames admitted and not yet done() the stage may hold. ≥ 1.
  std::size_t max_in_flight = 1;
  /// Weight of the newest processing time in the smoothed one (EWMA). (0, 1].
  double smoothing = 0.2;

  /// Frames per second → frame_interval.
  FrameGateConfig& fps(double frames_per_second);
  /// Reads STREAM_DROP_THRESHOLD and STREAM_SLOWDOWN_THRESHOLD if set; throws
  /// std::invalid_argument naming the variable and its value if one is not a number in range.
  FrameGateConfig& from_env();
  /// Throws std::invalid_argument naming the gate, the setting, the value and the range.
  void validate() const;
};

/// A signal for the producer of the frames.
struct GateSignal {
  enum class Kind : std::uint8_t { slow_down, resume };
  Kind kind = Kind::slow_down;
  double drop_rate = 0;  // windowed, when emitted
};
std::string_view to_string(GateSignal::Kind kind) noexcept;

/// The gate's answer for one frame.
struct Admission {
  bool admitted = false;
  std::uint64_t frame_index = 0;
  DropReason reason = DropReason::frame_late;  // when not admitted: in_flight, frame_late,
                                               // drop_rate
  GateState state = GateState::normal;         // after this frame
  double drop_rate = 0;                        // windowed, after this frame
  std::optional<GateSignal> signal;            // slow_down or resume, emitted by this frame
  explicit operator bool() const noexcept { return admitted; }
};

struct FrameGateStats {
  std::string name;
  GateState state = GateState::normal;
  double drop_rate = 0;  // windowed
  std::uint64_t offered = 0;
  std::uint64_t admitted = 0;
  std::uint64_t done = 0;
  std::uint64_t abandoned = 0;  // admitted, then lost further on (see abandon())
  DropCounts dropped;           // by reason: in_flight, frame_late, drop_rate
  std::uint64_t in_flight = 0;
  std::chrono::nanoseconds smoothed_processing{0};
  std::uint64_t slow_downs = 0;
  std::uint64_t resumes = 0;
};

class FrameGate {
 public:
  using Clock = std::chrono::steady_clock;

  /// Throws std::invalid_argument if the configuration is invalid.
  explicit FrameGate(FrameGateConfig config);

  /// Decides for the frame arriving at `now`. An admitted frame must be reported by done().
  Admission admit(std::uint64_t frame_index, Clock::time_point now);
  Admission admit(std::uint64_t frame_index) { return admit(frame_index, Clock::now()); }

  /// The stage finished an admitted frame, in `processing_time`.
  void done(std::uint64_t frame_index, std::chrono::nanoseconds processing_time);

  /// An admitted frame the stage will never finish (refused or lost further on, and counted
  /// there): frees its in-flight place without a processing-time sample.
  void abandon(std::uint64_t frame_index);

  FrameGateStats stats() const;
  const FrameGateConfig& config() const noexcept { return config_; }

 private:
  enum class Outcome : std::uint8_t { admitted, pressure, shed };
  double rate(std::uint64_t drops) const noexcept SLUICE_REQUIRES(mu_);

  const FrameGateConfig config_;
  mutable Mutex mu_;
  std::vector<Outcome> window_ SLUICE_GUARDED_BY(mu_);  // ring of the last window_frames outcomes
  std::size_t window_next_ SLUICE_GUARDED_BY(mu_) = 0;
  std::size_t window_len_ SLUICE_GUARDED_BY(mu_) = 0;
  std::uint64_t window_pressure_ SLUICE_GUARDED_BY(mu_) = 0;  // pressure drops in the window
  std::uint64_t window_shed_ SLUICE_GUARDED_BY(mu_) = 0;      // shed drops in the window
  std::uint64_t in_flight_ SLUICE_GUARDED_BY(mu_) = 0;
  double smoothed_ns_ SLUICE_GUARDED_BY(mu_) = 0;  // 0 until the first done()
  std::optional<Clock::time_point> last_admit_ SLUICE_GUARDED_BY(mu_);
  GateState state_ SLUICE_GUARDED_BY(mu_) = GateState::normal;
  bool slow_down_armed_ SLUICE_GUARDED_BY(mu_) = true;
  FrameGateStats stats_ SLUICE_GUARDED_BY(mu_);
};

}  // namespace sluice

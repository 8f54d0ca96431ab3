// Sluice — StageWorker: a worker for a relay topic's processing stage, over WebSocket
// (/v1/ws/work/{topic}); what `sluice worker` runs. See docs/stages.md.
//
// It receives frames (binary: the 16-byte header, then an RGB image of width x height x 3
// bytes, row-major) and answers each with a result that carries the frame's header, then
//   {"width":W,"height":H,"mean":M}\n   one line of JSON: the output size and mean brightness
//   W x H bytes                          the frame in grayscale (BT.601 luma), downscaled by
//                                        `downscale` in each direction (box filter)
// A frame whose size does not match width x height x 3 is answered with
// {"frame_index":N,"error":"..."} (the relay re-routes it to another worker or fails it and
// tells its publisher). `delay` adds a wait before each answer, to play a slow model (the
// setting that demonstrates gating); set_delay() changes it while running.
//
// Threading: run() serves on the calling thread until stop() (from any thread) or until the
// relay closes the socket. set_delay(), stop() and the counters are thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace sluice {

struct StageWorkerOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 7401;  // the relay's HTTP port
  std::string topic;          // a topic with a stage
  std::string name = "worker";
  std::uint32_t concurrency = 1;  // frames the relay may send before an answer
  unsigned width = 0;             // 0: the frame is one row (width = bytes / 3)
  unsigned height = 0;            // 0: 1 (with width 0) or bytes / 3 / width
  unsigned downscale = 4;
  std::chrono::milliseconds delay{0};
};

/// The image part of a result: grayscale, downscaled, and its mean brightness (0–255).
/// Throws std::invalid_argument if `rgb` is not width x height x 3 bytes.
struct GrayImage {
  unsigned width = 0;
  unsigned height = 0;
  double mean = 0;
  std::string pixels;
};
GrayImage grayscale_downscale(std::string_view rgb, unsigned width, unsigned height,
                              unsigned factor);

class StageWorker {
 public:
  explicit StageWorker(StageWorkerOptions options);
  ~StageWorker();
  StageWorker(const StageWorker&) = delete;
  StageWorker& operator=(const StageWorker&) = delete;
  StageWorker(StageWorker&&) = delete;  // run() on one thread, stop() on another: a fixed address
  StageWorker& operator=(StageWorker&&) = delete;

  /// Connects and joins the stage; throws std::runtime_error with the relay's answer (HTTP
  /// status and body) if it refuses.
  void connect();
  /// Serves frames until stop() or the relay closes; returns why it ended.
  std::string run();
  void stop();
  void set_delay(std::chrono::milliseconds delay) { delay_ms_.store(delay.count()); }

  std::uint64_t processed() const noexcept { return processed_.load(); }
  std::uint64_t refused() const noexcept { return refused_.load(); }

 private:
  struct Impl;
  StageWorkerOptions options_;
  std::atomic<std::int64_t> delay_ms_;
  std::atomic<std::uint64_t> processed_{0};
  std::atomic<std::uint64_t> refused_{0};
  std::unique_ptr<Impl> impl_;
};

}  // namespace sluice

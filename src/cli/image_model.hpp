// The demo model `sluice worker` runs, and the stage tests with it: each frame is an RGB image
// (width x height x 3 bytes, row-major); the result is
//   {"width":W,"height":H,"mean":M}\n   one line of JSON: the output size and mean brightness
//   W x H bytes                          the image in grayscale (BT.601 luma), downscaled by
//                                        `downscale` in each direction (box filter)
// A frame of the wrong size throws std::invalid_argument (the worker reports the frame
// failed). `delay` adds a wait before each answer, to play a slow model (what demonstrates
// a stage's gate); set_delay() changes it while a worker runs.
//
// Thread-safety: operator() and set_delay() may be called from any threads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "sluice/client/stage_worker.hpp"

namespace sluice::cli {

/// The image part of a result: grayscale, downscaled, and its mean brightness (0–255).
struct GrayImage {
  unsigned width = 0;
  unsigned height = 0;
  double mean = 0;
  std::string pixels;
};
/// Throws std::invalid_argument if `rgb` is not width x height x 3 bytes.
GrayImage grayscale_downscale(std::string_view rgb, unsigned width, unsigned height,
                              unsigned factor);

struct ImageModelOptions {
  unsigned width = 0;   // 0: the frame is one row (width = bytes / 3)
  unsigned height = 0;  // 0: 1 (with width 0) or bytes / 3 / width
  unsigned downscale = 4;
  std::chrono::milliseconds delay{0};
};

class ImageModel {
 public:
  explicit ImageModel(const ImageModelOptions& options)
      : options_(options), delay_ms_(options.delay.count()) {}
  /// The result for `frame` (see above).
  std::string operator()(const WorkFrame& frame) const;
  void set_delay(std::chrono::milliseconds delay) { delay_ms_.store(delay.count()); }

 private:
  const ImageModelOptions options_;
  std::atomic<std::int64_t> delay_ms_;
};

}  // namespace sluice::cli

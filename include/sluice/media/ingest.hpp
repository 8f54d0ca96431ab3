// Sluice — Ingest: a camera's (or a file's) frames, one at a time, out of a GStreamer pipeline.
//
// An Ingest reads a source URI with GStreamer and hands each frame to a sink (in `sluice ingest`
// and the tests: a relay Publisher). Sources:
//   rtsp://host:port/path   an RTSP camera (RTP over TCP); reconnects with backoff when it goes
//                           away (an error, the end of its stream, or no frame for
//                           `source_timeout`)
//   file:///path            a media file (any container GStreamer demuxes); ends at its end
//   v4l2:///dev/videoN      a V4L2 device
//   test://                 a moving test pattern (live, `width`×`height` at `fps`)
// Outputs:
//   encoded   the source's access units as they are — H.264 (Annex B byte stream, one access
//             unit per frame, parameter sets in band), H.265 likewise, VP8, VP9 — never
//             re-encoded. A raw source (test://, a raw V4L2 device) is encoded once, to VP8.
//   raw       decoded pictures, RGB (3 bytes per pixel, rows packed), at `width`×`height` and
//             `fps` when set (0: the source's)
//   jpeg      decoded pictures, JPEG-compressed at that size and rate
//
// Loss (none silent): frames wait for the sink in a queue of `queue_frames`. From a live source
// (a camera, a device, test://) a frame that arrives while it is full is dropped at the source
// (reason backpressure) — the sink is blocked, which is how a throttled topic's backpressure
// reaches the camera: no memory grows. A file is not live: its reader waits for room instead,
// and nothing of it is dropped. While the sink's consumer says slow_down (set_slowed(true)), a
// live source's decoded output passes every other frame and an encoded one its keyframes only
// (reason slow_down). An encoded output that
// dropped a frame drops the frames that depend on it, up to the next keyframe (reason
// until_keyframe: they would not decode). stats() counts each reason; at any time
//   frames == handed + queued + dropped_backpressure + dropped_slow_down + dropped_until_keyframe.
//
// Ordering: frames reach the sink in the source's order, on one thread (the ingest's own).
// Blocking: start() and stop() return once the pipeline is built / torn down; the sink may
// block (that is the backpressure above). Thread-safety: every member may be called from any
// thread; the sink is never called concurrently with itself.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "sluice/buffer.hpp"

namespace sluice::media {

enum class IngestOutput : std::uint8_t { encoded, raw, jpeg };
/// "encoded", "raw", "jpeg"; parse_output() the reverse (nullopt-like: false on anything else).
const char* to_string(IngestOutput output) noexcept;
bool parse_output(const std::string& text, IngestOutput& out) noexcept;

struct IngestOptions {
  std::string uri;  // rtsp://, file://, v4l2://, test:// (above)
  IngestOutput output = IngestOutput::encoded;
  int width = 0;   // raw / jpeg: scaled to (0: the source's); test://: the pattern's (0: 640)
  int height = 0;  // (0: the source's; test://: 480)
  int fps = 0;     // raw / jpeg: the rate (0: the source's); test://: the pattern's (0: 30)
  // A file's frames leave at their timestamps, as a camera's would; false: as fast as read.
  bool pace = true;
  std::size_t queue_frames = 8;                    // frames waiting for the sink (1..4096)
  std::chrono::milliseconds reconnect_min{250};    // a live source lost: first retry after this,
  std::chrono::milliseconds reconnect_max{5000};   // doubling up to this
  std::chrono::milliseconds source_timeout{5000};  // a live source silent this long: lost
};

/// A frame for the sink. The payload is in place in GStreamer's buffer (no copy): it stays
/// valid as long as any copy of the Buffer lives.
struct IngestFrame {
  Buffer payload;
  std::int64_t timestamp_ns = 0;  // Unix ns when the pipeline produced it
  bool keyframe = true;           // decodable on its own (decoded outputs: always)
};

struct IngestStats {
  std::uint64_t frames = 0;  // produced by the pipeline
  std::uint64_t handed = 0;  // given to the sink
  std::uint64_t queued = 0;  // waiting for it now
  std::uint64_t bytes = 0;   // payload bytes given to the sink
  std::uint64_t dropped_backpressure = 0;
  std::uint64_t dropped_slow_down = 0;
  std::uint64_t dropped_until_keyframe = 0;
  std::uint64_t keyframes = 0;   // among the frames produced
  std::uint64_t reconnects = 0;  // live source lost and built again
  bool connected = false;        // the pipeline is playing now
  bool finished = false;         // a file ended (or failed) and every frame was handed
  std::string caps;              // what the sink gets (GStreamer caps), once known
  std::string last_error;        // the source's last error, if any
};

class Ingest {
 public:
  using Sink = std::function<void(IngestFrame&& frame)>;

  /// Throws std::invalid_argument naming the option that is wrong (a URI of another scheme,
  /// queue_frames out of range, ...), and std::runtime_error when GStreamer lacks an element.
  Ingest(IngestOptions options, Sink sink);
  ~Ingest();  // stop()
  Ingest(const Ingest&) = delete;
  Ingest& operator=(const Ingest&) = delete;
  Ingest(Ingest&&) = delete;
  Ingest& operator=(Ingest&&) = delete;

  /// Builds the pipeline and starts it (a live source that is not there yet is retried).
  void start();
  /// Stops the pipeline and the sink's thread; frames still queued are not handed (counted
  /// as they are: queued). Idempotent.
  void stop();
  /// While true, frames are thinned at the source (reason slow_down, above).
  void set_slowed(bool slowed);
  /// Waits until a file has ended and its frames were handed to the sink (true), or `timeout`.
  bool wait_finished(std::chrono::milliseconds timeout);
  IngestStats stats() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace sluice::media

// Ingest (include/sluice/media/ingest.hpp): a GStreamer pipeline ending in an appsink whose
// samples go, in place, into a bounded queue that one thread hands to the sink. GStreamer does
// the reading, demuxing, depayloading, parsing, decoding and encoding; what is written here is
// only what it does not do: the loss policy at the source (queue bound, slow_down, keyframes)
// with its counts, and reconnecting a live source that went away.
#include "sluice/media/ingest.hpp"

#include <gst/app/gstappsink.h>
#include <gst/gst.h>

#include <algorithm>
#include <deque>
#include <optional>
#include <stdexcept>
#include <thread>

#include "sluice/detail/cond_var.hpp"
#include "sluice/detail/thread_annotations.hpp"

namespace sluice::media {

const char* to_string(IngestOutput output) noexcept {
  switch (output) {
    case IngestOutput::encoded:
      return "encoded";
    case IngestOutput::raw:
      return "raw";
    case IngestOutput::jpeg:
      return "jpeg";
  }
  return "encoded";
}

bool parse_output(const std::string& text, IngestOutput& out) noexcept {
  for (const auto o : {IngestOutput::encoded, IngestOutput::raw, IngestOutput::jpeg}) {
    if (text == to_string(o)) {
      out = o;
      return true;
    }
  }
  return false;
}

namespace {

using Clock = std::chrono::steady_clock;

enum class SourceKind : std::uint8_t { rtsp, file, v4l2, test };

struct Source {
  SourceKind kind = SourceKind::test;
  std::string where;  // rtsp: the URI; file: the path; v4l2: the device
  bool live() const noexcept { return kind != SourceKind::file; }
};

Source parse_uri(const std::string& uri) {
  const auto starts = [&](const char* p) { return uri.rfind(p, 0) == 0; };
  Source s;
  if (starts("rtsp://") || starts("rtsps://")) {
    s.kind = SourceKind::rtsp;
    s.where = uri;
  } else if (starts("file://")) {
    s.kind = SourceKind::file;
    gchar* path = gst_uri_get_location(uri.c_str());  // (percent-decoded)
    if (path == nullptr || *path == 0) {
      g_free(path);
      throw std::invalid_argument("ingest uri: no path in " + uri);
    }
    s.where = path;
    g_free(path);
  } else if (starts("v4l2://")) {
    s.kind = SourceKind::v4l2;
    s.where = uri.substr(7);
    if (s.where.empty()) s.where = "/dev/video0";
  } else if (starts("test://")) {
    s.kind = SourceKind::test;
  } else {
    throw std::invalid_argument("ingest uri: " + uri +
                                " is not rtsp://, file://, v4l2:// or test://");
  }
  return s;
}

void init_gstreamer() {
  static std::once_flag once;
  std::call_once(once, [] {
    GError* err = nullptr;
    if (gst_init_check(nullptr, nullptr, &err) == FALSE) {
      const std::string why = err != nullptr ? err->message : "unknown";
      if (err != nullptr) g_error_free(err);
      throw std::runtime_error("GStreamer: " + why);
    }
  });
}

// A sample's buffer, mapped for reading as long as a frame's Buffer refers to it.
struct Mapped {
  GstBuffer* buffer;
  GstMapInfo map{};
  bool ok;
  explicit Mapped(GstBuffer* b)
      : buffer(gst_buffer_ref(b)), ok(gst_buffer_map(buffer, &map, GST_MAP_READ) != FALSE) {}
  ~Mapped() {
    if (ok) gst_buffer_unmap(buffer, &map);
    gst_buffer_unref(buffer);
  }
  Mapped(const Mapped&) = delete;
  Mapped& operator=(const Mapped&) = delete;
  Mapped(Mapped&&) = delete;
  Mapped& operator=(Mapped&&) = delete;
};

// What the sink gets, in short: the media type, and its format, size and rate when known
// ("video/x-h264, width=320, height=240, framerate=30/1").
std::string caps_text(GstCaps* caps) {
  if (caps == nullptr || gst_caps_get_size(caps) == 0) return {};
  const GstStructure* st = gst_caps_get_structure(caps, 0);
  std::string out = gst_structure_get_name(st);
  if (const gchar* format = gst_structure_get_string(st, "format"))
    out += std::string(", format=") + format;
  int w = 0;
  int h = 0;
  if (gst_structure_get_int(st, "width", &w) && gst_structure_get_int(st, "height", &h))
    out += ", width=" + std::to_string(w) + ", height=" + std::to_string(h);
  int num = 0;
  int den = 0;
  if (gst_structure_get_fraction(st, "framerate", &num, &den) && num > 0)
    out += ", framerate=" + std::to_string(num) + "/" + std::to_string(den);
  return out;
}

std::int64_t unix_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

struct Ingest::State {
  IngestOptions options;
  Source source;
  Sink sink;

  Mutex mu;
  CondVar cv;
  std::deque<IngestFrame> queue SLUICE_GUARDED_BY(mu);
  IngestStats stats SLUICE_GUARDED_BY(mu);  // (queued: from queue)
  bool slowed SLUICE_GUARDED_BY(mu) = false;
  bool waiting_keyframe SLUICE_GUARDED_BY(mu) = false;  // encoded, after a drop
  std::uint64_t slow_parity SLUICE_GUARDED_BY(mu) = 0;
  bool source_done SLUICE_GUARDED_BY(mu) = false;  // a file ended (or failed)
  bool stopping SLUICE_GUARDED_BY(mu) = false;
  Clock::time_point last_frame SLUICE_GUARDED_BY(mu) = Clock::now();

  std::thread control;
  std::thread handing;
  GstElement* pipeline = nullptr;  // (control thread)

  // --- the pipeline (control thread)

  // The pipeline's description up to the appsink ("sink"); for an encoded file or camera, up
  // to the source ("src": rtspsrc's pads) or its type finder ("find"), the rest being chosen
  // by what the stream turns out to be (link_stream).
  std::string description() const {
    const IngestOptions& o = options;
    const bool encoded = o.output == IngestOutput::encoded;
    std::string d;
    switch (source.kind) {
      case SourceKind::rtsp:
        d = "rtspsrc name=src protocols=tcp latency=0";
        break;
      case SourceKind::file:
        d = "filesrc name=src";
        break;
      case SourceKind::v4l2:
        d = "v4l2src name=src ! decodebin";
        break;
      case SourceKind::test:
        d = "videotestsrc name=src is-live=true pattern=ball ! video/x-raw,width=" +
            std::to_string(o.width > 0 ? o.width : 640) +
            ",height=" + std::to_string(o.height > 0 ? o.height : 480) +
            ",framerate=" + std::to_string(o.fps > 0 ? o.fps : 30) + "/1";
        break;
    }
    if (encoded) {
      if (source.kind == SourceKind::file) return d + " ! typefind name=find";
      if (source.kind == SourceKind::rtsp) return {};  // (build() makes it: rtspsrc alone)
      // (a raw source: encoded once, to VP8, a keyframe every second)
      const int fps = o.fps > 0 ? o.fps : 30;
      return d + " ! videoconvert ! vp8enc deadline=1 cpu-used=8 keyframe-max-dist=" +
             std::to_string(fps) + " ! appsink name=sink";
    }
    if (source.kind == SourceKind::rtsp || source.kind == SourceKind::file) d += " ! decodebin";
    std::string caps =
        std::string("video/x-raw,format=") + (o.output == IngestOutput::jpeg ? "I420" : "RGB");
    if (o.width > 0) caps += ",width=" + std::to_string(o.width);
    if (o.height > 0) caps += ",height=" + std::to_string(o.height);
    if (o.fps > 0) caps += ",framerate=" + std::to_string(o.fps) + "/1";
    d += " ! videoconvert ! videoscale ! videorate ! " + caps;
    if (o.output == IngestOutput::jpeg) d += " ! jpegenc";
    return d + " ! appsink name=sink";
  }

  void configure_sink(GstElement* appsink) {
    GstAppSinkCallbacks callbacks{};
    callbacks.new_sample = &State::on_sample;
    gst_app_sink_set_callbacks(GST_APP_SINK(appsink), &callbacks, this, nullptr);
    g_object_set(appsink, "sync",
                 static_cast<gboolean>(source.kind == SourceKind::file && options.pace),
                 "emit-signals", FALSE, nullptr);
  }

  // Why not parsebin: it re-writes H.264 on the way (the first access unit of an MP4 came out
  // with its parameter sets twice), and encoded output promises the source's access units as
  // they are. So the stream is taken apart here with GStreamer's own registry — the
  // highest-ranked depayloader or demuxer for each stream's caps — and only the codec's parser
  // is added, as `gst-launch-1.0 … ! qtdemux ! h264parse` would.

  // The tail for a codec passed through: its parser to one access unit per buffer (Annex B,
  // parameter sets in band), then the appsink. Empty: not a codec passed through.
  static std::string codec_tail(const std::string& name) {
    if (name == "video/x-h264" || name == "video/x-h265") {
      const std::string codec = name.substr(8);  // h264, h265
      return codec + "parse config-interval=-1 ! " + name +
             ",stream-format=byte-stream,alignment=au ! appsink name=sink";
    }
    if (name == "video/x-vp8" || name == "video/x-vp9") return "appsink name=sink";
    return {};
  }

  // The best element of `type` (demuxer, depayloader) that takes `caps`; null if none.
  static GstElement* element_for(GstCaps* caps, GstElementFactoryListType type) {
    GList* all = gst_element_factory_list_get_elements(type, GST_RANK_MARGINAL);
    GList* fit = gst_element_factory_list_filter(all, caps, GST_PAD_SINK, FALSE);
    GstElement* e = fit != nullptr
                        ? gst_element_factory_create(GST_ELEMENT_FACTORY(fit->data), nullptr)
                        : nullptr;
    gst_plugin_feature_list_free(fit);
    gst_plugin_feature_list_free(all);
    return e;
  }

  // A stream appeared on `pad` with `caps`: a codec passed through gets its tail (the first
  // video stream only), RTP its depayloader, a container its demuxer; anything else (audio, a
  // second video) a fakesink.
  void link_stream(GstPad* pad, GstCaps* caps) {
    const std::string name =
        gst_caps_get_size(caps) > 0 ? gst_structure_get_name(gst_caps_get_structure(caps, 0)) : "";
    GstElement* next = nullptr;
    GstElement* sink_in_tail = nullptr;
    std::string tail = codec_tail(name);
    GstElement* existing = gst_bin_get_by_name(GST_BIN(pipeline), "sink");
    const bool have_sink = existing != nullptr;
    if (existing != nullptr) gst_object_unref(existing);
    if (!tail.empty() && !have_sink) {
      GError* err = nullptr;
      next = gst_parse_bin_from_description(tail.c_str(), TRUE, &err);
      if (err != nullptr) g_error_free(err);
      if (next != nullptr) sink_in_tail = gst_bin_get_by_name(GST_BIN(next), "sink");
    } else if (tail.empty()) {
      next = element_for(caps, name == "application/x-rtp" ? GST_ELEMENT_FACTORY_TYPE_DEPAYLOADER
                                                           : GST_ELEMENT_FACTORY_TYPE_DEMUXER);
    }
    if (next == nullptr) {
      if (name.rfind("video/", 0) == 0 && !have_sink) {
        const MutexLock lock(mu);
        stats.last_error = "encoded output: " + name +
                           " is not passed through (H.264, H.265, VP8, VP9 are); use output "
                           "raw or jpeg";
      }
      next = gst_element_factory_make("fakesink", nullptr);
      g_object_set(next, "async", FALSE, nullptr);
    }
    if (sink_in_tail != nullptr) {
      gst_object_set_name(GST_OBJECT(next), "sink");  // (found again by name: one per pipeline)
      configure_sink(sink_in_tail);
      gst_object_unref(sink_in_tail);
    } else if (tail.empty()) {
      g_signal_connect(next, "pad-added", G_CALLBACK(&State::on_pad), this);
    }
    gst_bin_add(GST_BIN(pipeline), next);
    GstPad* in = gst_element_get_static_pad(next, "sink");
    (void)gst_pad_link(pad, in);
    gst_object_unref(in);
    (void)gst_element_sync_state_with_parent(next);
    // (a depayloader's output is a static pad: what it gives is its template's caps)
    GstPad* out = tail.empty() ? gst_element_get_static_pad(next, "src") : nullptr;
    if (out != nullptr) {
      GstCaps* out_caps = gst_pad_get_pad_template_caps(out);
      link_stream(out, out_caps);
      gst_caps_unref(out_caps);
      gst_object_unref(out);
    }
  }

  static void on_pad(GstElement* /*element*/, GstPad* pad, gpointer user) {
    GstCaps* caps = gst_pad_get_current_caps(pad);
    if (caps == nullptr) caps = gst_pad_query_caps(pad, nullptr);
    static_cast<State*>(user)->link_stream(pad, caps);
    gst_caps_unref(caps);
  }

  static void on_type(GstElement* find, guint /*probability*/, GstCaps* caps, gpointer user) {
    GstPad* pad = gst_element_get_static_pad(find, "src");
    static_cast<State*>(user)->link_stream(pad, caps);
    gst_object_unref(pad);
  }

  bool build() {
    GError* err = nullptr;
    if (source.kind == SourceKind::rtsp && options.output == IngestOutput::encoded) {
      // (one element: gst_parse_launch would return it bare, not in a pipeline)
      pipeline = gst_pipeline_new(nullptr);
      GstElement* src = gst_element_factory_make("rtspsrc", "src");
      gst_util_set_object_arg(G_OBJECT(src), "protocols", "tcp");
      g_object_set(src, "latency", 0U, nullptr);
      gst_bin_add(GST_BIN(pipeline), src);
    } else {
      pipeline = gst_parse_launch(description().c_str(), &err);
    }
    if (err != nullptr) {
      const MutexLock lock(mu);
      stats.last_error = err->message;
      g_error_free(err);
      if (pipeline != nullptr) gst_object_unref(pipeline);
      pipeline = nullptr;
      return false;
    }
    if (GstElement* src = gst_bin_get_by_name(GST_BIN(pipeline), "src")) {
      if (source.kind == SourceKind::rtsp || source.kind == SourceKind::file)
        g_object_set(src, "location", source.where.c_str(), nullptr);
      if (source.kind == SourceKind::v4l2)
        g_object_set(src, "device", source.where.c_str(), nullptr);
      gst_object_unref(src);
    }
    if (GstElement* find = gst_bin_get_by_name(GST_BIN(pipeline), "find")) {
      g_signal_connect(find, "have-type", G_CALLBACK(&State::on_type), this);
      gst_object_unref(find);
    }
    if (source.kind == SourceKind::rtsp && options.output == IngestOutput::encoded) {
      if (GstElement* src = gst_bin_get_by_name(GST_BIN(pipeline), "src")) {
        g_signal_connect(src, "pad-added", G_CALLBACK(&State::on_pad), this);
        gst_object_unref(src);
      }
    }
    if (GstElement* appsink = gst_bin_get_by_name(GST_BIN(pipeline), "sink")) {
      configure_sink(appsink);
      gst_object_unref(appsink);
    }
    {
      const MutexLock lock(mu);
      last_frame = Clock::now();
    }
    if (gst_element_set_state(pipeline, GST_STATE_PLAYING) != GST_STATE_CHANGE_FAILURE) return true;
    // (why it did not start is on the bus: a file that is not there, a device that is busy)
    GstBus* bus = gst_element_get_bus(pipeline);
    GstMessage* m = gst_bus_pop_filtered(bus, GST_MESSAGE_ERROR);
    std::string why = "the pipeline did not start";
    if (m != nullptr) {
      GError* e = nullptr;
      gst_message_parse_error(m, &e, nullptr);
      if (e != nullptr) why = e->message;
      if (e != nullptr) g_error_free(e);
      gst_message_unref(m);
    }
    gst_object_unref(bus);
    const MutexLock lock(mu);
    stats.last_error = why;
    return false;
  }

  void teardown() {
    if (pipeline == nullptr) return;
    gst_element_set_state(pipeline, GST_STATE_NULL);
    gst_object_unref(pipeline);
    pipeline = nullptr;
    const MutexLock lock(mu);
    stats.connected = false;
  }

  // Runs the pipeline until it fails, ends, stops or (live) goes silent. True: build it again.
  bool run_once() {
    if (!build()) {
      teardown();
      return source.live();
    }
    GstBus* bus = gst_element_get_bus(pipeline);
    bool again = source.live();
    while (true) {
      GstMessage* m = gst_bus_timed_pop_filtered(
          bus, 100 * GST_MSECOND, static_cast<GstMessageType>(GST_MESSAGE_ERROR | GST_MESSAGE_EOS));
      const MutexLock lock(mu);
      if (stopping) {
        again = false;
        if (m != nullptr) gst_message_unref(m);
        break;
      }
      if (m == nullptr) {
        if (source.live() && Clock::now() - last_frame > options.source_timeout) {
          stats.last_error = "no frame for " + std::to_string(options.source_timeout.count()) +
                             " ms (source_timeout)";
          break;
        }
        continue;
      }
      if (GST_MESSAGE_TYPE(m) == GST_MESSAGE_ERROR) {
        GError* err = nullptr;
        gst_message_parse_error(m, &err, nullptr);
        stats.last_error = err != nullptr ? err->message : "error";
        if (err != nullptr) g_error_free(err);
      } else if (!source.live()) {
        stats.last_error.clear();  // (a file's end)
      } else {
        stats.last_error = "the source ended its stream";
      }
      gst_message_unref(m);
      break;
    }
    gst_object_unref(bus);
    teardown();
    return again;
  }

  // Runs the pipeline again after each end of a live source, waiting reconnect_min, doubling up
  // to reconnect_max while attempts bring no frame; one that did starts the backoff over.
  void run_control() {
    auto backoff = options.reconnect_min;
    for (std::uint64_t before = frames_so_far(); run_once(); before = frames_so_far()) {
      const MutexLock lock(mu);
      if (stats.frames > before) backoff = options.reconnect_min;  // (it had been producing)
      const auto until = Clock::now() + backoff;
      while (!stopping) {
        if (!cv.wait_until(mu, until)) break;
      }
      if (stopping) return;
      ++stats.reconnects;
      backoff = std::min(backoff * 2, options.reconnect_max);
    }
    const MutexLock lock(mu);
    source_done = true;
    cv.notify_all();
  }

  std::uint64_t frames_so_far() {
    const MutexLock lock(mu);
    return stats.frames;
  }

  // --- frames (streaming thread, then the handing thread)

  static GstFlowReturn on_sample(GstAppSink* appsink, gpointer user) {
    auto* st = static_cast<State*>(user);
    GstSample* sample = gst_app_sink_pull_sample(appsink);
    if (sample == nullptr) return GST_FLOW_EOS;
    GstBuffer* buffer = gst_sample_get_buffer(sample);
    if (buffer == nullptr) {
      gst_sample_unref(sample);
      return GST_FLOW_OK;
    }
    const bool key = !GST_BUFFER_FLAG_IS_SET(buffer, GST_BUFFER_FLAG_DELTA_UNIT);
    auto mapped = std::make_shared<Mapped>(buffer);
    {
      const MutexLock lock(st->mu);
      if (st->stats.caps.empty()) st->stats.caps = caps_text(gst_sample_get_caps(sample));
    }
    gst_sample_unref(sample);
    if (!mapped->ok) return GST_FLOW_OK;
    const auto* data = reinterpret_cast<const std::byte*>(mapped->map.data);
    const std::size_t size = mapped->map.size;
    st->offer(IngestFrame{Buffer::view_of(std::move(mapped), data, size), unix_now_ns(), key});
    return GST_FLOW_OK;
  }

  // The loss policy at the source (the header's Loss paragraph).
  void offer(IngestFrame&& f) {
    const bool encoded = options.output == IngestOutput::encoded;
    const MutexLock lock(mu);
    if (!source.live()) {  // a file waits for room: its reader is held back, nothing is dropped
      while (!stopping && queue.size() >= options.queue_frames) cv.wait(mu);
      if (stopping) return;
    }
    ++stats.frames;
    stats.connected = true;
    last_frame = Clock::now();
    if (f.keyframe) ++stats.keyframes;
    if (encoded && waiting_keyframe && !f.keyframe) {
      ++stats.dropped_until_keyframe;
      return;
    }
    if (slowed && source.live() && (encoded ? !f.keyframe : slow_parity++ % 2 == 1)) {
      ++stats.dropped_slow_down;
      waiting_keyframe = encoded;
      return;
    }
    if (queue.size() >= options.queue_frames) {
      ++stats.dropped_backpressure;
      waiting_keyframe = encoded;
      return;
    }
    waiting_keyframe = false;
    queue.push_back(std::move(f));
    cv.notify_all();
  }

  void run_handing() {
    while (auto f = next_to_hand()) sink(std::move(*f));
  }
  // The next frame to hand on (waiting for it), or none once stopping.
  std::optional<IngestFrame> next_to_hand() {
    const MutexLock lock(mu);
    while (true) {
      while (!stopping && queue.empty() && !source_done) cv.wait(mu);
      if (stopping) return std::nullopt;
      if (queue.empty()) {  // (source_done: a file's every frame was handed)
        stats.finished = true;
        cv.notify_all();
        while (!stopping && queue.empty()) cv.wait(mu);
        continue;
      }
      IngestFrame f = std::move(queue.front());
      queue.pop_front();
      cv.notify_all();  // (a file's reader waits for room)
      ++stats.handed;
      stats.bytes += f.payload.size();
      return f;
    }
  }
};

Ingest::Ingest(IngestOptions options, Sink sink) : state_(std::make_shared<State>()) {
  if (options.queue_frames < 1 || options.queue_frames > 4096)
    throw std::invalid_argument("ingest queue_frames: 1 to 4096, not " +
                                std::to_string(options.queue_frames));
  if (options.width < 0 || options.height < 0 || options.fps < 0 || options.fps > 1000)
    throw std::invalid_argument(
        "ingest width, height, fps: 0 (the source's) or positive; fps "
        "at most 1000");
  if (options.reconnect_min.count() <= 0 || options.reconnect_max < options.reconnect_min)
    throw std::invalid_argument("ingest reconnect_min > 0 and reconnect_max >= reconnect_min");
  if (!sink) throw std::invalid_argument("ingest: no sink");
  init_gstreamer();
  state_->source = parse_uri(options.uri);
  for (const char* element : {"appsink", "typefind", "decodebin", "videoconvert", "vp8enc",
                              "jpegenc", "h264parse", "rtspsrc"}) {
    GstElementFactory* f = gst_element_factory_find(element);
    if (f == nullptr)
      throw std::runtime_error(std::string("GStreamer has no ") + element +
                               " (scripts/install-deps.sh installs the plugins)");
    gst_object_unref(f);
  }
  state_->options = std::move(options);
  state_->sink = std::move(sink);
}

Ingest::~Ingest() {
  stop();
}

void Ingest::start() {
  State& s = *state_;
  if (s.control.joinable()) return;
  s.handing = std::thread([&s] { s.run_handing(); });
  s.control = std::thread([&s] { s.run_control(); });
}

void Ingest::stop() {
  State& s = *state_;
  {
    const MutexLock lock(s.mu);
    s.stopping = true;
    s.cv.notify_all();
  }
  if (s.control.joinable()) s.control.join();
  if (s.handing.joinable()) s.handing.join();
}

void Ingest::set_slowed(bool slowed) {
  const MutexLock lock(state_->mu);
  state_->slowed = slowed;
}

bool Ingest::wait_finished(std::chrono::milliseconds timeout) {
  State& s = *state_;
  const MutexLock lock(s.mu);
  const auto until = Clock::now() + timeout;
  while (!s.stats.finished) {
    if (!s.cv.wait_until(s.mu, until)) break;
  }
  return s.stats.finished;
}

IngestStats Ingest::stats() const {
  const MutexLock lock(state_->mu);
  IngestStats out = state_->stats;
  out.queued = state_->queue.size();
  return out;
}

}  // namespace sluice::media

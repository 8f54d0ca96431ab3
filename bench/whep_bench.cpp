// M1: what each WebRTC viewer costs the server, Sluice against GStreamer alone.
//
// The same VP8 clip (1280x720, 30 fps, a keyframe a second, encoded once before the runs) is
// served at 30 fps to 1, 10 and 50 WebRTC viewers by
//   Sluice     `sluice serve` (a child process): the clip published to a topic over gRPC, each
//              viewer a WHEP viewer of it (POST /v1/whep/{topic});
//   GStreamer  this program as a child (`--peer`): appsrc ! tee, and per viewer
//              queue ! rtpvp8pay ! webrtcbin — the pipeline one writes with GStreamer alone;
//              offers and answers over the child's stdin/stdout.
// The viewers are the same in both: GStreamer webrtcbin receivers in this process (ICE on
// 127.0.0.1), counting the RTP bytes they get. For each count: the server's CPU (cores, over
// 4 s) and resident memory with the viewers, minus the same with none, per viewer; and the
// share of viewers that received video. Run: make bench-media.
#include <gst/app/gstappsink.h>
#include <gst/app/gstappsrc.h>
#include <gst/gst.h>
#include <gst/sdp/sdp.h>
#define GST_USE_UNSTABLE_API
#include <gst/webrtc/webrtc.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

#include "build_paths.hpp"
#include "peers/process_stats.hpp"
#include "peers/relay_process.hpp"
#include "relay/webrtc_ice.hpp"
#include "sluice/client/client.hpp"
#include "sluice/relay/protocol.hpp"

namespace {

using namespace std::chrono;
using sluice::bench::process_cpu;
using sluice::bench::process_rss;

constexpr int kWidth = 1280;
constexpr int kHeight = 720;
constexpr int kFps = 30;
constexpr int kClipFrames = 90;

struct Frame {
  std::string bytes;
  bool key = false;
};

// The clip, encoded once: videotestsrc (colour bars sliding sideways: every frame changes, as a
// camera's does) -> VP8 at 2 Mbit/s.
std::vector<Frame> encode_clip() {
  const std::string description =
      "videotestsrc pattern=smpte horizontal-speed=8 num-buffers=" + std::to_string(kClipFrames) +
      " ! video/x-raw,width=" + std::to_string(kWidth) + ",height=" + std::to_string(kHeight) +
      ",framerate=" + std::to_string(kFps) +
      "/1 ! vp8enc deadline=1 cpu-used=8 end-usage=cbr target-bitrate=2000000 "
      "keyframe-max-dist=" +
      std::to_string(kFps) + " ! appsink name=sink sync=false";
  GstElement* p = gst_parse_launch(description.c_str(), nullptr);
  GstElement* sink = gst_bin_get_by_name(GST_BIN(p), "sink");
  gst_element_set_state(p, GST_STATE_PLAYING);
  std::vector<Frame> out;
  while (GstSample* s = gst_app_sink_pull_sample(GST_APP_SINK(sink))) {
    GstBuffer* b = gst_sample_get_buffer(s);
    GstMapInfo m;
    gst_buffer_map(b, &m, GST_MAP_READ);
    out.push_back({std::string(reinterpret_cast<const char*>(m.data), m.size),
                   !GST_BUFFER_FLAG_IS_SET(b, GST_BUFFER_FLAG_DELTA_UNIT)});
    gst_buffer_unmap(b, &m);
    gst_sample_unref(s);
  }
  gst_element_set_state(p, GST_STATE_NULL);
  gst_object_unref(sink);
  gst_object_unref(p);
  return out;
}

// Gathers every ICE candidate on 127.0.0.1 only (as the relay's whep.ice_addresses does).
void loopback_ice(GstElement* webrtc) {
  sluice::relay::restrict_ice(webrtc, {"127.0.0.1"});
}

GstWebRTCSessionDescription* description_of(GstPromise* promise, const char* field) {
  gst_promise_wait(promise);
  GstWebRTCSessionDescription* d = nullptr;
  if (const GstStructure* r = gst_promise_get_reply(promise))
    gst_structure_get(r, field, GST_TYPE_WEBRTC_SESSION_DESCRIPTION, &d, nullptr);
  gst_promise_unref(promise);
  return d;
}

// Waits (up to 5 s) for ICE to gather, then the local description as SDP text.
std::string gathered_local(GstElement* webrtc) {
  for (int i = 0; i < 500; ++i) {
    GstWebRTCICEGatheringState s = GST_WEBRTC_ICE_GATHERING_STATE_NEW;
    g_object_get(webrtc, "ice-gathering-state", &s, nullptr);
    if (s == GST_WEBRTC_ICE_GATHERING_STATE_COMPLETE) break;
    std::this_thread::sleep_for(10ms);
  }
  GstWebRTCSessionDescription* local = nullptr;
  g_object_get(webrtc, "local-description", &local, nullptr);
  if (local == nullptr) return {};
  gchar* text = gst_sdp_message_as_text(local->sdp);
  std::string out = text;
  g_free(text);
  gst_webrtc_session_description_free(local);
  return out;
}

void set_description(GstElement* webrtc, const char* signal, GstWebRTCSDPType type,
                     const std::string& sdp) {
  GstSDPMessage* msg = nullptr;
  gst_sdp_message_new(&msg);
  gst_sdp_message_parse_buffer(reinterpret_cast<const guint8*>(sdp.data()),
                               static_cast<guint>(sdp.size()), msg);
  GstWebRTCSessionDescription* d = gst_webrtc_session_description_new(type, msg);
  GstPromise* p = gst_promise_new();
  g_signal_emit_by_name(webrtc, signal, d, p);
  gst_promise_wait(p);
  gst_promise_unref(p);
  gst_webrtc_session_description_free(d);
}

// A viewer: webrtcbin receiving VP8, its RTP counted and dropped (no decoding: the figure is the
// server's).
class Viewer {
 public:
  Viewer() {
    pipeline_ = gst_pipeline_new(nullptr);
    webrtc_ = gst_element_factory_make("webrtcbin", nullptr);
    g_object_set(webrtc_, "bundle-policy", GST_WEBRTC_BUNDLE_POLICY_MAX_BUNDLE, nullptr);
    gst_bin_add(GST_BIN(pipeline_), webrtc_);
    loopback_ice(webrtc_);
    g_signal_connect(webrtc_, "pad-added", G_CALLBACK(&Viewer::on_pad), this);
    GstCaps* caps = gst_caps_from_string(
        "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000");
    GstWebRTCRTPTransceiver* t = nullptr;
    g_signal_emit_by_name(webrtc_, "add-transceiver", GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_RECVONLY,
                          caps, &t);
    gst_caps_unref(caps);
    if (t != nullptr) gst_object_unref(t);
    gst_element_set_state(pipeline_, GST_STATE_PLAYING);
  }
  Viewer(const Viewer&) = delete;
  Viewer& operator=(const Viewer&) = delete;
  Viewer(Viewer&&) = delete;
  Viewer& operator=(Viewer&&) = delete;
  ~Viewer() {
    gst_element_set_state(pipeline_, GST_STATE_NULL);
    gst_object_unref(pipeline_);
  }

  std::string offer() {
    GstPromise* p = gst_promise_new();
    g_signal_emit_by_name(webrtc_, "create-offer", nullptr, p);
    GstWebRTCSessionDescription* d = description_of(p, "offer");
    if (d == nullptr) return {};
    GstPromise* set = gst_promise_new();
    g_signal_emit_by_name(webrtc_, "set-local-description", d, set);
    gst_promise_wait(set);
    gst_promise_unref(set);
    gst_webrtc_session_description_free(d);
    return gathered_local(webrtc_);
  }
  void answer(const std::string& sdp) {
    set_description(webrtc_, "set-remote-description", GST_WEBRTC_SDP_TYPE_ANSWER, sdp);
  }
  std::uint64_t bytes() const { return bytes_.load(); }

 private:
  static void on_pad(GstElement* /*webrtc*/, GstPad* pad, Viewer* self) {
    if (GST_PAD_DIRECTION(pad) != GST_PAD_SRC) return;
    GstElement* sink = gst_element_factory_make("fakesink", nullptr);
    g_object_set(sink, "sync", FALSE, "async", FALSE, nullptr);
    gst_bin_add(GST_BIN(self->pipeline_), sink);
    gst_element_sync_state_with_parent(sink);
    GstPad* in = gst_element_get_static_pad(sink, "sink");
    gst_pad_add_probe(in, GST_PAD_PROBE_TYPE_BUFFER, &Viewer::count, self, nullptr);
    gst_pad_link(pad, in);
    gst_object_unref(in);
  }
  static GstPadProbeReturn count(GstPad* /*pad*/, GstPadProbeInfo* info, gpointer self) {
    static_cast<Viewer*>(self)->bytes_.fetch_add(
        gst_buffer_get_size(GST_PAD_PROBE_INFO_BUFFER(info)));
    return GST_PAD_PROBE_OK;
  }

  GstElement* pipeline_ = nullptr;
  GstElement* webrtc_ = nullptr;
  std::atomic<std::uint64_t> bytes_{0};
};

// ---- the GStreamer-only server (`--peer`): offers in on stdin, answers out on stdout ----

std::string read_message(FILE* in) {
  std::size_t n = 0;
  if (std::fscanf(in, "%zu\n", &n) != 1) return {};
  std::string s(n, '\0');
  if (n > 0 && std::fread(s.data(), 1, n, in) != n) return {};
  return s;
}
void write_message(FILE* out, const std::string& s) {
  std::fprintf(out, "%zu\n", s.size());
  std::fwrite(s.data(), 1, s.size(), out);
  std::fflush(out);
}

int run_peer() {
  const auto clip = encode_clip();
  GstElement* pipeline = gst_parse_launch(
      "appsrc name=src is-live=true format=time do-timestamp=true caps=video/x-vp8 ! "
      "tee name=t allow-not-linked=true",
      nullptr);
  GstElement* src = gst_bin_get_by_name(GST_BIN(pipeline), "src");
  GstElement* tee = gst_bin_get_by_name(GST_BIN(pipeline), "t");
  gst_element_set_state(pipeline, GST_STATE_PLAYING);
  std::atomic<bool> done{false};
  std::thread feed([&] {
    auto next = steady_clock::now();
    for (std::size_t i = 0; !done.load(); ++i) {
      const Frame& f = clip[i % clip.size()];
      GstBuffer* b = gst_buffer_new_memdup(f.bytes.data(), f.bytes.size());
      if (!f.key) GST_BUFFER_FLAG_SET(b, GST_BUFFER_FLAG_DELTA_UNIT);
      gst_app_src_push_buffer(GST_APP_SRC(src), b);
      next += microseconds(1'000'000 / kFps);
      std::this_thread::sleep_until(next);
    }
  });
  for (;;) {
    const std::string offer = read_message(stdin);
    if (offer.empty()) break;
    GstElement* branch = gst_parse_bin_from_description(
        "queue leaky=downstream max-size-buffers=4 ! rtpvp8pay pt=96 picture-id-mode=15-bit "
        "mtu=1200 ! application/x-rtp,media=video,encoding-name=VP8,clock-rate=90000,payload=96 ! "
        "webrtcbin name=webrtc bundle-policy=max-bundle",
        TRUE, nullptr);
    GstElement* webrtc = gst_bin_get_by_name(GST_BIN(branch), "webrtc");
    loopback_ice(webrtc);
    gst_bin_add(GST_BIN(pipeline), branch);
    gst_element_sync_state_with_parent(branch);
    GstPad* tee_src = gst_element_request_pad_simple(tee, "src_%u");
    GstPad* in = gst_element_get_static_pad(branch, "sink");
    gst_pad_link(tee_src, in);
    gst_object_unref(in);
    gst_object_unref(tee_src);
    set_description(webrtc, "set-remote-description", GST_WEBRTC_SDP_TYPE_OFFER, offer);
    GstPromise* p = gst_promise_new();
    g_signal_emit_by_name(webrtc, "create-answer", nullptr, p);
    GstWebRTCSessionDescription* answer = description_of(p, "answer");
    GstPromise* set = gst_promise_new();
    g_signal_emit_by_name(webrtc, "set-local-description", answer, set);
    gst_promise_wait(set);
    gst_promise_unref(set);
    gst_webrtc_session_description_free(answer);
    write_message(stdout, gathered_local(webrtc));
    gst_object_unref(webrtc);
  }
  done.store(true);
  feed.join();
  gst_element_set_state(pipeline, GST_STATE_NULL);
  gst_object_unref(src);
  gst_object_unref(tee);
  gst_object_unref(pipeline);
  return 0;
}

// ---- the servers as the benchmark sees them ----

struct Server {
  virtual ~Server() = default;
  virtual pid_t pid() const = 0;
  // The answer to `offer` (empty if refused).
  virtual std::string answer(const std::string& offer) = 0;
};

class SluiceServer final : public Server {
 public:
  explicit SluiceServer(const std::vector<Frame>& clip)
      : relay_(sluice::testing::beside_binary(SLUICE_CLI_FROM_BINARY),
               {{"SLUICE_WHEP_ICE_ADDRESSES", "127.0.0.1"}, {"SLUICE_WHEP_MAX_VIEWERS", "1000"}}),
        feed_([this, &clip] {
          sluice::client::PublisherOptions o;
          o.target = relay_.grpc();
          o.topic = "cam";
          sluice::client::Publisher pub(o);
          auto next = steady_clock::now();
          for (std::size_t i = 0; !done_.load(); ++i) {
            const Frame& f = clip[i % clip.size()];
            (void)pub.publish(sluice::Buffer::copy(f.bytes), 0, f.key ? 0 : sluice::kItemDelta);
            next += microseconds(1'000'000 / kFps);
            std::this_thread::sleep_until(next);
          }
        }) {}
  SluiceServer(const SluiceServer&) = delete;
  SluiceServer& operator=(const SluiceServer&) = delete;
  SluiceServer(SluiceServer&&) = delete;
  SluiceServer& operator=(SluiceServer&&) = delete;
  ~SluiceServer() override {
    done_.store(true);
    feed_.join();
  }
  pid_t pid() const override { return relay_.pid(); }
  std::string answer(const std::string& offer) override {
    namespace http = boost::beast::http;
    boost::asio::io_context io;
    boost::asio::ip::tcp::socket socket(io);
    socket.connect({boost::asio::ip::make_address("127.0.0.1"), relay_.http_port()});
    http::request<http::string_body> req{http::verb::post, "/v1/whep/cam", 11};
    req.set(http::field::host, "127.0.0.1");
    req.set(http::field::content_type, "application/sdp");
    req.body() = offer;
    req.prepare_payload();
    http::write(socket, req);
    boost::beast::flat_buffer buffer;
    http::response<http::string_body> res;
    http::read(socket, buffer, res);
    if (res.result_int() != 201) {
      std::cerr << "whep: " << res.result_int() << " " << res.body();
      return {};
    }
    return res.body();
  }

 private:
  sluice::bench::RelayProcess relay_;
  std::atomic<bool> done_{false};
  std::thread feed_;
};

class GstServer final : public Server {
 public:
  explicit GstServer(const char* self) {
    int to[2];
    int from[2];
    if (pipe(to) != 0 || pipe(from) != 0) return;
    *child_.out() = fork();
    if (child_.pid() == 0) {
      dup2(to[0], STDIN_FILENO);
      dup2(from[1], STDOUT_FILENO);
      close(to[1]);
      close(from[0]);
      execl(self, self, "--peer", static_cast<char*>(nullptr));
      _exit(127);
    }
    close(to[0]);
    close(from[1]);
    out_ = fdopen(to[1], "w");
    in_ = fdopen(from[0], "r");
  }
  GstServer(const GstServer&) = delete;
  GstServer& operator=(const GstServer&) = delete;
  GstServer(GstServer&&) = delete;
  GstServer& operator=(GstServer&&) = delete;
  ~GstServer() override {
    if (out_ != nullptr) std::fclose(out_);  // (the peer ends at the end of its input)
    if (in_ != nullptr) std::fclose(in_);
  }
  pid_t pid() const override { return child_.pid(); }
  std::string answer(const std::string& offer) override {
    write_message(out_, offer);
    return read_message(in_);
  }

 private:
  sluice::bench::ChildProcess child_;
  FILE* out_ = nullptr;
  FILE* in_ = nullptr;
};

struct Measure {
  double cores = 0;
  double rss = 0;
};

Measure measure(pid_t pid) {
  const double rss = process_rss(pid);
  const double c0 = process_cpu(pid);
  const auto t0 = steady_clock::now();
  std::this_thread::sleep_for(4s);
  const double seconds = duration<double>(steady_clock::now() - t0).count();
  return {(process_cpu(pid) - c0) / seconds, std::max(rss, process_rss(pid))};
}

struct Row {
  double cores_per_viewer = 0;
  double rss_per_viewer = 0;
  double receiving = 0;  // share of viewers that got video
  double cores = 0;
};

Row run(Server& server, int n) {
  std::this_thread::sleep_for(2s);  // (the clip flowing, nobody watching)
  const Measure idle = measure(server.pid());
  std::vector<std::unique_ptr<Viewer>> viewers;
  for (int i = 0; i < n; ++i) {
    auto v = std::make_unique<Viewer>();
    const std::string answer = server.answer(v->offer());
    if (!answer.empty()) v->answer(answer);
    viewers.push_back(std::move(v));
  }
  std::this_thread::sleep_for(3s);  // (ICE, DTLS, then the next keyframe)
  std::vector<std::uint64_t> before;
  for (const auto& v : viewers) before.push_back(v->bytes());
  const Measure busy = measure(server.pid());
  int receiving = 0;
  for (std::size_t i = 0; i < viewers.size(); ++i) receiving += viewers[i]->bytes() > before[i];
  return {(busy.cores - idle.cores) / n, (busy.rss - idle.rss) / n,
          static_cast<double>(receiving) / n, busy.cores};
}

}  // namespace

int main(int argc, char** argv) {
  gst_init(&argc, &argv);
  if (argc > 1 && std::string(argv[1]) == "--peer") return run_peer();
  const auto clip = encode_clip();
  std::size_t bytes = 0;
  for (const auto& f : clip) bytes += f.bytes.size();
  std::printf(
      "M1: WebRTC viewers of a %dx%d %d fps VP8 stream (%.2f Mbit/s); per viewer added: "
      "server CPU (cores) and RSS; viewers receiving\n",
      kWidth, kHeight, kFps, static_cast<double>(bytes) * 8 * kFps / kClipFrames / 1e6);
  std::printf("%-8s %-10s %14s %14s %12s %10s\n", "viewers", "server", "cores/viewer", "RSS/viewer",
              "cores total", "receiving");
  for (const int n : {1, 10, 50}) {
    Row s;
    Row g;
    {
      SluiceServer server(clip);
      s = run(server, n);
    }
    {
      GstServer server(argv[0]);
      g = run(server, n);
    }
    std::printf("%-8d %-10s %14.4f %11.1f MiB %12.3f %9.0f%%\n", n, "GStreamer", g.cores_per_viewer,
                g.rss_per_viewer / (1 << 20), g.cores, g.receiving * 100);
    std::printf("%-8d %-10s %14.4f %11.1f MiB %12.3f %9.0f%%\n", n, "Sluice", s.cores_per_viewer,
                s.rss_per_viewer / (1 << 20), s.cores, s.receiving * 100);
    std::printf("%-8d %-10s %13.2fx %13.2fx\n", n, "ratio", s.cores_per_viewer / g.cores_per_viewer,
                s.rss_per_viewer / g.rss_per_viewer);
    std::fflush(stdout);
  }
  return 0;
}

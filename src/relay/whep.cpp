// WHEP: a topic's video to a browser over WebRTC (see whep.hpp for the contract). GStreamer's
// webrtcbin does ICE, DTLS and SRTP; this file does the session: the offer's checks, waiting
// for a keyframe, the answer, feeding frames without copying, and every way a viewer ends.
#include "whep.hpp"

#include <gst/app/gstappsrc.h>
#include <gst/gst.h>
#include <gst/sdp/sdp.h>
#define GST_USE_UNSTABLE_API
#include <gst/webrtc/webrtc.h>

#include <algorithm>
#include <boost/asio/steady_timer.hpp>
#include <deque>
#include <future>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "http_router.hpp"
#include "sluice/detail/cond_var.hpp"
#include "subscriber_pump.hpp"
#include "topic.hpp"
#include "video_codec.hpp"
#include "webrtc_ice.hpp"

namespace sluice::relay {

namespace {

constexpr std::string_view kPrefix = "/v1/whep/";

// GStreamer, initialised once for the process, and the elements a viewer needs; the reason
// WebRTC cannot be served here if one is missing.
const std::optional<std::string>& gst_missing() {
  static const std::optional<std::string> missing = []() -> std::optional<std::string> {
    GError* err = nullptr;
    if (gst_init_check(nullptr, nullptr, &err) == FALSE) {
      std::string why = err != nullptr ? err->message : "gst_init failed";
      if (err != nullptr) g_error_free(err);
      return "GStreamer cannot start: " + why;
    }
    for (const char* name : {"appsrc", "rtpvp8pay", "rtph264pay", "webrtcbin", "nicesrc",
                             "dtlssrtpenc", "capsfilter"}) {
      GstElementFactory* f = gst_element_factory_find(name);
      if (f == nullptr) {
        return std::string("GStreamer element '") + name +
               "' is missing: install gstreamer1.0-plugins-good, gstreamer1.0-plugins-bad and "
               "gstreamer1.0-nice (scripts/install-deps.sh)";
      }
      gst_object_unref(f);
    }
    return std::nullopt;
  }();
  return missing;
}

// Whether `name` is a topic of the relay now (without making it).
bool topic_exists(const RelayCore& core, const std::string& name) {
  const auto all = core.topics.all();
  return std::any_of(all.begin(), all.end(), [&](const auto& t) { return t->name == name; });
}

// Tears pipelines down off the event loops: setting webrtcbin to NULL joins its threads (ICE,
// DTLS), which takes milliseconds a loop's other subscribers should not wait for.
class Reaper {
 public:
  Reaper() : thread_([this] { run(); }) {}
  Reaper(const Reaper&) = delete;
  Reaper& operator=(const Reaper&) = delete;
  Reaper(Reaper&&) = delete;
  Reaper& operator=(Reaper&&) = delete;
  ~Reaper() {
    {
      const MutexLock lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  // Takes the reference.
  void retire(GstElement* pipeline) {
    {
      const MutexLock lock(mu_);
      queue_.push_back(pipeline);
      ++pending_;
    }
    cv_.notify_all();
  }
  // Returns once every pipeline retired so far is gone.
  void drain() {
    const MutexLock lock(mu_);
    while (pending_ != 0) cv_.wait(mu_);
  }

 private:
  void run() {
    while (GstElement* p = next()) {
      gst_element_set_state(p, GST_STATE_NULL);
      gst_object_unref(p);
      const MutexLock lock(mu_);
      --pending_;
      cv_.notify_all();
    }
  }
  // The next pipeline to tear down (waiting for one); null once done and none is left.
  GstElement* next() {
    const MutexLock lock(mu_);
    while (!done_ && queue_.empty()) cv_.wait(mu_);
    if (queue_.empty()) return nullptr;
    GstElement* p = queue_.front();
    queue_.pop_front();
    return p;
  }

  Mutex mu_;
  CondVar cv_;
  std::deque<GstElement*> queue_ SLUICE_GUARDED_BY(mu_);
  std::size_t pending_ SLUICE_GUARDED_BY(mu_) = 0;
  bool done_ SLUICE_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

std::string_view state_name(GstWebRTCPeerConnectionState s) {
  switch (s) {
    case GST_WEBRTC_PEER_CONNECTION_STATE_NEW:
      return "new";
    case GST_WEBRTC_PEER_CONNECTION_STATE_CONNECTING:
      return "connecting";
    case GST_WEBRTC_PEER_CONNECTION_STATE_CONNECTED:
      return "connected";
    case GST_WEBRTC_PEER_CONNECTION_STATE_DISCONNECTED:
      return "disconnected";
    case GST_WEBRTC_PEER_CONNECTION_STATE_FAILED:
      return "failed";
    case GST_WEBRTC_PEER_CONNECTION_STATE_CLOSED:
      return "closed";
  }
  return "?";
}

HttpResponse text(unsigned status, std::string body,
                  std::vector<std::pair<std::string, std::string>> headers = {}) {
  return {status, "text/plain; charset=utf-8", std::move(body) + "\n", std::move(headers)};
}

}  // namespace

class WhepViewer;

struct WhepService::Impl {
  explicit Impl(RelayCore& c)
      : core(c),
        viewers_gauge(c.metrics.gauge("sluice_whep_viewers",
                                      "WebRTC viewers (WHEP) now, answered or being answered")) {}

  // Ends with `reason` (a label of sluice_whep_viewers_ended_total).
  void ended(std::string_view reason) {
    core.metrics
        .counter("sluice_whep_viewers_ended_total",
                 "WebRTC viewers (WHEP) that ended, by reason (docs/media.md)",
                 {{"reason", std::string(reason)}})
        .inc();
  }

  RelayCore& core;
  metrics::Gauge& viewers_gauge;
  Reaper reaper;
  Mutex mu;
  // The viewers, owned here from their POST until they end (end() removes them).
  std::map<std::string, std::shared_ptr<WhepViewer>> viewers SLUICE_GUARDED_BY(mu);
  std::size_t reserved SLUICE_GUARDED_BY(mu) = 0;  // viewers counted against max_viewers
  bool stopping SLUICE_GUARDED_BY(mu) = false;
};

// What GStreamer's threads hold of a viewer: a weak reference and its loop. They only post.
struct ViewerLink {
  std::weak_ptr<WhepViewer> viewer;
  IoThread* loop = nullptr;
  GstElement* webrtc = nullptr;  // a reference, for promises' callbacks (they emit on it)

  ViewerLink(std::weak_ptr<WhepViewer> v, IoThread* l, GstElement* w)
      : viewer(std::move(v)), loop(l), webrtc(w != nullptr ? GST_ELEMENT(gst_object_ref(w)) : w) {}
  ViewerLink(const ViewerLink& o) : ViewerLink(o.viewer, o.loop, o.webrtc) {}
  ViewerLink& operator=(const ViewerLink&) = delete;
  ViewerLink(ViewerLink&&) = delete;
  ViewerLink& operator=(ViewerLink&&) = delete;
  ~ViewerLink() {
    if (webrtc != nullptr) gst_object_unref(webrtc);
  }
  static void destroy(gpointer p, GClosure* /*closure*/ = nullptr) {
    delete static_cast<ViewerLink*>(p);
  }
  static void destroy_notify(gpointer p) { delete static_cast<ViewerLink*>(p); }

  template <class F>
  void post(F f) const {
    if (auto v = viewer.lock()) loop->post([v, f = std::move(f)]() mutable { f(*v); });
  }
};

class WhepViewer : public std::enable_shared_from_this<WhepViewer> {
 public:
  WhepViewer(std::shared_ptr<WhepService::Impl> service, IoThread& loop, SessionSlot slot,
             std::unique_ptr<SubscriberPump> pump, std::string id, SdpMessage offer,
             HttpServer::Reply reply, std::string location,
             std::vector<std::pair<std::string, std::string>> cors)
      : service_(std::move(service)),
        core_(service_->core),
        loop_(loop),
        slot_(std::move(slot)),
        pump_(std::move(pump)),
        id_(std::move(id)),
        offer_(std::move(offer)),
        reply_(std::move(reply)),
        location_(std::move(location)),
        cors_(std::move(cors)),
        answer_timer_(loop.context()),
        connect_timer_(loop.context()),
        send_timer_(loop.context()),
        alive_timer_(loop.context()) {
    loop_.subscribers.fetch_add(1, std::memory_order_relaxed);
  }
  WhepViewer(const WhepViewer&) = delete;
  WhepViewer& operator=(const WhepViewer&) = delete;
  WhepViewer(WhepViewer&&) = delete;
  WhepViewer& operator=(WhepViewer&&) = delete;
  ~WhepViewer() {
    loop_.subscribers.fetch_sub(1, std::memory_order_relaxed);
    if (reply_) {
      reply_(http_refusal(
          core_, {RefusalKind::stopping, "the relay stopped before the viewer was answered"}));
    }
    if (pipeline_ != nullptr) service_->reaper.retire(pipeline_);
  }

  const std::string& id() const { return id_; }
  IoThread& loop() const { return loop_; }
  const std::string& topic() const { return pump_->topic().name; }

  // On the loop: wait for a keyframe, then answer.
  void start() {
    // The pump judges the sender by the frames its pipeline takes from the queue (a viewer's
    // own network does not hold it back: that is the RTCP watch's, watch_alive()).
    pump_->watch({[w = weak_from_this()](std::function<void()> tick) {
                    auto self = w.lock();
                    if (!self || self->state_ == State::ended) return;
                    self->send_timer_.expires_after(self->core_.config.send_timeout);
                    self->send_timer_.async_wait(
                        [w, tick = std::move(tick)](boost::system::error_code ec) {
                          if (auto s = w.lock(); s && !ec && s->state_ == State::playing) tick();
                        });
                  },
                  [this] {
                    guint64 level = 0;
                    if (appsrc_ != nullptr)
                      g_object_get(appsrc_, "current-level-buffers", &level, nullptr);
                    return SubscriberPump::Progress{pushed_ - level, level > 0};
                  },
                  [this](const Refusal& r) {
                    core_.counted(r);
                    end("slow_consumer");
                  }});
    answer_timer_.expires_after(core_.config.whep.answer_timeout);
    answer_timer_.async_wait([w = weak_from_this()](boost::system::error_code ec) {
      auto self = w.lock();
      if (!self || ec || self->state_ >= State::answered) return;
      const std::string within =
          std::to_string(self->core_.config.whep.answer_timeout.count()) + " ms";
      self->refuse({RefusalKind::answer_timeout,
                    self->state_ == State::keyframe
                        ? "no keyframe on topic '" + self->topic() + "' within " + within +
                              " (whep.answer_timeout_ms): is its video published?"
                        : "WebRTC could not answer within " + within + " (whep.answer_timeout_ms)",
                    "whep.answer_timeout_ms"},
                   "answer_timeout");
    });
    first_keyframe();
  }

  // Ends the viewer (on the loop), for `reason`.
  void end(std::string_view reason) {
    if (state_ == State::ended) return;
    HttpServer::Reply unanswered = std::move(reply_);  // (answered last, once it is all ended)
    reply_ = nullptr;
    state_ = State::ended;
    answer_timer_.cancel();
    connect_timer_.cancel();
    send_timer_.cancel();
    alive_timer_.cancel();
    pump_->leave();
    if (pipeline_ != nullptr) {
      service_->reaper.retire(pipeline_);
      pipeline_ = nullptr;
      appsrc_ = nullptr;
      webrtc_ = nullptr;
    }
    held_.reset();
    service_->ended(reason);
    service_->viewers_gauge.add(-1);
    log::event(log::Level::info, "whep_viewer_ended",
               {{"topic", topic()}, {"viewer", id_}, {"reason", std::string(reason)}});
    std::shared_ptr<WhepViewer> self;  // (the last reference may be the service's: kept to return)
    {
      const MutexLock lock(service_->mu);
      if (const auto it = service_->viewers.find(id_); it != service_->viewers.end()) {
        self = std::move(it->second);
        service_->viewers.erase(it);
      }
      --service_->reserved;
    }
    if (unanswered) {
      unanswered(
          http_refusal(core_, {reason == "stopping" ? RefusalKind::stopping : RefusalKind::internal,
                               "the viewer ended before it was answered: " + std::string(reason)}));
    }
  }

 private:
  enum class State : std::uint8_t { keyframe, negotiating, answered, playing, ended };

  // Refuses the viewer before its answer (counted like every refusal) and ends it for
  // `reason` (a label of sluice_whep_viewers_ended_total).
  void refuse(const Refusal& r, std::string_view reason) {
    HttpServer::Reply reply = std::move(reply_);
    reply_ = nullptr;
    HttpResponse answer;
    if (reply) {
      answer = http_refusal(core_, r);  // (counted)
      for (const auto& h : cors_) answer.headers.push_back(h);
    }
    // Ended before the answer leaves: a client that reads the relay's figures once it has its
    // answer finds the viewer gone. (end() may release this object: locals only after it.)
    end(reason);
    if (reply) reply(std::move(answer));
  }

  // The pump starts a viewer at a keyframe: its first item is one (or the topic's items carry
  // no keyframe flags, and the codec check below decides).
  void first_keyframe() {
    while (state_ == State::keyframe) {
      switch (pump_->next(1, std::numeric_limits<std::size_t>::max())) {
        case SubscriberPump::Next::items: {
          RelayMessage m = std::move(pump_->batch().front());
          if (m.payload.empty()) continue;
          codec_ = sniff_keyframe(m.payload.bytes());
          if (codec_ != VideoCodec::vp8 && codec_ != VideoCodec::h264) {
            refuse({RefusalKind::unsupported_media,
                    "topic '" + topic() + "' carries " +
                        (codec_ == VideoCodec::unknown
                             ? std::string("no VP8 or H.264 video (its keyframe is neither)")
                             : std::string(to_string(codec_)) +
                                   " video: WebRTC viewers get VP8 or H.264 (sluice ingest "
                                   "--output encoded of a VP8 or H.264 source)")},
                   "unsupported_codec");
            return;
          }
          held_ = std::move(m);
          negotiate();
          return;
        }
        case SubscriberPump::Next::gap:
          continue;
        case SubscriberPump::Next::idle:
          arm_pump([](WhepViewer& v) { v.first_keyframe(); });
          return;
        case SubscriberPump::Next::end:
          refuse({RefusalKind::topic_gone, "topic '" + topic() + "' closed"}, "topic_closed");
          return;
      }
    }
  }

  template <class F>
  void arm_pump(F f) {
    pump_->arm([link = ViewerLink(weak_from_this(), &loop_, nullptr), f]() { link.post(f); });
  }

  // Builds the viewer's pipeline for the offer and starts webrtcbin on it.
  void negotiate() {
    const int profile = codec_ == VideoCodec::h264 ? h264_profile_idc(held_->payload.bytes()) : 0;
    const OfferChoice choice = choose_payload(*offer_, codec_, profile);
    if (choice.payload_type < 0) {
      refuse({RefusalKind::offer_refused, choice.error}, "offer_refused");
      return;
    }
    state_ = State::negotiating;
    const std::string pt = std::to_string(choice.payload_type);
    const std::string queue = std::to_string(core_.config.whep.queue_frames);
    // (Only numbers go into the description: nothing a client sent is parsed as pipeline text.)
    const std::string description =
        "appsrc name=src is-live=true format=time do-timestamp=true block=false max-buffers=" +
        queue +
        (codec_ == VideoCodec::vp8
             ? " caps=video/x-vp8 ! rtpvp8pay picture-id-mode=15-bit mtu=1200 pt=" + pt +
                   " ! application/x-rtp,media=video,encoding-name=VP8,clock-rate=90000,payload=" +
                   pt
             : " caps=video/x-h264,stream-format=byte-stream,alignment=au ! rtph264pay "
               "config-interval=-1 aggregate-mode=zero-latency mtu=1200 pt=" +
                   pt +
                   " ! application/x-rtp,media=video,encoding-name=H264,clock-rate=90000,"
                   "payload=" +
                   pt) +
        " ! webrtcbin name=webrtc bundle-policy=max-bundle";
    GError* err = nullptr;
    GstElement* pipeline = gst_parse_launch(description.c_str(), &err);
    if (pipeline == nullptr || err != nullptr) {
      const std::string why = err != nullptr ? err->message : "gst_parse_launch failed";
      if (err != nullptr) g_error_free(err);
      if (pipeline != nullptr) gst_object_unref(pipeline);
      refuse({RefusalKind::internal, "cannot build the WebRTC pipeline: " + why}, "error");
      return;
    }
    pipeline_ = pipeline;
    appsrc_ = gst_bin_get_by_name(GST_BIN(pipeline_), "src");
    webrtc_ = gst_bin_get_by_name(GST_BIN(pipeline_), "webrtc");
    gst_object_unref(appsrc_);  // (the pipeline holds them while it lives)
    gst_object_unref(webrtc_);
    // (What the elements' own handlers hold must not reference webrtcbin: a cycle would keep
    // it, its sockets and threads alive. Only the promises, which go once answered, do.)
    const ViewerLink link(weak_from_this(), &loop_, nullptr);
    const ViewerLink promised(weak_from_this(), &loop_, webrtc_);
    configure_ice();
    // The sender only sends.
    if (GstPad* pad = gst_element_get_static_pad(webrtc_, "sink_0")) {
      GstWebRTCRTPTransceiver* trans = nullptr;
      g_object_get(pad, "transceiver", &trans, nullptr);
      if (trans != nullptr) {
        g_object_set(trans, "direction", GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_SENDONLY, nullptr);
        if (codec_ == VideoCodec::h264) {
          // The answer keeps the offer's profile for this payload type (the browser decodes
          // what the stream's SPS says whatever the profile named).
          GstCaps* prefs =
              gst_caps_new_simple("application/x-rtp", "media", G_TYPE_STRING, "video",
                                  "encoding-name", G_TYPE_STRING, "H264", "clock-rate", G_TYPE_INT,
                                  90000, "payload", G_TYPE_INT, choice.payload_type, nullptr);
          g_object_set(trans, "codec-preferences", prefs, nullptr);
          gst_caps_unref(prefs);
        }
        gst_object_unref(trans);
      }
      gst_object_unref(pad);
    }
    g_signal_connect_data(webrtc_, "notify::connection-state", G_CALLBACK(&on_connection_state),
                          new ViewerLink(link), &ViewerLink::destroy, GConnectFlags{});
    g_signal_connect_data(webrtc_, "notify::ice-gathering-state", G_CALLBACK(&on_gathering),
                          new ViewerLink(link), &ViewerLink::destroy, GConnectFlags{});
    g_signal_connect_data(appsrc_, "need-data", G_CALLBACK(&on_need_data), new ViewerLink(link),
                          &ViewerLink::destroy, GConnectFlags{});
    GstBus* bus = gst_element_get_bus(pipeline_);
    gst_bus_set_sync_handler(bus, &on_bus, new ViewerLink(link), &ViewerLink::destroy_notify);
    gst_object_unref(bus);
    // (webrtcbin's rtpbin: "on-ssrc-active" for every RTCP report a source sends)
    if (GstElement* rtpbin = gst_bin_get_by_name(GST_BIN(webrtc_), "rtpbin")) {
      g_signal_connect_data(rtpbin, "on-ssrc-active", G_CALLBACK(&on_rtcp), new ViewerLink(link),
                            &ViewerLink::destroy, GConnectFlags{});
      gst_object_unref(rtpbin);
    }
    if (gst_element_set_state(pipeline_, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE) {
      refuse({RefusalKind::internal, "the WebRTC pipeline did not start"}, "error");
      return;
    }
    GstWebRTCSessionDescription* remote =
        gst_webrtc_session_description_new(GST_WEBRTC_SDP_TYPE_OFFER, offer_.release());
    GstPromise* promise = gst_promise_new_with_change_func(&on_remote_set, new ViewerLink(promised),
                                                           &ViewerLink::destroy_notify);
    g_signal_emit_by_name(webrtc_, "set-remote-description", remote, promise);
    gst_promise_unref(promise);  // (webrtcbin holds it until it replies)
    gst_webrtc_session_description_free(remote);
  }

  // ICE offers the configured addresses only (else libnice's: every non-loopback interface),
  // and the configured STUN/TURN servers.
  void configure_ice() {
    const auto& whep = core_.config.whep;
    if (!whep.stun_server.empty())
      g_object_set(webrtc_, "stun-server", whep.stun_server.c_str(), nullptr);
    for (const auto& turn : whep.turn_servers) {
      gboolean ok = FALSE;
      g_signal_emit_by_name(webrtc_, "add-turn-server", turn.c_str(), &ok);
    }
    restrict_ice(webrtc_, whep.ice_addresses);
  }

  // GStreamer's threads -> the loop.

  static void on_remote_set(GstPromise* promise, gpointer data) {
    auto* link = static_cast<ViewerLink*>(data);
    const std::string error = promise_error(promise);
    if (!error.empty()) {
      link->post([error](WhepViewer& v) {
        v.refuse({RefusalKind::offer_refused, "the offer was refused by WebRTC: " + error},
                 "offer_refused");
      });
      return;
    }
    GstPromise* answer = gst_promise_new_with_change_func(&on_answer, new ViewerLink(*link),
                                                          &ViewerLink::destroy_notify);
    g_signal_emit_by_name(link->webrtc, "create-answer", nullptr, answer);
    gst_promise_unref(answer);
  }

  static void on_answer(GstPromise* promise, gpointer data) {
    auto* link = static_cast<ViewerLink*>(data);
    GstWebRTCSessionDescription* answer = nullptr;
    if (gst_promise_wait(promise) == GST_PROMISE_RESULT_REPLIED) {
      if (const GstStructure* reply = gst_promise_get_reply(promise)) {
        gst_structure_get(reply, "answer", GST_TYPE_WEBRTC_SESSION_DESCRIPTION, &answer, nullptr);
      }
    }
    if (answer == nullptr) {
      const std::string error = promise_error(promise);
      link->post([error](WhepViewer& v) {
        v.refuse({RefusalKind::offer_refused, "WebRTC made no answer to the offer" +
                                                  (error.empty() ? std::string() : ": " + error)},
                 "offer_refused");
      });
      return;
    }
    g_signal_emit_by_name(link->webrtc, "set-local-description", answer, nullptr);
    gst_webrtc_session_description_free(answer);
    link->post([](WhepViewer& v) {
      v.described_ = true;
      v.maybe_answer();
    });
  }

  static std::string promise_error(GstPromise* promise) {
    if (gst_promise_wait(promise) != GST_PROMISE_RESULT_REPLIED) return "interrupted";
    const GstStructure* reply = gst_promise_get_reply(promise);
    if (reply == nullptr || !gst_structure_has_field(reply, "error")) return {};
    GError* err = nullptr;
    gst_structure_get(reply, "error", G_TYPE_ERROR, &err, nullptr);
    std::string why = err != nullptr ? err->message : "error";
    if (err != nullptr) g_error_free(err);
    return why;
  }

  static void on_gathering(GstElement* /*webrtc*/, GParamSpec* /*pspec*/, gpointer data) {
    static_cast<ViewerLink*>(data)->post([](WhepViewer& v) { v.maybe_answer(); });
  }

  static void on_connection_state(GstElement* webrtc, GParamSpec* /*pspec*/, gpointer data) {
    GstWebRTCPeerConnectionState s = GST_WEBRTC_PEER_CONNECTION_STATE_NEW;
    g_object_get(webrtc, "connection-state", &s, nullptr);
    static_cast<ViewerLink*>(data)->post([s](WhepViewer& v) { v.connection(s); });
  }

  static void on_need_data(GstAppSrc* /*src*/, guint /*length*/, gpointer data) {
    static_cast<ViewerLink*>(data)->post([](WhepViewer& v) { v.drained(); });
  }

  static GstBusSyncReply on_bus(GstBus* /*bus*/, GstMessage* message, gpointer data) {
    if (GST_MESSAGE_TYPE(message) == GST_MESSAGE_ERROR) {
      GError* err = nullptr;
      gst_message_parse_error(message, &err, nullptr);
      const std::string why = err != nullptr ? err->message : "error";
      if (err != nullptr) g_error_free(err);
      static_cast<ViewerLink*>(data)->post([why](WhepViewer& v) {
        log::event(log::Level::warn, "whep_viewer_error",
                   {{"topic", v.topic()}, {"viewer", v.id()}, {"error", why}});
        v.end("error");
      });
    }
    // Nobody pops this bus: every message is seen here and dropped, which is this handler's
    // to do (GstBusSyncHandler: a handler that drops a message unrefs it).
    gst_message_unref(message);
    return GST_BUS_DROP;
  }

  // The loop's side.

  // Answers once the local description is set and ICE has gathered its candidates.
  void maybe_answer() {
    if (state_ != State::negotiating || !described_ || webrtc_ == nullptr) return;
    GstWebRTCICEGatheringState gathering = GST_WEBRTC_ICE_GATHERING_STATE_NEW;
    g_object_get(webrtc_, "ice-gathering-state", &gathering, nullptr);
    if (gathering != GST_WEBRTC_ICE_GATHERING_STATE_COMPLETE) return;
    GstWebRTCSessionDescription* local = nullptr;
    g_object_get(webrtc_, "local-description", &local, nullptr);
    if (local == nullptr) return;
    gchar* sdp = gst_sdp_message_as_text(local->sdp);
    std::string body = sdp != nullptr ? sdp : "";
    g_free(sdp);
    gst_webrtc_session_description_free(local);
    state_ = State::answered;
    answer_timer_.cancel();
    HttpResponse answer{201,
                        "application/sdp",
                        std::move(body),
                        {{"Location", location_}, {"Cache-Control", "no-store"}}};
    for (const auto& h : cors_) answer.headers.push_back(h);
    if (reply_) {
      reply_(std::move(answer));
      reply_ = nullptr;
    }
    arm_connect_timer("connect_timeout");
  }

  void arm_connect_timer(std::string_view reason) {
    connect_timer_.expires_after(core_.config.whep.connect_timeout);
    connect_timer_.async_wait(
        [w = weak_from_this(), reason = std::string(reason)](boost::system::error_code ec) {
          if (auto self = w.lock(); self && !ec) self->end(reason);
        });
  }

  void connection(GstWebRTCPeerConnectionState s) {
    if (state_ == State::ended || state_ < State::answered) {
      if (s == GST_WEBRTC_PEER_CONNECTION_STATE_FAILED) end("connection_failed");
      return;
    }
    log::event(log::Level::debug, "whep_viewer_connection",
               {{"topic", topic()}, {"viewer", id_}, {"state", std::string(state_name(s))}});
    switch (s) {
      case GST_WEBRTC_PEER_CONNECTION_STATE_CONNECTED:
        connect_timer_.cancel();
        if (state_ == State::answered) {
          state_ = State::playing;
          heard_ = std::chrono::steady_clock::now();
          watch_alive();
          feed();
        }
        return;
      case GST_WEBRTC_PEER_CONNECTION_STATE_DISCONNECTED:
        arm_connect_timer("connection_lost");  // (ICE may come back within it)
        return;
      case GST_WEBRTC_PEER_CONNECTION_STATE_FAILED:
        end("connection_failed");
        return;
      case GST_WEBRTC_PEER_CONNECTION_STATE_CLOSED:
        end("connection_closed");
        return;
      default:
        return;
    }
  }

  // The appsrc asks for data: what was full has drained.
  void drained() {
    if (state_ != State::playing) return;
    full_ = false;
    feed();
  }

  // The viewer's RTCP (its receiver reports, sent every second or so while its page plays)
  // says it is there: webrtcbin's ICE state stays connected after a page closes without DELETE
  // or its browser dies, and UDP sends to it never fail. No RTCP for whep.connect_timeout_ms
  // ends the viewer (connection_lost). Looked at every quarter of that (at most every second).
  void heard() { heard_ = std::chrono::steady_clock::now(); }
  void watch_alive() {
    const auto limit = core_.config.whep.connect_timeout;
    alive_timer_.expires_after(
        std::min<std::chrono::steady_clock::duration>(limit / 4, std::chrono::seconds(1)));
    alive_timer_.async_wait([w = weak_from_this(), limit](boost::system::error_code ec) {
      auto self = w.lock();
      if (!self || ec || self->state_ != State::playing) return;
      if (std::chrono::steady_clock::now() - self->heard_ >= limit) {
        log::event(log::Level::info, "whep_viewer_silent",
                   {{"topic", self->topic()},
                    {"viewer", self->id()},
                    {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::steady_clock::now() - self->heard_)
                               .count()}});
        self->end("connection_lost");
        return;
      }
      self->watch_alive();
    });
  }
  static void on_rtcp(GstElement* /*rtpbin*/, guint /*session*/, guint /*ssrc*/, gpointer data) {
    static_cast<ViewerLink*>(data)->post([](WhepViewer& v) { v.heard(); });
  }

  // Moves the topic's next frames into the sender's queue while it has room.
  void feed() {
    while (state_ == State::playing && !full_) {
      if (held_) {
        push(std::move(*held_));
        held_.reset();
        continue;
      }
      switch (pump_->next(1, std::numeric_limits<std::size_t>::max())) {
        case SubscriberPump::Next::items:
          push(std::move(pump_->batch().front()));
          continue;
        case SubscriberPump::Next::gap:
          continue;  // (counted by the pump; the next item is a keyframe)
        case SubscriberPump::Next::idle:
          if (!armed_) {
            armed_ = true;
            arm_pump([](WhepViewer& v) {
              v.armed_ = false;
              v.feed();
            });
          }
          return;
        case SubscriberPump::Next::end:
          end(pump_->refusal() ? std::string(to_string(pump_->refusal()->kind))
                               : std::string("topic_closed"));
          return;
      }
    }
  }

  // Hands `m`'s payload to the sender: a GstBuffer over the topic's Buffer, which it keeps
  // referenced until GStreamer lets it go.
  void push(RelayMessage m) {
    if (m.payload.empty()) return;
    auto* ref = new Buffer(std::move(m.payload));
    // (GStreamer's API takes a mutable pointer; the memory is flagged read-only, and nothing
    // downstream writes to it: the payloader and SRTP read it into their own buffers)
    auto* bytes =
        const_cast<std::byte*>(ref->data());  // NOLINT(cppcoreguidelines-pro-type-const-cast)
    GstBuffer* b =
        gst_buffer_new_wrapped_full(GST_MEMORY_FLAG_READONLY, bytes, ref->size(), 0, ref->size(),
                                    ref, [](gpointer p) { delete static_cast<Buffer*>(p); });
    if ((m.flags & kItemDelta) != 0) GST_BUFFER_FLAG_SET(b, GST_BUFFER_FLAG_DELTA_UNIT);
    gst_app_src_push_buffer(GST_APP_SRC(appsrc_), b);  // (takes b)
    ++pushed_;
    pump_->sending();
    guint64 level = 0;
    g_object_get(appsrc_, "current-level-buffers", &level, nullptr);
    if (level >= core_.config.whep.queue_frames) full_ = true;  // (need-data: room again)
  }

  std::shared_ptr<WhepService::Impl> service_;
  RelayCore& core_;
  IoThread& loop_;
  SessionSlot slot_;
  std::unique_ptr<SubscriberPump> pump_;
  const std::string id_;
  SdpMessage offer_;  // until webrtcbin has it
  HttpServer::Reply reply_;
  const std::string location_;
  const std::vector<std::pair<std::string, std::string>> cors_;
  boost::asio::steady_timer answer_timer_;
  boost::asio::steady_timer connect_timer_;
  boost::asio::steady_timer send_timer_;         // the pump's judge
  boost::asio::steady_timer alive_timer_;        // watch_alive()
  std::chrono::steady_clock::time_point heard_;  // the viewer's last RTCP
  std::uint64_t pushed_ = 0;                     // frames handed to the sender
  State state_ = State::keyframe;
  VideoCodec codec_ = VideoCodec::unknown;
  std::optional<RelayMessage> held_;  // the first keyframe, sent once connected
  GstElement* pipeline_ = nullptr;    // ours (one reference)
  GstElement* appsrc_ = nullptr;      // the pipeline's
  GstElement* webrtc_ = nullptr;      // the pipeline's
  bool described_ = false;            // the answer is the local description
  bool full_ = false;                 // the sender's queue is full
  bool armed_ = false;                // the pump's wake-up is registered
};

namespace {

// What a page of another (allowed) origin needs to read the answer: the origin echoed, and
// the Location header exposed. Nothing for a request without an Origin.
std::vector<std::pair<std::string, std::string>> cors(const HttpServer::Request& request) {
  const auto origin = request[boost::beast::http::field::origin];
  if (origin.empty()) return {};
  return {{"Access-Control-Allow-Origin", std::string(origin)},
          {"Access-Control-Expose-Headers", "Location"},
          {"Vary", "Origin"}};
}

// "/v1/whep/{topic}" -> topic; "/v1/whep/{topic}/{id}" -> topic, id. Topic names hold no '/'
// (they are dot-separated), so the last segment of a longer path is the viewer's.
struct WhepPath {
  std::string topic;
  std::string id;
};
std::optional<WhepPath> whep_path(std::string_view path) {
  if (!path.starts_with(kPrefix)) return std::nullopt;
  path.remove_prefix(kPrefix.size());
  if (path.empty()) return std::nullopt;
  const auto slash = path.find('/');
  if (slash == std::string_view::npos) return WhepPath{url_decode(path), {}};
  return WhepPath{url_decode(path.substr(0, slash)), url_decode(path.substr(slash + 1))};
}

}  // namespace

WhepService::WhepService(RelayCore& core) : impl_(std::make_shared<Impl>(core)) {}

WhepService::~WhepService() {
  stop();
}

void WhepService::handle(HttpServer::Request& request, const HttpPeer& peer,
                         HttpServer::Reply reply) {
  namespace http = boost::beast::http;
  RelayCore& core = impl_->core;
  const auto target =
      HttpTarget::parse(std::string_view(request.target().data(), request.target().size()));
  const auto path = whep_path(target.path);
  const auto refused = [&](const Refusal& r) {
    HttpResponse answer = http_refusal(core, r);
    for (const auto& h : cors(request)) answer.headers.push_back(h);
    reply(std::move(answer));
  };
  if (!path && target.path.starts_with("/v1/whep")) {
    refused({RefusalKind::not_found, "no WHEP resource at " + target.path.substr(0, 200) +
                                         " (POST /v1/whep/{topic} with an SDP offer)"});
    return;
  }
  if (!path) {  // (405: HTTP's own answer to a method the path does not take)
    reply(text(405, "only GET is served at " + target.path.substr(0, 200) +
                        " (POST, DELETE and OPTIONS: /v1/whep/{topic})"));
    return;
  }
  auto who = http_caller(core, request, target, peer);
  if (request.method() == http::verb::options) {
    // A page's preflight (it carries no token): the Host and Origin checks only.
    if (!who && who.refusal().kind != RefusalKind::unauthenticated) {
      refused(who.refusal());
      return;
    }
    auto answer = text(204, "");
    answer.body.clear();
    answer.headers = {{"Accept-Post", "application/sdp"},
                      {"Access-Control-Allow-Methods", "POST, DELETE, OPTIONS"},
                      {"Access-Control-Allow-Headers", "Authorization, Content-Type"},
                      {"Access-Control-Max-Age", "600"}};
    for (const auto& h : cors(request)) answer.headers.push_back(h);
    reply(std::move(answer));
    return;
  }
  if (!who) {
    refused(who.refusal());
    return;
  }
  if (request.method() == http::verb::delete_) {
    std::shared_ptr<WhepViewer> viewer;
    {
      const MutexLock lock(impl_->mu);
      if (const auto it = impl_->viewers.find(path->id); it != impl_->viewers.end())
        viewer = it->second;
    }
    if (!viewer || viewer->topic() != path->topic) {
      refused({RefusalKind::not_found, "no WebRTC viewer '" + path->id.substr(0, 40) +
                                           "' of topic '" + path->topic.substr(0, 200) + "'"});
      return;
    }
    viewer->loop().post([viewer] { viewer->end("deleted"); });
    auto answer = text(200, "ended");
    for (const auto& h : cors(request)) answer.headers.push_back(h);
    reply(std::move(answer));
    return;
  }
  if (request.method() != http::verb::post || !path->id.empty()) {
    auto answer = text(405,
                       "WHEP: POST /v1/whep/{topic} (an SDP offer), DELETE "
                       "/v1/whep/{topic}/{viewer}, OPTIONS");
    answer.headers.emplace_back("Allow", path->id.empty() ? "POST, OPTIONS" : "DELETE");
    reply(std::move(answer));
    return;
  }
  const auto content_type = request[http::field::content_type];
  if (!std::string_view(content_type.data(), content_type.size()).starts_with("application/sdp")) {
    refused({RefusalKind::bad_request, "a WHEP offer is sent as Content-Type: application/sdp"});
    return;
  }
  if (const auto& missing = gst_missing()) {
    refused({RefusalKind::internal, *missing});
    return;
  }
  SdpMessage offer = parse_sdp(request.body());
  if (!offer || gst_sdp_message_medias_len(offer.get()) == 0) {
    refused({RefusalKind::bad_request, "the request's body is not an SDP offer with media"});
    return;
  }
  // A topic that does not exist is 404 at once, to a principal that may watch it (to another,
  // the join's permission refusal: the answer says nothing of what exists): waiting
  // whep.answer_timeout_ms for a keyframe of a topic nobody publishes helps no one, and would
  // make the topic.
  if ((*who)->may(Action::subscribe, path->topic) && !topic_exists(core, path->topic)) {
    refused({RefusalKind::not_found,
             "no topic '" + path->topic +
                 "': a viewer watches a topic that a producer publishes to (or one declared in "
                 "the configuration); start the camera first"});
    return;
  }
  {
    const MutexLock lock(impl_->mu);
    if (impl_->stopping) {
      refused({RefusalKind::stopping, "the relay is stopping"});
      return;
    }
    if (impl_->reserved >= core.config.whep.max_viewers) {
      refused({RefusalKind::too_many_sessions,
               "already " + std::to_string(impl_->reserved) +
                   " WebRTC viewers, the most whep.max_viewers (SLUICE_WHEP_MAX_VIEWERS) allows",
               "whep.max_viewers"});
      return;
    }
    ++impl_->reserved;
  }
  const auto release = [this] {
    const MutexLock lock(impl_->mu);
    --impl_->reserved;
  };
  auto slot = core.admission.admit(SessionRole::subscriber, peer.address);
  if (!slot) {
    release();
    refused(slot.refusal());
    return;
  }
  const SubscribeRequest join{*who,
                              path->topic,
                              target.param("name"),
                              0,
                              {},
                              0,
                              /*start_at_keyframe=*/true};
  auto pump = SubscriberPump::join(core, join, "webrtc-viewer", /*kernel_unsent=*/false);
  if (!pump) {
    release();
    refused(pump.refusal());
    return;
  }
  std::string id = Topic::make_epoch();
  const std::string location = std::string(kPrefix) + target.path.substr(kPrefix.size()) + "/" + id;
  IoThread& loop = core.loops.subscriber_loop();
  auto viewer =
      std::make_shared<WhepViewer>(impl_, loop, std::move(*slot), std::move(*pump), id,
                                   std::move(offer), std::move(reply), location, cors(request));
  {
    const MutexLock lock(impl_->mu);
    impl_->viewers.emplace(std::move(id), viewer);
  }
  impl_->viewers_gauge.add(1);
  loop.post([viewer] { viewer->start(); });
}

void WhepService::stop() {
  std::vector<std::shared_ptr<WhepViewer>> all;
  {
    const MutexLock lock(impl_->mu);
    impl_->stopping = true;
    for (auto& [id, v] : impl_->viewers) all.push_back(v);
  }
  // Each ends on its loop; a loop that has stopped already leaves its viewer to go with it.
  std::vector<std::future<void>> done;
  for (auto& v : all) {
    auto ended = std::make_shared<std::promise<void>>();
    done.push_back(ended->get_future());
    v->loop().post([v, ended] {
      v->end("stopping");
      ended->set_value();
    });
  }
  all.clear();
  // One deadline for all of them (a viewer whose loop is stuck does not add its wait to the
  // next one's).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  for (auto& f : done) f.wait_until(deadline);
  impl_->reaper.drain();
}

}  // namespace sluice::relay

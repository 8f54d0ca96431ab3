// Video to browsers over WebRTC, by WHEP (relay-internal; docs/media.md, docs/protocol.md).
//
//   POST   /v1/whep/{topic}        an SDP offer (application/sdp) -> 201 Created, the SDP
//                                  answer, Location: /v1/whep/{topic}/{session}
//   DELETE /v1/whep/{topic}/{id}   ends that viewer -> 200
//   OPTIONS /v1/whep/{topic}       204, Accept-Post: application/sdp
//
// A viewer is a subscriber of its topic like any other (a SubscriberPump: its cursor is its
// queue, its losses are counted, it starts at a keyframe and resumes at one after a gap); this
// is only its transport. The offer is answered once the topic's next keyframe is in, since its
// codec (VP8 or H.264, read from the keyframe: video_codec.hpp) decides the answer, and once
// ICE has gathered (no trickle). Its frames then go from the topic's Buffers into GstBuffers
// that reference them (no copy) through an appsrc of `whep.queue_frames` into a payloader and
// GStreamer's webrtcbin: one pipeline per viewer, built and torn down with it.
//
// A viewer ends on DELETE, when its WebRTC connection fails or is not up within
// whep.connect_timeout_ms, when it sends no RTCP for that long (a page closed without DELETE, a
// browser gone: connection_lost), when its sender takes nothing for the slow-subscriber limits
// (the pump's judgement: slow_consumer, as a WebSocket viewer), when its topic closes, and when
// the relay stops. Refusals are HTTP statuses from the refusal
// table, naming the setting; a viewer over whep.max_viewers is too_many_sessions (503).
//
// Thread-safety: handle() from the HTTP loop; each viewer runs on one subscriber loop;
// GStreamer's threads only post to it. stop() once, before the loops stop.
#pragma once

#include <memory>

#include "http_server.hpp"
#include "relay_core.hpp"

namespace sluice::relay {

class WhepService {
 public:
  /// `core` must outlive this.
  explicit WhepService(RelayCore& core);
  WhepService(const WhepService&) = delete;
  WhepService& operator=(const WhepService&) = delete;
  WhepService(WhepService&&) = delete;
  WhepService& operator=(WhepService&&) = delete;
  ~WhepService();

  /// A request of another method than GET on the HTTP port: answered through `reply` (once,
  /// perhaps later and from another thread); 404/405 for what is not a WHEP resource.
  void handle(HttpServer::Request& request, const HttpPeer& peer, HttpServer::Reply reply);
  /// Ends every viewer and waits until their pipelines are gone (the relay is stopping).
  void stop();

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace sluice::relay

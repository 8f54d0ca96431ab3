// WebRTC viewers over WHEP at the HTTP level, against the real relay and its real webrtcbin:
// an offer is answered (201, an SDP answer with the topic's codec and ICE candidates on the
// configured address, a Location that DELETE ends), and every offer that cannot be answered
// is refused with a status and a message naming the setting or what is missing. The browser
// plays the video in web/test/whep.test.mjs.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "relay_scene.hpp"
#include "sluice/client/client.hpp"

namespace sluice::testing {
namespace {

using namespace std::chrono_literals;
namespace http = boost::beast::http;

// An offer as a browser makes it to receive video (VP8 and H.264), with its ICE credentials and
// DTLS fingerprint: enough for webrtcbin to answer (no peer connects in these tests).
std::string offer(bool with_vp8 = true) {
  std::string sdp =
      "v=0\r\n"
      "o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
      "s=-\r\n"
      "t=0 0\r\n"
      "a=group:BUNDLE 0\r\n"
      "a=msid-semantic: WMS\r\n";
  sdp += with_vp8 ? "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102\r\n"
                  : "m=video 9 UDP/TLS/RTP/SAVPF 102\r\n";
  sdp +=
      "c=IN IP4 0.0.0.0\r\n"
      "a=rtcp:9 IN IP4 0.0.0.0\r\n"
      "a=ice-ufrag:Wq8c\r\n"
      "a=ice-pwd:3dMC9b9yqmvvzTxVf5Qy2PBq\r\n"
      "a=ice-options:trickle\r\n"
      "a=fingerprint:sha-256 "
      "5B:0A:4B:3C:7E:20:9C:2A:55:C8:77:9B:3A:9E:43:0D:6B:2C:53:7B:2A:1E:4F:61:7C:90:6F:3E:"
      "8D:AA:B1:C4\r\n"
      "a=setup:actpass\r\n"
      "a=mid:0\r\n"
      "a=recvonly\r\n"
      "a=rtcp-mux\r\n"
      "a=rtcp-rsize\r\n";
  if (with_vp8) {
    sdp +=
        "a=rtpmap:96 VP8/90000\r\n"
        "a=rtcp-fb:96 nack\r\n"
        "a=rtcp-fb:96 nack pli\r\n"
        "a=rtpmap:97 rtx/90000\r\n"
        "a=fmtp:97 apt=96\r\n";
  }
  sdp +=
      "a=rtpmap:102 H264/90000\r\n"
      "a=rtcp-fb:102 nack pli\r\n"
      "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n";
  return sdp;
}

// The first bytes of a VP8 keyframe (frame tag: key frame, shown; start code 9d 01 2a; 64x64).
std::string vp8_keyframe() {
  std::string f = {'\x10', '\x02', '\x00', '\x9d', '\x01', '\x2a', '\x40', '\x00', '\x40', '\x00'};
  f.resize(200, '\0');
  return f;
}

RelayConfig whep_relay() {
  RelayConfig c;
  c.whep.ice_addresses = {"127.0.0.1"};
  c.whep.answer_timeout = 6000ms;  // (a bound: the keyframe comes every 20 ms; ICE gathers in ms)
  return c;
}

// Publishes `payload` (a keyframe: no flags) to `topic` every 20 ms while it lives; constructed
// once the relay has the first (the topic exists: a viewer of a topic that does not is 404).
class Feeder {
 public:
  Feeder(const RelayScene& relay, const std::string& topic, std::string payload)
      : thread_([this, target = relay.target, topic, payload = std::move(payload)] {
          client::PublisherOptions po;
          po.target = target;
          po.topic = topic;
          client::Publisher pub(po);
          while (!stop_.load()) {
            (void)pub.publish(Buffer::copy(payload), 0, 0);
            std::this_thread::sleep_for(20ms);
            if (pub.stats().acked > 0) in_.store(true);
          }
        }) {
    for (int i = 0; i < 500 && !in_.load(); ++i) std::this_thread::sleep_for(10ms);
  }
  Feeder(const Feeder&) = delete;
  Feeder& operator=(const Feeder&) = delete;
  Feeder(Feeder&&) = delete;
  Feeder& operator=(Feeder&&) = delete;
  ~Feeder() {
    stop_.store(true);
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<bool> in_{false};  // the relay acknowledged an item: the topic exists
  std::thread thread_;
};

TEST(Whep, AnOfferIsAnsweredWithTheTopicsCodecAndDeleteEndsTheViewer) {
  RelayScene relay(whep_relay());
  const Feeder feed(relay, "camera", vp8_keyframe());
  const auto answer = http_request(relay.http_port(), http::verb::post, "/v1/whep/camera", offer(),
                                   "application/sdp");
  ASSERT_EQ(answer.status, 201u) << answer.body;
  EXPECT_EQ(answer.headers.at("Content-Type"), "application/sdp");
  EXPECT_NE(answer.body.find("a=rtpmap:96 VP8/90000"), std::string::npos) << answer.body;
  EXPECT_NE(answer.body.find("a=sendonly"), std::string::npos) << answer.body;
  // ICE offers the configured address (whep.ice_addresses), and gathered before answering.
  EXPECT_NE(answer.body.find("a=candidate:"), std::string::npos) << answer.body;
  EXPECT_NE(answer.body.find(" 127.0.0.1 "), std::string::npos) << answer.body;
  const std::string location = answer.headers.at("Location");
  ASSERT_EQ(location.rfind("/v1/whep/camera/", 0), 0u) << location;
  EXPECT_EQ(relay.metric("sluice_whep_viewers"), 1);

  // The viewer is a subscriber of the topic, in its stats.
  EXPECT_NE(relay.stats_json().find("\"webrtc-viewer\""), std::string::npos);

  // DELETE of another topic's path does not end it; its own does.
  const std::string id = location.substr(location.rfind('/') + 1);
  EXPECT_EQ(http_request(relay.http_port(), http::verb::delete_, "/v1/whep/other/" + id).status,
            404u);
  EXPECT_EQ(http_request(relay.http_port(), http::verb::delete_, location).status, 200u);
  for (int i = 0; i < 200 && relay.metric("sluice_whep_viewers") != 0; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(relay.metric("sluice_whep_viewers"), 0);
  EXPECT_EQ(relay.metric("sluice_whep_viewers_ended_total", "reason=\"deleted\""), 1);
  EXPECT_EQ(http_request(relay.http_port(), http::verb::delete_, location).status, 404u);
}

TEST(Whep, AnOfferThatCannotBeAnsweredIsRefusedSayingWhy) {
  RelayConfig c = whep_relay();
  c.whep.max_offer_bytes = 2048;
  RelayScene relay(c);
  const auto port = relay.http_port();
  // Not SDP.
  auto a = http_request(port, http::verb::post, "/v1/whep/camera", offer(), "text/plain");
  EXPECT_EQ(a.status, 400u);
  EXPECT_NE(a.body.find("application/sdp"), std::string::npos) << a.body;
  a = http_request(port, http::verb::post, "/v1/whep/camera", "hello", "application/sdp");
  EXPECT_EQ(a.status, 400u);
  EXPECT_NE(a.body.find("not an SDP offer"), std::string::npos) << a.body;
  // Too large: the setting is named.
  a = http_request(port, http::verb::post, "/v1/whep/camera", offer() + std::string(4096, 'x'),
                   "application/sdp");
  EXPECT_EQ(a.status, 413u);
  EXPECT_NE(a.body.find("whep.max_offer_bytes"), std::string::npos) << a.body;
  // Methods and paths.
  a = http_request(port, http::verb::put, "/v1/whep/camera", offer(), "application/sdp");
  EXPECT_EQ(a.status, 405u);
  a = http_request(port, http::verb::post, "/v1/other", offer(), "application/sdp");
  EXPECT_EQ(a.status, 405u);
  a = http_request(port, http::verb::options, "/v1/whep/camera");
  EXPECT_EQ(a.status, 204u);
  EXPECT_EQ(a.headers["Accept-Post"], "application/sdp");
  // The relay goes on serving: GET still answers.
  EXPECT_EQ(http_get(port, "/healthz").first, 200u);
}

TEST(Whep, ATopicWithoutVideoOrWithAnotherCodecIsRefusedByStatusAndCounted) {
  RelayScene relay(whep_relay());
  {
    const Feeder feed(relay, "readings", R"({"temperature": 21.5})");
    const auto a = http_request(relay.http_port(), http::verb::post, "/v1/whep/readings", offer(),
                                "application/sdp");
    EXPECT_EQ(a.status, 415u) << a.body;
    EXPECT_NE(a.body.find("no VP8 or H.264 video"), std::string::npos) << a.body;
  }
  {
    // VP8 video, an offer that takes only H.264.
    const Feeder feed(relay, "camera", vp8_keyframe());
    const auto a = http_request(relay.http_port(), http::verb::post, "/v1/whep/camera",
                                offer(/*with_vp8=*/false), "application/sdp");
    EXPECT_EQ(a.status, 406u) << a.body;
    EXPECT_NE(a.body.find("VP8"), std::string::npos) << a.body;
  }
  EXPECT_EQ(relay.metric("sluice_whep_viewers"), 0);
  EXPECT_EQ(relay.metric("sluice_whep_viewers_ended_total", "reason=\"unsupported_codec\""), 1);
  EXPECT_EQ(relay.metric("sluice_whep_viewers_ended_total", "reason=\"offer_refused\""), 1);
  // Refusals like any other's: counted by kind.
  EXPECT_EQ(relay.metric("sluice_refusals_total", "kind=\"unsupported_media\""), 1);
  EXPECT_EQ(relay.metric("sluice_refusals_total", "kind=\"offer_refused\""), 1);
}

TEST(Whep, NoKeyframeWithinTheAnswerTimeoutIs504NamingTheSetting) {
  RelayConfig c = whep_relay();
  c.whep.answer_timeout = 300ms;
  TopicConfig quiet;  // (declared: it exists, and nothing is published to it)
  quiet.name = "quiet";
  c.topics.push_back(quiet);
  RelayScene relay(c);
  const auto a = http_request(relay.http_port(), http::verb::post, "/v1/whep/quiet", offer(),
                              "application/sdp");
  EXPECT_EQ(a.status, 504u) << a.body;
  EXPECT_NE(a.body.find("whep.answer_timeout_ms"), std::string::npos) << a.body;
  EXPECT_EQ(relay.metric("sluice_whep_viewers"), 0);
  EXPECT_EQ(relay.metric("sluice_whep_viewers_ended_total", "reason=\"answer_timeout\""), 1);
  EXPECT_EQ(relay.metric("sluice_refusals_total", "kind=\"answer_timeout\""), 1);
}

// A topic that does not exist is 404 at once (not a 504 after the answer timeout), counted, and
// not made by the asking.
TEST(Whep, ATopicThatDoesNotExistIs404AtOnceAndIsNotMade) {
  RelayConfig c = whep_relay();
  c.whep.answer_timeout = 60s;
  RelayScene relay(c);
  const auto a = http_request(relay.http_port(), http::verb::post, "/v1/whep/nobody", offer(),
                              "application/sdp");
  EXPECT_EQ(a.status, 404u) << a.body;
  EXPECT_NE(a.body.find("no topic 'nobody'"), std::string::npos) << a.body;
  EXPECT_EQ(relay.metric("sluice_refusals_total", "kind=\"not_found\""), 1);
  EXPECT_EQ(relay.stats_json().find("\"nobody\""), std::string::npos) << relay.stats_json();
}

TEST(Whep, ViewersOverTheLimitAreRefusedNamingIt) {
  RelayConfig c = whep_relay();
  c.whep.max_viewers = 1;
  RelayScene relay(c);
  const Feeder feed(relay, "camera", vp8_keyframe());
  const auto first = http_request(relay.http_port(), http::verb::post, "/v1/whep/camera", offer(),
                                  "application/sdp");
  ASSERT_EQ(first.status, 201u) << first.body;
  const auto second = http_request(relay.http_port(), http::verb::post, "/v1/whep/camera", offer(),
                                   "application/sdp");
  EXPECT_EQ(second.status, 503u);
  EXPECT_NE(second.body.find("whep.max_viewers"), std::string::npos) << second.body;
  // The first is untouched, and its end frees the place.
  EXPECT_EQ(relay.metric("sluice_whep_viewers"), 1);
  EXPECT_EQ(
      http_request(relay.http_port(), http::verb::delete_, first.headers.at("Location")).status,
      200u);
  for (int i = 0; i < 200 && relay.metric("sluice_whep_viewers") != 0; ++i)
    std::this_thread::sleep_for(10ms);
  const auto third = http_request(relay.http_port(), http::verb::post, "/v1/whep/camera", offer(),
                                  "application/sdp");
  EXPECT_EQ(third.status, 201u) << third.body;
}

TEST(Whep, AnAnsweredViewerThatNeverConnectsIsEndedAfterTheConnectTimeout) {
  RelayConfig c = whep_relay();
  c.whep.connect_timeout = 300ms;
  RelayScene relay(c);
  const Feeder feed(relay, "camera", vp8_keyframe());
  const auto a = http_request(relay.http_port(), http::verb::post, "/v1/whep/camera", offer(),
                              "application/sdp");
  ASSERT_EQ(a.status, 201u) << a.body;
  for (int i = 0; i < 500 && relay.metric("sluice_whep_viewers") != 0; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(relay.metric("sluice_whep_viewers"), 0);
  EXPECT_EQ(relay.metric("sluice_whep_viewers_ended_total", "reason=\"connect_timeout\""), 1);
}

// The descriptors the process holds.
std::size_t open_fds() {
  std::size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    (void)e;
    ++n;
  }
  return n;
}

// A relay that stops with a viewer answered ends it there (reason stopping) and tears its
// pipeline down: after the relay, nothing of it holds a descriptor (sockets of ICE, DTLS).
TEST(Whep, StoppingTheRelayEndsItsViewersAndLeavesNoDescriptorBehind) {
  const auto round = [] {
    RelayScene relay(whep_relay());
    const Feeder feed(relay, "camera", vp8_keyframe());
    for (int i = 0; i < 3; ++i) {
      const auto a = http_request(relay.http_port(), http::verb::post, "/v1/whep/camera", offer(),
                                  "application/sdp");
      ASSERT_EQ(a.status, 201u) << a.body;
    }
    EXPECT_EQ(relay.metric("sluice_whep_viewers"), 3);
    relay.shutdown();  // (returns once the viewers' pipelines are torn down)
  };
  round();  // (the first loads GStreamer's plugins and gRPC's globals)
  const std::size_t baseline = open_fds();
  round();
  round();
  // (the last pipelines' threads may still be closing theirs: a bound, not a figure)
  for (int i = 0; i < 500 && open_fds() != baseline; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(open_fds(), baseline);
}

}  // namespace
}  // namespace sluice::testing

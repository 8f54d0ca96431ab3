// The codec of a keyframe, read from its first bytes, and the payload type chosen from an offer.
#include "relay/video_codec.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace sluice::relay {
namespace {

std::vector<std::byte> bytes(std::initializer_list<int> v, std::size_t pad = 16) {
  std::vector<std::byte> out;
  for (int b : v) out.push_back(static_cast<std::byte>(b));
  out.resize(out.size() + pad, std::byte{0});
  return out;
}

TEST(VideoCodec, KeyframesAreToldApartByTheirFirstBytes) {
  // H.264: an access unit delimiter, an SPS, an IDR slice after a 3- or 4-byte start code.
  EXPECT_EQ(sniff_keyframe(bytes({0, 0, 0, 1, 0x09, 0xF0})), VideoCodec::h264);
  EXPECT_EQ(sniff_keyframe(bytes({0, 0, 1, 0x67, 0x64, 0x00, 0x28})), VideoCodec::h264);
  EXPECT_EQ(sniff_keyframe(bytes({0, 0, 0, 1, 0x65, 0x88})), VideoCodec::h264);
  // H.265: an AUD (type 35: 0x46 0x01), a VPS (0x40 0x01). 0x46 is not an H.264 SEI: that
  // would have nal_ref_idc 0.
  EXPECT_EQ(sniff_keyframe(bytes({0, 0, 0, 1, 0x46, 0x01, 0x10})), VideoCodec::h265);
  EXPECT_EQ(sniff_keyframe(bytes({0, 0, 0, 1, 0x40, 0x01, 0x0C})), VideoCodec::h265);
  // VP8: key frame, shown, start code 9d 01 2a.
  EXPECT_EQ(sniff_keyframe(bytes({0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A, 0x40, 0x01})),
            VideoCodec::vp8);
  // A VP8 inter frame (bit 0 set) is not a keyframe.
  EXPECT_EQ(sniff_keyframe(bytes({0x11, 0x02, 0x00, 0x9D, 0x01, 0x2A})), VideoCodec::unknown);
  // VP9 profile 0 key frame: marker 10, then the sync code 49 83 42.
  EXPECT_EQ(sniff_keyframe(bytes({0x82, 0x49, 0x83, 0x42, 0x00})), VideoCodec::vp9);
  // Text, JSON, an H.264 P slice alone, nothing.
  const std::string json = R"({"a": 1, "b": [1, 2, 3]})";
  EXPECT_EQ(sniff_keyframe(std::as_bytes(std::span(json.data(), json.size()))),
            VideoCodec::unknown);
  EXPECT_EQ(sniff_keyframe(bytes({0, 0, 0, 1, 0x41, 0x9A})), VideoCodec::unknown);
  EXPECT_EQ(sniff_keyframe({}), VideoCodec::unknown);
}

TEST(VideoCodec, TheProfileOfAnH264StreamIsReadFromItsSps) {
  EXPECT_EQ(h264_profile_idc(bytes({0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x67, 0x64, 0x00, 0x28})),
            0x64);
  EXPECT_EQ(h264_profile_idc(bytes({0, 0, 0, 1, 0x65, 0x88})), 0);
}

const char* kOffer =
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 108 127\r\na=mid:1\r\na=recvonly\r\n"
    "a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
    "a=rtpmap:102 H264/90000\r\n"
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n"
    "a=rtpmap:108 H264/90000\r\n"
    "a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
    "a=rtpmap:127 H264/90000\r\n"
    "a=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640032\r\n";

TEST(VideoCodec, TheOffersPayloadTypeForTheCodecIsChosen) {
  auto c = choose_payload(kOffer, VideoCodec::vp8);
  EXPECT_EQ(c.payload_type, 96);
  EXPECT_EQ(c.mid, "1");
  EXPECT_TRUE(c.error.empty());
  // H.264: packetization-mode 1, then the stream's profile (High: 0x64).
  c = choose_payload(kOffer, VideoCodec::h264, 0x64);
  EXPECT_EQ(c.payload_type, 127);
  c = choose_payload(kOffer, VideoCodec::h264, 0x42);
  EXPECT_EQ(c.payload_type, 108);
  EXPECT_NE(c.fmtp.find("packetization-mode=1"), std::string::npos);
  // No such codec; no video; no SDP.
  c = choose_payload(kOffer, VideoCodec::vp9);
  EXPECT_EQ(c.payload_type, -1);
  EXPECT_NE(c.error.find("VP9"), std::string::npos);
  c = choose_payload(
      "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
      "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n",
      VideoCodec::vp8);
  EXPECT_NE(c.error.find("no video section"), std::string::npos);
  // A video section that only sends cannot receive the topic.
  c = choose_payload(
      "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
      "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n",
      VideoCodec::vp8);
  EXPECT_EQ(c.payload_type, -1);
}

}  // namespace
}  // namespace sluice::relay

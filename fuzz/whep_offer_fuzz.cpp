// What a WebRTC viewer's request hands the relay: an SDP offer (parsed by GStreamer, the
// payload type chosen by choose_payload) and, from the topic, a keyframe's first bytes
// (sniff_keyframe, h264_profile_idc). Invariants: no crash or overread; a choice is a payload
// type 0-127 with no error, or -1 with one; the codec read from bytes is one of the five.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "fuzz_check.hpp"
#include "video_codec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using sluice::relay::VideoCodec;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  const VideoCodec codec = sluice::relay::sniff_keyframe(bytes);
  FUZZ_CHECK(codec == VideoCodec::unknown || codec == VideoCodec::h264 ||
             codec == VideoCodec::h265 || codec == VideoCodec::vp8 || codec == VideoCodec::vp9);
  const int profile = sluice::relay::h264_profile_idc(bytes);
  FUZZ_CHECK(profile >= 0 && profile <= 255);
  const std::string_view sdp(reinterpret_cast<const char*>(data), size);
  for (const VideoCodec c : {VideoCodec::vp8, VideoCodec::h264}) {
    const auto choice = sluice::relay::choose_payload(sdp, c, profile);
    FUZZ_CHECK((choice.payload_type >= 0 && choice.payload_type <= 127 && choice.error.empty()) ||
               (choice.payload_type == -1 && !choice.error.empty()));
  }
  return 0;
}

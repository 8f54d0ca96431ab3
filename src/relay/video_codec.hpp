// What video a topic's keyframe holds, and which of a WebRTC offer's payload types carries it
// (relay-internal; the WHEP egress asks both before it answers an offer).
//
// Why by hand: a topic's items are opaque bytes with a keyframe flag; GStreamer's typefind
// wants a stream, not one access unit, and guesses H.264 from any buffer that starts with a
// start code. The few bytes that tell the codecs apart are read here (H.264/H.265: the first
// NAL unit's header after an Annex B start code; VP8: its key frame tag and start code; VP9:
// its frame marker). The SDP itself is parsed by GStreamer's GstSDPMessage; only the choice of
// payload type is ours.
//
// Thread-safety: plain functions over values.
#pragma once

#include <gst/sdp/gstsdpmessage.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace sluice::relay {

enum class VideoCodec : std::uint8_t { unknown, h264, h265, vp8, vp9 };

/// "H264", "H265", "VP8", "VP9" (as SDP's rtpmap spells them); "unknown".
std::string_view to_string(VideoCodec codec) noexcept;

/// The codec of an access unit that starts a GOP (a keyframe as `sluice ingest` publishes it:
/// H.264/H.265 in Annex B, VP8/VP9 frames as they are); unknown if it is none of them.
VideoCodec sniff_keyframe(std::span<const std::byte> frame) noexcept;

/// What an offer's video section asks of a sender of `codec`.
struct OfferChoice {
  int payload_type = -1;  // the offer's number for the codec; -1: none (see error)
  std::string mid;        // the video section's a=mid
  std::string fmtp;       // its a=fmtp for that payload type (H.264: profile, packetization)
  std::string error;      // why the offer cannot be answered (empty if it can)
};

/// An SDP message, owned.
using SdpMessage = std::unique_ptr<GstSDPMessage, decltype(&gst_sdp_message_free)>;
/// `sdp` parsed by GStreamer; null if it is not SDP.
SdpMessage parse_sdp(std::string_view sdp);

/// The first video section of `sdp` (an SDP offer) that may receive (recvonly or sendrecv), and
/// in it the payload type of `codec`: for H.264, packetization-mode=1 preferred (what the
/// payloader sends), then the one whose profile matches `h264_profile_idc` (from the stream's
/// SPS; 0: any). `error` says what is missing: a parseable SDP, a video section, the codec.
OfferChoice choose_payload(std::string_view sdp, VideoCodec codec, int h264_profile_idc = 0);
/// The same over an offer GStreamer has parsed.
OfferChoice choose_payload(const GstSDPMessage& offer, VideoCodec codec, int h264_profile_idc);

/// The profile_idc of the first H.264 SPS in an Annex B access unit; 0 if none.
int h264_profile_idc(std::span<const std::byte> frame) noexcept;

}  // namespace sluice::relay

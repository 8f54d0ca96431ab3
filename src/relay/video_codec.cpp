#include "video_codec.hpp"

#include <gst/sdp/sdp.h>

#include <array>
#include <cstdlib>
#include <memory>

namespace sluice::relay {

std::string_view to_string(VideoCodec codec) noexcept {
  switch (codec) {
    case VideoCodec::h264:
      return "H264";
    case VideoCodec::h265:
      return "H265";
    case VideoCodec::vp8:
      return "VP8";
    case VideoCodec::vp9:
      return "VP9";
    case VideoCodec::unknown:
      break;
  }
  return "unknown";
}

namespace {

std::uint8_t at(std::span<const std::byte> b, std::size_t i) {
  return static_cast<std::uint8_t>(b[i]);
}

// The offset of the first NAL unit's header after an Annex B start code at the very start
// (00 00 01 or 00 00 00 01); 0 if the frame does not start with one.
std::size_t annex_b_header(std::span<const std::byte> b) {
  if (b.size() >= 4 && at(b, 0) == 0 && at(b, 1) == 0 && at(b, 2) == 1) return 3;
  if (b.size() >= 5 && at(b, 0) == 0 && at(b, 1) == 0 && at(b, 2) == 0 && at(b, 3) == 1) return 4;
  return 0;
}

// An H.264 NAL unit header a keyframe access unit may start with: an access unit delimiter or
// SEI (nal_ref_idc 0, as the standard requires of both), a sequence or picture parameter set,
// or an IDR slice (nal_ref_idc not 0). forbidden_zero_bit clear.
bool h264_start(std::uint8_t h) {
  if ((h & 0x80) != 0) return false;
  const int type = h & 0x1F;
  const int ref = (h >> 5) & 0x3;
  switch (type) {
    case 9:  // access unit delimiter
    case 6:  // SEI
      return ref == 0;
    case 7:  // SPS
    case 8:  // PPS
    case 5:  // IDR slice
      return ref != 0;
    default:
      return false;
  }
}

// An H.265 one: AUD (35), VPS (32), SPS (33), PPS (34), prefix SEI (39), or an IRAP slice
// (16..21); forbidden bit clear, layer id 0, temporal id + 1 not 0.
bool h265_start(std::uint8_t h0, std::uint8_t h1) {
  if ((h0 & 0x80) != 0 || (h0 & 0x01) != 0 || (h1 & 0xF8) != 0 || (h1 & 0x07) == 0) return false;
  const int type = (h0 >> 1) & 0x3F;
  return type == 35 || (type >= 32 && type <= 34) || type == 39 || (type >= 16 && type <= 21);
}

}  // namespace

VideoCodec sniff_keyframe(std::span<const std::byte> frame) noexcept {
  const auto b = frame;
  if (const std::size_t h = annex_b_header(b); h != 0 && h + 1 < b.size()) {
    if (h264_start(at(b, h))) return VideoCodec::h264;
    if (h265_start(at(b, h), at(b, h + 1))) return VideoCodec::h265;
    return VideoCodec::unknown;
  }
  // VP8 key frame: frame tag bit 0 clear (key frame), show_frame set, then 9d 01 2a.
  if (b.size() >= 10 && (at(b, 0) & 0x01) == 0 && (at(b, 0) & 0x10) != 0 && at(b, 3) == 0x9D &&
      at(b, 4) == 0x01 && at(b, 5) == 0x2A)
    return VideoCodec::vp8;
  // VP9 key frame: frame marker 0b10, then (profile 0-2) show_existing_frame 0, frame_type 0,
  // then the sync code 49 83 42.
  if (b.size() >= 4 && (at(b, 0) >> 6) == 0x2) {
    const int profile = ((at(b, 0) >> 5) & 1) | (((at(b, 0) >> 4) & 1) << 1);
    if (profile < 3 && (at(b, 0) & 0x08) == 0 && (at(b, 0) & 0x04) == 0) {
      // The sync code follows the 6 header bits after the marker (profile 0-2: bit-aligned
      // after 8 bits when error_resilient etc. fill the byte): checked loosely, bytes 1..3.
      if (at(b, 1) == 0x49 && at(b, 2) == 0x83 && at(b, 3) == 0x42) return VideoCodec::vp9;
    }
  }
  return VideoCodec::unknown;
}

int h264_profile_idc(std::span<const std::byte> frame) noexcept {
  const auto b = frame;
  // Each NAL unit follows a 00 00 01; an SPS (type 7) has profile_idc in its next byte.
  for (std::size_t i = 0; i + 4 < b.size(); ++i) {
    if (at(b, i) == 0 && at(b, i + 1) == 0 && at(b, i + 2) == 1) {
      if ((at(b, i + 3) & 0x1F) == 7) return at(b, i + 4);
      i += 2;
    }
  }
  return 0;
}

namespace {

// An fmtp's parameter ("profile-level-id=42e01f;packetization-mode=1").
std::string fmtp_param(std::string_view fmtp, std::string_view key) {
  std::size_t pos = 0;
  while (pos < fmtp.size()) {
    std::size_t end = fmtp.find(';', pos);
    if (end == std::string_view::npos) end = fmtp.size();
    std::string_view item = fmtp.substr(pos, end - pos);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    if (item.size() > key.size() && item.substr(0, key.size()) == key && item[key.size()] == '=')
      return std::string(item.substr(key.size() + 1));
    pos = end + 1;
  }
  return {};
}

bool ascii_iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

}  // namespace

OfferChoice choose_payload(const GstSDPMessage& offer, VideoCodec codec, int profile_idc) {
  OfferChoice out;
  const GstSDPMedia* video = nullptr;
  for (guint i = 0; i < gst_sdp_message_medias_len(&offer); ++i) {
    const GstSDPMedia* m = gst_sdp_message_get_media(&offer, i);
    if (m == nullptr || gst_sdp_media_get_media(m) == nullptr ||
        std::string_view(gst_sdp_media_get_media(m)) != "video")
      continue;
    if (gst_sdp_media_get_attribute_val(m, "sendonly") != nullptr ||
        gst_sdp_media_get_attribute_val(m, "inactive") != nullptr)
      continue;
    video = m;
    break;
  }
  if (video == nullptr) {
    out.error = "the offer has no video section that receives (m=video, recvonly or sendrecv)";
    return out;
  }
  if (const char* mid = gst_sdp_media_get_attribute_val(video, "mid")) out.mid = mid;
  int best_score = -1;
  for (guint i = 0; i < gst_sdp_media_attributes_len(video); ++i) {
    const GstSDPAttribute* a = gst_sdp_media_get_attribute(video, i);
    if (a == nullptr || a->key == nullptr || a->value == nullptr ||
        std::string_view(a->key) != "rtpmap")
      continue;
    // "96 VP8/90000"
    const std::string_view value(a->value);
    const auto space = value.find(' ');
    if (space == std::string_view::npos) continue;
    const std::string_view name = value.substr(space + 1, value.find('/', space) - space - 1);
    if (!ascii_iequals(name, to_string(codec))) continue;
    char* end = nullptr;
    const std::string number(value.substr(0, space));
    const long pt = std::strtol(number.c_str(), &end, 10);
    if (end == number.c_str() || *end != '\0' || pt < 0 || pt > 127) continue;
    std::string fmtp;
    for (guint j = 0; j < gst_sdp_media_attributes_len(video); ++j) {
      const GstSDPAttribute* f = gst_sdp_media_get_attribute(video, j);
      if (f == nullptr || f->key == nullptr || f->value == nullptr ||
          std::string_view(f->key) != "fmtp")
        continue;
      const std::string_view fv(f->value);
      if (fv.substr(0, number.size() + 1) == number + " ") fmtp = fv.substr(number.size() + 1);
    }
    int score = 0;
    if (codec == VideoCodec::h264) {
      if (fmtp_param(fmtp, "packetization-mode") == "1") score += 2;
      const std::string level = fmtp_param(fmtp, "profile-level-id");
      if (profile_idc != 0 && level.size() == 6 &&
          std::strtol(level.substr(0, 2).c_str(), nullptr, 16) == profile_idc)
        score += 1;
    }
    if (score > best_score) {
      best_score = score;
      out.payload_type = static_cast<int>(pt);
      out.fmtp = fmtp;
    }
  }
  if (out.payload_type < 0) {
    out.error = "the offer's video section does not receive " + std::string(to_string(codec)) +
                ", the topic's codec (no a=rtpmap for it)";
  }
  return out;
}

SdpMessage parse_sdp(std::string_view sdp) {
  GstSDPMessage* msg = nullptr;
  if (gst_sdp_message_new(&msg) != GST_SDP_OK) return {nullptr, &gst_sdp_message_free};
  SdpMessage owned(msg, &gst_sdp_message_free);
  if (gst_sdp_message_parse_buffer(reinterpret_cast<const guint8*>(sdp.data()),
                                   static_cast<guint>(sdp.size()), msg) != GST_SDP_OK)
    owned.reset();
  return owned;
}

OfferChoice choose_payload(std::string_view sdp, VideoCodec codec, int profile_idc) {
  const SdpMessage msg = parse_sdp(sdp);
  if (!msg) return {-1, {}, {}, "the offer is not SDP"};
  return choose_payload(*msg, codec, profile_idc);
}

}  // namespace sluice::relay

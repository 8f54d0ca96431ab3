#include "image_model.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <thread>

namespace sluice::cli {

GrayImage grayscale_downscale(std::string_view rgb, unsigned width, unsigned height,
                              unsigned factor) {
  if (factor == 0) throw std::invalid_argument("downscale factor 0: use 1 or more");
  if (std::uint64_t{width} * height * 3 != rgb.size() || width == 0 || height == 0) {
    throw std::invalid_argument("expected " + std::to_string(width) + " x " +
                                std::to_string(height) +
                                " x 3 = " + std::to_string(std::uint64_t{width} * height * 3) +
                                " bytes of RGB, got " + std::to_string(rgb.size()));
  }
  GrayImage out;
  out.width = std::max(1U, width / factor);
  out.height = std::max(1U, height / factor);
  out.pixels.resize(std::size_t{out.width} * out.height);
  const auto* p = reinterpret_cast<const unsigned char*>(rgb.data());
  std::uint64_t total = 0;
  for (unsigned y = 0; y < out.height; ++y) {
    for (unsigned x = 0; x < out.width; ++x) {
      // The box of source pixels this output pixel covers (the last row/column takes the rest).
      const unsigned x0 = x * width / out.width;
      const unsigned x1 = (x + 1) * width / out.width;
      const unsigned y0 = y * height / out.height;
      const unsigned y1 = (y + 1) * height / out.height;
      std::uint64_t sum = 0;
      for (unsigned sy = y0; sy < y1; ++sy) {
        const unsigned char* row = p + (std::size_t{sy} * width) * 3;
        for (unsigned sx = x0; sx < x1; ++sx) {
          const unsigned char* px = row + std::size_t{sx} * 3;
          // BT.601 luma in fixed point: (77 R + 150 G + 29 B) / 256
          sum += (77U * px[0] + 150U * px[1] + 29U * px[2]) >> 8;
        }
      }
      const std::uint64_t n = std::uint64_t{x1 - x0} * (y1 - y0);
      const auto v = static_cast<unsigned char>(sum / n);
      out.pixels[std::size_t{y} * out.width + x] = static_cast<char>(v);
      total += v;
    }
  }
  out.mean = static_cast<double>(total) / static_cast<double>(out.pixels.size());
  return out;
}

std::string ImageModel::operator()(const WorkFrame& frame) const {
  if (const auto delay = std::chrono::milliseconds(delay_ms_.load()); delay.count() > 0)
    std::this_thread::sleep_for(delay);
  const auto pixels = static_cast<unsigned>(frame.payload.size() / 3);
  const unsigned width = options_.width != 0 ? options_.width : pixels;
  const unsigned height =
      options_.height != 0 ? options_.height : (width != 0 ? pixels / width : 0);
  const GrayImage g = grayscale_downscale(frame.payload, width, height, options_.downscale);
  std::string out =
      nlohmann::json{{"width", g.width}, {"height", g.height}, {"mean", g.mean}}.dump();
  out += '\n';
  out += g.pixels;
  return out;
}

}  // namespace sluice::cli

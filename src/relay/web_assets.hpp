// The files of the relay's web pages (the dashboard at /, the JavaScript client at /sluice.js,
// the charting library it uses), built into the binary from web/ by cmake/embed_assets.cmake:
// the relay serves them with nothing installed beside it and nothing fetched from elsewhere.
#pragma once

#include <span>
#include <string_view>

namespace sluice::relay {

struct WebAsset {
  std::string_view path;          // the URL path it is served at
  std::string_view content_type;  // its Content-Type
  std::string_view body;
};

/// Every asset, in no particular order.
std::span<const WebAsset> web_assets();

}  // namespace sluice::relay

// The WebSocket messages peers send (ws_messages.hpp): publishers' frames and text, workers'
// results and error events. Input: first byte picks the role, text/binary and the session's
// header (16 or 24 bytes), the rest is the message. Invariants: no crash or exception; a
// header is decoded only from a message that holds one and round-trips (flags included); an
// error event's text is at most its fixed words and a 100-byte quote.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <variant>

#include "fuzz_check.hpp"
#include "ws_messages.hpp"

using namespace sluice::relay;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const bool worker = (data[0] & 1) != 0;
  const bool text = (data[0] & 2) != 0;
  const std::size_t header =
      (data[0] & 4) != 0 ? sluice::ws::kFlaggedFrameHeaderBytes : sluice::ws::kFrameHeaderBytes;
  const std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  const auto checked = [&](const WsProblem& p) {
    FUZZ_CHECK(!p.error.empty() && p.error.size() <= 200);
  };
  if (worker) {
    const auto m = worker_message(text, bytes, header);
    if (const auto* p = std::get_if<WsProblem>(&m)) checked(*p);
    if (std::holds_alternative<sluice::ws::FrameHeader>(m))
      FUZZ_CHECK(!text && bytes.size() >= header);
    if (const auto* e = std::get_if<WsWorkerError>(&m)) FUZZ_CHECK(text && e->error.size() < size);
  } else {
    const auto m = publisher_message(text, bytes, header);
    if (const auto* p = std::get_if<WsProblem>(&m)) checked(*p);
    if (const auto* h = std::get_if<sluice::ws::FrameHeader>(&m)) {
      FUZZ_CHECK(!text && bytes.size() >= header);
      // The header round-trips: 16 bytes exactly; 24 but for the reserved bytes (sent as 0).
      const auto again = sluice::ws::encode_flagged(*h);
      const std::size_t compared = std::min<std::size_t>(header, 20);
      FUZZ_CHECK(std::string_view(reinterpret_cast<const char*>(again.data()), compared) ==
                 bytes.substr(0, compared));
      if (header == sluice::ws::kFrameHeaderBytes) FUZZ_CHECK(h->flags == 0);
    }
  }
  return 0;
}

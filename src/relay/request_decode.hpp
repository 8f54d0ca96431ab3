// A client's protobuf request decoded into its message, or why not (relay-internal): bad input
// gets a refusal that says what is wrong instead of gRPC's generic answers.
//
// - A message larger than the frame limit allows (max_request_bytes) is frame_too_big naming
//   STREAM_MAX_FRAME_SIZE_MB, before any parsing.
// - A string field that is not valid UTF-8 is bad_request naming the field. Protobuf reports
//   that only as an ERROR line in its log (to stderr, one per request: a client could flood
//   the relay's log with it); while a decode runs, the protobuf log lines of that thread are
//   taken as the refusal's message instead. Lines logged anywhere else go to the relay's log
//   (event "protobuf", event_log.hpp).
// - Anything else protobuf cannot parse is bad_request ("malformed").
//
// Thread-safety: any thread; decodes on different threads do not see each other's lines.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>

#include "refusal.hpp"
#include "sluice/relay/config.hpp"

namespace sluice::relay {

/// The largest request the relay decodes: one item at the frame limit, or a batch of up to
/// 1 MiB of payload (what sluice::client sends at most), with 2 MiB for the items' fields.
std::uint64_t max_request_bytes(const RelayConfig& config) noexcept;

/// Installs the capture (once; protobuf's log handler is not safe to change while other
/// threads log: call it before serving). decode_request() calls it too.
void capture_protobuf_log();

/// Runs `parse` (a protobuf parse of a `type` message of `size` bytes, true on success) and
/// says why the request is refused, if it is.
std::optional<Refusal> decode_request(std::string_view type, std::uint64_t size,
                                      std::uint64_t max_bytes, const std::function<bool()>& parse);

}  // namespace sluice::relay

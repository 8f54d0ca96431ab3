// gRPC core's own log lines, bounded (relay-internal). gRPC writes a line to stderr for every
// failed TLS handshake, every malformed HTTP/2 connection and such: one per hostile
// connection, so a client could flood the relay's log. Installed once per process (gRPC's log
// function is global): at most kBurst lines per kWindow pass, in gRPC's own form; the rest are
// counted, and told in one line with the first line of a later window
// ({"event":"grpc_log_suppressed","lines":N,...}).
//
// Thread-safety: gRPC calls the log function from any of its threads; the counters are locked.
#pragma once

#include <chrono>
#include <cstddef>

namespace sluice::relay {

inline constexpr std::size_t kGrpcLogBurst = 10;
inline constexpr std::chrono::seconds kGrpcLogWindow{10};

/// Routes gRPC's log through the bound (idempotent).
void bound_grpc_log();

}  // namespace sluice::relay

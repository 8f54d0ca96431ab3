// What a TCP socket has done with the bytes written to it (relay-internal): how many the peer
// has acknowledged so far, and how many the kernel still holds (unsent, or sent and not yet
// acknowledged). The subscriber judge's reading of a WebSocket subscriber: a peer whose TCP
// acknowledges bytes is reading (its receive window opens), whatever a user-space write's
// completion says; one that acknowledges nothing while bytes wait is not.
//
// Linux only (TCP_INFO's tcpi_bytes_acked, Linux 4.1; SIOCOUTQ). Written here because neither
// Asio nor glibc's <netinet/tcp.h> exposes the acknowledged count; <linux/tcp.h> does, and
// clashes with <netinet/tcp.h> (which Asio includes), hence a translation unit of its own.
#pragma once

#include <cstdint>
#include <optional>

namespace sluice::relay {

struct SocketProgress {
  std::uint64_t acked = 0;   // bytes the peer acknowledged since the connection began
  std::uint64_t unsent = 0;  // bytes the kernel holds for the peer (SIOCOUTQ)
};

/// `fd`'s progress; nullopt if it is not a connected TCP socket (or closed).
std::optional<SocketProgress> socket_progress(int fd) noexcept;

}  // namespace sluice::relay

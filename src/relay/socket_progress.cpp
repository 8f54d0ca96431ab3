#include "socket_progress.hpp"

#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

namespace sluice::relay {

std::optional<SocketProgress> socket_progress(int fd) noexcept {
  if (fd < 0) return std::nullopt;
  tcp_info info{};
  socklen_t len = sizeof(info);
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return std::nullopt;
  SocketProgress p;
  // (A kernel older than 4.1 fills less: tcpi_bytes_acked then reads 0, and only the unsent
  // count tells.)
  if (len >= offsetof(tcp_info, tcpi_bytes_acked) + sizeof(info.tcpi_bytes_acked))
    p.acked = info.tcpi_bytes_acked;
  int n = 0;
  if (::ioctl(fd, SIOCOUTQ, &n) == 0 && n > 0) p.unsent = static_cast<std::uint64_t>(n);
  return p;
}

}  // namespace sluice::relay

// TLS on the relay's ports (relay-internal): the certificate both ports serve, checked and
// reloadable while sessions run (TlsContexts), and, on the HTTP/WebSocket port (Asio's SSL
// streams over OpenSSL), a connection as the
// HTTP server hands it to a WebSocket session (Connection: the socket and, on a TLS port, its
// TLS session, whose next layer is a SocketRef so that it can follow the connection to the
// socket object of the event loop that serves it).
//
// Why a SocketRef rather than ssl::stream<tcp::socket>: a subscriber's connection moves from
// the loop that read its request to the loop that serves it (a new socket object on the same
// descriptor). The TLS session (OpenSSL's state, keys, buffered records) must move with it;
// Boost 1.74 cannot build an ssl::stream around an existing SSL handle, and ssl::stream's next
// layer cannot be rebound. A pointer can: CoalescingSocket points it at the socket it owns.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <memory>
#include <string>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it

#include "sluice/detail/thread_annotations.hpp"
#include "sluice/relay/config.hpp"

namespace sluice::relay {

namespace ssl = boost::asio::ssl;

/// A TCP socket, by pointer, as the next layer of an ssl::stream (see the file's comment).
/// Holds no socket; whoever points it keeps the socket alive while the stream uses it.
class SocketRef {
 public:
  using socket_type = boost::asio::ip::tcp::socket;
  using lowest_layer_type = socket_type;
  using executor_type = socket_type::executor_type;

  explicit SocketRef(socket_type& s) : s_(&s) {}
  void point_at(socket_type& s) noexcept { s_ = &s; }

  executor_type get_executor() noexcept { return s_->get_executor(); }
  lowest_layer_type& lowest_layer() noexcept { return *s_; }
  const lowest_layer_type& lowest_layer() const noexcept { return *s_; }

  template <class MutableBuffers, class Handler>
  auto async_read_some(const MutableBuffers& b, Handler&& h) {
    return s_->async_read_some(b, std::forward<Handler>(h));
  }
  template <class ConstBuffers, class Handler>
  auto async_write_some(const ConstBuffers& b, Handler&& h) {
    return s_->async_write_some(b, std::forward<Handler>(h));
  }
  template <class MutableBuffers>
  std::size_t read_some(const MutableBuffers& b, boost::system::error_code& ec) {
    return s_->read_some(b, ec);
  }
  template <class ConstBuffers>
  std::size_t write_some(const ConstBuffers& b, boost::system::error_code& ec) {
    return s_->write_some(b, ec);
  }
  template <class MutableBuffers>
  std::size_t read_some(const MutableBuffers& b) {
    return s_->read_some(b);
  }
  template <class ConstBuffers>
  std::size_t write_some(const ConstBuffers& b) {
    return s_->write_some(b);
  }

 private:
  socket_type* s_;
};

using TlsStream = ssl::stream<SocketRef>;

/// A connection accepted on the HTTP port: its socket, and its TLS session if the port speaks
/// TLS (handshake done; the session's next layer points at `socket`). Movable only by whoever
/// then points the session at the socket's new home (CoalescingSocket does).
struct Connection {
  boost::asio::ip::tcp::socket socket;
  std::unique_ptr<TlsStream> tls;  // null: plaintext
};

/// The common name of the verified client certificate `tls` presented (mutual TLS), else "".
std::string peer_certificate_cn(TlsStream& tls);

/// Both ports' TLS configuration: server.tls_cert_file, server.tls_key_file and (mutual TLS)
/// server.tls_client_ca_file, TLS 1.2 or later. Thread-safe.
///
/// Both ports serve only files the relay has checked. It reads them into a private copy (a
/// directory of its own under $TMPDIR, mode 0700, removed with this object), builds a TLS
/// context from the copy — which fails on a half-written or mismatched renewal — and only then
/// makes the copy the served one: the HTTP port's new connections take the new context, and
/// gRPC's file watcher, which reads the copy's fixed paths (served()), sees the new files
/// within its refresh (gRPC's C++ API takes certificates only from files or once, at start).
/// The served copy changes by renaming a symlink over the last, so gRPC never reads a key
/// from one renewal and a certificate from another. Sessions already open keep theirs.
class TlsContexts {
 public:
  /// Throws std::runtime_error naming the setting whose file cannot be used, or the directory
  /// the copy cannot be made in. Off (current() null) without a certificate.
  explicit TlsContexts(const RelayConfig& config);
  ~TlsContexts();
  TlsContexts(const TlsContexts&) = delete;
  TlsContexts& operator=(const TlsContexts&) = delete;
  bool enabled() const { return enabled_; }
  std::shared_ptr<ssl::context> current() const;
  /// Reads the files again (SIGHUP, or a change files_changed() saw); on failure keeps
  /// serving what it had and returns why, naming the setting ("" on success).
  std::string reload();
  /// Whether a configured file changed (its size, time or inode) since it was last read. A
  /// renewal written in steps shows one change per step; each is read and checked.
  bool files_changed();
  /// Contexts built so far (1 at start, one more per successful reload).
  std::uint64_t generation() const;

  /// The served copy's paths, unchanged across reloads (ca empty without a client CA).
  struct Files {
    std::string key;
    std::string cert;
    std::string ca;
  };
  const Files& served() const { return served_; }

 private:
  // Copies the configured files into version `n` of the copy and checks them; throws.
  std::shared_ptr<ssl::context> stage(std::uint64_t n) SLUICE_REQUIRES(reload_mu_);
  void serve(std::uint64_t n) SLUICE_REQUIRES(reload_mu_);  // the symlink now names version n
  static std::shared_ptr<ssl::context> build(const Files& from, const RelayConfig& names);
  std::string signature() const;
  const RelayConfig& config_;
  const bool enabled_;
  std::string dir_;  // the private copy ("" when off)
  Files served_;
  Mutex reload_mu_;  // one reload at a time (SIGHUP's thread, the main loop's file check)
  std::string seen_ SLUICE_GUARDED_BY(reload_mu_);  // the files' signature when last read
  mutable Mutex mu_;
  std::shared_ptr<ssl::context> current_ SLUICE_GUARDED_BY(mu_);
  std::uint64_t generation_ SLUICE_GUARDED_BY(mu_) = 0;
};

}  // namespace sluice::relay

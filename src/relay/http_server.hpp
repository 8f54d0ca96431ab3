// The relay's HTTP/1.1 endpoint (Boost.Beast): one request per connection, answered by a
// handler, or a WebSocket upgrade handed over with its connection. With TLS configured
// (TlsContexts) every connection is https/wss: the TLS handshake first, within the same
// deadline as the request; a client that speaks plaintext HTTP to it gets a plaintext 400
// saying so. Relay-internal.
#pragma once

#include <fcntl.h>
#include <openssl/err.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

#include "tls.hpp"

namespace sluice::relay {

/// An answer to an HTTP request.
struct HttpResponse {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers{};  // more header fields
};

/// Who is at the other end as the transport knows it: its IP address, the relay's address it
/// reached (the socket's local address), and under mutual TLS the common name of the client
/// certificate the relay verified (else empty).
struct HttpPeer {
  std::string certificate_cn;
  std::string address;
  std::string local_address;
};

/// How large the body of a request other than GET may be, and the setting that says so (named
/// in the 413).
struct HttpBodyLimit {
  std::uint64_t bytes = 8 * 1024;
  std::string setting;
};

// A small HTTP/1.1 server on the relay's I/O thread: one request per connection.
class HttpServer {
 public:
  /// A GET request's answer.
  using Request = boost::beast::http::request<boost::beast::http::string_body>;
  using Handler = std::function<HttpResponse(const Request& request, const HttpPeer& peer)>;
  /// A WebSocket upgrade request: takes the connection (nullopt), or answers it.
  using Upgrade = std::function<std::optional<HttpResponse>(
      Connection& connection, Request& request, const HttpPeer& peer)>;
  /// A request of another method (POST, DELETE, OPTIONS), answered later: `reply` is called
  /// once, from any thread, with the answer. Its body may be up to `max_body` bytes.
  using Reply = std::function<void(HttpResponse answer)>;
  using Other = std::function<void(Request& request, const HttpPeer& peer, Reply reply)>;
  using BodyLimit = HttpBodyLimit;
  /// An accept that failed (out of file descriptors, say): its reason ("EMFILE", ...).
  using AcceptError = std::function<void(const std::string& reason)>;
  /// A TLS handshake that failed: OpenSSL's reason ("wrong version number", ...).
  using TlsError = std::function<void(const std::string& reason)>;
  /// What the server does with what it accepts. `handler` and `upgrade` are required.
  struct Options {
    std::string host;
    std::uint16_t port = 0;
    /// A client has this long to complete its TLS handshake (if `tls` is on), send its
    /// request and read the answer (or upgrade).
    std::chrono::milliseconds timeout{3000};
    Handler handler;
    Upgrade upgrade;
    AcceptError accept_error{};
    const TlsContexts* tls = nullptr;  // null or off: plaintext; must outlive the server
    TlsError tls_error{};
    Other other{};
    BodyLimit max_body{};
    /// Named in the 503 a client gets while the relay is out of descriptors.
    std::string descriptor_hint;
  };
  HttpServer(boost::asio::io_context& io, Options options)
      : acceptor_(io),
        retry_(io),
        timeout_(options.timeout),
        handler_(std::move(options.handler)),
        upgrade_(std::move(options.upgrade)),
        accept_error_(std::move(options.accept_error)),
        tls_(options.tls != nullptr && options.tls->enabled() ? options.tls : nullptr),
        tls_error_(std::move(options.tls_error)),
        other_(std::move(options.other)),
        max_body_(std::move(options.max_body)),
        descriptor_hint_(std::move(options.descriptor_hint)) {
    namespace ip = boost::asio::ip;
    const std::string& host = options.host;
    boost::system::error_code ec;
    const ip::tcp::endpoint endpoint(ip::make_address(host, ec), options.port);
    if (ec) throw std::runtime_error("relay: invalid host " + host + " (server.host)");
    acceptor_.open(endpoint.protocol());
    acceptor_.set_option(ip::tcp::acceptor::reuse_address(true));
    acceptor_.bind(endpoint, ec);
    if (ec) {
      throw std::runtime_error("relay: cannot listen on " + host + ":" +
                               std::to_string(options.port) +
                               " for HTTP (server.http_port / SLUICE_HTTP_PORT): " + ec.message());
    }
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    spare_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    accept();
  }
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;
  HttpServer(HttpServer&&) = delete;
  HttpServer& operator=(HttpServer&&) = delete;
  ~HttpServer() {  // after the I/O thread has stopped
    if (spare_ >= 0) ::close(spare_);
  }
  std::uint16_t port() const { return port_; }

 private:
  struct Session {
    explicit Session(boost::asio::ip::tcp::socket s)
        : connection{std::move(s), nullptr}, deadline(connection.socket.get_executor()) {}
    Connection connection;               // (handed over to a WebSocket session on upgrade)
    boost::asio::steady_timer deadline;  // closes a client that takes too long
    HttpPeer peer;
    boost::beast::flat_buffer buffer;
    boost::beast::http::request_parser<boost::beast::http::string_body> parser;
    Request request;
    boost::beast::http::response<boost::beast::http::string_body> response;
  };

  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, boost::asio::ip::tcp::socket s) {
      if (ec && ec != boost::asio::error::operation_aborted && acceptor_.is_open()) {
        // Out of descriptors (or memory) the connection stays queued and the next accept
        // fails at once: retrying at once would spin a core and starve this loop's sessions.
        // Wait, then try again (a session that ends meanwhile frees a descriptor).
        if (accept_error_) accept_error_(reason(ec));
        if (refuse_with_spare()) {  // (a client waiting gets an answer; the next may wait too)
          accept();
          return;
        }
        retry_.expires_after(kAcceptRetry);
        retry_.async_wait([this](boost::system::error_code wait) {
          if (!wait && acceptor_.is_open()) accept();
        });
        return;
      }
      if (!ec) {
        // Real-time frames and small control events go out now, not after Nagle's wait for
        // the peer's (delayed) acknowledgement: up to 40 ms per small message otherwise.
        boost::system::error_code opt;
        s.set_option(boost::asio::ip::tcp::no_delay(true), opt);
        const auto remote = s.remote_endpoint(opt);
        const std::string address = opt ? std::string("?") : remote.address().to_string();
        const auto local = s.local_endpoint(opt);
        auto session = std::make_shared<Session>(std::move(s));
        session->peer.address = address;
        session->peer.local_address = opt ? std::string() : local.address().to_string();
        start(session);
      }
      if (acceptor_.is_open()) accept();
    });
  }

  // Calls `f` with the stream the session's bytes go through: its TLS session, or its socket.
  template <class F>
  static void on_stream(Session& s, F&& f) {
    if (s.connection.tls) {
      f(*s.connection.tls);
    } else {
      f(s.connection.socket);
    }
  }

  // The deadline for the whole exchange, then TLS (if on), then the request.
  void start(const std::shared_ptr<Session>& session) {
    arm_deadline(session, timeout_);
    if (tls_ == nullptr) {
      serve(session);
      return;
    }
    // A TLS client's first byte opens a handshake record (22); anything else is a plaintext
    // client, which gets a plaintext answer saying what this port speaks.
    session->connection.socket.async_wait(
        boost::asio::socket_base::wait_read, [this, session](boost::beast::error_code ec) {
          if (ec) return;
          auto& socket = session->connection.socket;
          unsigned char first = 0;
          boost::system::error_code peek;
          const std::size_t n = socket.receive(boost::asio::buffer(&first, 1),
                                               boost::asio::socket_base::message_peek, peek);
          if (peek || n == 0) return;
          if (first != kTlsHandshakeRecord) {
            if (tls_error_) tls_error_("plaintext");
            respond(session, 11,
                    {400, "text/plain; charset=utf-8",
                     "this port speaks TLS: use https:// or wss:// (server.tls_cert_file)\n"});
            return;
          }
          session->connection.tls = std::make_unique<TlsStream>(socket, *tls_->current());
          session->connection.tls->async_handshake(
              ssl::stream_base::server, [this, session](boost::beast::error_code hs) {
                if (hs) {
                  if (tls_error_ && hs != boost::asio::error::operation_aborted)
                    tls_error_(tls_reason(hs));
                  return;
                }
                session->peer.certificate_cn = peer_certificate_cn(*session->connection.tls);
                serve(session);
              });
        });
  }

  // The header first: a request of another method than GET (an SDP offer) may carry a body of
  // up to max_body_; everything else, 8 KiB.
  void serve(const std::shared_ptr<Session>& session) {
    namespace http = boost::beast::http;
    session->parser.header_limit(8 * 1024);  // requests here are small
    // (Beast checks a Content-Length against the limit as the header arrives: the larger
    // limit first, the smaller once the method is known.)
    session->parser.body_limit(other_ ? std::max(max_body_.bytes, kBodyLimit) : kBodyLimit);
    on_stream(*session, [&](auto& stream) {
      http::async_read_header(
          stream, session->buffer, session->parser,
          [this, session](boost::beast::error_code ec, std::size_t /*bytes*/) {
            if (ec) {
              read(session, ec);
              return;
            }
            const bool other = session->parser.get().method() != http::verb::get && other_;
            const std::uint64_t limit = other ? max_body_.bytes : kBodyLimit;
            if (const auto length = session->parser.content_length(); length && *length > limit) {
              read(session, http::error::body_limit);
              return;
            }
            session->parser.body_limit(limit);
            on_stream(*session, [&](auto& s) {
              http::async_read(s, session->buffer, session->parser,
                               [this, session](boost::beast::error_code e, std::size_t /*bytes*/) {
                                 read(session, e);
                               });
            });
          });
    });
  }

  void read(const std::shared_ptr<Session>& session, boost::beast::error_code ec) {
    namespace http = boost::beast::http;
    if (ec) {  // the client went away, or sent what is not a request: say why
      if (auto bad = malformed(ec, *session)) respond(session, 11, std::move(*bad));
      return;
    }
    session->request = session->parser.release();
    auto& request = session->request;
    HttpResponse answer;
    if (boost::beast::websocket::is_upgrade(request)) {
      session->deadline.cancel();  // (the WebSocket has its own)
      auto refused = upgrade_(session->connection, request, session->peer);
      if (!refused) return;  // a WebSocket now
      answer = std::move(*refused);
    } else if (request.method() != http::verb::get && other_) {
      // Answered later (its handler bounds how long), on this connection's executor; the
      // client then has the timeout again to read the answer.
      session->deadline.cancel();
      const unsigned version = request.version();
      other_(request, session->peer, [session, version, t = timeout_](HttpResponse later) {
        auto& socket = session->connection.socket;
        boost::asio::post(socket.get_executor(), [session, version, t, a = std::move(later)]() {
          arm_deadline(session, t);
          respond(session, version, a);
        });
      });
      return;
    } else if (request.method() != http::verb::get) {
      answer = {405, "text/plain; charset=utf-8", "only GET is served here\n"};
    } else {
      answer = handler_(request, session->peer);
    }
    respond(session, request.version(), std::move(answer));
  }

  // The client has `timeout` from now (to send its request, or to read its answer).
  static void arm_deadline(const std::shared_ptr<Session>& session,
                           std::chrono::milliseconds timeout) {
    session->deadline.expires_after(timeout);
    session->deadline.async_wait(
        [w = std::weak_ptr<Session>(session)](boost::beast::error_code ec) {
          if (auto s = w.lock(); s && !ec) {
            boost::system::error_code ignored;
            s->connection.socket.close(ignored);  // ends the read or write in flight
          }
        });
  }

  // OpenSSL's reason for a failed handshake ("wrong version number", "certificate verify
  // failed", ...), else the error's message.
  static std::string tls_reason(const boost::beast::error_code& ec) {
    if (ec.category() == boost::asio::error::get_ssl_category()) {
      const char* r = ERR_reason_error_string(static_cast<unsigned long>(ec.value()));
      if (r != nullptr) return r;
    }
    return ec.message();
  }

  // The answer to what could not be read as a request: 414 (request line over the limit), 431
  // (headers over it), 413 (a body over it), 400 (anything else); none if the peer just left.
  std::optional<HttpResponse> malformed(boost::beast::error_code ec, const Session& s) const {
    namespace http = boost::beast::http;
    if (ec == http::error::end_of_stream || ec == boost::asio::error::eof ||
        ec == boost::asio::error::operation_aborted || ec == boost::asio::error::connection_reset ||
        ec == ssl::error::stream_truncated)
      return std::nullopt;
    const std::string_view text(static_cast<const char*>(s.buffer.data().data()), s.buffer.size());
    if (ec == http::error::header_limit) {
      const bool line_done = text.find("\r\n") != std::string_view::npos;
      return HttpResponse{line_done ? 431U : 414U, "text/plain; charset=utf-8",
                          line_done ? "request headers over 8 KiB\n"
                                    : "request line over 8 KiB (a shorter target)\n"};
    }
    if (ec == http::error::body_limit) {
      const bool other = s.parser.get().method() != http::verb::get && other_;
      return HttpResponse{413, "text/plain; charset=utf-8",
                          other ? "request body over " + std::to_string(max_body_.bytes) +
                                      " bytes (" + max_body_.setting + ")\n"
                                : "request body over 8 KiB\n"};
    }
    return HttpResponse{400, "text/plain; charset=utf-8",
                        "not an HTTP/1.1 request: " + ec.message() + "\n"};
  }

  static void respond(const std::shared_ptr<Session>& session, unsigned version,
                      HttpResponse answer) {
    namespace http = boost::beast::http;
    auto& res = session->response;
    res.version(version);
    res.result(answer.status);
    res.set(http::field::content_type, answer.content_type);
    res.set(http::field::connection, "close");
    if (answer.status == 401) res.set(http::field::www_authenticate, "Bearer realm=\"sluice\"");
    for (const auto& [name, value] : answer.headers) res.set(name, value);
    res.body() = std::move(answer.body);
    res.prepare_payload();
    // (A TLS answer ends with the TCP shutdown, not close_notify: the response's length
    // tells where it ends, as over plaintext.)
    on_stream(*session, [&](auto& stream) {
      http::async_write(stream, res, [session](boost::beast::error_code, std::size_t) {
        session->deadline.cancel();
        boost::system::error_code ignored;
        session->connection.socket.shutdown(boost::asio::ip::tcp::socket::shutdown_both, ignored);
      });
    });
  }

  // Out of descriptors, a client would wait unanswered until one is free: the spare descriptor
  // (kept open for this) is given up to accept it, refuse it (a plaintext 503 naming the limit;
  // on a TLS port, closed at once) and take the spare back. False if there is no spare or no
  // client could be accepted with it.
  bool refuse_with_spare() {
    if (spare_ < 0) return false;
    ::close(spare_);
    spare_ = -1;
    boost::asio::ip::tcp::socket s(acceptor_.get_executor());
    boost::system::error_code ec;
    acceptor_.non_blocking(true, ec);
    acceptor_.accept(s, ec);
    acceptor_.non_blocking(false, ec);
    const bool refused = s.is_open();
    if (refused && tls_ == nullptr) {
      const std::string body = "the relay is out of file descriptors (" + descriptor_hint_ + ")\n";
      const std::string answer =
          "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
          "Retry-After: 1\r\nConnection: close\r\nContent-Length: " +
          std::to_string(body.size()) + "\r\n\r\n" + body;
      s.non_blocking(true, ec);
      boost::asio::write(s, boost::asio::buffer(answer), ec);  // (fits an empty send buffer)
      s.shutdown(boost::asio::ip::tcp::socket::shutdown_send, ec);
    }
    s.close(ec);
    spare_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    return refused;
  }

  // The system's name for an accept error (EMFILE, ENFILE, ENOBUFS, ...), else its message.
  static std::string reason(const boost::system::error_code& ec) {
    switch (ec.value()) {
      case EMFILE:
        return "EMFILE";
      case ENFILE:
        return "ENFILE";
      case ENOBUFS:
        return "ENOBUFS";
      case ENOMEM:
        return "ENOMEM";
      default:
        return ec.message();
    }
  }

  static constexpr std::chrono::milliseconds kAcceptRetry{100};
  static constexpr std::uint64_t kBodyLimit = 8 * 1024;  // GET (and every request without `other`)
  static constexpr unsigned char kTlsHandshakeRecord = 22;
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::steady_timer retry_;  // the next accept after a failed one
  std::chrono::milliseconds timeout_;
  Handler handler_;
  Upgrade upgrade_;
  AcceptError accept_error_;
  const TlsContexts* tls_;  // null: plaintext
  TlsError tls_error_;
  Other other_;
  BodyLimit max_body_;
  std::string descriptor_hint_;
  int spare_ = -1;  // a descriptor kept to refuse clients with when out of them (main loop)
  std::uint16_t port_ = 0;
};

}  // namespace sluice::relay

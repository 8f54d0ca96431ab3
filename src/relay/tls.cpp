#include "tls.hpp"

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <stdexcept>
#include <string_view>

namespace sluice::relay {

std::string peer_certificate_cn(TlsStream& tls) {
  SSL* ssl = tls.native_handle();
  if (SSL_get_verify_result(ssl) != X509_V_OK) return {};
  X509* cert = SSL_get1_peer_certificate(ssl);
  if (cert == nullptr) return {};
  std::string cn;
  const X509_NAME* subject = X509_get_subject_name(cert);
  const int at = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (at >= 0) {
    unsigned char* utf8 = nullptr;
    const int n =
        ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, at)));
    if (n > 0) cn.assign(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(n));
    OPENSSL_free(utf8);
  }
  X509_free(cert);
  return cn;
}

TlsContexts::TlsContexts(const RelayConfig& config)
    : config_(config), enabled_(!config.tls_cert_file.empty()) {
  if (!enabled_) return;
  auto first = build(config_);
  const MutexLock lock(mu_);
  current_ = std::move(first);
  generation_ = 1;
}

std::shared_ptr<ssl::context> TlsContexts::current() const {
  const MutexLock lock(mu_);
  return current_;
}

std::uint64_t TlsContexts::generation() const {
  const MutexLock lock(mu_);
  return generation_;
}

std::string TlsContexts::reload() {
  if (!enabled_) return "no certificate configured (server.tls_cert_file)";
  try {
    auto next = build(config_);
    const MutexLock lock(mu_);
    current_ = std::move(next);
    ++generation_;
    return {};
  } catch (const std::exception& e) {
    return e.what();
  }
}

std::shared_ptr<ssl::context> TlsContexts::build(const RelayConfig& config) {
  auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                   ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                   ssl::context::single_dh_use);
  // OpenSSL gives its record buffers back while a connection is idle (Asio's own TLS buffers,
  // 4 x 17 KiB per connection, stay: see docs/operations.md).
  SSL_CTX_set_mode(ctx->native_handle(), SSL_MODE_RELEASE_BUFFERS);
  const auto use = [](const std::string& path, const char* setting,
                      const boost::system::error_code& ec) {
    if (ec) {
      throw std::runtime_error("relay: cannot use " + path + " (" + setting + "): " + ec.message());
    }
  };
  boost::system::error_code ec;
  ctx->use_certificate_chain_file(config.tls_cert_file, ec);
  use(config.tls_cert_file, "server.tls_cert_file", ec);
  ctx->use_private_key_file(config.tls_key_file, ssl::context::pem, ec);
  use(config.tls_key_file, "server.tls_key_file", ec);
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    throw std::runtime_error("relay: the key in " + config.tls_key_file +
                             " (server.tls_key_file) does not match the certificate in " +
                             config.tls_cert_file + " (server.tls_cert_file)");
  }
  if (!config.tls_client_ca_file.empty()) {
    ctx->load_verify_file(config.tls_client_ca_file, ec);
    use(config.tls_client_ca_file, "server.tls_client_ca_file", ec);
    // Clients are told which CA to present a certificate of; without one they are refused.
    SSL_CTX_set_client_CA_list(ctx->native_handle(),
                               SSL_load_client_CA_file(config.tls_client_ca_file.c_str()));
    ctx->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
    // (Resumed sessions keep their verified certificate; OpenSSL requires a context id.)
    static constexpr std::string_view kId = "sluice";
    SSL_CTX_set_session_id_context(ctx->native_handle(),
                                   reinterpret_cast<const unsigned char*>(kId.data()),
                                   static_cast<unsigned>(kId.size()));
  }
  return ctx;
}

}  // namespace sluice::relay

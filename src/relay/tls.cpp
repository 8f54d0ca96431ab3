#include "tls.hpp"

#include <fcntl.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>  // mkdtemp
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string_view>
#include <system_error>

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

namespace {

// The whole of `path`, or a runtime_error naming `setting`.
std::string read_file(const std::string& path, const char* setting) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes;
  if (in.is_open()) bytes.assign(std::istreambuf_iterator<char>(in), {});
  if (!in.is_open() || in.bad()) {
    throw std::runtime_error("relay: cannot read " + path + " (" + setting +
                             "): " + std::generic_category().message(errno));
  }
  return bytes;
}

// Writes `bytes` to `path`, readable by this user only.
void write_private(const std::string& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = fd >= 0;
  for (std::size_t at = 0; ok && at < bytes.size();) {
    const auto n = ::write(fd, bytes.data() + at, bytes.size() - at);
    ok = n > 0;
    if (ok) at += static_cast<std::size_t>(n);
  }
  const int err = errno;
  if (fd >= 0) ::close(fd);
  if (!ok) {
    throw std::runtime_error("relay: cannot write " + path + ": " +
                             std::generic_category().message(err));
  }
}

std::string version_dir(const std::string& dir, std::uint64_t n) {
  return dir + "/v" + std::to_string(n);
}

}  // namespace

TlsContexts::TlsContexts(const RelayConfig& config)
    : config_(config), enabled_(!config.tls_cert_file.empty()) {
  if (!enabled_) return;
  std::error_code ec;
  const auto tmp = std::filesystem::temp_directory_path(ec);  // ($TMPDIR, else /tmp)
  std::string templ = (ec ? std::string("/tmp") : tmp.string()) + "/sluice-tls-XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) {
    throw std::runtime_error("relay: cannot make a private directory for the TLS files (" + templ +
                             ", TMPDIR): " + std::generic_category().message(errno));
  }
  dir_ = templ;
  served_.key = dir_ + "/current/key.pem";
  served_.cert = dir_ + "/current/cert.pem";
  if (!config.tls_client_ca_file.empty()) served_.ca = dir_ + "/current/ca.pem";
  const MutexLock reloading(reload_mu_);
  try {
    auto first = stage(1);
    serve(1);
    const MutexLock lock(mu_);
    current_ = std::move(first);
    generation_ = 1;
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
    throw;
  }
}

TlsContexts::~TlsContexts() {
  if (dir_.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
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
  const MutexLock reloading(reload_mu_);
  const std::uint64_t n = generation() + 1;
  try {
    auto next = stage(n);
    serve(n);
    const MutexLock lock(mu_);
    current_ = std::move(next);
    generation_ = n;
    return {};
  } catch (const std::exception& e) {
    std::error_code ignored;
    std::filesystem::remove_all(version_dir(dir_, n), ignored);
    return e.what();
  }
}

std::string TlsContexts::signature() const {
  std::string sig;
  for (const auto* path :
       {&config_.tls_key_file, &config_.tls_cert_file, &config_.tls_client_ca_file}) {
    struct stat st {};
    if (path->empty() || ::stat(path->c_str(), &st) != 0) {
      sig += "-;";
      continue;
    }
    sig += std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
           std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + ";";
  }
  return sig;
}

bool TlsContexts::files_changed() {
  if (!enabled_) return false;
  const std::string now = signature();
  const MutexLock reloading(reload_mu_);
  return now != seen_;
}

std::shared_ptr<ssl::context> TlsContexts::stage(std::uint64_t n) {
  seen_ = signature();  // (before reading: a change while it reads shows again)
  const std::string dir = version_dir(dir_, n);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (!std::filesystem::create_directory(dir, ec)) {
    throw std::runtime_error("relay: cannot make " + dir + ": " + ec.message());
  }
  Files copy{dir + "/key.pem", dir + "/cert.pem", ""};
  write_private(copy.key, read_file(config_.tls_key_file, "server.tls_key_file"));
  write_private(copy.cert, read_file(config_.tls_cert_file, "server.tls_cert_file"));
  if (!config_.tls_client_ca_file.empty()) {
    copy.ca = dir + "/ca.pem";
    write_private(copy.ca, read_file(config_.tls_client_ca_file, "server.tls_client_ca_file"));
  }
  return build(copy, config_);
}

void TlsContexts::serve(std::uint64_t n) {
  const std::string link = dir_ + "/current";
  const std::string next = dir_ + "/current.next";
  ::unlink(next.c_str());
  std::string target = "v";
  target += std::to_string(n);  // (relative: the directory's own version n)
  if (::symlink(target.c_str(), next.c_str()) != 0 || ::rename(next.c_str(), link.c_str()) != 0) {
    throw std::runtime_error("relay: cannot switch the served TLS files in " + dir_ + ": " +
                             std::generic_category().message(errno));
  }
  // The version before the last may still be open in gRPC's watcher; the one before that not.
  if (n > 2) {
    std::error_code ignored;
    std::filesystem::remove_all(version_dir(dir_, n - 2), ignored);
  }
}

// A context from the copy `from`; errors name the configured file and its setting.
std::shared_ptr<ssl::context> TlsContexts::build(const Files& from, const RelayConfig& names) {
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
  ctx->use_certificate_chain_file(from.cert, ec);
  use(names.tls_cert_file, "server.tls_cert_file", ec);
  ctx->use_private_key_file(from.key, ssl::context::pem, ec);
  use(names.tls_key_file, "server.tls_key_file", ec);
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    throw std::runtime_error("relay: the key in " + names.tls_key_file +
                             " (server.tls_key_file) does not match the certificate in " +
                             names.tls_cert_file + " (server.tls_cert_file)");
  }
  if (!from.ca.empty()) {
    ctx->load_verify_file(from.ca, ec);
    use(names.tls_client_ca_file, "server.tls_client_ca_file", ec);
    // Clients are told which CA to present a certificate of; without one they are refused.
    SSL_CTX_set_client_CA_list(ctx->native_handle(), SSL_load_client_CA_file(from.ca.c_str()));
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

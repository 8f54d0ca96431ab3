// Sluice — TLS options shared by the relay's clients (gRPC Publisher/Subscriber, StageWorker).
#pragma once

#include <string>

namespace sluice::client {

/// TLS to the relay (PEM files): on when `ca_file` is set; `cert_file` and `key_file` are this
/// client's certificate for mutual TLS (a relay with server.tls_client_ca_file). The relay's
/// certificate must name the host the client connects to (its subjectAltName).
struct TlsOptions {
  std::string ca_file{};    // the CA that signed the relay's certificate
  std::string cert_file{};  // mutual TLS: this client's certificate chain
  std::string key_file{};   // mutual TLS: its key
};

}  // namespace sluice::client

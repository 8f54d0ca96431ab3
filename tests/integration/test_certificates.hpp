// Certificates made at test time by the openssl command (scripts/make-test-certs.sh), in a
// temporary directory removed with the object. Needs SLUICE_SOURCE_FROM_BINARY defined.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "build_paths.hpp"

namespace sluice::testing {

// A CA, a relay certificate for 127.0.0.1 it signs, a client certificate (CN camera-1) it
// signs, and another CA; in a temporary directory (scripts/make-test-certs.sh).
struct Certificates {
  Certificates() {
    char name[] = "/tmp/sluice_tls_XXXXXX";
    dir = mkdtemp(name);
    ok = std::system((source_dir() + "/scripts/make-test-certs.sh " + dir).c_str()) == 0;
  }
  Certificates(const Certificates&) = delete;
  Certificates& operator=(const Certificates&) = delete;
  Certificates(Certificates&&) = delete;
  Certificates& operator=(Certificates&&) = delete;
  ~Certificates() { (void)std::system(("rm -rf " + dir).c_str()); }
  std::string path(const std::string& file) const { return dir + "/" + file; }
  std::string read(const std::string& file) const {
    std::ifstream in(path(file));
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  }
  std::string dir;
  bool ok = false;
};

}  // namespace sluice::testing

// The configuration loader: a TOML file and environment variables (input: the file's text, a
// NUL, then VAR=value lines). Invariants: bad input is a ConfigError, never another exception
// or a crash; a configuration that loads prints (`sluice config`) as TOML that loads again to
// the same configuration.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "sluice/relay/config.hpp"

namespace {

// The text as a file the loader can open (in memory; no disk).
class MemFile {
 public:
  explicit MemFile(std::string_view text) : fd_(memfd_create("sluice-fuzz.toml", 0)) {
    FUZZ_CHECK(fd_ >= 0);
    FUZZ_CHECK(write(fd_, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
  }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  ~MemFile() { close(fd_); }
  std::string path() const { return "/proc/self/fd/" + std::to_string(fd_); }

 private:
  int fd_;
};

std::map<std::string, std::string> parse_env(std::string_view text) {
  std::map<std::string, std::string> env;
  while (!text.empty()) {
    const auto nl = text.find('\n');
    const std::string_view line = text.substr(0, nl);
    if (const auto eq = line.find('='); eq != std::string_view::npos)
      env[std::string(line.substr(0, eq))] = std::string(line.substr(eq + 1));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return env;
}

std::string load_and_print(const std::string& toml, const std::map<std::string, std::string>& env) {
  const MemFile file(toml);
  const auto config =
      sluice::load_relay_config(file.path(),
                                [&env](const char* name) -> const char* {
                                  const auto it = env.find(name);
                                  return it == env.end() ? nullptr : it->second.c_str();
                                },
                                {});
  return sluice::to_toml(config);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const auto nul = in.find('\0');
  const std::string toml(in.substr(0, nul));
  const auto env = nul == std::string_view::npos ? std::map<std::string, std::string>{}
                                                 : parse_env(in.substr(nul + 1));
  std::string printed;
  try {
    printed = load_and_print(toml, env);
  } catch (const sluice::ConfigError&) {
    return 0;  // refused, with its message: fine
  }
  // What `sluice config` prints loads again, alone, to what it was.
  std::string again;
  try {
    again = load_and_print(printed, {});
  } catch (const sluice::ConfigError& e) {
    std::fprintf(stderr, "printed configuration does not load: %s\n%s\n", e.what(),
                 printed.c_str());
    std::abort();
  }
  FUZZ_CHECK(again == printed);
  return 0;
}

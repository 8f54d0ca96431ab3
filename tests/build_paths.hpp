// Where the build put what a test or benchmark runs, found at run time from the executable's
// own path. The paths are compiled in relative to the executable's directory
// (SLUICE_SOURCE_FROM_BINARY and the like, set in CMake), not as absolute paths: a compile
// with a clone's path in it differs in every clone, and ccache could never serve CI's clean
// clone what another clone compiled.
#pragma once

#include <filesystem>
#include <string>
#include <system_error>

namespace sluice::testing {

/// `relative`, taken from the directory of the running executable.
inline std::string beside_binary(const std::string& relative) {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return (exe.parent_path() / relative).lexically_normal().string();
}

#ifdef SLUICE_SOURCE_FROM_BINARY
/// The source tree (docs/, scripts/).
inline std::string source_dir() {
  return beside_binary(SLUICE_SOURCE_FROM_BINARY);
}
#endif

}  // namespace sluice::testing

#include "process_metrics.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace sluice::relay {

namespace {

// /proc/self/stat's fields after the command (which may hold spaces: it ends at the last ')'),
// numbered as in proc(5) from field 3 (state) on: out[0] is field 3.
std::vector<std::string> stat_fields() {
  std::ifstream in("/proc/self/stat");
  const std::string line{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const auto close = line.rfind(')');
  std::vector<std::string> out;
  if (close == std::string::npos) return out;
  std::istringstream rest(line.substr(close + 1));
  for (std::string f; rest >> f;) out.push_back(f);
  return out;
}

// Field `number` (proc(5)'s numbering) of `f`, read once per series and scrape.
double field(const std::vector<std::string>& f, std::size_t number) {
  return number >= 3 && number - 3 < f.size() ? std::stod(f[number - 3]) : 0.0;
}
double stat_field(std::size_t number) {
  return field(stat_fields(), number);
}

double ticks_per_second() {
  const long t = sysconf(_SC_CLK_TCK);
  return t > 0 ? static_cast<double>(t) : 100.0;
}

// The system's boot, Unix seconds (/proc/stat's btime).
double boot_time() {
  std::ifstream in("/proc/stat");
  for (std::string key; in >> key;) {
    if (key == "btime") {
      double v = 0;
      in >> v;
      return v;
    }
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0.0;
}

}  // namespace

void add_process_metrics(metrics::Registry& registry) {
  const double ticks = ticks_per_second();
  registry.counter_fn("process_cpu_seconds_total", "User and system CPU time spent, in seconds", {},
                      [ticks] {
                        const auto f = stat_fields();  // (user and system time: one read)
                        return (field(f, 14) + field(f, 15)) / ticks;
                      });
  registry.gauge_fn("process_resident_memory_bytes", "Resident memory size in bytes", {},
                    [] { return stat_field(24) * static_cast<double>(sysconf(_SC_PAGESIZE)); });
  registry.gauge_fn("process_virtual_memory_bytes", "Virtual memory size in bytes", {},
                    [] { return stat_field(23); });
  registry.gauge_fn("process_open_fds", "Open file descriptors", {}, [] {
    std::error_code ec;
    double n = 0;
    for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end;
         it.increment(ec))
      n += 1;
    return n;
  });
  registry.gauge_fn(
      "process_max_fds", "The limit of open file descriptors (RLIMIT_NOFILE)", {}, [] {
        rlimit r{};
        return getrlimit(RLIMIT_NOFILE, &r) == 0 ? static_cast<double>(r.rlim_cur) : 0.0;
      });
  const double started = boot_time() + stat_field(22) / ticks;
  registry.gauge_fn("process_start_time_seconds",
                    "Start time of the process since the Unix epoch, in seconds", {},
                    [started] { return started; });
}

}  // namespace sluice::relay

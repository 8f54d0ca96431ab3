// Names clients choose: topic names (topic_name_problem) and subscriber/worker names, which
// become label values in /metrics. Invariants: a topic name is accepted only if it is 1-128
// bytes of [A-Za-z0-9._-]; a name cut for display is valid UTF-8 within 128 bytes; /metrics
// with that name as a label value is valid UTF-8, one series per line, the value escaped.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "sluice/metrics.hpp"
#include "sluice/relay/config.hpp"

namespace {

bool topic_chars(std::string_view s) {
  for (const char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view raw(reinterpret_cast<const char*>(data), size);
  const bool accepted = sluice::topic_name_problem(raw).empty();
  FUZZ_CHECK(accepted == (!raw.empty() && raw.size() <= 128 && topic_chars(raw)));

  const std::string name = sluice::metrics::valid_utf8(raw, 128);
  FUZZ_CHECK(name.size() <= 128);
  FUZZ_CHECK(sluice::metrics::valid_utf8(name) == name);

  sluice::metrics::Registry registry;
  registry.counter("sluice_fuzz_total", "A series labelled with the name", {{"subscriber", name}})
      .inc();
  const std::string text = registry.prometheus_text();
  FUZZ_CHECK(sluice::metrics::valid_utf8(text) == text);
  std::size_t series = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = text.find('\n', pos);
    const std::string_view line(text.data() + pos,
                                (end == std::string::npos ? text.size() : end) - pos);
    if (!line.empty() && line[0] != '#') {
      ++series;
      FUZZ_CHECK(line.rfind("sluice_fuzz_total{subscriber=\"", 0) == 0);
      FUZZ_CHECK(line.size() > 3 && line.substr(line.size() - 3) == "} 1");
    }
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  FUZZ_CHECK(series == 1);
  return 0;
}

// The refusal table: one row per kind, each transport's code for it, and docs/protocol.md's
// table saying exactly the same.
#include "relay/refusal.hpp"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "build_paths.hpp"

namespace sluice::relay {
namespace {

TEST(RefusalTable, OneRowPerKindInOrderWithItsGrpcCodeByName) {
  const std::map<std::string, grpc::StatusCode> grpc_codes{
      {"INVALID_ARGUMENT", grpc::StatusCode::INVALID_ARGUMENT},
      {"NOT_FOUND", grpc::StatusCode::NOT_FOUND},
      {"DEADLINE_EXCEEDED", grpc::StatusCode::DEADLINE_EXCEEDED},
      {"FAILED_PRECONDITION", grpc::StatusCode::FAILED_PRECONDITION},
      {"RESOURCE_EXHAUSTED", grpc::StatusCode::RESOURCE_EXHAUSTED},
      {"ABORTED", grpc::StatusCode::ABORTED},
      {"UNAVAILABLE", grpc::StatusCode::UNAVAILABLE},
      {"UNAUTHENTICATED", grpc::StatusCode::UNAUTHENTICATED},
      {"PERMISSION_DENIED", grpc::StatusCode::PERMISSION_DENIED}};
  std::set<std::string> names;
  for (std::size_t i = 0; i < refusal_table().size(); ++i) {
    const RefusalCodes& row = refusal_table()[i];
    EXPECT_EQ(static_cast<std::size_t>(row.kind), i) << row.name;
    EXPECT_TRUE(names.insert(std::string(row.name)).second) << row.name;
    ASSERT_TRUE(grpc_codes.count(std::string(row.grpc_name))) << row.grpc_name;
    EXPECT_EQ(row.grpc_code, static_cast<int>(grpc_codes.at(std::string(row.grpc_name))))
        << row.name;
    EXPECT_GE(row.http_status, 400U) << row.name;
    EXPECT_GE(row.ws_close, 1000U) << row.name;
    EXPECT_LE(row.close_reason.size(), 123U) << row.name;
  }
}

TEST(RefusalTable, ACloseReasonFitsACloseFrameAndNamesTheSetting) {
  const Refusal brief{RefusalKind::slow_consumer, std::string(300, 'x'), "a", "short"};
  EXPECT_EQ(close_reason(brief), "short");
  const Refusal fits{RefusalKind::bad_request, "a short message"};
  EXPECT_EQ(close_reason(fits), "a short message");
  const Refusal full{RefusalKind::topic_full, std::string(300, 'x'), "SLUICE_MAX_WAIT_MS"};
  EXPECT_EQ(close_reason(full), "topic full past max_wait_ms (SLUICE_MAX_WAIT_MS)");
}

// docs/protocol.md, section "Refusals": a row `| `kind` | GRPC | HTTP | CLOSE | when |` per
// kind, as the table maps it, and no other.
TEST(RefusalTable, DocsListEveryKindAsTheCodeMapsIt) {
  std::ifstream in(sluice::testing::source_dir() + "/docs/protocol.md");
  ASSERT_TRUE(in) << "docs/protocol.md";
  std::string line;
  bool section = false;
  std::map<std::string, std::vector<std::string>> rows;
  while (std::getline(in, line)) {
    if (line.rfind("## ", 0) == 0) section = line == "## Refusals";
    if (!section || line.rfind("| `", 0) != 0) continue;
    std::vector<std::string> cells;
    std::stringstream cols(line.substr(1));
    std::string cell;
    while (std::getline(cols, cell, '|')) {
      const auto b = cell.find_first_not_of(' ');
      const auto e = cell.find_last_not_of(' ');
      cells.push_back(b == std::string::npos ? "" : cell.substr(b, e - b + 1));
    }
    ASSERT_GE(cells.size(), 4U) << line;
    const std::string kind = cells[0].substr(1, cells[0].size() - 2);  // without the backticks
    EXPECT_TRUE(rows.emplace(kind, cells).second) << "twice: " << kind;
  }
  ASSERT_FALSE(rows.empty()) << "no '## Refusals' table in docs/protocol.md";
  for (const RefusalCodes& row : refusal_table()) {
    const auto it = rows.find(std::string(row.name));
    ASSERT_NE(it, rows.end()) << "docs/protocol.md lacks " << row.name;
    EXPECT_EQ(it->second[1], row.grpc_name) << row.name;
    EXPECT_EQ(it->second[2], std::to_string(row.http_status)) << row.name;
    EXPECT_EQ(it->second[3], std::to_string(row.ws_close)) << row.name;
    rows.erase(it);
  }
  for (const auto& [kind, cells] : rows) ADD_FAILURE() << "docs/protocol.md lists unknown " << kind;
}

// docs/media.md, WebRTC section: each refusal row `| when | STATUS | `kind` | change |` gives
// the status the relay's table gives its kind, and every kind only WebRTC viewers meet is there.
TEST(RefusalTable, MediaDocsGiveEachWhepRefusalItsKindsStatus) {
  std::ifstream in(sluice::testing::source_dir() + "/docs/media.md");
  ASSERT_TRUE(in) << "docs/media.md";
  std::string line;
  bool table = false;
  std::set<std::string> kinds;
  while (std::getline(in, line)) {
    if (line.rfind("| refusal | status | kind |", 0) == 0) {
      table = true;
      continue;
    }
    if (!table || line.rfind("|---", 0) == 0) continue;
    if (line.rfind("| ", 0) != 0) break;  // (the table's end)
    std::vector<std::string> cells;
    std::stringstream row(line.substr(1));
    for (std::string cell; std::getline(row, cell, '|');) {
      const auto b = cell.find_first_not_of(' ');
      const auto e = cell.find_last_not_of(' ');
      cells.push_back(b == std::string::npos ? "" : cell.substr(b, e - b + 1));
    }
    ASSERT_GE(cells.size(), 4U) << line;
    const std::string& kind = cells[2];
    if (kind.size() < 3 || kind.front() != '`') continue;  // (not a refusal of the relay's)
    const std::string name = kind.substr(1, kind.size() - 2);
    const auto* row_codes = [&]() -> const RefusalCodes* {
      for (const auto& c : refusal_table())
        if (c.name == name) return &c;
      return nullptr;
    }();
    ASSERT_NE(row_codes, nullptr) << "docs/media.md names an unknown kind: " << line;
    EXPECT_EQ(cells[1], std::to_string(row_codes->http_status)) << line;
    kinds.insert(name);
  }
  ASSERT_TRUE(table) << "docs/media.md has no refusal table";
  for (const auto* whep : {"unsupported_media", "offer_refused", "answer_timeout", "topic_gone"})
    EXPECT_TRUE(kinds.contains(whep)) << "docs/media.md does not list " << whep;
}

}  // namespace
}  // namespace sluice::relay

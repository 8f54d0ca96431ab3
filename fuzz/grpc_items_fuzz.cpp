// A subscriber's events as the C++ client decodes them (src/wire/grpc_items.hpp), from bytes a
// relay (or anything answering on its port) chose, cut into slices as gRPC hands them over: the
// input's first byte sets the slice length. Invariants: no crash, leak or exception; whatever
// decodes agrees with protobuf's reading of the same bytes where protobuf reads them; decoded
// items encoded again (wire::ItemWriter) decode to the same items.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.hpp"
#include "grpc_items.hpp"
#include "sluice/v1/relay.pb.h"

using namespace sluice::wire;

namespace {

grpc::ByteBuffer in_pieces(std::string_view bytes, std::size_t piece) {
  std::vector<grpc::Slice> slices;
  for (std::size_t at = 0; at < bytes.size(); at += piece)
    slices.emplace_back(bytes.data() + at, std::min(piece, bytes.size() - at));
  return {slices.data(), slices.size()};
}

bool same_items(const std::vector<ItemFields>& a, const std::vector<ItemFields>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].payload.view() != b[i].payload.view() || a[i].sequence != b[i].sequence ||
        a[i].timestamp_ns != b[i].timestamp_ns) {
      return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t piece = 1 + data[0];
  const std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  SubscribeEventView view;
  if (!decode_subscribe_event(in_pieces(bytes, piece), view)) return 0;

  sluice::v1::SubscribeEvent check;
  if (check.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    if (check.has_gap()) {
      FUZZ_CHECK(view.kind == SubscribeEventView::Kind::gap);
      FUZZ_CHECK(view.lost == check.gap().lost());
      FUZZ_CHECK(view.reason == check.gap().reason());
    } else if (check.has_item() || check.has_batch()) {
      FUZZ_CHECK(view.kind == SubscribeEventView::Kind::items);
      std::vector<ItemFields> expected;
      const auto add = [&](const sluice::v1::Item& item) {
        expected.push_back(
            {"", sluice::Buffer::copy(item.payload()), item.sequence(), item.timestamp_ns()});
      };
      if (check.has_item()) add(check.item());
      for (const auto& item : check.batch().items()) add(item);
      FUZZ_CHECK(same_items(view.items, expected));
    }
  }
  if (view.kind == SubscribeEventView::Kind::items && !view.items.empty()) {
    ItemWriter writer;
    SubscribeEventView again;
    FUZZ_CHECK(decode_subscribe_event(writer.encode(Envelope::subscribe_event, view.items), again));
    FUZZ_CHECK(same_items(view.items, again.items));
  }
  return 0;
}

// The protobuf requests gRPC clients send, decoded as the relay decodes them
// (request_decode.hpp): input's first byte picks Publish, Work or Subscribe, the rest is the
// message. Invariants: no crash, leak or exception; a request is refused exactly when protobuf
// cannot parse it; a refusal for a string that is not UTF-8 names its field; a decoded
// request's topics are then checked as the relay checks them (topic_name_problem).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_check.hpp"
#include "request_decode.hpp"
#include "sluice/relay/config.hpp"
#include "sluice/v1/relay.pb.h"

using namespace sluice::relay;

namespace {

template <class Message>
void decode(std::string_view bytes, Message& out) {
  const auto refusal = decode_request(
      Message::descriptor()->name(), bytes.size(), std::uint64_t{8} << 20,
      [&] { return out.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())); });
  Message check;
  const bool parses = check.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
  FUZZ_CHECK(parses == !refusal.has_value());
  if (refusal) {
    FUZZ_CHECK(refusal->kind == RefusalKind::bad_request);
    FUZZ_CHECK(refusal->message.find(Message::descriptor()->name()) != std::string::npos);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 3) {
    case 0: {
      sluice::v1::PublishRequest req;
      decode(bytes, req);
      if (req.has_item()) (void)sluice::topic_name_problem(req.item().topic());
      for (const auto& item : req.items()) (void)sluice::topic_name_problem(item.topic());
      break;
    }
    case 1: {
      sluice::v1::WorkRequest req;
      decode(bytes, req);
      if (req.has_join()) (void)sluice::topic_name_problem(req.join().topic());
      break;
    }
    default: {
      sluice::v1::SubscribeRequest req;
      decode(bytes, req);
      (void)sluice::topic_name_problem(req.topic());
      break;
    }
  }
  return 0;
}

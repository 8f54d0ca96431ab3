#include "refusal.hpp"

namespace sluice::relay {

namespace {

// gRPC status codes by value (grpc::StatusCode), so that the table needs no gRPC header.
constexpr int kInvalidArgument = 3;
constexpr int kDeadlineExceeded = 4;
constexpr int kNotFound = 5;
constexpr int kPermissionDenied = 7;
constexpr int kResourceExhausted = 8;
constexpr int kFailedPrecondition = 9;
constexpr int kAborted = 10;
constexpr int kUnavailable = 14;
constexpr int kUnauthenticated = 16;

// One row per RefusalKind, in its order (checked by the unit test).
constexpr std::array<RefusalCodes, kRefusalKinds> kTable{{
    {RefusalKind::bad_request, "bad_request", kInvalidArgument, "INVALID_ARGUMENT", 400, 1008,
     "bad request"},
    {RefusalKind::frame_too_big, "frame_too_big", kInvalidArgument, "INVALID_ARGUMENT", 413, 1009,
     "frame too big"},
    {RefusalKind::not_found, "not_found", kNotFound, "NOT_FOUND", 404, 1008, "not found"},
    {RefusalKind::too_many_sessions, "too_many_sessions", kResourceExhausted, "RESOURCE_EXHAUSTED",
     503, 1013, "too many sessions"},
    {RefusalKind::too_many_topics, "too_many_topics", kResourceExhausted, "RESOURCE_EXHAUSTED", 503,
     1013, "too many topics"},
    {RefusalKind::unauthenticated, "unauthenticated", kUnauthenticated, "UNAUTHENTICATED", 401,
     1008, "unauthenticated"},
    {RefusalKind::permission_denied, "permission_denied", kPermissionDenied, "PERMISSION_DENIED",
     403, 1008, "permission denied"},
    {RefusalKind::misdirected, "misdirected", kPermissionDenied, "PERMISSION_DENIED", 421, 1008,
     "misdirected request"},
    {RefusalKind::topic_full, "topic_full", kResourceExhausted, "RESOURCE_EXHAUSTED", 503, 1013,
     "topic full past max_wait_ms"},
    {RefusalKind::events_unread, "events_unread", kResourceExhausted, "RESOURCE_EXHAUSTED", 503,
     1008, "events left unread"},
    {RefusalKind::slow_consumer, "slow_consumer", kResourceExhausted, "RESOURCE_EXHAUSTED", 503,
     4008, "slow consumer"},
    {RefusalKind::evicted, "evicted", kAborted, "ABORTED", 409, 1008,
     "evicted: the topic's publisher could not wait"},
    {RefusalKind::stopping, "stopping", kUnavailable, "UNAVAILABLE", 503, 1001,
     "the relay is stopping"},
    {RefusalKind::internal, "internal", kUnavailable, "UNAVAILABLE", 503, 1011,
     "the relay could not serve the request"},
    {RefusalKind::unsupported_media, "unsupported_media", kFailedPrecondition,
     "FAILED_PRECONDITION", 415, 1003, "unsupported media"},
    {RefusalKind::offer_refused, "offer_refused", kInvalidArgument, "INVALID_ARGUMENT", 406, 1008,
     "offer refused"},
    {RefusalKind::answer_timeout, "answer_timeout", kDeadlineExceeded, "DEADLINE_EXCEEDED", 504,
     1011, "no answer within whep.answer_timeout_ms"},
    {RefusalKind::topic_gone, "topic_gone", kNotFound, "NOT_FOUND", 410, 1001, "topic closed"},
}};

constexpr std::size_t kMaxCloseReason = 123;

}  // namespace

const std::array<RefusalCodes, kRefusalKinds>& refusal_table() noexcept {
  return kTable;
}

const RefusalCodes& codes(RefusalKind kind) noexcept {
  return kTable[static_cast<std::size_t>(kind)];
}

std::string close_reason(const Refusal& r) {
  if (!r.brief.empty()) return r.brief.substr(0, kMaxCloseReason);
  if (r.message.size() <= kMaxCloseReason) return r.message;
  std::string reason(codes(r.kind).close_reason);
  if (!r.setting.empty()) reason += " (" + r.setting + ")";
  return reason.substr(0, kMaxCloseReason);
}

}  // namespace sluice::relay

// Sluice — outcomes of send and receive, as values.
//
// Hot paths never throw: every send answers a SendResult and every receive a RecvResult.
// Exceptions are reserved for misuse and for bad configuration at start-up.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "sluice/drop_reason.hpp"

namespace sluice {

enum class SendStatus : std::uint8_t {
  ok,           // the item is queued; the channel owns it
  dropped,      // the item was not queued and is lost, counted under `reason`
  would_block,  // no room and the caller may not wait: the caller keeps the item (not a loss)
  timeout,      // no room before the deadline: the caller keeps the item; see `message`
  closed,       // the channel is closed: the caller keeps the item
};

std::string_view to_string(SendStatus status) noexcept;

/// What happened to one send.
///
/// The item passed by rvalue reference is moved from only when status is `ok`; on every other
/// status the caller's object is untouched (for `dropped`, the channel simply did not take it).
struct [[nodiscard]] SendResult {
  SendStatus status = SendStatus::ok;
  /// Why the item was lost; meaningful only when status == dropped.
  DropReason reason = DropReason::overflow;
  /// drop_oldest: how many queued items were dropped (as `overflow`) to make room for this one.
  std::uint32_t evicted = 0;
  /// For timeout, closed and dropped: what happened, naming the channel, the measured values,
  /// the limit and the setting that changes it. Empty for ok and would_block.
  std::string message;

  bool ok() const noexcept { return status == SendStatus::ok; }
  explicit operator bool() const noexcept { return ok(); }
};

enum class RecvStatus : std::uint8_t {
  ok,           // `value` holds the item
  would_block,  // try_recv on an empty channel
  timeout,      // nothing arrived before the deadline
  closed,       // the channel is closed and drained: nothing will ever arrive
  // Broadcast subscriptions only (a Channel never answers these):
  gap,      // items were lost before the next one: `lost` of them, for `reason`; reported once,
            // then the next receive returns the next item
  evicted,  // the subscriber was removed (lossless evict_after); reported once, then closed
};

std::string_view to_string(RecvStatus status) noexcept;

/// What happened to one receive; holds the item when status is ok.
template <class T>
struct [[nodiscard]] RecvResult {
  RecvStatus status = RecvStatus::would_block;
  std::optional<T> value;
  /// For gap: how many items this receiver lost, and why (slow_consumer for a subscriber that
  /// was lapped past its depth). For evicted: reason is `evicted`.
  std::uint64_t lost = 0;
  DropReason reason = DropReason::overflow;

  bool ok() const noexcept { return status == RecvStatus::ok; }
  explicit operator bool() const noexcept { return ok(); }
  T& operator*() & noexcept { return *value; }
  T&& operator*() && noexcept { return std::move(*value); }
  T* operator->() noexcept { return &*value; }
};

}  // namespace sluice

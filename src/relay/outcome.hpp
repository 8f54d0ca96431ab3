// A value or the refusal that stands in its place (relay-internal): what roles, admission and
// the topic registry answer, so that no transport's error type leaks into another's path.
#pragma once

#include <optional>
#include <utility>

#include "refusal.hpp"

namespace sluice::relay {

template <class T>
class [[nodiscard]] Outcome {
 public:
  Outcome(T value) : value_(std::move(value)) {}              // NOLINT(google-explicit-constructor)
  Outcome(Refusal refusal) : refusal_(std::move(refusal)) {}  // NOLINT(google-explicit-constructor)

  explicit operator bool() const noexcept { return value_.has_value(); }
  T& operator*() { return *value_; }
  const T& operator*() const { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  /// Only when false.
  const Refusal& refusal() const noexcept { return refusal_; }
  Refusal& refusal() noexcept { return refusal_; }

 private:
  std::optional<T> value_;
  Refusal refusal_;
};

}  // namespace sluice::relay

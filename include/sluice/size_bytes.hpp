// Sluice — size_bytes(x): how many bytes an item weighs against a byte budget.
//
// Byte budgets (ChannelConfig::max_bytes, ...) need the size of each item. `sluice::size_bytes`
// is a customization point object that finds it, in this order:
//
//   1. a member function `x.size_bytes()`            (Buffer, std::span have one)
//   2. a free function `size_bytes(const X&)` found by argument-dependent lookup
//   3. built-ins: std::string / std::string_view (size()), std::vector<U> and std::array<U, N>
//      of trivially copyable U (elements × sizeof(U)), other trivially copyable types (sizeof).
//
// A type that matches none of these does not compile with a Channel that accounts bytes.
//
// Example, a user type:
//
//   namespace robot {
//   struct Frame { std::uint64_t index; sluice::Buffer pixels; };
//   // Found by ADL: the frame weighs its pixel bytes plus its header.
//   inline std::size_t size_bytes(const Frame& f) { return sizeof(Frame) + f.pixels.size(); }
//   }  // namespace robot
//
//   static_assert(sluice::Sized<robot::Frame>);
//
// The size is what the budget counts, not what the allocator holds: a Buffer slice weighs its
// own length even though it shares a larger allocation. Computing it must be cheap and must not
// block; it is called once per send.
#pragma once

#include <array>
#include <concepts>
#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace sluice {
namespace detail_size {

// Poison pill: stops unqualified lookup from finding sluice::size_bytes (the CPO) itself, so
// only ADL candidates are considered below.
void size_bytes() = delete;

template <class T>
concept HasMember = requires(const T& v) {
  { v.size_bytes() } -> std::convertible_to<std::size_t>;
};

template <class T>
concept HasAdl = requires(const T& v) {
  { size_bytes(v) } -> std::convertible_to<std::size_t>;
};

template <class T>
struct IsVector : std::false_type {};
template <class U, class A>
struct IsVector<std::vector<U, A>> : std::bool_constant<std::is_trivially_copyable_v<U>> {};

template <class T>
struct IsArray : std::false_type {};
template <class U, std::size_t N>
struct IsArray<std::array<U, N>> : std::bool_constant<std::is_trivially_copyable_v<U>> {};

template <class T>
concept Builtin = std::same_as<T, std::string> || std::same_as<T, std::string_view> ||
    IsVector<T>::value || IsArray<T>::value || std::is_trivially_copyable_v<T>;

struct SizeBytesFn {
  template <class T>
  requires HasMember<T> || HasAdl<T> || Builtin<T>
  constexpr std::size_t operator()(const T& v) const noexcept(noexcept(sizeof(T))) {
    if constexpr (HasMember<T>) {
      return static_cast<std::size_t>(v.size_bytes());
    } else if constexpr (HasAdl<T>) {
      return static_cast<std::size_t>(size_bytes(v));
    } else if constexpr (std::same_as<T, std::string> || std::same_as<T, std::string_view>) {
      return v.size();
    } else if constexpr (IsVector<T>::value) {
      return v.size() * sizeof(typename T::value_type);
    } else {
      return sizeof(T);  // std::array and other trivially copyable values
    }
  }
};

}  // namespace detail_size

/// The customization point: `sluice::size_bytes(item)`.
inline constexpr detail_size::SizeBytesFn size_bytes{};

/// True if `sluice::size_bytes(const T&)` is well-formed.
template <class T>
concept Sized = std::invocable<const detail_size::SizeBytesFn&, const T&>;

}  // namespace sluice

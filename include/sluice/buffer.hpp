// Sluice — Buffer: immutable, reference-counted bytes.
//
// Contract
// - Immutable: once a Buffer exists, its bytes never change. Anyone holding one may read it
//   from any thread without synchronization.
// - Copying a Buffer copies a reference (an atomic reference-count increment), never the bytes.
//   The allocation is freed when the last Buffer (or slice) referring to it goes away.
// - `slice()` returns a Buffer viewing part of the same allocation; no bytes are copied.
// - Building from `std::string&&` or `std::vector<std::byte>&&` takes ownership of that
//   container's heap block: no byte is copied (strings short enough for the small-string
//   optimisation live inside the string object and are moved with it, a few bytes).
// - `Buffer::copy()` is the one constructor that copies, explicitly, into one allocation.
// - A Buffer object itself is a value like std::shared_ptr: distinct Buffer objects may be used
//   from different threads freely; one Buffer object must not be assigned while others read it.
//
// This is how a payload travels once through Sluice: a frame is read from a socket into a
// BufferBuilder, frozen into a Buffer, and the same allocation is handed to every subscriber.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sluice {

class Buffer {
 public:
  /// An empty buffer (size 0, no allocation).
  Buffer() noexcept = default;

  /// Takes ownership of the string's storage; the bytes are not copied.
  explicit Buffer(std::string&& bytes);
  /// Takes ownership of the vector's storage; the bytes are not copied.
  explicit Buffer(std::vector<std::byte>&& bytes);

  /// Copies `size` bytes from `data` into a new allocation (one allocation, control block
  /// included).
  static Buffer copy(const void* data, std::size_t size);
  static Buffer copy(std::string_view bytes) { return copy(bytes.data(), bytes.size()); }

  /// Adopts `size` bytes owned by `bytes`; no copy.
  static Buffer adopt(std::unique_ptr<std::byte[]> bytes, std::size_t size);
  /// Views `size` bytes at `data`, which `owner` keeps alive, and unchanged, for as long as any
  /// Buffer refers to it; no copy. For storage that its owner's deleter recycles (a pool): the
  /// deleter runs once the last Buffer viewing it is gone, on that Buffer's thread.
  static Buffer view_of(std::shared_ptr<const void> owner, const std::byte* data,
                        std::size_t size) noexcept {
    if (size == 0) return {};
    return {std::move(owner), data, size};
  }

  const std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  /// What a byte budget counts: the length of this view (see size_bytes.hpp).
  std::size_t size_bytes() const noexcept { return size_; }

  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  std::string_view view() const noexcept { return {reinterpret_cast<const char*>(data_), size_}; }

  /// A view of bytes [offset, offset + length) sharing this allocation.
  /// Throws std::out_of_range if the range is not inside this buffer (misuse).
  Buffer slice(std::size_t offset, std::size_t length) const;
  /// A view of bytes [offset, size()).
  Buffer slice(std::size_t offset) const;

  /// How many Buffers (this one, copies, slices) share the allocation; 0 for an empty buffer.
  /// For tests and diagnostics: racy by nature when other threads hold copies.
  long use_count() const noexcept { return owner_.use_count(); }
  /// True if both views refer to the same allocation.
  bool shares_allocation_with(const Buffer& other) const noexcept {
    return owner_ != nullptr && !owner_.owner_before(other.owner_) &&
           !other.owner_.owner_before(owner_);
  }

  /// Byte-wise equality of the viewed contents.
  friend bool operator==(const Buffer& a, const Buffer& b) noexcept { return a.view() == b.view(); }

 private:
  friend class BufferBuilder;
  Buffer(std::shared_ptr<const void> owner, const std::byte* data, std::size_t size) noexcept
      : owner_(std::move(owner)), data_(data), size_(size) {}

  std::shared_ptr<const void> owner_;  // keeps the allocation alive; null iff nothing to own
  const std::byte* data_ = nullptr;    // first viewed byte, inside owner_'s allocation
  std::size_t size_ = 0;               // viewed length
};

/// Fills a fresh allocation (for example from a socket read), then freezes it into a Buffer
/// without copying. Not thread-safe: one writer, then `std::move(builder).freeze(n)`.
class BufferBuilder {
 public:
  /// Allocates `capacity` writable bytes (uninitialised).
  explicit BufferBuilder(std::size_t capacity);

  std::span<std::byte> data() noexcept { return {bytes_.get(), capacity_}; }
  std::size_t capacity() const noexcept { return capacity_; }

  /// Turns the first `used` bytes into an immutable Buffer; the builder is left empty.
  /// Throws std::out_of_range if used > capacity().
  Buffer freeze(std::size_t used) &&;

 private:
  std::shared_ptr<std::byte[]> bytes_;
  std::size_t capacity_;
};

}  // namespace sluice

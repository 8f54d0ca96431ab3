#include "sluice/buffer.hpp"

#include <cstring>
#include <stdexcept>
#include <string>

namespace sluice {

Buffer::Buffer(std::string&& bytes) {
  if (bytes.empty()) return;
  auto owner = std::make_shared<std::string>(std::move(bytes));
  data_ = reinterpret_cast<const std::byte*>(owner->data());
  size_ = owner->size();
  owner_ = std::move(owner);
}

Buffer::Buffer(std::vector<std::byte>&& bytes) {
  if (bytes.empty()) return;
  auto owner = std::make_shared<std::vector<std::byte>>(std::move(bytes));
  data_ = owner->data();
  size_ = owner->size();
  owner_ = std::move(owner);
}

Buffer Buffer::copy(const void* data, std::size_t size) {
  if (size == 0) return {};
  std::shared_ptr<std::byte[]> owner = std::make_shared_for_overwrite<std::byte[]>(size);
  std::memcpy(owner.get(), data, size);
  const std::byte* first = owner.get();
  return {std::move(owner), first, size};
}

Buffer Buffer::adopt(std::unique_ptr<std::byte[]> bytes, std::size_t size) {
  if (size == 0) return {};
  const std::byte* first = bytes.get();
  return {std::shared_ptr<std::byte[]>(std::move(bytes)), first, size};
}

Buffer Buffer::slice(std::size_t offset, std::size_t length) const {
  if (offset > size_ || length > size_ - offset) {
    throw std::out_of_range("Buffer::slice: range [" + std::to_string(offset) + ", " +
                            std::to_string(offset) + "+" + std::to_string(length) +
                            ") is outside a buffer of " + std::to_string(size_) + " bytes");
  }
  if (length == 0) return {};
  return {owner_, data_ + offset, length};
}

Buffer Buffer::slice(std::size_t offset) const {
  if (offset > size_) return slice(offset, 0);  // throws with the message above
  return slice(offset, size_ - offset);
}

BufferBuilder::BufferBuilder(std::size_t capacity)
    : bytes_(capacity ? std::make_shared_for_overwrite<std::byte[]>(capacity) : nullptr),
      capacity_(capacity) {}

Buffer BufferBuilder::freeze(std::size_t used) && {
  if (used > capacity_) {
    throw std::out_of_range("BufferBuilder::freeze: " + std::to_string(used) + " bytes used of a " +
                            std::to_string(capacity_) + "-byte builder");
  }
  capacity_ = 0;
  if (used == 0) {
    bytes_.reset();
    return {};
  }
  const std::byte* first = bytes_.get();
  return {std::move(bytes_), first, used};
}

}  // namespace sluice

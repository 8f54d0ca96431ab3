// Where the relay reads producers' frames: memory that is neither zeroed nor faulted in anew
// for every frame.
//
// Reading a 1 MiB WebSocket message through Asio's dynamic_string_buffer costs twice over:
// each partial read prepares the whole rest of the frame, which std::string::resize zeroes (a
// 1 MiB frame read 64 KiB at a time zeroes ~8.5 MiB), and each frame lands in a fresh
// allocation whose 256 pages fault in one by one (tens of microseconds each on a VM). A
// FrameBuffer prepares without zeroing; a FramePool takes large blocks back when the last
// Buffer viewing them goes, and hands them out again.
//
// Thread-safety: a FrameBuffer is used by one thread (its session's loop). A FramePool may be
// used from any thread; blocks come back from whichever thread drops the last reference.
#pragma once

#include <algorithm>
#include <boost/asio/buffer.hpp>
#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string_view>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

#include "sluice/buffer.hpp"
#include "sluice/detail/thread_annotations.hpp"

namespace sluice::relay {

// Uninitialised bytes and how many.
struct FrameBlock {
  std::unique_ptr<std::byte[]> bytes;
  std::size_t capacity = 0;
};

// Recycles the blocks of large frames. Blocks below kMinPooledBytes are plain allocations (the
// allocator serves those from memory already in use); larger ones come back here when the
// last Buffer viewing them goes, up to `max_spare_bytes` kept in total (beyond: freed).
class FramePool {
 public:
  static constexpr std::size_t kMinPooledBytes = 64 * 1024;
  static constexpr std::size_t kMaxSpareBytes = 64 * 1024 * 1024;

  explicit FramePool(std::size_t max_spare_bytes = kMaxSpareBytes)
      : st_(std::make_shared<State>(max_spare_bytes)) {}

  // A block of at least `capacity` bytes: a spare one if one fits without wasting more than
  // its size again, else a new one. Its bytes are whatever they were.
  FrameBlock take(std::size_t capacity) {
    if (capacity >= kMinPooledBytes) {
      MutexLock lock(st_->mu);
      auto& spare = st_->spare;
      auto best = spare.end();
      for (auto it = spare.begin(); it != spare.end(); ++it) {
        if (it->capacity >= capacity && it->capacity / 2 <= capacity &&
            (best == spare.end() || it->capacity < best->capacity))
          best = it;
      }
      if (best != spare.end()) {
        FrameBlock b = std::move(*best);
        *best = std::move(spare.back());
        spare.pop_back();
        st_->spare_bytes -= b.capacity;
        return b;
      }
    }
    return {std::make_unique_for_overwrite<std::byte[]>(capacity), capacity};
  }

  // The first `size` bytes of `block`, frozen into a Buffer (no copy). A large block comes
  // back to this pool when the last Buffer viewing it goes (or is freed if the pool is full
  // or gone by then).
  Buffer freeze(FrameBlock block, std::size_t size) {
    if (block.capacity < kMinPooledBytes) return Buffer::adopt(std::move(block.bytes), size);
    auto* raw = new FrameBlock(std::move(block));
    const std::byte* data = raw->bytes.get();
    std::shared_ptr<const void> owner(raw, [w = std::weak_ptr<State>(st_)](FrameBlock* b) {
      if (auto s = w.lock()) s->give_back(std::move(*b));
      delete b;
    });
    return Buffer::view_of(std::move(owner), data, size);
  }

  // Bytes kept for reuse now (/metrics: sluice_frame_pool_spare_bytes).
  std::size_t spare_bytes() const {
    MutexLock lock(st_->mu);
    return st_->spare_bytes;
  }

 private:
  struct State {
    explicit State(std::size_t max) : max_spare_bytes(max) {}
    void give_back(FrameBlock&& b) {
      MutexLock lock(mu);
      if (b.bytes == nullptr || spare_bytes + b.capacity > max_spare_bytes) return;
      spare_bytes += b.capacity;
      spare.push_back(std::move(b));
    }
    Mutex mu;
    std::vector<FrameBlock> spare SLUICE_GUARDED_BY(mu);
    std::size_t spare_bytes SLUICE_GUARDED_BY(mu) = 0;
    const std::size_t max_spare_bytes;
  };
  std::shared_ptr<State> st_;
};

// A DynamicBuffer (Asio's v1 requirements, as Beast's reads take) over a FrameBlock:
// prepare() grows without zeroing; freeze() turns what was read into a Buffer, no copy.
class FrameBuffer {
 public:
  using const_buffers_type = boost::asio::const_buffer;
  using mutable_buffers_type = boost::asio::mutable_buffer;

  explicit FrameBuffer(FramePool& pool) : pool_(&pool) {}

  std::size_t size() const noexcept { return size_; }
  std::size_t max_size() const noexcept { return std::numeric_limits<std::size_t>::max() / 2; }
  std::size_t capacity() const noexcept { return block_.capacity; }
  const_buffers_type data() const noexcept { return {block_.bytes.get(), size_}; }
  mutable_buffers_type prepare(std::size_t n) {
    if (n > max_size() - size_) throw std::length_error("FrameBuffer too long");
    if (size_ + n > block_.capacity) reserve(std::max(size_ + n, 2 * block_.capacity));
    return {block_.bytes.get() + size_, n};
  }
  void commit(std::size_t n) noexcept { size_ += std::min(n, block_.capacity - size_); }
  void consume(std::size_t n) noexcept {
    n = std::min(n, size_);
    if (n < size_) std::memmove(block_.bytes.get(), block_.bytes.get() + n, size_ - n);
    size_ -= n;
  }

  // Room for `capacity` bytes in all (what was read is kept).
  void reserve(std::size_t capacity) {
    if (capacity <= block_.capacity) return;
    FrameBlock bigger = pool_->take(capacity);
    if (size_ > 0) std::memcpy(bigger.bytes.get(), block_.bytes.get(), size_);
    block_ = std::move(bigger);
  }
  // What was read, as a Buffer; the buffer is empty again (with no block) afterwards.
  Buffer freeze() {
    Buffer b = pool_->freeze(std::move(block_), size_);
    block_ = {};
    size_ = 0;
    return b;
  }
  // Forgets what was read, keeping the block.
  void clear() noexcept { size_ = 0; }
  std::string_view view() const noexcept {
    return {reinterpret_cast<const char*>(block_.bytes.get()), size_};
  }

 private:
  FramePool* pool_;
  FrameBlock block_;
  std::size_t size_ = 0;
};

}  // namespace sluice::relay

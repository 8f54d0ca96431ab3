// Where the relay reads producers' frames (src/relay/frame_buffer.hpp): a FrameBuffer fills
// and freezes without copying; a FramePool hands a large block out again only after the last
// Buffer viewing it is gone (from whichever thread), keeps no more than its limit, and leaves
// small frames to the allocator.
#include "relay/frame_buffer.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/buffer.hpp>
#include <cstddef>
#include <cstring>
#include <string>
#include <thread>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

namespace sluice::relay {
namespace {

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * kKiB;

static_assert(boost::asio::is_dynamic_buffer_v1<FrameBuffer>::value,
              "Beast reads into a FrameBuffer as into any DynamicBuffer");

// Writes `text` into the buffer in pieces of `piece` bytes, as socket reads would.
void fill(FrameBuffer& b, const std::string& text, std::size_t piece) {
  for (std::size_t at = 0; at < text.size(); at += piece) {
    const std::size_t n = std::min(piece, text.size() - at);
    auto room = b.prepare(n);
    std::memcpy(room.data(), text.data() + at, n);
    b.commit(n);
  }
}

std::string pattern(std::size_t size) {
  std::string s(size, '\0');
  for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>('a' + (i * 7) % 26);
  return s;
}

TEST(FrameBuffer, FillsInPiecesAndFreezesWhatWasReadWithoutACopy) {
  FramePool pool;
  FrameBuffer b(pool);
  const std::string text = pattern(300 * kKiB);
  b.reserve(text.size());
  const std::byte* block = static_cast<const std::byte*>(b.prepare(1).data());
  fill(b, text, 64 * kKiB);
  EXPECT_EQ(b.size(), text.size());
  EXPECT_EQ(b.view(), text);
  const Buffer frozen = b.freeze();
  EXPECT_EQ(frozen.view(), text);
  EXPECT_EQ(frozen.data(), block);  // the block read into is the Buffer's: nothing copied
  EXPECT_EQ(b.size(), 0U);
  EXPECT_EQ(b.capacity(), 0U);
}

TEST(FrameBuffer, GrowingKeepsWhatWasReadAndConsumeDropsTheFront) {
  FramePool pool;
  FrameBuffer b(pool);
  const std::string text = pattern(5000);
  fill(b, text, 700);  // from no block at all, grown as the pieces come
  EXPECT_EQ(b.view(), text);
  b.prepare(100 * kKiB);  // a read prepares more than it gets: nothing read is lost
  b.commit(0);
  EXPECT_EQ(b.view(), text);
  b.consume(1000);
  EXPECT_EQ(b.view(), text.substr(1000));
  b.clear();
  EXPECT_EQ(b.size(), 0U);
  EXPECT_GE(b.capacity(), text.size());  // (kept for the next message)
}

TEST(FramePool, ALargeBlockIsHandedOutAgainOnlyOnceItsLastBufferIsGone) {
  FramePool pool;
  FrameBuffer b(pool);
  const std::string first = pattern(kMiB);
  b.reserve(first.size());
  fill(b, first, 64 * kKiB);
  Buffer frame = b.freeze();
  Buffer slice = frame.slice(16);
  const std::byte* block = frame.data();
  frame = {};
  EXPECT_EQ(pool.spare_bytes(), 0U);  // the slice still views it
  // Meanwhile the next frame gets another block: the first one's bytes stay as they were.
  b.reserve(first.size());
  fill(b, std::string(first.size(), 'z'), 64 * kKiB);
  EXPECT_NE(static_cast<const std::byte*>(b.data().data()), block);
  EXPECT_EQ(slice.view(), std::string_view(first).substr(16));
  Buffer second = b.freeze();
  std::thread([s = slice]() mutable { s = {}; }).join();  // a copy dropped on another thread
  EXPECT_EQ(pool.spare_bytes(), 0U);                      // (this thread's slice remains)
  {
    const Buffer last = std::move(slice);  // (gone at the end of the scope)
  }
  EXPECT_EQ(pool.spare_bytes(), kMiB);
  const FrameBlock again = pool.take(kMiB);
  EXPECT_EQ(again.bytes.get(), block);  // recycled: no fresh pages to fault in
  EXPECT_EQ(pool.spare_bytes(), 0U);
  second = {};
}

TEST(FramePool, SmallFramesAreLeftToTheAllocatorAndTheSpareBytesAreBounded) {
  FramePool pool(3 * kMiB);
  {
    FrameBuffer b(pool);
    fill(b, pattern(1024), 1024);
    const Buffer small = b.freeze();
  }
  EXPECT_EQ(pool.spare_bytes(), 0U);
  std::vector<Buffer> frames;
  for (int i = 0; i < 5; ++i) {
    FrameBuffer b(pool);
    b.reserve(kMiB);
    fill(b, pattern(kMiB), kMiB);
    frames.push_back(b.freeze());
  }
  frames.clear();
  EXPECT_EQ(pool.spare_bytes(), 3 * kMiB);  // three kept, two freed
  // A spare block much larger than asked for is not handed out (it would be held meanwhile).
  const FrameBlock modest = pool.take(100 * kKiB);
  EXPECT_EQ(modest.capacity, 100U * 1024);
  EXPECT_EQ(pool.spare_bytes(), 3 * kMiB);
}

TEST(FramePool, BuffersOutliveThePool) {
  Buffer frame;
  {
    FramePool pool;
    FrameBuffer b(pool);
    b.reserve(kMiB);
    fill(b, pattern(kMiB), 256 * kKiB);
    frame = b.freeze();
  }
  EXPECT_EQ(frame.view(), pattern(kMiB));
  frame = {};  // the block is freed: no pool to go back to
}

TEST(FramePool, BlocksComeBackFromManyThreadsWhileOthersAreTaken) {
  FramePool pool(16 * kMiB);
  constexpr int kFrames = 400;
  std::vector<std::thread> readers;
  readers.reserve(4);
  std::atomic<int> checked{0};
  std::vector<Buffer> frames(kFrames);
  for (int i = 0; i < kFrames; ++i) {
    FrameBuffer b(pool);
    const std::string text(100 * kKiB, static_cast<char>('a' + i % 26));
    b.reserve(text.size());
    fill(b, text, 32 * kKiB);
    frames[static_cast<std::size_t>(i)] = b.freeze();
  }
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&, t] {
      for (int i = t; i < kFrames; i += 4) {
        Buffer f = std::move(frames[static_cast<std::size_t>(i)]);
        if (f.view() == std::string(100 * kKiB, static_cast<char>('a' + i % 26))) ++checked;
      }
    });
  }
  // Meanwhile this thread takes blocks back out and writes them.
  for (int i = 0; i < 200; ++i) {
    FrameBlock block = pool.take(100 * kKiB);
    std::memset(block.bytes.get(), 'x', block.capacity);
  }
  for (auto& r : readers) r.join();
  EXPECT_EQ(checked.load(), kFrames);
  EXPECT_LE(pool.spare_bytes(), 16 * kMiB);
}

}  // namespace
}  // namespace sluice::relay

#include "sluice/buffer.hpp"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace sluice {
namespace {

TEST(Buffer, FromStringByMoveKeepsTheSameBytes) {
  std::string s(4096, 'x');
  const char* before = s.data();
  Buffer b(std::move(s));
  EXPECT_EQ(reinterpret_cast<const char*>(b.data()), before);  // no copy: same heap block
  EXPECT_EQ(b.size(), 4096U);
  EXPECT_EQ(b.view(), std::string(4096, 'x'));
}

TEST(Buffer, FromByteVectorByMoveKeepsTheSameBytes) {
  std::vector<std::byte> v(1 << 20, std::byte{7});
  const std::byte* before = v.data();
  Buffer b(std::move(v));
  EXPECT_EQ(b.data(), before);
  EXPECT_EQ(b.size(), std::size_t{1} << 20);
}

TEST(Buffer, CopyingCopiesAReferenceNotTheBytes) {
  Buffer a = Buffer::copy("hello, world");
  EXPECT_EQ(a.use_count(), 1);
  Buffer b = a;  // NOLINT(performance-unnecessary-copy-initialization): the copy is the test
  EXPECT_EQ(b.data(), a.data());
  EXPECT_EQ(a.use_count(), 2);
  EXPECT_TRUE(a.shares_allocation_with(b));
}

TEST(Buffer, SlicesShareTheAllocationAndOutliveTheParent) {
  Buffer slice;
  {
    Buffer whole = Buffer::copy("0123456789");
    slice = whole.slice(2, 5);
    EXPECT_TRUE(slice.shares_allocation_with(whole));
    EXPECT_EQ(slice.data(), whole.data() + 2);
  }
  EXPECT_EQ(slice.view(), "23456");  // the allocation lives while a slice does
  EXPECT_EQ(slice.use_count(), 1);
  EXPECT_EQ(slice.slice(3).view(), "56");
}

TEST(Buffer, SliceOutsideTheBufferThrowsWithTheRange) {
  Buffer b = Buffer::copy("abc");
  EXPECT_THROW((void)b.slice(2, 2), std::out_of_range);
  EXPECT_THROW((void)b.slice(4), std::out_of_range);
  EXPECT_NO_THROW((void)b.slice(3));
  try {
    (void)b.slice(1, 9);
  } catch (const std::out_of_range& e) {
    EXPECT_NE(std::string(e.what()).find("3 bytes"), std::string::npos) << e.what();
  }
}

TEST(Buffer, EmptyBuffersOwnNothing) {
  Buffer empty;
  EXPECT_TRUE(empty.empty());
  EXPECT_EQ(empty.use_count(), 0);
  EXPECT_TRUE(Buffer(std::string{}).empty());
  EXPECT_TRUE(Buffer::copy("", 0).empty());
}

TEST(Buffer, BuilderFreezesWithoutCopying) {
  BufferBuilder builder(16);
  auto out = builder.data();
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = std::byte{static_cast<unsigned char>(i)};
  const std::byte* first = out.data();
  Buffer b = std::move(builder).freeze(10);
  EXPECT_EQ(b.data(), first);
  EXPECT_EQ(b.size(), 10U);
  EXPECT_EQ(b.bytes()[9], std::byte{9});
}

TEST(Buffer, BuilderRefusesToFreezeMoreThanItsCapacity) {
  BufferBuilder builder(4);
  EXPECT_THROW((void)std::move(builder).freeze(5), std::out_of_range);
}

TEST(Buffer, CopiesMayBeDroppedFromManyThreads) {
  Buffer shared = Buffer::copy(std::string(1000, 'z'));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([shared] {
      for (int i = 0; i < 10000; ++i) {
        Buffer local = shared;
        ASSERT_EQ(local.view().size(), 1000U);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(shared.use_count(), 1);
}

}  // namespace
}  // namespace sluice

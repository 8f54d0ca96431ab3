#include "sluice/size_bytes.hpp"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "sluice/buffer.hpp"

namespace robot {
// The documented example: a user type weighed through ADL.
struct Frame {
  std::uint64_t index = 0;
  sluice::Buffer pixels;
};
inline std::size_t size_bytes(const Frame& f) {
  return sizeof(Frame) + f.pixels.size();
}

// A type with a member.
struct Packet {
  std::size_t n = 0;
  std::size_t size_bytes() const { return n; }
};

struct Opaque {
  std::string a;
  std::string b;
};
}  // namespace robot

namespace sluice {
namespace {

TEST(SizeBytes, BuiltinsWeighTheirPayload) {
  EXPECT_EQ(size_bytes(std::string(300, 'a')), 300U);
  EXPECT_EQ(size_bytes(std::string_view("abcd")), 4U);
  EXPECT_EQ(size_bytes(std::vector<std::uint32_t>(10)), 40U);
  EXPECT_EQ(size_bytes(std::array<std::uint16_t, 8>{}), 16U);
  EXPECT_EQ(size_bytes(std::uint64_t{5}), 8U);
  const int raw[3] = {1, 2, 3};
  EXPECT_EQ(size_bytes(std::span<const int>(raw)), 12U);
}

TEST(SizeBytes, BufferWeighsItsViewNotItsAllocation) {
  Buffer b = Buffer::copy(std::string(1000, 'q'));
  EXPECT_EQ(size_bytes(b), 1000U);
  EXPECT_EQ(size_bytes(b.slice(10, 90)), 90U);
}

TEST(SizeBytes, UserTypesThroughAdlOrMember) {
  robot::Frame f{1, Buffer::copy(std::string(640, 'p'))};
  EXPECT_EQ(size_bytes(f), sizeof(robot::Frame) + 640);
  EXPECT_EQ(size_bytes(robot::Packet{77}), 77U);
  static_assert(Sized<robot::Frame>);
  static_assert(Sized<robot::Packet>);
  static_assert(!Sized<robot::Opaque>);  // no rule applies: does not compile with accounting
  static_assert(!Sized<std::vector<std::string>>);
}

}  // namespace
}  // namespace sluice

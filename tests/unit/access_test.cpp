// Topic patterns and the principal's rule (access.hpp): '*' one segment, '>' the rest, a
// denial wins; tokens by their hash, none for the anonymous principal, everyone when open.
#include "access.hpp"

#include <gtest/gtest.h>

#include <string>

namespace sluice::relay {
namespace {

TEST(Access, TopicPatternsMatchSegmentByStarAndTheRestByGreaterThan) {
  EXPECT_TRUE(topic_matches("camera.front", "camera.front"));
  EXPECT_FALSE(topic_matches("camera.front", "camera.front.left"));
  EXPECT_TRUE(topic_matches("camera.*", "camera.front"));
  EXPECT_FALSE(topic_matches("camera.*", "camera"));
  EXPECT_FALSE(topic_matches("camera.*", "camera.front.left"));
  EXPECT_TRUE(topic_matches("*.front", "camera.front"));
  EXPECT_TRUE(topic_matches("camera.>", "camera.front"));
  EXPECT_TRUE(topic_matches("camera.>", "camera.front.left"));
  EXPECT_FALSE(topic_matches("camera.>", "camera"));
  EXPECT_TRUE(topic_matches(">", "anything.at.all"));
  EXPECT_FALSE(topic_matches("cam", "camera"));
  EXPECT_TRUE(topic_pattern_problem("a.*.c").empty());
  EXPECT_TRUE(topic_pattern_problem("a.>").empty());
  EXPECT_FALSE(topic_pattern_problem("a.>.c").empty());
  EXPECT_FALSE(topic_pattern_problem("a*").empty());
  EXPECT_FALSE(topic_pattern_problem("").empty());
}

TEST(Access, ADenialWinsAndEachActionHasItsOwnPatterns) {
  PrincipalConfig c;
  c.subscribe = {"camera.>", "!camera.private"};
  c.publish = {"camera.front"};
  const Principal p("viewer", c);
  EXPECT_TRUE(p.may(Action::subscribe, "camera.front"));
  EXPECT_FALSE(p.may(Action::subscribe, "camera.private"));
  EXPECT_TRUE(p.may(Action::subscribe, "camera.private.x"));  // (the denial names one topic)
  EXPECT_TRUE(p.may(Action::publish, "camera.front"));
  EXPECT_FALSE(p.may(Action::publish, "camera.back"));
  EXPECT_FALSE(p.may(Action::work, "camera.front"));
  EXPECT_FALSE(p.may_any(Action::stats));
  const auto refusal = Access::check(p, Action::work, "camera.front");
  ASSERT_TRUE(refusal);
  EXPECT_EQ(refusal->kind, RefusalKind::permission_denied);
  EXPECT_EQ(refusal->message, "principal 'viewer' may not work topic 'camera.front'");
}

TEST(Access, TokensNameTheirPrincipalAndAnOpenRelayLetsEveryoneIn) {
  RelayConfig open;
  const Access everyone(open);
  ASSERT_TRUE(everyone.authenticate(""));
  EXPECT_TRUE((*everyone.authenticate(""))->may(Action::publish, "x"));

  RelayConfig c;
  PrincipalConfig a;
  a.name = "a";
  a.token_sha256 = token_sha256("secret-a");
  c.principals.push_back(a);
  const Access access(c);
  ASSERT_TRUE(access.authenticate("secret-a"));
  EXPECT_EQ((*access.authenticate("secret-a"))->name(), "a");
  EXPECT_EQ(access.authenticate("secret-b").refusal().kind, RefusalKind::unauthenticated);
  EXPECT_EQ(access.authenticate("").refusal().kind, RefusalKind::unauthenticated);
  PrincipalConfig anonymous;
  anonymous.name = "visitor";
  c.principals.push_back(anonymous);
  const Access with_visitor(c);
  ASSERT_TRUE(with_visitor.authenticate(""));
  EXPECT_EQ((*with_visitor.authenticate(""))->name(), "visitor");
  // The hash is SHA-256: printf %s secret-a | sha256sum
  EXPECT_EQ(token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace
}  // namespace sluice::relay

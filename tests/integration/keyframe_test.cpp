// Keyframe-aware topics over the real relay and its C++ client: items flagged delta (they
// depend on an earlier one, as a video's delta frames) are skipped after a loss up to the next
// keyframe, and the skip is announced as a gap of its own (reason until_keyframe).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "relay_scene.hpp"
#include "sluice/client/client.hpp"
#include "subscriber_join.hpp"

namespace sluice::testing {
namespace {

using namespace std::chrono_literals;

constexpr std::uint64_t kGop = 10;  // a keyframe every 10 items

std::uint32_t flags_of(std::uint64_t i) {
  return i % kGop == 0 ? 0 : kItemDelta;
}

struct Event {
  bool gap = false;
  std::uint64_t sequence = 0;  // item
  std::uint32_t flags = 0;     // item
  std::uint64_t lost = 0;      // gap
  std::string reason;          // gap
};

// A relay with one topic, `name`: real-time `depth` deep, or lossless (depth 0).
RelayConfig one_topic(const char* name, std::size_t depth) {
  RelayConfig c;
  TopicConfig t;
  t.name = name;
  t.mode = depth > 0 ? TopicMode::realtime : TopicMode::lossless;
  if (depth > 0) t.depth = depth;
  c.topics.push_back(t);
  return c;
}

RelayConfig video_topic() {
  return one_topic("video", 256);  // (each viewer asks for its own depth, up to this)
}

client::PublisherOptions producer(const RelayScene& relay, const char* topic) {
  client::PublisherOptions o;
  o.target = relay.target;
  o.topic = topic;
  return o;
}

client::SubscriberOptions viewer(const RelayScene& relay, const char* name, std::uint32_t depth) {
  client::SubscriberOptions o;
  o.target = relay.target;
  o.topic = "video";
  o.name = name;
  o.depth = depth;
  return o;
}

// The value of the /metrics line of `name` that has every one of `labels`; -1 if none.
double series(const RelayScene& relay, const std::string& name,
              const std::vector<std::string>& labels) {
  std::istringstream text(http_get(relay.http_port(), "/metrics").second);
  for (std::string line; std::getline(text, line);) {
    if (line.rfind(name, 0) != 0) continue;
    bool all = true;
    for (const auto& l : labels) all = all && line.find(l) != std::string::npos;
    if (all) return std::stod(line.substr(line.rfind(' ') + 1));
  }
  return -1;
}

// The topic's current group as its stats show it: items kept for a newcomer.
std::uint64_t group_items(const RelayScene& relay, const std::string& topic) {
  const auto stats = nlohmann::json::parse(relay.stats_json());
  for (const auto& t : stats["topics"]) {
    if (t["name"] == topic) return t["group_items"].get<std::uint64_t>();
  }
  return 0;
}

// Reads `sub` until item `last` (or the end), taking `per_item` over each item.
std::thread reading(client::Subscriber& sub, std::vector<Event>& out, std::uint64_t last,
                    std::chrono::milliseconds per_item) {
  return std::thread([&sub, &out, last, per_item] {
    client::SubscriberEvent e;
    while (sub.next(e)) {
      if (e.kind == client::SubscriberEvent::Kind::gap) {
        out.push_back({true, 0, 0, e.lost, e.reason});
        continue;
      }
      out.push_back({false, e.sequence, e.flags, 0, ""});
      if (e.sequence >= last) return;
      std::this_thread::sleep_for(per_item);
    }
  });
}

// A viewer that falls behind is lapped (slow_consumer) and then skips the delta items up to
// the next keyframe (until_keyframe): after every gap its next item is a keyframe, every item
// it gets decodes, and items plus gaps account for every position exactly. A viewer that keeps
// up gets every item with the flags it was published with. The metric counts the skipped.
TEST(Keyframes, ALappedViewerResumesAtAKeyframeAndIsToldWhatItSkipped) {
  RelayScene relay(video_topic());
  client::Subscriber fast(viewer(relay, "fast", 256));
  client::Subscriber slow(viewer(relay, "slow", 4));
  ASSERT_TRUE(fast.subscribed() && slow.subscribed());
  constexpr std::uint64_t kItems = 300;
  std::vector<Event> fast_seen;
  std::vector<Event> slow_seen;
  auto tf = reading(fast, fast_seen, kItems, 0ms);
  auto ts = reading(slow, slow_seen, kItems, 15ms);
  client::Publisher pub(producer(relay, "video"));
  const std::string frame(128 * 1024,
                          'f');  // (large: the viewer's windows fill, the relay laps it)
  for (std::uint64_t i = 0; i < kItems; ++i) {
    ASSERT_TRUE(pub.publish(Buffer::copy(frame), 0, flags_of(i)).ok());
    std::this_thread::sleep_for(2ms);
  }
  // Then a last keyframe alone, once the slow viewer has caught up: what it lost of the burst
  // is told before it.
  std::this_thread::sleep_for(1500ms);
  ASSERT_TRUE(pub.publish(Buffer::copy("last"), 0, 0).ok());
  ASSERT_TRUE(pub.close().ok());
  join_within(tf, fast, std::chrono::seconds(30));
  join_within(ts, slow, std::chrono::seconds(30));

  ASSERT_EQ(fast_seen.size(), kItems + 1);
  for (std::uint64_t i = 0; i < kItems; ++i) {
    ASSERT_FALSE(fast_seen[i].gap);
    EXPECT_EQ(fast_seen[i].sequence, i);
    EXPECT_EQ(fast_seen[i].flags, flags_of(i));
  }

  std::uint64_t position = 0;
  std::uint64_t skipped = 0;
  std::uint64_t lapped = 0;
  bool after_gap = true;  // (a new viewer starts at a keyframe too)
  for (const auto& e : slow_seen) {
    if (e.gap) {
      ASSERT_TRUE(e.reason == "slow_consumer" || e.reason == "until_keyframe") << e.reason;
      (e.reason == "until_keyframe" ? skipped : lapped) += e.lost;
      position += e.lost;
      after_gap = true;
      continue;
    }
    ASSERT_EQ(e.sequence, position) << "items and gaps do not account for every position";
    if (after_gap) {
      EXPECT_EQ(e.flags & kItemDelta, 0U) << "item " << e.sequence << " after a gap is a delta";
    }
    after_gap = false;
    ++position;
  }
  EXPECT_EQ(position, kItems + 1);
  EXPECT_GT(lapped, 0U) << "the slow viewer was never lapped";
  EXPECT_GT(skipped, 0U) << "nothing was skipped to a keyframe";
  EXPECT_EQ(series(relay, "sluice_subscriber_dropped_total{",
                   {"subscriber=\"slow\"", "reason=\"until_keyframe\""}),
            static_cast<double>(skipped));
  // What it was delivered, not what its session took from the topic: the skipped are lost.
  const auto delivered = static_cast<double>(position - skipped - lapped);
  EXPECT_EQ(series(relay, "sluice_subscriber_received_total{", {"subscriber=\"slow\""}), delivered);
  const auto stats = nlohmann::json::parse(relay.stats_json());
  for (const auto& t : stats["topics"]) {
    for (const auto& sub : t["subscribers"]) {
      if (sub["name"] != "slow") continue;
      EXPECT_EQ(sub["received"].get<double>(), delivered);
      EXPECT_EQ(sub["lost"].get<double>(), static_cast<double>(skipped + lapped));
      EXPECT_EQ(sub["lost_by_reason"]["until_keyframe"].get<double>(),
                static_cast<double>(skipped));
    }
  }
}

// gRPC viewers skipping delta items find nothing to send (next() answers idle) while items keep
// landing: their wake-up hook then fires at once, on the thread that armed it, inside the
// reactor's guarded callback. It only posts (a second lock of the guard on that thread would
// hang the call): every viewer reaches the last item.
TEST(Keyframes, ViewersSkippingToKeyframesWhileItemsLandNeverHang) {
  RelayScene relay(one_topic("video", 2));
  constexpr int kViewers = 4;
  constexpr std::uint64_t kItems = 20'000;
  std::vector<std::unique_ptr<client::Subscriber>> viewers;
  std::vector<std::vector<Event>> seen(kViewers);
  std::vector<std::thread> readers;
  for (int i = 0; i < kViewers; ++i) {
    viewers.push_back(
        std::make_unique<client::Subscriber>(viewer(relay, ("v" + std::to_string(i)).c_str(), 2)));
    ASSERT_TRUE(viewers.back()->subscribed());
  }
  for (int i = 0; i < kViewers; ++i) readers.push_back(reading(*viewers[i], seen[i], kItems, 0ms));
  client::Publisher pub(producer(relay, "video"));
  for (std::uint64_t i = 0; i < kItems; ++i) {
    ASSERT_TRUE(pub.publish(Buffer::copy("x"), 0, i % 500 == 0 ? 0 : kItemDelta).ok());
  }
  ASSERT_TRUE(pub.publish(Buffer::copy("last"), 0, 0).ok());  // (a keyframe: every viewer gets it)
  ASSERT_TRUE(pub.close().ok());
  for (int i = 0; i < kViewers; ++i) {
    join_within(readers[i], *viewers[i], std::chrono::seconds(60));
    ASSERT_FALSE(seen[i].empty());
    EXPECT_EQ(seen[i].back().sequence, kItems) << "viewer " << i << " did not reach the last item";
  }
}

// A viewer that joins mid-GOP starts at the latest keyframe, which the topic keeps with the
// delta items after it (its current group): it gets them all, no gap, and can decode at once.
TEST(Keyframes, AViewerJoiningMidGopStartsAtTheLatestKeyframe) {
  RelayScene relay(video_topic());
  client::Publisher pub(producer(relay, "video"));
  for (std::uint64_t i = 0; i < 15; ++i)  // (two GOPs: the second, 10..14, is the current one)
    ASSERT_TRUE(pub.publish(Buffer::copy("early"), 0, flags_of(i)).ok());
  ASSERT_TRUE(relay.wait_for_sessions(1));
  std::this_thread::sleep_for(200ms);  // (those are in the topic before the viewer joins)
  EXPECT_EQ(group_items(relay, "video"), 5U);
  client::Subscriber late(viewer(relay, "late", 4));  // (a depth below what it starts behind)
  ASSERT_TRUE(late.subscribed());
  std::vector<Event> seen;
  auto t = reading(late, seen, 22, 0ms);
  for (std::uint64_t i = 15; i < 23; ++i) {  // (paced: this viewer is not lapped by them)
    ASSERT_TRUE(pub.publish(Buffer::copy("late"), 0, flags_of(i)).ok());
    std::this_thread::sleep_for(20ms);
  }
  ASSERT_TRUE(pub.close().ok());
  join_within(t, late, std::chrono::seconds(30));
  ASSERT_EQ(seen.size(), 13U);
  for (std::uint64_t i = 0; i < seen.size(); ++i) {
    ASSERT_FALSE(seen[i].gap) << seen[i].reason;
    EXPECT_EQ(seen[i].sequence, 10 + i);
    EXPECT_EQ(seen[i].flags, flags_of(10 + i));
  }
  // What the topic keeps for newcomers, it reports.
  EXPECT_GT(series(relay, "sluice_topic_retained_bytes{", {"topic=\"video\""}), 0);
}

// A group longer than the topic's ring is not kept: a viewer that joins mid-GOP then starts at
// the next keyframe, told first how many delta items it was not given.
TEST(Keyframes, AGopLongerThanTheTopicHoldsIsNotKeptTheViewerWaitsForTheNextKeyframe) {
  RelayScene relay(one_topic("video", 4));  // a ring of 8 items: a GOP of 10 does not fit
  client::Publisher pub(producer(relay, "video"));
  for (std::uint64_t i = 0; i < 19; ++i)
    ASSERT_TRUE(pub.publish(Buffer::copy("early"), 0, flags_of(i)).ok());
  ASSERT_TRUE(relay.wait_for_sessions(1));
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(series(relay, "sluice_topic_retained_bytes{", {"topic=\"video\""}), 0);
  EXPECT_EQ(group_items(relay, "video"), 0U);
  client::Subscriber late(viewer(relay, "late", 4));
  ASSERT_TRUE(late.subscribed());
  std::vector<Event> seen;
  auto th = reading(late, seen, 21, 0ms);
  for (std::uint64_t i = 19; i < 22; ++i)  // 19 a delta, 20 a keyframe, 21 a delta
    ASSERT_TRUE(pub.publish(Buffer::copy("late"), 0, flags_of(i)).ok());
  ASSERT_TRUE(pub.close().ok());
  join_within(th, late, std::chrono::seconds(30));
  ASSERT_EQ(seen.size(), 3U);
  EXPECT_TRUE(seen[0].gap);
  EXPECT_EQ(seen[0].reason, "until_keyframe");
  EXPECT_EQ(seen[0].lost, 1U);
  EXPECT_EQ(seen[1].sequence, 20U);
  EXPECT_EQ(seen[2].sequence, 21U);
}

// A lossless topic's subscriber gets every item, delta or not: nothing is skipped there (a
// recorder keeps the whole stream), and it too starts at the latest keyframe.
TEST(Keyframes, ALosslessTopicSkipsNothing) {
  RelayScene relay(one_topic("recording", 0));
  client::Publisher pub(producer(relay, "recording"));
  for (std::uint64_t i = 0; i < 15; ++i)  // (the current group: 10..14)
    ASSERT_TRUE(pub.publish(Buffer::copy("early"), 0, flags_of(i)).ok());
  std::this_thread::sleep_for(200ms);
  client::SubscriberOptions so;
  so.target = relay.target;
  so.topic = "recording";
  so.name = "recorder";
  client::Subscriber rec(so);
  ASSERT_TRUE(rec.subscribed());
  std::vector<Event> seen;
  auto th = reading(rec, seen, 25, 0ms);
  for (std::uint64_t i = 15; i < 26; ++i)
    ASSERT_TRUE(pub.publish(Buffer::copy("late"), 0, flags_of(i)).ok());
  ASSERT_TRUE(pub.close().ok());
  join_within(th, rec, std::chrono::seconds(30));
  ASSERT_EQ(seen.size(), 16U);  // from keyframe 10, which the topic kept, to 25
  for (std::uint64_t i = 0; i < seen.size(); ++i) {
    ASSERT_FALSE(seen[i].gap);
    EXPECT_EQ(seen[i].sequence, 10 + i);
    EXPECT_EQ(seen[i].flags, flags_of(10 + i));
  }
}

}  // namespace
}  // namespace sluice::testing

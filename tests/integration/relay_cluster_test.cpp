// Cluster topics across relays (docs/cluster.md), with real parts only: a 3-node NATS cluster
// (Debian's nats-server, routes and JetStream on loopback, temporary stores) and three relays in
// this process, each attached to a different node, reached by the C++ client over gRPC.
//
// SLUICE_CLUSTER_ITEMS sets the lossless run's items (20000 by default).
#include <gtest/gtest.h>
#include <nats/nats.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "peers/nats_cluster.hpp"
#include "relay_scene.hpp"
#include "sluice/client/client.hpp"
#include "subscriber_join.hpp"

namespace sluice {
namespace {

using namespace std::chrono_literals;
using bench::NatsCluster;
using testing::RelayScene;

std::size_t env_items(const char* name, std::size_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? static_cast<std::size_t>(std::strtoull(v, nullptr, 10)) : fallback;
}

// A relay attached to node `node` of `cluster` (the other nodes its fallbacks), with `topic`.
RelayConfig relay_config(const NatsCluster& cluster, std::size_t node, const TopicConfig& topic) {
  RelayConfig c;
  c.nats.urls.push_back(cluster.url(node));
  for (std::size_t i = 0; i < cluster.size(); ++i) {
    if (i != node) c.nats.urls.push_back(cluster.url(i));
  }
  c.nats.name = "relay" + std::to_string(node);
  c.nats.replicas = cluster.size();
  c.nats.storage = "memory";
  c.topics.push_back(topic);
  return c;
}

TopicConfig cluster_topic(const std::string& name, TopicMode mode) {
  TopicConfig t;
  t.name = name;
  t.mode = mode;
  t.scope = TopicScope::cluster;
  return t;
}

nlohmann::json topic_stats(const RelayScene& relay, const std::string& topic) {
  const auto j = nlohmann::json::parse(relay.stats_json());
  for (const auto& t : j.at("topics")) {
    if (t.at("name") == topic) return t;
  }
  return {};
}

// Waits until `relay` receives `topic` from the others (its bridge subscribed), then a little
// more for NATS to carry the interest along its routes.
bool wait_receiving(const RelayScene& relay, const std::string& topic) {
  for (int i = 0; i < 200; ++i) {
    const auto t = topic_stats(relay, topic);
    if (t.contains("bridge") && t["bridge"].value("receiving", false)) {
      std::this_thread::sleep_for(500ms);
      return true;
    }
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

std::uint64_t bridge_counter(const RelayScene& relay, const std::string& topic, const char* key) {
  const auto t = topic_stats(relay, topic);
  return t.contains("bridge") ? t["bridge"].value(key, std::uint64_t{0}) : 0;
}

// What a subscriber saw: every item's sequence in order, and its gaps by reason.
struct Seen {
  std::vector<std::uint64_t> sequences;
  std::vector<std::uint32_t> flags;  // each item's
  std::uint64_t lost_slow = 0;
  std::uint64_t lost_bridge = 0;
  std::uint64_t gaps_bridge = 0;
  std::uint64_t lost_other = 0;
};

// Reads `sub` until `last` is seen (or the stream ends), taking `per_item` over each item and
// stalling up to `stall` now and then.
std::thread reader(client::Subscriber& sub, Seen& seen, std::uint64_t last,
                   std::chrono::milliseconds stall = 0ms,
                   std::chrono::milliseconds per_item = 0ms) {
  return std::thread([&sub, &seen, last, stall, per_item] {
    std::mt19937 rng(7);
    client::SubscriberEvent e;
    while (sub.next(e)) {
      if (e.kind == client::SubscriberEvent::Kind::gap) {
        if (e.reason == "slow_consumer") {
          seen.lost_slow += e.lost;
        } else if (e.reason == "bridge") {
          seen.lost_bridge += e.lost;
          ++seen.gaps_bridge;
        } else {
          seen.lost_other += e.lost;
        }
        continue;
      }
      seen.sequences.push_back(e.sequence);
      seen.flags.push_back(e.flags);
      if (per_item > 0ms) std::this_thread::sleep_for(per_item);
      if (stall > 0ms && rng() % 50 == 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % stall.count()));
      if (e.sequence >= last) break;
    }
  });
}

using testing::join_within;

client::SubscriberOptions subscriber(const RelayScene& relay, const std::string& topic,
                                     const std::string& name) {
  client::SubscriberOptions o;
  o.target = relay.target;
  o.topic = topic;
  o.name = name;
  return o;
}

// Every relay gets each real-time item once, in order, with its flags (a keyframe every 10
// items, the rest delta); NATS carries it once per relay that has subscribers (the relay with
// none is not sent anything).
TEST(Cluster, RealtimeItemsReachTheOtherRelaysOnceEach) {
  NatsCluster nats(3);
  ASSERT_TRUE(nats.ready());
  const auto topic = cluster_topic("cam", TopicMode::realtime);
  RelayScene a(relay_config(nats, 0, topic));
  RelayScene b(relay_config(nats, 1, topic));
  RelayScene c(relay_config(nats, 2, topic));
  auto so = subscriber(b, "cam", "on-b");
  so.depth = 64;
  client::Subscriber sb(so);
  ASSERT_TRUE(sb.subscribed());
  ASSERT_TRUE(wait_receiving(b, "cam"));
  constexpr std::uint64_t kItems = 501;  // (the last a keyframe: a subscriber always gets it)
  Seen seen;
  auto t = reader(sb, seen, kItems - 1);
  client::PublisherOptions po;
  po.target = a.target;
  po.topic = "cam";
  client::Publisher pub(po);
  const auto flags = [](std::uint64_t i) { return i % 10 == 0 ? 0 : kItemDelta; };
  for (std::uint64_t i = 0; i < kItems; ++i) {
    ASSERT_TRUE(
        pub.publish(Buffer::copy(std::string(1024, static_cast<char>('a' + i % 26))), 0, flags(i))
            .ok());
    std::this_thread::sleep_for(2ms);  // (paced)
  }
  ASSERT_TRUE(pub.close().ok());
  join_within(t, sb, 20s);
  // Crossing is exact: nothing lost between the relays, every item into B's topic once. B's
  // subscriber gets them in order with their flags; on a machine busy enough to lap it (its
  // depth, 64 items, is 128 ms here) what it misses is announced, never silent.
  EXPECT_EQ(seen.lost_bridge, 0U);
  ASSERT_FALSE(seen.sequences.empty());
  EXPECT_EQ(seen.sequences.back(), kItems - 1);
  EXPECT_EQ(seen.sequences.size() + seen.lost_slow + seen.lost_other, kItems);
  for (std::size_t i = 0; i < seen.sequences.size(); ++i) {
    if (i > 0) {
      ASSERT_GT(seen.sequences[i], seen.sequences[i - 1]);
    }
    ASSERT_EQ(seen.flags[i], flags(seen.sequences[i]));
  }
  EXPECT_EQ(bridge_counter(a, "cam", "sent_items"), kItems);
  EXPECT_EQ(bridge_counter(b, "cam", "received_items"), kItems);
  EXPECT_EQ(bridge_counter(b, "cam", "sent_items"), 0U);      // (not sent back out)
  EXPECT_EQ(bridge_counter(c, "cam", "received_items"), 0U);  // (no subscriber on C)
}

// An unpaced burst of small items: the sending relay puts the items waiting together into one NATS
// message (fewer messages than items); every item reaches B's subscriber or is announced lost, in
// order, none twice.
TEST(Cluster, ARealtimeBurstCrossesInBatchesAndEveryItemIsAccountedFor) {
  NatsCluster nats(3);
  ASSERT_TRUE(nats.ready());
  auto topic = cluster_topic("burst", TopicMode::realtime);
  topic.depth = 1024;
  RelayScene a(relay_config(nats, 0, topic));
  RelayScene b(relay_config(nats, 1, topic));
  auto so = subscriber(b, "burst", "on-b");
  so.depth = 1024;
  client::Subscriber sb(so);
  ASSERT_TRUE(sb.subscribed());
  ASSERT_TRUE(wait_receiving(b, "burst"));
  constexpr std::uint64_t kItems = 5000;
  Seen seen;
  auto t = reader(sb, seen, kItems);
  client::PublisherOptions po;
  po.target = a.target;
  po.topic = "burst";
  client::Publisher pub(po);
  const std::string item(1024, 'b');
  for (std::uint64_t i = 0; i < kItems; ++i) ASSERT_TRUE(pub.publish(Buffer::copy(item)).ok());
  std::this_thread::sleep_for(1s);  // (then one more, alone: the burst's losses are told before it)
  ASSERT_TRUE(pub.publish(Buffer::copy(item)).ok());
  ASSERT_TRUE(pub.close().ok());
  join_within(t, sb, 30s);
  ASSERT_FALSE(seen.sequences.empty());
  EXPECT_EQ(seen.sequences.back(), kItems);
  for (std::size_t i = 1; i < seen.sequences.size(); ++i)
    ASSERT_GT(seen.sequences[i], seen.sequences[i - 1]);
  EXPECT_EQ(seen.sequences.size() + seen.lost_bridge + seen.lost_slow + seen.lost_other,
            kItems + 1);
  const auto sent = bridge_counter(a, "burst", "sent_items");
  const auto messages = bridge_counter(a, "burst", "sent_messages");
  EXPECT_EQ(bridge_counter(b, "burst", "received_items") + bridge_counter(b, "burst", "lost"),
            kItems + 1);
  EXPECT_GE(messages, 2U);
  EXPECT_LT(messages, sent) << "a burst of " << kItems << " items crossed one per message";
  std::printf("burst: %llu items sent in %llu NATS messages; B's subscriber got %zu, %llu lost\n",
              static_cast<unsigned long long>(sent), static_cast<unsigned long long>(messages),
              seen.sequences.size(),
              static_cast<unsigned long long>(seen.lost_bridge + seen.lost_slow));
}

// 30 fps × 256 KiB, a subscriber on C that keeps up with half of it: it loses items (slow_consumer,
// counted exactly: received + lost = published), while B's subscriber gets every one.
TEST(Cluster, RealtimeSlowSubscriberLosesExactlyWhatItIsTold) {
  NatsCluster nats(3);
  ASSERT_TRUE(nats.ready());
  auto topic = cluster_topic("video", TopicMode::realtime);
  topic.depth = 4;
  RelayScene a(relay_config(nats, 0, topic));
  RelayScene b(relay_config(nats, 1, topic));
  RelayScene c(relay_config(nats, 2, topic));
  client::Subscriber sb(subscriber(b, "video", "fast"));
  auto co = subscriber(c, "video", "slow");
  client::Subscriber sc(co);
  ASSERT_TRUE(sb.subscribed() && sc.subscribed());
  ASSERT_TRUE(wait_receiving(b, "video") && wait_receiving(c, "video"));
  constexpr std::uint64_t kItems = 150;  // 5 s at 30 fps
  Seen fast;
  Seen stalled;
  auto tb = reader(sb, fast, kItems - 1);
  auto tc = reader(sc, stalled, kItems - 1, 0ms, 60ms);  // (16 fps)
  client::PublisherOptions po;
  po.target = a.target;
  po.topic = "video";
  client::Publisher pub(po);
  const std::string frame(256 * 1024, 'v');
  auto next = std::chrono::steady_clock::now();
  for (std::uint64_t i = 0; i < kItems; ++i) {
    next += 33ms;
    std::this_thread::sleep_until(next);
    ASSERT_TRUE(pub.publish(Buffer::copy(frame)).ok());
  }
  ASSERT_TRUE(pub.close().ok());
  join_within(tb, sb);
  join_within(tc, sc);
  ASSERT_EQ(fast.sequences.size(), kItems);
  EXPECT_EQ(fast.lost_slow + fast.lost_bridge, 0U);
  ASSERT_FALSE(stalled.sequences.empty());
  EXPECT_GT(stalled.lost_slow, 0U) << "the slow subscriber was never lapped";
  EXPECT_EQ(stalled.lost_bridge, 0U);
  // From its first item to the last, every item was received or counted lost.
  EXPECT_EQ(stalled.sequences.size() + stalled.lost_slow,
            stalled.sequences.back() - stalled.sequences.front() + 1);
  for (std::size_t i = 1; i < stalled.sequences.size(); ++i)
    ASSERT_GT(stalled.sequences[i], stalled.sequences[i - 1]);
}

// The NATS node under C (its only one) dies while items flow and comes back a second later: C's
// bridge reconnects, and what it missed meanwhile is announced to its subscriber as a `bridge`
// gap — exactly.
TEST(Cluster, LossBetweenRelaysIsAnnouncedAsABridgeGap) {
  NatsCluster nats(3);
  ASSERT_TRUE(nats.ready());
  const auto topic = cluster_topic("telemetry", TopicMode::realtime);
  RelayScene a(relay_config(nats, 0, topic));
  auto only_node_2 = relay_config(nats, 2, topic);
  only_node_2.nats.urls.resize(1);
  only_node_2.nats.discovered_servers = false;
  RelayScene c(only_node_2);
  client::Subscriber sc(subscriber(c, "telemetry", "on-c"));
  ASSERT_TRUE(sc.subscribed());
  ASSERT_TRUE(wait_receiving(c, "telemetry"));
  constexpr std::uint64_t kItems = 600;  // 3 s at 200/s
  Seen seen;
  auto t = reader(sc, seen, kItems - 1);
  client::PublisherOptions po;
  po.target = a.target;
  po.topic = "telemetry";
  client::Publisher pub(po);
  for (std::uint64_t i = 0; i < kItems; ++i) {
    if (i == 100) nats.kill(2);
    if (i == 300) nats.start(2);
    ASSERT_TRUE(pub.publish(Buffer::copy(std::string(64, 't'))).ok());
    std::this_thread::sleep_for(5ms);
  }
  ASSERT_TRUE(pub.close().ok());
  join_within(t, sc);
  ASSERT_FALSE(seen.sequences.empty());
  EXPECT_EQ(seen.sequences.back(), kItems - 1);
  EXPECT_GE(seen.gaps_bridge, 1U) << "the items missed during the reconnect were not announced";
  EXPECT_EQ(seen.sequences.size() + seen.lost_bridge + seen.lost_slow,
            seen.sequences.back() - seen.sequences.front() + 1);
  EXPECT_EQ(bridge_counter(c, "telemetry", "lost"), seen.lost_bridge);
  EXPECT_GE(c.metric("sluice_nats_reconnects_total"), 1.0);
}

// Lossless across relays: a producer on A, subscribers on B and C (C's stalls now and then).
// What each saw, and what A's bridge and topic did.
struct LosslessRun {
  std::uint64_t items = 0;
  Seen on_b;
  Seen on_c;
  std::uint64_t retries = 0;    // JetStream refused A's bridge (the stream full)
  std::uint64_t throttled = 0;  // A's topic held its producer back
  std::uint64_t sent = 0;
  std::string b_bridge;  // B's bridge counters (said when a check fails)
};

// The NATS node (index) that holds a stream's leader; -1 if not known.
int stream_node(const NatsCluster& nats, const char* stream) {
  natsConnection* nc = nullptr;
  if (natsConnection_ConnectTo(&nc, nats.url(0).c_str()) != NATS_OK) return -1;
  jsCtx* js = nullptr;
  int node = -1;
  jsStreamInfo* si = nullptr;
  if (natsConnection_JetStream(&js, nc, nullptr) == NATS_OK &&
      js_GetStreamInfo(&si, js, stream, nullptr, nullptr) == NATS_OK && si->Cluster != nullptr &&
      si->Cluster->Leader != nullptr && si->Cluster->Leader[0] == 'n') {
    node = std::atoi(si->Cluster->Leader + 1);
  }
  if (si != nullptr) jsStreamInfo_Destroy(si);
  if (js != nullptr) jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  return node;
}

// Lossless across relays: a producer on A, subscribers on B and C (C's stalls now and then); the
// topic's stream has one replica. B is attached to a NATS node that holds neither the stream nor
// A (so that its items cross a route twice). With `kill_b_node`, B's NATS node is killed a third
// of the way in and started again at two thirds (B reconnects to another node meanwhile).
LosslessRun lossless_run(bool kill_b_node = false) {
  LosslessRun run;
  NatsCluster nats(3);
  EXPECT_TRUE(nats.ready());
  auto topic = cluster_topic("orders", TopicMode::lossless);
  topic.max_queue_bytes = 256 * 1024;
  topic.max_queue_items = 256;
  topic.max_wait = 30s;
  const auto config = [&](std::size_t node, const char* name) {
    auto c = relay_config(nats, node, topic);
    c.nats.replicas = 1;
    c.nats.name = name;
    // (C's subscriber stalls on purpose: on a loaded machine, a second of writes not completing
    // must not have the relay drop it as stalled in a long run)
    c.max_send_timeouts = 600;
    return c;
  };
  RelayScene a(config(0, "a"));
  RelayScene c(config(2, "c"));
  client::Subscriber sc(subscriber(c, "orders", "stalling"));
  EXPECT_TRUE(sc.subscribed() && wait_receiving(c, "orders"));  // (the stream exists now)
  const int held_by = stream_node(nats, "sluice_2Eorders");
  const std::size_t b_node = held_by == 1 ? 2 : 1;  // (not A's node 0, not the stream's)
  RelayScene b(config(b_node, "b"));
  client::Subscriber sb(subscriber(b, "orders", "steady"));
  EXPECT_TRUE(sb.subscribed() && wait_receiving(b, "orders"));
  run.items = env_items("SLUICE_CLUSTER_ITEMS", 20000);
  auto tb = reader(sb, run.on_b, run.items - 1);
  auto tc = reader(sc, run.on_c, run.items - 1, 40ms);
  client::PublisherOptions po;
  po.target = a.target;
  po.topic = "orders";
  client::Publisher pub(po);
  for (std::uint64_t i = 0; i < run.items; ++i) {
    if (kill_b_node && i == run.items / 3) nats.kill(b_node);
    if (kill_b_node && i == 2 * run.items / 3) nats.start(b_node);
    EXPECT_TRUE(pub.publish(Buffer::copy(std::string(200, 'o'))).ok()) << i;
  }
  EXPECT_TRUE(pub.close().ok());
  const auto limit = std::chrono::seconds(60 + run.items / 500);  // (at 500 items/s, at worst)
  join_within(tb, sb, limit);
  join_within(tc, sc, limit);
  run.retries = bridge_counter(a, "orders", "retries");
  run.throttled = topic_stats(a, "orders").value("throttled_total", std::uint64_t{0});
  run.sent = bridge_counter(a, "orders", "sent_items");
  run.b_bridge = topic_stats(b, "orders").value("bridge", nlohmann::json::object()).dump();
  return run;
}

// Each subscriber gets every item once, in order; the stalled one throttles the producer on A
// (through C's consumer, the stream and A's bridge).
void expect_whole(const LosslessRun& run) {
  for (const Seen* s : {&run.on_b, &run.on_c}) {
    const char* who = s == &run.on_b ? "on B" : "on C";
    std::uint64_t first_missing = 0;  // (or repeated, or out of order)
    while (first_missing < s->sequences.size() && s->sequences[first_missing] == first_missing)
      ++first_missing;
    ASSERT_EQ(s->sequences.size(), run.items)
        << who << ": bridge " << s->lost_bridge << " slow " << s->lost_slow << " other "
        << s->lost_other << "; whole up to " << first_missing << "; B's bridge " << run.b_bridge;
    for (std::uint64_t i = 0; i < run.items; ++i) ASSERT_EQ(s->sequences[i], i) << who;
    EXPECT_EQ(s->lost_slow + s->lost_bridge + s->lost_other, 0U);
  }
  EXPECT_EQ(run.sent, run.items);
}

TEST(Cluster, LosslessNothingLostOrRepeatedAndTheSlowestThrottlesTheProducer) {
  const auto run = lossless_run();
  expect_whole(run);
  EXPECT_GT(run.retries, 0U);
  EXPECT_GT(run.throttled, 0U);
}

// The NATS node a receiving relay is attached to dies mid-run: it reconnects to another node and
// its subscriber still gets every item once, in order.
TEST(Cluster, LosslessSurvivesTheLossOfAReceivingRelaysNatsNode) {
  expect_whole(lossless_run(true));
}

// Each relay knows which relays serve a cluster topic, and how many subscribers each has there
// (they say so every second over NATS); one that goes away is forgotten.
TEST(Cluster, EachRelayKnowsWhichRelaysServeATopic) {
  NatsCluster nats(3);
  ASSERT_TRUE(nats.ready());
  const auto topic = cluster_topic("lobby", TopicMode::realtime);
  RelayScene a(relay_config(nats, 0, topic));
  std::optional<RelayScene> b(std::in_place, relay_config(nats, 1, topic));
  RelayScene c(relay_config(nats, 2, topic));
  client::Subscriber s1(subscriber(*b, "lobby", "one"));
  client::Subscriber s2(subscriber(*b, "lobby", "two"));
  client::Subscriber on_a(subscriber(a, "lobby", "on-a"));  // (the topic exists where used)
  client::Subscriber on_c(subscriber(c, "lobby", "on-c"));
  ASSERT_TRUE(s1.subscribed() && s2.subscribed() && on_a.subscribed() && on_c.subscribed());
  // name -> {subscribers, self} as `relay` reports them
  const auto relays = [](const RelayScene& relay) {
    std::map<std::string, std::pair<std::uint64_t, bool>> out;
    const auto t = topic_stats(relay, "lobby");
    if (!t.contains("bridge")) return out;
    for (const auto& r : t["bridge"]["relays"]) {
      out[r.at("name").get<std::string>()] = {r.at("subscribers").get<std::uint64_t>(),
                                              r.at("self").get<bool>()};
    }
    return out;
  };
  using Relays = std::map<std::string, std::pair<std::uint64_t, bool>>;
  const Relays want{{"relay0", {1, true}}, {"relay1", {2, false}}, {"relay2", {1, false}}};
  Relays got;
  for (int i = 0; i < 100 && (got = relays(a)) != want; ++i) std::this_thread::sleep_for(100ms);
  EXPECT_EQ(got, want);
  const Relays from_c{{"relay0", {1, false}}, {"relay1", {2, false}}, {"relay2", {1, true}}};
  for (int i = 0; i < 50 && (got = relays(c)) != from_c; ++i) std::this_thread::sleep_for(100ms);
  EXPECT_EQ(got, from_c);
  s1.cancel();
  s2.cancel();
  b.reset();
  const Relays without_b{{"relay0", {1, true}}, {"relay2", {1, false}}};
  for (int i = 0; i < 100 && (got = relays(a)) != without_b; ++i)
    std::this_thread::sleep_for(100ms);
  EXPECT_EQ(got, without_b);
}

// A relay goes away under its subscriber: the subscriber (given the other relays) continues on
// another one, told of the switch by a relay_restart gap, with nothing repeated.
TEST(Cluster, ASubscriberWhoseRelayGoesAwayContinuesOnAnother) {
  NatsCluster nats(3);
  ASSERT_TRUE(nats.ready());
  const auto topic = cluster_topic("feed", TopicMode::realtime);
  RelayScene a(relay_config(nats, 0, topic));
  std::optional<RelayScene> b(std::in_place, relay_config(nats, 1, topic));
  RelayScene c(relay_config(nats, 2, topic));
  auto so = subscriber(*b, "feed", "moves");
  so.fallback_targets = {c.target, a.target};
  so.reconnect = true;
  so.reconnect_for = 20s;
  client::Subscriber sub(so);
  ASSERT_TRUE(sub.subscribed());
  ASSERT_TRUE(wait_receiving(*b, "feed"));
  std::atomic<bool> stop{false};
  std::thread producer([&] {
    client::PublisherOptions po;
    po.target = a.target;
    po.topic = "feed";
    client::Publisher pub(po);
    while (!stop && pub.publish(Buffer::copy(std::string(512, 'f'))).ok())
      std::this_thread::sleep_for(2ms);
    (void)pub.close();
  });
  std::vector<std::uint64_t> before;  // items before the switch, and after it
  std::vector<std::uint64_t> after;
  std::uint64_t switches = 0;  // relay_restart gaps (other gaps — a loaded machine's
                               // slow_consumer or bridge — may come and are counted apart)
  std::thread watchdog([&] {   // (a failing test does not hang)
    for (int i = 0; i < 600 && !stop; ++i) std::this_thread::sleep_for(50ms);
    sub.cancel();
  });
  std::thread killer;  // (relay B goes away, stopped from another thread while this one reads)
  client::SubscriberEvent e;
  while (after.size() < 300 && sub.next(e)) {
    if (e.kind == client::SubscriberEvent::Kind::gap) {
      if (e.reason == "relay_restart") ++switches;
      continue;
    }
    (switches == 0 ? before : after).push_back(e.sequence);
    if (before.size() == 300 && switches == 0 && !killer.joinable())
      killer = std::thread([&b] { b.reset(); });
  }
  stop = true;
  if (killer.joinable()) killer.join();
  producer.join();
  watchdog.join();
  ASSERT_GE(before.size(), 300U);
  ASSERT_EQ(after.size(), 300U);
  EXPECT_EQ(switches, 1U);
  // (one reconnect, or more when the first reaches the stopping relay once more)
  EXPECT_GE(sub.stats().reconnects, 1U);
  for (std::size_t i = 1; i < before.size(); ++i) ASSERT_GT(before[i], before[i - 1]);
  EXPECT_GT(after.front(), before.back());  // (nothing repeated)
  for (std::size_t i = 1; i < after.size(); ++i) ASSERT_GT(after[i], after[i - 1]);
}

// Relays joining and leaving a cluster topic under load leave nothing behind: the producing
// relay's threads and descriptors, and JetStream's consumers, come back to where they were.
// NATS's servers carry messages up to their max_payload (64 KiB here; NATS's default is 1 MiB). A
// burst of items of which no two fit in one NATS message crosses whole (each message within the
// limit), an item larger than NATS carries is refused to its producer with a status naming
// max_payload — not acked and then stuck behind the bridge — and the topic carries on after it.
void max_payload_case(TopicMode mode) {
  constexpr std::size_t kMaxPayload = 64 * 1024;
  NatsCluster nats(3, kMaxPayload);
  ASSERT_TRUE(nats.ready());
  const auto topic = cluster_topic("big", mode);
  RelayScene a(relay_config(nats, 0, topic));
  RelayScene b(relay_config(nats, 1, topic));
  auto so = subscriber(b, "big", "on-b");
  so.depth = 64;
  client::Subscriber sb(so);
  ASSERT_TRUE(sb.subscribed());
  ASSERT_TRUE(wait_receiving(b, "big"));
  constexpr std::uint64_t kItems = 40;
  Seen seen;
  auto t = reader(sb, seen, kItems - 1);
  client::PublisherOptions po;
  po.target = a.target;
  po.topic = "big";
  {
    client::Publisher pub(po);
    for (std::uint64_t i = 0; i < kItems; ++i)
      ASSERT_TRUE(pub.publish(Buffer::copy(std::string(30 * 1024, 'i'))).ok());
    ASSERT_TRUE(pub.close().ok());
  }
  join_within(t, sb);
  EXPECT_EQ(seen.sequences.size(), kItems);
  EXPECT_EQ(seen.lost_bridge + seen.lost_slow + seen.lost_other, 0U);
  EXPECT_EQ(bridge_counter(a, "big", "max_item_bytes"), kMaxPayload - 40);
  {
    client::Publisher big(po);
    (void)big.publish(Buffer::copy(std::string(kMaxPayload, 'B')));
    const auto st = big.close();
    EXPECT_EQ(st.code, 3) << st.to_string();  // INVALID_ARGUMENT
    EXPECT_NE(st.message.find("max_payload"), std::string::npos) << st.message;
  }
  EXPECT_EQ(a.metric("sluice_refusals_total", "kind=\"frame_too_big\""), 1);
  {
    client::Publisher after(po);
    ASSERT_TRUE(after.publish(Buffer::copy(std::string(100, 'a'))).ok());
    ASSERT_TRUE(after.close().ok());
  }
  client::SubscriberEvent e;
  ASSERT_TRUE(sb.next(e));
  EXPECT_EQ(e.kind, client::SubscriberEvent::Kind::item);
  EXPECT_EQ(e.payload.size(), 100U);
  EXPECT_EQ(bridge_counter(a, "big", "retries"), 0U) << "a batch NATS refused was sent again";
  EXPECT_EQ(bridge_counter(a, "big", "too_big"), 0U);
}

TEST(Cluster, LosslessItemsLargerThanNatsCarriesAreRefusedAndTheRestCross) {
  max_payload_case(TopicMode::lossless);
}

TEST(Cluster, RealtimeItemsLargerThanNatsCarriesAreRefusedAndTheRestCross) {
  max_payload_case(TopicMode::realtime);
}

// NATS stalls — the relay's only server stopped (SIGSTOP: connections stay open, nothing is
// answered) —
// while sessions open and close on the relay. Meanwhile the bridge has work that waits for NATS:
// a subscriber leaves a lossless topic the bridge receives (its JetStream consumer is deleted by
// a request the server never answers), idle cluster topics are removed (each link lets go of a
// batch that JetStream never acks), and every new session makes a cluster topic the bridge must
// link. No session waits for any of it: each opens, carries an item and closes in well under
// the bridge's 5 s wait for JetStream (before the bridge had its own thread, the relay's loop and
// its topic registry waited for it: a session took 5 s and more).
TEST(Cluster, AStalledNatsServerHoldsUpNoSession) {
  NatsCluster nats(3);
  ASSERT_TRUE(nats.ready());
  RelayConfig c;
  c.nats.urls.push_back(nats.url(0));
  c.nats.discovered_servers = false;
  c.nats.storage = "memory";
  c.defaults.scope = TopicScope::cluster;
  c.defaults.mode = TopicMode::lossless;
  c.topic_idle_timeout = 300ms;
  RelayScene relay(c);
  {
    client::Subscriber leaver(subscriber(relay, "warm", "leaver"));
    ASSERT_TRUE(leaver.subscribed());
    ASSERT_TRUE(wait_receiving(relay, "warm"));
    ASSERT_EQ(::kill(nats.pid(0), SIGSTOP), 0);
  }
  using Clock = std::chrono::steady_clock;
  Clock::duration slowest{};
  int sessions = 0;
  for (const auto until = Clock::now() + 8s; Clock::now() < until; ++sessions) {
    const auto began = Clock::now();
    const std::string topic = "fresh-" + std::to_string(sessions);
    client::Subscriber sub(subscriber(relay, topic, "reader"));
    ASSERT_TRUE(sub.subscribed());
    client::PublisherOptions po;
    po.target = relay.target;
    po.topic = topic;
    client::Publisher pub(po);
    ASSERT_TRUE(pub.publish(Buffer::copy(std::string(64, 's'))).ok());
    client::SubscriberEvent e;
    ASSERT_TRUE(sub.next(e));
    EXPECT_EQ(e.kind, client::SubscriberEvent::Kind::item);
    ASSERT_TRUE(pub.close().ok());
    slowest = std::max(slowest, Clock::now() - began);
    std::this_thread::sleep_for(150ms);
  }
  ASSERT_EQ(::kill(nats.pid(0), SIGCONT), 0);
  EXPECT_GE(sessions, 10);
  EXPECT_LT(slowest, 2s) << "a session waited "
                         << std::chrono::duration_cast<std::chrono::milliseconds>(slowest).count()
                         << " ms while NATS was stalled";
}

TEST(Cluster, RelaysJoiningAndLeavingLeakNothing) {
  NatsCluster nats(3);
  ASSERT_TRUE(nats.ready());
  auto topic = cluster_topic("churn", TopicMode::lossless);
  RelayScene a(relay_config(nats, 0, topic));
  std::atomic<bool> done{false};
  std::thread producer([&] {
    client::PublisherOptions po;
    po.target = a.target;
    po.topic = "churn";
    client::Publisher pub(po);
    while (!done) {
      (void)pub.publish(Buffer::copy(std::string(512, 'c')));
      std::this_thread::sleep_for(1ms);
    }
    (void)pub.close();
  });
  const auto count = [](const char* dir) {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++n;
    return n;
  };
  std::this_thread::sleep_for(500ms);
  const std::size_t fds = count("/proc/self/fd");
  const std::size_t threads = count("/proc/self/task");
  constexpr int kCycles = 4;
  for (int i = 0; i < kCycles; ++i) {
    RelayScene b(relay_config(nats, 1 + i % 2, topic));
    client::Subscriber sb(subscriber(b, "churn", "joiner"));
    ASSERT_TRUE(sb.subscribed());
    ASSERT_TRUE(wait_receiving(b, "churn"));
    client::SubscriberEvent e;
    for (int k = 0; k < 50; ++k) ASSERT_TRUE(sb.next(e));
  }  // (each relay shuts down: its consumer is deleted)
  done = true;
  producer.join();
  std::this_thread::sleep_for(1s);  // (gRPC's and NATS's threads wind down)
  EXPECT_LE(count("/proc/self/fd"), fds + 4);
  EXPECT_LE(count("/proc/self/task"), threads + 4);
  // JetStream: no consumer left on the topic's stream.
  natsConnection* nc = nullptr;
  ASSERT_EQ(natsConnection_ConnectTo(&nc, nats.url(0).c_str()), NATS_OK);
  jsCtx* js = nullptr;
  ASSERT_EQ(natsConnection_JetStream(&js, nc, nullptr), NATS_OK);
  jsStreamInfo* si = nullptr;
  ASSERT_EQ(js_GetStreamInfo(&si, js, "sluice_2Echurn", nullptr, nullptr), NATS_OK);
  EXPECT_EQ(si->State.Consumers, 0);
  jsStreamInfo_Destroy(si);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
}

}  // namespace
}  // namespace sluice

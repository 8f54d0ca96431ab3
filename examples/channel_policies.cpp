// One example per overflow policy, as quoted in docs/channel.md. Runs as a test.
#include <cassert>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "sluice/channel.hpp"

using namespace std::chrono_literals;
using sluice::Channel;
using sluice::ChannelConfig;
using sluice::DropReason;
using sluice::OverflowPolicy;
using sluice::SendStatus;

// block: lossless. The producer waits for room, then gets a timeout it can act on.
void block_example() {
  ChannelConfig c;
  c.name = "telemetry";
  c.policy = OverflowPolicy::block;
  c.max_items = 1024;
  c.max_bytes = 64 * 1024;
  c.max_wait = 50ms;
  Channel<std::string> ch(c);

  std::thread consumer([&] {
    for (auto r = ch.recv(); r.ok(); r = ch.recv()) std::this_thread::sleep_for(1ms);
  });
  for (int i = 0; i < 200; ++i) {
    auto r = ch.send(std::string(1024, 'x'));
    if (r.status == SendStatus::timeout) std::printf("block: %s\n", r.message.c_str());
  }
  ch.close();
  consumer.join();
  auto s = ch.stats();
  std::printf("block: sent %llu, received %llu, lost %llu, blocked %.2f s\n",
              static_cast<unsigned long long>(s.sent), static_cast<unsigned long long>(s.received),
              static_cast<unsigned long long>(s.dropped.total()), s.blocked_seconds);
  assert(s.dropped.total() == 0);
}

// drop_oldest: real-time. The freshest items survive; every eviction is counted.
void drop_oldest_example() {
  ChannelConfig c;
  c.name = "camera";
  c.policy = OverflowPolicy::drop_oldest;
  c.max_items = 4;
  Channel<int> ch(c);
  for (int frame = 0; frame < 10; ++frame) (void)ch.send(frame);  // never waits
  auto first = ch.try_recv();
  std::printf("drop_oldest: first frame left is %d, dropped %llu as overflow\n", *first,
              static_cast<unsigned long long>(ch.stats().dropped[DropReason::overflow]));
  assert(*first == 6);
}

// drop_newest: keep what is queued, refuse what does not fit, count it.
void drop_newest_example() {
  ChannelConfig c;
  c.name = "logs";
  c.policy = OverflowPolicy::drop_newest;
  c.max_items = 2;
  Channel<std::string> ch(c);
  (void)ch.send(std::string("a"));
  (void)ch.send(std::string("b"));
  auto r = ch.send(std::string("c"));
  std::printf("drop_newest: third send -> %s (%s)\n", std::string(to_string(r.status)).c_str(),
              std::string(to_string(r.reason)).c_str());
  assert(r.status == SendStatus::dropped);
}

// reject: the producer hears "would block" at once and decides (retry, coalesce, slow down).
void reject_example() {
  ChannelConfig c;
  c.name = "commands";
  c.policy = OverflowPolicy::reject;
  c.max_items = 1;
  Channel<std::string> ch(c);
  (void)ch.send(std::string("go"));
  std::string next = "stop";
  auto r = ch.try_send(std::move(next));
  std::printf("reject: -> %s, the producer still holds \"%s\"\n",
              std::string(to_string(r.status)).c_str(), next.c_str());
  assert(r.status == SendStatus::would_block && next == "stop");
}

int main() {
  block_example();
  drop_oldest_example();
  drop_newest_example();
  reject_example();
  return 0;
}

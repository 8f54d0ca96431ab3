// The relay and its C++ client in one program (docs/relay.md "Clients"): a relay on an
// ephemeral loopback port, a subscriber, a publisher that is told to slow down by a small
// lossless topic, and every item arriving once, in order.
#include <cassert>
#include <cstdio>
#include <string>
#include <thread>

#include "sluice/client/client.hpp"
#include "sluice/relay/server.hpp"

int main() {
  sluice::RelayConfig config;
  config.grpc_port = 0;  // ephemeral
  config.http_port = 0;
  config.defaults.max_queue_bytes = 256 * 1024;  // a small budget: the producer gets throttled
  sluice::RelayServer relay(config);
  relay.start();
  const std::string target = "127.0.0.1:" + std::to_string(relay.grpc_port());

  sluice::client::Subscriber sub({.target = target, .topic = "telemetry", .name = "reader"});
  constexpr int kItems = 2000;
  std::thread reader([&sub] {
    sluice::client::SubscriberEvent e;
    for (int i = 0; i < kItems; ++i) {
      const bool got = sub.next(e);
      assert(got && e.kind == sluice::client::SubscriberEvent::Kind::item);
      assert(e.sequence == static_cast<std::uint64_t>(i));  // none lost, in order
      (void)got;
      std::this_thread::sleep_for(std::chrono::microseconds(200));  // a slowish consumer
    }
  });

  int slow_downs = 0;
  sluice::client::Publisher pub({.target = target, .topic = "telemetry"},
                                [&slow_downs](const sluice::client::PublisherEvent& e) {
                                  if (e.kind == sluice::client::PublisherEvent::Kind::slow_down)
                                    ++slow_downs;  // the reader thread calls this
                                });
  for (int i = 0; i < kItems; ++i) {
    const auto st = pub.publish(sluice::Buffer(std::string(4096, 'x')));
    assert(st.ok());
    (void)st;
  }
  const auto closed = pub.close();  // OK once every item is in the topic
  assert(closed.ok());
  reader.join();
  std::printf("published %llu items, acked %llu, slow_down events %d\n",
              static_cast<unsigned long long>(pub.stats().published),
              static_cast<unsigned long long>(pub.stats().acked), slow_downs);
  sub.cancel();
  relay.shutdown();
  return closed.ok() ? 0 : 1;
}

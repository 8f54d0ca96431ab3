// An Asio event loop waiting on several channels with one thread, through on_readable().
// Quoted in docs/channel.md. Runs as a test.
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <cstdio>
#include <functional>
#include <memory>
#include <thread>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

#include "sluice/channel.hpp"

int main() {
  constexpr int kChannels = 3;
  std::vector<std::unique_ptr<sluice::Channel<int>>> channels;
  for (int i = 0; i < kChannels; ++i) {
    sluice::ChannelConfig c;
    c.name = "sensor-" + std::to_string(i);
    c.max_items = 16;
    channels.push_back(std::make_unique<sluice::Channel<int>>(c));
  }

  boost::asio::io_context io;
  auto work = boost::asio::make_work_guard(io);
  int open = kChannels;
  long total = 0;

  // Drain what is there, then ask to be called back (on the loop) when more arrives.
  std::function<void(int)> drain = [&](int i) {
    for (;;) {
      auto r = channels[i]->try_recv();
      if (r.ok()) {
        total += *r;
        continue;
      }
      if (r.status == sluice::RecvStatus::closed) {
        if (--open == 0) work.reset();
        return;
      }
      channels[i]->on_readable([&, i] { boost::asio::post(io, [&, i] { drain(i); }); });
      return;
    }
  };
  for (int i = 0; i < kChannels; ++i) boost::asio::post(io, [&, i] { drain(i); });
  std::thread loop([&] { io.run(); });

  std::vector<std::thread> producers;
  for (int i = 0; i < kChannels; ++i) {
    producers.emplace_back([&, i] {
      for (int n = 1; n <= 1000; ++n) (void)channels[i]->send(n);
      channels[i]->close();
    });
  }
  for (auto& p : producers) p.join();
  loop.join();
  std::printf("one thread received from %d channels, sum %ld\n", kChannels, total);
  return total == kChannels * 500500L ? 0 : 1;
}

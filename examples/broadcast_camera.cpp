// A camera fanned out to three consumers through one Broadcast<Buffer>: the pixels are stored
// once; the slow consumer loses its oldest frames, told so by a gap, and counted. Then a
// lossless broadcast whose publisher is held back by its slowest subscriber. Quoted in
// docs/broadcast.md. Runs as a test.
#include <cassert>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "sluice/broadcast.hpp"
#include "sluice/buffer.hpp"

using namespace std::chrono_literals;
using sluice::Broadcast;
using sluice::BroadcastConfig;
using sluice::BroadcastMode;
using sluice::Buffer;
using sluice::RecvStatus;

void lossy_camera() {
  BroadcastConfig c;
  c.name = "camera";
  c.mode = BroadcastMode::lossy;  // the camera never waits for anyone
  c.capacity = 8;                 // at most 8 frames held, whatever the number of consumers
  Broadcast<Buffer> camera(c);

  auto detector = camera.subscribe("detector", 4);
  auto recorder = camera.subscribe("recorder", 8);
  auto dashboard = camera.subscribe("dashboard", 2);  // reads rarely, wants only fresh frames

  for (int f = 0; f < 20; ++f) {
    (void)camera.publish(Buffer(std::string(640 * 480, static_cast<char>(f))));
    auto frame = detector.try_recv();  // the detector keeps up
    assert(frame.ok());
  }
  // The dashboard looks now: first a gap notice, then the two newest frames.
  auto r = dashboard.try_recv();
  std::printf("dashboard: %s, lost %llu (%s)\n", std::string(to_string(r.status)).c_str(),
              static_cast<unsigned long long>(r.lost), std::string(to_string(r.reason)).c_str());
  assert(r.status == RecvStatus::gap && r.lost == 18);
  while (dashboard.try_recv().ok()) {
  }
  const auto stats = camera.stats();
  for (const auto& s : stats.subscribers) {
    std::printf("%-10s received %3llu  lost %3llu  lag %2llu (of which lapped, lost: %llu)\n",
                s.name.c_str(), static_cast<unsigned long long>(s.received),
                static_cast<unsigned long long>(s.lost.total()),
                static_cast<unsigned long long>(s.lag), static_cast<unsigned long long>(s.lapped));
  }
}

void lossless_log() {
  BroadcastConfig c;
  c.name = "audit-log";
  c.mode = BroadcastMode::lossless;  // nobody loses anything; the publisher waits instead
  c.capacity = 64;
  c.max_wait = 2s;
  Broadcast<std::string> log(c);
  auto archive = log.subscribe("archive", 16);
  std::thread reader([&] {
    int n = 0;
    for (auto r = archive.recv(); r.ok(); r = archive.recv()) ++n;
    std::printf("archive received %d of 1000 lines\n", n);
    assert(n == 1000);
  });
  for (int i = 0; i < 1000; ++i) {
    auto r = log.publish("line " + std::to_string(i));
    if (r.status == sluice::SendStatus::timeout) std::printf("%s\n", r.message.c_str());
  }
  log.close();
  reader.join();
}

int main() {
  lossy_camera();
  lossless_log();
  return 0;
}

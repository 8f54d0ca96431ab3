#include "demo_traffic.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <utility>

#include "sluice/buffer.hpp"
#include "sluice/client/client.hpp"
#include "sluice/client/stage_worker.hpp"

namespace sluice::cli {

namespace {

using namespace std::chrono_literals;

constexpr std::size_t kWidth = 160;
constexpr std::size_t kHeight = 120;

void put32(std::string& s, std::size_t at, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) s[at + i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}

// A 160x120 24-bit BMP (browsers show it as it is; no codec needed): a gradient that moves
// with `n` and a bar that fills once a second.
std::string camera_frame(std::uint64_t n) {
  const std::size_t row = kWidth * 3;
  std::string bmp(54 + row * kHeight, '\0');
  bmp[0] = 'B';
  bmp[1] = 'M';
  put32(bmp, 2, static_cast<std::uint32_t>(bmp.size()));
  put32(bmp, 10, 54);
  put32(bmp, 14, 40);
  put32(bmp, 18, kWidth);
  put32(bmp, 22, kHeight);
  bmp[26] = 1;
  bmp[28] = 24;
  put32(bmp, 34, static_cast<std::uint32_t>(row * kHeight));
  for (std::size_t y = 0; y < kHeight; ++y) {
    for (std::size_t x = 0; x < kWidth; ++x) {
      const std::size_t p = 54 + (kHeight - 1 - y) * row + x * 3;
      const bool bar = y >= kHeight - 8 && x < (n % 30) * kWidth / 30;
      bmp[p] = static_cast<char>(bar ? 255 : (x * 255 / kWidth));           // blue
      bmp[p + 1] = static_cast<char>(bar ? 255 : ((y * 2 + n * 4) % 256));  // green
      bmp[p + 2] = static_cast<char>(bar ? 255 : ((x + y + n * 2) % 256));  // red
    }
  }
  return bmp;
}

}  // namespace

void add_demo_topics(RelayConfig& config) {
  const auto declared = [&config](const std::string& name) {
    return std::ranges::any_of(config.topics,
                               [&name](const TopicConfig& t) { return t.name == name; });
  };
  if (!declared("demo.camera")) {
    TopicConfig t;
    t.name = "demo.camera";
    t.mode = TopicMode::realtime;
    t.depth = 4;
    t.content_type = "image/bmp";
    config.topics.push_back(t);
  }
  if (!declared("demo.telemetry")) {
    TopicConfig t;
    t.name = "demo.telemetry";
    t.mode = TopicMode::lossless;
    t.max_queue_bytes = std::uint64_t{256} * 1024;
    t.max_wait = 60s;
    t.content_type = "application/json";
    config.topics.push_back(t);
  }
  if (!declared("demo.detect")) {
    TopicConfig t;
    t.name = "demo.detect";
    t.mode = TopicMode::realtime;
    t.content_type = "image/bmp";
    StageConfig st;
    st.fps = 30;
    st.max_in_flight = 2;
    st.results_topic = "demo.detect.results";
    t.stage = st;
    config.topics.push_back(t);
  }
}

struct DemoTraffic::Clients {
  std::vector<std::unique_ptr<client::Subscriber>> subscribers;
  std::vector<std::unique_ptr<StageWorker>> workers;
};

DemoTraffic::DemoTraffic(std::uint16_t grpc_port, std::uint16_t http_port)
    : clients_(std::make_shared<Clients>()) {
  const std::string target = "127.0.0.1:" + std::to_string(grpc_port);
  // A producer at `fps` frames a second of `make(n)` until stopped.
  const auto producer = [this, target](std::string topic, double fps,
                                       std::function<std::string(std::uint64_t)> make) {
    threads_.emplace_back([this, target, topic = std::move(topic), fps, make = std::move(make)] {
      client::PublisherOptions o;
      o.target = target;
      o.topic = topic;
      o.window_bytes = 1 << 20;
      o.max_retries = 0;  // (retry for as long as the demo runs)
      client::Publisher pub(o);
      const auto start = std::chrono::steady_clock::now();
      for (std::uint64_t n = 0; !stopping_.load(); ++n) {
        if (fps > 0) {
          std::this_thread::sleep_until(
              start + std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::duration<double>(static_cast<double>(n) / fps)));
        }
        if (!pub.publish(Buffer::copy(make(n))).ok()) break;
      }
    });
  };
  // A subscriber that takes an item every `pause` (0: as they come).
  const auto viewer = [this, target](std::string topic, std::string name, std::uint32_t depth,
                                     std::chrono::microseconds pause) {
    client::SubscriberOptions o;
    o.target = target;
    o.topic = std::move(topic);
    o.name = std::move(name);
    o.depth = depth;
    auto sub = std::make_unique<client::Subscriber>(o);
    client::Subscriber* s = sub.get();
    clients_->subscribers.push_back(std::move(sub));
    cancels_.emplace_back([s] { s->cancel(); });
    threads_.emplace_back([this, s, pause] {
      client::SubscriberEvent e;
      while (!stopping_.load() && s->next(e)) {
        if (pause.count() > 0 && e.kind == client::SubscriberEvent::Kind::item)
          std::this_thread::sleep_for(pause);
      }
    });
  };
  const auto worker = [this, http_port](std::string name, std::chrono::milliseconds cost) {
    StageWorkerOptions o;
    o.port = http_port;
    o.topic = "demo.detect";
    o.name = std::move(name);
    auto w = std::make_unique<StageWorker>(o, [cost](const WorkFrame& f) {
      std::this_thread::sleep_for(cost);
      return std::string(R"({"objects":)") + std::to_string(f.sequence % 5) + "}";
    });
    StageWorker* p = w.get();
    clients_->workers.push_back(std::move(w));
    cancels_.emplace_back([p] { p->stop(); });
    threads_.emplace_back([this, p] {
      while (!stopping_.load()) {
        try {
          p->connect();
          p->run();
        } catch (const std::exception&) {
          std::this_thread::sleep_for(500ms);
        }
        break;
      }
    });
  };

  viewer("demo.camera", "fast-viewer", 8, 0ms);
  viewer("demo.camera", "slow-viewer", 2, 250ms);  // (4 frames a second of 30)
  producer("demo.camera", 30, camera_frame);
  viewer("demo.telemetry", "slow-consumer", 0, std::chrono::microseconds(500));
  producer("demo.telemetry", 5000, [](std::uint64_t n) {
    std::string line = R"({"seq":)" + std::to_string(n) + R"(,"pose":[0.12,0.5,1.7],"v":)" +
                       std::to_string(n % 97) + "}";
    line.resize(1024, ' ');
    return line;
  });
  worker("fast-model", 40ms);
  worker("slow-model", 150ms);
  viewer("demo.detect.results", "results-reader", 0, 0ms);
  // 45 frames a second offered to a stage whose workers manage about 30 together.
  producer("demo.detect", 45, camera_frame);
}

DemoTraffic::~DemoTraffic() {
  stop();
}

void DemoTraffic::stop() {
  if (stopping_.exchange(true)) return;
  for (auto& c : cancels_) c();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

}  // namespace sluice::cli

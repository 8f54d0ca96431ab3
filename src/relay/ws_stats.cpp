// The relay's stats as a stream (/v1/ws/stats?period_ms=N): the JSON of /v1/stats (the topics
// the caller's stats patterns show), pushed every period as a text message, for dashboards.
// A snapshot is skipped while the previous one is still being written (a slow reader gets
// fewer, never a queue); the stream sends nothing else, and reads only to answer control
// frames.
#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <utility>

#include "stats_view.hpp"
#include "ws_session.hpp"

namespace sluice::relay {

namespace {

// The dashboard sends nothing but control frames.
constexpr std::uint64_t kMaxStatsClientMessage = std::uint64_t{4} * 1024;
// ?period_ms=: 100 ms to a minute, a second by default.
constexpr std::uint64_t kMinStatsPeriodMs = 100;
constexpr std::uint64_t kMaxStatsPeriodMs = 60'000;
constexpr std::chrono::milliseconds kDefaultStatsPeriod{1000};

class WsStats final : public WsSession<WsStats> {
 public:
  WsStats(RelayCore& core, SessionSlot slot, Connection connection, StatsReader reader,
          std::chrono::milliseconds period)
      : WsSession(core, core.loops.main(), std::move(slot), std::move(connection), "ws-stats",
                  {kMaxStatsClientMessage, 0, "", false}),
        reader_(std::move(reader)),
        period_(period) {}

  void opened() {
    read();
    tick();
  }

 private:
  friend class WsSession<WsStats>;

  void tick() {
    if (ending()) return;
    if (!writing()) {
      nlohmann::json j = reader_.snapshot().json;  // (not text parsed again)
      j["period_ms"] = period_.count();
      j["time_ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
      send_event(j, Priority::important);
    }
    timer_.expires_after(period_);
    timer_.async_wait([w = weak_from_this()](boost::beast::error_code ec) {
      if (auto self = w.lock(); self && !ec) self->tick();
    });
  }

  void read() {
    in_.clear();
    ws_.async_read(in_, [self = shared_from_this()](boost::beast::error_code ec, std::size_t) {
      if (ec) {
        self->read_failed(ec);
        self->closing_ = true;
        self->timer_.cancel();
        return;
      }
      self->read();  // (anything the dashboard sends is ignored)
    });
  }

  StatsReader reader_;
  std::chrono::milliseconds period_;
  boost::beast::flat_buffer in_;
};

}  // namespace

std::optional<HttpResponse> ws_stats(RelayCore& core, SessionSlot slot, const WsRoute& route,
                                     const HttpTarget& target, Connection& connection,
                                     HttpServer::Request& request) {
  auto reader = StatsReader::join(core.topics, route.who);
  if (!reader) return http_refusal(core, reader.refusal());
  const auto period = target.count("period_ms", kMaxStatsPeriodMs, "60000");
  if (!period) return http_refusal(core, period.refusal());
  const auto ms = std::chrono::milliseconds(std::max<std::uint64_t>(*period, kMinStatsPeriodMs));
  auto session =
      std::make_shared<WsStats>(core, std::move(slot), std::move(connection), std::move(*reader),
                                *period == 0 ? kDefaultStatsPeriod : ms);
  session->expire_with(*route.who);
  session->start(std::move(request));
  return std::nullopt;
}

}  // namespace sluice::relay

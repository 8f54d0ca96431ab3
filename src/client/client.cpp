// The relay's C++ client: Publisher (window, acks, RESOURCE_EXHAUSTED backoff and exact
// resend) and Subscriber (items and gap notices) over the generated gRPC stubs.
#include "sluice/client/client.hpp"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <deque>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "grpc_items.hpp"
#include "sluice/detail/cond_var.hpp"
#include "sluice/detail/thread_annotations.hpp"
#include "sluice/relay/protocol.hpp"  // kPublishedThroughKey, unix_now_ns
#include "sluice/v1/relay.grpc.pb.h"

namespace sluice::client {

namespace {

// A channel to the relay. Items are as large as the relay's frame limit allows (5 MiB by
// default, up to 1 GiB): gRPC's default 4 MiB receive limit would refuse them, so the relay,
// which bounds what it sends, sets the size.
std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.is_open()) throw std::runtime_error(std::string("cannot read ") + what + " " + path);
  return text.str();
}

std::shared_ptr<grpc::Channel> relay_channel(const std::string& target, const TlsOptions& tls) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  if (tls.ca_file.empty())
    return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = read_file(tls.ca_file, "the relay's CA");
  if (!tls.cert_file.empty()) {
    ssl.pem_cert_chain = read_file(tls.cert_file, "the client certificate");
    ssl.pem_private_key = read_file(tls.key_file, "the client key");
  }
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(ssl), args);
}

// 32 random hex digits: a producer id of its own.
std::string random_id() {
  std::random_device rd;
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(32, '0');
  for (auto& ch : out) ch = kHex[rd() & 0xF];
  return out;
}

// The call presents the principal's token, if there is one (`authorization: Bearer`).
void authorize(grpc::ClientContext& ctx, const std::string& token) {
  if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
}

}  // namespace

namespace {

namespace v1 = ::sluice::v1;

Status from_grpc(const grpc::Status& s) {
  return {static_cast<int>(s.error_code()), s.error_message()};
}

// Why a client that never reached its relay gives up at once.
std::string unreachable(const std::string& target, const std::string& why) {
  return "cannot reach the relay at " + target + ": " + why +
         " (is it running? the target is its gRPC address, server.grpc_port: 7400 by default)";
}

}  // namespace

std::string Status::to_string() const {
  static constexpr std::array<const char*, 17> kNames = {"OK",
                                                         "CANCELLED",
                                                         "UNKNOWN",
                                                         "INVALID_ARGUMENT",
                                                         "DEADLINE_EXCEEDED",
                                                         "NOT_FOUND",
                                                         "ALREADY_EXISTS",
                                                         "PERMISSION_DENIED",
                                                         "RESOURCE_EXHAUSTED",
                                                         "FAILED_PRECONDITION",
                                                         "ABORTED",
                                                         "OUT_OF_RANGE",
                                                         "UNIMPLEMENTED",
                                                         "INTERNAL",
                                                         "UNAVAILABLE",
                                                         "DATA_LOSS",
                                                         "UNAUTHENTICATED"};
  std::string name = code >= 0 && code < static_cast<int>(kNames.size())
                         ? kNames[static_cast<std::size_t>(code)]
                         : "CODE_" + std::to_string(code);
  return message.empty() ? name : name + ": " + message;
}

std::string_view to_string(PublisherEvent::Kind kind) noexcept {
  switch (kind) {
    case PublisherEvent::Kind::ack:
      return "ack";
    case PublisherEvent::Kind::slow_down:
      return "slow_down";
    case PublisherEvent::Kind::resume:
      return "resume";
    case PublisherEvent::Kind::retrying:
      return "retrying";
  }
  return "unknown";
}

// The two calls whose messages carry payloads, with those messages as bytes: the generated
// stub's Publish and Subscribe (same method names) with the request, or the responses, encoded
// and decoded by grpc_items.hpp, so that payloads are not copied. gRPC's stream factories
// take any message type it can serialize (a ByteBuffer as is).
struct PayloadCalls {
  explicit PayloadCalls(std::shared_ptr<grpc::Channel> c)
      : channel(std::move(c)),
        publish_method("/sluice.v1.Relay/Publish", grpc::internal::RpcMethod::BIDI_STREAMING,
                       channel),
        subscribe_method("/sluice.v1.Relay/Subscribe", grpc::internal::RpcMethod::SERVER_STREAMING,
                         channel) {}

  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, v1::PublishEvent>> publish(
      grpc::ClientContext* ctx) const {
    return std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, v1::PublishEvent>>(
        grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, v1::PublishEvent>::Create(
            channel.get(), publish_method, ctx));
  }
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> subscribe(
      grpc::ClientContext* ctx, const v1::SubscribeRequest& req) const {
    return std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>>(
        grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel.get(),
                                                                      subscribe_method, ctx, req));
  }

  std::shared_ptr<grpc::Channel> channel;
  grpc::internal::RpcMethod publish_method;
  grpc::internal::RpcMethod subscribe_method;
};

// ---- Publisher ----

// publish() queues the item in the window and returns; a writer thread sends what is queued,
// as one batch per write (what accumulated while the previous write was in flight), and owns
// the call: it reopens it after RESOURCE_EXHAUSTED and resends. A reader thread takes acks.
struct Publisher::Impl {
  using Stream = grpc::ClientReaderWriter<grpc::ByteBuffer, v1::PublishEvent>;
  struct Pending {
    std::uint64_t sequence = 0;
    Buffer payload;
    std::int64_t timestamp_ns = 0;
    std::uint32_t flags = 0;
  };
  static constexpr std::size_t kBatchItems = 256;
  static constexpr std::uint64_t kBatchBytes = 1u << 20;

  Impl(PublisherOptions o, std::function<void(const PublisherEvent&)> cb)
      : options(std::move(o)),
        on_event(std::move(cb)),
        producer(options.producer.empty() ? random_id() : options.producer),
        calls(relay_channel(options.target, options.tls)) {
    open_call();
    writer = std::thread([this] { write_loop(); });
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  Impl(Impl&&) = delete;
  Impl& operator=(Impl&&) = delete;
  ~Impl() {
    {
      const MutexLock lock(mu);
      if (!finished) {
        stopping = true;  // no retries from here on
        if (ctx) ctx->TryCancel();
      }
      cv.notify_all();
    }
    if (writer.joinable()) writer.join();
  }

  void emit(const PublisherEvent& e) const {
    if (on_event) on_event(e);
  }

  // Writer thread only (and the constructor, before it starts).
  void open_call() {
    auto next_ctx = std::make_unique<grpc::ClientContext>();
    authorize(*next_ctx, options.token);
    next_ctx->AddMetadata(std::string(kProducerKey), producer);
    grpc::ClientContext* call = next_ctx.get();  // (replaced by this thread only)
    {
      const MutexLock lock(mu);
      ctx = std::move(next_ctx);
      call_ended = false;
      if (stopping) ctx->TryCancel();
    }
    stream = calls.publish(call);
    named_topic = false;
    reader = std::thread([this] { read_events(); });
  }

  // The reader thread: acks free window space; flow events are passed on.
  void read_events() {
    for (v1::PublishEvent ev; stream->Read(&ev);) {
      reached.store(true, std::memory_order_relaxed);
      PublisherEvent out;
      switch (ev.event_case()) {
        case v1::PublishEvent::kAck: {
          out.kind = PublisherEvent::Kind::ack;
          out.sequence = ev.ack().sequence();
          const MutexLock lock(mu);
          prune(out.sequence);
          break;
        }
        case v1::PublishEvent::kSlowDown: {
          out.kind = PublisherEvent::Kind::slow_down;
          out.queue_bytes = ev.slow_down().queue_bytes();
          out.limit_bytes = ev.slow_down().limit_bytes();
          out.message = ev.slow_down().reason();
          const MutexLock lock(mu);
          ++counters.slow_downs;
          break;
        }
        case v1::PublishEvent::kResume: {
          out.kind = PublisherEvent::Kind::resume;
          out.queue_bytes = ev.resume().queue_bytes();
          const MutexLock lock(mu);
          ++counters.resumes;
          break;
        }
        default:
          continue;
      }
      emit(out);
    }
    const MutexLock lock(mu);
    call_ended = true;
    cv.notify_all();
  }

  // Items up to `sequence` are in the topic.
  void prune(std::uint64_t sequence) SLUICE_REQUIRES(mu) {
    bool progress = false;
    while (!unacked.empty() && unacked.front().sequence <= sequence) {
      unacked_bytes -= unacked.front().payload.size();
      unacked.pop_front();
      ++counters.acked;
      progress = true;
    }
    if (progress) {
      retries_in_a_row = 0;
      cv.notify_all();
    }
  }

  // Writer thread: waits for the call to end, collects its status and prunes what the relay
  // says it has (trailing metadata).
  Status end_call() {
    if (reader.joinable()) reader.join();
    const grpc::Status status = stream->Finish();
    const MutexLock lock(mu);
    const auto& trailers = ctx->GetServerTrailingMetadata();
    if (auto it = trailers.find(std::string(kPublishedThroughKey)); it != trailers.end())
      prune(std::stoull(std::string(it->second.data(), it->second.size())));
    stream.reset();
    return from_grpc(status);
  }

  // Writer thread: one write of `batch` (one item, or several as PublishRequest.items); large
  // payloads go out as references to their Buffers.
  bool write(const std::vector<Pending>& batch) {
    fields.clear();
    for (const auto& p : batch) {
      fields.push_back({named_topic ? std::string_view() : std::string_view(options.topic),
                        p.payload, p.sequence, p.timestamp_ns, p.flags});
      named_topic = true;
    }
    const grpc::ByteBuffer req = writer_.encode(wire::Envelope::publish_request, fields);
    fields.clear();
    return stream->Write(req);
  }

  // Writer thread: the call ended with `st`. After RESOURCE_EXHAUSTED or UNAVAILABLE (the
  // relay went away, restarts), while retries are left: waits the backoff and opens a new
  // call from which everything unacknowledged is sent again (true); what the topic already
  // has is acked, not published twice (the producer id). Anything else ends publishing with
  // that error (false).
  bool retry(const Status& st) {
    const auto backoff = backoff_for(st);
    if (!backoff) return false;
    PublisherEvent e;
    e.kind = PublisherEvent::Kind::retrying;
    e.backoff = *backoff;
    e.message = st.to_string();
    emit(e);
    {
      const MutexLock lock(mu);
      const auto until = std::chrono::steady_clock::now() + *backoff;
      while (!stopping) {
        if (!cv.wait_until(mu, until)) break;
      }
      if (stopping) {
        fail({static_cast<int>(grpc::StatusCode::CANCELLED), "the publisher was destroyed"});
        return false;
      }
      next_to_send = unacked.empty() ? next_sequence : unacked.front().sequence;
      counters.resent += next_sequence - next_to_send;
    }
    open_call();
    return true;
  }

  // How long to wait before the next call after one that ended with `st`; none (and publishing
  // failed) if no retry is due.
  std::optional<std::chrono::milliseconds> backoff_for(const Status& st) {
    const MutexLock lock(mu);
    const bool retryable = st.code == static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED) ||
                           st.code == static_cast<int>(grpc::StatusCode::UNAVAILABLE);
    if (stopping || !retryable || retries_in_a_row >= options.max_retries) {
      fail(st.ok() ? Status{static_cast<int>(grpc::StatusCode::UNAVAILABLE),
                            "the relay ended the Publish call"}
                   : st);
      return std::nullopt;
    }
    // Never reached at all (nothing listens there, or not the relay's gRPC port): fail fast,
    // as a NATS client does, rather than back off as for a relay that went away.
    if (st.code == static_cast<int>(grpc::StatusCode::UNAVAILABLE) &&
        !reached.load(std::memory_order_relaxed)) {
      fail({st.code, unreachable(options.target, st.message)});
      return std::nullopt;
    }
    const int shift = std::min(retries_in_a_row, 20);
    ++retries_in_a_row;
    ++counters.retries;
    return std::min(options.initial_backoff * (std::int64_t{1} << shift), options.max_backoff);
  }

  void fail(const Status& st) SLUICE_REQUIRES(mu) {
    error = st;
    finished = true;
    cv.notify_all();
  }

  void write_loop() {
    std::vector<Pending> batch;
    for (;;) {
      bool half_close = false;
      {
        const MutexLock lock(mu);
        while (next_to_send >= next_sequence && !closing && !call_ended && !stopping) cv.wait(mu);
        if (stopping && !call_ended) ctx->TryCancel();
        const bool ending = call_ended || stopping;  // then straight to ending the call below
        if (!ending && next_to_send < next_sequence) {
          std::uint64_t bytes = 0;
          auto it = unacked.begin() +
                    static_cast<std::ptrdiff_t>(next_to_send - unacked.front().sequence);
          // At most kBatchBytes, or one larger item alone: a batch is never larger than what
          // the relay accepts in one message (its frame limit plus a batch of small items).
          for (; it != unacked.end() && batch.size() < kBatchItems; ++it) {
            if (!batch.empty() && bytes + it->payload.size() > kBatchBytes) break;
            batch.push_back(*it);  // Buffers: references, not bytes
            bytes += it->payload.size();
          }
        } else if (!ending) {
          half_close = true;  // closing, everything sent
        }
      }
      if (!batch.empty()) {  // (a call that ended meanwhile fails the write)
        if (write(batch)) {
          const MutexLock lock(mu);
          next_to_send += batch.size();
          batch.clear();
          continue;
        }
      }
      batch.clear();
      if (half_close) stream->WritesDone();
      // The call is over (or, after WritesDone, ends once the relay has placed everything).
      const Status st = end_call();
      if (half_close && st.ok()) {
        const MutexLock lock(mu);
        if (!unacked.empty()) {
          fail({static_cast<int>(grpc::StatusCode::DATA_LOSS),
                std::to_string(unacked.size()) + " items were not acknowledged"});
        } else {
          finished = true;
          cv.notify_all();
        }
        return;
      }
      if (!retry(st)) return;
    }
  }

  Status publish(Buffer payload, std::int64_t ts, std::uint32_t flags) {
    if (ts == 0) ts = unix_now_ns();
    const std::uint64_t size = payload.size();
    const MutexLock lock(mu);
    while (!finished && !unacked.empty() && unacked_bytes + size > options.window_bytes)
      cv.wait(mu);
    if (finished || closing) {
      return error.ok() ? Status{static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION),
                                 "publish() after close()"}
                        : error;
    }
    unacked.push_back({next_sequence++, std::move(payload), ts, flags});
    unacked_bytes += size;
    ++counters.published;
    counters.bytes += size;
    cv.notify_all();
    return {};
  }

  Status close() {
    {
      const MutexLock lock(mu);
      closing = true;
      cv.notify_all();
    }
    if (writer.joinable()) writer.join();
    const MutexLock lock(mu);
    return error;
  }

  const PublisherOptions options;
  const std::function<void(const PublisherEvent&)> on_event;
  const std::string producer;  // its id on every call (sluice-producer)
  const PayloadCalls calls;
  std::unique_ptr<Stream> stream;        // writer thread (reader reads through it)
  wire::ItemWriter writer_;              // writer thread
  std::vector<wire::ItemFields> fields;  // writer thread (scratch)
  std::thread reader;
  std::thread writer;
  bool named_topic = false;  // writer: the current call's first item carried the topic

  mutable Mutex mu;
  CondVar cv;
  // Replaced by the writer thread under mu (the destructor cancels it).
  std::unique_ptr<grpc::ClientContext> ctx SLUICE_GUARDED_BY(mu);
  std::deque<Pending> unacked SLUICE_GUARDED_BY(mu);  // sent or not, not yet acknowledged
  std::uint64_t unacked_bytes SLUICE_GUARDED_BY(mu) = 0;
  std::uint64_t next_sequence SLUICE_GUARDED_BY(mu) = 0;  // the next item's number
  // The first item not written on the current call.
  std::uint64_t next_to_send SLUICE_GUARDED_BY(mu) = 0;
  bool call_ended SLUICE_GUARDED_BY(mu) = false;  // the reader saw the end of the current call
  bool closing SLUICE_GUARDED_BY(mu) = false;     // close() was called
  bool stopping SLUICE_GUARDED_BY(mu) = false;    // the destructor runs
  std::atomic<bool> reached{false};             // the relay answered this publisher once (an event)
  bool finished SLUICE_GUARDED_BY(mu) = false;  // the writer is done: closed, or `error`
  Status error SLUICE_GUARDED_BY(mu);
  int retries_in_a_row SLUICE_GUARDED_BY(mu) = 0;
  PublisherStats counters SLUICE_GUARDED_BY(mu);
};

Publisher::Publisher(PublisherOptions options, std::function<void(const PublisherEvent&)> on_event)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(on_event))) {}
Publisher::~Publisher() = default;
Status Publisher::publish(Buffer payload, std::int64_t timestamp_ns, std::uint32_t flags) {
  return impl_->publish(std::move(payload), timestamp_ns, flags);
}
Status Publisher::close() {
  return impl_->close();
}
PublisherStats Publisher::stats() const {
  const MutexLock lock(impl_->mu);
  return impl_->counters;
}
std::uint64_t Publisher::unacknowledged() const {
  const MutexLock lock(impl_->mu);
  return impl_->unacked.size();
}

// ---- Subscriber ----

struct Subscriber::Impl {
  explicit Impl(const SubscriberOptions& o) : options(o) {
    relays.push_back(std::make_unique<const PayloadCalls>(relay_channel(o.target, o.tls)));
    for (const auto& t : o.fallback_targets)
      relays.push_back(std::make_unique<const PayloadCalls>(relay_channel(t, o.tls)));
    open();
  }

  // Opens a Subscribe call (resuming at `position` once the epoch is known) and waits until
  // the relay has registered it; false if the call failed first. Reading thread only.
  bool open() {
    v1::SubscribeRequest req;
    req.set_topic(options.topic);
    req.set_name(options.name);
    req.set_depth(options.depth);
    req.set_epoch(epoch);
    req.set_from_position(position);
    auto next_ctx = std::make_unique<grpc::ClientContext>();
    authorize(*next_ctx, options.token);
    grpc::ClientContext* call = next_ctx.get();  // (replaced by this thread only)
    {
      const MutexLock lock(mu);
      if (cancelled) next_ctx->TryCancel();
      ctx = std::move(next_ctx);
    }
    reader = relays[relay]->subscribe(call, req);
    ev.items.clear();
    batch_next = 0;
    reader->WaitForInitialMetadata();  // (sent once subscribed; none if the call failed)
    const auto& md = call->GetServerInitialMetadata();
    if (md.find(std::string(kEpochKey)) == md.end()) return false;
    const auto value = [&](std::string_view key) {
      const auto it = md.find(std::string(key));
      return it == md.end() ? std::string() : std::string(it->second.data(), it->second.size());
    };
    epoch = value(kEpochKey);
    if (const std::string at = value(kPositionKey); !at.empty()) position = std::stoull(at);
    return true;
  }

  // The call ended with `st`: connect again (reconnect is on, the end was not ours or a
  // refusal), for up to reconnect_for. True once subscribed again.
  bool reconnect(const grpc::Status& st) {
    using C = grpc::StatusCode;
    const auto code = st.error_code();
    if (!options.reconnect || cancelled.load() || code == C::NOT_FOUND ||
        code == C::PERMISSION_DENIED || code == C::UNAUTHENTICATED || code == C::INVALID_ARGUMENT ||
        code == C::RESOURCE_EXHAUSTED) {
      return false;
    }
    if (epoch.empty() && code == C::UNAVAILABLE) {  // never subscribed: fail fast
      final_status =
          Status{static_cast<int>(code), unreachable(options.target, st.error_message())};
      return false;
    }
    const auto give_up = std::chrono::steady_clock::now() + options.reconnect_for;
    auto backoff = std::chrono::milliseconds(100);
    for (;;) {
      if (open()) {
        add(reconnects, 1);
        return true;
      }
      const grpc::Status failed = reader->Finish();
      if (cancelled.load() || failed.error_code() == C::NOT_FOUND ||
          failed.error_code() == C::PERMISSION_DENIED ||
          failed.error_code() == C::UNAUTHENTICATED) {
        final_status = from_grpc(failed);
        return false;
      }
      // (the next relay at once; the backoff after a round of all of them)
      relay = (relay + 1) % relays.size();
      if (relay != 0) continue;
      if (std::chrono::steady_clock::now() + backoff > give_up) {
        final_status = Status{static_cast<int>(C::UNAVAILABLE),
                              "the relay went away and did not come back within reconnect_for (" +
                                  std::to_string(options.reconnect_for.count()) +
                                  " ms): " + failed.error_message()};
        return false;
      }
      if (wait_cancelled(backoff)) {
        final_status = from_grpc(failed);
        return false;
      }
      backoff = std::min(backoff * 2, std::chrono::milliseconds(2000));
    }
  }

  const SubscriberOptions options;
  std::vector<std::unique_ptr<const PayloadCalls>> relays;  // target, then fallback_targets
  std::size_t relay = 0;                                    // the one subscribed to
  // Whether cancel() was called within `timeout`.
  bool wait_cancelled(std::chrono::milliseconds timeout) {
    const MutexLock lock(mu);
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (!cancelled.load()) {
      if (!cv.wait_until(mu, until)) break;
    }
    return cancelled.load();
  }
  void cancel_call() {
    const MutexLock lock(mu);
    ctx->TryCancel();
  }

  Mutex mu;  // ctx against cancel() from other threads
  CondVar cv;
  // Replaced by the reading thread under mu (cancel() cancels it from any thread).
  std::unique_ptr<grpc::ClientContext> ctx SLUICE_GUARDED_BY(mu);
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader;
  std::atomic<bool> cancelled{false};
  std::string epoch;            // the topic's run, from the relay
  std::uint64_t position = 0;   // the position of the next item expected
  grpc::ByteBuffer received;    // the last event read
  wire::SubscribeEventView ev;  // it, decoded
  std::size_t batch_next = 0;   // the next of its items to hand out
  bool ended = false;
  std::optional<Status> status;
  std::optional<Status> final_status;  // set when reconnecting gave up (or was cancelled)
  // Written by the reading thread only, read by stats() from any thread: no lock per message.
  std::atomic<std::uint64_t> items{0};
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::uint64_t> gaps{0};
  std::atomic<std::uint64_t> lost{0};
  std::atomic<std::uint64_t> reconnects{0};

  static void add(std::atomic<std::uint64_t>& counter, std::uint64_t n) {  // single writer
    counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }

  void take_item(SubscriberEvent& event, wire::ItemFields& item) {
    event.kind = SubscriberEvent::Kind::item;
    event.payload = std::move(item.payload);  // (a view of what gRPC received, or one copy)
    event.sequence = item.sequence;
    event.timestamp_ns = item.timestamp_ns;
    event.flags = item.flags;
    event.lost = 0;
    event.reason.clear();
    ++position;
    add(items, 1);
    add(bytes, event.payload.size());
  }
};

Subscriber::Subscriber(const SubscriberOptions& options) : impl_(std::make_unique<Impl>(options)) {}

Subscriber::~Subscriber() {
  if (!impl_->status) {
    cancel();
    finish();
  }
}

bool Subscriber::next(SubscriberEvent& event) {
  auto& d = *impl_;
  for (;;) {
    if (d.batch_next < d.ev.items.size()) {  // the rest of a batch first
      d.take_item(event, d.ev.items[d.batch_next++]);
      return true;
    }
    if (d.ended) return false;
    if (!d.reader->Read(&d.received)) {
      const grpc::Status st = d.reader->Finish();
      if (d.reconnect(st)) continue;
      if (!d.final_status) d.final_status = from_grpc(st);
      d.ended = true;
      return false;
    }
    d.batch_next = 0;
    const bool decoded = wire::decode_subscribe_event(d.received, d.ev);
    d.received.Clear();
    if (!decoded) {  // not a relay (or a broken one): the call ends, as gRPC ends a bad message
      d.cancel_call();
      (void)d.reader->Finish();
      d.final_status = Status{static_cast<int>(grpc::StatusCode::INTERNAL),
                              "a malformed SubscribeEvent from the relay"};
      d.ended = true;
      return false;
    }
    if (d.ev.kind == wire::SubscribeEventView::Kind::items) continue;
    if (d.ev.kind == wire::SubscribeEventView::Kind::gap) {
      event.kind = SubscriberEvent::Kind::gap;
      event.payload = Buffer();
      event.lost = d.ev.lost;
      event.reason = d.ev.reason;
      // (a bridge gap's items never had a position in this relay's topic)
      if (event.reason != "bridge") d.position += event.lost;
      Impl::add(d.gaps, 1);
      Impl::add(d.lost, event.lost);
      return true;
    }
    // An event this client does not know (a newer relay): skipped.
  }
}

bool Subscriber::next_discard() {
  SubscriberEvent e;
  return next(e);
}

Status Subscriber::run(
    const std::function<void(SubscriberEvent&)>& on_item,
    const std::function<void(std::uint64_t lost, const std::string& reason)>& on_gap) {
  for (SubscriberEvent e; next(e);) {
    if (e.kind == SubscriberEvent::Kind::item) {
      if (on_item) on_item(e);
    } else if (on_gap) {
      on_gap(e.lost, e.reason);
    }
  }
  return finish();
}

Status Subscriber::finish() {
  auto& d = *impl_;
  if (!d.status) {
    while (!d.ended) next_discard();
    d.status = d.final_status ? *d.final_status : Status{};
  }
  return *d.status;
}

bool Subscriber::subscribed() const {
  return !impl_->epoch.empty();
}

void Subscriber::cancel() {
  auto& d = *impl_;
  const MutexLock lock(d.mu);
  d.cancelled = true;
  if (d.ctx) d.ctx->TryCancel();
  d.cv.notify_all();
}

SubscriberStats Subscriber::stats() const {
  const auto& d = *impl_;
  return {d.items.load(std::memory_order_relaxed), d.bytes.load(std::memory_order_relaxed),
          d.gaps.load(std::memory_order_relaxed), d.lost.load(std::memory_order_relaxed),
          d.reconnects.load(std::memory_order_relaxed)};
}

}  // namespace sluice::client

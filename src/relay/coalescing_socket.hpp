// A TCP socket for Beast's WebSocket stream to sit on, which saves system calls on small
// messages without copying large ones:
//
//  - Reads ahead (when `read_ahead` > 0): a read smaller than `read_ahead` with nothing
//    buffered fills a `read_ahead`-byte buffer in one system call and is served from it, as
//    are the reads after it (Beast itself reads at most 1536 bytes at a time: one call per
//    1 KiB message without this). A read at least `read_ahead` long with nothing buffered goes
//    straight into the caller's memory (a large payload is not copied).
//  - Coalesces writes: a write of at most `copy_max` bytes is copied into a batch and completes
//    at once; the batch goes to the kernel in one write at the end of the event loop's round
//    (a FlushQueue; without one, a flush posted to the executor and put off while writes keep
//    arriving), when it is full (`batch_bytes`), or
//    together with the next write too large to copy (one gather write: nothing of that one is
//    copied). While a batch is being written the next one fills; a write that finds both full
//    waits for the one in flight.
//
// TLS (a Connection with a TLS session, see tls.hpp): every byte goes through the session,
// batching above it (a batch of small messages is one TLS record, not one each). The session
// and the socket live in the shared state, so that an operation still in flight when the
// CoalescingSocket is destroyed completes (operation_aborted) against live objects.
//
// async_write_some() always completes with all its bytes written (or an error): each call's
// bytes stay together in the stream, whatever other writes are batched meanwhile.
//
// Contract: one reader at a time; writers may be several (Beast, which serializes its own
// writes: messages, pings, pongs, the close frame; and a writer of whole frames beside it), each
// call's bytes kept together; everything on the socket's executor (single-threaded use, or a
// strand). Bytes leave in the order the calls were made. A write that
// completed may still be in the batch: its bytes are either written later or the connection
// fails (a failed flush fails every later write with the same error). Memory: at most
// 2 x `batch_bytes` + `read_ahead` per socket, allocated on first use. Tearing down (the
// WebSocket close) flushes first. Destroying the socket with operations in flight is safe:
// they complete with operation_aborted without touching it.
//
// Synchronous use (clients): read_some() reads ahead the same way; write_some() batches only
// with `sync_batch` set, and then the caller flush()es when its messages are due (as a NATS
// client's buffered publishes are flushed). A read that has to wait on the socket flushes the
// batch first: the peer may be waiting for it (a WebSocket close waits for the reply to the
// close frame it just wrote).
#pragma once

#include <algorithm>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/bind_handler.hpp>
#include <boost/beast/core/buffers_cat.hpp>
#include <boost/beast/websocket/teardown.hpp>
#include <cstddef>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

#include "tls.hpp"

namespace sluice::relay {

// Flushes deferred to the end of an event-loop round: the loop that owns the sockets runs
// them once it has no ready handler left (or after a bounded number of them), so that messages
// fanned out while it worked through a publisher's read leave in one write per connection, as
// nats-server flushes its clients after each read. (A handler posted behind the queued ones
// runs too early: measured, a fifth of the throughput on 1 KiB messages.) One per event-loop
// thread; used from that thread only.
class FlushQueue {
 public:
  void defer(std::function<void()> flush) { pending_.push_back(std::move(flush)); }
  // Runs (and forgets) the deferred flushes; false if there were none.
  bool run() {
    if (pending_.empty()) return false;
    std::vector<std::function<void()>> now;
    now.swap(pending_);
    for (auto& f : now) f();
    return true;
  }

 private:
  std::vector<std::function<void()>> pending_;
};

// Completions ready at once (a read served from the read-ahead buffer, a write copied into the
// batch), run one after another from a single posted handler instead of one posted handler
// each: Asio's scheduler polls the reactor (an epoll_wait system call) between every two
// handlers it runs in a chain, which cost more than the reads themselves. At most kBurst run
// per handler, then the rest is posted again (the loop's other work is not held up). One per
// event-loop thread; used from that thread only.
class ReadyQueue {
 public:
  explicit ReadyQueue(boost::asio::io_context::executor_type ex) : ex_(std::move(ex)) {}
  ReadyQueue(const ReadyQueue&) = delete;
  ReadyQueue& operator=(const ReadyQueue&) = delete;
  ReadyQueue(ReadyQueue&&) = delete;
  ReadyQueue& operator=(ReadyQueue&&) = delete;
  ~ReadyQueue() = default;

  template <class F>
  void add(F&& f) {
    items_.push_back(std::make_unique<Item<std::decay_t<F>>>(std::forward<F>(f)));
    if (!posted_) {
      posted_ = true;
      boost::asio::post(ex_, [this] { drain(); });
    }
  }

 private:
  static constexpr std::size_t kBurst = 512;
  struct Task {
    Task() = default;
    Task(const Task&) = delete;
    Task& operator=(const Task&) = delete;
    Task(Task&&) = delete;
    Task& operator=(Task&&) = delete;
    virtual ~Task() = default;
    virtual void run() = 0;
  };
  template <class F>
  struct Item final : Task {
    explicit Item(F&& fn) : f(std::move(fn)) {}
    void run() override { f(); }
    F f;
  };

  void drain() {
    for (std::size_t i = 0; i < kBurst && !items_.empty(); ++i) {
      std::unique_ptr<Task> t = std::move(items_.front());
      items_.pop_front();
      t->run();  // may add more: they run in this burst too
    }
    if (items_.empty()) {
      posted_ = false;
    } else {
      boost::asio::post(ex_, [this] { drain(); });
    }
  }

  boost::asio::io_context::executor_type ex_;
  std::deque<std::unique_ptr<Task>> items_;
  bool posted_ = false;  // a drain() is queued on the executor
};

class CoalescingSocket {
 public:
  using socket_type = boost::asio::ip::tcp::socket;
  using next_layer_type = socket_type;
  using executor_type = socket_type::executor_type;
  using error_code = boost::system::error_code;

  struct Options {
    std::size_t read_ahead = 0;           // 0: reads go straight to the socket
    std::size_t batch_bytes = 64 * 1024;  // a batch is written once this full
    std::size_t copy_max = 16 * 1024;     // larger writes are never copied
    bool sync_batch = false;              // synchronous writes batch too (then flush() when due)
    // One batch at a time: while one is on its way to the kernel, writes wait for it instead of
    // filling the next (a subscriber's frames then stay in its cursor, where the topic's depth
    // bounds them, rather than piling up here behind a peer that does not read).
    bool one_batch = false;
    // Where a batch waits to be flushed: the event loop's queue, or (null) a handler posted
    // to the executor, put off while writes keep arriving.
    FlushQueue* flush_queue = nullptr;
    // Where completions ready at once wait: the event loop's queue, or (null) each posted.
    ReadyQueue* ready_queue = nullptr;
  };

  CoalescingSocket(socket_type socket, const Options& options)
      : st_(std::make_shared<State>(std::move(socket), options)) {}
  CoalescingSocket(boost::asio::io_context& io, const Options& options)
      : st_(std::make_shared<State>(socket_type(io), options)) {}
  // A connection from the HTTP port: its TLS session (if any) now reads and writes this
  // socket.
  CoalescingSocket(Connection c, const Options& options)
      : st_(std::make_shared<State>(std::move(c.socket), options)) {
    st_->tls = std::move(c.tls);
    if (st_->tls) st_->tls->next_layer().point_at(st_->socket);
  }
  explicit CoalescingSocket(socket_type socket) : CoalescingSocket(std::move(socket), Options{}) {}
  explicit CoalescingSocket(boost::asio::io_context& io) : CoalescingSocket(io, Options{}) {}
  CoalescingSocket(const CoalescingSocket&) = delete;
  CoalescingSocket& operator=(const CoalescingSocket&) = delete;
  CoalescingSocket(CoalescingSocket&&) = delete;
  CoalescingSocket& operator=(CoalescingSocket&&) = delete;
  // Closes the socket: operations in flight complete with operation_aborted.
  ~CoalescingSocket() {
    st_->gone = true;
    error_code ignored;
    st_->socket.close(ignored);
  }

  executor_type get_executor() noexcept { return st_->socket.get_executor(); }
  socket_type& next_layer() noexcept { return st_->socket; }
  const socket_type& next_layer() const noexcept { return st_->socket; }
  socket_type& lowest_layer() noexcept { return st_->socket; }
  // Whether bytes go through TLS.
  bool tls() const noexcept { return st_->tls != nullptr; }

  // Bytes written (completed) but not yet handed to the kernel.
  std::size_t unflushed_bytes() const noexcept { return st_->batch.size() + st_->sending.size(); }
  // Whether the last asynchronous write completed into the batch (no system call waited on).
  bool last_write_batched() const noexcept { return st_->last_batched; }
  // Bytes read from the peer so far (before TLS: what the session received, control frames
  // included): a session that sees it unchanged for a while knows the peer is silent.
  std::uint64_t bytes_received() const noexcept { return st_->received; }

  // ---- asynchronous (Beast's AsyncReadStream / AsyncWriteStream) ----

  template <class MutableBuffers, class Handler>
  auto async_read_some(const MutableBuffers& buffers, Handler&& handler) {
    return boost::asio::async_initiate<Handler, void(error_code, std::size_t)>(
        [this](auto h, const MutableBuffers& b) { this->start_read(b, std::move(h)); }, handler,
        buffers);
  }

  template <class ConstBuffers, class Handler>
  auto async_write_some(const ConstBuffers& buffers, Handler&& handler) {
    return boost::asio::async_initiate<Handler, void(error_code, std::size_t)>(
        [this](auto h, const ConstBuffers& b) {
          start_write(st_, st_->socket.get_executor(), b, std::move(h));
        },
        handler, buffers);
  }

  // Appends one write's bytes (e.g. a whole WebSocket frame) to the batch at once, if they are
  // small enough to copy, fit, and no write waits; true: done (it goes out like any batched
  // write). False: nothing written; write them with async_write_some instead. A writer beside
  // Beast may use this (and async_write_some) for whole frames: each write call's bytes stay
  // together, so its frames and Beast's control frames never interleave.
  template <class ConstBuffers>
  bool try_append(const ConstBuffers& buffers) {
    State& s = *st_;
    const std::size_t n = boost::asio::buffer_size(buffers);
    if (s.error || !s.waiters.empty() || n > s.options.copy_max ||
        s.batch.size() + n > s.options.batch_bytes || (s.options.one_batch && s.flushing))
      return false;
    append(s, buffers);
    schedule_flush(st_, st_->socket.get_executor());
    return true;
  }

  // ---- synchronous (Beast's SyncReadStream / SyncWriteStream) ----

  template <class MutableBuffers>
  std::size_t read_some(const MutableBuffers& buffers, error_code& ec) {
    ec = {};
    State& s = *st_;
    const std::size_t want = boost::asio::buffer_size(buffers);
    if (want == 0) return 0;
    if (s.read_begin < s.read_end) return copy_out(s, buffers);
    // About to wait for the peer, which may be waiting for what is batched (a WebSocket close
    // frame, then the read of the peer's close reply): it leaves first.
    if (!flush(ec)) return 0;
    if (s.options.read_ahead == 0 || want >= s.options.read_ahead) {
      const std::size_t n =
          on_stream(s, [&](auto& stream) { return stream.read_some(buffers, ec); });
      s.received += n;
      return n;
    }
    s.read_buf.resize(s.options.read_ahead);
    const std::size_t n = on_stream(
        s, [&](auto& stream) { return stream.read_some(boost::asio::buffer(s.read_buf), ec); });
    s.received += n;
    s.read_begin = 0;
    s.read_end = n;
    return n > 0 ? copy_out(s, buffers) : 0;
  }
  template <class MutableBuffers>
  std::size_t read_some(const MutableBuffers& buffers) {
    error_code ec;
    const std::size_t n = read_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }
  template <class ConstBuffers>
  std::size_t write_some(const ConstBuffers& buffers, error_code& ec) {
    ec = {};
    State& s = *st_;
    const std::size_t n = boost::asio::buffer_size(buffers);
    if (!s.options.sync_batch) {
      if (!flush(ec)) return 0;
      return on_stream(s, [&](auto& stream) { return stream.write_some(buffers, ec); });
    }
    if (n <= s.options.copy_max && s.batch.size() + n <= s.options.batch_bytes) {
      append(s, buffers);
      return n;
    }
    const std::size_t head = s.batch.size();
    const std::size_t written = on_stream(s, [&](auto& stream) {
      return boost::asio::write(stream,
                                boost::beast::buffers_cat(boost::asio::buffer(s.batch), buffers),
                                all_at_once, ec);
    });
    s.batch.clear();
    return written > head ? written - head : 0;
  }
  // (synchronous use) Turns batching of synchronous writes on or off (e.g. on once the
  // WebSocket handshake is done: its request must leave at once).
  void sync_batch(bool on) noexcept { st_->options.sync_batch = on; }
  // (synchronous use) Writes what is batched; false on error.
  bool flush(error_code& ec) {
    ec = {};
    State& s = *st_;
    if (s.batch.empty()) return true;
    on_stream(s, [&](auto& stream) {
      return boost::asio::write(stream, boost::asio::buffer(s.batch), all_at_once, ec);
    });
    s.batch.clear();
    return !ec;
  }
  template <class ConstBuffers>
  std::size_t write_some(const ConstBuffers& buffers) {
    error_code ec;
    const std::size_t n = write_some(buffers, ec);
    if (ec) throw boost::system::system_error(ec);
    return n;
  }

  // ---- the WebSocket close: flush, then the TCP teardown ----

  friend void teardown(boost::beast::role_type role, CoalescingSocket& s, error_code& ec) {
    if (!s.flush(ec)) return;
    if (s.st_->tls) {
      s.st_->tls->shutdown(ec);  // close_notify; the peer's, or its end of the stream
      error_code ignored;
      s.st_->socket.close(ignored);
      ec = {};
      return;
    }
    boost::beast::websocket::teardown(role, s.st_->socket, ec);
  }

  template <class Handler>
  friend void async_teardown(boost::beast::role_type role, CoalescingSocket& s, Handler&& handler) {
    auto st = s.st_;
    auto hp = std::make_shared<std::decay_t<Handler>>(std::forward<Handler>(handler));
    after_flush(st, s.get_executor(), [st, role, hp](error_code ec) {
      if (!ec && st->gone) ec = boost::asio::error::operation_aborted;
      if (ec) {
        (*hp)(ec);
        return;
      }
      if (st->tls) {
        // close_notify, then the TCP close whatever the peer answered (a browser often just
        // closes): the WebSocket close handshake already ended the session.
        auto ex = boost::asio::get_associated_executor(*hp, st->socket.get_executor());
        st->tls->async_shutdown(boost::asio::bind_executor(ex, [st, hp](error_code) {
          error_code ignored;
          st->socket.close(ignored);
          (*hp)(error_code{});
        }));
        return;
      }
      boost::beast::websocket::async_teardown(role, st->socket, std::move(*hp));
    });
  }

 private:
  // The completion condition of every write here: all the bytes, offered to the kernel in as
  // few system calls as it takes them. Asio's own conditions (asio::write's default included)
  // offer at most 64 KiB per call: a 1 MiB frame took 16 calls, each a turn of the event loop
  // between them, and subscribers on one loop had their frames interleaved 64 KiB at a time, so
  // that every frame of the round finished late.
  static std::size_t all_at_once(const error_code& ec, std::size_t /*written*/) {
    return ec ? 0 : kMaxWriteCall;
  }
  static constexpr std::size_t kMaxWriteCall = std::size_t{1} << 30;  // bytes per system call

  struct State {
    State(socket_type s, const Options& o) : options(o), socket(std::move(s)) {}
    Options options;
    socket_type socket;
    std::unique_ptr<TlsStream> tls;  // set: every byte goes through it (its next layer: socket)
    bool gone = false;               // the CoalescingSocket was destroyed
    std::vector<char> read_buf;      // read ahead: [read_begin, read_end) not yet taken
    std::size_t read_begin = 0;
    std::size_t read_end = 0;
    std::vector<char> batch;    // completed writes not yet handed to the kernel
    std::vector<char> sending;  // the batch being written
    bool flushing = false;      // a write to the socket is in flight
    bool flush_posted = false;  // a flush step is queued on the executor
    bool appended = false;      // appended to since that step was queued
    bool last_batched = false;
    std::uint64_t received = 0;  // bytes read from the peer
    error_code error;            // a failed write: every later one fails with it
    std::vector<std::function<void(error_code)>> waiters;  // until the write in flight is done
  };

  // Calls `f` with the stream bytes go through: the TLS session, or the socket.
  template <class F>
  static auto on_stream(State& s, F&& f) -> decltype(f(std::declval<socket_type&>())) {
    if (s.tls) return f(*s.tls);
    return f(s.socket);
  }

  // Copies into the batch (no zero-fill first).
  template <class ConstBuffers>
  static void append(State& s, const ConstBuffers& buffers) {
    for (auto it = boost::asio::buffer_sequence_begin(buffers);
         it != boost::asio::buffer_sequence_end(buffers); ++it) {
      const boost::asio::const_buffer b(*it);
      const auto* p = static_cast<const char*>(b.data());
      s.batch.insert(s.batch.end(), p, p + b.size());
    }
  }

  template <class MutableBuffers>
  static std::size_t copy_out(State& s, const MutableBuffers& buffers) {
    const std::size_t n = boost::asio::buffer_copy(
        buffers, boost::asio::buffer(s.read_buf.data() + s.read_begin, s.read_end - s.read_begin));
    s.read_begin += n;
    return n;
  }

  // Completes `h` later, never from inside the initiating call: from the loop's ReadyQueue,
  // or from a handler posted to the executor.
  template <class Handler>
  static void post_completion(const State& s, const executor_type& ex, Handler h, error_code ec,
                              std::size_t n) {
    if (s.options.ready_queue != nullptr) {
      s.options.ready_queue->add(boost::beast::bind_front_handler(std::move(h), ec, n));
    } else {
      boost::asio::post(ex, boost::beast::bind_front_handler(std::move(h), ec, n));
    }
  }

  template <class MutableBuffers, class Handler>
  void start_read(const MutableBuffers& buffers, Handler h) {
    State& s = *st_;
    const std::size_t want = boost::asio::buffer_size(buffers);
    if (want == 0 || s.read_begin < s.read_end) {
      post_completion(s, s.socket.get_executor(), std::move(h), {},
                      want == 0 ? 0 : copy_out(s, buffers));
      return;
    }
    auto ex = boost::asio::get_associated_executor(h, s.socket.get_executor());
    if (s.options.read_ahead == 0 || want >= s.options.read_ahead) {
      // (The handler keeps the state, and a TLS session, alive until the read is done.)
      auto counted = boost::asio::bind_executor(
          ex, [st = st_, h = std::move(h)](error_code ec, std::size_t n) mutable {
            st->received += n;
            h(ec, n);
          });
      if (!s.tls) {
        s.socket.async_read_some(buffers, std::move(counted));
      } else {
        s.tls->async_read_some(buffers, std::move(counted));
      }
      return;
    }
    s.read_buf.resize(s.options.read_ahead);
    on_stream(s, [&](auto& stream) {
      stream.async_read_some(
          boost::asio::buffer(s.read_buf),
          boost::asio::bind_executor(
              ex, [st = st_, buffers, h = std::move(h)](error_code ec, std::size_t n) mutable {
                st->received += n;
                st->read_begin = 0;
                st->read_end = n;
                const std::size_t got = n > 0 ? copy_out(*st, buffers) : 0;
                h(got > 0 ? error_code{} : ec, got);
              }));
    });
  }

  template <class ConstBuffers, class Handler>
  static void start_write(const std::shared_ptr<State>& st, const executor_type& ex,
                          const ConstBuffers& buffers, Handler h) {
    State& s = *st;
    s.last_batched = false;
    if (!s.error && s.gone) s.error = boost::asio::error::operation_aborted;
    if (s.error) {
      post_completion(s, ex, std::move(h), s.error, 0);
      return;
    }
    const std::size_t n = boost::asio::buffer_size(buffers);
    // (Not past a write that waits: bytes leave in the order of the calls.)
    if (s.waiters.empty() && n <= s.options.copy_max &&
        s.batch.size() + n <= s.options.batch_bytes && !(s.options.one_batch && s.flushing)) {
      append(s, buffers);
      s.last_batched = true;
      post_completion(s, ex, std::move(h), {}, n);
      schedule_flush(st, ex);
      return;
    }
    if (s.flushing || !s.waiters.empty()) {  // after the write in flight (and those waiting)
      auto hp = std::make_shared<Handler>(std::move(h));
      s.waiters.emplace_back(
          [st, ex, buffers, hp](error_code) { start_write(st, ex, buffers, std::move(*hp)); });
      return;
    }
    // The batch, then these bytes (not copied), in one gather write.
    s.flushing = true;
    s.sending.swap(s.batch);
    const std::size_t head = s.sending.size();
    auto hx = boost::asio::get_associated_executor(h, ex);
    on_stream(s, [&](auto& stream) {
      boost::asio::async_write(
          stream, boost::beast::buffers_cat(boost::asio::buffer(s.sending), buffers), all_at_once,
          boost::asio::bind_executor(
              hx, [st, ex, head, h = std::move(h)](error_code ec, std::size_t written) mutable {
                write_done(st, ex, ec);
                h(ec, written > head ? written - head : 0);
              }));
    });
  }

  static void schedule_flush(const std::shared_ptr<State>& st, const executor_type& ex) {
    if (st->flush_posted) {
      st->appended = true;
      return;
    }
    st->flush_posted = true;
    if (st->options.flush_queue != nullptr) {
      st->options.flush_queue->defer([st, ex] { flush_step(st, ex); });
    } else {
      boost::asio::post(ex, [st, ex] { flush_step(st, ex); });
    }
  }

  // Writes the batch once the writer has paused for a turn of the executor.
  static void flush_step(const std::shared_ptr<State>& st, const executor_type& ex) {
    State& s = *st;
    s.flush_posted = false;
    if (s.gone || s.error) return;
    if (s.appended && s.options.flush_queue == nullptr) {  // (the queue runs when idle)
      s.appended = false;
      schedule_flush(st, ex);
      return;
    }
    if (s.flushing || s.batch.empty()) return;  // (the write in flight reschedules when done)
    start_flush(st, ex);
  }

  static void start_flush(const std::shared_ptr<State>& st, const executor_type& ex) {
    State& s = *st;
    s.flushing = true;
    s.sending.swap(s.batch);
    on_stream(s, [&](auto& stream) {
      boost::asio::async_write(stream, boost::asio::buffer(s.sending), all_at_once,
                               boost::asio::bind_executor(ex, [st, ex](error_code ec, std::size_t) {
                                 write_done(st, ex, ec);
                               }));
    });
  }

  static void write_done(const std::shared_ptr<State>& st, const executor_type& ex, error_code ec) {
    State& s = *st;
    s.flushing = false;
    s.sending.clear();
    if (ec && !s.error) s.error = ec;
    if (s.gone && !s.error) s.error = boost::asio::error::operation_aborted;
    auto waiters = std::move(s.waiters);
    s.waiters.clear();
    for (auto& w : waiters) w(s.error);
    if (!s.error && !s.flushing && !s.batch.empty()) schedule_flush(st, ex);
  }

  // Runs `fn` once nothing is batched or being written (with the error a write met, if any).
  static void after_flush(const std::shared_ptr<State>& st, const executor_type& ex,
                          std::function<void(error_code)> fn) {
    State& s = *st;
    if (s.gone && !s.error) s.error = boost::asio::error::operation_aborted;
    if (s.error || (!s.flushing && s.batch.empty())) {
      boost::asio::post(ex, [fn = std::move(fn), ec = s.error] { fn(ec); });
      return;
    }
    if (!s.flushing) start_flush(st, ex);
    s.waiters.emplace_back([st, ex, fn = std::move(fn)](error_code) { after_flush(st, ex, fn); });
  }

  std::shared_ptr<State> st_;
};

}  // namespace sluice::relay

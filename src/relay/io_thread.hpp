// The relay's event loops: one thread each, running rounds of handlers, then the sockets'
// flushes, then the wake-ups owed to other loops (see IoThread). Relay-internal.
#pragma once

#include <pthread.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>  // before Asio: Boost 1.74 with C++20 needs it
#include <vector>

#include "coalescing_socket.hpp"

namespace sluice::relay {

// One event loop on one thread (see relay::LoopPool for what each serves).
class IoThread {
 public:
  explicit IoThread(std::string name)
      : name_(std::move(name)), work_(boost::asio::make_work_guard(io_)), thread_([this] {
          pthread_setname_np(pthread_self(), name_.c_str());  // (in top -H, perf, gdb)
          run();
        }) {}
  IoThread(const IoThread&) = delete;
  IoThread& operator=(const IoThread&) = delete;
  IoThread(IoThread&&) = delete;
  IoThread& operator=(IoThread&&) = delete;
  ~IoThread() { stop(); }

  /// Stops the thread (idempotent); pending timers and connections are dropped.
  void stop() {
    work_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }
  boost::asio::io_context& context() { return io_; }
  /// The thread's name (at most 15 bytes shown by the system).
  const std::string& name() const { return name_; }
  /// Socket flushes run at the end of each round of the loop (see run()); I/O thread only.
  relay::FlushQueue& flushes() { return flushes_; }
  /// Completions ready at once, run in bursts (see relay::ReadyQueue); I/O thread only.
  relay::ReadyQueue& ready() { return ready_; }

  /// WebSocket subscribers served here (a subscriber goes to the loop with the fewest).
  std::atomic<std::size_t> subscribers{0};

  /// Runs `fn` on the I/O thread soon (never inside the caller's stack).
  void post(std::function<void()> fn) { boost::asio::post(io_, std::move(fn)); }

  /// Like post(), for wake-ups that come in bursts (a subscription became readable, a topic
  /// has room again). Called on a loop's thread, the post waits for the end of that loop's
  /// round and carries everything due here meanwhile: a publisher's read-ahead of many
  /// messages wakes each subscriber loop once, not once per message (a wake-up of a sleeping loop
  /// is a system call and a context switch), as nats-server signals the clients a read fed
  /// once the read is processed. The other loops are woken before the caller's own loop runs
  /// what it put off (a subscriber there may write 1 MiB meanwhile). From any other thread: post().
  void post_soon(std::function<void()> fn) {
    IoThread* current = current_;
    if (current == nullptr) {
      post(std::move(fn));
      return;
    }
    current->defer(*this, std::move(fn));
  }

  /// Runs `fn` on the I/O thread at `when` (the timer stays until then: for deadlines a
  /// session may outlive, see LoopAlarm).

  void at(std::chrono::steady_clock::time_point when, std::function<void()> fn) {
    auto timer = std::make_shared<boost::asio::steady_timer>(io_, when);
    timer->async_wait([timer, fn = std::move(fn)](const boost::system::error_code& ec) {
      if (!ec) fn();
    });
  }

 private:
  // Rounds: wait for a handler, run what else is ready (at most kRound handlers, so that a
  // busy loop still flushes), then flush the connections written to meanwhile: a publisher's
  // read-ahead of many messages fans out in one write per subscriber, as nats-server flushes its
  // clients after each read.
  void run() {
    current_ = this;
    constexpr int kRound = 256;
    while (!io_.stopped()) {
      if (io_.run_one() == 0) continue;
      for (int i = 0; i < kRound && io_.poll_one() != 0; ++i) {
      }
      run_deferred();  // (first: the loops woken work while this one writes)
      flushes_.run();
      run_deferred();  // (anything the flushes' completions put off: none may wait for a
                       // next round that an idle loop would not have)
    }
  }

  // What post_soon() put off, for `target`: one post at the end of the round. I/O thread only.
  void defer(IoThread& target, std::function<void()> fn) {
    for (auto& [loop, fns] : deferred_) {
      if (loop == &target) {
        fns.push_back(std::move(fn));
        return;
      }
    }
    deferred_.emplace_back(&target, std::vector<std::function<void()>>{});
    deferred_.back().second.push_back(std::move(fn));
  }
  void run_deferred() {
    for (const bool own : {false, true}) {  // the other loops first
      for (auto& [loop, fns] : deferred_) {
        if (fns.empty() || (loop == this) != own) continue;
        loop->post([fns = std::move(fns)] {
          for (const auto& fn : fns) fn();
        });
        fns.clear();  // (moved from: empty, and valid again)
      }
    }
  }

  static inline thread_local IoThread* current_ = nullptr;  // the loop this thread runs
  // Wake-ups put off to the end of the round, per loop (few: server.threads at most).
  std::vector<std::pair<IoThread*, std::vector<std::function<void()>>>> deferred_;

  const std::string name_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  relay::FlushQueue flushes_;
  relay::ReadyQueue ready_{io_.get_executor()};
  std::thread thread_;
};

// `fn` on `loop` at `when`, unless this goes first: for deadlines far away (a token's expiry)
// that a session may outlive by far, whose timers must go with the session. Destroyed on any
// thread (the cancel is posted to the loop).
class LoopAlarm {
 public:
  LoopAlarm(IoThread& loop, std::chrono::steady_clock::time_point when, std::function<void()> fn)
      : loop_(loop), timer_(std::make_shared<boost::asio::steady_timer>(loop.context(), when)) {
    loop.post([t = timer_, fn = std::move(fn)]() mutable {
      t->async_wait([fn = std::move(fn)](const boost::system::error_code& ec) {
        if (!ec) fn();
      });
    });
  }
  LoopAlarm(const LoopAlarm&) = delete;
  LoopAlarm& operator=(const LoopAlarm&) = delete;
  LoopAlarm(LoopAlarm&&) = delete;
  LoopAlarm& operator=(LoopAlarm&&) = delete;
  ~LoopAlarm() {
    loop_.post([t = timer_] { t->cancel(); });
  }

 private:
  IoThread& loop_;
  std::shared_ptr<boost::asio::steady_timer> timer_;
};

}  // namespace sluice::relay

// What the command-line clients (`sluice pub`, `sub`, `ingest`) share at the console: JSON lines,
// SIGINT/SIGTERM as a request to stop, and a progress line on a terminal.
#pragma once

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "sluice/detail/cond_var.hpp"
#include "sluice/detail/thread_annotations.hpp"

namespace sluice::cli {

inline void print_line(std::FILE* out, const nlohmann::json& j) {
  std::fprintf(out, "%s\n",
               j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  std::fflush(out);
}

// SIGINT/SIGTERM call `on_signal` once (from a watcher thread) instead of killing the process.
class SignalWatch {
 public:
  explicit SignalWatch(std::function<void()> on_signal) {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    // Taken here even when the shell started us with them ignored (a background job): an
    // ignored signal is discarded, never waited for.
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);  // before the client starts its threads
    thread_ = std::thread([this, fn = std::move(on_signal)] {
      const timespec tick{0, 100'000'000};
      while (!stop_) {
        if (sigtimedwait(&set_, nullptr, &tick) > 0) {
          fn();
          return;
        }
      }
    });
  }
  SignalWatch(const SignalWatch&) = delete;
  SignalWatch& operator=(const SignalWatch&) = delete;
  SignalWatch(SignalWatch&&) = delete;
  SignalWatch& operator=(SignalWatch&&) = delete;
  ~SignalWatch() {
    stop_ = true;
    thread_.join();
  }

 private:
  sigset_t set_{};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A progress line on stderr, rewritten every second, when stderr is a terminal (never in a
// pipe or a log: those get the JSON summary only).
class Progress {
 public:
  explicit Progress(std::function<std::string()> line) {
    if (::isatty(STDERR_FILENO) == 0) return;
    thread_ = std::thread([this, fn = std::move(line)] {
      const MutexLock lock(mu_);
      for (auto next = std::chrono::steady_clock::now() + std::chrono::seconds(1); !stop_;) {
        if (cv_.wait_until(mu_, next)) continue;  // (woken: stopping, or not yet time)
        next += std::chrono::seconds(1);
        std::fprintf(stderr, "\r\033[K%s", fn().c_str());
        std::fflush(stderr);
      }
      std::fprintf(stderr, "\r\033[K");
    });
  }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  Progress(Progress&&) = delete;
  Progress& operator=(Progress&&) = delete;
  ~Progress() { stop(); }
  /// Clears the line and stops (before the summary).
  void stop() {
    if (!thread_.joinable()) return;
    {
      const MutexLock lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  Mutex mu_;
  CondVar cv_;
  bool stop_ SLUICE_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace sluice::cli

#include "grpc_log.hpp"

#include <grpc/support/log.h>

#include <cstdio>
#include <mutex>

#include "event_log.hpp"
#include "sluice/detail/thread_annotations.hpp"

namespace sluice::relay {

namespace {

struct Bound {
  Mutex mu;
  std::chrono::steady_clock::time_point window_start SLUICE_GUARDED_BY(mu){};
  std::size_t in_window SLUICE_GUARDED_BY(mu) = 0;
  std::size_t suppressed SLUICE_GUARDED_BY(mu) = 0;
};

Bound& bound() {
  static Bound b;
  return b;
}

void log_line(gpr_log_func_args* args) {
  Bound& b = bound();
  const auto now = std::chrono::steady_clock::now();
  std::size_t told_suppressed = 0;
  bool print = false;
  {
    MutexLock lock(b.mu);
    if (now - b.window_start >= kGrpcLogWindow) {
      told_suppressed = b.suppressed;
      b.window_start = now;
      b.in_window = 0;
      b.suppressed = 0;
    }
    print = b.in_window < kGrpcLogBurst;
    if (print)
      ++b.in_window;
    else
      ++b.suppressed;
  }
  if (told_suppressed != 0) {
    log::event(log::Level::warn, "grpc_log_suppressed",
               {{"lines", told_suppressed}, {"window_s", kGrpcLogWindow.count()}});
  }
  if (print) {  // (through the relay's log: its format and level)
    const auto level = args->severity == GPR_LOG_SEVERITY_ERROR  ? log::Level::error
                       : args->severity == GPR_LOG_SEVERITY_INFO ? log::Level::info
                                                                 : log::Level::debug;
    log::event(level, "grpc",
               {{"file", args->file}, {"line", args->line}, {"message", args->message}});
  }
}

}  // namespace

void bound_grpc_log() {
  static std::once_flag installed;
  std::call_once(installed, [] { gpr_set_log_function(&log_line); });
}

}  // namespace sluice::relay

#include "sluice/detail/wait.hpp"

#include <linux/futex.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>

namespace sluice::detail {

namespace {

bool register_membarrier() noexcept {
  const long supported = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  if (supported < 0 || (supported & MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) return false;
  return syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
}

constexpr unsigned kSpinSteps = 48;     // pause rounds, growing from 1 to 32 pauses each
constexpr unsigned kMinYieldSteps = 8;  // sched_yield rounds before parking, at least

long futex(std::atomic<std::uint32_t>* word, int op, std::uint32_t val, const timespec* ts) {
  // std::atomic<uint32_t> is a plain 32-bit word on Linux: the futex address.
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), op | FUTEX_PRIVATE_FLAG, val,
                 ts, nullptr, FUTEX_BITSET_MATCH_ANY);
}

}  // namespace

std::atomic<bool> g_membarrier{register_membarrier()};

void heavy_fence() noexcept {
  if (g_membarrier.load(std::memory_order_relaxed)) {
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0) return;
    g_membarrier.store(false);  // cannot happen once registered; be safe all the same
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

bool Backoff::spin() noexcept {
  if (step_ < kSpinSteps) {
    const unsigned rounds = 1U << (step_ / 8 < 5 ? step_ / 8 : 5);
    for (unsigned i = 0; i < rounds; ++i) cpu_relax();
    ++step_;
    return true;
  }
  const std::int64_t now =
      std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
  if (yield_until_ns_ == 0) yield_until_ns_ = now + budget_ns_;
  if (step_ < kSpinSteps + kMinYieldSteps || now < yield_until_ns_) {
    sched_yield();
    ++step_;
    return true;
  }
  return false;
}

void Backoff::pause() noexcept {
  if (step_ < 16) {
    cpu_relax();
  } else {
    sched_yield();  // the peer we wait for may have been preempted
  }
  ++step_;
}

bool WaitQueue::park(std::uint32_t ticket, Clock::time_point deadline) noexcept {
  const timespec* timeout = nullptr;
  timespec abs{};
  if (deadline != Clock::time_point::max()) {
    if (Clock::now() >= deadline) return false;
    // steady_clock is CLOCK_MONOTONIC; FUTEX_WAIT_BITSET takes an absolute monotonic time.
    const auto ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
    abs.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    abs.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    timeout = &abs;
  }
  const long rc = futex(&epoch_, FUTEX_WAIT_BITSET, ticket, timeout);
  // Woken, epoch already moved (EAGAIN), or interrupted: true, and the caller re-checks.
  return !(rc == -1 && errno == ETIMEDOUT);
}

void WaitQueue::wake_all() noexcept {
  epoch_.fetch_add(1, std::memory_order_seq_cst);
  futex(&epoch_, FUTEX_WAKE_BITSET, INT_MAX, nullptr);
}

void HookList::add(std::function<void()> fn) {
  std::lock_guard lock(mu_);
  fns_.push_back(std::move(fn));
  count_.store(static_cast<std::uint32_t>(fns_.size()), std::memory_order_seq_cst);
}

void HookList::fire() {
  std::vector<std::function<void()>> ready;
  {
    std::lock_guard lock(mu_);
    ready.swap(fns_);
    count_.store(0, std::memory_order_seq_cst);
  }
  for (auto& fn : ready) fn();
}

}  // namespace sluice::detail

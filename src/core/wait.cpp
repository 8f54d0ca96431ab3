#include "sluice/detail/wait.hpp"

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>

namespace sluice::detail {

namespace {

constexpr unsigned kSpinSteps = 48;  // pause rounds, growing from 1 to 32 pauses each
constexpr unsigned kYieldSteps = 8;  // sched_yield rounds before parking

long futex(std::atomic<std::uint32_t>* word, int op, std::uint32_t val, const timespec* ts) {
  // std::atomic<uint32_t> is a plain 32-bit word on Linux: the futex address.
  return syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), op | FUTEX_PRIVATE_FLAG, val,
                 ts, nullptr, FUTEX_BITSET_MATCH_ANY);
}

}  // namespace

bool Backoff::spin() noexcept {
  if (step_ < kSpinSteps) {
    const unsigned rounds = 1U << (step_ / 8 < 5 ? step_ / 8 : 5);
    for (unsigned i = 0; i < rounds; ++i) cpu_relax();
    ++step_;
    return true;
  }
  if (step_ < kSpinSteps + kYieldSteps) {
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

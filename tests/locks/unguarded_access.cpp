// Must NOT compile under `clang++ -Wthread-safety -Werror`: make check-locks (clang builds the
// libFuzzer tree with these flags) is only worth something if it fails on code like this. CTest
// (locks_check_rejects_an_unguarded_access) expects clang's refusal.
#include "sluice/detail/thread_annotations.hpp"

namespace {

class Counter {
 public:
  void add() { ++value_; }  // no lock held: the analysis must refuse this
  int read() {
    sluice::MutexLock lock(mu_);
    return value_;
  }

 private:
  sluice::Mutex mu_;
  int value_ SLUICE_GUARDED_BY(mu_) = 0;
};

}  // namespace

int main() {
  Counter c;
  c.add();
  return c.read();
}

#include "worker.hpp"

#include <pthread.h>

#include <csignal>
#include <cstdio>
#include <exception>
#include <thread>

namespace sluice::cli {

int run_worker(const StageWorkerOptions& options, const ImageModelOptions& model_options) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);                   // (sent to itself when the relay ended the run)
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before any thread starts
  const ImageModel model(model_options);
  StageWorker worker(options, [&model](const WorkFrame& frame) { return model(frame); });
  try {
    worker.connect();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sluice worker: %s\n", e.what());
    return 1;  // (a runtime failure: the relay refused or could not be reached)
  }
  std::printf("{\"event\":\"joined\",\"topic\":\"%s\",\"name\":\"%s\",\"concurrency\":%u}\n",
              options.topic.c_str(), options.name.c_str(), options.concurrency);
  std::fflush(stdout);
  // A signal stops the worker; a worker the relay closed stops the signal thread.
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    if (sig == SIGUSR1) return;
    worker.stop();
  });
  const std::string why = worker.run();
  pthread_kill(waiter.native_handle(), SIGUSR1);
  waiter.join();
  std::printf("{\"event\":\"stopped\",\"processed\":%llu,\"refused\":%llu,\"why\":\"%s\"}\n",
              static_cast<unsigned long long>(worker.processed()),
              static_cast<unsigned long long>(worker.failed()), why.c_str());
  return 0;
}

}  // namespace sluice::cli

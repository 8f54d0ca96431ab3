// `sluice demo`: a Channel under overload, once per policy, printed once a second.
#pragma once

namespace sluice::cli {

struct DemoOptions {
  int seconds = 5;
  int producer_rate = 2000;  // items per second offered by each producer
  int consumer_rate = 500;   // items per second each consumer takes
  int item_kib = 16;
};

/// Runs the demo; returns a process exit code.
int run_demo(const DemoOptions& options);

}  // namespace sluice::cli

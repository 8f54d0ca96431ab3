// `sluice worker`: joins a topic's processing stage over WebSocket and transforms its frames
// (grayscale, downscale, mean brightness); see include/sluice/client/stage_worker.hpp.
#pragma once

#include "sluice/client/stage_worker.hpp"

namespace sluice::cli {

/// Runs until SIGINT/SIGTERM or the relay closes. 0, or 2 if the relay refused the worker.
int run_worker(const StageWorkerOptions& options);

}  // namespace sluice::cli

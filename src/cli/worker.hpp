// `sluice worker`: joins a topic's processing stage over WebSocket and runs the demo image
// model on its frames (grayscale, downscale, mean brightness: image_model.hpp).
#pragma once

#include "image_model.hpp"
#include "sluice/client/stage_worker.hpp"

namespace sluice::cli {

/// Runs until SIGINT/SIGTERM or the relay closes. 0, or 2 if the relay refused the worker.
int run_worker(const StageWorkerOptions& options, const ImageModelOptions& model);

}  // namespace sluice::cli

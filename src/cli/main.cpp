// The `sluice` executable. Subcommands: demo (more arrive with the relay: serve, pub, sub).
#include <CLI/CLI.hpp>

#include "demo.hpp"

int main(int argc, char** argv) {
  CLI::App app{"sluice: real-time streams that stay healthy under overload"};
  app.require_subcommand(1);

  sluice::cli::DemoOptions demo;
  auto* demo_cmd = app.add_subcommand("demo", "Show a Channel under overload, per policy");
  demo_cmd->add_option("--seconds", demo.seconds, "How long to run")->check(CLI::Range(1, 3600));
  demo_cmd->add_option("--producer-rate", demo.producer_rate, "Items/s offered per producer")
      ->check(CLI::Range(1, 1'000'000));
  demo_cmd->add_option("--consumer-rate", demo.consumer_rate, "Items/s taken per consumer")
      ->check(CLI::Range(1, 1'000'000));
  demo_cmd->add_option("--item-kib", demo.item_kib, "Item size in KiB")
      ->check(CLI::Range(1, 65536));

  CLI11_PARSE(app, argc, argv);
  if (demo_cmd->parsed()) return sluice::cli::run_demo(demo);
  return 0;
}

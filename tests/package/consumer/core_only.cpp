// The core from the installed package: a bounded channel that drops the oldest, counted.
#include <cstdio>

#include "sluice/channel.hpp"

int main() {
  sluice::ChannelConfig config;
  config.name = "consumer";
  config.max_items = 2;
  config.policy = sluice::OverflowPolicy::drop_oldest;
  config.account_bytes = false;
  config.max_bytes = sluice::kUnlimitedBytes;
  sluice::Channel<int> channel(config);
  for (int i = 0; i < 5; ++i) (void)channel.try_send(int{i});
  const auto first = channel.try_recv();
  const auto dropped = channel.stats().dropped.total();
  if (!first.ok()) return 1;
  std::printf("first=%d dropped=%llu\n", *first.value, static_cast<unsigned long long>(dropped));
  return *first.value == 3 && dropped == 3 ? 0 : 1;
}

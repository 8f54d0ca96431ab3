// The relay's C++ client from the installed package: against no relay, a Publisher reports
// UNAVAILABLE at once (linking and running is what this checks).
#include <chrono>
#include <cstdio>

#include "sluice/client/client.hpp"

int main() {
  sluice::client::PublisherOptions o;
  o.target = "127.0.0.1:1";
  o.topic = "t";
  o.max_retries = 1;
  o.initial_backoff = std::chrono::milliseconds(10);
  sluice::client::Publisher pub(o);
  auto status = pub.publish(sluice::Buffer(std::string("x")));
  if (status.ok()) status = pub.close();
  std::printf("%s\n", status.to_string().c_str());
  return status.code == 14 ? 0 : 1;
}

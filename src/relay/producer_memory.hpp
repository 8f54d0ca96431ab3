// What a topic remembers of its producers (relay-internal): for each producer that names itself
// (a producer id), the highest sequence number of its items that went into the topic — so that
// an item sent again after a reconnect (its ack was lost with the connection) goes in once, not
// twice. Producers number their items increasingly (sluice::client::Publisher and the Python
// GrpcPublisher do); an item at or below what the topic has from its producer is a duplicate.
//
// Bounded: at most `capacity` producers per topic, the least recently heard forgotten first
// (limits.max_producer_ids); a forgotten producer's resends would go in again, as without an id.
// Memory: capacity × (id ≤ 128 bytes + about 64 bytes of bookkeeping).
//
// Thread-safety: thread-safe. publish_once() holds the lock while it publishes, so that two
// sessions of the same producer (a new call while the old one is still ending) cannot both put
// the same item in; the publish it runs must not wait (try_publish).
#pragma once

#include <cstdint>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "sluice/detail/thread_annotations.hpp"

namespace sluice::relay {

class ProducerMemory {
 public:
  enum class Outcome : std::uint8_t { published, duplicate, not_published };

  explicit ProducerMemory(std::size_t capacity) : capacity_(capacity) {}

  /// Was `sequence` of `producer` already put into the topic? (A hint: publish_once decides.)
  bool seen(const std::string& producer, std::uint64_t sequence) const {
    const MutexLock lock(mu_);
    const auto it = by_id_.find(producer);
    return it != by_id_.end() && sequence <= it->second->second;
  }

  /// Runs `publish()` (true when the item went in) unless `sequence` of `producer` already did.
  template <class Publish>
  Outcome publish_once(const std::string& producer, std::uint64_t sequence, Publish&& publish) {
    const MutexLock lock(mu_);
    auto it = by_id_.find(producer);
    if (it != by_id_.end() && sequence <= it->second->second) {
      touch(it->second);
      return Outcome::duplicate;
    }
    if (!publish()) return Outcome::not_published;
    if (capacity_ == 0) return Outcome::published;
    if (it != by_id_.end()) {
      it->second->second = sequence;
      touch(it->second);
      return Outcome::published;
    }
    if (by_id_.size() >= capacity_) {  // forget the least recently heard
      by_id_.erase(order_.back().first);
      order_.pop_back();
    }
    order_.emplace_front(producer, sequence);
    by_id_.emplace(order_.front().first, order_.begin());
    return Outcome::published;
  }

  std::size_t size() const {
    const MutexLock lock(mu_);
    return by_id_.size();
  }

 private:
  using Entry = std::pair<std::string, std::uint64_t>;  // id, last sequence in the topic
  void touch(std::list<Entry>::iterator it) SLUICE_REQUIRES(mu_) {
    order_.splice(order_.begin(), order_, it);
  }

  const std::size_t capacity_;
  mutable Mutex mu_;
  std::list<Entry> order_ SLUICE_GUARDED_BY(mu_);  // most recently heard first
  // Keys view the ids in order_ (list nodes do not move).
  std::unordered_map<std::string_view, std::list<Entry>::iterator> by_id_ SLUICE_GUARDED_BY(mu_);
};

}  // namespace sluice::relay

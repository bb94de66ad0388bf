// Ends the idle pauses of the other attention workers (AttentionWorker.Wake)
// when this one gets requests while the whole mesh is idle: the lockstep MoE
// step needs every attention worker, so without it the first step waits for
// the longest idle pause among the peers (attention_worker.max_idle_sleep_us).
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "switchyard/internal/v1/cluster.grpc.pb.h"

namespace sy::attention_worker {

class PeerWaker {
 public:
  // `addresses`: gRPC addresses of all attention workers, by index; the
  // entry at `self_index` is skipped.
  PeerWaker(const std::vector<std::string>& addresses, int32_t self_index);
  // Waits for calls still in flight (each has a 1 s deadline).
  ~PeerWaker();
  PeerWaker(const PeerWaker&) = delete;
  PeerWaker& operator=(const PeerWaker&) = delete;

  // Sends Wake to every peer without waiting for the answers; a peer that is
  // down or slow costs nothing here (failures are logged at debug level).
  void WakeAll();
  bool empty() const { return peers_.empty(); }

 private:
  struct Peer {
    std::string address;
    std::unique_ptr<::switchyard::internal::v1::AttentionWorker::Stub> stub;
  };
  std::vector<Peer> peers_;
  int32_t self_index_;
  std::mutex mu_;
  std::condition_variable idle_;
  int in_flight_ = 0;  // guarded by mu_
};

}  // namespace sy::attention_worker

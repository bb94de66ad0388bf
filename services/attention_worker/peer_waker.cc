#include "services/attention_worker/peer_waker.h"

#include <chrono>

#include "common/log.h"
#include "grpcpp/grpcpp.h"
#include "services/security/security.h"

namespace sy::attention_worker {

namespace pb = ::switchyard::internal::v1;

PeerWaker::PeerWaker(const std::vector<std::string>& addresses, int32_t self_index)
    : self_index_(self_index) {
  for (size_t i = 0; i < addresses.size(); ++i) {
    if (static_cast<int32_t>(i) == self_index || addresses[i].empty()) continue;
    peers_.push_back(
        {addresses[i], pb::AttentionWorker::NewStub(security::InternalChannel(addresses[i]))});
  }
}

PeerWaker::~PeerWaker() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_.wait(lock, [this] { return in_flight_ == 0; });
}

void PeerWaker::WakeAll() {
  // One call's state lives until its callback runs.
  struct Call {
    grpc::ClientContext context;
    pb::WakeRequest request;
    pb::WakeResponse response;
  };
  for (Peer& peer : peers_) {
    auto* call = new Call;
    call->context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    call->request.set_from_index(self_index_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++in_flight_;
    }
    const std::string address = peer.address;
    peer.stub->async()->Wake(&call->context, &call->request, &call->response,
                             [this, call, address](grpc::Status status) {
                               if (!status.ok()) {
                                 SY_LOG(DEBUG) << "waking attention worker " << address << ": "
                                               << status.error_message();
                               }
                               delete call;
                               std::lock_guard<std::mutex> lock(mu_);
                               if (--in_flight_ == 0) idle_.notify_all();
                             });
  }
}

}  // namespace sy::attention_worker

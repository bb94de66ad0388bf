#include "services/coordinator/mesh_prober.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "services/cluster/grpc_server.h"

namespace sy::coordinator {

MeshProber::MeshProber(CoordinatorCore* core, std::chrono::milliseconds probe_timeout)
    : core_(core), probe_timeout_(probe_timeout) {
  thread_ = std::thread([this] { Run(); });
}

MeshProber::~MeshProber() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  thread_.join();
}

void MeshProber::Report(int64_t epoch, int32_t rank, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (epoch <= handled_epoch_ || epoch <= pending_epoch_) return;
  pending_epoch_ = epoch;
  pending_why_ = absl::StrCat("rank ", rank, " reported a failed step (", why, ")");
  cv_.notify_all();
}

int64_t MeshProber::reforms() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reforms_;
}

void MeshProber::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return stop_ || pending_epoch_ > handled_epoch_; });
    if (stop_) return;
    const int64_t epoch = pending_epoch_;
    const std::string why = pending_why_;
    handled_epoch_ = epoch;
    lock.unlock();
    SY_LOG(WARNING) << "epoch " << epoch << ": " << why << "; checking every member";
    // Every member at once: a frozen one costs the probe timeout, not one
    // timeout per member.
    const MeshView mesh = core_->GetMesh();
    std::vector<std::string> verdict(mesh.members.size());
    std::vector<std::thread> probes;
    for (size_t i = 0; i < mesh.members.size(); ++i) {
      // A replacement still loading is not in the mesh (nor serving yet).
      if (mesh.members[i].dropped || mesh.members[i].joining) continue;
      probes.emplace_back([&, i] {
        verdict[i] = cluster::HealthCheckFailure(mesh.members[i].grpc_address, "", probe_timeout_);
      });
    }
    for (std::thread& t : probes) t.join();
    std::vector<int32_t> dead;
    std::vector<std::string> reasons;
    for (size_t i = 0; i < mesh.members.size(); ++i) {
      if (verdict[i].empty()) continue;
      dead.push_back(mesh.members[i].rank);
      reasons.push_back(absl::StrCat("rank ", mesh.members[i].rank, " at ",
                                     mesh.members[i].grpc_address, ": ", verdict[i]));
    }
    const absl::StatusOr<int64_t> e = core_->Reform(
        dead, epoch,
        dead.empty() ? why : absl::StrCat(why, "; unreachable: ", absl::StrJoin(reasons, "; ")));
    lock.lock();
    if (e.ok() && *e > epoch) ++reforms_;
  }
}

}  // namespace sy::coordinator

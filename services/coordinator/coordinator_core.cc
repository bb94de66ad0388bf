#include "services/coordinator/coordinator_core.h"

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace sy::coordinator {

CoordinatorCore::CoordinatorCore(const CoordinatorOptions& options, eplb::Placement placement)
    : options_(options),
      attention_(options.attention_workers),
      experts_(options.expert_workers),
      placement_(std::move(placement)) {}

bool CoordinatorCore::CompleteLocked() const {
  for (const auto* list : {&attention_, &experts_}) {
    for (const MemberInfo& m : *list) {
      if (m.rank < 0) return false;
    }
  }
  return true;
}

bool CoordinatorCore::ReadyLocked() const {
  if (!CompleteLocked()) return false;
  for (const auto* list : {&attention_, &experts_}) {
    for (const MemberInfo& m : *list) {
      if (!m.alive || !m.ready) return false;
    }
  }
  return true;
}

std::vector<MemberInfo> CoordinatorCore::RegisteredLocked() const {
  std::vector<MemberInfo> out;
  for (const auto* list : {&attention_, &experts_}) {
    for (const MemberInfo& m : *list) {
      if (m.rank >= 0) out.push_back(m);
    }
  }
  return out;
}

absl::StatusOr<int32_t> CoordinatorCore::Register(Role role, int32_t index,
                                                  const std::string& grpc_address,
                                                  const std::string& transport_address,
                                                  const std::string& name) {
  if (grpc_address.empty()) return absl::InvalidArgumentError("grpc_address must not be empty");
  if (transport_address.empty()) {
    return absl::InvalidArgumentError("transport_address must not be empty");
  }
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<MemberInfo>& list = role == Role::kAttention ? attention_ : experts_;
  const char* role_name = role == Role::kAttention ? "attention" : "expert";
  if (index < 0 || index >= static_cast<int32_t>(list.size())) {
    return absl::InvalidArgumentError(absl::StrCat("index ", index, " is outside the ", list.size(),
                                                   " ", role_name, " workers of the topology"));
  }
  MemberInfo& m = list[index];
  if (m.rank >= 0 && m.grpc_address != grpc_address && m.alive) {
    return absl::AlreadyExistsError(
        absl::StrCat(role_name, " worker ", index, " is already registered from ", m.grpc_address));
  }
  m.role = role;
  m.rank = role == Role::kAttention ? index : options_.attention_workers + index;
  m.grpc_address = grpc_address;
  m.transport_address = transport_address;
  m.name = name;
  m.alive = true;
  m.ready = false;
  m.last_heartbeat = std::chrono::steady_clock::now();
  ++epoch_;
  SY_LOG(INFO) << "registered " << role_name << " worker " << index << " ('" << name << "') at "
               << grpc_address << " as rank " << m.rank << " (epoch " << epoch_ << ")";
  if (CompleteLocked()) SY_LOG(INFO) << "mesh complete at epoch " << epoch_;
  const int32_t rank = m.rank;
  lock.unlock();
  NotifyChange();
  return rank;
}

absl::StatusOr<int64_t> CoordinatorCore::Heartbeat(int32_t rank, bool ready) {
  bool found = false;
  bool revived = false, became_ready = false;
  int64_t epoch = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto* list : {&attention_, &experts_}) {
      for (MemberInfo& m : *list) {
        if (m.rank == rank && rank >= 0) {
          m.last_heartbeat = std::chrono::steady_clock::now();
          if (!m.alive) {
            m.alive = true;
            ++epoch_;
            revived = true;
            SY_LOG(INFO) << "rank " << rank << " (" << m.grpc_address
                         << ") is sending heartbeats again; marked alive";
          }
          if (ready && !m.ready) {
            m.ready = true;
            became_ready = true;
            SY_LOG(INFO) << "rank " << rank << " (" << m.grpc_address << ") is ready";
          }
          epoch = epoch_;
          found = true;
        }
      }
    }
  }
  if (!found) return absl::NotFoundError(absl::StrCat("rank ", rank, " is not registered"));
  if (became_ready) {
    bool mesh_ready;
    {
      std::lock_guard<std::mutex> lock(mu_);
      mesh_ready = ReadyLocked();
    }
    if (mesh_ready) SY_LOG(INFO) << "mesh ready at epoch " << epoch << ": every worker has loaded";
  }
  if (revived || became_ready) NotifyChange();
  return epoch;
}

void CoordinatorCore::SetChangeListener(std::function<void()> listener) {
  std::lock_guard<std::mutex> lock(listener_mu_);
  listener_ = std::move(listener);
}

void CoordinatorCore::NotifyChange() {
  std::lock_guard<std::mutex> lock(listener_mu_);
  if (listener_) listener_();
}

MeshView CoordinatorCore::GetMesh() const {
  std::lock_guard<std::mutex> lock(mu_);
  MeshView v;
  v.epoch = epoch_;
  v.complete = CompleteLocked();
  v.ready = ReadyLocked();
  v.members = RegisteredLocked();
  v.placement = placement_;
  return v;
}

std::vector<int32_t> CoordinatorCore::ExpireSilent(std::chrono::steady_clock::time_point now) {
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<int32_t> expired;
  for (auto* list : {&attention_, &experts_}) {
    for (MemberInfo& m : *list) {
      if (m.rank >= 0 && m.alive && now - m.last_heartbeat > options_.worker_timeout) {
        m.alive = false;
        expired.push_back(m.rank);
        SY_LOG(WARNING) << "rank " << m.rank << " (" << m.grpc_address
                        << ") missed heartbeats; marked dead";
      }
    }
  }
  if (!expired.empty()) {
    ++epoch_;
    lock.unlock();
    NotifyChange();
  }
  return expired;
}

int64_t CoordinatorCore::epoch() const {
  std::lock_guard<std::mutex> lock(mu_);
  return epoch_;
}

}  // namespace sy::coordinator

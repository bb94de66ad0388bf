#include "services/coordinator/coordinator_core.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status.h"

namespace sy::coordinator {

CoordinatorCore::CoordinatorCore(const CoordinatorOptions& options, eplb::Placement placement)
    : options_(options),
      incarnation_((static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}()),
      rng_(std::random_device{}()),
      attention_(options.attention_workers),
      experts_(options.expert_workers),
      placement_(std::move(placement)) {
  if (placement_.epoch <= 0) placement_.epoch = 1;
  epoch_ = formed_epoch_ = placement_.epoch;
}

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
  bool any_attention = false;
  for (const auto* list : {&attention_, &experts_}) {
    for (const MemberInfo& m : *list) {
      if (m.dropped || m.joining) continue;
      if (!m.alive || !m.ready) return false;
      any_attention |= m.role == Role::kAttention;
    }
  }
  // A re-formed mesh whose survivors cannot hold every expert is not.
  return any_attention && unservable_.empty();
}

bool CoordinatorCore::DegradedLocked() const {
  for (const auto* list : {&attention_, &experts_}) {
    for (const MemberInfo& m : *list) {
      if (m.dropped || m.joining) return true;
    }
  }
  return false;
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

absl::StatusOr<int32_t> CoordinatorCore::Register(
    Role role, int32_t index, const std::string& grpc_address, const std::string& transport_address,
    const std::string& name, const std::string& staging_address, uint64_t* registration,
    const RecoveryInfo* recovery) {
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
  if (recovery != nullptr && m.rank < 0) {
    SY_RETURN_IF_ERROR(RecoverLocked(role, index, *recovery));
  }
  if (m.rank >= 0 && m.grpc_address != grpc_address && m.alive && !m.dropped && !m.joining) {
    return absl::AlreadyExistsError(
        absl::StrCat(role_name, " worker ", index, " is already registered from ", m.grpc_address));
  }
  if (ever_ready_ && m.rank >= 0 && !m.dropped && !m.joining && recovery == nullptr) {
    // A member of the running mesh registers again: its process restarted,
    // so the one the mesh holds is gone. Re-form without it (as for a
    // failure found otherwise); the new one joins as its replacement.
    const absl::StatusOr<int64_t> e =
        ReformLocked({m.rank}, absl::StrCat("rank ", m.rank, " registered again (restarted)"));
    if (!e.ok()) SY_LOG(ERROR) << "re-forming the mesh: " << e.status();
  }
  const bool replaces = m.dropped || m.joining;
  if (replaces) {
    SY_LOG(WARNING) << role_name << " worker " << index << " ('" << name << "') registered from "
                    << grpc_address << " to replace the one dropped at epoch " << m.dropped_epoch
                    << "; it joins the mesh once it has loaded";
    m.dropped = false;
    m.joining = true;
  }
  m.role = role;
  m.rank = role == Role::kAttention ? index : options_.attention_workers + index;
  m.grpc_address = grpc_address;
  m.transport_address = transport_address;
  m.staging_address = staging_address;
  m.name = name;
  m.alive = true;
  m.ready = false;
  m.last_heartbeat = std::chrono::steady_clock::now();
  m.serving_epoch = 0;
  m.staged_epoch = 0;
  do {
    m.registration = rng_();
  } while (m.registration == 0);
  if (registration != nullptr) *registration = m.registration;
  if (recovery != nullptr && !replaces) {
    m.ready = true;  // it serves
    m.serving_epoch = recovery->serving_epoch;
  }
  ++version_;
  SY_LOG(INFO) << "registered " << role_name << " worker " << index << " ('" << name << "') at "
               << grpc_address << " as rank " << m.rank << " (version " << version_ << ")";
  if (CompleteLocked() && !replaces) SY_LOG(INFO) << "mesh complete at epoch " << epoch_;
  if (recovering_ && CompleteLocked()) {
    recovering_ = false;
    SY_LOG(WARNING) << "every worker has registered again: the mesh is recovered at epoch "
                    << epoch_ << " (generation " << formed_epoch_ << ")";
  }
  const int32_t rank = m.rank;
  lock.unlock();
  NotifyChange();
  return rank;
}

absl::Status CoordinatorCore::RecoverLocked(Role role, int32_t index,
                                            const RecoveryInfo& recovery) {
  if (recovery.placement.has_value()) {
    const eplb::Placement& p = *recovery.placement;
    if (p.layers != placement_.layers || p.num_logical != placement_.num_logical ||
        p.num_workers != options_.expert_workers) {
      return absl::InvalidArgumentError(
          absl::StrCat("recovery.placement does not fit this coordinator's model and topology (",
                       p.layers.size(), " MoE layers, ", p.num_logical, " experts, ", p.num_workers,
                       " expert workers; configured: ", placement_.layers.size(), ", ",
                       placement_.num_logical, ", ", options_.expert_workers, ")"));
    }
    if (auto st = p.Validate(); !st.ok()) return Annotate(st, "recovery.placement");
  }
  if (!recovering_ && ever_ready_) return absl::OkStatus();  // serving: nothing to rebuild
  if (!recovering_) {
    recovering_ = true;
    ever_ready_ = true;  // steps have run
    recovering_since_ = std::chrono::steady_clock::now();
    SY_LOG(WARNING) << (role == Role::kAttention ? "attention" : "expert") << " worker " << index
                    << " registered again while serving (generation " << recovery.generation
                    << ", epoch " << recovery.serving_epoch
                    << "): this coordinator restarted; rebuilding the mesh from the workers";
  }
  if (recovery.generation > formed_epoch_) formed_epoch_ = recovery.generation;
  if (recovery.placement.has_value() && recovery.placement->epoch >= epoch_) {
    placement_ = *recovery.placement;
    epoch_ = placement_.epoch;
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CoordinatorCore::Heartbeat(int32_t rank, const HeartbeatInfo& info) {
  bool found = false, changed = false, became_ready = false, mesh_ready = false;
  MemberInfo* admit = nullptr;
  int64_t epoch = 0;
  int32_t expert_index = -1;
  std::vector<std::pair<eplb::Placement, LoadSample>> samples;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto* list : {&attention_, &experts_}) {
      for (size_t i = 0; i < list->size(); ++i) {
        MemberInfo& m = (*list)[i];
        if (m.rank != rank || rank < 0) continue;
        if (m.dropped) {
          return absl::FailedPreconditionError(
              absl::StrCat("rank ", rank, " was dropped from the mesh at epoch ", m.dropped_epoch,
                           "; the others serve without it (restart the worker)"));
        }
        if (info.registration != 0 && info.registration != m.registration) {
          return absl::FailedPreconditionError(
              absl::StrCat("rank ", rank, " has registered again since (from ", m.grpc_address,
                           "): this process was replaced"));
        }
        found = true;
        if (list == &experts_) expert_index = static_cast<int32_t>(i);
        m.last_heartbeat = std::chrono::steady_clock::now();
        if (!m.alive) {
          m.alive = true;
          changed = true;
          SY_LOG(INFO) << "rank " << rank << " (" << m.grpc_address
                       << ") is sending heartbeats again; marked alive";
        }
        if (info.ready && !m.ready) {
          m.ready = true;
          changed = became_ready = true;
          SY_LOG(INFO) << "rank " << rank << " (" << m.grpc_address << ") is ready";
          if (m.joining) admit = &m;
        }
        if (info.serving_epoch != m.serving_epoch || info.staged_epoch != m.staged_epoch) {
          m.serving_epoch = info.serving_epoch;
          m.staged_epoch = info.staged_epoch;
          changed = true;
        }
        if (next_.has_value() && info.failed_epoch == next_->placement.epoch &&
            next_->failure.empty()) {
          next_->failure = absl::StrCat("expert worker ", i, ": ", info.failure);
          SY_LOG(WARNING) << "staging placement epoch " << info.failed_epoch << " failed on "
                          << next_->failure;
          changed = true;
        }
      }
    }
    if (found && expert_index >= 0) {
      for (const LoadSample& ls : info.load) {
        const eplb::Placement* p = nullptr;
        if (ls.epoch == placement_.epoch) {
          p = &placement_;
        } else if (previous_.has_value() && ls.epoch == previous_->epoch) {
          p = &*previous_;
        } else if (next_.has_value() && ls.epoch == next_->placement.epoch) {
          p = &next_->placement;
        }
        if (p != nullptr) samples.emplace_back(*p, ls);
      }
    }
    if (admit != nullptr) {
      // The replacement has loaded: re-form the mesh with it.
      admit->joining = false;
      admit->dropped_epoch = 0;
      const absl::StatusOr<int64_t> e =
          ReformLocked({}, absl::StrCat("rank ", rank, " (a replacement) joined"));
      if (!e.ok()) SY_LOG(ERROR) << "re-forming the mesh with rank " << rank << ": " << e.status();
    }
    if (found && MaybeFinishLocked()) changed = true;
    if (changed) ++version_;
    mesh_ready = became_ready && ReadyLocked();
    if (mesh_ready) ever_ready_ = true;
    epoch = epoch_;
  }
  if (found && info.mesh_failed_epoch != 0 && info.mesh_failed_epoch == epoch) {
    std::lock_guard<std::mutex> lock(sink_mu_);
    if (failure_sink_) failure_sink_(epoch, rank, info.mesh_failure);
  }
  if (!found) return absl::NotFoundError(absl::StrCat("rank ", rank, " is not registered"));
  if (mesh_ready) SY_LOG(INFO) << "mesh ready at epoch " << epoch << ": every worker has loaded";
  if (!samples.empty()) {
    std::lock_guard<std::mutex> lock(sink_mu_);
    if (load_sink_) {
      for (const auto& [p, ls] : samples) load_sink_(p, expert_index, ls);
    }
  }
  if (changed) NotifyChange();
  return epoch;
}

void CoordinatorCore::SetLoadSink(LoadSink sink) {
  std::lock_guard<std::mutex> lock(sink_mu_);
  load_sink_ = std::move(sink);
}

void CoordinatorCore::SetMeshFailureSink(MeshFailureSink sink) {
  std::lock_guard<std::mutex> lock(sink_mu_);
  failure_sink_ = std::move(sink);
}

bool CoordinatorCore::MaybeFinishLocked() {
  if (!next_.has_value() || next_->state != TransitionState::kCommitted) return false;
  const int64_t e = next_->placement.epoch;
  for (const auto* list : {&attention_, &experts_}) {
    for (const MemberInfo& m : *list) {
      if (!m.dropped && !m.joining && m.serving_epoch != e) return false;
    }
  }
  previous_ = std::move(placement_);
  placement_ = std::move(next_->placement);
  epoch_ = e;
  finished_epoch_ = e;
  next_.reset();
  SY_LOG(INFO) << "every worker serves placement epoch " << e << ": re-placement complete";
  return true;
}

absl::StatusOr<int64_t> CoordinatorCore::BeginTransition(eplb::Placement next) {
  std::unique_lock<std::mutex> lock(mu_);
  if (next_.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a re-placement to epoch ", next_->placement.epoch, " is already in progress"));
  }
  if (!ReadyLocked()) {
    return absl::FailedPreconditionError(
        "the mesh is not ready (a worker is missing, dead or loading)");
  }
  if (DegradedLocked()) {
    return absl::FailedPreconditionError(
        "the mesh was re-formed without a dead worker; re-placements wait until it is whole");
  }
  if (next.layers != placement_.layers || next.num_logical != placement_.num_logical ||
      next.num_workers != options_.expert_workers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the new placement does not fit the mesh: it has ", next.layers.size(), " MoE layers, ",
        next.num_logical, " experts and ", next.num_workers, " expert workers; the mesh has ",
        placement_.layers.size(), ", ", placement_.num_logical, " and ", options_.expert_workers));
  }
  next.epoch = epoch_ + 1;
  eplb::RebuildLog2Phy(&next);
  if (auto st = next.Validate(); !st.ok()) return st;
  next_ = Transition{std::move(next), TransitionState::kStaging, {}};
  const int64_t e = next_->placement.epoch;
  ++version_;
  SY_LOG(INFO) << "re-placement to epoch " << e << ": expert workers staging";
  lock.unlock();
  NotifyChange();
  return e;
}

absl::Status CoordinatorCore::CommitTransition(int64_t epoch) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!next_.has_value() || next_->placement.epoch != epoch) {
    return absl::FailedPreconditionError(
        absl::StrCat("no re-placement to epoch ", epoch, " is in progress"));
  }
  const TransitionProgress p = ProgressLocked();
  if (!p.failure.empty() || p.staged < p.expert_workers) {
    return absl::FailedPreconditionError(absl::StrCat("epoch ", epoch, " is staged on ", p.staged,
                                                      " of ", p.expert_workers, " expert workers",
                                                      p.failure.empty() ? "" : "; ", p.failure));
  }
  next_->state = TransitionState::kCommitted;
  ++version_;
  SY_LOG(INFO) << "re-placement to epoch " << epoch << " committed: the mesh switches";
  lock.unlock();
  NotifyChange();
  return absl::OkStatus();
}

absl::Status CoordinatorCore::AbortTransition(int64_t epoch, const std::string& why) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!next_.has_value() || next_->placement.epoch != epoch) {
    return absl::FailedPreconditionError(
        absl::StrCat("no re-placement to epoch ", epoch, " is in progress"));
  }
  if (next_->state == TransitionState::kCommitted) {
    return absl::FailedPreconditionError(
        absl::StrCat("the re-placement to epoch ", epoch, " is committed; it cannot be aborted"));
  }
  next_.reset();
  ++version_;
  SY_LOG(WARNING) << "re-placement to epoch " << epoch << " aborted: " << why << "; epoch "
                  << epoch_ << " keeps serving";
  lock.unlock();
  NotifyChange();
  return absl::OkStatus();
}

TransitionProgress CoordinatorCore::ProgressLocked() const {
  TransitionProgress p;
  p.epoch = next_->placement.epoch;
  p.state = next_->state;
  p.failure = next_->failure;
  p.expert_workers = 0;
  for (const MemberInfo& m : experts_) {
    if (m.dropped || m.joining) continue;
    ++p.expert_workers;
    if (m.staged_epoch == p.epoch || m.serving_epoch == p.epoch) ++p.staged;
  }
  return p;
}

std::optional<TransitionProgress> CoordinatorCore::Progress(int64_t epoch) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (next_.has_value() && next_->placement.epoch == epoch) return ProgressLocked();
  if (finished_epoch_ == epoch && epoch_ >= epoch) {
    TransitionProgress p;
    p.epoch = epoch;
    p.state = TransitionState::kCommitted;
    p.expert_workers = p.staged = static_cast<int32_t>(experts_.size());
    p.done = true;
    return p;
  }
  return std::nullopt;
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
  v.formed_epoch = formed_epoch_;
  v.complete = CompleteLocked();
  v.incarnation = incarnation_;
  v.recovering = recovering_;
  v.ready = ReadyLocked();
  v.members = RegisteredLocked();
  v.placement = placement_;
  v.version = version_;
  if (next_.has_value()) v.next = TransitionView{next_->placement, next_->state};
  return v;
}

void CoordinatorCore::EndRecoveryLocked() {
  // The workers that have not registered again since the restart are
  // taken for gone; the mesh goes on without them (a step that still
  // waits on one fails and re-forms it).
  recovering_ = false;
  std::vector<int32_t> missing;
  for (auto* list : {&attention_, &experts_}) {
    for (size_t i = 0; i < list->size(); ++i) {
      MemberInfo& m = (*list)[i];
      if (m.rank >= 0) continue;
      m.role = list == &attention_ ? Role::kAttention : Role::kExpert;
      m.rank = m.role == Role::kAttention ? static_cast<int32_t>(i)
                                          : options_.attention_workers + static_cast<int32_t>(i);
      m.name = "(did not register again)";
      m.alive = false;
      missing.push_back(m.rank);
    }
  }
  // Still recovering means some index is missing (a complete mesh ends it).
  SY_LOG(WARNING) << "recovery ended after " << options_.worker_timeout.count() << " ms: ranks "
                  << absl::StrJoin(missing, ", ") << " did not register again";
  const absl::StatusOr<int64_t> e =
      ReformLocked(missing, "workers that did not register again after a restart");
  if (!e.ok()) SY_LOG(ERROR) << "re-forming the mesh: " << e.status();
}

std::vector<int32_t> CoordinatorCore::ExpireSilent(std::chrono::steady_clock::time_point now) {
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<int32_t> expired;
  bool changed = false;
  if (recovering_ && now - recovering_since_ > options_.worker_timeout) {
    EndRecoveryLocked();
    changed = true;
  }
  for (auto* list : {&attention_, &experts_}) {
    for (MemberInfo& m : *list) {
      if (m.rank >= 0 && m.alive && now - m.last_heartbeat > options_.worker_timeout) {
        m.alive = false;
        ++heartbeat_timeouts_;
        if (m.joining) {
          // A replacement that went silent while loading: dropped again; the
          // serving mesh never included it.
          m.joining = false;
          m.dropped = true;
          SY_LOG(WARNING) << "rank " << m.rank << " (" << m.grpc_address
                          << "), a replacement still loading, missed heartbeats; dropped again";
          changed = true;
          continue;
        }
        expired.push_back(m.rank);
        SY_LOG(WARNING) << "rank " << m.rank << " (" << m.grpc_address
                        << ") missed heartbeats; marked dead";
      }
    }
  }
  if (expired.empty() && !changed) return expired;
  if (!expired.empty() && ever_ready_) {
    // Steps may be under way: the survivors go on without the silent.
    const absl::StatusOr<int64_t> e = ReformLocked(expired, "missed heartbeats");
    if (!e.ok()) SY_LOG(ERROR) << "re-forming the mesh: " << e.status();
  }
  ++version_;
  lock.unlock();
  NotifyChange();
  return expired;
}

absl::StatusOr<int64_t> CoordinatorCore::Reform(const std::vector<int32_t>& dead,
                                                int64_t failed_epoch, const std::string& why) {
  std::unique_lock<std::mutex> lock(mu_);
  if (failed_epoch != 0 && failed_epoch != epoch_) return epoch_;  // already re-formed
  absl::StatusOr<int64_t> e = ReformLocked(dead, why);
  ++version_;
  lock.unlock();
  NotifyChange();
  return e;
}

absl::StatusOr<int64_t> CoordinatorCore::ReformLocked(const std::vector<int32_t>& dead,
                                                      const std::string& why) {
  // The committed re-placement, if one is under way, is what the expert
  // workers hold or have staged; a staging one is dropped.
  const int64_t new_epoch = std::max(epoch_, next_.has_value() ? next_->placement.epoch : 0) + 1;
  const eplb::Placement& base = next_.has_value() && next_->state == TransitionState::kCommitted
                                    ? next_->placement
                                    : placement_;
  if (!dead.empty() && !DegradedLocked()) whole_ = base;  // what to restore once whole again
  for (int32_t rank : dead) {
    for (auto* list : {&attention_, &experts_}) {
      for (MemberInfo& m : *list) {
        if (m.rank != rank || m.rank < 0 || m.dropped) continue;
        m.alive = false;
        m.dropped = true;
        m.joining = false;
      }
    }
  }
  std::vector<bool> alive(experts_.size());
  for (size_t j = 0; j < experts_.size(); ++j) {
    alive[j] = !experts_[j].dropped && !experts_[j].joining;
  }
  eplb::SurvivorStats stats;
  absl::StatusOr<eplb::Placement> next = eplb::SurvivorPlacement(base, alive, new_epoch, &stats);
  for (auto* list : {&attention_, &experts_}) {
    for (MemberInfo& m : *list) {
      if (m.dropped && m.dropped_epoch == 0) m.dropped_epoch = new_epoch;
    }
  }
  if (!next.ok()) {
    unservable_ = std::string(next.status().message());
    SY_LOG(ERROR) << "the mesh cannot be re-formed after " << why << ": " << unservable_
                  << "; not ready until it is whole again";
    return next.status();
  }
  unservable_.clear();
  if (next_.has_value()) {
    SY_LOG(WARNING) << "re-placement to epoch " << next_->placement.epoch
                    << " dropped: the mesh is re-forming";
    next_.reset();
  }
  previous_ = std::move(placement_);
  placement_ = *std::move(next);
  epoch_ = formed_epoch_ = new_epoch;
  std::vector<int32_t> dropped;
  for (const auto* list : {&attention_, &experts_}) {
    for (const MemberInfo& m : *list) {
      if (m.dropped) dropped.push_back(m.rank);
    }
  }
  SY_LOG(WARNING) << "mesh re-formed at epoch " << epoch_ << " after " << why << ": "
                  << (dropped.empty()
                          ? std::string("every member kept")
                          : absl::StrCat("without ranks ", absl::StrJoin(dropped, ", ")))
                  << " (" << stats.dropped_slots << " slots per layer dropped, "
                  << stats.reloaded_slots << " slots given experts left without a replica)";
  return epoch_;
}

std::optional<eplb::Placement> CoordinatorCore::TakeRestore() {
  std::lock_guard<std::mutex> lock(mu_);
  // whole_ is set when a member of the whole mesh is dropped, and only
  // admitted replacements make the mesh whole again.
  if (!whole_.has_value() || DegradedLocked() || next_.has_value() || !ReadyLocked()) {
    return std::nullopt;
  }
  std::optional<eplb::Placement> out = std::move(whole_);
  whole_.reset();
  return out;
}

int64_t CoordinatorCore::epoch() const {
  std::lock_guard<std::mutex> lock(mu_);
  return epoch_;
}

int64_t CoordinatorCore::version() const {
  std::lock_guard<std::mutex> lock(mu_);
  return version_;
}

int64_t CoordinatorCore::heartbeat_timeouts() const {
  std::lock_guard<std::mutex> lock(mu_);
  return heartbeat_timeouts_;
}

}  // namespace sy::coordinator

// The coordinator's state machine, free of gRPC types: membership, rank
// assignment, the expert placement and liveness.
//
// Ranks follow from each worker's index within its role, so a worker knows
// its rank (and can build its transport) before registering: attention
// worker i is rank i, expert worker j is rank A + j. The mesh is complete once A attention and M
// expert workers have registered. The coordinator is the single source of truth: each change of
// membership or placement bumps the epoch and calls the change listener (which is how the gRPC
// front answers the GetMesh calls waiting for a complete mesh without blocking a handler thread).
// Thread-safe: gRPC handler threads call every method concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "eplb/placement.h"

namespace sy::coordinator {

enum class Role { kAttention, kExpert };

struct MemberInfo {
  int32_t rank = -1;
  Role role = Role::kAttention;
  std::string grpc_address;
  std::string transport_address;
  std::string name;
  bool alive = true;
  // Loaded what it serves (reported in heartbeats; cleared by registering).
  bool ready = false;
  std::chrono::steady_clock::time_point last_heartbeat;
};

struct MeshView {
  int64_t epoch = 0;
  bool complete = false;
  // Complete, and every member alive and ready: the mesh may step. Workers
  // start stepping, and the router serving, only then.
  bool ready = false;
  std::vector<MemberInfo> members;  // ordered by rank
  eplb::Placement placement;
};

struct CoordinatorOptions {
  int32_t attention_workers = 1;
  int32_t expert_workers = 1;
  std::chrono::milliseconds worker_timeout{10000};
};

class CoordinatorCore {
 public:
  CoordinatorCore(const CoordinatorOptions& options, eplb::Placement placement);

  // Adds worker `index` of `role` and returns its rank. InvalidArgument for an
  // index outside the topology or an empty address; AlreadyExists when
  // another address holds that index. Re-registering the same address (a
  // restart) replaces its transport address.
  absl::StatusOr<int32_t> Register(Role role, int32_t index, const std::string& grpc_address,
                                   const std::string& transport_address, const std::string& name);
  // Records a heartbeat, and `ready` once the worker reports it (readiness
  // is sticky until the worker registers again; the change listener runs
  // when the mesh becomes ready). NotFound for an unknown rank. Returns the
  // epoch.
  absl::StatusOr<int64_t> Heartbeat(int32_t rank, bool ready = false);
  // The current mesh (never blocks).
  MeshView GetMesh() const;
  // `listener` runs after every epoch change, outside the core's lock, on the
  // thread that made the change. One listener; an empty function removes it.
  void SetChangeListener(std::function<void()> listener);
  // Marks members whose last heartbeat is older than the timeout as dead
  // (bumping the epoch); returns their ranks. Called periodically.
  std::vector<int32_t> ExpireSilent(std::chrono::steady_clock::time_point now);

  int64_t epoch() const;

 private:
  bool CompleteLocked() const;
  bool ReadyLocked() const;
  void NotifyChange();
  std::vector<MemberInfo> RegisteredLocked() const;

  const CoordinatorOptions options_;
  mutable std::mutex mu_;
  std::mutex listener_mu_;  // guards listener_ only; never held with mu_
  std::function<void()> listener_;
  int64_t epoch_ = 1;
  std::vector<MemberInfo> attention_;  // [index]; rank -1 until registered
  std::vector<MemberInfo> experts_;
  eplb::Placement placement_;
};

}  // namespace sy::coordinator

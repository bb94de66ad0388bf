// Joining the mesh, shared by attention and expert workers: register with
// the coordinator under this worker's role and index, wait until every
// worker has registered, connect the transport to all of them, and keep
// sending heartbeats.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "eplb/placement.h"
#include "services/cluster/cluster_config.h"
#include "services/moe/remote_experts.h"
#include "switchyard/internal/v1/cluster.grpc.pb.h"
#include "transport/registry.h"
#include "transport/transport.h"

namespace sy::cluster {

class Heartbeat;

struct JoinedMesh {
  int32_t rank = -1;
  uint64_t registration = 0;  // the coordinator's token for this registration
  // Registered as a replacement into a running mesh: the worker loads, reports
  // ready, and takes part in steps from the reform that admits it.
  bool joining = false;
  int64_t generation = 0;  // the mesh's formed_epoch: the data plane's tag generation
  // Started right after registering, so a worker waiting for slow peers is
  // not taken for dead; runs until the JoinedMesh is destroyed.
  std::unique_ptr<Heartbeat> heartbeat;
  eplb::Placement placement;
  moe::MeshRanks ranks;  // the members in the mesh (this worker included)
  std::vector<std::string> attention_grpc_addresses;  // by attention index
  std::vector<std::string> expert_staging_addresses;  // by expert index ("" when none)
};

// Rank of a worker: attention worker i -> i, expert worker j -> A + j.
int32_t RankOf(const ClusterConfig& cfg, bool attention, int32_t index);

// Creates a data-plane transport and logs the TCP ports it listens on
// (`what` names it: "mesh", "staging"). With options.port_range set, warns
// when a port falls outside it or none was bound in it (every port of the
// range taken: peers on other hosts could not reach this one).
absl::StatusOr<std::unique_ptr<transport::Transport>> CreateDataPlaneTransport(
    const transport::TransportOptions& options, const std::string& what);

// Registers (retrying while the coordinator is not up yet, until `timeout`),
// starts heartbeats, waits for the complete mesh, connects `transport`.
// The worker's gRPC server listens on `listen_address`; it registers the
// address the others reach that at (AdvertisedAddressFor). Progress goes to
// the log.
absl::StatusOr<JoinedMesh> JoinMesh(const ClusterConfig& cfg, bool attention, int32_t index,
                                    const std::string& listen_address,
                                    transport::Transport& transport,
                                    std::chrono::milliseconds timeout,
                                    const std::string& staging_address = "");

// A worker's watcher, at each mesh `m`: when `m` dropped this worker (rank),
// or lists another process at its rank (it was replaced), sets *dropped and
// interrupts `transport` (once) and returns true: the worker must stop.
// Otherwise, when `m` re-formed the mesh since `generation`, hands `request`
// the reform to adopt, with the members' addresses: the step thread
// connects to them when it adopts it (never this thread: the transport is
// the step thread's). An invalid reform is logged.
bool FollowReforms(const ClusterConfig& cfg, const ::switchyard::internal::v1::Mesh& m,
                   int32_t rank, int64_t generation, transport::Transport& transport,
                   std::atomic<bool>* dropped, const std::function<void(moe::MeshReform)>& request);

// A replacement (JoinedMesh::joining) that has reported ready: polls
// `adopt` (waits up to `poll` for a reform and adopts it) until `admitted`
// holds or `give_up` does; DeadlineExceeded after kReadyTimeout, an error
// from `adopt` as is.
absl::Status AwaitAdmission(const std::string& who, const std::function<bool()>& admitted,
                            const std::function<absl::Status(absl::Duration poll)>& adopt,
                            const std::function<bool()>& give_up);

// How long a worker whose step failed waits for the coordinator to re-form
// the mesh before it gives up (twice the worker timeout: a frozen peer is
// found by its missing heartbeats at the latest).
std::chrono::milliseconds ReformWait(const ClusterConfig& cfg);

// Waits until the coordinator reports the mesh ready (every worker alive and
// loaded), logging every few seconds which ranks are still loading.
// DeadlineExceeded after `timeout`, naming them.
absl::Status WaitForReadyMesh(const ClusterConfig& cfg, std::chrono::milliseconds timeout);
// How long a worker waits for the others to load (large checkpoints).
inline constexpr std::chrono::minutes kReadyTimeout{30};

// Sends a heartbeat every cfg.coordinator.heartbeat_ms until destroyed,
// carrying this worker's readiness once SetReady has been called and what
// its reporter adds (epochs, staging outcome, load).
class Heartbeat {
 public:
  // Fills the worker's part of a heartbeat (called on the heartbeat thread).
  using Reporter = std::function<void(::switchyard::internal::v1::HeartbeatRequest*)>;
  // A value that changes whenever the worker has news the coordinator waits
  // for (a switched or staged epoch): a change sends a heartbeat at once.
  using NewsProbe = std::function<int64_t()>;

  Heartbeat(const ClusterConfig& cfg, int32_t rank, uint64_t registration);
  ~Heartbeat();
  // The worker has loaded what it serves; sent with the next heartbeat
  // (which is sent at once).
  void SetReady();
  void SetReporter(Reporter reporter, NewsProbe news);
  // Sends the next heartbeat now.
  void BeatNow() { beat_now_.store(true); }
  // A mesh step of placement epoch `epoch` failed with `why`: sent with every
  // heartbeat from now on (the first at once) until a newer one.
  void ReportMeshFailure(int64_t epoch, const std::string& why);
  // What to register with again when the coordinator answers a heartbeat
  // with NOT_FOUND (it restarted and lost its state): `req` as first sent,
  // plus the recovery the reporter fills once the worker serves (its
  // generation, epoch and, for expert workers, placement). The heartbeats
  // then carry the new registration's token.
  using RecoveryReporter = std::function<void(::switchyard::internal::v1::Recovery*)>;
  void SetRegisterRequest(::switchyard::internal::v1::RegisterRequest req);
  void SetRecoveryReporter(RecoveryReporter reporter);

 private:
  std::atomic<bool> stop_{false};  // set by the destructor, polled by the thread
  // Relaxed is enough: the flag only travels to the coordinator, nothing
  // else in this process is ordered by it.
  std::atomic<bool> ready_{false};
  std::atomic<bool> beat_now_{false};
  std::mutex reporter_mu_;
  Reporter reporter_;              // guarded by reporter_mu_
  NewsProbe news_;                 // guarded by reporter_mu_
  int64_t mesh_failed_epoch_ = 0;  // guarded by reporter_mu_
  std::string mesh_failure_;       // guarded by reporter_mu_
  std::optional<::switchyard::internal::v1::RegisterRequest> register_request_;  // reporter_mu_
  RecoveryReporter recovery_;  // guarded by reporter_mu_
  std::thread thread_;
};

// The worker's control channel: long-polls the coordinator's mesh (GetMesh
// with newer_than_version) on a thread of its own and calls `on_change` with
// every new version, until destroyed. Errors are retried (logged at debug).
class MeshWatcher {
 public:
  MeshWatcher(const ClusterConfig& cfg,
              std::function<void(const ::switchyard::internal::v1::Mesh&)> on_change);
  ~MeshWatcher();

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace sy::cluster

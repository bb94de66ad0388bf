#include "services/expert_worker/expert_worker_runner.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "services/cluster/grpc_server.h"
#include "services/cluster/worker_bootstrap.h"
#include "services/coordinator/coordinator_service.h"
#include "services/expert_worker/expert_worker_metrics.h"
#include "services/moe/expert_copy.h"
#include "services/moe/remote_experts.h"
#include "transport/registry.h"

namespace sy::expert_worker {

namespace pb = ::switchyard::internal::v1;

namespace {

// Progresses an idle staging transport every 50 ms (under `mu`, which the
// mesh watcher holds while it uses the transport), so that connection work
// and a dead peer's failure are handled at once rather than at the next
// re-placement: by then a successor may listen on the dead one's port, and
// UCX's TCP transport, which tells peers apart by address, took a stale
// connection of the predecessor for the successor's (an assertion in
// tcp_iface.c aborted restarted workers).
class StagingPoller {
 public:
  StagingPoller(transport::Transport* staging, std::mutex* mu) {
    if (staging == nullptr) return;
    thread_ = std::thread([this, staging, mu] {
      while (true) {
        {
          std::unique_lock<std::mutex> wait_lock(stop_mu_);
          if (stop_cv_.wait_for(wait_lock, std::chrono::milliseconds(50),
                                [this] { return stop_; })) {
            return;
          }
        }
        std::lock_guard<std::mutex> lock(*mu);
        staging->Poll();
      }
    });
  }
  ~StagingPoller() {
    {
      std::lock_guard<std::mutex> lock(stop_mu_);
      stop_ = true;
    }
    stop_cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  StagingPoller(const StagingPoller&) = delete;
  StagingPoller& operator=(const StagingPoller&) = delete;

 private:
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;  // guarded by stop_mu_
  std::thread thread_;
};

// Stages `next` on `server`: the experts other workers serve now come from
// them over `staging` (null: none); the rest, or all when the copy fails,
// from the server's own source (the checkpoint or dummy weights).
absl::Status StageNext(moe::ExpertServer& server, const eplb::Placement& next, int32_t index,
                       const model::ModelConfig& model, transport::Transport* staging,
                       absl::Duration timeout) {
  SY_LOG(INFO) << "expert worker " << index << ": staging placement epoch " << next.epoch;
  std::map<moe::ExpertKey, model::MlpWeights> copied;
  if (staging != nullptr) {
    const moe::CopyPlan plan = moe::PlanExpertCopies(server.serving_placement(), next, index);
    auto got = moe::CopyExperts(
        plan, next.epoch, model,
        [&](const moe::ExpertKey& k) { return server.Held(k.first, k.second); }, *staging, timeout);
    if (got.ok()) {
      copied = *std::move(got);
    } else {
      SY_LOG(WARNING) << "expert worker " << index << ": copying experts from peers failed ("
                      << got.status() << "); loading them from the checkpoint";
    }
  }
  int64_t from_peers = 0, loaded = 0;
  auto staged =
      server.Stage(next, [&](int32_t layer, int32_t expert) -> absl::StatusOr<model::MlpWeights> {
        auto it = copied.find({layer, expert});
        if (it != copied.end()) {
          ++from_peers;
          return std::move(it->second);
        }
        ++loaded;
        return server.Load(layer, expert);
      });
  if (!staged.ok()) return staged.status();
  SY_LOG(INFO) << "expert worker " << index << ": placement epoch " << next.epoch << ": "
               << from_peers << " experts copied from peers, " << loaded
               << " loaded from the checkpoint";
  return absl::OkStatus();
}

}  // namespace

absl::Status RunExpertWorker(const cluster::ClusterConfig& cfg, int32_t index,
                             transport::Transport& transport, const std::string& listen,
                             const std::function<bool()>& should_stop,
                             cluster::ProcessMetrics* metrics) {
  std::unique_ptr<transport::Transport> own;
  if (cfg.transport.backend == "ucx") {
    transport::TransportOptions to;
    to.backend = "ucx";
    to.rank = index;
    to.port_range = cluster::DataPortRange(cfg, /*attention=*/false, index);
    to.serialized = true;  // the watcher and the StagingPoller take turns
    SY_ASSIGN_OR_RETURN(own, cluster::CreateDataPlaneTransport(to, "staging"));
  }
  return RunExpertWorkerWithStaging(cfg, index, transport, listen, should_stop, own.get(), metrics);
}

absl::Status RunExpertWorkerWithStaging(const cluster::ClusterConfig& cfg, int32_t index,
                                        transport::Transport& transport, const std::string& listen,
                                        const std::function<bool()>& should_stop,
                                        transport::Transport* staging,
                                        cluster::ProcessMetrics* metrics) {
  SY_ASSIGN_OR_RETURN(model::ModelConfig model, model::LoadModelConfig(cfg.model.path));
  std::unique_ptr<model::Checkpoint> ckpt;
  if (cfg.model.load_format != "dummy") {
    SY_ASSIGN_OR_RETURN(ckpt, model::Checkpoint::Open(cfg.model.path));
  }
  // A gRPC server for health probes.
  cluster::ServerOptions so;
  so.address = listen;
  so.name = absl::StrCat("expert worker ", index);
  if (metrics != nullptr) so.metrics = metrics->registry();
  SY_ASSIGN_OR_RETURN(cluster::GrpcServer server, cluster::StartGrpcServer(so));
  SY_ASSIGN_OR_RETURN(
      cluster::JoinedMesh mesh,
      cluster::JoinMesh(cfg, false, index, listen, transport, std::chrono::seconds(120),
                        staging != nullptr ? staging->local_address() : ""));
  if (staging != nullptr) {
    std::vector<transport::PeerAddress> peers;
    for (int32_t j = 0; j < static_cast<int32_t>(mesh.expert_staging_addresses.size()); ++j) {
      if (!mesh.expert_staging_addresses[j].empty()) {
        peers.push_back({j, mesh.expert_staging_addresses[j]});
      }
    }
    if (absl::Status st = staging->Connect(peers); !st.ok()) {
      SY_LOG(WARNING) << "expert worker " << index
                      << ": staging transport not connected (re-placements read the checkpoint): "
                      << st;
      staging = nullptr;
    }
  }
  // Load the experts before the mesh may step: the workers and the router
  // wait for every worker's readiness.
  SY_LOG(INFO) << "expert worker " << index << ": loading the experts of "
               << mesh.placement.NumSlotsOf(index) << " slots x " << mesh.placement.layers.size()
               << " MoE layers";
  const auto load_start = std::chrono::steady_clock::now();
  SY_ASSIGN_OR_RETURN(
      std::unique_ptr<moe::ExpertServer> experts,
      moe::ExpertServer::Create(model, mesh.placement, index, mesh.ranks, &transport, ckpt.get(),
                                cfg.model.dummy_seed, absl::Milliseconds(cfg.transport.timeout_ms),
                                kernels::Context{}, mesh.generation));
  SY_LOG(INFO)
      << "expert worker " << index << ": experts loaded in "
      << std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count()
      << " s; ready";
  experts->set_memory_limit(cfg.expert_worker.memory_limit_bytes);
  std::unique_ptr<ExpertWorkerMetrics> worker_metrics;
  if (metrics != nullptr && metrics->serving()) {
    worker_metrics = std::make_unique<ExpertWorkerMetrics>(experts.get(), index, *metrics);
  }
  // Stops the collectors (which read `experts`) when this function returns.
  cluster::CollectorsOff collectors_off(metrics);
  // Re-placements: the coordinator's mesh carries the placement to stage;
  // heartbeats report the outcome, the epochs and the load.
  std::mutex report_mu;
  int64_t failed_epoch = 0;  // guarded by report_mu
  std::string failure;       // guarded by report_mu
  moe::ExpertServer* server_ptr = experts.get();
  mesh.heartbeat->SetReporter(
      [&](pb::HeartbeatRequest* req) {
        req->set_serving_epoch(server_ptr->serving_epoch());
        req->set_staged_epoch(server_ptr->staged_epoch());
        {
          std::lock_guard<std::mutex> lock(report_mu);
          req->set_failed_epoch(failed_epoch);
          req->set_failure(failure);
        }
        for (moe::ExpertServer::LoadDelta& d : server_ptr->TakeLoad()) {
          pb::LoadReport* r = req->add_load();
          r->set_epoch(d.epoch);
          r->set_first_step(d.first_step);
          r->set_steps(d.steps);
          for (const auto& layer : d.slot_tokens) {
            r->add_layers()->mutable_slot_tokens()->Add(layer.begin(), layer.end());
          }
        }
      },
      // Staging news is sent by the watcher (BeatNow); a switch happens on
      // the step thread.
      [server_ptr] { return server_ptr->serving_epoch(); });
  std::atomic<bool> dropped{false};
  std::vector<std::string> staging_peers = mesh.expert_staging_addresses;  // watcher thread only
  // The staging transport is used by the watcher and progressed between
  // re-placements by the poller, one at a time.
  std::mutex staging_mu;
  StagingPoller poller(staging, &staging_mu);
  cluster::MeshWatcher watcher(cfg, [&](const pb::Mesh& m) {
    std::lock_guard<std::mutex> staging_lock(staging_mu);
    // A re-formed mesh: the step thread abandons its step and adopts it; a
    // mesh re-formed without this worker: it stops.
    if (cluster::FollowReforms(
            cfg, m, mesh.rank, server_ptr->generation(), transport, &dropped,
            [&](moe::MeshReform r) { server_ptr->RequestReform(std::move(r)); })) {
      return;
    }
    // A replacement's staging transport, for copies from it later; a dropped
    // worker's endpoint is closed at once (the staging transport is idle
    // between re-placements, so it would not notice the death itself, and a
    // successor may come back on the same port).
    if (staging != nullptr) {
      for (const pb::Member& member : m.members()) {
        const int32_t j = member.rank() - cfg.topology.attention_workers;
        if (member.role() != pb::ROLE_EXPERT || j < 0 ||
            j >= static_cast<int32_t>(staging_peers.size()) || j == index) {
          continue;
        }
        if (member.dropped()) {
          if (!staging_peers[j].empty()) {
            if (absl::Status st = staging->Disconnect(j); !st.ok()) {
              SY_LOG(WARNING) << "expert worker " << index << ": staging transport to dropped "
                              << "expert worker " << j << ": " << st;
            }
            staging_peers[j].clear();
          }
          continue;
        }
        if (member.joining() || member.staging_address().empty() ||
            member.staging_address() == staging_peers[j]) {
          continue;
        }
        if (absl::Status st = staging->Connect({{j, member.staging_address()}}); !st.ok()) {
          SY_LOG(WARNING) << "expert worker " << index << ": staging transport to expert worker "
                          << j << ": " << st;
        }
        staging_peers[j] = member.staging_address();
      }
    }
    const int64_t staged = server_ptr->staged_epoch();
    const bool is_staging = m.has_next() && m.next().state() == pb::Transition::STATE_STAGING;
    if (staged != 0 && (!m.has_next() || m.next().epoch() != staged) &&
        staged > server_ptr->serving_epoch()) {
      server_ptr->DropStaged(staged);  // aborted
    }
    if (!is_staging || m.next().epoch() == server_ptr->staged_epoch()) return;
    {
      std::lock_guard<std::mutex> lock(report_mu);
      if (failed_epoch == m.next().epoch()) return;  // reported; the coordinator aborts it
    }
    absl::StatusOr<eplb::Placement> next = coordinator::PlacementFromProto(m.next().placement());
    const absl::Status st = next.ok() ? StageNext(*server_ptr, *next, index, model, staging,
                                                  absl::Milliseconds(cfg.eplb.stage_timeout_ms))
                                      : next.status();
    if (!st.ok()) {
      SY_LOG(WARNING) << "expert worker " << index << ": staging placement epoch "
                      << m.next().epoch() << " failed: " << st;
      std::lock_guard<std::mutex> lock(report_mu);
      failed_epoch = m.next().epoch();
      failure = st.ToString();
    }
    mesh.heartbeat->BeatNow();
  });
  mesh.heartbeat->SetReady();
  if (mesh.joining) {
    // A replacement: the coordinator admits it with a reform once it is ready.
    SY_RETURN_IF_ERROR(cluster::AwaitAdmission(
        absl::StrCat("expert worker ", index), [&] { return experts->in_mesh(); },
        [&](absl::Duration poll) { return experts->AwaitReform(poll).status(); },
        [&] { return should_stop() || dropped.load(); }));
  }
  SY_RETURN_IF_ERROR(cluster::WaitForReadyMesh(cfg, cluster::kReadyTimeout));
  // Serving: a restarted coordinator rebuilds its state from this.
  mesh.heartbeat->SetRecoveryReporter([server_ptr](pb::Recovery* r) {
    r->set_serving_epoch(server_ptr->serving_epoch());
    r->set_generation(server_ptr->generation());
    coordinator::PlacementToProto(server_ptr->serving_placement(), r->mutable_placement());
  });
  server.SetServing({}, true);
  SY_LOG(INFO) << "expert worker " << index << " serving " << mesh.placement.NumSlotsOf(index)
               << " slots per layer";
  // A failed step (a peer gone or silent) is reported to the coordinator,
  // which re-forms the mesh over the survivors; the worker adopts it and
  // serves on. When none comes in time (the survivors cannot hold every
  // expert until a replacement joins), it waits on, reporting again every
  // reform_wait: it stops only when dropped from the mesh or asked to.
  absl::Status st;
  const auto reform_wait = absl::FromChrono(cluster::ReformWait(cfg));
  bool idle = false;  // logged that the mesh has no attention worker
  while (!should_stop() && !dropped.load()) {
    absl::StatusOr<bool> adopted = experts->ApplyReform();
    if (!adopted.ok()) {
      st = adopted.status();
      break;
    }
    if (!experts->has_attention_workers()) {
      if (!idle) {
        SY_LOG(WARNING) << "expert worker " << index
                        << ": the mesh has no attention worker; waiting for one to be admitted";
        idle = true;
      }
      // Nothing to serve until a replacement attention worker is admitted:
      // wait for that reform (stepping would spin, piling up empty load
      // reports that made the heartbeats too slow to arrive).
      adopted = experts->AwaitReform(absl::Milliseconds(100));
      if (!adopted.ok()) {
        st = adopted.status();
        break;
      }
      continue;
    }
    idle = false;
    st = experts->ServeStep();
    if (st.ok() || should_stop() || dropped.load()) continue;
    if (!absl::IsAborted(st)) {
      SY_LOG(WARNING) << "expert worker " << index << ": mesh step failed (" << st
                      << "); waiting for the coordinator to re-form the mesh";
      mesh.heartbeat->ReportMeshFailure(experts->serving_epoch(), st.ToString());
    }
    adopted = experts->AwaitReform(reform_wait);
    for (bool logged = false; adopted.ok() && !*adopted && !should_stop() && !dropped.load();) {
      if (!logged) {
        SY_LOG(ERROR) << "expert worker " << index << ": no re-formed mesh came within "
                      << absl::FormatDuration(reform_wait)
                      << "; waiting for the mesh to be whole again";
        logged = true;
      }
      mesh.heartbeat->ReportMeshFailure(experts->serving_epoch(), st.ToString());
      adopted = experts->AwaitReform(reform_wait);
    }
    if (!adopted.ok()) {
      st = adopted.status();
      break;
    }
    st = absl::OkStatus();
  }
  if (dropped.load() && !should_stop()) {
    st = absl::UnavailableError(
        "the coordinator re-formed the mesh without this worker (it was taken for dead)");
  }
  server.SetServing({}, false);
  mesh.heartbeat->SetReporter({}, {});
  mesh.heartbeat->SetRecoveryReporter({});
  server.server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  SY_LOG(INFO) << "expert worker " << index << " stopped after " << experts->step() << " steps";
  // Peers going away during a shutdown is expected.
  if (!st.ok() && !should_stop()) return Annotate(st, "serving MoE steps");
  return absl::OkStatus();
}

}  // namespace sy::expert_worker

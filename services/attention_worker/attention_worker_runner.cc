#include "services/attention_worker/attention_worker_runner.h"

#include <atomic>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "engine/model_runner.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "services/attention_worker/attention_worker_core.h"
#include "services/attention_worker/attention_worker_metrics.h"
#include "services/attention_worker/attention_worker_service.h"
#include "services/attention_worker/peer_waker.h"
#include "services/cluster/grpc_server.h"
#include "services/cluster/worker_bootstrap.h"
#include "services/coordinator/coordinator_service.h"

namespace sy::attention_worker {

namespace pb = ::switchyard::internal::v1;

absl::Status RunAttentionWorker(const cluster::ClusterConfig& cfg, int32_t index,
                                transport::Transport& transport, const std::string& listen,
                                const std::function<bool()>& should_stop,
                                cluster::ProcessMetrics* metrics) {
  SY_ASSIGN_OR_RETURN(model::ModelConfig model, model::LoadModelConfig(cfg.model.path));
  // Dense weights only: the experts live on the expert workers.
  model::DenseWeights dense;
  if (cfg.model.load_format == "dummy") {
    dense = model::DummyDenseWeights(model, cfg.model.dummy_seed);
  } else {
    SY_ASSIGN_OR_RETURN(std::unique_ptr<model::Checkpoint> ckpt,
                        model::Checkpoint::Open(cfg.model.path));
    SY_ASSIGN_OR_RETURN(dense, model::LoadDenseWeights(model, *ckpt));
  }
  SY_LOG(INFO) << "attention worker " << index << ": dense weights loaded";
  SY_ASSIGN_OR_RETURN(
      cluster::JoinedMesh mesh,
      cluster::JoinMesh(cfg, true, index, listen, transport, std::chrono::seconds(120)));
  auto exec = std::make_unique<moe::RemoteExpertExecutor>(
      model, mesh.placement, mesh.ranks, &transport, absl::Milliseconds(cfg.transport.timeout_ms),
      mesh.generation);
  moe::RemoteExpertExecutor* mesh_exec = exec.get();
  SY_ASSIGN_OR_RETURN(
      std::unique_ptr<engine::ModelRunner> runner,
      engine::ModelRunner::Create(model, std::move(dense), std::move(exec), kernels::Context{}));
  engine::EngineOptions eo;
  eo.max_model_len = cfg.limits.max_model_len;
  eo.max_num_seqs = cfg.attention_worker.max_num_seqs;
  eo.max_batched_tokens = cfg.attention_worker.max_batched_tokens;
  eo.max_waiting = cfg.limits.max_queue;
  eo.max_new_tokens_limit = cfg.limits.max_new_tokens;
  eo.max_logprobs = cfg.limits.max_logprobs;
  eo.kv.block_size = cfg.attention_worker.kv_block_size;
  eo.kv.num_blocks = cfg.attention_worker.kv_blocks;
  eo.kv_admission = cfg.attention_worker.kv_admission == "reserve" ? engine::KvAdmission::kReserve
                                                                   : engine::KvAdmission::kOnDemand;
  // A step that fails with the mesh is retried once the mesh is re-formed.
  eo.keep_batch_on_mesh_failure = true;
  SY_ASSIGN_OR_RETURN(std::unique_ptr<engine::Engine> engine,
                      engine::Engine::Create(std::move(runner), eo));
  PeerWaker waker(mesh.attention_grpc_addresses, index);
  AttentionWorkerCoreOptions co;
  co.idle_sleep_us = cfg.attention_worker.idle_sleep_us;
  co.max_idle_sleep_us = cfg.attention_worker.max_idle_sleep_us;
  if (!waker.empty()) co.wake_peers = [&waker] { waker.WakeAll(); };
  co.on_mesh_failure = [&mesh](int64_t epoch, const absl::Status& st) {
    mesh.heartbeat->ReportMeshFailure(epoch, st.ToString());
  };
  co.reform_wait = absl::FromChrono(cluster::ReformWait(cfg));
  co.dedup_window = absl::Milliseconds(cfg.attention_worker.dedup_window_ms);
  std::unique_ptr<AttentionWorkerMetrics> step_metrics;
  if (metrics != nullptr && metrics->serving()) {
    step_metrics = std::make_unique<AttentionWorkerMetrics>(*metrics->registry());
    co.on_step = [m = step_metrics.get()](const StepTimes& t) { m->OnStep(t); };
  }
  AttentionWorkerCore core(std::move(engine), mesh_exec, co);
  // Stops the collectors (which read `core`) when this function returns.
  cluster::CollectorsOff collectors_off(metrics);
  if (metrics != nullptr) AttentionWorkerMetrics::AddCollectors(&core, *metrics);
  AttentionWorkerService service(&core);
  cluster::ServerOptions so;
  so.address = listen;
  so.services = {&service};
  so.name = absl::StrCat("attention worker ", index);
  if (metrics != nullptr) so.metrics = metrics->registry();
  SY_ASSIGN_OR_RETURN(cluster::GrpcServer server, cluster::StartGrpcServer(so));
  // Re-placements: a committed placement goes to the executor, which
  // switches at the step the leader announces; heartbeats report the epoch
  // served.
  mesh.heartbeat->SetReporter(
      [mesh_exec](pb::HeartbeatRequest* req) {
        req->set_serving_epoch(mesh_exec->serving_epoch());
      },
      [mesh_exec] { return mesh_exec->serving_epoch(); });
  int64_t offered_epoch = 0;  // watcher thread only
  std::atomic<bool> dropped{false};
  cluster::MeshWatcher watcher(cfg, [&](const pb::Mesh& m) {
    // A re-formed mesh: the step loop abandons its step, adopts it and
    // retries; a mesh re-formed without this worker: it stops.
    if (cluster::FollowReforms(
            cfg, m, mesh.rank, mesh_exec->generation(), transport, &dropped,
            [&](moe::MeshReform r) { mesh_exec->RequestReform(std::move(r)); })) {
      return;
    }
    if (!m.has_next() || m.next().state() != pb::Transition::STATE_COMMITTED ||
        m.next().epoch() <= offered_epoch) {
      return;
    }
    absl::StatusOr<eplb::Placement> next = coordinator::PlacementFromProto(m.next().placement());
    if (!next.ok()) {
      SY_LOG(ERROR) << "attention worker " << index << ": committed placement epoch "
                    << m.next().epoch() << " is invalid: " << next.status();
      return;
    }
    offered_epoch = next->epoch;
    mesh_exec->OfferPlacement(*std::move(next));
  });
  // Ready: the router may send requests (they queue in the engine); steps
  // start once every worker has loaded.
  mesh.heartbeat->SetReady();
  if (mesh.joining) {
    // A replacement: the coordinator admits it with a reform once it is
    // ready; the router sends it requests from then on.
    SY_RETURN_IF_ERROR(cluster::AwaitAdmission(
        absl::StrCat("attention worker ", index), [&] { return mesh_exec->in_mesh(); },
        [&](absl::Duration poll) {
          mesh_exec->AwaitReform(poll);
          return absl::OkStatus();
        },
        [&] { return should_stop() || dropped.load(); }));
  }
  SY_RETURN_IF_ERROR(cluster::WaitForReadyMesh(cfg, cluster::kReadyTimeout));
  // Serving: a restarted coordinator rebuilds its state from this.
  mesh.heartbeat->SetRecoveryReporter([mesh_exec](pb::Recovery* r) {
    r->set_serving_epoch(mesh_exec->serving_epoch());
    r->set_generation(mesh_exec->generation());
  });
  server.SetServing({"switchyard.internal.v1.AttentionWorker"}, true);
  SY_LOG(INFO) << "attention worker " << index << " serving on " << listen;

  absl::Status loop_status;
  // Written by the loop thread before it ends; read here after join().
  std::atomic<bool> loop_done{false};
  std::thread loop([&] {
    loop_status = core.Run();
    loop_done.store(true);
  });
  while (!should_stop() && !loop_done.load() && !dropped.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  server.SetServing({"switchyard.internal.v1.AttentionWorker"}, false);
  core.Stop();
  loop.join();
  mesh.heartbeat->SetReporter({}, {});
  mesh.heartbeat->SetRecoveryReporter({});
  server.server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  SY_LOG(INFO) << "attention worker " << index << " stopped";
  if (dropped.load() && !should_stop()) {
    return absl::UnavailableError(
        "the coordinator re-formed the mesh without this attention worker (it was taken for "
        "dead)");
  }
  if (!loop_status.ok() && !should_stop()) return Annotate(loop_status, "step loop");
  return absl::OkStatus();
}

}  // namespace sy::attention_worker

// switchyard-attention-worker: one attention worker of a cluster. Loads the
// model's dense weights, joins the mesh through the coordinator, then serves
// switchyard.internal.v1.AttentionWorker while its step loop runs the
// engine, with the routed experts on the expert workers.
//
//   switchyard-attention-worker --config cluster.yaml --index 0
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "engine/model_runner.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"
#include "services/attention_worker/attention_worker_core.h"
#include "services/attention_worker/attention_worker_service.h"
#include "services/cluster/cluster_config.h"
#include "services/cluster/grpc_server.h"
#include "services/cluster/process.h"
#include "services/cluster/worker_bootstrap.h"
#include "transport/registry.h"

ABSL_FLAG(std::string, config, "", "Cluster YAML (required)");
ABSL_FLAG(int32_t, index, 0, "This worker's index among the attention workers");
ABSL_FLAG(std::string, listen, "",
          "gRPC address; default 127.0.0.1:(attention_worker.base_port + index)");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace {

int Fail(const std::string& what, const absl::Status& st) {
  std::cerr << "switchyard-attention-worker: " << what << ": " << st.message() << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Switchyard attention worker.\n  switchyard-attention-worker --config FILE --index I");
  std::vector<std::string> storage;
  std::vector<char*> args = sy::cluster::DashesToUnderscores(argc, argv, &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  sy::LogLevel level;
  if (!sy::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << "switchyard-attention-worker: bad --log-level\n";
    return 2;
  }
  sy::SetMinLogLevel(level);
  sy::cluster::InstallShutdownHandlers();
  auto cfg = sy::cluster::LoadClusterConfig(absl::GetFlag(FLAGS_config));
  if (!cfg.ok()) return Fail("config", cfg.status());
  const int32_t index = absl::GetFlag(FLAGS_index);
  if (index < 0 || index >= cfg->topology.attention_workers) {
    std::cerr << "switchyard-attention-worker: --index " << index << " outside [0, "
              << cfg->topology.attention_workers << ")\n";
    return 2;
  }
  if (cfg->transport.backend != "ucx") {
    std::cerr << "switchyard-attention-worker: transport.backend " << cfg->transport.backend
              << " links threads of one process; separate worker processes need ucx "
                 "(switchyard-local runs inproc clusters in one process)\n";
    return 2;
  }
  auto model = sy::model::LoadModelConfig(cfg->model.path);
  if (!model.ok()) return Fail("model", model.status());

  // Dense weights only: the experts live on the expert workers.
  sy::model::DenseWeights dense;
  if (cfg->model.load_format == "dummy") {
    dense = sy::model::DummyDenseWeights(*model, cfg->model.dummy_seed);
  } else {
    auto ckpt = sy::model::Checkpoint::Open(cfg->model.path);
    if (!ckpt.ok()) return Fail("checkpoint", ckpt.status());
    auto loaded = sy::model::LoadDenseWeights(*model, **ckpt);
    if (!loaded.ok()) return Fail("weights", loaded.status());
    dense = *std::move(loaded);
  }
  SY_LOG(INFO) << "attention worker " << index << ": dense weights loaded";

  sy::transport::TransportOptions to;
  to.backend = cfg->transport.backend;
  to.rank = sy::cluster::RankOf(*cfg, true, index);
  auto transport = sy::transport::CreateTransport(to);
  if (!transport.ok()) return Fail("transport", transport.status());

  const std::string listen =
      absl::GetFlag(FLAGS_listen).empty()
          ? absl::StrCat("127.0.0.1:", cfg->attention_worker.base_port + index)
          : absl::GetFlag(FLAGS_listen);
  auto mesh =
      sy::cluster::JoinMesh(*cfg, true, index, listen, **transport, std::chrono::seconds(120));
  if (!mesh.ok()) return Fail("joining the mesh", mesh.status());

  auto exec = std::make_unique<sy::moe::RemoteExpertExecutor>(
      *model, mesh->placement, mesh->ranks, transport->get(),
      absl::Milliseconds(cfg->transport.timeout_ms));
  sy::moe::RemoteExpertExecutor* mesh_exec = exec.get();
  auto runner = sy::engine::ModelRunner::Create(*model, std::move(dense), std::move(exec),
                                                sy::kernels::Context{});
  if (!runner.ok()) return Fail("model runner", runner.status());
  sy::engine::EngineOptions eo;
  eo.max_model_len = cfg->limits.max_model_len;
  eo.max_num_seqs = cfg->attention_worker.max_num_seqs;
  eo.max_batched_tokens = cfg->attention_worker.max_batched_tokens;
  eo.max_waiting = cfg->limits.max_queue;
  eo.max_new_tokens_limit = cfg->limits.max_new_tokens;
  eo.max_logprobs = cfg->limits.max_logprobs;
  eo.kv.block_size = cfg->attention_worker.kv_block_size;
  eo.kv.num_blocks = cfg->attention_worker.kv_blocks;
  auto engine = sy::engine::Engine::Create(*std::move(runner), eo);
  if (!engine.ok()) return Fail("engine", engine.status());

  sy::attention_worker::AttentionWorkerCoreOptions co;
  co.idle_sleep_us = cfg->attention_worker.idle_sleep_us;
  sy::attention_worker::AttentionWorkerCore core(*std::move(engine), mesh_exec, co);
  sy::attention_worker::AttentionWorkerService service(&core);
  auto server = sy::cluster::StartGrpcServer(listen, {&service});
  if (!server.ok()) return Fail("gRPC server", server.status());
  server->SetServing({"switchyard.internal.v1.AttentionWorker"}, true);
  sy::cluster::Heartbeat heartbeat(*cfg, mesh->rank);
  SY_LOG(INFO) << "attention worker " << index << " serving on " << listen;

  absl::Status loop_status;
  std::thread loop([&] {
    loop_status = core.Run();
    sy::cluster::RequestShutdown();
  });
  while (!sy::cluster::WaitForShutdown(std::chrono::milliseconds(500))) {
  }
  server->SetServing({"switchyard.internal.v1.AttentionWorker"}, false);
  core.Stop();
  loop.join();
  server->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  if (!loop_status.ok()) {
    std::cerr << "switchyard-attention-worker: step loop failed: " << loop_status.message() << "\n";
    return 1;
  }
  SY_LOG(INFO) << "attention worker " << index << " stopped";
  return 0;
}

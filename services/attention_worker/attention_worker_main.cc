// switchyard-attention-worker: one attention worker of a cluster. Loads the
// model's dense weights, joins the mesh through the coordinator, then serves
// switchyard.internal.v1.AttentionWorker while its step loop runs the
// engine, with the routed experts on the expert workers.
//
//   switchyard-attention-worker --config cluster.yaml --index 0
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "services/attention_worker/attention_worker_runner.h"
#include "services/cluster/cluster_config.h"
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
  sy::transport::TransportOptions to;
  to.backend = cfg->transport.backend;
  to.rank = sy::cluster::RankOf(*cfg, true, index);
  auto transport = sy::transport::CreateTransport(to);
  if (!transport.ok()) return Fail("transport", transport.status());
  const std::string listen =
      absl::GetFlag(FLAGS_listen).empty()
          ? absl::StrCat("127.0.0.1:", cfg->attention_worker.base_port + index)
          : absl::GetFlag(FLAGS_listen);
  absl::Status st = sy::attention_worker::RunAttentionWorker(
      *cfg, index, **transport, listen, [] { return sy::cluster::ShutdownRequested(); });
  if (!st.ok()) return Fail("attention worker", st);
  return 0;
}

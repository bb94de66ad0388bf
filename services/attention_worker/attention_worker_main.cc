// switchyard-attention-worker: one attention worker of a cluster. Loads the
// model's dense weights, joins the mesh through the coordinator, then serves
// switchyard.internal.v1.AttentionWorker while its step loop runs the
// engine, with the routed experts on the expert workers.
//
//   switchyard-attention-worker --config cluster.yaml --index 0
#include <unistd.h>

#include <atomic>
#include <iostream>
#include <thread>

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
  // The worker runs on its own thread: its step loop may sit in an exchange
  // whose peers are gone when a shutdown arrives, and the process must still
  // exit promptly. Both are written by the thread before it sets `done`.
  std::atomic<bool> done{false};
  absl::Status status;
  std::thread worker([&] {
    status = sy::attention_worker::RunAttentionWorker(
        *cfg, index, **transport, listen, [] { return sy::cluster::ShutdownRequested(); });
    done.store(true, std::memory_order_release);
    sy::cluster::RequestShutdown();
  });
  while (!sy::cluster::WaitForShutdown(std::chrono::milliseconds(500))) {
  }
  for (int i = 0; i < 60 && !done.load(std::memory_order_acquire); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!done.load(std::memory_order_acquire)) {
    std::cerr << "switchyard-attention-worker: step loop still busy at shutdown; exiting\n";
    std::fflush(stderr);
    _exit(0);
  }
  worker.join();
  if (!status.ok()) return Fail("attention worker", status);
  return 0;
}

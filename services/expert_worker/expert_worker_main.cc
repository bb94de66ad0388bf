// switchyard-expert-worker: one expert worker of a cluster. Joins the mesh
// through the coordinator, loads only its physical slots' experts, then
// serves the lockstep MoE step: every step, for every MoE layer, receive the
// token rows of every attention worker, run the experts, send the outputs
// back.
//
//   switchyard-expert-worker --config cluster.yaml --index 0
#include <unistd.h>

#include <atomic>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "services/cluster/cluster_config.h"
#include "services/cluster/process.h"
#include "services/cluster/worker_bootstrap.h"
#include "services/expert_worker/expert_worker_runner.h"
#include "transport/registry.h"

ABSL_FLAG(std::string, config, "", "Cluster YAML (required)");
ABSL_FLAG(int32_t, index, 0, "This worker's index among the expert workers");
ABSL_FLAG(std::string, listen, "",
          "gRPC address; default 127.0.0.1:(expert_worker.base_port + index)");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace {

int Fail(const std::string& what, const absl::Status& st) {
  std::cerr << "switchyard-expert-worker: " << what << ": " << st.message() << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Switchyard expert worker.\n  switchyard-expert-worker --config FILE --index I");
  std::vector<std::string> storage;
  std::vector<char*> args = sy::cluster::DashesToUnderscores(argc, argv, &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  sy::LogLevel level;
  if (!sy::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << "switchyard-expert-worker: bad --log-level\n";
    return 2;
  }
  sy::SetMinLogLevel(level);
  sy::cluster::InstallShutdownHandlers();
  auto cfg = sy::cluster::LoadClusterConfig(absl::GetFlag(FLAGS_config));
  if (!cfg.ok()) return Fail("config", cfg.status());
  const int32_t index = absl::GetFlag(FLAGS_index);
  if (index < 0 || index >= cfg->topology.expert_workers) {
    std::cerr << "switchyard-expert-worker: --index " << index << " outside [0, "
              << cfg->topology.expert_workers << ")\n";
    return 2;
  }
  if (cfg->transport.backend != "ucx") {
    std::cerr << "switchyard-expert-worker: separate worker processes need transport.backend "
                 "ucx\n";
    return 2;
  }
  sy::transport::TransportOptions to;
  to.backend = cfg->transport.backend;
  to.rank = sy::cluster::RankOf(*cfg, false, index);
  auto transport = sy::transport::CreateTransport(to);
  if (!transport.ok()) return Fail("transport", transport.status());
  const std::string listen = absl::GetFlag(FLAGS_listen).empty()
                                 ? absl::StrCat("127.0.0.1:", cfg->expert_worker.base_port + index)
                                 : absl::GetFlag(FLAGS_listen);
  // The serving loop runs on its own thread: it may sit in an exchange whose
  // peers are gone when a shutdown arrives, and the process must still exit.
  // Both are written by the thread before it sets `done` (release/acquire).
  std::atomic<bool> done{false};
  absl::Status status;
  std::thread worker([&] {
    status = sy::expert_worker::RunExpertWorker(*cfg, index, **transport, listen,
                                                [] { return sy::cluster::ShutdownRequested(); });
    done.store(true, std::memory_order_release);
    sy::cluster::RequestShutdown();
  });
  while (!sy::cluster::WaitForShutdown(std::chrono::milliseconds(500))) {
  }
  for (int i = 0; i < 40 && !done.load(std::memory_order_acquire); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!done.load(std::memory_order_acquire)) {
    // Still blocked in an exchange: leave without unwinding under it.
    std::fflush(stderr);
    _exit(0);
  }
  worker.join();
  if (!status.ok()) return Fail("expert worker", status);
  return 0;
}

#include "services/cluster/worker_main.h"

#include <unistd.h>

#include <atomic>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "services/cluster/process.h"
#include "services/cluster/process_metrics.h"
#include "services/cluster/worker_bootstrap.h"
#include "services/security/security.h"
#include "transport/registry.h"

ABSL_FLAG(std::string, config, "", "Cluster YAML (required)");
ABSL_FLAG(bool, check_config, false,
          "Validate --config and the flags, print the problems (or that they are fine) and exit 0 "
          "or 2, starting nothing");
ABSL_FLAG(int32_t, index, 0, "This worker's index among the workers of its role");
ABSL_FLAG(std::string, listen, "",
          "gRPC address (HOST:PORT) to listen on; default: listen_host:(base_port + index) of the "
          "role's config section");
ABSL_FLAG(int32_t, metrics_port, -1,
          "Port of the Prometheus /metrics endpoint (0: none; -1: the metrics section of "
          "--config: the role's base port + index)");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace sy::cluster {

int WorkerMain(int argc, char** argv, bool attention, const WorkerRunFn& run) {
  const std::string binary = attention ? "switchyard-attention-worker" : "switchyard-expert-worker";
  absl::SetProgramUsageMessage(absl::StrCat("Switchyard ", attention ? "attention" : "expert",
                                            " worker.\n  ", binary, " --config FILE --index I"));
  std::vector<std::string> storage;
  ListAllFlagsInHelp();
  std::vector<char*> args = DashesToUnderscores(argc, argv, &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  LogLevel level;
  if (!ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << binary << ": --log-level must be debug, info, warning or error\n";
    return 2;
  }
  SetMinLogLevel(level);
  InstallShutdownHandlers();
  auto cfg = LoadClusterConfig(absl::GetFlag(FLAGS_config));
  if (!cfg.ok()) {
    std::cerr << binary << ": " << cfg.status().message() << "\n";
    return 2;
  }
  if (absl::Status st = security::SetInternalTls(cfg->security.internal_tls); !st.ok()) {
    std::cerr << binary << ": security.internal_tls: " << st.message() << "\n";
    return 2;
  }
  const int32_t index = absl::GetFlag(FLAGS_index);
  const int32_t count = attention ? cfg->topology.attention_workers : cfg->topology.expert_workers;
  if (index < 0 || index >= count) {
    std::cerr << binary << ": --index " << index << " outside [0, " << count << ")\n";
    return 2;
  }
  if (cfg->transport.backend != "ucx") {
    std::cerr << binary << ": transport.backend " << cfg->transport.backend
              << " links threads of one process; separate worker processes need ucx "
                 "(switchyard-local runs inproc clusters in one process)\n";
    return 2;
  }
  const auto metrics_port =
      ChooseMetricsPort(MetricsPort(*cfg, attention ? "attention_worker" : "expert_worker", index),
                        absl::GetFlag(FLAGS_metrics_port));
  if (!metrics_port.ok()) {
    std::cerr << binary << ": " << metrics_port.status().message() << "\n";
    return 2;
  }
  const std::string listen = absl::GetFlag(FLAGS_listen).empty()
                                 ? WorkerListenAddress(*cfg, attention, index)
                                 : absl::GetFlag(FLAGS_listen);
  const std::string advertised = AdvertisedAddressFor(*cfg, attention, index, listen);
  if (const size_t colon = advertised.rfind(':');
      colon == std::string::npos || colon == 0 || IsWildcardHost(advertised.substr(0, colon))) {
    std::cerr << binary << ": --listen " << listen
              << (colon == std::string::npos || colon == 0
                      ? " must be HOST:PORT\n"
                      : absl::StrCat(" binds every interface: set ",
                                     attention ? "attention_worker" : "expert_worker",
                                     ".advertise_host to where the others reach this worker\n"));
    return 2;
  }
  if (absl::GetFlag(FLAGS_check_config)) {
    std::cout << binary << ": " << absl::GetFlag(FLAGS_config) << ": config OK (index " << index
              << ", registered as " << advertised << ")\n"
              << ListenersLine(listen, cfg->metrics.host, *metrics_port, /*has_ucx=*/true,
                               DataPortRange(*cfg, attention, index))
              << "\n";
    return 0;
  }
  auto metrics = ProcessMetrics::Start(
      cfg->metrics.host, *metrics_port,
      absl::StrCat(attention ? "attention worker " : "expert worker ", index));
  if (!metrics.ok()) {
    std::cerr << binary << ": " << metrics.status().message() << "\n";
    return 1;
  }
  transport::TransportOptions to;
  to.backend = cfg->transport.backend;
  to.rank = RankOf(*cfg, attention, index);
  to.port_range = DataPortRange(*cfg, attention, index);
  auto transport = CreateDataPlaneTransport(to, "mesh");
  if (!transport.ok()) {
    std::cerr << binary << ": transport: " << transport.status().message() << "\n";
    return 1;
  }
  // Both written by the role's thread before it sets `done` (release/acquire).
  std::atomic<bool> done{false};
  absl::Status status;
  std::thread worker([&] {
    status = run(
        *cfg, index, **transport, listen, [] { return ShutdownRequested(); }, metrics->get());
    done.store(true, std::memory_order_release);
    RequestShutdown();
  });
  while (!WaitForShutdown(std::chrono::milliseconds(500))) {
  }
  for (int i = 0; i < 60 && !done.load(std::memory_order_acquire); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!done.load(std::memory_order_acquire)) {
    // Still blocked in an exchange: leave without unwinding under it.
    std::cerr << binary << ": still busy at shutdown; exiting\n";
    std::fflush(stderr);
    _exit(0);
  }
  worker.join();
  metrics->reset();
  if (!status.ok()) {
    std::cerr << binary << ": " << status.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace sy::cluster

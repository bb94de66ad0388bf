// switchyard-coordinator: membership, ranks, mesh bootstrap and the expert
// placement of one cluster.
//
//   switchyard-coordinator --config cluster.yaml [--listen 127.0.0.1:50100]
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/log.h"
#include "services/cluster/cluster_config.h"
#include "services/cluster/process.h"
#include "services/cluster/process_metrics.h"
#include "services/coordinator/coordinator_runner.h"
#include "services/security/security.h"

ABSL_FLAG(std::string, config, "", "Cluster YAML (required)");
ABSL_FLAG(bool, check_config, false,
          "Validate --config and the flags, print the problems (or that they are fine) and exit 0 "
          "or 2, starting nothing");
ABSL_FLAG(std::string, listen, "", "Override coordinator.listen (host:port)");
ABSL_FLAG(int32_t, metrics_port, -1,
          "Port of the Prometheus /metrics endpoint (0: none; -1: metrics.coordinator_port of "
          "--config)");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Switchyard coordinator.\n  switchyard-coordinator --config FILE");
  std::vector<std::string> storage;
  sy::cluster::ListAllFlagsInHelp();
  std::vector<char*> args = sy::cluster::DashesToUnderscores(argc, argv, &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  sy::LogLevel level;
  if (!sy::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << "switchyard-coordinator: bad --log-level\n";
    return 2;
  }
  sy::SetMinLogLevel(level);
  auto cfg = sy::cluster::LoadClusterConfig(absl::GetFlag(FLAGS_config));
  if (!cfg.ok()) {
    std::cerr << "switchyard-coordinator: " << cfg.status().message() << "\n";
    return 2;
  }
  if (absl::Status st = sy::security::SetInternalTls(cfg->security.internal_tls); !st.ok()) {
    std::cerr << "switchyard-coordinator: security.internal_tls: " << st.message() << "\n";
    return 2;
  }
  const std::string listen = absl::GetFlag(FLAGS_listen).empty() ? cfg->coordinator.listen.address()
                                                                 : absl::GetFlag(FLAGS_listen);
  const auto metrics_port = sy::cluster::ChooseMetricsPort(
      sy::cluster::MetricsPort(*cfg, "coordinator", 0), absl::GetFlag(FLAGS_metrics_port));
  if (!metrics_port.ok()) {
    std::cerr << "switchyard-coordinator: " << metrics_port.status().message() << "\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_check_config)) {
    std::cout << "switchyard-coordinator: " << absl::GetFlag(FLAGS_config) << ": config OK\n"
              << sy::cluster::ListenersLine(listen, cfg->metrics.host, *metrics_port,
                                            /*has_ucx=*/false, "")
              << "\n";
    return 0;
  }
  auto metrics =
      sy::cluster::ProcessMetrics::Start(cfg->metrics.host, *metrics_port, "coordinator");
  if (!metrics.ok()) {
    std::cerr << "switchyard-coordinator: " << metrics.status().message() << "\n";
    return 1;
  }
  sy::cluster::InstallShutdownHandlers();
  absl::Status st = sy::coordinator::RunCoordinator(
      *cfg, listen, [] { return sy::cluster::ShutdownRequested(); }, metrics->get());
  metrics->reset();
  if (!st.ok()) {
    std::cerr << "switchyard-coordinator: " << st.message() << "\n";
    return st.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}

// switchyard-local: runs a whole Switchyard cluster on this machine from one
// cluster YAML: the coordinator, the expert workers, the attention workers and
// the router, each as its own process, talking over loopback. Prints where
// the Generate API listens once the router reports SERVING, and on Ctrl-C
// (SIGINT/SIGTERM) stops them all and reaps them; children also receive
// SIGTERM if the launcher itself dies, so none is left behind.
//
//   switchyard-local --config cluster.yaml [--log-dir DIR] [--bin-dir DIR]
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/text.h"
#include "services/cluster/cluster_config.h"
#include "services/cluster/grpc_server.h"
#include "services/cluster/process.h"
#include "services/coordinator/coordinator_runner.h"
#include "services/security/security.h"
#include "tools/local_single_process.h"

ABSL_FLAG(std::string, config, "", "Cluster YAML (required)");
ABSL_FLAG(bool, check_config, false,
          "Validate --config and the flags, print the problems (or that they are fine) and exit 0 "
          "or 2, starting nothing");
ABSL_FLAG(std::string, log_dir, "",
          "Directory for each process's log (default: a new switchyard-local-PID under $TMPDIR "
          "or /tmp)");
ABSL_FLAG(std::string, bin_dir, "",
          "Where the switchyard-* binaries are (default: next to this one)");
ABSL_FLAG(int32_t, ready_timeout_s, 180, "Give up when the cluster is not serving after this long");
ABSL_FLAG(bool, restart_coordinator, false,
          "Restart the coordinator when it dies once the cluster serves (with the same delays as "
          "--restart-workers); the workers serve on meanwhile and register again with it, and it "
          "rebuilds its state from them");
ABSL_FLAG(bool, restart_workers, false,
          "Restart a worker that dies once the cluster serves (after --restart-delay-ms, doubling "
          "up to 30 s while it keeps dying within a minute of starting); the restarted worker "
          "joins the running mesh as a replacement");
ABSL_FLAG(int32_t, restart_delay_ms, 1000,
          "First delay before a restart (--restart-workers, --restart-coordinator), 1 to 30000");

namespace {

struct Child {
  std::string name;
  std::vector<std::string> argv;
  pid_t pid = -1;
  std::string log;
  bool exited = false;
  int status = 0;
  // --restart-workers / --restart-coordinator: when to start it again
  // (after it died), and the delay after the next death.
  std::optional<std::chrono::steady_clock::time_point> restart_at;
  std::chrono::steady_clock::time_point started;
  std::chrono::milliseconds backoff{1000};  // --restart-delay-ms at first
  int restarts = 0;
};

bool IsWorker(const Child& c) {
  return absl::StartsWith(c.name, "attention-worker-") ||
         absl::StartsWith(c.name, "expert-worker-");
}

std::string SelfDir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

// Starts `argv` with stdout/stderr appended to `log`.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv, const std::string& log) {
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    // Die with the launcher, whatever kills it.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    signal(SIGINT, SIG_IGN);  // the launcher decides when children stop
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      close(fd);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    std::fprintf(stderr, "exec %s: %s\n", args[0], strerror(errno));
    _exit(127);
  }
  return pid;
}

// Reaps every child that has exited since the last call; returns them.
std::vector<Child*> Reap(std::vector<Child>& children) {
  std::vector<Child*> out;
  for (Child& c : children) {
    if (c.exited) continue;
    int status = 0;
    if (waitpid(c.pid, &status, WNOHANG) == c.pid) {
      c.exited = true;
      c.status = status;
      out.push_back(&c);
    }
  }
  return out;
}

// Of children that exited together, the one that most likely caused the
// others to: one killed by a signal (kill -9, OOM) before one that exited
// with an error (peers exit with an error when a worker vanishes), before a
// clean exit; ties to the order they were started in.
Child* Culprit(const std::vector<Child*>& dead) {
  auto rank = [](const Child* c) {
    if (WIFSIGNALED(c->status)) return 0;
    if (WIFEXITED(c->status) && WEXITSTATUS(c->status) != 0) return 1;
    return 2;
  };
  Child* best = nullptr;
  for (Child* c : dead) {
    if (best == nullptr || rank(c) < rank(best)) best = c;
  }
  return best;
}

bool CleanExit(const Child& c) { return WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0; }

void StopAll(std::vector<Child>& children) {
  // Router first (no new work), then workers, the coordinator last.
  for (auto it = children.rbegin(); it != children.rend(); ++it) {
    if (!it->exited) kill(it->pid, SIGTERM);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    Reap(children);
    bool all = true;
    for (const Child& c : children) all &= c.exited;
    if (all) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  for (Child& c : children) {
    if (!c.exited) {
      std::cerr << "switchyard-local: " << c.name << " did not stop; killing it\n";
      kill(c.pid, SIGKILL);
      waitpid(c.pid, &c.status, 0);
      c.exited = true;
    }
  }
}

// The last lines of a child's log file, indented.
std::string LogTail(const std::string& path) {
  std::ifstream in(path);
  return sy::IndentedTail(in, 15);
}

// The router's Generate API: over TLS when security.api_tls is set,
// verified with its ca_file (else the certificate itself).
std::shared_ptr<grpc::Channel> ApiChannel(const sy::cluster::ClusterConfig& cfg,
                                          const std::string& address) {
  const sy::security::TlsFiles& tls = cfg.security.api_tls;
  if (!tls.enabled()) return grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto creds = sy::security::TlsChannelCredentials(
      {tls.ca_file.empty() ? tls.cert_file : tls.ca_file, "", "", ""});
  return grpc::CreateChannel(address, creds.ok() ? *creds : grpc::InsecureChannelCredentials());
}

bool RouterServing(const std::shared_ptr<grpc::Channel>& channel) {
  return sy::cluster::HealthCheckFailure(channel, "switchyard.v1.Generate",
                                         std::chrono::milliseconds(500))
      .empty();
}

std::string Describe(const Child& c) {
  if (WIFEXITED(c.status)) return absl::StrCat("exited with status ", WEXITSTATUS(c.status));
  if (WIFSIGNALED(c.status)) return absl::StrCat("was killed by signal ", WTERMSIG(c.status));
  return "stopped";
}

// Where each process serves /metrics (the metrics section of the YAML).
void PrintMetricsEndpoints(const sy::cluster::ClusterConfig& cfg) {
  const std::string& host = cfg.metrics.host;
  const std::string shown =
      host.find(':') != std::string::npos ? absl::StrCat("[", host, "]") : host;
  auto line = [&](const std::string& name, int32_t port) {
    if (port == 0) {
      std::cout << "switchyard-local: metrics of " << name << ": off\n";
    } else {
      std::cout << "switchyard-local: metrics of " << name << " on http://" << shown << ":" << port
                << "/metrics\n";
    }
  };
  line("coordinator", sy::cluster::MetricsPort(cfg, "coordinator", 0));
  line("router", sy::cluster::MetricsPort(cfg, "router", 0));
  for (int32_t i = 0; i < cfg.topology.attention_workers; ++i) {
    line(absl::StrCat("attention-worker-", i),
         sy::cluster::MetricsPort(cfg, "attention_worker", i));
  }
  for (int32_t i = 0; i < cfg.topology.expert_workers; ++i) {
    line(absl::StrCat("expert-worker-", i), sy::cluster::MetricsPort(cfg, "expert_worker", i));
  }
  std::cout << std::flush;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Runs a local Switchyard cluster.\n  switchyard-local --config cluster.yaml");
  std::vector<std::string> storage;
  sy::cluster::ListAllFlagsInHelp();
  std::vector<char*> args = sy::cluster::DashesToUnderscores(argc, argv, &storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  const std::string config_path = absl::GetFlag(FLAGS_config);
  if (config_path.empty()) {
    std::cerr << "switchyard-local: --config is required\n";
    return 2;
  }
  const int32_t restart_delay_ms = absl::GetFlag(FLAGS_restart_delay_ms);
  if (restart_delay_ms < 1 || restart_delay_ms > 30000) {
    std::cerr << "switchyard-local: --restart-delay-ms must be 1 to 30000, got " << restart_delay_ms
              << "\n";
    return 2;
  }
  const std::chrono::milliseconds restart_delay(restart_delay_ms);
  auto cfg = sy::cluster::LoadClusterConfig(config_path);
  if (!cfg.ok()) {
    std::cerr << "switchyard-local: " << cfg.status().message() << "\n";
    return 2;
  }
  // Security files the processes would refuse after starting.
  if (absl::Status st = sy::security::SetInternalTls(cfg->security.internal_tls); !st.ok()) {
    std::cerr << "switchyard-local: security.internal_tls: " << st.message() << "\n";
    return 2;
  }
  if (!cfg->security.api_keys_file.empty()) {
    if (auto keys = sy::security::ApiKeys::Load(cfg->security.api_keys_file); !keys.ok()) {
      std::cerr << "switchyard-local: security.api_keys_file: " << keys.status().message() << "\n";
      return 2;
    }
  }
  if (cfg->security.api_tls.enabled()) {
    if (auto tls = sy::security::TlsServerCredentials(cfg->security.api_tls, false); !tls.ok()) {
      std::cerr << "switchyard-local: security.api_tls: " << tls.status().message() << "\n";
      return 2;
    }
  }
  if (!cfg->topology.distinct_ports && cfg->transport.backend == "ucx" &&
      (cfg->topology.attention_workers > 1 || cfg->topology.expert_workers > 1)) {
    std::cerr << "switchyard-local: " << config_path
              << ": topology.distinct_ports is false, which puts every worker of a role on the "
                 "same ports; switchyard-local runs them all on this host\n";
    return 2;
  }
  // What the coordinator would refuse after every process had started.
  if (auto placement = sy::coordinator::InitialPlacementFor(*cfg); !placement.ok()) {
    std::cerr << "switchyard-local: " << placement.status().message() << "\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_check_config)) {
    std::cout << "switchyard-local: " << config_path << ": config OK (and its initial placement)\n";
    return 0;
  }
  // Every worker runs OpenMP kernels; with more workers than cores their
  // thread pools oversubscribe the machine and spin against each other
  // (measured: 24x lower decode throughput with 5 workers on 2 cores). Unless
  // the user chose, give each worker an equal share of the cores. OpenMP reads
  // the variable at start-up, so the launcher re-executes itself once with it
  // set (children inherit it).
  if (std::getenv("OMP_NUM_THREADS") == nullptr) {
    const long cores = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
    const long workers = cfg->topology.attention_workers + cfg->topology.expert_workers;
    setenv("OMP_NUM_THREADS", std::to_string(std::max(1L, cores / workers)).c_str(), 1);
    execv("/proc/self/exe", argv);
    std::cerr << "switchyard-local: re-exec failed (" << strerror(errno)
              << "); continuing without OMP_NUM_THREADS\n";
  }
  sy::cluster::InstallShutdownHandlers();
  if (cfg->transport.backend == "inproc") return sy::tools::RunSingleProcessCluster(*cfg);
  // A local cluster talks over loopback only.
  setenv("UCX_NET_DEVICES", "lo", /*overwrite=*/0);
  const std::string bin =
      absl::GetFlag(FLAGS_bin_dir).empty() ? SelfDir() : absl::GetFlag(FLAGS_bin_dir);
  std::string log_dir = absl::GetFlag(FLAGS_log_dir);
  if (log_dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    log_dir = absl::StrCat(tmp != nullptr ? tmp : "/tmp", "/switchyard-local-", getpid());
  }
  std::error_code ec;
  std::filesystem::create_directories(log_dir, ec);
  if (ec) {
    std::cerr << "switchyard-local: cannot create " << log_dir << ": " << ec.message() << "\n";
    return 1;
  }
  const std::string config = std::filesystem::absolute(config_path).string();

  std::vector<Child> children;
  auto start = [&](const std::string& name, std::vector<std::string> argv) -> bool {
    Child c;
    c.name = name;
    c.log = absl::StrCat(log_dir, "/", name, ".log");
    auto pid = Spawn(argv, c.log);
    if (!pid.ok()) {
      std::cerr << "switchyard-local: starting " << name << ": " << pid.status().message() << "\n";
      return false;
    }
    c.pid = *pid;
    c.argv = std::move(argv);
    c.started = std::chrono::steady_clock::now();
    c.backoff = restart_delay;
    children.push_back(c);
    return true;
  };
  const bool restart_workers = absl::GetFlag(FLAGS_restart_workers);
  const bool restart_coordinator = absl::GetFlag(FLAGS_restart_coordinator);
  // Starts the dead workers whose restart is due.
  auto restart_due = [&] {
    const auto now = std::chrono::steady_clock::now();
    for (Child& c : children) {
      if (!c.exited || !c.restart_at.has_value() || now < *c.restart_at) continue;
      auto pid = Spawn(c.argv, c.log);
      if (!pid.ok()) {
        std::cerr << "switchyard-local: restarting " << c.name << ": " << pid.status().message()
                  << "; trying again in " << c.backoff.count() << " ms\n";
        c.restart_at = now + c.backoff;
        continue;
      }
      ++c.restarts;
      std::cerr << "switchyard-local: restarted " << c.name << " (restart " << c.restarts
                << (IsWorker(c) ? "); it joins the running mesh once it has loaded\n"
                                : "); the workers register again with it\n");
      c.pid = *pid;
      c.exited = false;
      c.status = 0;
      c.restart_at.reset();
      c.started = now;
    }
  };
  bool ok = start("coordinator", {bin + "/switchyard-coordinator", "--config", config});
  for (int i = 0; ok && i < cfg->topology.expert_workers; ++i) {
    ok = start(absl::StrCat("expert-worker-", i), {bin + "/switchyard-expert-worker", "--config",
                                                   config, "--index", std::to_string(i)});
  }
  for (int i = 0; ok && i < cfg->topology.attention_workers; ++i) {
    ok = start(
        absl::StrCat("attention-worker-", i),
        {bin + "/switchyard-attention-worker", "--config", config, "--index", std::to_string(i)});
  }
  ok = ok && start("router", {bin + "/switchyard-router", "--config", config});
  std::cerr << "switchyard-local: started " << children.size() << " processes; logs in " << log_dir
            << "\n";

  const std::string api = cfg->router.listen.address();
  const auto ready_deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_ready_timeout_s));
  bool ready = false;
  int exit_code = 0;
  while (ok && !sy::cluster::ShutdownRequested()) {
    // Polled often: a worker that dies takes its peers down within tens of
    // milliseconds, and the first to go is the one to name.
    const std::vector<Child*> dead = Reap(children);
    bool failed = false;
    for (Child* c : dead) failed |= !CleanExit(*c);
    if (!dead.empty() && !failed) {
      // A clean exit (the process was asked to stop): the others keep running.
      for (Child* c : dead) {
        std::cerr << "switchyard-local: " << c->name << " exited cleanly; the rest keeps running\n";
      }
      bool all = true;
      for (const Child& c : children) all &= c.exited;
      if (all) break;
    }
    if (failed && ready) {
      // A worker that dies once the cluster serves is left out (the
      // coordinator re-forms the mesh over the survivors) and, with
      // --restart-workers, started again; so is the coordinator with
      // --restart-coordinator. The cluster stops when the coordinator (not
      // restarted) or the router fails, or no attention or no expert worker
      // is left (a worker waiting for its restart counts).
      bool fatal = false;
      for (Child* c : dead) {
        if (CleanExit(*c)) continue;
        const bool worker = IsWorker(*c);
        const bool restart_it =
            (worker && restart_workers) || (c->name == "coordinator" && restart_coordinator);
        fatal |= !worker && !restart_it;
        std::string restart;
        if (restart_it) {
          // A worker that dies soon after starting backs off; one that ran
          // for a minute starts again after a second.
          const auto now = std::chrono::steady_clock::now();
          if (now - c->started > std::chrono::minutes(1)) c->backoff = restart_delay;
          c->restart_at = now + c->backoff;
          restart = absl::StrCat(" and restarts it in ", c->backoff.count(), " ms");
          c->backoff =
              std::min<std::chrono::milliseconds>(2 * c->backoff, std::chrono::seconds(30));
        }
        std::cerr << "switchyard-local: " << c->name << " " << Describe(*c)
                  << (worker ? absl::StrCat("; the rest keeps running (the coordinator re-forms "
                                            "the mesh without it)",
                                            restart)
                      : restart_it ? absl::StrCat("; the workers serve on", restart)
                                   : "")
                  << "; its log (" << c->log << ") ends with:\n"
                  << LogTail(c->log);
      }
      int attention_left = 0, experts_left = 0;
      for (const Child& c : children) {
        if (c.exited && !c.restart_at.has_value()) continue;
        attention_left += absl::StartsWith(c.name, "attention-worker-") ? 1 : 0;
        experts_left += absl::StartsWith(c.name, "expert-worker-") ? 1 : 0;
      }
      if (attention_left == 0 || experts_left == 0) {
        std::cerr << "switchyard-local: no " << (attention_left == 0 ? "attention" : "expert")
                  << " worker is left\n";
        fatal = true;
      }
      if (!fatal) {
        sy::cluster::WaitForShutdown(std::chrono::milliseconds(20));
        continue;
      }
      exit_code = 1;
      break;
    }
    if (failed) {
      Child* culprit = Culprit(dead);
      std::cerr << "switchyard-local: " << culprit->name << " " << Describe(*culprit)
                << "; its log (" << culprit->log << ") ends with:\n"
                << LogTail(culprit->log);
      for (Child* c : dead) {
        if (c != culprit) {
          std::cerr << "switchyard-local: then " << c->name << " " << Describe(*c) << " (log "
                    << c->log << ")\n";
        }
      }
      exit_code = 1;
      break;
    }
    if (ready) restart_due();
    if (!ready) {
      // A new channel each time: one that failed before the router listened
      // would wait out gRPC's reconnect backoff.
      if (RouterServing(ApiChannel(*cfg, api))) {
        ready = true;
        std::cout << "switchyard-local: cluster ready; Generate API on " << api << std::endl;
        PrintMetricsEndpoints(*cfg);
      } else if (std::chrono::steady_clock::now() > ready_deadline) {
        std::cerr << "switchyard-local: the router did not report SERVING in time\n";
        exit_code = 1;
        break;
      }
    }
    sy::cluster::WaitForShutdown(std::chrono::milliseconds(20));
  }
  if (!ok) exit_code = 1;
  std::cerr << "switchyard-local: stopping the cluster\n";
  StopAll(children);
  std::cerr << "switchyard-local: all processes stopped\n";
  return exit_code;
}

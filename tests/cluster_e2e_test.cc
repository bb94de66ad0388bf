// End-to-end tests of the cluster with real processes on loopback.
//
// Every test starts its cluster the way a user does: `switchyard-local
// --config FILE` (coordinator, expert workers, attention workers and router,
// each a process, over UCX with UCX_NET_DEVICES=lo and gRPC on 127.0.0.1),
// waits for its "cluster ready" line, talks to the router's public
// switchyard.v1.Generate API like any client, and stops it with SIGINT: the
// launcher must exit 0 and leave no process behind.
//
// References: the goldens' greedy tokens (Hugging Face transformers) and the
// single-process engine (engine::LoadModelRunner + Engine) run in this
// process on the same requests; logprobs must agree with the engine's to 1e-4.
//
// Covered: every golden case on 2 attention + 3 expert workers with redundant
// slots; other topologies and placements (1 expert worker, strided order,
// explicit replicas, the inproc transport); 64 concurrent streams; cancelling
// half of 64 streams mid-way (KV blocks freed, checked through the attention
// workers' Stats); invalid input (INVALID_ARGUMENT naming the field);
// overload (RESOURCE_EXHAUSTED); deadlines (DEADLINE_EXCEEDED, KV freed);
// health and ModelInfo.
//
// Each cluster gets its own directory under $TMPDIR/sy-cluster-e2e-PID
// (YAML, the launcher's stdout/stderr, every process's log) and its own free
// port range outside the kernel's ephemeral range; the directory is removed
// when the whole binary passes and kept (and its logs printed) otherwise.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/listening_ports.h"
#include "common/log.h"
#include "common/text.h"
#include "engine/engine.h"
#include "engine/loader.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "kernels/kernels.h"
#include "nlohmann/json.hpp"
#include "services/api/convert.h"
#include "services/metrics/promtool_check.h"
#include "services/metrics/scrape.h"
#include "services/security/security.h"
#include "switchyard/internal/v1/cluster.grpc.pb.h"
#include "switchyard/v1/admin.grpc.pb.h"
#include "switchyard/v1/generate.grpc.pb.h"
#include "tests/test_pki.h"

namespace sy::e2e {
namespace {

namespace fs = std::filesystem;
namespace v1 = ::switchyard::v1;
namespace internal = ::switchyard::internal::v1;
using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;
using HealthResponse = grpc::health::v1::HealthCheckResponse;

constexpr double kLogprobTolerance = 1e-4;
constexpr auto kReadyTimeout = std::chrono::seconds(120);
constexpr auto kStopTimeout = std::chrono::seconds(60);
constexpr auto kRpcTimeout = std::chrono::seconds(300);  // nothing here should come close

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Progress on stderr, so a slow run shows where it is.
__attribute__((format(printf, 1, 2))) void Progress(const char* format, ...) {
  char line[2048];
  va_list args;
  va_start(args, format);
  std::vsnprintf(line, sizeof(line), format, args);
  va_end(args);
  std::fprintf(stderr, "[cluster_e2e] %s\n", line);
}

std::string CaseDir(const std::string& name) {
  return std::string(SY_SOURCE_DIR) + "/tests/data/goldens/" + name;
}

std::string LauncherPath() { return std::string(SY_BINARY_DIR) + "/bin/switchyard-local"; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The directory holding every cluster of this run.
const std::string& RunRoot() {
  static const std::string root = [] {
    const char* tmp = std::getenv("TMPDIR");
    const std::string r = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
                          "/sy-cluster-e2e-" + std::to_string(getpid());
    fs::create_directories(r);
    return r;
  }();
  return root;
}

// ---------------------------------------------------------------------------
// Processes and ports.

// Pids (other than this process) whose command line contains `needle`.
std::vector<pid_t> ProcessesMentioning(const std::string& needle) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (pid == getpid()) continue;
    std::string cmdline = ReadFile("/proc/" + name + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find(needle) != std::string::npos) out.push_back(pid);
  }
  return out;
}

std::string Describe(const std::vector<pid_t>& pids) {
  std::string out;
  for (pid_t p : pids) {
    std::string cmdline = ReadFile("/proc/" + std::to_string(p) + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    out += "  pid " + std::to_string(p) + ": " + cmdline + "\n";
  }
  return out;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "was killed by signal " + std::to_string(WTERMSIG(status));
  return "stopped (status " + std::to_string(status) + ")";
}

bool PortFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// A base port with `n` consecutive free ports (the workers listen on
// base_port + index). Ranges lie in [20000, 32000), below Linux's default
// ephemeral range, so outgoing connections do not take them between this
// check and the processes' bind; each call moves on to a new range, so a
// cluster never reuses the ports of the one stopped before it.
int AllocatePortRange(int n) {
  constexpr int kLow = 20000, kSpan = 12000, kStride = 64;
  if (n > kStride) return -1;
  static int next = static_cast<int>(getpid() % (kSpan / kStride)) * kStride;
  for (int attempt = 0; attempt < kSpan / kStride; ++attempt) {
    const int base = kLow + next;
    next = (next + kStride) % kSpan;
    bool free = true;
    for (int i = 0; i < n && free; ++i) free = PortFree(base + i);
    if (free) return base;
  }
  return -1;
}

// transport.ports_per_worker of the test clusters.
constexpr int kDataPortsPerWorker = 4;

// ---------------------------------------------------------------------------
// A cluster run by switchyard-local.

struct ClusterOptions {
  std::string model = "qwen3_moe";  // golden case directory
  std::string backend = "ucx";
  int attention_workers = 2;
  int expert_workers = 3;
  int redundant_experts = 0;
  std::string order = "contiguous";
  std::vector<int> replicate;
  int64_t max_queue = 256;
  int max_new_tokens = 4096;
  int max_logprobs = 20;
  int64_t max_num_seqs = 64;
  int64_t kv_blocks = 0;             // attention_worker.kv_blocks (0: the default)
  int64_t router_drain_ms = -1;      // router.drain_timeout_ms (-1: the default)
  std::string model_dir;             // overrides `model` (a directory of its own)
  std::string load_format = "auto";  // or dummy
  int64_t transport_timeout_ms = 30000;
  int64_t max_idle_sleep_us = 0;  // 0: the default
  int64_t expert_memory_limit_bytes = 0;
  std::string eplb_yaml;              // the eplb section's keys, one "key: value" per line
  int64_t worker_timeout_ms = 10000;  // coordinator.worker_timeout_ms
  bool restart_workers = false;       // switchyard-local --restart-workers
  bool restart_coordinator = false;   // switchyard-local --restart-coordinator
  int restart_delay_ms = 0;           // switchyard-local --restart-delay-ms (0: its default)
  std::string security_yaml;          // the security section's lines, indented as in the YAML
  // Workers register (and the others dial the coordinator) by this host
  // name instead of 127.0.0.1 (advertise_host, coordinator.address).
  std::string advertise_host;
  // How the test's channel reaches the router (default: plaintext).
  std::shared_ptr<grpc::ChannelCredentials> api_credentials;
};

class Cluster {
 public:
  Cluster() = default;
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;
  ~Cluster() { Stop(); }

  // Starts the cluster and waits until the launcher says it is ready; a
  // failure is an error carrying the logs.
  absl::Status Start(const ClusterOptions& options, const std::string& name) {
    options_ = options;
    static int counter = 0;
    dir_ = RunRoot() + "/" + name + "-" + std::to_string(counter++);
    fs::create_directories(dir_ + "/logs");
    yaml_ = dir_ + "/cluster.yaml";
    out_path_ = dir_ + "/launcher.stdout";
    err_path_ = dir_ + "/launcher.stderr";
    // gRPC ports, then as many metrics ports, then the workers' UCX ranges.
    const int n_grpc = 2 + options.attention_workers + options.expert_workers;
    const int n_ports =
        2 * n_grpc + kDataPortsPerWorker * (options.attention_workers + options.expert_workers);
    const int base = AllocatePortRange(n_ports);
    if (base < 0) return absl::UnavailableError("no free port range on 127.0.0.1");
    coordinator_port_ = base;
    router_port_ = base + 1;
    attention_base_ = base + 2;
    expert_base_ = attention_base_ + options.attention_workers;
    metrics_base_ = base + n_grpc;
    data_base_ = base + 2 * n_grpc;
    {
      std::ofstream y(yaml_);
      y << YamlText();
    }
    Progress("%s: starting %d attention + %d expert workers (%s, R=%d, %s) on ports %d-%d",
             name.c_str(), options.attention_workers, options.expert_workers,
             options.backend.c_str(), options.redundant_experts, options.order.c_str(), base,
             base + n_ports - 1);
    const auto t0 = Clock::now();

    // Everything the child needs is prepared before fork(): after it, only
    // async-signal-safe calls until exec.
    const std::string launcher = LauncherPath();
    const std::string log_dir = dir_ + "/logs";
    std::vector<std::string> argv_s = {launcher, "--config", yaml_, "--log-dir", log_dir};
    if (options.restart_workers) argv_s.push_back("--restart-workers");
    if (options.restart_coordinator) argv_s.push_back("--restart-coordinator");
    if (options.restart_delay_ms > 0) {
      argv_s.push_back("--restart-delay-ms=" + std::to_string(options.restart_delay_ms));
    }
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int out_fd = open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    const int err_fd = open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out_fd < 0 || err_fd < 0) return absl::InternalError("cannot create launcher output files");
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) {
      close(out_fd);
      close(err_fd);
      return absl::InternalError("fork failed");
    }
    if (pid == 0) {
      // The launcher dies with the test (it then stops its children), and
      // starts with default signal handling whatever this process changed.
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != parent) _exit(1);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      signal(SIGINT, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      signal(SIGPIPE, SIG_DFL);
      dup2(out_fd, STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copy
      dup2(err_fd, STDERR_FILENO);
      execv(argv[0], argv.data());
      _exit(127);
    }
    close(out_fd);
    close(err_fd);
    pid_ = pid;

    // "switchyard-local: cluster ready[ (mode)]; Generate API on HOST:PORT"
    const std::string ready = "switchyard-local: cluster ready";
    const std::string api_on = "Generate API on ";
    const auto deadline = Clock::now() + kReadyTimeout;
    while (true) {
      const std::string out = ReadFile(out_path_);
      const size_t at = out.find(ready);
      const size_t eol = at == std::string::npos ? at : out.find('\n', at);
      if (eol != std::string::npos) {
        const std::string line = out.substr(at, eol - at);
        const size_t on = line.find(api_on);
        const std::string addr = on == std::string::npos ? "" : line.substr(on + api_on.size());
        if (addr != api_address()) {
          return absl::InternalError("the launcher announced '" + line + "', the YAML says " +
                                     api_address());
        }
        break;
      }
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return absl::InternalError("switchyard-local " + DescribeWaitStatus(status) +
                                   " before the cluster was ready\n" + Logs());
      }
      if (Clock::now() > deadline) {
        const std::string logs = Logs();
        Kill();
        return absl::DeadlineExceededError("the cluster was not ready after " +
                                           std::to_string(kReadyTimeout.count()) + " s\n" + logs);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    Progress("%s: ready in %.1f s", name.c_str(), SecondsSince(t0));
    channel_ = grpc::CreateChannel(api_address(), options.api_credentials != nullptr
                                                      ? options.api_credentials
                                                      : grpc::InsecureChannelCredentials());
    stub_ = v1::Generate::NewStub(channel_);
    return absl::OkStatus();
  }

  // SIGINT to the launcher; it must exit 0 and leave no process of the
  // cluster behind (every one of them has the YAML path on its command
  // line). Failures are test failures, with the logs.
  void Stop() {
    if (pid_ <= 0) return;
    // Close this client's connection first: with a client connection open,
    // the router's shutdown waits out its whole grace period (2 s).
    stub_.reset();
    channel_.reset();
    const auto t0 = Clock::now();
    kill(pid_, SIGINT);
    int status = 0;
    const bool exited = WaitExit(kStopTimeout, &status);
    bool ok = true;
    if (!exited) {
      ADD_FAILURE() << "switchyard-local did not stop within " << kStopTimeout.count()
                    << " s of SIGINT";
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      ok = false;
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ADD_FAILURE() << "switchyard-local " << DescribeWaitStatus(status) << " after SIGINT";
      ok = false;
    }
    pid_ = -1;
    std::vector<pid_t> left = ProcessesMentioning(yaml_);
    for (int i = 0; i < 50 && !left.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      left = ProcessesMentioning(yaml_);
    }
    if (!left.empty()) {
      ADD_FAILURE() << "processes of the cluster still running after the launcher exited:\n"
                    << Describe(left);
      for (pid_t p : left) kill(p, SIGKILL);
      ok = false;
    }
    // Logs help with any failure of the test that used the cluster.
    if (!ok || ::testing::Test::HasFailure()) std::fprintf(stderr, "%s", Logs().c_str());
    Progress("%s: stopped in %.1f s", fs::path(dir_).filename().c_str(), SecondsSince(t0));
  }

  // The PID of the coordinator of this cluster (-1 when none runs).
  pid_t CoordinatorPid() const {
    for (pid_t p : ProcessesMentioning(yaml_)) {
      if (ReadFile("/proc/" + std::to_string(p) + "/cmdline").find("switchyard-coordinator") !=
          std::string::npos) {
        return p;
      }
    }
    return -1;
  }

  // The PID of a worker process of this cluster (-1 when none runs).
  pid_t WorkerPid(const std::string& binary, int index) const {
    for (pid_t p : ProcessesMentioning(yaml_)) {
      std::string cmdline = ReadFile("/proc/" + std::to_string(p) + "/cmdline");
      std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
      if (cmdline.find(binary) != std::string::npos &&
          cmdline.find("--index " + std::to_string(index) + " ") != std::string::npos) {
        return p;
      }
    }
    return -1;
  }

  // Waits for the launcher to stop the cluster by itself (after one of its
  // processes died); its exit status, or -1 after `timeout`. No process of
  // the cluster may be left.
  int AwaitSelfStop(std::chrono::seconds timeout) {
    int status = 0;
    if (pid_ <= 0 || !WaitExit(timeout, &status)) return -1;
    pid_ = -1;
    stub_.reset();
    channel_.reset();
    std::vector<pid_t> left = ProcessesMentioning(yaml_);
    for (int i = 0; i < 50 && !left.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      left = ProcessesMentioning(yaml_);
    }
    EXPECT_TRUE(left.empty()) << Describe(left);
    for (pid_t p : left) kill(p, SIGKILL);
    return status;
  }

  // The last lines of the launcher's output and of every process's log.
  std::string Logs() const {
    std::string out = "---- logs of " + dir_ + "\n";
    std::vector<std::string> files = {out_path_, err_path_};
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir_ + "/logs", ec)) {
      files.push_back(e.path().string());
    }
    std::sort(files.begin() + 2, files.end());
    for (const auto& f : files) {
      std::ifstream in(f);
      out += "== " + f + "\n" + IndentedTail(in, 40);
      if (!out.empty() && out.back() != '\n') out += "\n";
    }
    return out;
  }

  std::string api_address() const { return "127.0.0.1:" + std::to_string(router_port_); }
  // /metrics ports, as the YAML gives them.
  int coordinator_metrics_port() const { return metrics_base_; }
  int router_metrics_port() const { return metrics_base_ + 1; }
  int attention_metrics_port(int i) const { return metrics_base_ + 2 + i; }
  int expert_metrics_port(int i) const {
    return metrics_base_ + 2 + options_.attention_workers + i;
  }
  std::string coordinator_address() const {
    return "127.0.0.1:" + std::to_string(coordinator_port_);
  }
  int coordinator_port() const { return coordinator_port_; }
  int router_port() const { return router_port_; }
  int attention_port(int i) const { return attention_base_ + i; }
  int expert_port(int i) const { return expert_base_ + i; }
  // The first port of a worker's UCX range (transport.*_base_port).
  int attention_data_port(int i) const { return data_base_ + kDataPortsPerWorker * i; }
  int expert_data_port(int i) const { return expert_data_base() + kDataPortsPerWorker * i; }
  int expert_data_base() const {
    return data_base_ + kDataPortsPerWorker * options_.attention_workers;
  }
  std::vector<std::string> attention_addresses() const {
    std::vector<std::string> out;
    for (int i = 0; i < options_.attention_workers; ++i) {
      out.push_back("127.0.0.1:" + std::to_string(attention_base_ + i));
    }
    return out;
  }
  std::vector<std::string> expert_addresses() const {
    std::vector<std::string> out;
    for (int i = 0; i < options_.expert_workers; ++i) {
      out.push_back("127.0.0.1:" + std::to_string(expert_base_ + i));
    }
    return out;
  }
  v1::Generate::Stub* stub() { return stub_.get(); }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }
  const ClusterOptions& options() const { return options_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string YamlText() const {
    const ClusterOptions& o = options_;
    std::ostringstream y;
    y << "model:\n  path: " << (o.model_dir.empty() ? CaseDir(o.model) : o.model_dir)
      << "\n  load_format: " << o.load_format << "\n";
    y << "topology:\n  attention_workers: " << o.attention_workers
      << "\n  expert_workers: " << o.expert_workers << "\n";
    y << "transport:\n  backend: " << o.backend << "\n  timeout_ms: " << o.transport_timeout_ms
      << "\n  attention_worker_base_port: " << data_base_
      << "\n  expert_worker_base_port: " << expert_data_base()
      << "\n  ports_per_worker: " << kDataPortsPerWorker << "\n";
    y << "placement:\n  redundant_experts: " << o.redundant_experts << "\n  order: " << o.order
      << "\n";
    if (!o.replicate.empty()) {
      y << "  replicate: [";
      for (size_t i = 0; i < o.replicate.size(); ++i) y << (i ? ", " : "") << o.replicate[i];
      y << "]\n";
    }
    y << "coordinator:\n  listen: " << coordinator_address()
      << "\n  heartbeat_ms: 500\n  worker_timeout_ms: " << o.worker_timeout_ms << "\n";
    if (!o.advertise_host.empty()) {
      y << "  address: " << o.advertise_host << ":" << coordinator_port_ << "\n";
    }
    y << "router:\n  listen: " << api_address() << "\n";
    if (o.router_drain_ms >= 0) y << "  drain_timeout_ms: " << o.router_drain_ms << "\n";
    y << "attention_worker:\n  base_port: " << attention_base_
      << "\n  max_num_seqs: " << o.max_num_seqs << "\n  kv_block_size: 16\n";
    if (!o.advertise_host.empty()) y << "  advertise_host: " << o.advertise_host << "\n";
    if (o.max_idle_sleep_us > 0) y << "  max_idle_sleep_us: " << o.max_idle_sleep_us << "\n";
    if (o.kv_blocks > 0) y << "  kv_blocks: " << o.kv_blocks << "\n";
    y << "expert_worker:\n  base_port: " << expert_base_ << "\n";
    if (!o.advertise_host.empty()) y << "  advertise_host: " << o.advertise_host << "\n";
    if (o.expert_memory_limit_bytes > 0) {
      y << "  memory_limit_bytes: " << o.expert_memory_limit_bytes << "\n";
    }
    if (!o.eplb_yaml.empty()) {
      y << "eplb:\n";
      for (absl::string_view line : absl::StrSplit(o.eplb_yaml, '\n', absl::SkipEmpty())) {
        y << "  " << line << "\n";
      }
    }
    y << "limits:\n  max_queue: " << o.max_queue << "\n  max_new_tokens: " << o.max_new_tokens
      << "\n  max_logprobs: " << o.max_logprobs << "\n";
    if (!o.security_yaml.empty()) y << "security:\n" << o.security_yaml;
    y << "metrics:\n  coordinator_port: " << metrics_base_
      << "\n  router_port: " << metrics_base_ + 1
      << "\n  attention_worker_base_port: " << metrics_base_ + 2
      << "\n  expert_worker_base_port: " << metrics_base_ + 2 + o.attention_workers << "\n";
    return y.str();
  }

  // Waits up to `timeout` for the launcher to exit.
  bool WaitExit(std::chrono::seconds timeout, int* status) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      if (waitpid(pid_, status, WNOHANG) == pid_) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
  }

  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int status = 0;
    if (!WaitExit(kStopTimeout, &status)) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
    }
    pid_ = -1;
  }

  ClusterOptions options_;
  std::string dir_, yaml_, out_path_, err_path_;
  int coordinator_port_ = 0, router_port_ = 0, attention_base_ = 0, expert_base_ = 0;
  int metrics_base_ = 0;  // coordinator, router, attention workers, expert workers
  int data_base_ = 0;     // UCX ranges: attention workers, then expert workers
  pid_t pid_ = -1;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generate::Stub> stub_;
};

// ---------------------------------------------------------------------------
// Requests, streams, references.

v1::GenerateRequest GreedyRequest(const std::vector<int32_t>& prompt, int max_new_tokens,
                                  std::optional<int> logprobs) {
  v1::GenerateRequest r;
  for (int32_t t : prompt) r.add_input_ids(t);
  r.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  r.mutable_stopping()->set_ignore_eos(true);
  if (logprobs.has_value()) r.set_logprobs(*logprobs);
  return r;
}

struct StreamOutcome {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::vector<v1::TokenLogprob> logprobs;
  v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
  int finish_messages = 0;        // messages carrying a finish reason
  bool logprobs_parallel = true;  // every message had one logprob per token (when asked)
  std::optional<v1::Usage> usage;
  int tokens_before_cancel = -1;
  double first_token_s = -1;  // client side, from the call's start
  double total_s = 0;
};

struct StreamOptions {
  std::optional<std::chrono::milliseconds> timeout;  // the call's deadline
  int cancel_after_tokens = -1;                      // TryCancel once this many tokens arrived
  std::function<void()> before_cancel;               // runs just before TryCancel
  int hook_after_tokens = -1;                        // runs `hook` once this many arrived
  std::function<void()> hook;
};

StreamOutcome RunStream(v1::Generate::Stub* stub, const v1::GenerateRequest& request,
                        const StreamOptions& options = {}) {
  StreamOutcome out;
  grpc::ClientContext context;
  const auto start = Clock::now();
  context.set_deadline(std::chrono::system_clock::now() +
                       options.timeout.value_or(std::chrono::milliseconds(kRpcTimeout)));
  auto reader = stub->GenerateStream(&context, request);
  v1::GenerateStreamResponse m;
  bool cancelled = false;
  bool hooked = false;
  while (reader->Read(&m)) {
    if (out.first_token_s < 0 && m.output_ids_size() > 0) out.first_token_s = SecondsSince(start);
    out.tokens.insert(out.tokens.end(), m.output_ids().begin(), m.output_ids().end());
    out.logprobs.insert(out.logprobs.end(), m.logprobs().begin(), m.logprobs().end());
    if (request.has_logprobs() && m.logprobs_size() != m.output_ids_size()) {
      out.logprobs_parallel = false;
    }
    if (m.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      out.finish = m.finish_reason();
      ++out.finish_messages;
    }
    if (m.has_usage()) out.usage = m.usage();
    if (!hooked && options.hook && options.hook_after_tokens >= 0 &&
        static_cast<int>(out.tokens.size()) >= options.hook_after_tokens) {
      options.hook();
      hooked = true;
    }
    if (!cancelled && options.cancel_after_tokens >= 0 &&
        static_cast<int>(out.tokens.size()) >= options.cancel_after_tokens) {
      if (options.before_cancel) options.before_cancel();
      out.tokens_before_cancel = static_cast<int>(out.tokens.size());
      context.TryCancel();
      cancelled = true;
    }
  }
  out.status = reader->Finish();
  out.total_s = SecondsSince(start);
  return out;
}

// Runs every request on its own thread, all at once.
std::vector<StreamOutcome> RunStreams(v1::Generate::Stub* stub,
                                      const std::vector<v1::GenerateRequest>& requests,
                                      const std::vector<StreamOptions>& options = {}) {
  std::vector<StreamOutcome> out(requests.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] {
      out[i] = RunStream(stub, requests[i], i < options.size() ? options[i] : StreamOptions{});
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

struct Reference {
  std::vector<int32_t> tokens;
  std::vector<engine::TokenLogprob> logprobs;
  engine::FinishReason finish = engine::FinishReason::kNone;
};

// The single-process engine on the same requests (batched in one engine;
// the engine's own tests show batched equals single runs).
std::vector<Reference> RunReference(const std::string& model,
                                    const std::vector<v1::GenerateRequest>& requests) {
  std::vector<Reference> out(requests.size());
  engine::ModelSource source;
  source.dir = CaseDir(model);
  auto runner = engine::LoadModelRunner(source, kernels::Context{});
  EXPECT_TRUE(runner.ok()) << runner.status();
  if (!runner.ok()) return out;
  engine::EngineOptions eo;
  eo.max_num_seqs = static_cast<int64_t>(requests.size()) + 1;
  eo.kv.block_size = 16;
  int64_t tokens = 0;
  for (const auto& r : requests) {
    tokens += r.input_ids_size() + r.stopping().max_new_tokens() + eo.kv.block_size;
  }
  eo.kv.max_tokens = tokens;
  auto eng = engine::Engine::Create(*std::move(runner), eo);
  EXPECT_TRUE(eng.ok()) << eng.status();
  if (!eng.ok()) return out;
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < requests.size(); ++i) {
    auto r = api::FromProto(requests[i]);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return out;
    r->id = "ref-" + std::to_string(i);
    index[r->id] = i;
    const absl::Status st = (*eng)->Add(*std::move(r));
    EXPECT_TRUE(st.ok()) << st;
    if (!st.ok()) return out;
  }
  while ((*eng)->HasWork()) {
    auto updates = (*eng)->Step();
    EXPECT_TRUE(updates.ok()) << updates.status();
    if (!updates.ok()) return out;
    for (const auto& u : *updates) {
      Reference& ref = out[index.at(u.id)];
      ref.tokens.insert(ref.tokens.end(), u.new_tokens.begin(), u.new_tokens.end());
      ref.logprobs.insert(ref.logprobs.end(), u.new_logprobs.begin(), u.new_logprobs.end());
      if (u.finish != engine::FinishReason::kNone) ref.finish = u.finish;
    }
  }
  return out;
}

// Whether the reference's best two tokens at `step` are within the tolerance
// (a tie that float differences between the cluster and the engine may break
// either way).
bool NearTie(const Reference& ref, size_t step) {
  if (step >= ref.logprobs.size() || ref.logprobs[step].top.size() < 2) return false;
  return ref.logprobs[step].top[0].logprob - ref.logprobs[step].top[1].logprob < kLogprobTolerance;
}

// Greedy tokens equal the reference's. Where they part at a near tie of the
// reference (needs logprobs >= 1 in the reference request), the rest cannot be
// compared and only the prefix counts (reported on stderr).
void ExpectSameGreedy(const std::vector<int32_t>& got, const Reference& ref,
                      const std::string& label) {
  const size_t n = std::min(got.size(), ref.tokens.size());
  for (size_t i = 0; i < n; ++i) {
    if (got[i] == ref.tokens[i]) continue;
    if (NearTie(ref, i)) {
      Progress("%s: token %zu differs at a near tie (%d vs %d); compared the prefix only",
               label.c_str(), i, got[i], ref.tokens[i]);
      return;
    }
    ADD_FAILURE() << label << ": token " << i << " is " << got[i] << ", the engine's is "
                  << ref.tokens[i] << "\n  cluster: " << ::testing::PrintToString(got)
                  << "\n  engine:  " << ::testing::PrintToString(ref.tokens);
    return;
  }
  EXPECT_EQ(got.size(), ref.tokens.size()) << label;
}

// Chosen-token and top-N logprobs within kLogprobTolerance of the engine's;
// returns the largest difference.
double ExpectLogprobsNear(const std::vector<v1::TokenLogprob>& got, const Reference& ref,
                          size_t top_n, const std::string& label) {
  double worst = 0;
  EXPECT_EQ(got.size(), ref.logprobs.size()) << label;
  const size_t n = std::min(got.size(), ref.logprobs.size());
  for (size_t i = 0; i < n; ++i) {
    const v1::TokenLogprob& g = got[i];
    const engine::TokenLogprob& r = ref.logprobs[i];
    EXPECT_EQ(g.token(), r.token) << label << " token " << i;
    worst = std::max(worst, std::fabs(static_cast<double>(g.logprob()) - r.logprob));
    EXPECT_NEAR(g.logprob(), r.logprob, kLogprobTolerance) << label << " token " << i;
    EXPECT_EQ(static_cast<size_t>(g.top_size()), top_n) << label << " token " << i;
    EXPECT_EQ(r.top.size(), top_n) << label << " token " << i;
    const size_t k_max = std::min(static_cast<size_t>(g.top_size()), r.top.size());
    for (size_t k = 0; k < k_max; ++k) {
      const double diff = std::fabs(static_cast<double>(g.top(k).logprob()) - r.top[k].logprob);
      worst = std::max(worst, diff);
      EXPECT_NEAR(g.top(k).logprob(), r.top[k].logprob, kLogprobTolerance)
          << label << " token " << i << " top " << k;
      // The order of near-equal candidates may differ.
      const bool tie_before = k > 0 && r.top[k - 1].logprob - r.top[k].logprob < kLogprobTolerance;
      const bool tie_after =
          k + 1 < r.top.size() && r.top[k].logprob - r.top[k + 1].logprob < kLogprobTolerance;
      if (!tie_before && !tie_after) {
        EXPECT_EQ(g.top(k).token(), r.top[k].token) << label << " token " << i << " top " << k;
      }
    }
  }
  return worst;
}

struct GoldenPrompt {
  std::vector<int32_t> prompt;
  std::vector<int32_t> greedy;
};

std::vector<GoldenPrompt> LoadGolden(const std::string& name) {
  std::ifstream in(CaseDir(name) + "/golden.json");
  EXPECT_TRUE(in.good()) << "missing " << CaseDir(name) << "/golden.json";
  std::vector<GoldenPrompt> out;
  if (!in.good()) return out;
  const nlohmann::json j = nlohmann::json::parse(in);
  for (const auto& p : j["prompts"]) {
    out.push_back(
        {p["prompt"].get<std::vector<int32_t>>(), p["greedy"].get<std::vector<int32_t>>()});
  }
  return out;
}

nlohmann::json LoadConfigJson(const std::string& name) {
  std::ifstream in(CaseDir(name) + "/config.json");
  return nlohmann::json::parse(in);
}

// Every golden prompt streamed at once (greedy, 24 new tokens, ignore_eos,
// logprobs 5): tokens equal the goldens' and the engine's, logprobs the
// engine's to 1e-4.
void ExpectGoldensOnCluster(Cluster& cluster, const std::string& model, const std::string& label) {
  const std::vector<GoldenPrompt> golden = LoadGolden(model);
  ASSERT_FALSE(golden.empty());
  constexpr int kTopN = 5;
  std::vector<v1::GenerateRequest> requests;
  for (const auto& g : golden) requests.push_back(GreedyRequest(g.prompt, 24, kTopN));
  const auto t0 = Clock::now();
  const std::vector<StreamOutcome> got = RunStreams(cluster.stub(), requests);
  const double cluster_s = SecondsSince(t0);
  const std::vector<Reference> ref = RunReference(model, requests);
  double worst = 0;
  for (size_t p = 0; p < golden.size(); ++p) {
    const std::string where = label + " prompt " + std::to_string(p);
    const StreamOutcome& o = got[p];
    ASSERT_TRUE(o.status.ok()) << where << ": " << o.status.error_code() << " "
                               << o.status.error_message() << "\n"
                               << cluster.Logs();
    EXPECT_EQ(o.finish, v1::FINISH_REASON_LENGTH) << where;
    EXPECT_EQ(o.finish_messages, 1) << where;
    EXPECT_TRUE(o.logprobs_parallel) << where;
    EXPECT_THAT(o.tokens, ::testing::ElementsAreArray(golden[p].greedy)) << where << " (goldens)";
    EXPECT_EQ(o.tokens, ref[p].tokens) << where << " (engine)";
    ASSERT_TRUE(o.usage.has_value()) << where;
    EXPECT_EQ(o.usage->prompt_tokens(), static_cast<int>(golden[p].prompt.size())) << where;
    EXPECT_EQ(o.usage->completion_tokens(), 24) << where;
    worst = std::max(worst, ExpectLogprobsNear(o.logprobs, ref[p], kTopN, where));
  }
  Progress(
      "%s: %zu prompts streamed in %.2f s; tokens equal the goldens; max |logprob - engine| "
      "= %.2e",
      label.c_str(), golden.size(), cluster_s, worst);
}

// Attention workers' Stats.
std::vector<internal::WorkerStats> AllStats(const Cluster& cluster) {
  std::vector<internal::WorkerStats> out;
  for (const auto& addr : cluster.attention_addresses()) {
    auto stub = internal::AttentionWorker::NewStub(
        grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    internal::WorkerStats stats;
    const grpc::Status st = stub->Stats(&context, internal::WorkerStatsRequest(), &stats);
    EXPECT_TRUE(st.ok()) << addr << ": " << st.error_message();
    out.push_back(stats);
  }
  return out;
}

std::string Describe(const std::vector<internal::WorkerStats>& stats) {
  std::string out;
  for (size_t i = 0; i < stats.size(); ++i) {
    const auto& s = stats[i];
    out += "  attention-worker-" + std::to_string(i) + ": running " + std::to_string(s.running()) +
           ", waiting " + std::to_string(s.waiting()) + ", kv_blocks_free " +
           std::to_string(s.kv_blocks_free()) + " / " + std::to_string(s.kv_blocks_total()) + "\n";
  }
  return out;
}

bool Idle(const std::vector<internal::WorkerStats>& stats) {
  for (const auto& s : stats) {
    if (s.kv_blocks_total() <= 0 || s.kv_blocks_free() != s.kv_blocks_total() || s.running() != 0 ||
        s.waiting() != 0) {
      return false;
    }
  }
  return !stats.empty();
}

// Polls Stats until every attention worker has all its KV blocks free and
// nothing running or waiting; returns the seconds it took, or -1 (a test
// failure) after `timeout`.
double ExpectIdleWithin(const Cluster& cluster, std::chrono::milliseconds timeout,
                        const std::string& label) {
  const auto t0 = Clock::now();
  std::vector<internal::WorkerStats> stats;
  while (true) {
    stats = AllStats(cluster);
    if (Idle(stats)) return SecondsSince(t0);
    if (Clock::now() - t0 > timeout) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ADD_FAILURE() << label << ": attention workers not idle after " << timeout.count() << " ms:\n"
                << Describe(stats);
  return -1;
}

int64_t BlocksInUse(const std::vector<internal::WorkerStats>& stats) {
  int64_t used = 0;
  for (const auto& s : stats) used += s.kv_blocks_total() - s.kv_blocks_free();
  return used;
}

// ---------------------------------------------------------------------------
// The environment: loopback only; at the end, nothing left running.

// Keeps the start of every failure message and prints them at the
// environment's tear-down, just before gtest's summary, so the end of the
// output (all that a CI log may keep) says what failed, not only which test.
//
// gtest calls OnTestPartResult holding its own lock, so the listener must not
// call back into gtest there (current_test_info() would deadlock): it keeps
// the current test's name from OnTestStart instead. gtest serializes these
// calls, failures from other threads included.
class FailureDigest : public ::testing::EmptyTestEventListener {
 public:
  void OnTestStart(const ::testing::TestInfo& info) override {
    current_ = std::string(info.test_suite_name()) + "." + info.name();
  }
  void OnTestEnd(const ::testing::TestInfo&) override { current_ = "(outside a test)"; }
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    const std::string& where = current_;
    std::string what = result.summary();
    if (what.size() > 600) what = what.substr(0, 600) + " [...]";
    lines_.push_back(where + " (" + (result.file_name() ? result.file_name() : "?") + ":" +
                     std::to_string(result.line_number()) + "): " + what);
  }
  const std::vector<std::string>& lines() const { return lines_; }

 private:
  std::string current_ = "(outside a test)";
  std::vector<std::string> lines_;
};

FailureDigest* Digest() {
  static FailureDigest* const digest = [] {
    auto* d = new FailureDigest;
    ::testing::UnitTest::GetInstance()->listeners().Append(d);  // gtest owns it
    return d;
  }();
  return digest;
}

class E2eEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    setenv("UCX_NET_DEVICES", "lo", /*overwrite=*/1);
    SetMinLogLevel(LogLevel::kWarning);  // the reference engine's loading chatter
    ASSERT_TRUE(fs::exists(LauncherPath()))
        << LauncherPath() << " is missing (build the switchyard_local target)";
    Progress("cluster directories under %s", RunRoot().c_str());
  }
  void TearDown() override {
    const std::vector<pid_t> left = ProcessesMentioning(RunRoot());
    EXPECT_TRUE(left.empty()) << "processes left running:\n" << Describe(left);
    for (pid_t p : left) kill(p, SIGKILL);
    if (::testing::UnitTest::GetInstance()->Passed()) {
      std::error_code ec;
      fs::remove_all(RunRoot(), ec);
    } else {
      Progress("kept %s (configs and logs) for inspection", RunRoot().c_str());
      for (const std::string& line : Digest()->lines()) {
        Progress("failure: %s", line.c_str());
      }
    }
  }
};

[[maybe_unused]] ::testing::Environment* const kEnvironment =
    (Digest(), ::testing::AddGlobalTestEnvironment(new E2eEnvironment));

// ---------------------------------------------------------------------------
// 1. Every golden case on 2 attention workers and 3 expert workers with
// redundant slots (E + R divisible by 3).

int RedundantForThreeWorkers(const std::string& model) {
  static const std::map<std::string, int> kR = {
      {"qwen3_moe", 2}, {"deepseek_v3", 1}, {"mixtral", 1},     {"param2moe", 1},
      {"qwen2_moe", 2}, {"glm4_moe", 2},    {"deepseek_v2", 2}, {"deepseek_v3_noqlora", 2}};
  return kR.at(model);
}

int NumExperts(const std::string& model) {
  const nlohmann::json c = LoadConfigJson(model);
  for (const char* key : {"num_experts", "n_routed_experts", "num_local_experts"}) {
    if (c.contains(key) && c[key].is_number_integer()) return c[key].get<int>();
  }
  return 0;
}

class GoldenClusterTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenClusterTest, StreamedGreedyEqualsGoldensAndLogprobsEqualEngine) {
  const std::string model = GetParam();
  ClusterOptions o;
  o.model = model;
  o.attention_workers = 2;
  o.expert_workers = 3;
  o.redundant_experts = RedundantForThreeWorkers(model);
  ASSERT_EQ((NumExperts(model) + o.redundant_experts) % 3, 0) << model;
  Cluster cluster;
  const absl::Status st = cluster.Start(o, model);
  ASSERT_TRUE(st.ok()) << st;
  ExpectGoldensOnCluster(cluster, model, model + " (2 attention, 3 expert workers)");
  ExpectIdleWithin(cluster, std::chrono::seconds(5), model);
}

INSTANTIATE_TEST_SUITE_P(Goldens, GoldenClusterTest,
                         ::testing::Values("qwen3_moe", "deepseek_v3", "deepseek_v3_noqlora",
                                           "deepseek_v2", "qwen2_moe", "glm4_moe", "mixtral",
                                           "param2moe"),
                         [](const auto& info) { return info.param; });

// ---------------------------------------------------------------------------
// 2. Other topologies, placements and the inproc transport.

struct Variant {
  std::string name;
  std::string model;
  ClusterOptions options;
};

std::vector<Variant> Variants() {
  std::vector<Variant> out;
  // Redundant slots and explicit replicas per model: {R with 1 expert worker,
  // replicas for 2 expert workers (E + R even)}.
  const std::vector<std::pair<std::string, std::pair<int, std::vector<int>>>> models = {
      {"qwen3_moe", {3, {5, 9, 14, 0}}},
      {"deepseek_v3", {2, {31, 7}}},
      {"mixtral", {1, {3, 6}}},
  };
  for (const auto& [model, plan] : models) {
    ClusterOptions one;
    one.model = model;
    one.attention_workers = 2;
    one.expert_workers = 1;
    one.redundant_experts = plan.first;
    one.order = "strided";
    out.push_back({model + "_OneExpertWorkerStrided", model, one});

    ClusterOptions two;
    two.model = model;
    two.attention_workers = 1;
    two.expert_workers = 2;
    two.redundant_experts = static_cast<int>(plan.second.size());
    two.replicate = plan.second;
    two.order = "strided";
    out.push_back({model + "_OneAttentionTwoExpertWorkersReplicas", model, two});

    ClusterOptions inproc;
    inproc.model = model;
    inproc.backend = "inproc";
    inproc.attention_workers = 2;
    inproc.expert_workers = 3;
    inproc.redundant_experts = RedundantForThreeWorkers(model);
    out.push_back({model + "_Inproc", model, inproc});
  }
  return out;
}

void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

class ClusterVariantTest : public ::testing::TestWithParam<Variant> {};

TEST_P(ClusterVariantTest, StreamedGreedyEqualsGoldensAndLogprobsEqualEngine) {
  const Variant& v = GetParam();
  Cluster cluster;
  const absl::Status st = cluster.Start(v.options, v.name);
  ASSERT_TRUE(st.ok()) << st;
  ExpectGoldensOnCluster(cluster, v.model, v.name);
  ExpectIdleWithin(cluster, std::chrono::seconds(5), v.name);
}

INSTANTIATE_TEST_SUITE_P(Placements, ClusterVariantTest, ::testing::ValuesIn(Variants()),
                         [](const auto& info) { return info.param.name; });

// ---------------------------------------------------------------------------
// 3-5. One qwen3_moe cluster (2 attention, 3 expert workers, R = 2) shared by
// the concurrency, cancellation, invalid-input, deadline, health and
// ModelInfo tests. Its limits differ from the defaults so the tests see the
// YAML's limits enforced.

constexpr int kSharedMaxNewTokens = 500;
constexpr int kSharedMaxLogprobs = 10;

class Qwen3ClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new Cluster;
    ClusterOptions o;
    o.model = "qwen3_moe";
    o.attention_workers = 2;
    o.expert_workers = 3;
    o.redundant_experts = 2;
    o.max_new_tokens = kSharedMaxNewTokens;
    o.max_logprobs = kSharedMaxLogprobs;
    start_status_ = new absl::Status(cluster_->Start(o, "qwen3_shared"));
  }
  static void TearDownTestSuite() {
    delete cluster_;  // stops it, checking the exit status and leftovers
    cluster_ = nullptr;
    delete start_status_;
    start_status_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(start_status_->ok()) << *start_status_; }
  // Whatever a test did, the cluster ends it with every KV block free.
  void TearDown() override {
    if (start_status_->ok()) {
      ExpectIdleWithin(*cluster_, std::chrono::seconds(10), "after the test");
      if (HasFailure()) std::fprintf(stderr, "%s", cluster_->Logs().c_str());
    }
  }

  static Cluster* cluster_;
  static absl::Status* start_status_;
};

Cluster* Qwen3ClusterTest::cluster_ = nullptr;
absl::Status* Qwen3ClusterTest::start_status_ = nullptr;

std::vector<int32_t> RandomPrompt(std::mt19937& rng, int length) {
  std::uniform_int_distribution<int32_t> token(0, 511);
  std::vector<int32_t> p(length);
  for (auto& t : p) t = token(rng);
  return p;
}

TEST_F(Qwen3ClusterTest, HealthServingOnEveryProcess) {
  auto health = grpc::health::v1::Health::NewStub(cluster_->channel());
  for (const std::string service : {"", "switchyard.v1.Generate"}) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::health::v1::HealthCheckRequest req;
    req.set_service(service);
    HealthResponse resp;
    const grpc::Status st = health->Check(&context, req, &resp);
    ASSERT_TRUE(st.ok()) << "'" << service << "': " << st.error_message();
    EXPECT_EQ(resp.status(), HealthResponse::SERVING) << "router, service '" << service << "'";
  }
  {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest req;
    req.set_service("no.such.Service");
    HealthResponse resp;
    EXPECT_EQ(health->Check(&context, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // Every other process serves grpc.health.v1 too.
  std::vector<std::pair<std::string, std::string>> processes = {
      {"coordinator", cluster_->coordinator_address()}};
  for (const auto& a : cluster_->attention_addresses()) processes.push_back({"attention", a});
  for (const auto& a : cluster_->expert_addresses()) processes.push_back({"expert", a});
  for (const auto& [role, addr] : processes) {
    auto stub = grpc::health::v1::Health::NewStub(
        grpc::CreateChannel(addr, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    HealthResponse resp;
    const grpc::Status st = stub->Check(&context, grpc::health::v1::HealthCheckRequest(), &resp);
    ASSERT_TRUE(st.ok()) << role << " " << addr << ": " << st.error_message();
    EXPECT_EQ(resp.status(), HealthResponse::SERVING) << role << " " << addr;
  }
}

// The value of the sample `series` (name and labels exactly as exposed) in
// a Prometheus text exposition; -1 when absent.
double MetricValue(const std::string& text, const std::string& series) {
  size_t at = 0;
  while ((at = text.find(series + " ", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') {
      return std::strtod(text.c_str() + at + series.size() + 1, nullptr);
    }
    at += series.size();
  }
  return -1;
}

// Every process serves Prometheus metrics on the port the YAML gives it:
// the RPC observer's counts of the calls it served, its role's own
// families, and an exposition promtool accepts.
TEST_F(Qwen3ClusterTest, MetricsOnEveryProcessPassPromtool) {
  // Traffic first: two streams through the router, and a health check on
  // every process (an expert worker serves nothing else).
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::GenerateRequest req;
    for (int t : {5, 6, 7}) req.add_input_ids(t);
    req.mutable_stopping()->set_max_new_tokens(4);
    auto reader = cluster_->stub()->GenerateStream(&context, req);
    v1::GenerateStreamResponse m;
    while (reader->Read(&m)) {
    }
    ASSERT_TRUE(reader->Finish().ok());
  }
  struct Process {
    std::string name, grpc_address;
    int metrics_port;
    std::vector<std::string> want;  // substrings of the exposition
  };
  const std::string health_ok =
      "switchyard_grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Check\","
      "grpc_service=\"grpc.health.v1.Health\"}";
  std::vector<Process> processes = {
      {"router",
       cluster_->api_address(),
       cluster_->router_metrics_port(),
       {"switchyard_router_requests_total{code=\"OK\",method=\"GenerateStream\",outcome=\"ok\"}",
        "switchyard_router_time_to_first_token_seconds_bucket",
        "switchyard_router_requests_in_flight 0"}},
      {"coordinator",
       cluster_->coordinator_address(),
       cluster_->coordinator_metrics_port(),
       {"switchyard_grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Heartbeat\","
        "grpc_service=\"switchyard.internal.v1.Coordinator\"}",
        "switchyard_coordinator_workers{role=\"expert\",state=\"serving\"} 3",
        "switchyard_coordinator_workers{role=\"attention\",state=\"serving\"} 2",
        "switchyard_coordinator_workers{role=\"expert\",state=\"dead\"} 0",
        "switchyard_coordinator_mesh_ready 1", "switchyard_coordinator_placement_epoch",
        "switchyard_coordinator_rebalances_total{outcome=\"committed\",trigger=\"threshold\"} 0",
        "switchyard_coordinator_heartbeat_timeouts_total 0"}},
  };
  for (int i = 0; i < cluster_->options().attention_workers; ++i) {
    processes.push_back(
        {"attention-worker-" + std::to_string(i),
         cluster_->attention_addresses()[i],
         cluster_->attention_metrics_port(i),
         {"switchyard_attention_worker_step_phase_seconds_count{phase=\"expert_wait\"}",
          "switchyard_attention_worker_batch_tokens_bucket",
          "switchyard_attention_worker_kv_cache_free_blocks",
          "switchyard_attention_worker_running_sequences 0",
          "switchyard_attention_worker_mesh_steps_total"}});
  }
  for (int i = 0; i < cluster_->options().expert_workers; ++i) {
    processes.push_back(
        {"expert-worker-" + std::to_string(i),
         cluster_->expert_addresses()[i],
         cluster_->expert_metrics_port(i),
         {"switchyard_expert_worker_rows_total{layer=\"0\"}",
          "switchyard_expert_worker_compute_seconds_count", "switchyard_expert_worker_slots ",
          "switchyard_expert_worker_expert_bytes ",
          "switchyard_expert_worker_stages_total{outcome=\"failed\"} 0"}});
  }
  for (Process& p : processes) {
    auto stub = grpc::health::v1::Health::NewStub(
        grpc::CreateChannel(p.grpc_address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    HealthResponse resp;
    ASSERT_TRUE(stub->Check(&context, grpc::health::v1::HealthCheckRequest(), &resp).ok())
        << p.name;
    p.want.push_back(health_ok);
  }
  for (const Process& p : processes) {
    auto text =
        metrics::HttpGet("127.0.0.1", p.metrics_port, "/metrics", std::chrono::milliseconds(5000));
    ASSERT_TRUE(text.ok()) << p.name << ": " << text.status();
    for (const std::string& w : p.want) {
      EXPECT_NE(text->find(w), std::string::npos)
          << p.name << " (port " << p.metrics_port << ") lacks " << w;
    }
    EXPECT_EQ(metrics::PromtoolCheckMetrics(*text), "") << p.name;
  }
  // The launcher said where each is.
  std::ifstream out(cluster_->dir() + "/launcher.stdout");
  std::stringstream launcher;
  launcher << out.rdbuf();
  EXPECT_THAT(launcher.str(),
              ::testing::HasSubstr("switchyard-local: metrics of router on http://127.0.0.1:" +
                                   std::to_string(cluster_->router_metrics_port()) + "/metrics"));
  EXPECT_THAT(
      launcher.str(),
      ::testing::HasSubstr("switchyard-local: metrics of expert-worker-2 on http://127.0.0.1:" +
                           std::to_string(cluster_->expert_metrics_port(2)) + "/metrics"));
}

// What a server-reflection client (grpcurl, Postman) sees of one process:
// the services it lists and the descriptor of the file defining `symbol`.
struct Reflected {
  std::vector<std::string> services;
  google::protobuf::FileDescriptorProto file;  // the file defining the symbol
  std::string error;                           // a failed step; empty when all went well
};

Reflected Reflect(const std::string& address, const std::string& symbol) {
  namespace refl = ::grpc::reflection::v1alpha;
  Reflected out;
  auto stub = refl::ServerReflection::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto stream = stub->ServerReflectionInfo(&context);
  refl::ServerReflectionRequest req;
  refl::ServerReflectionResponse resp;
  req.set_list_services("*");
  if (!stream->Write(req) || !stream->Read(&resp)) {
    out.error = "list_services: the stream broke";
  } else if (!resp.has_list_services_response()) {
    out.error = "list_services: " + resp.error_response().error_message();
  } else {
    for (const auto& s : resp.list_services_response().service()) out.services.push_back(s.name());
    req.set_file_containing_symbol(symbol);
    if (!stream->Write(req) || !stream->Read(&resp)) {
      out.error = "file_containing_symbol: the stream broke";
    } else if (!resp.has_file_descriptor_response() ||
               resp.file_descriptor_response().file_descriptor_proto().empty()) {
      out.error = "file_containing_symbol " + symbol + ": " + resp.error_response().error_message();
    } else if (!out.file.ParseFromString(
                   resp.file_descriptor_response().file_descriptor_proto(0))) {
      out.error = "file_containing_symbol: the descriptor does not parse";
    }
  }
  stream->WritesDone();
  const grpc::Status st = stream->Finish();
  if (out.error.empty() && !st.ok()) out.error = "stream: " + st.error_message();
  return out;
}

std::vector<std::string> MethodsOf(const google::protobuf::FileDescriptorProto& file,
                                   const std::string& service) {
  std::vector<std::string> out;
  for (const auto& s : file.service()) {
    if (s.name() != service) continue;
    for (const auto& m : s.method()) out.push_back(m.name());
  }
  return out;
}

// Server reflection answers on every process, so grpcurl and similar tools
// can call the API without the .proto files.
TEST_F(Qwen3ClusterTest, ServerReflectionDescribesEveryProcess) {
  using ::testing::Contains;
  using ::testing::UnorderedElementsAre;
  const Reflected router = Reflect(cluster_->api_address(), "switchyard.v1.Generate");
  ASSERT_EQ(router.error, "") << "router";
  EXPECT_THAT(router.services, Contains("switchyard.v1.Generate"));
  EXPECT_EQ(router.file.package(), "switchyard.v1");
  EXPECT_THAT(MethodsOf(router.file, "Generate"),
              UnorderedElementsAre("Generate", "GenerateStream", "ModelInfo"));

  const Reflected coordinator =
      Reflect(cluster_->coordinator_address(), "switchyard.internal.v1.Coordinator");
  ASSERT_EQ(coordinator.error, "") << "coordinator";
  EXPECT_THAT(coordinator.services, Contains("switchyard.internal.v1.Coordinator"));
  EXPECT_THAT(MethodsOf(coordinator.file, "Coordinator"), Contains("Register"));

  for (const std::string& a : cluster_->attention_addresses()) {
    const Reflected worker = Reflect(a, "switchyard.internal.v1.AttentionWorker");
    ASSERT_EQ(worker.error, "") << "attention worker " << a;
    EXPECT_THAT(worker.services, Contains("switchyard.internal.v1.AttentionWorker")) << a;
    EXPECT_THAT(MethodsOf(worker.file, "AttentionWorker"), Contains("Stats")) << a;
  }
  // Expert workers serve health only (their work goes over the transport),
  // and reflection lists the reflection service itself.
  for (const std::string& a : cluster_->expert_addresses()) {
    const Reflected worker = Reflect(a, "grpc.reflection.v1alpha.ServerReflection");
    ASSERT_EQ(worker.error, "") << "expert worker " << a;
    EXPECT_THAT(worker.services, Contains("grpc.reflection.v1alpha.ServerReflection")) << a;
  }
}

struct ToolRun {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs build/bin/<tool> with `args` (a shell word list), capturing stdout and stderr.
ToolRun RunTool(const std::string& tool, const std::string& args) {
  static int counter = 0;
  const std::string err_file = RunRoot() + "/tool-" + std::to_string(++counter) + ".stderr";
  const std::string cmd =
      std::string(SY_BINARY_DIR) + "/bin/" + tool + " " + args + " 2>" + err_file;
  ToolRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.err = ReadFile(err_file);
  return r;
}

// Compares the JSON logprob entries of two tools: same chosen and top tokens,
// logprobs within the tolerance.
void ExpectSameLogprobJson(const nlohmann::json& a, const nlohmann::json& b,
                           const std::string& what) {
  ASSERT_EQ(a.is_null(), b.is_null()) << what;
  if (a.is_null()) return;
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    const std::string at = what + "[" + std::to_string(i) + "]";
    ASSERT_EQ(a[i].is_null(), b[i].is_null()) << at;
    if (a[i].is_null()) continue;
    EXPECT_EQ(a[i]["token"], b[i]["token"]) << at;
    EXPECT_NEAR(a[i]["logprob"].get<double>(), b[i]["logprob"].get<double>(), kLogprobTolerance)
        << at;
    ASSERT_EQ(a[i]["top"].size(), b[i]["top"].size()) << at;
    for (size_t k = 0; k < a[i]["top"].size(); ++k) {
      EXPECT_EQ(a[i]["top"][k]["token"], b[i]["top"][k]["token"]) << at << ".top[" << k << "]";
      EXPECT_NEAR(a[i]["top"][k]["logprob"].get<double>(), b[i]["top"][k]["logprob"].get<double>(),
                  kLogprobTolerance)
          << at << ".top[" << k << "]";
    }
  }
}

// switchyard-client takes switchyard-generate's flags and prints the same
// JSON document (unary), one JSON line per message with --stream; `info` and
// `health` describe the server; bad flags and INVALID_ARGUMENT exit 2.
TEST_F(Qwen3ClusterTest, ClientCliPrintsWhatGenerateCliPrints) {
  const std::string addr = "--addr " + cluster_->api_address();
  const std::string model = "--model " + CaseDir("qwen3_moe");
  for (const std::string flags :
       {"--prompt-ids 1,7,42,100 --max-new-tokens 10 --logprobs 3 --prompt-logprobs 2",
        // Sampling flags imply temperature 1 in both tools; a seed reproduces.
        "--prompt-ids 5,9 --max-new-tokens 12 --seed 11 --top-k 8 --logprobs 0",
        "--prompt-ids 3 --max-new-tokens 6 --min-new-tokens 6 --stop-token-ids 1,2 "
        "--repetition-penalty 1.3"}) {
    const ToolRun local = RunTool("switchyard-generate", model + " " + flags);
    const ToolRun remote = RunTool("switchyard-client", "generate " + addr + " " + flags);
    ASSERT_EQ(local.exit_code, 0) << flags << "\n" << local.err;
    ASSERT_EQ(remote.exit_code, 0) << flags << "\n" << remote.err;
    const auto l = nlohmann::json::parse(local.out, nullptr, false);
    const auto r = nlohmann::json::parse(remote.out, nullptr, false);
    ASSERT_FALSE(l.is_discarded()) << local.out;
    ASSERT_FALSE(r.is_discarded()) << remote.out;
    std::vector<std::string> lkeys, rkeys;
    for (const auto& [k, v] : l.items()) lkeys.push_back(k);
    for (const auto& [k, v] : r.items()) rkeys.push_back(k);
    EXPECT_EQ(lkeys, rkeys) << flags;
    EXPECT_EQ(l["tokens"], r["tokens"]) << flags;
    EXPECT_EQ(l["finish_reason"], r["finish_reason"]) << flags;
    ExpectSameLogprobJson(l["logprobs"], r["logprobs"], flags + ": logprobs");
    ExpectSameLogprobJson(l["prompt_logprobs"], r["prompt_logprobs"], flags + ": prompt_logprobs");
    EXPECT_EQ(r["timings"]["output_tokens"], r["tokens"].size()) << flags;

    // --stream: one JSON line per message; together the same tokens and
    // logprobs, the finish reason and timings on the last line.
    const ToolRun streamed =
        RunTool("switchyard-client", "generate --stream " + addr + " " + flags);
    ASSERT_EQ(streamed.exit_code, 0) << flags << "\n" << streamed.err;
    nlohmann::json tokens = nlohmann::json::array();
    nlohmann::json logprobs = nlohmann::json::array();
    nlohmann::json last;
    for (absl::string_view line : absl::StrSplit(streamed.out, '\n', absl::SkipEmpty())) {
      last = nlohmann::json::parse(line, nullptr, false);
      ASSERT_FALSE(last.is_discarded()) << line;
      for (const auto& t : last["tokens"]) tokens.push_back(t);
      if (!last["logprobs"].is_null()) {
        for (const auto& lp : last["logprobs"]) logprobs.push_back(lp);
      }
    }
    EXPECT_EQ(tokens, l["tokens"]) << flags << " --stream";
    EXPECT_EQ(last["finish_reason"], l["finish_reason"]) << flags << " --stream";
    EXPECT_TRUE(last.contains("timings")) << flags << " --stream";
    if (!l["logprobs"].is_null()) {
      ExpectSameLogprobJson(l["logprobs"], logprobs, flags + " --stream: logprobs");
    }
  }

  const ToolRun info = RunTool("switchyard-client", "info " + addr);
  ASSERT_EQ(info.exit_code, 0) << info.err;
  const auto j = nlohmann::json::parse(info.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << info.out;
  EXPECT_EQ(j.dump().find("Qwen3MoeForCausalLM") != std::string::npos, true) << info.out;

  const ToolRun health = RunTool("switchyard-client", "health " + addr);
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_THAT(health.out, HasSubstr("SERVING"));

  // A bad flag value never reaches the server; INVALID_ARGUMENT from the
  // server names the field; both exit 2.
  ToolRun bad = RunTool("switchyard-client", "generate " + addr + " --prompt-ids 1,x");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.err, HasSubstr("'x' is not a token id"));
  bad = RunTool("switchyard-client", "generate " + addr + " --prompt-ids 1 --max-new-tokens 0");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.err, HasSubstr("max_new_tokens"));
}

// The lockstep step needs every attention worker, so a request arriving
// while the whole mesh idles would wait out the other workers' idle pauses;
// the worker that gets it wakes them (AttentionWorker.Wake) instead.
TEST_F(Qwen3ClusterTest, RequestAtAnIdleMeshWakesTheOtherAttentionWorkers) {
  // Let the mesh go idle (the pauses back off to max_idle_sleep_us).
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const auto counts = [&] {
    std::pair<int64_t, int64_t> n{0, 0};  // wakes received, pauses they cut short
    for (const auto& st : AllStats(*cluster_)) {
      n.first += st.wakes_received();
      n.second += st.pauses_cut_by_wake();
    }
    return n;
  };
  const auto before = counts();
  const StreamOutcome o = RunStream(cluster_->stub(), GreedyRequest({1, 7, 42}, 4, std::nullopt));
  ASSERT_TRUE(o.status.ok()) << o.status.error_message();
  EXPECT_EQ(o.tokens.size(), 4u);
  // One worker got the request and woke the other one, whose idle pause
  // ended early (the call is asynchronous: it may land after the request
  // has finished; then it ends the next pause).
  const auto t0 = Clock::now();
  while (counts().second == before.second && Clock::now() - t0 < std::chrono::seconds(10)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // a late second wake would show
  const auto after = counts();
  EXPECT_EQ(after.first - before.first, 1);
  EXPECT_EQ(after.second - before.second, 1);
}

TEST_F(Qwen3ClusterTest, ModelInfoDescribesModelAndLimits) {
  const nlohmann::json c = LoadConfigJson("qwen3_moe");
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ModelInfoResponse info;
  const grpc::Status st = cluster_->stub()->ModelInfo(&context, v1::ModelInfoRequest(), &info);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(info.architecture(), "Qwen3MoeForCausalLM");
  EXPECT_EQ(info.model_type(), "qwen3_moe");
  EXPECT_EQ(info.vocab_size(), c.at("vocab_size").get<int>());
  EXPECT_EQ(info.max_context(), c.at("max_position_embeddings").get<int>());
  EXPECT_EQ(info.max_new_tokens_limit(), kSharedMaxNewTokens);
  EXPECT_EQ(info.max_logprobs(), kSharedMaxLogprobs);
  EXPECT_EQ(info.num_layers(), c.at("num_hidden_layers").get<int>());
  EXPECT_EQ(info.num_experts(), NumExperts("qwen3_moe"));
  EXPECT_EQ(info.experts_per_token(), c.at("num_experts_per_tok").get<int>());
  EXPECT_EQ(info.hidden_size(), c.at("hidden_size").get<int>());
}

TEST_F(Qwen3ClusterTest, SixtyFourConcurrentStreamsOfMixedLengths) {
  std::mt19937 rng(20240601);
  std::uniform_int_distribution<int> prompt_len(3, 60), new_tokens(4, 40);
  std::vector<v1::GenerateRequest> requests, reference_requests;
  for (int i = 0; i < 64; ++i) {
    const std::vector<int32_t> prompt = RandomPrompt(rng, prompt_len(rng));
    const int n = new_tokens(rng);
    // Half ask for logprobs; the reference always does (to see near ties).
    requests.push_back(GreedyRequest(prompt, n, i % 2 ? std::optional<int>(2) : std::nullopt));
    reference_requests.push_back(GreedyRequest(prompt, n, 2));
  }
  const auto t0 = Clock::now();
  const std::vector<StreamOutcome> got = RunStreams(cluster_->stub(), requests);
  const double cluster_s = SecondsSince(t0);
  const std::vector<Reference> ref = RunReference("qwen3_moe", reference_requests);
  int tokens = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const std::string where = "stream " + std::to_string(i);
    ASSERT_TRUE(got[i].status.ok())
        << where << ": " << got[i].status.error_code() << " " << got[i].status.error_message();
    EXPECT_EQ(got[i].finish, v1::FINISH_REASON_LENGTH) << where;
    EXPECT_EQ(static_cast<int>(got[i].tokens.size()), requests[i].stopping().max_new_tokens())
        << where;
    ExpectSameGreedy(got[i].tokens, ref[i], where);
    if (requests[i].has_logprobs()) {
      EXPECT_EQ(got[i].logprobs.size(), got[i].tokens.size()) << where;
    } else {
      EXPECT_TRUE(got[i].logprobs.empty()) << where;
    }
    tokens += static_cast<int>(got[i].tokens.size());
  }
  Progress("64 concurrent streams: %d tokens in %.2f s, all equal to the engine's", tokens,
           cluster_s);
}

TEST_F(Qwen3ClusterTest, CancellingHalfOfSixtyFourStreamsFreesTheirKvBlocks) {
  std::mt19937 rng(77);
  std::uniform_int_distribution<int> prompt_len(3, 60), short_new(4, 40), long_new(300, 440);
  constexpr int kStreams = 64;
  std::vector<v1::GenerateRequest> requests;
  std::vector<StreamOptions> options(kStreams);
  // Cancelled streams (even indices) are long, so they are mid-way when
  // cancelled; each waits, after its first tokens, until every cancelled
  // stream is that far, so the KV blocks they hold can be seen in Stats.
  std::mutex mu;
  std::condition_variable cv;
  int waiting_to_cancel = 0;
  bool go = false;
  for (int i = 0; i < kStreams; ++i) {
    const bool cancel = i % 2 == 0;
    const std::vector<int32_t> prompt = RandomPrompt(rng, prompt_len(rng));
    requests.push_back(GreedyRequest(prompt, cancel ? long_new(rng) : short_new(rng), 2));
    if (cancel) {
      options[i].cancel_after_tokens = 2 + (i / 2) % 4;
      options[i].before_cancel = [&] {
        std::unique_lock<std::mutex> lock(mu);
        ++waiting_to_cancel;
        cv.notify_all();
        cv.wait_for(lock, std::chrono::seconds(60), [&] { return go; });
      };
    }
  }
  std::vector<StreamOutcome> got;
  std::thread streams([&] { got = RunStreams(cluster_->stub(), requests, options); });
  int64_t used_before_cancel = 0;
  int64_t running_before_cancel = 0;
  {
    std::unique_lock<std::mutex> lock(mu);
    const bool all = cv.wait_for(lock, std::chrono::seconds(120),
                                 [&] { return waiting_to_cancel == kStreams / 2; });
    EXPECT_TRUE(all) << "only " << waiting_to_cancel << " streams reached their cancel point";
    lock.unlock();
    const auto stats = AllStats(*cluster_);
    used_before_cancel = BlocksInUse(stats);
    for (const auto& s : stats) running_before_cancel += s.running();
    lock.lock();
    go = true;
    cv.notify_all();
  }
  streams.join();
  EXPECT_GT(used_before_cancel, 0) << "no KV blocks in use before cancelling";
  EXPECT_GE(running_before_cancel, kStreams / 2);

  const std::vector<Reference> ref = RunReference("qwen3_moe", requests);
  int cancelled = 0, completed = 0;
  for (int i = 0; i < kStreams; ++i) {
    const std::string where = "stream " + std::to_string(i);
    const StreamOutcome& o = got[i];
    if (i % 2 == 0) {
      EXPECT_EQ(o.status.error_code(), grpc::StatusCode::CANCELLED)
          << where << ": " << o.status.error_message();
      EXPECT_GE(o.tokens_before_cancel, options[i].cancel_after_tokens) << where;
      EXPECT_LT(o.tokens.size(), static_cast<size_t>(requests[i].stopping().max_new_tokens()))
          << where << " ran to the end before the cancel";
      // What arrived before the cancel is the right prefix.
      Reference prefix = ref[i];
      prefix.tokens.resize(std::min(prefix.tokens.size(), o.tokens.size()));
      ExpectSameGreedy(o.tokens, prefix, where);
      cancelled += o.status.error_code() == grpc::StatusCode::CANCELLED;
    } else {
      ASSERT_TRUE(o.status.ok()) << where << ": " << o.status.error_code() << " "
                                 << o.status.error_message();
      EXPECT_EQ(o.finish, v1::FINISH_REASON_LENGTH) << where;
      EXPECT_EQ(static_cast<int>(o.tokens.size()), requests[i].stopping().max_new_tokens())
          << where;
      ExpectSameGreedy(o.tokens, ref[i], where);
      completed += o.status.ok();
    }
  }
  const double idle_s = ExpectIdleWithin(*cluster_, std::chrono::seconds(5), "after cancelling");
  Progress(
      "cancel test: %d blocks in use and %lld running before cancelling; %d cancelled, "
      "%d completed correctly; all KV blocks free %.3f s later",
      static_cast<int>(used_before_cancel), static_cast<long long>(running_before_cancel),
      cancelled, completed, idle_s);
}

TEST_F(Qwen3ClusterTest, InvalidInputIsInvalidArgumentNamingTheFieldAndServingGoesOn) {
  struct Bad {
    std::string what;
    std::function<void(v1::GenerateRequest*)> change;
    std::string field;
  };
  auto prompt_of = [](int n) {
    std::vector<int32_t> p(n);
    for (int i = 0; i < n; ++i) p[i] = (i * 37 + 11) % 512;
    return p;
  };
  auto set_prompt = [](v1::GenerateRequest* r, const std::vector<int32_t>& p) {
    r->clear_input_ids();
    for (int32_t t : p) r->add_input_ids(t);
  };
  const std::vector<Bad> cases = {
      {"empty prompt", [](v1::GenerateRequest* r) { r->clear_input_ids(); }, "input_ids"},
      {"token id = vocab size", [](v1::GenerateRequest* r) { r->add_input_ids(512); },
       "input_ids[3]"},
      {"negative token id", [](v1::GenerateRequest* r) { r->add_input_ids(-1); }, "input_ids[3]"},
      {"prompt longer than the context",
       [&](v1::GenerateRequest* r) { set_prompt(r, prompt_of(600)); }, "input_ids"},
      {"prompt as long as the context",
       [&](v1::GenerateRequest* r) { set_prompt(r, prompt_of(512)); }, "input_ids"},
      {"max_new_tokens over limits.max_new_tokens",
       [](v1::GenerateRequest* r) {
         r->mutable_stopping()->set_max_new_tokens(kSharedMaxNewTokens + 1);
       },
       "stopping.max_new_tokens"},
      {"max_new_tokens 0",
       [](v1::GenerateRequest* r) { r->mutable_stopping()->set_max_new_tokens(0); },
       "stopping.max_new_tokens"},
      {"prompt + max_new_tokens over the context",
       [&](v1::GenerateRequest* r) {
         set_prompt(r, prompt_of(100));
         r->mutable_stopping()->set_max_new_tokens(450);
       },
       "stopping.max_new_tokens"},
      {"min_new_tokens over max_new_tokens",
       [](v1::GenerateRequest* r) { r->mutable_stopping()->set_min_new_tokens(5); },
       "stopping.min_new_tokens"},
      {"stop token out of vocabulary",
       [](v1::GenerateRequest* r) { r->mutable_stopping()->add_stop_token_ids(512); },
       "stopping.stop_token_ids[0]"},
      {"temperature -1", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_temperature(-1); },
       "sampling.temperature"},
      {"temperature NaN",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_temperature(std::nanf("")); },
       "sampling.temperature"},
      {"top_p 0", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_p(0); },
       "sampling.top_p"},
      {"top_p 1.5", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_p(1.5f); },
       "sampling.top_p"},
      {"top_k -1", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_top_k(-1); },
       "sampling.top_k"},
      {"min_p 2", [](v1::GenerateRequest* r) { r->mutable_sampling()->set_min_p(2); },
       "sampling.min_p"},
      {"repetition_penalty 0",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_repetition_penalty(0); },
       "sampling.repetition_penalty"},
      {"presence_penalty 3",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_presence_penalty(3); },
       "sampling.presence_penalty"},
      {"frequency_penalty -3",
       [](v1::GenerateRequest* r) { r->mutable_sampling()->set_frequency_penalty(-3); },
       "sampling.frequency_penalty"},
      {"logprobs over limits.max_logprobs",
       [](v1::GenerateRequest* r) { r->set_logprobs(kSharedMaxLogprobs + 1); }, "logprobs"},
      {"logprobs negative", [](v1::GenerateRequest* r) { r->set_logprobs(-2); }, "logprobs"},
      {"prompt_logprobs over limits.max_logprobs",
       [](v1::GenerateRequest* r) { r->set_prompt_logprobs(kSharedMaxLogprobs + 1); },
       "prompt_logprobs"},
  };
  for (const Bad& bad : cases) {
    v1::GenerateRequest request = GreedyRequest({1, 7, 42}, 4, std::nullopt);
    bad.change(&request);
    // Streaming.
    const StreamOutcome o = RunStream(cluster_->stub(), request);
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << bad.what << ": " << o.status.error_message();
    EXPECT_THAT(o.status.error_message(), HasSubstr(bad.field)) << bad.what;
    EXPECT_TRUE(o.tokens.empty()) << bad.what;
    // Unary.
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::GenerateResponse response;
    const grpc::Status st = cluster_->stub()->Generate(&context, request, &response);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << bad.what << " (unary): " << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr(bad.field)) << bad.what << " (unary)";
  }
  // The server keeps serving, with the limits themselves accepted.
  const std::vector<int32_t> prompt = prompt_of(11);
  v1::GenerateRequest ok = GreedyRequest(prompt, 6, kSharedMaxLogprobs);
  ok.set_prompt_logprobs(kSharedMaxLogprobs);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::GenerateResponse response;
  const grpc::Status st = cluster_->stub()->Generate(&context, ok, &response);
  ASSERT_TRUE(st.ok()) << st.error_code() << " " << st.error_message();
  EXPECT_EQ(response.finish_reason(), v1::FINISH_REASON_LENGTH);
  const std::vector<Reference> ref = RunReference("qwen3_moe", {ok});
  const std::vector<int32_t> tokens(response.output_ids().begin(), response.output_ids().end());
  EXPECT_EQ(tokens, ref[0].tokens);
  ExpectLogprobsNear({response.logprobs().begin(), response.logprobs().end()}, ref[0],
                     kSharedMaxLogprobs, "valid request after the invalid ones");
  EXPECT_EQ(response.prompt_logprobs_size(), static_cast<int>(prompt.size()));
  Progress("%zu invalid requests refused (stream and unary), then a valid one served",
           cases.size());
}

TEST_F(Qwen3ClusterTest, DeadlineStopsTheRequestAndFreesItsKvBlocks) {
  // The longest generation the context allows, with a deadline that expires
  // mid-way: calibrated from a shorter run's time to first token and time per
  // token (a short run keeps this test quick on a loaded machine).
  const std::vector<int32_t> prompt = {3, 1, 4, 1, 5, 9, 2, 6};
  const int n = 480, n_calibrate = 96;
  const v1::GenerateRequest request = GreedyRequest(prompt, n, 1);
  const StreamOutcome calib =
      RunStream(cluster_->stub(), GreedyRequest(prompt, n_calibrate, std::nullopt));
  ASSERT_TRUE(calib.status.ok()) << calib.status.error_message();
  ASSERT_EQ(static_cast<int>(calib.tokens.size()), n_calibrate);
  ASSERT_GT(calib.first_token_s, 0);
  const double per_token_s = (calib.total_s - calib.first_token_s) / (n_calibrate - 1);
  double first_token_s = calib.first_token_s;
  double full_s = calib.first_token_s + (n - 1) * per_token_s;  // expected full run
  Progress(
      "deadline test: first token after %.3f s, %.2f ms per token; %d tokens would take "
      "about %.2f s",
      calib.first_token_s, 1000 * per_token_s, n, full_s);
  const std::vector<Reference> ref = RunReference("qwen3_moe", {request});

  bool mid_way = false;
  for (double fraction : {0.3, 0.5, 0.15, 0.05}) {
    const auto timeout = std::chrono::milliseconds(
        static_cast<int64_t>(1000 * (first_token_s + fraction * (full_s - first_token_s))));
    const auto t0 = Clock::now();
    const StreamOutcome o =
        RunStream(cluster_->stub(), request, {timeout, -1, nullptr, -1, nullptr});
    // On a machine whose speed varies the whole generation may beat the
    // calibrated deadline: then it succeeded (or the deadline hit just
    // after the last token).
    if (static_cast<int>(o.tokens.size()) >= n) {
      EXPECT_TRUE(o.status.ok() || o.status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
          << o.status.error_message();
      Progress("all %zu tokens came within the %lld ms deadline (%.2f s); recalibrating",
               o.tokens.size(), static_cast<long long>(timeout.count()), o.total_s);
      first_token_s = o.first_token_s;
      full_s = o.total_s;  // the machine's speed now
      continue;
    }
    EXPECT_EQ(o.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
        << o.status.error_message();
    if (o.tokens.empty()) {
      Progress("deadline of %lld ms expired with %zu tokens; trying another",
               static_cast<long long>(timeout.count()), o.tokens.size());
      ExpectIdleWithin(*cluster_, std::chrono::seconds(30), "after a deadline");
      continue;
    }
    mid_way = true;
    Reference prefix = ref[0];
    prefix.tokens.resize(std::min(prefix.tokens.size(), o.tokens.size()));
    ExpectSameGreedy(o.tokens, prefix, "tokens before the deadline");
    // The worker frees the request well before it would have finished on its
    // own (at about t0 + full_s).
    const double idle_s = ExpectIdleWithin(*cluster_, std::chrono::seconds(10), "after deadline");
    const double since_start = SecondsSince(t0);
    EXPECT_LT(since_start, 0.9 * full_s + 0.05)
        << "KV blocks were freed only when the request would have finished anyway";
    Progress(
        "deadline of %lld ms: DEADLINE_EXCEEDED after %zu tokens; KV blocks free %.3f s "
        "later (%.2f s after the start; a full run takes about %.2f s)",
        static_cast<long long>(timeout.count()), o.tokens.size(), idle_s, since_start, full_s);
    break;
  }
  EXPECT_TRUE(mid_way) << "no deadline expired mid-generation";

  // Unary calls honour deadlines too: the request's blocks are freed.
  bool unary_expired = false;
  for (double fraction : {0.3, 0.1, 0.03}) {
    grpc::ClientContext context;
    const auto t0 = Clock::now();
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(static_cast<int64_t>(
                             1000 * (first_token_s + fraction * (full_s - first_token_s)))));
    v1::GenerateResponse response;
    const grpc::Status st = cluster_->stub()->Generate(&context, request, &response);
    if (st.ok()) {  // finished before the deadline: the machine sped up
      EXPECT_EQ(response.output_ids_size(), n);
      full_s = SecondsSince(t0);
      continue;
    }
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
    ExpectIdleWithin(*cluster_, std::chrono::seconds(10), "after a unary deadline");
    unary_expired = true;
    break;
  }
  EXPECT_TRUE(unary_expired) << "no unary deadline expired";
}

// ---------------------------------------------------------------------------
// 4 (overload). With limits.max_queue 4, a burst of long requests: some are
// refused with RESOURCE_EXHAUSTED at once, the admitted ones complete
// correctly, and the cluster serves afterwards.

TEST(ClusterOverloadTest, BoundedQueueRefusesWithResourceExhaustedAndTheRestComplete) {
  ClusterOptions o;
  o.model = "qwen3_moe";
  o.attention_workers = 1;
  o.expert_workers = 1;
  o.redundant_experts = 0;
  o.max_queue = 4;
  Cluster cluster;
  const absl::Status start = cluster.Start(o, "qwen3_overload");
  ASSERT_TRUE(start.ok()) << start;

  constexpr int kBurst = 24;
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < kBurst; ++i) {
    requests.push_back(GreedyRequest({1, static_cast<int32_t>(10 + i % 4), 42, 7}, 200, 2));
  }
  // All calls start together.
  std::atomic<int> ready{0};
  std::vector<StreamOutcome> got(kBurst);
  std::vector<std::thread> threads;
  for (int i = 0; i < kBurst; ++i) {
    threads.emplace_back([&, i] {
      ready.fetch_add(1);
      while (ready.load() < kBurst) std::this_thread::yield();
      got[i] = RunStream(cluster.stub(), requests[i]);
    });
  }
  for (auto& t : threads) t.join();
  const std::vector<Reference> ref = RunReference("qwen3_moe", requests);
  int exhausted = 0, completed = 0;
  for (int i = 0; i < kBurst; ++i) {
    const std::string where = "request " + std::to_string(i);
    if (got[i].status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++exhausted;
      EXPECT_TRUE(got[i].tokens.empty()) << where;
      EXPECT_FALSE(got[i].status.error_message().empty()) << where;
      continue;
    }
    ASSERT_TRUE(got[i].status.ok())
        << where << ": " << got[i].status.error_code() << " " << got[i].status.error_message();
    ++completed;
    EXPECT_EQ(got[i].finish, v1::FINISH_REASON_LENGTH) << where;
    ExpectSameGreedy(got[i].tokens, ref[i], where);
  }
  EXPECT_GT(exhausted, 0) << "no request was refused with max_queue 4";
  EXPECT_GE(completed, 4) << "fewer requests completed than the queue admits";
  Progress("overload: %d of %d refused with RESOURCE_EXHAUSTED, %d completed correctly", exhausted,
           kBurst, completed);
  ExpectIdleWithin(cluster, std::chrono::seconds(5), "after the burst");

  // Still serving.
  const StreamOutcome after = RunStream(cluster.stub(), requests[0]);
  ASSERT_TRUE(after.status.ok()) << after.status.error_message();
  ExpectSameGreedy(after.tokens, ref[0], "after the burst");
}

// Readiness means loaded: an expert worker that takes far longer to load its
// experts (800 MB of dummy weights) than the transport timeout (200 ms) must
// not make the first MoE step time out. Before the mesh had a ready state the
// attention worker stepped as soon as the mesh was complete and its first
// combine timed out.
TEST(ClusterReadinessTest, SlowExpertLoadingDoesNotTimeOutTheFirstStep) {
  ClusterOptions o;
  o.model_dir = std::string(SY_SOURCE_DIR) + "/tests/data/configs/slow_experts";
  o.load_format = "dummy";
  o.attention_workers = 1;
  o.expert_workers = 1;
  o.transport_timeout_ms = 200;
  o.max_idle_sleep_us = 20000;
  Cluster cluster;
  const absl::Status start = cluster.Start(o, "slow_experts");
  ASSERT_TRUE(start.ok()) << start;
  const StreamOutcome got =
      RunStream(cluster.stub(), GreedyRequest({0, 7, 42, 9}, 8, std::nullopt));
  ASSERT_TRUE(got.status.ok()) << got.status.error_code() << " " << got.status.error_message();
  EXPECT_EQ(got.tokens.size(), 8u);
  EXPECT_EQ(got.finish, v1::FINISH_REASON_LENGTH);
}

}  // namespace

// ---------------------------------------------------------------------------
// EPLB: the cluster measures its expert load, rebalances by itself and keeps
// serving across the switch.

v1::StatusResponse AdminStatus(const Cluster& cluster) {
  auto stub = v1::Admin::NewStub(
      grpc::CreateChannel(cluster.coordinator_address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::StatusResponse s;
  const grpc::Status st = stub->Status(&ctx, v1::StatusRequest(), &s);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return s;
}

// Streams of golden prompt 0 (the same prompt: a load skewed to the experts
// it routes to), `per_round` at a time, round after round until `stop`;
// every stream must finish OK with the golden tokens.
struct SkewedLoad {
  // Stops and joins the client thread however the test ends.
  ~SkewedLoad() { Join(); }
  void Start(Cluster& cluster, const GoldenPrompt& g, int per_round) {
    thread = std::thread([this, &cluster, g, per_round] { Run(cluster, g, per_round); });
  }
  void Join() {
    stop.store(true);
    if (thread.joinable()) thread.join();
  }

  std::thread thread;
  std::atomic<bool> stop{false};
  std::atomic<int> streams{0};
  std::atomic<int> failures{0};
  std::mutex mu;
  std::string first_failure;  // guarded by mu

  void Run(Cluster& cluster, const GoldenPrompt& g, int per_round) {
    while (!stop.load()) {
      std::vector<v1::GenerateRequest> requests(per_round, GreedyRequest(g.prompt, 24, {}));
      for (const StreamOutcome& o : RunStreams(cluster.stub(), requests)) {
        ++streams;
        if (!o.status.ok() || o.tokens != g.greedy) {
          ++failures;
          std::lock_guard<std::mutex> lock(mu);
          if (first_failure.empty()) {
            first_failure = o.status.ok() ? "tokens differ from the goldens"
                                          : std::to_string(o.status.error_code()) + " " +
                                                o.status.error_message();
          }
        }
      }
    }
  }
};

class EplbClusterTest : public ::testing::TestWithParam<std::string> {};

// A workload skewed to a few experts shows low balancedness; the threshold
// trigger rebalances by itself while streams run; balancedness rises, the
// epoch advances in `switchyard-admin status`, and every stream (those
// across the switch too) finishes with the golden tokens.
TEST_P(EplbClusterTest, SkewedLoadRebalancesByItselfWhileServing) {
  ClusterOptions o;
  o.backend = GetParam();
  o.redundant_experts = 2;
  o.eplb_yaml =
      "enabled: true\nthreshold: 0.97\nmin_gain: 0.01\ncheck_ms: 200\nmin_window_steps: 200\n"
      "window_seconds: 20\n";
  Cluster cluster;
  ASSERT_TRUE(cluster.Start(o, "eplb-" + o.backend).ok());
  const std::vector<GoldenPrompt> golden = LoadGolden("qwen3_moe");
  ASSERT_FALSE(golden.empty());
  SkewedLoad load;
  load.Start(cluster, golden[0], 8);
  // Wait for the first committed rebalance.
  const auto t0 = Clock::now();
  v1::StatusResponse s;
  double before = -1;
  while (Clock::now() - t0 < std::chrono::seconds(60)) {
    s = AdminStatus(cluster);
    if (s.has_balancedness() && s.epoch() == 1) before = s.balancedness();  // the last one
    if (s.epoch() > 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_GT(s.epoch(), 1) << "no rebalance within 60 s\n" << cluster.Logs();
  ASSERT_GT(before, 0) << "no balancedness measured before the rebalance";
  // Serve on the new placement until its own balancedness is measured.
  const int streams_at_switch = load.streams.load();
  double after = -1;
  while (Clock::now() - t0 < std::chrono::seconds(90)) {
    const v1::StatusResponse now = AdminStatus(cluster);
    if (now.has_balancedness() && now.epoch() == s.epoch() && now.window_steps() > 0 &&
        load.streams.load() >= streams_at_switch + 48) {
      after = now.balancedness();
      s = now;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  load.Join();
  ASSERT_GT(after, 0) << "no balancedness measured after the rebalance";
  EXPECT_EQ(load.failures.load(), 0) << load.first_failure;
  EXPECT_GT(load.streams.load(), streams_at_switch);
  ASSERT_GE(s.rebalances_size(), 1);
  const v1::RebalanceRecord& r = s.rebalances(s.rebalances_size() - 1);
  EXPECT_EQ(r.outcome(), "committed") << r.reason();
  EXPECT_EQ(r.trigger(), "threshold");
  EXPECT_GT(r.moved_experts(), 0);
  EXPECT_GT(r.balancedness_after(), r.balancedness_before());
  EXPECT_GT(after, before) << "measured balancedness before " << before << ", after " << after;
  for (const auto& m : s.members()) EXPECT_EQ(m.serving_epoch(), s.epoch()) << m.rank();
  // The moved experts came from the expert workers that served them, over
  // the staging transport, not from the checkpoint.
  std::string logs =
      ReadFile(cluster.dir() + "/launcher.stdout") + ReadFile(cluster.dir() + "/launcher.stderr");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(cluster.dir() + "/logs", ec)) {
    logs += ReadFile(e.path().string());
  }
  EXPECT_THAT(logs,
              ::testing::HasSubstr("experts copied from peers, 0 loaded from the checkpoint"));
  EXPECT_THAT(logs, ::testing::Not(::testing::HasSubstr("copying experts from peers failed")));
  if (o.backend == "ucx") {
    // The metrics tell the same story: the coordinator's counts of
    // rebalances (as many committed threshold ones as the history), the
    // epoch, the measured balancedness per layer; what the expert workers
    // staged.
    auto coord = metrics::HttpGet("127.0.0.1", cluster.coordinator_metrics_port(), "/metrics",
                                  std::chrono::milliseconds(5000));
    ASSERT_TRUE(coord.ok()) << coord.status();
    int committed = 0;
    for (const auto& rec : s.rebalances()) {
      committed += rec.outcome() == "committed" && rec.trigger() == "threshold" ? 1 : 0;
    }
    EXPECT_EQ(MetricValue(*coord,
                          "switchyard_coordinator_rebalances_total{outcome=\"committed\","
                          "trigger=\"threshold\"}"),
              committed);
    EXPECT_GE(MetricValue(*coord, "switchyard_coordinator_placement_epoch"), s.epoch());
    EXPECT_GT(MetricValue(*coord, "switchyard_coordinator_balancedness"), 0);
    EXPECT_GT(MetricValue(*coord, "switchyard_coordinator_layer_balancedness{layer=\"0\"}"), 0);
    EXPECT_GT(MetricValue(*coord, "switchyard_coordinator_rebalance_moved_bytes_total"), 0);
    EXPECT_EQ(MetricValue(*coord, "switchyard_coordinator_rebalance_seconds_count"), committed);
    double staged = 0;
    for (int i = 0; i < o.expert_workers; ++i) {
      auto ew = metrics::HttpGet("127.0.0.1", cluster.expert_metrics_port(i), "/metrics",
                                 std::chrono::milliseconds(5000));
      ASSERT_TRUE(ew.ok()) << ew.status();
      staged += std::max(0.0, MetricValue(*ew, "switchyard_expert_worker_staged_bytes_total"));
      EXPECT_EQ(MetricValue(*ew, "switchyard_expert_worker_serving_epoch"), s.epoch());
    }
    EXPECT_GT(staged, 0);
  }
  // The CLI reports the same epoch and the placement it serves.
  const ToolRun cli = RunTool("switchyard-admin", "status --addr " + cluster.coordinator_address());
  ASSERT_EQ(cli.exit_code, 0) << cli.err;
  const nlohmann::json j = nlohmann::json::parse(cli.out);
  EXPECT_EQ(j["epoch"].get<int64_t>(), s.epoch());
  EXPECT_EQ(j["placement"].size(), static_cast<size_t>(s.placement_size()));
  EXPECT_FALSE(j["balancedness"].is_null());
  EXPECT_EQ(j["rebalances"].back()["outcome"], "committed");
  // The load matrix: [MoE layer][expert] tokens per step, the skew visible.
  const ToolRun load_cli =
      RunTool("switchyard-admin", "load --addr " + cluster.coordinator_address());
  ASSERT_EQ(load_cli.exit_code, 0) << load_cli.err;
  const nlohmann::json lj = nlohmann::json::parse(load_cli.out);
  ASSERT_EQ(lj["load"].size(), static_cast<size_t>(s.placement_size()));
  const std::vector<double> row0 = lj["load"][0].get<std::vector<double>>();
  EXPECT_EQ(row0.size(), static_cast<size_t>(NumExperts("qwen3_moe")));
  EXPECT_GT(*std::max_element(row0.begin(), row0.end()), 0.0);
  EXPECT_GT(lj["window_steps"].get<int64_t>(), 0);
  // A bad policy is a usage error naming it.
  const ToolRun bad = RunTool("switchyard-admin",
                              "rebalance --policy local --addr " + cluster.coordinator_address());
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_THAT(bad.err, ::testing::HasSubstr("--policy must be global or hierarchical"));
  Progress(
      "%s: balancedness %.3f -> %.3f (predicted %.3f -> %.3f), %lld experts moved in %.2f s, "
      "%d streams, none failed",
      o.backend.c_str(), before, after, r.balancedness_before(), r.balancedness_after(),
      static_cast<long long>(r.moved_experts()), r.seconds(), load.streams.load());
}

// An operator's rebalance whose staging cannot fit (expert workers may hold
// no more than they serve) aborts: `switchyard-admin rebalance` exits 1
// naming the staging failure, the epoch stays, and serving goes on.
TEST_P(EplbClusterTest, StagingFailureAbortsAndTheOldPlacementKeepsServing) {
  const nlohmann::json c = LoadConfigJson("qwen3_moe");
  const int64_t expert_bytes =
      3 * c.at("hidden_size").get<int64_t>() * c.at("moe_intermediate_size").get<int64_t>() * 4;
  const int64_t layers = c.at("num_hidden_layers").get<int64_t>();
  ClusterOptions o;
  o.backend = GetParam();
  o.redundant_experts = 2;
  const int64_t slots = (NumExperts("qwen3_moe") + o.redundant_experts) / o.expert_workers;
  // Room for what each worker serves and half an expert more.
  o.expert_memory_limit_bytes = slots * layers * expert_bytes + expert_bytes / 2;
  Cluster cluster;
  ASSERT_TRUE(cluster.Start(o, "eplb-abort-" + o.backend).ok());
  const std::vector<GoldenPrompt> golden = LoadGolden("qwen3_moe");
  ASSERT_FALSE(golden.empty());
  SkewedLoad load;
  load.Start(cluster, golden[0], 4);
  // Load in the window first (the planner needs it).
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < std::chrono::seconds(30) && AdminStatus(cluster).window_steps() < 20) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const ToolRun run =
      RunTool("switchyard-admin", "rebalance --addr " + cluster.coordinator_address());
  const int streams_at_abort = load.streams.load();
  while (load.streams.load() < streams_at_abort + 8 &&
         Clock::now() - t0 < std::chrono::seconds(60)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  load.Join();
  EXPECT_EQ(run.exit_code, 1) << run.out << run.err;
  const nlohmann::json j = nlohmann::json::parse(run.out);
  EXPECT_EQ(j["outcome"], "aborted");
  EXPECT_THAT(j["reason"].get<std::string>(), ::testing::HasSubstr("staging epoch 2 failed"));
  EXPECT_THAT(j["reason"].get<std::string>(), ::testing::HasSubstr("RESOURCE_EXHAUSTED"));
  EXPECT_EQ(j["epoch"].get<int64_t>(), 1);
  const v1::StatusResponse s = AdminStatus(cluster);
  EXPECT_EQ(s.epoch(), 1);
  ASSERT_GE(s.rebalances_size(), 1);
  EXPECT_EQ(s.rebalances(s.rebalances_size() - 1).outcome(), "aborted");
  for (const auto& m : s.members()) {
    EXPECT_EQ(m.serving_epoch(), 1) << m.rank();
    EXPECT_EQ(m.staged_epoch(), 0) << m.rank();
  }
  EXPECT_EQ(load.failures.load(), 0) << load.first_failure;
  EXPECT_GE(load.streams.load(), streams_at_abort + 8);
  Progress("%s: rebalance aborted (%s); %d streams served, none failed", o.backend.c_str(),
           j["reason"].get<std::string>().c_str(), load.streams.load());
}

INSTANTIATE_TEST_SUITE_P(Backends, EplbClusterTest, ::testing::Values("ucx", "inproc"),
                         [](const auto& info) { return info.param; });

void AwaitMoreSteps(const Cluster& cluster, int64_t more);

// The router's grpc.health.v1 status for the whole server ("").
HealthResponse::ServingStatus RouterHealth(Cluster& cluster) {
  auto health = grpc::health::v1::Health::NewStub(cluster.channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  HealthResponse resp;
  if (!health->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp).ok()) {
    return HealthResponse::UNKNOWN;
  }
  return resp.status();
}

// Polls the router's health until it is `want` (true) or `timeout` passes.
bool AwaitRouterHealth(Cluster& cluster, HealthResponse::ServingStatus want,
                       std::chrono::seconds timeout) {
  const auto t0 = Clock::now();
  while (RouterHealth(cluster) != want) {
    if (Clock::now() - t0 > timeout) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return true;
}

// A failed generation ends with a non-OK status, never OK plus a
// FINISH_REASON_ERROR message: when an expert worker is killed (-9) in the
// middle of long streams and the survivors cannot hold its experts, every
// stream and a unary call end with UNAVAILABLE (a retry may succeed) and a
// message saying why, within a bounded time. The survivors stay: the router
// reports NOT_SERVING and refuses new requests with UNAVAILABLE until the
// mesh is whole again, which it is once the launcher restarts the killed
// worker (--restart-workers, after a delay longer than the survivors'
// wait): the replacement joins and the same requests give the goldens.
TEST(ClusterFailureTest, AMeshThatCannotServeFailsRequestsUnavailableUntilItIsWholeAgain) {
  ClusterOptions o;
  o.redundant_experts = 2;
  o.transport_timeout_ms = 5000;
  o.worker_timeout_ms = 2000;  // the workers wait 4 s for a re-formed mesh
  o.restart_workers = true;
  o.restart_delay_ms = 12000;  // well after the survivors gave up waiting
  Cluster cluster;
  const absl::Status started = cluster.Start(o, "dead-expert");
  ASSERT_TRUE(started.ok()) << started;
  const std::vector<GoldenPrompt> golden = LoadGolden("qwen3_moe");
  ASSERT_FALSE(golden.empty());
  // Every other process, to check they stay up.
  std::vector<pid_t> survivors = {cluster.CoordinatorPid()};
  for (int i = 0; i < o.attention_workers; ++i) {
    survivors.push_back(cluster.WorkerPid("switchyard-attention-worker", i));
  }
  for (int i = 1; i < o.expert_workers; ++i) {
    survivors.push_back(cluster.WorkerPid("switchyard-expert-worker", i));
  }
  for (const pid_t p : survivors) ASSERT_GT(p, 0) << Describe(ProcessesMentioning(cluster.dir()));
  // As long as the context allows, so the kill comes mid-stream.
  const int longest = LoadConfigJson("qwen3_moe").at("max_position_embeddings").get<int>() - 200;
  std::vector<v1::GenerateRequest> requests(4, GreedyRequest(golden[0].prompt, longest, {}));
  std::vector<StreamOutcome> got;
  std::thread streams([&] { got = RunStreams(cluster.stub(), requests); });
  grpc::Status unary_status;
  v1::GenerateResponse unary;
  std::thread unary_call([&] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    unary_status =
        cluster.stub()->Generate(&ctx, GreedyRequest(golden[1].prompt, longest, {}), &unary);
  });
  AwaitMoreSteps(cluster, 20);  // decoding
  const pid_t victim = cluster.WorkerPid("switchyard-expert-worker", 0);
  ASSERT_GT(victim, 0) << Describe(ProcessesMentioning(cluster.dir()));
  const auto t_kill = Clock::now();
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  streams.join();
  unary_call.join();
  const double failed_s = SecondsSince(t_kill);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].status.error_code(), grpc::StatusCode::UNAVAILABLE)
        << "stream " << i << ": " << got[i].status.error_message();
    EXPECT_THAT(got[i].status.error_message(), ::testing::HasSubstr("generation failed"));
    EXPECT_NE(got[i].finish, v1::FINISH_REASON_ERROR) << "stream " << i;
    EXPECT_GT(got[i].tokens.size(), 0u) << "stream " << i << " got no token before the kill";
    EXPECT_LT(got[i].tokens.size(), static_cast<size_t>(longest)) << "stream " << i;
  }
  EXPECT_EQ(unary_status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << unary_status.error_message();
  // Bounded: the survivors' 4 s wait plus the step's failure.
  EXPECT_LT(failed_s, 10.0);
  // Two redundant slots cannot take six lost experts: not servable, so the
  // router says NOT_SERVING and refuses new requests at once.
  EXPECT_TRUE(AwaitRouterHealth(cluster, HealthResponse::NOT_SERVING, std::chrono::seconds(5)))
      << RouterHealth(cluster);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::GenerateResponse resp;
    const auto t0 = Clock::now();
    const grpc::Status st =
        cluster.stub()->Generate(&ctx, GreedyRequest(golden[0].prompt, 8, {}), &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
    EXPECT_LT(SecondsSince(t0), 2.0);
  }
  EXPECT_THAT(ReadFile(cluster.dir() + "/logs/coordinator.log"),
              ::testing::HasSubstr("has no replica on a surviving expert worker"));
  EXPECT_THAT(ReadFile(cluster.dir() + "/logs/attention-worker-0.log"),
              ::testing::HasSubstr("waiting for the mesh to be whole again"));
  // The launcher names the worker that was killed, not a peer, and keeps
  // the rest running.
  EXPECT_THAT(ReadFile(cluster.dir() + "/launcher.stderr"),
              ::testing::HasSubstr("switchyard-local: expert-worker-0 was killed by signal 9; the "
                                   "rest keeps running"));
  // The replacement comes 12 s after the kill and makes the mesh whole.
  ASSERT_TRUE(AwaitRouterHealth(cluster, HealthResponse::SERVING, std::chrono::seconds(90)))
      << cluster.Logs();
  const double whole_s = SecondsSince(t_kill);
  for (const pid_t p : survivors) EXPECT_EQ(kill(p, 0), 0) << "process " << p << " exited";
  EXPECT_THAT(ReadFile(cluster.dir() + "/launcher.stderr"),
              ::testing::HasSubstr("restarted expert-worker-0 (restart 1)"));
  EXPECT_THAT(ReadFile(cluster.dir() + "/logs/coordinator.log"),
              ::testing::HasSubstr("(a replacement) joined"));
  std::vector<v1::GenerateRequest> after;
  for (size_t i = 0; i < 2 && i < golden.size(); ++i) {
    after.push_back(GreedyRequest(golden[i].prompt, static_cast<int>(golden[i].greedy.size()), {}));
  }
  const std::vector<StreamOutcome> served = RunStreams(cluster.stub(), after);
  for (size_t i = 0; i < served.size(); ++i) {
    EXPECT_TRUE(served[i].status.ok()) << i << ": " << served[i].status.error_message();
    EXPECT_EQ(served[i].tokens, golden[i].greedy) << i;
  }
  Progress(
      "mesh that cannot serve: %zu streams and a unary call ended UNAVAILABLE %.1f s after the "
      "kill (%s); NOT_SERVING until the replacement made it whole %.1f s after the kill",
      got.size(), failed_s, got.empty() ? "" : got[0].status.error_message().c_str(), whole_s);
}

// `n` greedy requests of `tokens` new tokens over the golden prompts in turn.
std::vector<v1::GenerateRequest> LongGreedyRequests(const std::vector<GoldenPrompt>& golden, int n,
                                                    int tokens) {
  std::vector<v1::GenerateRequest> out;
  for (int i = 0; i < n && !golden.empty(); ++i) {
    out.push_back(GreedyRequest(golden[i % golden.size()].prompt, tokens, {}));
  }
  return out;
}

// Waits (up to 20 s) until the attention workers have run `more` engine
// steps beyond the count when it was called: streams started just before
// are then decoding.
void AwaitMoreSteps(const Cluster& cluster, int64_t more) {
  int64_t before = 0;
  for (const auto& st : AllStats(cluster)) before += st.steps();
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < std::chrono::seconds(20)) {
    int64_t steps = 0;
    for (const auto& st : AllStats(cluster)) steps += st.steps();
    if (steps >= before + more) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// One attention and two expert workers, each holding every expert of
// qwen3_moe (its 16 experts twice): either expert worker can be lost.
ClusterOptions ReplicatedPair() {
  ClusterOptions o;
  o.attention_workers = 1;
  o.expert_workers = 2;
  o.redundant_experts = 16;
  o.worker_timeout_ms = 2000;
  return o;
}

// The Admin API's placement (slot ranges and every layer's experts) is the same.
void ExpectSamePlacement(const v1::StatusResponse& want, const v1::StatusResponse& got) {
  EXPECT_THAT(got.worker_slot_begin(), ::testing::ElementsAreArray(want.worker_slot_begin()));
  ASSERT_EQ(got.placement_size(), want.placement_size());
  for (int l = 0; l < got.placement_size(); ++l) {
    EXPECT_THAT(got.placement(l).phy2log(),
                ::testing::ElementsAreArray(want.placement(l).phy2log()))
        << "MoE layer " << l;
  }
}

// Every stream of `got` ended OK with the tokens of the same one in `want`.
void ExpectReferenceTokens(const std::vector<StreamOutcome>& got,
                           const std::vector<StreamOutcome>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_TRUE(got[i].status.ok()) << "stream " << i << ": " << got[i].status.error_message();
    EXPECT_EQ(got[i].tokens, want[i].tokens) << "stream " << i;
  }
}

// Every one of `members` members is in the mesh (alive, ready, neither
// dropped nor joining).
bool EveryMemberServes(const v1::StatusResponse& s, int members) {
  bool all = s.members_size() == members;
  for (const v1::AdminMember& m : s.members()) {
    all = all && m.alive() && m.ready() && !m.dropped() && !m.joining();
  }
  return all;
}

// Streams of `requests` with a process of the cluster signalled mid-way:
// once they decode (20 more engine steps), `sig` goes to the PID `victim()`
// names, `meanwhile` runs while the streams go on, and this returns when
// every stream has ended.
struct SignalledRun {
  std::vector<StreamOutcome> outcomes;
  pid_t victim = -1;  // -1: there was none to signal (a test failure)
  Clock::time_point started, signalled;
};
SignalledRun StreamsAcrossASignal(Cluster& cluster,
                                  const std::vector<v1::GenerateRequest>& requests,
                                  const std::function<pid_t()>& victim, int sig,
                                  const std::function<void()>& meanwhile = {}) {
  SignalledRun r;
  r.started = Clock::now();
  std::thread streams([&] { r.outcomes = RunStreams(cluster.stub(), requests); });
  AwaitMoreSteps(cluster, 20);
  r.victim = victim();
  if (r.victim <= 0) {
    ADD_FAILURE() << "no process to signal\n" << Describe(ProcessesMentioning(cluster.dir()));
  } else {
    r.signalled = Clock::now();
    EXPECT_EQ(kill(r.victim, sig), 0);
    if (meanwhile) meanwhile();
  }
  streams.join();
  return r;
}

// Four greedy streams as long as qwen3_moe's context allows, run once on a
// healthy cluster: the reference a failover run must reproduce token for
// token (checked OK and equal to the goldens' prefix; empty on failure).
struct FailoverRun {
  int longest = 0;
  std::vector<v1::GenerateRequest> requests;
  std::vector<StreamOutcome> reference;
};
FailoverRun PrepareFailover(Cluster& cluster) {
  FailoverRun run;
  const std::vector<GoldenPrompt> golden = LoadGolden("qwen3_moe");
  run.longest = LoadConfigJson("qwen3_moe").at("max_position_embeddings").get<int>() - 200;
  run.requests = LongGreedyRequests(golden, 4, run.longest);
  std::vector<StreamOutcome> ref = RunStreams(cluster.stub(), run.requests);
  for (size_t i = 0; i < ref.size(); ++i) {
    const auto& want = golden[i % golden.size()].greedy;
    EXPECT_TRUE(ref[i].status.ok()) << i << ": " << ref[i].status.error_message();
    if (!ref[i].status.ok() || ref[i].tokens.size() < want.size() ||
        !std::equal(want.begin(), want.end(), ref[i].tokens.begin())) {
      ADD_FAILURE() << "reference stream " << i << " is not the goldens' greedy continuation";
      return run;
    }
  }
  run.reference = std::move(ref);
  return run;
}

// An expert worker killed (SIGKILL) or frozen (SIGSTOP) mid-stream when the
// other holds a replica of every expert: the coordinator re-forms the mesh
// over the survivor (a killed worker is found when a step fails and the
// health check gets no answer; a frozen one when its heartbeats stop, well
// before the 30 s transport timeout), the attention worker retries the
// interrupted step, and every stream finishes OK with exactly the tokens of
// the same requests run before (greedy); the launcher keeps the cluster
// running and it serves on. A frozen worker that resumes finds itself
// dropped and exits.
void ExpectStreamsSurviveALostExpertWorker(int sig, const std::string& name) {
  ClusterOptions o = ReplicatedPair();
  Cluster cluster;
  const absl::Status started = cluster.Start(o, name);
  ASSERT_TRUE(started.ok()) << started;
  const FailoverRun run = PrepareFailover(cluster);
  ASSERT_EQ(run.reference.size(), 4u);
  const SignalledRun cut = StreamsAcrossASignal(
      cluster, run.requests, [&] { return cluster.WorkerPid("switchyard-expert-worker", 1); }, sig);
  ASSERT_GT(cut.victim, 0);
  const pid_t victim = cut.victim;
  const double total_s = SecondsSince(cut.started), after_kill_s = SecondsSince(cut.signalled);
  const std::vector<StreamOutcome>& got = cut.outcomes;
  ExpectReferenceTokens(got, run.reference);
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].finish, v1::FINISH_REASON_LENGTH) << "stream " << i;
  }
  // Still serving, on the survivor.
  ExpectReferenceTokens(RunStreams(cluster.stub(), {run.requests[0]}), {run.reference[0]});
  const std::string coordinator_log = ReadFile(cluster.dir() + "/logs/coordinator.log");
  EXPECT_THAT(coordinator_log, ::testing::HasSubstr("mesh re-formed at epoch"));
  EXPECT_THAT(coordinator_log, ::testing::HasSubstr("without ranks 2"));
  if (sig == SIGSTOP) {
    EXPECT_THAT(coordinator_log, ::testing::HasSubstr("missed heartbeats"));
    ASSERT_EQ(kill(victim, SIGCONT), 0);
    // It sees itself dropped and stops; the launcher logs it and goes on.
    const auto t_cont = Clock::now();
    while (ReadFile(cluster.dir() + "/launcher.stderr").find("expert-worker-1 exited") ==
               std::string::npos &&
           Clock::now() - t_cont < std::chrono::seconds(20)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  // The kill came mid-stream: a step failed and was retried on the new mesh.
  const std::string aw_log = ReadFile(cluster.dir() + "/logs/attention-worker-0.log");
  EXPECT_THAT(aw_log, ::testing::HasSubstr("kept for the retry"));
  EXPECT_THAT(aw_log, ::testing::HasSubstr("retrying the step"));
  for (absl::string_view line : absl::StrSplit(coordinator_log, '\n')) {
    if (absl::StrContains(line, "mesh re-formed")) Progress("%s", std::string(line).c_str());
  }
  EXPECT_THAT(ReadFile(cluster.dir() + "/launcher.stderr"),
              ::testing::HasSubstr(sig == SIGKILL ? "expert-worker-1 was killed by signal 9; "
                                                    "the rest keeps running"
                                                  : "expert-worker-1 exited with status 1; the "
                                                    "rest keeps running"));
  Progress(
      "%s: %zu streams of %d tokens finished with the reference tokens; %.1f s in all, "
      "%.1f s from the signal to the end",
      name.c_str(), got.size(), run.longest, total_s, after_kill_s);
}

TEST(ClusterFailoverTest, StreamsSurviveAKilledExpertWorker) {
  ExpectStreamsSurviveALostExpertWorker(SIGKILL, "failover-kill");
}

TEST(ClusterFailoverTest, StreamsSurviveAFrozenExpertWorker) {
  ExpectStreamsSurviveALostExpertWorker(SIGSTOP, "failover-freeze");
}

// switchyard-local --restart-workers: an expert worker killed mid-stream is
// restarted and joins the running mesh as a replacement. The streams under
// way finish with the reference tokens on the survivor; the replacement
// loads, is admitted at a new epoch with no slots, and the coordinator moves
// its experts back (the placement from before the kill, a "rejoin"
// re-placement); the same requests then give the same tokens again, now
// served by both expert workers.
TEST(ClusterFailoverTest, ARestartedExpertWorkerRejoinsAndGetsItsExpertsBack) {
  ClusterOptions o = ReplicatedPair();
  o.restart_workers = true;
  Cluster cluster;
  const absl::Status started = cluster.Start(o, "rejoin");
  ASSERT_TRUE(started.ok()) << started;
  const v1::StatusResponse before = AdminStatus(cluster);
  const FailoverRun run = PrepareFailover(cluster);
  ASSERT_EQ(run.reference.size(), 4u);
  const SignalledRun cut = StreamsAcrossASignal(
      cluster, run.requests, [&] { return cluster.WorkerPid("switchyard-expert-worker", 1); },
      SIGKILL);
  ASSERT_GT(cut.victim, 0);
  const auto t_kill = cut.signalled;
  ExpectReferenceTokens(cut.outcomes, run.reference);
  // The replacement joins and the experts move back.
  v1::StatusResponse now;
  bool restored = false;
  while (!restored && Clock::now() - t_kill < std::chrono::seconds(90)) {
    now = AdminStatus(cluster);
    for (const v1::RebalanceRecord& r : now.rebalances()) {
      restored |= r.trigger() == "rejoin" && r.outcome() == "committed";
    }
    if (!restored) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const double restored_s = SecondsSince(t_kill);
  ASSERT_TRUE(restored) << "no rejoin re-placement committed\n" << cluster.Logs();
  EXPECT_TRUE(EveryMemberServes(now, 3)) << now.ShortDebugString();
  EXPECT_GT(now.epoch(), before.epoch());
  ExpectSamePlacement(before, now);
  ExpectReferenceTokens(RunStreams(cluster.stub(), run.requests), run.reference);
  const std::string launcher = ReadFile(cluster.dir() + "/launcher.stderr");
  EXPECT_THAT(launcher, ::testing::HasSubstr("restarted expert-worker-1 (restart 1)"));
  const std::string coordinator_log = ReadFile(cluster.dir() + "/logs/coordinator.log");
  EXPECT_THAT(coordinator_log, ::testing::HasSubstr("(a replacement) joined"));
  const std::string ew_log = ReadFile(cluster.dir() + "/logs/expert-worker-1.log");
  EXPECT_THAT(ew_log, ::testing::HasSubstr("waiting to be admitted to the mesh"));
  EXPECT_THAT(ew_log, ::testing::HasSubstr("expert worker 1: serving placement epoch"));
  Progress(
      "rejoin: streams finished on the survivor; replacement admitted and its experts back "
      "%.1f s after the kill",
      restored_s);
}

// The same for an attention worker: killed mid-stream with
// --restart-workers, its streams are re-submitted to the other and every
// stream finishes with the reference tokens; the restarted one is admitted to the mesh, the router
// sends it requests again, and they give the reference tokens.
TEST(ClusterFailoverTest, ARestartedAttentionWorkerRejoinsAndServes) {
  ClusterOptions o;
  o.attention_workers = 2;
  o.expert_workers = 2;
  o.worker_timeout_ms = 2000;
  o.restart_workers = true;
  Cluster cluster;
  const absl::Status started = cluster.Start(o, "aw-rejoin");
  ASSERT_TRUE(started.ok()) << started;
  const FailoverRun run = PrepareFailover(cluster);
  ASSERT_EQ(run.reference.size(), 4u);
  const SignalledRun cut = StreamsAcrossASignal(
      cluster, run.requests, [&] { return cluster.WorkerPid("switchyard-attention-worker", 1); },
      SIGKILL);
  ASSERT_GT(cut.victim, 0);
  const auto t_kill = cut.signalled;
  ExpectReferenceTokens(cut.outcomes, run.reference);
  // Admitted again: every member in the mesh, ready.
  bool whole = false;
  while (!whole && Clock::now() - t_kill < std::chrono::seconds(90)) {
    whole = EveryMemberServes(AdminStatus(cluster), 4);
    if (!whole) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const double rejoined_s = SecondsSince(t_kill);
  ASSERT_TRUE(whole) << "the restarted attention worker was not admitted\n" << cluster.Logs();
  // The router follows the mesh: new requests reach the restarted worker
  // too (least outstanding work spreads concurrent streams over both), and
  // every one gives the reference tokens.
  int64_t served_by_restarted = 0;
  for (int attempt = 0; attempt < 20 && served_by_restarted == 0; ++attempt) {
    std::atomic<bool> done{false};
    std::vector<StreamOutcome> after;
    std::thread again([&] {
      after = RunStreams(cluster.stub(), run.requests);
      done.store(true);
    });
    while (!done.load()) {
      const std::vector<internal::WorkerStats> stats = AllStats(cluster);
      if (stats.size() == 2)
        served_by_restarted = std::max(served_by_restarted, stats[1].running());
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    again.join();
    ExpectReferenceTokens(after, run.reference);
  }
  EXPECT_GT(served_by_restarted, 0) << "the router sent the restarted worker nothing";
  EXPECT_THAT(ReadFile(cluster.dir() + "/launcher.stderr"),
              ::testing::HasSubstr("restarted attention-worker-1 (restart 1)"));
  EXPECT_THAT(ReadFile(cluster.dir() + "/logs/attention-worker-1.log"),
              ::testing::HasSubstr("waiting to be admitted to the mesh"));
  EXPECT_THAT(ReadFile(cluster.dir() + "/logs/coordinator.log"),
              ::testing::HasSubstr("rank 1 (a replacement) joined"));
  Progress("aw-rejoin: the restarted attention worker was admitted %.1f s after the kill",
           rejoined_s);
}

// switchyard-local --restart-coordinator: the coordinator killed mid-stream.
// The workers serve on without it: the streams under way finish with the
// reference tokens, and a request sent while it is down is served (the
// router keeps the attention workers it knows). The restarted coordinator
// comes up empty; every worker registers again with what it serves, and it
// rebuilds the mesh (the same epoch and placement, every member ready).
// Then it does its job: an expert worker killed mid-stream is dropped and
// the streams finish with the reference tokens on the survivor.
TEST(ClusterFailoverTest, ARestartedCoordinatorRebuildsTheMeshFromTheWorkers) {
  ClusterOptions o = ReplicatedPair();
  o.restart_coordinator = true;
  Cluster cluster;
  const absl::Status started = cluster.Start(o, "coordinator-restart");
  ASSERT_TRUE(started.ok()) << started;
  const v1::StatusResponse before = AdminStatus(cluster);
  const FailoverRun run = PrepareFailover(cluster);
  ASSERT_EQ(run.reference.size(), 4u);
  // The restarted coordinator re-learns the mesh (watched from the kill on,
  // while the streams go on).
  v1::StatusResponse now;
  bool rebuilt = false;
  double rebuilt_s = 0;
  std::thread watch;
  const SignalledRun cut = StreamsAcrossASignal(
      cluster, run.requests, [&] { return cluster.CoordinatorPid(); }, SIGKILL,
      [&] {
        const auto t_kill = Clock::now();
        watch = std::thread([&, t_kill] {
          while (!rebuilt && Clock::now() - t_kill < std::chrono::seconds(60)) {
            // A channel per attempt: one made while the coordinator is down
            // backs off for seconds after it is back.
            auto admin = v1::Admin::NewStub(grpc::CreateChannel(
                cluster.coordinator_address(), grpc::InsecureChannelCredentials()));
            grpc::ClientContext ctx;
            ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
            now.Clear();
            rebuilt =
                admin->Status(&ctx, v1::StatusRequest(), &now).ok() && EveryMemberServes(now, 3);
            if (!rebuilt) std::this_thread::sleep_for(std::chrono::milliseconds(20));
          }
          rebuilt_s = SecondsSince(t_kill);
        });
        // Served while the coordinator is down.
        ExpectReferenceTokens(RunStreams(cluster.stub(), {run.requests[1]}), {run.reference[1]});
      });
  if (watch.joinable()) watch.join();
  ASSERT_GT(cut.victim, 0);
  ExpectReferenceTokens(cut.outcomes, run.reference);
  ASSERT_TRUE(rebuilt) << "the restarted coordinator did not rebuild the mesh\n" << cluster.Logs();
  EXPECT_EQ(now.epoch(), before.epoch());
  ExpectSamePlacement(before, now);
  const std::string launcher = ReadFile(cluster.dir() + "/launcher.stderr");
  EXPECT_THAT(launcher, ::testing::HasSubstr("restarted coordinator (restart 1)"));
  const std::string coordinator_log = ReadFile(cluster.dir() + "/logs/coordinator.log");
  EXPECT_THAT(coordinator_log, ::testing::HasSubstr("this coordinator restarted; rebuilding"));
  EXPECT_THAT(coordinator_log, ::testing::HasSubstr("the mesh is recovered at epoch"));
  // It does its job: the failover of a killed expert worker.
  const SignalledRun failover = StreamsAcrossASignal(
      cluster, run.requests, [&] { return cluster.WorkerPid("switchyard-expert-worker", 1); },
      SIGKILL);
  ASSERT_GT(failover.victim, 0);
  ExpectReferenceTokens(failover.outcomes, run.reference);
  EXPECT_THAT(ReadFile(cluster.dir() + "/logs/coordinator.log"),
              ::testing::HasSubstr("without ranks 2"));
  Progress(
      "coordinator-restart: streams and a request during the outage served; the mesh "
      "rebuilt %.1f s after the kill; a later failover worked",
      rebuilt_s);
}

// kill -9 of one of two attention workers mid-stream: the expert workers'
// step fails, the coordinator drops it and re-forms the mesh, and the other
// attention worker's streams finish OK with the tokens of a run without the
// kill. The router re-submits the dead one's streams to the survivor (the
// prompt plus the tokens already streamed), so they too finish OK with the
// reference tokens, no gap or duplicate; new requests are served by the
// survivor.
TEST(ClusterFailoverTest, TheOtherAttentionWorkerServesOnAfterOneDies) {
  ClusterOptions o;
  o.attention_workers = 2;
  o.expert_workers = 2;
  o.worker_timeout_ms = 2000;
  Cluster cluster;
  const absl::Status started = cluster.Start(o, "aw-failover");
  ASSERT_TRUE(started.ok()) << started;
  const FailoverRun run = PrepareFailover(cluster);
  ASSERT_EQ(run.reference.size(), 4u);
  const std::vector<v1::GenerateRequest>& requests = run.requests;
  const std::vector<StreamOutcome>& reference = run.reference;
  const SignalledRun cut = StreamsAcrossASignal(
      cluster, requests, [&] { return cluster.WorkerPid("switchyard-attention-worker", 1); },
      SIGKILL);
  ASSERT_GT(cut.victim, 0);
  const std::vector<StreamOutcome>& got = cut.outcomes;
  ExpectReferenceTokens(got, reference);
  // Some streams were on the killed worker and went on on the survivor.
  const std::string router_log = ReadFile(cluster.dir() + "/logs/router.log");
  int resubmitted = 0;
  for (size_t at = router_log.find("re-submitting it to"); at != std::string::npos;
       at = router_log.find("re-submitting it to", at + 1)) {
    ++resubmitted;
  }
  EXPECT_GT(resubmitted, 0) << "no stream was on the killed attention worker";
  // The survivor serves new requests (the router follows the mesh).
  std::vector<StreamOutcome> after;
  for (int attempt = 0; attempt < 50; ++attempt) {
    after = RunStreams(cluster.stub(), {requests[0], requests[1]});
    if (after[0].status.ok() && after[1].status.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ExpectReferenceTokens(after, {reference[0], reference[1]});
  EXPECT_THAT(ReadFile(cluster.dir() + "/logs/coordinator.log"),
              ::testing::HasSubstr("without ranks 1"));
  Progress(
      "attention-worker failover: %zu streams finished with the reference tokens, %d of them "
      "re-submitted by the router from the killed worker",
      got.size(), resubmitted);
}

// Polls the Admin API (a channel per attempt: one made while the
// coordinator is down backs off for seconds after it is back) until every
// one of `members` serves and no re-placement runs; false after `timeout`.
bool AwaitWhole(const Cluster& cluster, int members, std::chrono::seconds timeout,
                v1::StatusResponse* out) {
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < timeout) {
    auto admin = v1::Admin::NewStub(
        grpc::CreateChannel(cluster.coordinator_address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    out->Clear();
    if (admin->Status(&ctx, v1::StatusRequest(), out).ok() && EveryMemberServes(*out, members) &&
        !out->rebalancing()) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// A chaos run: a local cluster (`attention_workers` attention workers, 2
// expert workers each holding every expert, --restart-workers
// --restart-coordinator) under concurrent streaming load while a seeded
// driver (SY_CHAOS_SEED, printed; SY_CHAOS_KILLS kills, default 6) kills,
// one at a time at random moments, an expert worker, an attention worker or
// the coordinator; the launcher restarts each and the driver waits for the
// mesh to be whole before the next. A probe request sent at each kill
// measures the time to its first token. Invariants at the end: every
// accepted stream either finished OK with the reference tokens (greedy: the
// goldens' continuation) or ended with UNAVAILABLE (a re-submission that ran
// out of attention workers); none hung or came back wrong; only the killed
// processes exited (the launcher logged each kill and nothing else); every
// KV block is free on every attention worker; nothing is staged; the
// placement holds every expert in every MoE layer.
void RunChaos(int attention_workers) {
  const uint64_t seed = [] {
    const char* v = std::getenv("SY_CHAOS_SEED");
    return v != nullptr ? std::strtoull(v, nullptr, 0) : 20261202ull;
  }();
  const int kills = [] {
    const char* v = std::getenv("SY_CHAOS_KILLS");
    return v != nullptr ? std::atoi(v) : 6;
  }();
  ClusterOptions o = ReplicatedPair();
  o.attention_workers = attention_workers;
  o.restart_workers = true;
  o.restart_coordinator = true;
  Cluster cluster;
  const absl::Status started = cluster.Start(o, "chaos");
  ASSERT_TRUE(started.ok()) << started;
  const int members = o.attention_workers + o.expert_workers;
  const v1::StatusResponse initial = AdminStatus(cluster);
  const std::vector<GoldenPrompt> golden = LoadGolden("qwen3_moe");
  ASSERT_FALSE(golden.empty());
  constexpr int kTokens = 48;
  // The reference: each golden prompt's greedy continuation, from the
  // healthy cluster (its prefix checked against the goldens).
  std::vector<v1::GenerateRequest> requests;
  for (const auto& g : golden) requests.push_back(GreedyRequest(g.prompt, kTokens, {}));
  const std::vector<StreamOutcome> reference = RunStreams(cluster.stub(), requests);
  for (size_t i = 0; i < reference.size(); ++i) {
    ASSERT_TRUE(reference[i].status.ok()) << reference[i].status.error_message();
    const auto& want = golden[i].greedy;
    const size_t n = std::min(want.size(), reference[i].tokens.size());
    ASSERT_TRUE(std::equal(want.begin(), want.begin() + n, reference[i].tokens.begin())) << i;
  }

  // The load: four clients, one stream at a time each, round the prompts.
  std::atomic<bool> stop{false};
  std::mutex mu;
  int ok = 0, unavailable = 0;
  std::vector<std::string> bad;  // anything else: a lost or wrong request
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (size_t i = c; !stop.load(); ++i) {
        const size_t p = i % requests.size();
        StreamOutcome r = RunStream(cluster.stub(), requests[p],
                                    {std::chrono::milliseconds(120000), -1, {}, -1, {}});
        std::lock_guard<std::mutex> lock(mu);
        if (r.status.ok() && r.tokens == reference[p].tokens) {
          ++ok;
        } else if (r.status.error_code() == grpc::StatusCode::UNAVAILABLE) {
          ++unavailable;
          std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a client backs off
        } else {
          bad.push_back(absl::StrCat("prompt ", p, ": code ", r.status.error_code(), " (",
                                     r.status.error_message(), "), ", r.tokens.size(), " tokens",
                                     r.status.ok() ? ", not the reference's" : ""));
        }
      }
    });
  }
  std::mt19937_64 rng(seed);
  std::vector<double> first_token_s;
  std::vector<std::string> victims;
  bool whole = true;
  v1::StatusResponse status;
  for (int k = 0; k < kills && whole; ++k) {
    // A random moment, then a random victim.
    std::this_thread::sleep_for(std::chrono::milliseconds(500 + rng() % 2500));
    const int what = static_cast<int>(rng() % 3);
    const int index = static_cast<int>(rng() % (what == 1 ? o.attention_workers : 2));
    const pid_t pid = what == 0   ? cluster.WorkerPid("switchyard-expert-worker", index)
                      : what == 1 ? cluster.WorkerPid("switchyard-attention-worker", index)
                                  : cluster.CoordinatorPid();
    const std::string name = what == 0   ? absl::StrCat("expert-worker-", index)
                             : what == 1 ? absl::StrCat("attention-worker-", index)
                                         : std::string("coordinator");
    ASSERT_GT(pid, 0) << name << "\n" << Describe(ProcessesMentioning(cluster.dir()));
    // Whole again means: the launcher restarted it, and then every member
    // serves (before the restart, the members may not yet know it is gone).
    auto restarts = [&] {
      const std::string log = ReadFile(cluster.dir() + "/launcher.stderr");
      int n = 0;
      for (size_t at = 0; (at = log.find("restarted " + name + " (", at)) != std::string::npos;
           ++at) {
        ++n;
      }
      return n;
    };
    const int restarts_before = restarts();
    const auto t_kill = Clock::now();
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    victims.push_back(name);
    // A client retrying from the kill on (UNAVAILABLE while no attention
    // worker is up): the time to its first token is the outage it sees.
    StreamOutcome probe;
    double probe_first_s = -1;
    while (Clock::now() - t_kill < std::chrono::seconds(60)) {
      const double attempt_s = SecondsSince(t_kill);
      probe = RunStream(cluster.stub(), requests[k % requests.size()],
                        {std::chrono::milliseconds(120000), -1, {}, -1, {}});
      if (probe.first_token_s >= 0) {
        probe_first_s = attempt_s + probe.first_token_s;
        break;
      }
      EXPECT_EQ(probe.status.error_code(), grpc::StatusCode::UNAVAILABLE)
          << name << ": " << probe.status.error_message();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (probe_first_s >= 0) {
      first_token_s.push_back(probe_first_s);
    } else {
      ADD_FAILURE() << "no token within 60 s of killing " << name << ": "
                    << probe.status.error_message();
    }
    while (restarts() == restarts_before && Clock::now() - t_kill < std::chrono::seconds(90)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    whole = AwaitWhole(cluster, members, std::chrono::seconds(90), &status);
    EXPECT_TRUE(whole) << "not whole again after killing " << name << " (rebalancing "
                       << status.rebalancing() << ")\n"
                       << cluster.Logs();
    Progress(
        "chaos: killed %s; a retrying client's first token %.2f s after the kill; whole "
        "again %.1f s after it",
        name.c_str(), probe_first_s, SecondsSince(t_kill));
  }
  stop.store(true);
  for (auto& t : clients) t.join();
  ASSERT_TRUE(whole);

  // Accepted requests: finished right, or a clean UNAVAILABLE; none lost.
  EXPECT_TRUE(bad.empty()) << bad.size() << " requests lost or wrong, first: " << bad[0];
  EXPECT_GT(ok, 0);
  // Only the killed processes exited, each restarted.
  const std::string launcher = ReadFile(cluster.dir() + "/launcher.stderr");
  int killed = 0, exited = 0;
  for (absl::string_view line : absl::StrSplit(launcher, '\n')) {
    killed += absl::StrContains(line, "was killed by signal 9") ? 1 : 0;
    exited += absl::StrContains(line, " exited ") ? 1 : 0;
  }
  EXPECT_EQ(killed, static_cast<int>(victims.size())) << launcher;
  EXPECT_EQ(exited, 0) << launcher;
  // Nothing leaked: KV blocks free, nothing staged; the placement is valid.
  for (const auto& st : AllStats(cluster)) {
    EXPECT_EQ(st.kv_blocks_free(), st.kv_blocks_total());
    EXPECT_EQ(st.running() + st.waiting(), 0);
  }
  for (const auto& m : status.members()) EXPECT_EQ(m.staged_epoch(), 0) << m.rank();
  // Every MoE layer still holds every logical expert it held at the start.
  ASSERT_EQ(status.placement_size(), initial.placement_size());
  for (int l = 0; l < status.placement_size(); ++l) {
    const auto& was = initial.placement(l).phy2log();
    const auto& now = status.placement(l).phy2log();
    EXPECT_EQ(std::set<int64_t>(now.begin(), now.end()), std::set<int64_t>(was.begin(), was.end()))
        << "MoE layer " << l;
  }
  std::sort(first_token_s.begin(), first_token_s.end());
  const double p50 = first_token_s.empty() ? -1 : first_token_s[first_token_s.size() / 2];
  const double worst = first_token_s.empty() ? -1 : first_token_s.back();
  Progress(
      "chaos (seed %llu): %zu kills (%s); %d streams OK with the reference tokens, %d "
      "UNAVAILABLE, %zu lost or wrong; kill to a retrying client's first token p50 %.2f s, max "
      "%.2f s",
      static_cast<unsigned long long>(seed), victims.size(), absl::StrJoin(victims, ", ").c_str(),
      ok, unavailable, bad.size(), p50, worst);
}

// Two attention workers: killing one leaves the other serving (the expert
// workers' unfinished sends to it must not fail its next step).
TEST(ClusterChaosTest, SeededKillsWithTwoAttentionWorkersLoseNoAcceptedRequest) { RunChaos(2); }

// One attention worker: killing it leaves the expert workers with a mesh of
// no attention worker until its replacement is admitted (they must wait for
// it, not step on empty).
TEST(ClusterChaosTest, SeededKillsWithOneAttentionWorkerLoseNoAcceptedRequest) { RunChaos(1); }

// A router process of `cluster` beside the launcher's (which stops the
// cluster when its own router dies): `switchyard-router --config` on `port`,
// logging to the cluster's logs folder. Dies with the test; the caller
// kills it before the cluster stops.
pid_t StartExtraRouter(const Cluster& cluster, int port, const std::string& name) {
  const std::string bin = std::string(SY_BINARY_DIR) + "/bin/switchyard-router";
  const std::string listen = "127.0.0.1:" + std::to_string(port);
  const std::string yaml = cluster.dir() + "/cluster.yaml";
  const std::string log = cluster.dir() + "/logs/" + name + ".log";
  // The cluster's router serves metrics.router_port; this one none.
  std::vector<std::string> argv_s = {bin,    "--config",       yaml, "--listen",
                                     listen, "--metrics-port", "0"};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    dup2(fd, STDERR_FILENO);
    dup2(fd, STDOUT_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(fd);
  return pid;
}

// Waits until the router at `address` reports SERVING.
bool AwaitRouterServing(const std::string& address, std::chrono::seconds timeout) {
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < timeout) {
    auto health = grpc::health::v1::Health::NewStub(
        grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    HealthResponse resp;
    if (health->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp).ok() &&
        resp.status() == HealthResponse::SERVING) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// A router dies mid-stream: the client retries the request (same request_id)
// through another router, and the stream it gets is the whole generation,
// equal to the healthy cluster's, from the one execution the first router
// started (the attention worker kept it running without a stream and the
// retry attached to it, or it had finished and the retry got its kept
// output). A retry after the finish gets the kept output again; another
// request under the id is ALREADY_EXISTS; nothing stays held.
TEST(ClusterRouterFailoverTest, ARetryThroughAnotherRouterIsNotExecutedTwice) {
  ClusterOptions o = ReplicatedPair();
  o.attention_workers = 2;  // the retry must find the worker that holds the request
  Cluster cluster;
  const absl::Status started = cluster.Start(o, "router-failover");
  ASSERT_TRUE(started.ok()) << started;
  const int ports = AllocatePortRange(2);
  ASSERT_GE(ports, 0);
  const pid_t first = StartExtraRouter(cluster, ports, "router-a");
  const pid_t second = StartExtraRouter(cluster, ports + 1, "router-b");
  ASSERT_GT(first, 0);
  ASSERT_GT(second, 0);
  const std::string addr_a = "127.0.0.1:" + std::to_string(ports);
  const std::string addr_b = "127.0.0.1:" + std::to_string(ports + 1);
  ASSERT_TRUE(AwaitRouterServing(addr_a, std::chrono::seconds(60))) << cluster.Logs();
  ASSERT_TRUE(AwaitRouterServing(addr_b, std::chrono::seconds(60))) << cluster.Logs();
  auto stub_a =
      v1::Generate::NewStub(grpc::CreateChannel(addr_a, grpc::InsecureChannelCredentials()));
  auto stub_b =
      v1::Generate::NewStub(grpc::CreateChannel(addr_b, grpc::InsecureChannelCredentials()));

  constexpr int kTokens = 300;
  const std::vector<int32_t> prompt = {1, 7, 42, 100, 3, 9};
  const StreamOutcome reference = RunStream(cluster.stub(), GreedyRequest(prompt, kTokens, {}));
  ASSERT_TRUE(reference.status.ok()) << reference.status.error_message();
  ASSERT_EQ(reference.tokens.size(), static_cast<size_t>(kTokens));

  v1::GenerateRequest request = GreedyRequest(prompt, kTokens, {});
  request.set_request_id("client-retry-1");
  StreamOptions kill_router;
  kill_router.hook_after_tokens = 5;
  kill_router.hook = [&] { kill(first, SIGKILL); };
  const StreamOutcome cut = RunStream(stub_a.get(), request, kill_router);
  EXPECT_FALSE(cut.status.ok());
  EXPECT_LT(cut.tokens.size(), static_cast<size_t>(kTokens));
  int status = 0;
  EXPECT_EQ(waitpid(first, &status, 0), first);

  const StreamOutcome retry = RunStream(stub_b.get(), request);
  ASSERT_TRUE(retry.status.ok()) << retry.status.error_message();
  EXPECT_EQ(retry.tokens, reference.tokens);
  EXPECT_EQ(retry.finish, v1::FINISH_REASON_LENGTH);
  int64_t attached = 0, replayed = 0;
  for (const auto& st : AllStats(cluster)) {
    attached += st.dedup_attached();
    replayed += st.dedup_replayed();
  }
  EXPECT_EQ(attached + replayed, 1) << "the retry started the generation again";
  Progress(
      "router failover: the first stream got %zu tokens before its router died; the retry "
      "%s (%zu tokens, equal to the healthy cluster's)",
      cut.tokens.size(), attached == 1 ? "attached to the running request" : "got the kept output",
      retry.tokens.size());

  // After the finish: the kept output again, without running it.
  const StreamOutcome again = RunStream(stub_b.get(), request);
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_EQ(again.tokens, reference.tokens);
  replayed = 0;
  for (const auto& st : AllStats(cluster)) replayed += st.dedup_replayed();
  EXPECT_EQ(attached + replayed, 2);
  // Another request under the id is refused.
  v1::GenerateRequest other = GreedyRequest({1, 2, 3}, 4, {});
  other.set_request_id("client-retry-1");
  const StreamOutcome refused = RunStream(stub_b.get(), other);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::ALREADY_EXISTS)
      << refused.status.error_message();
  for (const auto& st : AllStats(cluster)) {
    EXPECT_EQ(st.kv_blocks_free(), st.kv_blocks_total());
    EXPECT_EQ(st.detached(), 0);
    EXPECT_EQ(st.running() + st.waiting(), 0);
  }
  kill(second, SIGKILL);
  waitpid(second, &status, 0);
}

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif

// Resident memory of `pid` in KiB (0 if it is gone).
int64_t RssKib(pid_t pid) {
  const std::string status = ReadFile("/proc/" + std::to_string(pid) + "/status");
  const size_t at = status.find("VmRSS:");
  return at == std::string::npos ? 0 : std::atoll(status.c_str() + at + 6);
}

// The cluster's processes by name (the binary and its --index), with their
// resident memory.
std::map<std::string, std::pair<pid_t, int64_t>> ClusterRss(const Cluster& cluster) {
  std::map<std::string, std::pair<pid_t, int64_t>> out;
  for (pid_t p : ProcessesMentioning(cluster.dir() + "/cluster.yaml")) {
    std::string cmdline = ReadFile("/proc/" + std::to_string(p) + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    const std::string bin = cmdline.substr(0, cmdline.find(' '));
    std::string name = fs::path(bin).filename().string();
    const size_t index = cmdline.find("--index ");
    if (index != std::string::npos) name += "-" + cmdline.substr(index + 8, 1);
    out[name] = {p, RssKib(p)};
  }
  return out;
}

// Every attention worker idle: nothing running, waiting or detached, every
// KV block free; false after `timeout`.
bool AwaitAttentionIdle(const Cluster& cluster, std::chrono::seconds timeout) {
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < timeout) {
    bool idle = true;
    for (const auto& st : AllStats(cluster)) {
      idle = idle && st.running() + st.waiting() + st.detached() == 0 &&
             st.kv_blocks_free() == st.kv_blocks_total();
    }
    if (idle) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// A soak (SY_SOAK_SECONDS, default 90; SY_SOAK_SEED): eight clients stream
// the golden prompts at 8-200 new tokens against attention workers whose KV
// cache is far smaller than the load's worst case (so sequences are
// preempted and recomputed all along), each request at random either run
// to the end, cancelled after a random number of tokens, given a random
// short deadline, or sent unary with a fresh request_id and sent again
// (the second answered from the kept output). Invariants: a request that
// finished has the reference tokens; a cancelled one ends CANCELLED, one
// past its deadline DEADLINE_EXCEEDED (or finished in time, right); no
// other status; at the end every attention worker is idle with every KV
// block free and nothing detached, no process exited, and every process's
// resident memory is back within 10% + 16 MiB of what it was after a
// warm-up round of the same load.
TEST(ClusterSoakTest, RandomCancellationsAndDeadlinesLeaveNothingBehind) {
  const int seconds = [] {
    const char* v = std::getenv("SY_SOAK_SECONDS");
    return v != nullptr ? std::atoi(v) : 90;
  }();
  const uint64_t seed = [] {
    const char* v = std::getenv("SY_SOAK_SEED");
    return v != nullptr ? std::strtoull(v, nullptr, 0) : 20261203ull;
  }();
  ClusterOptions o = ReplicatedPair();
  o.attention_workers = 2;
  o.kv_blocks = 40;  // 640 tokens per attention worker: a few long requests fill it
  Cluster cluster;
  const absl::Status started = cluster.Start(o, "soak");
  ASSERT_TRUE(started.ok()) << started;
  const std::vector<GoldenPrompt> golden = LoadGolden("qwen3_moe");
  ASSERT_FALSE(golden.empty());
  const std::vector<int> lengths = {8, 48, 200};
  // The reference tokens of every prompt at the longest length, one at a
  // time (no KV pressure); shorter requests are their prefixes.
  std::vector<std::vector<int32_t>> reference;
  for (const auto& g : golden) {
    const StreamOutcome r = RunStream(cluster.stub(), GreedyRequest(g.prompt, lengths.back(), {}));
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    const size_t n = std::min(g.greedy.size(), r.tokens.size());
    ASSERT_TRUE(std::equal(g.greedy.begin(), g.greedy.begin() + n, r.tokens.begin()));
    reference.push_back(r.tokens);
  }

  struct Counts {
    int finished = 0, cancelled = 0, deadline = 0, replayed = 0;
    std::vector<std::string> bad;
  };
  std::mutex mu;
  auto load = [&](int clients, std::chrono::seconds duration, uint64_t round_seed, Counts* c) {
    const auto until = Clock::now() + duration;
    std::vector<std::thread> threads;
    for (int t = 0; t < clients; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(round_seed * 1000 + t);
        for (int i = 0; Clock::now() < until; ++i) {
          const size_t p = rng() % golden.size();
          const int len = lengths[rng() % lengths.size()];
          const std::vector<int32_t> want(reference[p].begin(), reference[p].begin() + len);
          v1::GenerateRequest req = GreedyRequest(golden[p].prompt, len, {});
          const int what = static_cast<int>(rng() % 10);
          std::string problem;
          if (what < 4) {  // to the end
            const StreamOutcome r = RunStream(cluster.stub(), req);
            if (!r.status.ok() || r.tokens != want) problem = "full stream";
            std::lock_guard<std::mutex> lock(mu);
            c->finished += problem.empty() ? 1 : 0;
          } else if (what < 6) {  // cancelled after a few tokens
            StreamOptions so;
            so.cancel_after_tokens = 1 + static_cast<int>(rng() % len);
            const StreamOutcome r = RunStream(cluster.stub(), req, so);
            const bool prefix = r.tokens.size() <= want.size() &&
                                std::equal(r.tokens.begin(), r.tokens.end(), want.begin());
            if (!prefix || (r.status.error_code() != grpc::StatusCode::CANCELLED &&
                            !(r.status.ok() && r.tokens == want))) {
              problem = "cancelled stream";
            }
            std::lock_guard<std::mutex> lock(mu);
            c->cancelled += problem.empty() ? 1 : 0;
          } else if (what < 8) {  // a short deadline
            StreamOptions so;
            so.timeout = std::chrono::milliseconds(5 + rng() % 300);
            const StreamOutcome r = RunStream(cluster.stub(), req, so);
            const bool prefix = r.tokens.size() <= want.size() &&
                                std::equal(r.tokens.begin(), r.tokens.end(), want.begin());
            if (!prefix || (r.status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED &&
                            !(r.status.ok() && r.tokens == want))) {
              problem = "deadline stream";
            }
            std::lock_guard<std::mutex> lock(mu);
            c->deadline += problem.empty() ? 1 : 0;
          } else {  // unary with an id, then the same again
            req.set_request_id(absl::StrCat("soak-", round_seed, "-", t, "-", i));
            for (int k = 0; k < 2 && problem.empty(); ++k) {
              grpc::ClientContext ctx;
              ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
              v1::GenerateResponse resp;
              const grpc::Status st = cluster.stub()->Generate(&ctx, req, &resp);
              if (!st.ok() || std::vector<int32_t>(resp.output_ids().begin(),
                                                   resp.output_ids().end()) != want) {
                problem = absl::StrCat("unary ", k == 0 ? "request" : "retry", " (",
                                       st.error_message(), ")");
              }
            }
            std::lock_guard<std::mutex> lock(mu);
            c->replayed += problem.empty() ? 1 : 0;
          }
          if (!problem.empty()) {
            std::lock_guard<std::mutex> lock(mu);
            c->bad.push_back(absl::StrCat(problem, ": prompt ", p, ", ", len, " tokens"));
          }
        }
      });
    }
    for (auto& th : threads) th.join();
  };

  // Warm-up: the same load for a few seconds, then the baseline.
  Counts warm;
  load(8, std::chrono::seconds(5), seed, &warm);
  ASSERT_TRUE(warm.bad.empty()) << warm.bad.size() << " bad, first: " << warm.bad[0];
  ASSERT_TRUE(AwaitAttentionIdle(cluster, std::chrono::seconds(30))) << Describe(AllStats(cluster));
  const auto baseline = ClusterRss(cluster);
  int64_t preempted_before = 0;
  for (const auto& st : AllStats(cluster)) preempted_before += st.preemptions();

  const auto t0 = Clock::now();
  Counts soak;
  load(8, std::chrono::seconds(seconds), seed + 1, &soak);
  const double soak_s = SecondsSince(t0);
  EXPECT_TRUE(soak.bad.empty()) << soak.bad.size() << " bad, first: " << soak.bad[0];
  EXPECT_GT(soak.finished, 0);
  EXPECT_GT(soak.cancelled, 0);
  EXPECT_GT(soak.deadline, 0);
  EXPECT_GT(soak.replayed, 0);
  EXPECT_TRUE(AwaitAttentionIdle(cluster, std::chrono::seconds(30))) << Describe(AllStats(cluster));
  int64_t preempted = 0, replays = 0;
  for (const auto& st : AllStats(cluster)) {
    preempted += st.preemptions();
    replays += st.dedup_replayed();
  }
  preempted -= preempted_before;
  EXPECT_GT(preempted, 0) << "the KV cache was never short: the soak does not test preemption";
  EXPECT_GE(replays, soak.replayed);
  const auto after = ClusterRss(cluster);
  std::string rss;
  for (const auto& [name, was] : baseline) {
    auto it = after.find(name);
    ASSERT_NE(it, after.end()) << name << " exited during the soak\n" << cluster.Logs();
    EXPECT_EQ(it->second.first, was.first) << name << " was restarted";
    const int64_t now = it->second.second;
    // Under AddressSanitizer freed memory sits in its quarantine (256 MiB per
    // process), so resident memory says nothing there; LeakSanitizer checks
    // every process for leaks when it exits instead.
    if (!kAddressSanitizer) {
      EXPECT_LE(now, was.second + was.second / 10 + 16 * 1024)
          << name << ": resident memory " << was.second << " KiB after the warm-up, " << now
          << " KiB after the soak";
    }
    absl::StrAppend(&rss, rss.empty() ? "" : ", ", name, " ", was.second / 1024, "->", now / 1024);
  }
  const std::string launcher = ReadFile(cluster.dir() + "/launcher.stderr");
  EXPECT_FALSE(absl::StrContains(launcher, " exited ") ||
               absl::StrContains(launcher, "killed by signal"))
      << launcher;
  Progress(
      "soak (seed %llu, %.0f s, 8 clients): %d streams to the end, %d cancelled, %d past a "
      "deadline, %d unary requests each answered again from the kept output; %zu wrong; %lld "
      "preemptions; resident MiB after the warm-up -> after%s: %s",
      static_cast<unsigned long long>(seed), soak_s, soak.finished, soak.cancelled, soak.deadline,
      soak.replayed, soak.bad.size(), static_cast<long long>(preempted),
      kAddressSanitizer ? " (not checked under AddressSanitizer)" : "", rss.c_str());
}

// The status code of a unary Generate of `prompt` (4 greedy tokens) over
// `stub` with `key` ("" : none) as its bearer token; `tokens` gets the output.
grpc::StatusCode GenerateWithKey(v1::Generate::Stub* stub, const std::string& key,
                                 const std::vector<int32_t>& prompt,
                                 std::vector<int32_t>* tokens = nullptr,
                                 std::string* message = nullptr) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  if (!key.empty()) ctx.AddMetadata("authorization", security::BearerValue(key));
  v1::GenerateResponse resp;
  const grpc::Status st = stub->Generate(&ctx, GreedyRequest(prompt, 4, {}), &resp);
  if (tokens != nullptr) tokens->assign(resp.output_ids().begin(), resp.output_ids().end());
  if (message != nullptr) *message = st.error_message();
  return st.error_code();
}

// The status code of an Admin Status call over `channel` with `key`.
grpc::StatusCode AdminStatusWithKey(const std::shared_ptr<grpc::Channel>& channel,
                                    const std::string& key) {
  auto stub = v1::Admin::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  if (!key.empty()) ctx.AddMetadata("authorization", security::BearerValue(key));
  v1::StatusResponse resp;
  return stub->Status(&ctx, v1::StatusRequest(), &resp).error_code();
}

// The status code of an attention worker's Stats call over `channel`.
grpc::StatusCode StatsCode(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = internal::AttentionWorker::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  internal::WorkerStats stats;
  return stub->Stats(&ctx, internal::WorkerStatsRequest(), &stats).error_code();
}

// A cluster with every security key on: TLS on the Generate API, API keys
// (one with "generate", one with "admin"), and mutual TLS between every
// internal service, with a CA and certificates made by openssl for the test
// and a second CA whose certificates must be refused. Each case gets its
// code: the right key over TLS generates the goldens' tokens; plaintext to
// the TLS port fails; a missing or unknown key is UNAUTHENTICATED and a key
// without the right PERMISSION_DENIED, for Generate, GenerateStream,
// ModelInfo and the Admin API; the internal services refuse plaintext and
// another CA's certificate; a Register from outside the cluster's
// credentials never reaches the coordinator; the command-line clients reach
// the cluster with their TLS and key flags. Over UCX (separate processes)
// and inproc (one process).
class ClusterSecurityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ClusterSecurityTest, TlsAndApiKeysGiveEachCallerItsCode) {
  const std::string dir = RunRoot() + "/security-" + GetParam();
  fs::create_directories(dir);
  absl::StatusOr<sy::testing::TestPki> pki = sy::testing::MakeTestPki(dir, "cluster");
  ASSERT_TRUE(pki.ok()) << pki.status();
  absl::StatusOr<sy::testing::TestPki> other = sy::testing::MakeTestPki(dir, "other");
  ASSERT_TRUE(other.ok()) << other.status();
  const std::string gen_key = "sk-test-generate-" + std::to_string(getpid());
  const std::string admin_key = "sk-test-admin-" + std::to_string(getpid());
  {
    std::ofstream keys(dir + "/keys.txt");
    keys << "# test keys\n" << gen_key << " generate\n" << admin_key << " admin\n";
    std::ofstream k1(dir + "/gen.key");
    k1 << gen_key << "\n";
    std::ofstream k2(dir + "/admin.key");
    k2 << admin_key << "\n";
  }
  ClusterOptions o;
  o.backend = GetParam();
  o.redundant_experts = 2;
  o.security_yaml =
      "  api_keys_file: " + dir + "/keys.txt\n" + "  api_tls:\n    cert_file: " + pki->cert_file +
      "\n    key_file: " + pki->key_file + "\n    ca_file: " + pki->ca_file + "\n" +
      "  internal_tls:\n    ca_file: " + pki->ca_file + "\n    cert_file: " + pki->cert_file +
      "\n    key_file: " + pki->key_file + "\n";
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> api_creds =
      security::TlsChannelCredentials({pki->ca_file, "", "", ""});
  ASSERT_TRUE(api_creds.ok()) << api_creds.status();
  o.api_credentials = *api_creds;
  Cluster cluster;
  const absl::Status started = cluster.Start(o, "security-" + GetParam());
  ASSERT_TRUE(started.ok()) << started;
  const std::vector<GoldenPrompt> golden = LoadGolden("qwen3_moe");
  ASSERT_FALSE(golden.empty());
  const std::vector<int32_t>& prompt = golden[0].prompt;
  const std::vector<int32_t> want(golden[0].greedy.begin(), golden[0].greedy.begin() + 4);

  // The public API over TLS.
  std::vector<int32_t> tokens;
  EXPECT_EQ(GenerateWithKey(cluster.stub(), gen_key, prompt, &tokens), grpc::StatusCode::OK);
  EXPECT_EQ(tokens, want);
  std::string message;
  EXPECT_EQ(GenerateWithKey(cluster.stub(), "", prompt, nullptr, &message),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(message, HasSubstr("an API key is required"));
  EXPECT_EQ(
      GenerateWithKey(cluster.stub(), "sk-not-a-key-of-this-cluster", prompt, nullptr, &message),
      grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(message, HasSubstr("unknown API key"));
  EXPECT_EQ(GenerateWithKey(cluster.stub(), admin_key, prompt, nullptr, &message),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(message, HasSubstr("'generate' right"));
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    auto reader = cluster.stub()->GenerateStream(&ctx, GreedyRequest(prompt, 4, {}));
    v1::GenerateStreamResponse part;
    int parts = 0;
    while (reader->Read(&part)) ++parts;
    EXPECT_EQ(parts, 0);
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    v1::ModelInfoResponse info;
    EXPECT_EQ(cluster.stub()->ModelInfo(&ctx, v1::ModelInfoRequest(), &info).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
    grpc::ClientContext with_key;
    with_key.AddMetadata("authorization", security::BearerValue(gen_key));
    EXPECT_TRUE(cluster.stub()->ModelInfo(&with_key, v1::ModelInfoRequest(), &info).ok());
  }
  // Health needs no key (probes), but TLS.
  EXPECT_EQ(RouterHealth(cluster), HealthResponse::SERVING);
  auto plain_api = v1::Generate::NewStub(
      grpc::CreateChannel(cluster.api_address(), grpc::InsecureChannelCredentials()));
  EXPECT_EQ(GenerateWithKey(plain_api.get(), gen_key, prompt), grpc::StatusCode::UNAVAILABLE);

  // Internal services: the cluster's certificate, nothing else.
  auto creds_of = [&](const sy::testing::TestPki& client) {
    return *security::TlsChannelCredentials({pki->ca_file, client.cert_file, client.key_file, ""});
  };
  const auto inside = grpc::CreateChannel(cluster.coordinator_address(), creds_of(*pki));
  const auto foreign = grpc::CreateChannel(cluster.coordinator_address(), creds_of(*other));
  const auto plain =
      grpc::CreateChannel(cluster.coordinator_address(), grpc::InsecureChannelCredentials());
  EXPECT_EQ(AdminStatusWithKey(inside, admin_key), grpc::StatusCode::OK);
  EXPECT_EQ(AdminStatusWithKey(inside, gen_key), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(AdminStatusWithKey(inside, ""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(AdminStatusWithKey(foreign, admin_key), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(AdminStatusWithKey(plain, admin_key), grpc::StatusCode::UNAVAILABLE);
  for (const auto& channel : {foreign, plain}) {
    // A would-be member (the probe that registered a fake one).
    auto stub = internal::Coordinator::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    internal::RegisterRequest req;
    req.set_role(internal::ROLE_EXPERT);
    req.set_index(0);
    req.set_grpc_address("127.0.0.1:1");
    internal::RegisterResponse resp;
    EXPECT_EQ(stub->Register(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAVAILABLE);
  }
  for (const std::string& aw : cluster.attention_addresses()) {
    EXPECT_EQ(StatsCode(grpc::CreateChannel(aw, creds_of(*pki))), grpc::StatusCode::OK) << aw;
    EXPECT_EQ(StatsCode(grpc::CreateChannel(aw, creds_of(*other))), grpc::StatusCode::UNAVAILABLE)
        << aw;
    EXPECT_EQ(StatsCode(grpc::CreateChannel(aw, grpc::InsecureChannelCredentials())),
              grpc::StatusCode::UNAVAILABLE)
        << aw;
  }

  // The command-line clients.
  const std::string ids = absl::StrJoin(prompt, ",");
  const ToolRun gen = RunTool("switchyard-client",
                              "generate --addr " + cluster.api_address() + " --tls-ca " +
                                  pki->ca_file + " --api-key-file " + dir +
                                  "/gen.key --max-new-tokens 4 --ignore-eos --prompt-ids " + ids);
  EXPECT_EQ(gen.exit_code, 0) << gen.err;
  EXPECT_EQ(nlohmann::json::parse(gen.out)["tokens"].get<std::vector<int32_t>>(), want) << gen.out;
  const ToolRun keyless =
      RunTool("switchyard-client", "generate --addr " + cluster.api_address() + " --tls-ca " +
                                       pki->ca_file + " --max-new-tokens 4 --prompt-ids " + ids);
  EXPECT_EQ(keyless.exit_code, 1) << keyless.err;
  EXPECT_THAT(keyless.err, HasSubstr("an API key is required"));
  const ToolRun admin = RunTool("switchyard-admin",
                                "status --addr " + cluster.coordinator_address() + " --tls-ca " +
                                    pki->ca_file + " --tls-cert " + pki->cert_file + " --tls-key " +
                                    pki->key_file + " --api-key-file " + dir + "/admin.key");
  EXPECT_EQ(admin.exit_code, 0) << admin.err;
  EXPECT_THAT(admin.out, HasSubstr("\"epoch\""));
  const ToolRun bad_flags =
      RunTool("switchyard-admin",
              "status --addr " + cluster.coordinator_address() + " --tls-cert " + pki->cert_file);
  EXPECT_EQ(bad_flags.exit_code, 2);
  EXPECT_THAT(bad_flags.err, HasSubstr("--tls-cert and --tls-key go together"));
  Progress("%s: TLS, mutual TLS and API keys: every case gave its code", GetParam().c_str());
  if (!HasFailure()) fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Backends, ClusterSecurityTest, ::testing::Values("ucx", "inproc"),
                         [](const auto& info) { return info.param; });

// --check-config on every binary: the YAML and the flags are validated, the
// verdict printed, exit 0 or 2, and nothing is started (no port bound).
TEST(LauncherTest, EveryBinaryChecksItsConfigAndStartsNothing) {
  const int base = AllocatePortRange(8);
  ASSERT_GE(base, 0);
  const std::string good = RunRoot() + "/check-good.yaml";
  {
    std::ofstream y(good);
    y << "model:\n  path: " << CaseDir("qwen3_moe") << "\n"
      << "topology:\n  attention_workers: 1\n  expert_workers: 2\n"
      << "coordinator:\n  listen: 127.0.0.1:" << base << "\n"
      << "router:\n  listen: 127.0.0.1:" << base + 1 << "\n"
      << "attention_worker:\n  base_port: " << base + 2 << "\n"
      << "expert_worker:\n  base_port: " << base + 3 << "\n"
      << "metrics:\n  coordinator_port: " << base + 5 << "\n  router_port: " << base + 6
      << "\n  attention_worker_base_port: 0\n  expert_worker_base_port: 0\n";
  }
  const std::string bad = RunRoot() + "/check-bad.yaml";
  {
    std::ofstream y(bad);
    y << "model:\n  path: /m\nmetrics:\n  router_port: 50051\n";
  }
  struct Case {
    std::string tool, extra;
  };
  const std::vector<Case> tools = {{"switchyard-local", ""},
                                   {"switchyard-coordinator", ""},
                                   {"switchyard-router", ""},
                                   {"switchyard-attention-worker", "--index 0"},
                                   {"switchyard-expert-worker", "--index 1"}};
  for (const Case& c : tools) {
    const ToolRun ok = RunTool(c.tool, "--config " + good + " --check-config " + c.extra);
    EXPECT_EQ(ok.exit_code, 0) << c.tool << ": " << ok.out << ok.err;
    EXPECT_THAT(ok.out, ::testing::HasSubstr("config OK")) << c.tool;
    const ToolRun no = RunTool(c.tool, "--config " + bad + " --check-config " + c.extra);
    EXPECT_EQ(no.exit_code, 2) << c.tool << ": " << no.out << no.err;
    EXPECT_THAT(no.err, ::testing::HasSubstr("metrics.router_port (50051) overlaps the ports of "
                                             "router.listen"))
        << c.tool;
  }
  // Flags count too: an index outside the topology, a bad router limit.
  const ToolRun index =
      RunTool("switchyard-expert-worker", "--config " + good + " --check-config --index 2");
  EXPECT_EQ(index.exit_code, 2);
  EXPECT_THAT(index.err, ::testing::HasSubstr("--index 2 outside [0, 2)"));
  const ToolRun queue = RunTool(
      "switchyard-router", "--model " + CaseDir("qwen3_moe") + " --check-config --max-queue 0");
  EXPECT_EQ(queue.exit_code, 2);
  EXPECT_THAT(queue.err, ::testing::HasSubstr("max_queue (0) must be >= 1"));
  // Nothing was started: every port of the YAML is still free.
  for (int p = base; p < base + 7; ++p) EXPECT_TRUE(PortFree(p)) << "port " << p;
  EXPECT_TRUE(ProcessesMentioning(good).empty());
}

// A placement the coordinator would refuse (experts + redundant slots not a
// multiple of the expert workers) stops switchyard-local before it starts any
// process, naming the keys.
TEST(LauncherTest, BadPlacementIsRefusedBeforeAnyProcessStarts) {
  const std::string yaml = RunRoot() + "/bad-placement.yaml";
  {
    std::ofstream y(yaml);
    y << "model:\n  path: " << CaseDir("qwen3_moe") << "\n"
      << "topology:\n  attention_workers: 1\n  expert_workers: 3\n"
      << "placement:\n  redundant_experts: 0\n";
  }
  const auto t0 = Clock::now();
  const ToolRun r = RunTool("switchyard-local", "--config " + yaml);
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_THAT(r.err, ::testing::HasSubstr("must be a multiple of the expert worker count (3)"));
  EXPECT_THAT(r.err, ::testing::HasSubstr("topology.expert_workers"));
  EXPECT_THAT(r.err, ::testing::HasSubstr(yaml));
  EXPECT_LT(SecondsSince(t0), 10.0);
  EXPECT_TRUE(ProcessesMentioning(yaml).empty());
  // So is a restart delay out of range, naming the flag.
  for (const char* bad : {"0", "30001", "-5"}) {
    const ToolRun d =
        RunTool("switchyard-local", "--config " + yaml + " --restart-delay-ms=" + std::string(bad));
    EXPECT_EQ(d.exit_code, 2) << bad << ": " << d.err;
    EXPECT_THAT(d.err, ::testing::HasSubstr("--restart-delay-ms must be 1 to 30000"));
  }
  // So is a malformed API key file, naming its line, and a missing TLS file.
  const std::string keys = RunRoot() + "/bad-keys.txt";
  {
    std::ofstream k(keys);
    k << "sk-fine-key-0123456789 generate\nsk-second-key-0123456789 root\n";
  }
  const std::string good = RunRoot() + "/good-placement.yaml";
  const std::string model = "model:\n  path: " + CaseDir("qwen3_moe") + "\n";
  {
    std::ofstream y(good);
    y << model << "security:\n  api_keys_file: " << keys << "\n";
  }
  const ToolRun k = RunTool("switchyard-local", "--config " + good);
  EXPECT_EQ(k.exit_code, 2) << k.err;
  EXPECT_THAT(k.err, ::testing::HasSubstr(keys + ":2: unknown right 'root'"));
  {
    std::ofstream y(good);
    y << model << "security:\n  api_tls: {cert_file: /nonexistent/c.pem, key_file: " << keys
      << "}\n";
  }
  const ToolRun t = RunTool("switchyard-local", "--config " + good);
  EXPECT_EQ(t.exit_code, 2) << t.err;
  EXPECT_THAT(t.err, ::testing::HasSubstr("security.api_tls.cert_file names '/nonexistent/c.pem'"));
  EXPECT_TRUE(ProcessesMentioning(good).empty());
}

// The pid of the cluster's process running `binary` without an index (the
// coordinator, the router); -1: none.
pid_t ProcessPid(const Cluster& cluster, const std::string& binary) {
  for (pid_t p : ProcessesMentioning(cluster.dir())) {
    std::string cmdline = ReadFile("/proc/" + std::to_string(p) + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find(binary + " ") != std::string::npos) return p;
  }
  return -1;
}

// Kubernetes needs every port a process listens on to come from the
// config (Services, probes and NetworkPolicies name them), and workers
// reached by DNS names: here every process's TCP listeners are exactly its
// gRPC port, its metrics port and (workers) ports of its UCX range, and a
// cluster whose workers register a host name (advertise_host) and dial the
// coordinator by one (coordinator.address) serves the goldens.
TEST(ClusterAddressTest, EveryPortIsConfiguredAndWorkersServeByHostName) {
  ClusterOptions o;  // 2 attention + 3 expert workers over UCX
  o.redundant_experts = 2;
  o.advertise_host = "localhost";
  Cluster cluster;
  const absl::Status started = cluster.Start(o, "addresses");
  ASSERT_TRUE(started.ok()) << started;
  const GoldenPrompt g = LoadGolden("qwen3_moe").at(0);
  const std::vector<StreamOutcome> got =
      RunStreams(cluster.stub(), {GreedyRequest(g.prompt, 16, std::nullopt)});
  ASSERT_TRUE(got[0].status.ok()) << got[0].status.error_message() << "\n" << cluster.Logs();
  ASSERT_GE(g.greedy.size(), 16u);
  EXPECT_EQ(got[0].tokens, std::vector<int32_t>(g.greedy.begin(), g.greedy.begin() + 16));
  const v1::StatusResponse status = AdminStatus(cluster);
  ASSERT_EQ(status.members_size(), o.attention_workers + o.expert_workers);
  for (const v1::AdminMember& m : status.members()) {
    const int port = m.role() == "attention" ? cluster.attention_port(m.index())
                                             : cluster.expert_port(m.index());
    EXPECT_EQ(m.grpc_address(), "localhost:" + std::to_string(port))
        << m.role() << " " << m.index();
  }

  struct Expected {
    std::string name;
    pid_t pid;
    std::set<int32_t> fixed;  // gRPC and metrics
    int data_first;           // 0: none
    size_t min_data;          // listeners the UCX range must hold at least
  };
  std::vector<Expected> processes = {
      {"coordinator",
       ProcessPid(cluster, "switchyard-coordinator"),
       {cluster.coordinator_port(), cluster.coordinator_metrics_port()},
       0,
       0},
      {"router",
       ProcessPid(cluster, "switchyard-router"),
       {cluster.router_port(), cluster.router_metrics_port()},
       0,
       0},
  };
  for (const bool attention : {true, false}) {
    const std::string role = attention ? "attention-worker" : "expert-worker";
    for (int i = 0; i < (attention ? o.attention_workers : o.expert_workers); ++i) {
      processes.push_back(
          {role + "-" + std::to_string(i),
           cluster.WorkerPid("switchyard-" + role, i),
           {attention ? cluster.attention_port(i) : cluster.expert_port(i),
            attention ? cluster.attention_metrics_port(i) : cluster.expert_metrics_port(i)},
           attention ? cluster.attention_data_port(i) : cluster.expert_data_port(i),
           // An expert worker has two UCX contexts: the mesh and weight staging.
           attention ? size_t{1} : size_t{2}});
    }
  }
  for (const Expected& p : processes) {
    ASSERT_GT(p.pid, 0) << p.name;
    const absl::StatusOr<std::vector<int32_t>> ports = ListeningTcpPorts(p.pid);
    ASSERT_TRUE(ports.ok()) << p.name << ": " << ports.status();
    size_t data = 0;
    for (int32_t port : *ports) {
      if (p.fixed.count(port)) continue;
      if (p.data_first > 0 && port >= p.data_first && port < p.data_first + kDataPortsPerWorker) {
        ++data;
        continue;
      }
      ADD_FAILURE() << p.name << " listens on port " << port << ", which its config does not name";
    }
    for (int32_t want : p.fixed) {
      EXPECT_TRUE(std::find(ports->begin(), ports->end(), want) != ports->end())
          << p.name << " does not listen on its port " << want;
    }
    EXPECT_GE(data, p.min_data) << p.name << ": UCX listeners in its range";
    Progress("%s: listens on %s", p.name.c_str(), absl::StrJoin(*ports, ", ").c_str());
  }
  EXPECT_THAT(ReadFile(cluster.dir() + "/logs/expert-worker-0.log"),
              ::testing::HasSubstr("staging transport listening on TCP ports"));
}

// A process that exits cleanly (asked to stop: SIGTERM to the router) is not
// a failure: the launcher logs it and the rest of the cluster keeps running.
TEST(LauncherTest, ACleanExitDoesNotStopTheRest) {
  ClusterOptions o;
  o.redundant_experts = 2;
  Cluster cluster;
  const absl::Status started = cluster.Start(o, "clean-exit");
  ASSERT_TRUE(started.ok()) << started;
  const pid_t router = ProcessPid(cluster, "switchyard-router");
  ASSERT_GT(router, 0);
  ASSERT_EQ(kill(router, SIGTERM), 0);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  const std::string err = ReadFile(cluster.dir() + "/launcher.stderr");
  EXPECT_THAT(err, ::testing::HasSubstr("router exited cleanly; the rest keeps running"));
  EXPECT_THAT(err, ::testing::Not(::testing::HasSubstr("stopping the cluster")));
  EXPECT_GT(cluster.WorkerPid("switchyard-attention-worker", 0), 0);
  EXPECT_GT(cluster.WorkerPid("switchyard-expert-worker", 2), 0);
  // Stop() then stops the rest (SIGINT, exit 0, nothing left).
}

// SIGTERM to the router (a pod being stopped): it refuses new requests at
// once, lets the stream in flight finish within router.drain_timeout_ms,
// then exits 0.
TEST(LauncherTest, ARouterGivenSigtermDrainsItsStreams) {
  ClusterOptions o;
  o.redundant_experts = 2;
  o.router_drain_ms = 30000;
  o.max_new_tokens = 500;
  Cluster cluster;
  const absl::Status started = cluster.Start(o, "router-drain");
  ASSERT_TRUE(started.ok()) << started;
  const pid_t router = ProcessPid(cluster, "switchyard-router");
  ASSERT_GT(router, 0);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::GenerateRequest req;
  req.add_input_ids(3);
  req.mutable_stopping()->set_max_new_tokens(400);
  req.mutable_stopping()->set_ignore_eos(true);
  auto reader = cluster.stub()->GenerateStream(&context, req);
  v1::GenerateStreamResponse m;
  ASSERT_TRUE(reader->Read(&m));
  int tokens = m.output_ids_size();
  ASSERT_EQ(kill(router, SIGTERM), 0);
  const auto signalled = Clock::now();
  // A new request is refused once the router drains (after the signal is
  // handled: retried until then).
  grpc::Status refused;
  while (Clock::now() - signalled < std::chrono::seconds(10)) {
    grpc::ClientContext c2;
    c2.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GenerateRequest r2;
    r2.add_input_ids(4);
    r2.mutable_stopping()->set_max_new_tokens(1);
    v1::GenerateResponse resp;
    refused = cluster.stub()->Generate(&c2, r2, &resp);
    if (!refused.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::UNAVAILABLE) << refused.error_message();
  while (reader->Read(&m)) tokens += m.output_ids_size();
  const grpc::Status st = reader->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(tokens, 400);
  // Then it exits cleanly, and the launcher keeps the rest running.
  std::string err;
  const auto deadline = Clock::now() + std::chrono::seconds(40);
  while (Clock::now() < deadline) {
    err = ReadFile(cluster.dir() + "/launcher.stderr");
    if (err.find("router exited cleanly") != std::string::npos) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_THAT(err, ::testing::HasSubstr("router exited cleanly; the rest keeps running"));
  const std::string log = ReadFile(cluster.dir() + "/logs/router.log");
  EXPECT_THAT(log, ::testing::HasSubstr("draining: no new requests"));
  EXPECT_THAT(log, ::testing::HasSubstr("drained; exiting"));
}

}  // namespace sy::e2e

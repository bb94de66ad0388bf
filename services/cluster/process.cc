#include "services/cluster/process.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "services/cluster/cluster_config.h"

namespace sy::cluster {
namespace {

// Written from a signal handler, so a lock-free atomic flag; seq_cst is fine
// (rarely touched) and keeps the reasoning simple.
std::atomic<bool> g_shutdown{false};
std::mutex g_mu;
std::condition_variable g_cv;

void OnSignal(int) { g_shutdown.store(true); }

}  // namespace

void InstallShutdownHandlers() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

bool ShutdownRequested() { return g_shutdown.load(); }

void RequestShutdown() {
  g_shutdown.store(true);
  std::lock_guard<std::mutex> lock(g_mu);
  g_cv.notify_all();
}

bool WaitForShutdown(std::chrono::milliseconds timeout) {
  // Signal handlers cannot notify a condition variable, so poll the flag in
  // short slices.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::unique_lock<std::mutex> lock(g_mu);
  while (!g_shutdown.load()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) break;
    g_cv.wait_for(lock, std::min<std::chrono::steady_clock::duration>(
                            deadline - now, std::chrono::milliseconds(50)));
  }
  return g_shutdown.load();
}

std::vector<char*> DashesToUnderscores(int argc, char** argv, std::vector<std::string>* storage) {
  storage->clear();
  storage->reserve(argc);
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i > 0 && arg.rfind("--", 0) == 0) {
      const size_t end = std::min(arg.find('='), arg.size());
      for (size_t j = 2; j < end; ++j) {
        if (arg[j] == '-') arg[j] = '_';
      }
    }
    storage->push_back(std::move(arg));
  }
  std::vector<char*> out;
  for (auto& s : *storage) out.push_back(s.data());
  return out;
}

void ListAllFlagsInHelp() {
  absl::FlagsUsageConfig usage;
  const auto ours = [](absl::string_view file) { return !absl::StrContains(file, "absl/flags/"); };
  usage.contains_help_flags = ours;
  usage.contains_helpshort_flags = ours;
  absl::SetFlagsUsageConfig(usage);
}

std::string ListenersLine(const std::string& grpc_address, const std::string& metrics_host,
                          int32_t metrics_port, bool has_ucx, const std::string& ucx_range) {
  std::string line = absl::StrCat(
      "  listens on: grpc=", grpc_address, " metrics=",
      metrics_port == 0 ? std::string("off") : JoinHostPort(metrics_host, metrics_port));
  if (has_ucx) absl::StrAppend(&line, " ucx=", ucx_range.empty() ? "any" : ucx_range);
  return line;
}

}  // namespace sy::cluster

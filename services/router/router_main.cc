// switchyard-router: the public Generate API of a Switchyard cluster. Validates
// and admits requests, and forwards each to the attention worker with the
// least outstanding work.
//
//   switchyard-router --listen 127.0.0.1:50051 --model DIR
//       --attention-workers 127.0.0.1:50061,127.0.0.1:50062 --max-queue 256
//
// Runs until SIGINT or SIGTERM. Logs go to stderr.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "grpcpp/grpcpp.h"
#include "services/cluster/cluster_config.h"
#include "services/cluster/grpc_server.h"
#include "services/cluster/process.h"
#include "services/cluster/process_metrics.h"
#include "services/router/router_server.h"
#include "services/security/security.h"
#include "switchyard/internal/v1/cluster.grpc.pb.h"

ABSL_FLAG(std::string, config, "",
          "Cluster YAML: takes listen address, model, limits and the coordinator from it, and "
          "follows the coordinator's attention workers");
ABSL_FLAG(std::string, listen, "",
          "host:port to serve the Generate API on (default: router.listen, or 127.0.0.1:50051)");
ABSL_FLAG(std::string, model, "", "Model directory with config.json (required without --config)");
ABSL_FLAG(std::string, attention_workers, "", "Comma-separated host:port of the attention workers");
ABSL_FLAG(int64_t, max_queue, 256, "Requests in flight at most; beyond: RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_model_len, 0, "Context limit in tokens; 0 = max_position_embeddings");
ABSL_FLAG(int64_t, max_new_tokens_limit, 4096, "Largest max_new_tokens a request may ask for");
ABSL_FLAG(int32_t, max_logprobs, 20, "Largest top-N for logprobs and prompt_logprobs");
ABSL_FLAG(bool, sticky_client_ids, false,
          "Send a request whose id the client chose to the attention worker that id hashes to "
          "(rendezvous hashing), so a retry through another router finds it (with --config: on "
          "while attention_worker.dedup_window_ms > 0)");
ABSL_FLAG(int32_t, metrics_port, -1,
          "Port of the Prometheus /metrics endpoint (0: none; -1: metrics.router_port of "
          "--config, or none without it)");
ABSL_FLAG(int64_t, drain_timeout_ms, -1,
          "On SIGTERM, how long requests in flight may run on before they are cancelled (-1: "
          "router.drain_timeout_ms of --config, else 2000)");
ABSL_FLAG(bool, check_config, false,
          "Validate --config and the flags, print the problems (or that they are fine) and exit 0 "
          "or 2, starting nothing");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace {

namespace pb = ::switchyard::internal::v1;

// Polls the coordinator's mesh and hands the live attention workers to the
// router whenever the set changes. Stops when `stop` is set.
// `grace`: how long an incomplete mesh from a restarted coordinator (a new
// incarnation) leaves the attention workers known in place: the workers
// serve on and register again meanwhile.
void FollowCoordinator(const std::string& coordinator, std::chrono::milliseconds grace,
                       sy::router::RouterServer* server, const std::atomic<bool>* stop) {
  auto stub = pb::Coordinator::NewStub(sy::cluster::CoordinatorChannel(coordinator));
  std::vector<std::string> current;
  bool first = true;
  uint64_t incarnation = 0;  // of the last mesh the backends came from
  std::chrono::steady_clock::time_point restarted_at;
  while (!stop->load()) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    pb::GetMeshRequest req;
    pb::Mesh mesh;
    // A restarted coordinator re-learning the mesh from the workers (which
    // serve on meanwhile): keep the attention workers known.
    bool keep = false;
    const bool answered = stub->GetMesh(&ctx, req, &mesh).ok();
    if (answered && !first && mesh.incarnation() != incarnation) {
      if (restarted_at == std::chrono::steady_clock::time_point{}) {
        restarted_at = std::chrono::steady_clock::now();
        SY_LOG(WARNING) << "router: the coordinator restarted; keeping the attention workers "
                           "known while it re-learns the mesh";
      }
      keep = !mesh.complete() && std::chrono::steady_clock::now() - restarted_at < grace;
    }
    if (answered && !first && mesh.recovering()) keep = true;
    if (answered && !keep) {
      incarnation = mesh.incarnation();
      restarted_at = {};
      std::vector<std::string> live;
      // Workers serve only once the whole mesh has formed and every worker
      // has loaded what it serves (liveness aside: a dead worker's absence
      // shows in the live list). Members dropped from a re-formed mesh take
      // no part, nor do replacements until they are admitted; a re-formed
      // mesh whose survivors cannot hold every expert is not ready, and
      // nothing is served.
      bool loaded = mesh.complete();
      bool dropped_any = false;
      for (const pb::Member& m : mesh.members()) {
        const bool out = m.dropped() || m.joining();
        dropped_any |= out;
        loaded = loaded && (out || m.ready());
      }
      if (dropped_any) loaded = loaded && mesh.ready();
      if (loaded) {
        for (const pb::Member& m : mesh.members()) {
          if (m.role() == pb::ROLE_ATTENTION && m.alive() && !m.dropped() && !m.joining()) {
            live.push_back(m.grpc_address());
          }
        }
      }
      if (first || live != current) {
        SY_LOG(INFO) << "attention workers from the coordinator (epoch " << mesh.epoch()
                     << "): " << (live.empty() ? "none" : absl::StrJoin(live, ", "));
        server->SetBackends(live);
        current = live;
        first = false;
      }
    }
    for (int i = 0; i < 10 && !stop->load(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves the Switchyard Generate API and forwards requests to attention workers.\n"
      "  switchyard-router --config cluster.yaml\n"
      "  switchyard-router --listen 127.0.0.1:50051 --model DIR "
      "--attention-workers HOST:PORT,...");
  std::vector<std::string> arg_storage;
  sy::cluster::ListAllFlagsInHelp();
  std::vector<char*> args = sy::cluster::DashesToUnderscores(argc, argv, &arg_storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  sy::LogLevel level;
  if (!sy::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << "switchyard-router: --log_level must be debug, info, warning or error\n";
    return 2;
  }
  sy::SetMinLogLevel(level);

  sy::router::RouterOptions options;
  options.listen_address = "127.0.0.1:50051";
  options.max_queue = absl::GetFlag(FLAGS_max_queue);
  options.max_context = absl::GetFlag(FLAGS_max_model_len);
  options.max_new_tokens_limit = absl::GetFlag(FLAGS_max_new_tokens_limit);
  options.max_logprobs = absl::GetFlag(FLAGS_max_logprobs);
  std::string coordinator;
  std::chrono::milliseconds follow_grace(10000);
  std::string metrics_host = "127.0.0.1";
  int64_t drain_timeout_ms = 2000;
  int32_t metrics_port = 0;
  if (!absl::GetFlag(FLAGS_config).empty()) {
    auto cfg = sy::cluster::LoadClusterConfig(absl::GetFlag(FLAGS_config));
    if (!cfg.ok()) {
      std::cerr << "switchyard-router: " << cfg.status().message() << "\n";
      return 2;
    }
    options.listen_address = cfg->router.listen.address();
    options.model_dir = cfg->model.path;
    options.max_queue = cfg->limits.max_queue;
    options.max_context = cfg->limits.max_model_len;
    options.max_new_tokens_limit = cfg->limits.max_new_tokens;
    options.max_logprobs = cfg->limits.max_logprobs;
    coordinator = sy::cluster::CoordinatorDialAddress(*cfg);
    options.api_keys_file = cfg->security.api_keys_file;
    options.api_tls = cfg->security.api_tls;
    if (absl::Status st = sy::security::SetInternalTls(cfg->security.internal_tls); !st.ok()) {
      std::cerr << "switchyard-router: security.internal_tls: " << st.message() << "\n";
      return 2;
    }
    follow_grace = std::chrono::milliseconds(cfg->coordinator.worker_timeout_ms);
    options.sticky_client_ids = cfg->attention_worker.dedup_window_ms > 0;
    metrics_host = cfg->metrics.host;
    drain_timeout_ms = cfg->router.drain_timeout_ms;
    metrics_port = sy::cluster::MetricsPort(*cfg, "router", 0);
  }
  if (absl::GetFlag(FLAGS_drain_timeout_ms) >= 0) {
    drain_timeout_ms = absl::GetFlag(FLAGS_drain_timeout_ms);
  }
  if (auto p = sy::cluster::ChooseMetricsPort(metrics_port, absl::GetFlag(FLAGS_metrics_port));
      p.ok()) {
    metrics_port = *p;
  } else {
    std::cerr << "switchyard-router: " << p.status().message() << "\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_sticky_client_ids)) options.sticky_client_ids = true;
  if (!absl::GetFlag(FLAGS_listen).empty()) options.listen_address = absl::GetFlag(FLAGS_listen);
  if (!absl::GetFlag(FLAGS_model).empty()) options.model_dir = absl::GetFlag(FLAGS_model);
  options.attention_workers =
      absl::StrSplit(absl::GetFlag(FLAGS_attention_workers), ',', absl::SkipWhitespace());
  if (options.model_dir.empty()) {
    std::cerr << "switchyard-router: --model is required\n";
    return 2;
  }
  if (absl::Status st = sy::router::ValidateRouterOptions(options); !st.ok()) {
    std::cerr << "switchyard-router: " << st.message() << "\n";
    return 2;
  }
  if (absl::GetFlag(FLAGS_check_config)) {
    std::cout << "switchyard-router: "
              << (absl::GetFlag(FLAGS_config).empty() ? "flags" : absl::GetFlag(FLAGS_config))
              << ": config OK\n"
              << sy::cluster::ListenersLine(options.listen_address, metrics_host, metrics_port,
                                            /*has_ucx=*/false, "")
              << "\n";
    return 0;
  }

  // Block the shutdown signals before gRPC starts its threads (they inherit
  // the mask), then wait for one on this thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto metrics = sy::cluster::ProcessMetrics::Start(metrics_host, metrics_port, "router");
  if (!metrics.ok()) {
    std::cerr << "switchyard-router: " << metrics.status().message() << "\n";
    return 1;
  }
  options.metrics = (*metrics)->registry();
  auto server = sy::router::RouterServer::Create(options);
  if (!server.ok()) {
    std::cerr << "switchyard-router: " << server.status().message() << "\n";
    return server.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  sy::router::RouterMetrics::AddCollectors(&(*server)->core(), **metrics);
  SY_LOG(INFO) << "switchyard-router listening on " << (*server)->address();
  // Written by main after the signal, read by the follower thread.
  std::atomic<bool> stop{false};
  std::thread follower;
  if (!coordinator.empty()) {
    follower = std::thread(FollowCoordinator, coordinator, follow_grace, server->get(), &stop);
  }
  int sig = 0;
  sigwait(&signals, &sig);
  SY_LOG(INFO) << "switchyard-router: signal " << sig << ", draining: no new requests, "
               << (*server)->core().in_flight() << " in flight may run " << drain_timeout_ms
               << " ms more";
  stop.store(true);
  if (follower.joinable()) follower.join();
  const int64_t left = (*server)->Drain(drain_timeout_ms);
  SY_LOG(INFO) << "switchyard-router: drained"
               << (left > 0 ? absl::StrCat("; ", left, " requests cancelled at the deadline") : "")
               << "; exiting";
  metrics->reset();  // its collectors read the core, which goes with the server
  return 0;
}

// RouterServer: the router process's gRPC server. It loads the model's
// config.json (limits and ModelInfo), owns the RouterCore and the Generate
// service, and serves them with grpc.health.v1 and server reflection
// (cluster::StartGrpcServer: the RPC observer logs every call at INFO).
//
// Health: "" and "switchyard.v1.Generate" are SERVING exactly while at least
// one attention worker is known (SetBackends), NOT_SERVING otherwise.
//
// Threads: SetBackends(), port() and Shutdown() may be called from any thread.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "prometheus/registry.h"
#include "services/cluster/grpc_server.h"
#include "services/router/attention_backend.h"
#include "services/router/generate_service.h"
#include "services/router/router_core.h"
#include "services/router/router_metrics.h"

namespace sy::router {

struct RouterOptions {
  std::string listen_address = "127.0.0.1:0";  // host:port; port 0 picks a free one
  std::string model_dir;                       // holds config.json
  int64_t max_queue = 256;                     // requests in flight at most
  int64_t max_context = 0;                     // 0: the model's max_position_embeddings
  int64_t max_new_tokens_limit = 4096;
  int32_t max_logprobs = 20;
  std::vector<std::string> attention_workers;  // initial backends (host:port)
  std::string api_keys_file;                   // API keys (empty: none asked for)
  security::TlsFiles api_tls;                  // TLS on the API (cert_file, key_file)
  bool sticky_client_ids = false;              // RouterCoreOptions::sticky_client_ids
  // The process's registry: RPC and request metrics go here (null: none).
  std::shared_ptr<prometheus::Registry> metrics;
};

// InvalidArgument naming a bad option (max_queue, max_new_tokens_limit,
// max_logprobs); what Create checks first.
absl::Status ValidateRouterOptions(const RouterOptions& options);

// The limits requests must respect, from the model config and the options.
api::Limits LimitsFor(const model::ModelConfig& config, const RouterOptions& options);

class RouterServer {
 public:
  // Loads the model config and starts serving. `factory` makes the backend of
  // an attention worker address; empty means gRPC (GrpcAttentionBackend).
  // InvalidArgument for a bad config or option; Unavailable when the address
  // cannot be bound.
  static absl::StatusOr<std::unique_ptr<RouterServer>> Create(const RouterOptions& options,
                                                              BackendFactory factory = nullptr);
  ~RouterServer();

  int port() const { return server_.port; }
  // "host:port" with the bound port.
  std::string address() const;
  // Replaces the attention workers and updates the health status.
  void SetBackends(const std::vector<std::string>& addresses);
  // Stops accepting calls; calls still running are cancelled after
  // `grace_ms`. Idempotent.
  void Shutdown(int64_t grace_ms = 2000);
  // Drains, then shuts down: NOT_SERVING and new Generate calls refused
  // with UNAVAILABLE at once, the admitted ones given up to `timeout_ms` to
  // finish (returns as soon as none is left), then Shutdown with a short
  // grace. Returns how many were still running at the deadline.
  int64_t Drain(int64_t timeout_ms);

  RouterCore& core() { return *core_; }
  const model::ModelConfig& model_config() const { return config_; }

 private:
  RouterServer() = default;
  void SetServing(bool serving);

  RouterOptions options_;
  model::ModelConfig config_;
  std::unique_ptr<RouterCore> core_;
  std::unique_ptr<security::ApiKeys> keys_;
  std::unique_ptr<RouterMetrics> metrics_;
  std::unique_ptr<GenerateService> service_;
  cluster::GrpcServer server_;
  std::mutex mu_;  // SetBackends / Shutdown
  bool shut_down_ = false;
};

}  // namespace sy::router

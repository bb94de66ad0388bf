#include "services/router/router_server.h"

#include <chrono>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"
#include "services/cluster/grpc_server.h"
#include "services/router/grpc_attention_backend.h"

namespace sy::router {
namespace {

std::string HostOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

}  // namespace

api::Limits LimitsFor(const model::ModelConfig& config, const RouterOptions& options) {
  api::Limits limits;
  limits.vocab_size = config.vocab_size;
  limits.max_context =
      options.max_context > 0 ? options.max_context : config.max_position_embeddings;
  limits.max_new_tokens_limit = options.max_new_tokens_limit;
  limits.max_logprobs = options.max_logprobs;
  return limits;
}

absl::Status ValidateRouterOptions(const RouterOptions& options) {
  if (options.max_queue < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue (", options.max_queue, ") must be >= 1"));
  }
  if (options.max_new_tokens_limit < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens_limit (", options.max_new_tokens_limit, ") must be >= 1"));
  }
  if (options.max_logprobs < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_logprobs (", options.max_logprobs, ") must be >= 0"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<RouterServer>> RouterServer::Create(const RouterOptions& options,
                                                                   BackendFactory factory) {
  SY_RETURN_IF_ERROR(ValidateRouterOptions(options));
  absl::StatusOr<model::ModelConfig> config = model::LoadModelConfig(options.model_dir);
  if (!config.ok()) return config.status();

  std::unique_ptr<RouterServer> s(new RouterServer());
  s->options_ = options;
  s->config_ = *std::move(config);
  RouterCoreOptions core_options;
  core_options.limits = LimitsFor(s->config_, options);
  core_options.max_queue = options.max_queue;
  core_options.sticky_client_ids = options.sticky_client_ids;
  s->core_ = std::make_unique<RouterCore>(core_options,
                                          factory ? std::move(factory) : GrpcBackendFactory());
  if (!options.api_keys_file.empty()) {
    absl::StatusOr<security::ApiKeys> keys = security::ApiKeys::Load(options.api_keys_file);
    if (!keys.ok()) return keys.status();
    s->keys_ = std::make_unique<security::ApiKeys>(*std::move(keys));
  }
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (options.api_tls.enabled()) {
    auto tls = security::TlsServerCredentials(options.api_tls, /*require_client_cert=*/false);
    if (!tls.ok()) return tls.status();
    creds = *std::move(tls);
  }
  if (options.metrics != nullptr) s->metrics_ = std::make_unique<RouterMetrics>(*options.metrics);
  s->service_ = std::make_unique<GenerateService>(s->core_.get(), &s->config_, s->keys_.get(),
                                                  s->metrics_.get());

  cluster::ServerOptions so;
  so.address = options.listen_address;
  so.services = {s->service_.get()};
  so.credentials = creds;
  so.name = "router";
  so.log_ok_at_info = true;
  so.metrics = options.metrics;
  absl::StatusOr<cluster::GrpcServer> server = cluster::StartGrpcServer(so);
  if (!server.ok()) return server.status();
  s->server_ = *std::move(server);
  s->SetBackends(options.attention_workers);
  SY_LOG(INFO) << "router: serving " << s->config_.architecture << " on " << s->address()
               << " (max_queue " << options.max_queue << ", max_context "
               << core_options.limits.max_context << (options.api_tls.enabled() ? ", TLS" : "")
               << (s->keys_ != nullptr ? absl::StrCat(", ", s->keys_->size(), " API keys") : "")
               << ")";
  return s;
}

RouterServer::~RouterServer() { Shutdown(); }

std::string RouterServer::address() const {
  return absl::StrCat(HostOf(options_.listen_address), ":", server_.port);
}

void RouterServer::SetServing(bool serving) {
  server_.SetServing({switchyard::v1::Generate::service_full_name()}, serving);
}

void RouterServer::SetBackends(const std::vector<std::string>& addresses) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shut_down_) return;
  const bool serving = core_->SetBackends(addresses);
  SetServing(serving);
  if (!serving) SY_LOG(WARNING) << "router: no attention worker; NOT_SERVING";
}

int64_t RouterServer::Drain(int64_t timeout_ms) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_ || server_.server == nullptr) return 0;
    SetServing(false);
    core_->StopAdmitting();
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (core_->in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const int64_t left = core_->in_flight();
  Shutdown(500);
  return left;
}

void RouterServer::Shutdown(int64_t grace_ms) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shut_down_ || server_.server == nullptr) return;
  shut_down_ = true;
  SetServing(false);
  server_.server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(grace_ms));
  server_.server->Wait();
}

}  // namespace sy::router

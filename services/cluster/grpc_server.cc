#include "services/cluster/grpc_server.h"

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/health/v1/health.pb.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "services/cluster/rpc_observer.h"
#include "services/security/security.h"

namespace sy::cluster {

void GrpcServer::SetServing(const std::vector<std::string>& services, bool serving) {
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", serving);
  for (const auto& s : services) health->SetServingStatus(s, serving);
}

std::string HealthCheckFailure(const std::string& address, const std::string& service,
                               std::chrono::milliseconds timeout) {
  return HealthCheckFailure(security::InternalChannel(address), service, timeout);
}

std::string HealthCheckFailure(const std::shared_ptr<grpc::Channel>& channel,
                               const std::string& service, std::chrono::milliseconds timeout) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status st = stub->Check(&ctx, req, &resp);
  if (!st.ok()) return st.error_message().empty() ? "no answer" : st.error_message();
  if (resp.status() != grpc::health::v1::HealthCheckResponse::SERVING) return "not serving";
  return "";
}

absl::StatusOr<GrpcServer> StartGrpcServer(const ServerOptions& options) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  // Reference the health descriptor so reflection can describe it.
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::ServerBuilder builder;
  GrpcServer out;
  builder.AddListeningPort(
      options.address,
      options.credentials != nullptr ? options.credentials : security::InternalServerCredentials(),
      &out.port);
  for (grpc::Service* s : options.services) builder.RegisterService(s);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> observers;
  observers.push_back(MakeRpcObserver({options.name, options.log_ok_at_info, options.metrics}));
  builder.experimental().SetInterceptorCreators(std::move(observers));
  out.server = builder.BuildAndStart();
  if (out.server == nullptr || out.port == 0) {
    return absl::UnavailableError(
        absl::StrCat(options.name, ": cannot listen on '", options.address, "'"));
  }
  return out;
}

absl::StatusOr<GrpcServer> StartGrpcServer(const std::string& address,
                                           const std::vector<grpc::Service*>& services) {
  ServerOptions o;
  o.address = address;
  o.services = services;
  return StartGrpcServer(o);
}

std::shared_ptr<grpc::Channel> CoordinatorChannel(const std::string& address) {
  // gRPC takes the minimum reconnect backoff as the connect timeout: keep it
  // at seconds, or a busy machine fails every attempt's handshake.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 5000);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  return security::InternalChannel(address, args);
}

}  // namespace sy::cluster

#include "services/cluster/rpc_observer.h"

#include <grpcpp/server_context.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>

#include <chrono>

#include "absl/strings/string_view.h"
#include "common/log.h"
#include "services/api/grpc_status.h"
#include "services/metrics/metrics.h"

namespace sy::cluster {
namespace {

using Hook = grpc::experimental::InterceptionHookPoints;

const char* TypeName(grpc::experimental::ServerRpcInfo::Type t) {
  switch (t) {
    case grpc::experimental::ServerRpcInfo::Type::UNARY:
      return "unary";
    case grpc::experimental::ServerRpcInfo::Type::CLIENT_STREAMING:
      return "client_stream";
    case grpc::experimental::ServerRpcInfo::Type::SERVER_STREAMING:
      return "server_stream";
    case grpc::experimental::ServerRpcInfo::Type::BIDI_STREAMING:
      return "bidi_stream";
  }
  return "unknown";
}

class Factory;

class Observer : public grpc::experimental::Interceptor {
 public:
  Observer(const Factory* f, grpc::experimental::ServerRpcInfo* info);
  // A call that ended without sending a status (its server shut down).
  ~Observer() override {
    if (!recorded_)
      Record(grpc::Status(grpc::StatusCode::CANCELLED, "ended without a status"), nullptr);
  }
  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override;

 private:
  void Record(const grpc::Status& status, const std::multimap<std::string, std::string>* trailers);

  const Factory* f_;
  grpc::experimental::ServerRpcInfo* info_;
  std::string service_, method_;
  std::chrono::steady_clock::time_point start_;
  bool recorded_ = false;
};

class Factory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit Factory(const RpcObserverOptions& o) : options(o) {
    if (o.metrics == nullptr) return;
    started = &prometheus::BuildCounter()
                   .Name("switchyard_grpc_server_started_total")
                   .Help("RPCs started on this process's gRPC server.")
                   .Register(*o.metrics);
    handled = &prometheus::BuildCounter()
                   .Name("switchyard_grpc_server_handled_total")
                   .Help("RPCs completed on this process's gRPC server, by status code.")
                   .Register(*o.metrics);
    seconds = &prometheus::BuildHistogram()
                   .Name("switchyard_grpc_server_handling_seconds")
                   .Help("Time from an RPC's arrival to its status, streams included.")
                   .Register(*o.metrics);
  }
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new Observer(this, info);
  }

  RpcObserverOptions options;
  prometheus::Family<prometheus::Counter>* started = nullptr;
  prometheus::Family<prometheus::Counter>* handled = nullptr;
  prometheus::Family<prometheus::Histogram>* seconds = nullptr;
};

Observer::Observer(const Factory* f, grpc::experimental::ServerRpcInfo* info)
    : f_(f), info_(info), start_(std::chrono::steady_clock::now()) {
  // "/package.Service/Method"
  const absl::string_view full = info->method() == nullptr ? "" : info->method();
  const size_t slash = full.rfind('/');
  if (slash != absl::string_view::npos && slash > 0) {
    service_ = std::string(full.substr(1, slash - 1));
    method_ = std::string(full.substr(slash + 1));
  } else {
    service_ = "unknown";
    method_ = std::string(full);
  }
  if (f_->started != nullptr) {
    f_->started
        ->Add({{"grpc_service", service_},
               {"grpc_method", method_},
               {"grpc_type", TypeName(info->type())}})
        .Increment();
  }
}

void Observer::Intercept(grpc::experimental::InterceptorBatchMethods* m) {
  if (m->QueryInterceptionHookPoint(Hook::PRE_SEND_STATUS)) {
    Record(m->GetSendStatus(), m->GetSendTrailingMetadata());
  }
  m->Proceed();
}

void Observer::Record(const grpc::Status& status,
                      const std::multimap<std::string, std::string>* trailers) {
  if (recorded_) return;
  recorded_ = true;
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const char* code = api::GrpcCodeName(status.error_code());
  if (f_->handled != nullptr) {
    f_->handled->Add({{"grpc_service", service_}, {"grpc_method", method_}, {"grpc_code", code}})
        .Increment();
    f_->seconds->Add({{"grpc_service", service_}, {"grpc_method", method_}}, metrics::StepBuckets())
        .Observe(s);
  }
  std::string id = "-";
  if (trailers != nullptr) {
    const auto it = trailers->find(kRequestIdTrailer);
    if (it != trailers->end()) id = it->second;
  }
  const bool health = service_ == "grpc.health.v1.Health";
  const LogLevel level = !status.ok() && !health                                ? LogLevel::kWarning
                         : status.ok() && f_->options.log_ok_at_info && !health ? LogLevel::kInfo
                                                                                : LogLevel::kDebug;
  if (level < MinLogLevel()) return;
  LogMessage msg(level, __FILE__, __LINE__);
  msg.stream() << f_->options.server << ": rpc " << method_
               << " peer=" << info_->server_context()->peer() << " request=" << id
               << " code=" << code << " ms=" << s * 1e3;
  if (!status.ok()) msg.stream() << ": " << status.error_message();
}

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeRpcObserver(
    const RpcObserverOptions& options) {
  return std::make_unique<Factory>(options);
}

}  // namespace sy::cluster

#include "services/router/rpc_log.h"

#include "common/log.h"

namespace sy::router {
namespace {

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "?";
  }
}

}  // namespace

RpcLog::RpcLog(const char* method, const grpc::CallbackServerContext* context)
    : method_(method), peer_(context->peer()), start_(std::chrono::steady_clock::now()) {
  SY_LOG(DEBUG) << "rpc " << method_ << " from " << peer_;
}

grpc::Status RpcLog::Finish(grpc::Status status) {
  if (finished_) return status;
  finished_ = true;
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
  const std::string id = request_id_.empty() ? "-" : request_id_;
  if (status.ok()) {
    SY_LOG(INFO) << "rpc " << method_ << " peer=" << peer_ << " request=" << id
                 << " code=OK ms=" << ms;
  } else {
    SY_LOG(WARNING) << "rpc " << method_ << " peer=" << peer_ << " request=" << id
                    << " code=" << CodeName(status.error_code()) << " ms=" << ms << ": "
                    << status.error_message();
  }
  return status;
}

}  // namespace sy::router

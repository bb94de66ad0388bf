#include "services/router/rpc_log.h"

#include "common/log.h"
#include "services/api/convert.h"

namespace sy::router {

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
                    << " code=" << api::GrpcCodeName(status.error_code()) << " ms=" << ms << ": "
                    << status.error_message();
  }
  return status;
}

}  // namespace sy::router

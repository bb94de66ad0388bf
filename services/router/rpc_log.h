// RpcLog: the one place where the router's RPCs are logged and timed. Every
// handler makes one when the RPC arrives and passes its final status through
// Finish(), which logs method, peer, request id, status code and duration
// once. (Prometheus metrics hook in here later.)
//
// Threads: set_request_id() and Finish() may be called from any thread, but
// not concurrently with each other.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <string>

namespace sy::router {

class RpcLog {
 public:
  RpcLog(const char* method, const grpc::CallbackServerContext* context);

  void set_request_id(const std::string& id) { request_id_ = id; }
  // Logs the outcome (once) and returns `status` unchanged, so that handlers
  // write `Finish(log_.Finish(status))`.
  grpc::Status Finish(grpc::Status status);

 private:
  const char* method_;
  std::string peer_;
  std::string request_id_;
  std::chrono::steady_clock::time_point start_;
  bool finished_ = false;
};

}  // namespace sy::router

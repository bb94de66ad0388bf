// The router's Prometheus metrics (docs/metrics.md has the table).
//
// RouterMetrics holds the families; a RequestTracker follows one Generate or
// GenerateStream call from arrival to status and records, when it ends:
//   switchyard_router_requests_total{method, outcome, code}
//     outcome: ok | rejected (never admitted: invalid, over the limits, no
//     key, no attention worker, queue full) | cancelled (by the client or its
//     deadline) | failed (admitted, then ended with an error)
//   switchyard_router_time_to_first_token_seconds, ..._time_per_output_token_seconds,
//   switchyard_router_request_duration_seconds (end to end; histograms of
//   admitted requests that produced tokens)
//   switchyard_router_prompt_tokens_total, switchyard_router_generation_tokens_total
// The tracker also puts the request id on the call's trailing metadata
// (sy-request-id; bytes outside printable ASCII, and '%', as %XX; at most
// 256 characters), which the
// RPC observer's log line names. Gauges of the core's state (in
// flight, waiting for a first token, per attention worker) are read at
// scrape time (AddCollectors).
//
// Threads: thread-safe; a tracker is used under its reactor's lock.
#pragma once

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <chrono>
#include <string>

#include "services/cluster/process_metrics.h"
#include "services/router/router_core.h"

namespace sy::router {

class RouterMetrics {
 public:
  explicit RouterMetrics(prometheus::Registry& registry);

  // Scrape-time gauges of `core` (which must outlive `metrics`' collectors).
  static void AddCollectors(const RouterCore* core, cluster::ProcessMetrics& metrics);

 private:
  friend class RequestTracker;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& tpot_;
  prometheus::Histogram& duration_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
};

class RequestTracker {
 public:
  // `metrics` may be null (metrics off): the tracker then only tags the
  // request id.
  RequestTracker(RouterMetrics* metrics, const char* method, grpc::CallbackServerContext* context);

  void Admitted(const std::string& request_id, int64_t prompt_tokens);
  void Tokens(int64_t n);
  // Records the outcome (once) and returns `status`, e.g.
  // Finish(tracker_.Finish(status)).
  grpc::Status Finish(grpc::Status status);

 private:
  RouterMetrics* metrics_;
  const char* method_;
  grpc::CallbackServerContext* context_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point first_token_, last_token_;
  std::string request_id_;
  bool admitted_ = false;
  bool finished_ = false;
  int64_t prompt_tokens_ = 0;
  int64_t tokens_ = 0;
};

}  // namespace sy::router

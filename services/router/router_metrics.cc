#include "services/router/router_metrics.h"

#include <algorithm>

#include "services/api/grpc_status.h"
#include "services/cluster/rpc_observer.h"
#include "services/metrics/metrics.h"

namespace sy::router {
namespace {

prometheus::Histogram& Hist(prometheus::Registry& r, const std::string& name,
                            const std::string& help, const std::vector<double>& buckets) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, buckets);
}

prometheus::Counter& Count(prometheus::Registry& r, const std::string& name,
                           const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r).Add({});
}

// The request id as a legal metadata value (printable ASCII): any other byte,
// and '%', as %XX. gRPC refuses (aborts on) a value with other bytes, and a
// client may choose any id. At most kMaxTrailer characters (a longer id ends
// in "..."): clients refuse metadata beyond 8 KB in all.
constexpr size_t kMaxTrailer = 256;
std::string HeaderSafe(const std::string& id) {
  std::string out;
  out.reserve(std::min(id.size(), kMaxTrailer));
  for (const unsigned char c : id) {
    if (out.size() + 3 > kMaxTrailer - 3) {
      out += "...";
      break;
    }
    if (c >= 0x20 && c < 0x7F && c != '%') {
      out.push_back(static_cast<char>(c));
    } else {
      static const char kHex[] = "0123456789ABCDEF";
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

}  // namespace

RouterMetrics::RouterMetrics(prometheus::Registry& r)
    : requests_(prometheus::BuildCounter()
                    .Name("switchyard_router_requests_total")
                    .Help("Generate requests by method, outcome (ok, rejected, cancelled, failed) "
                          "and gRPC status code.")
                    .Register(r)),
      ttft_(Hist(r, "switchyard_router_time_to_first_token_seconds",
                 "From a request's arrival at the router to its first generated token.",
                 metrics::RequestLatencyBuckets())),
      tpot_(Hist(r, "switchyard_router_time_per_output_token_seconds",
                 "Mean time between a request's generated tokens after the first.",
                 metrics::TokenLatencyBuckets())),
      duration_(Hist(r, "switchyard_router_request_duration_seconds",
                     "From a request's arrival at the router to its status (admitted requests).",
                     metrics::RequestLatencyBuckets())),
      prompt_tokens_(
          Count(r, "switchyard_router_prompt_tokens_total", "Prompt tokens of admitted requests.")),
      generation_tokens_(Count(r, "switchyard_router_generation_tokens_total",
                               "Tokens generated and sent to clients.")) {}

void RouterMetrics::AddCollectors(const RouterCore* core, cluster::ProcessMetrics& metrics) {
  const int64_t max_queue = core->max_queue();
  metrics.AddCollector([core, max_queue] {
    const RouterCore::Counts c = core->counts();
    auto in_flight = metrics::GaugeFamily("switchyard_router_requests_in_flight",
                                          "Requests admitted and not yet finished.");
    metrics::AddSample(in_flight, static_cast<double>(c.in_flight));
    auto waiting = metrics::GaugeFamily(
        "switchyard_router_requests_waiting",
        "Admitted requests that have no generated token yet (queued or in prefill).");
    metrics::AddSample(waiting, static_cast<double>(c.waiting_first_token));
    auto limit = metrics::GaugeFamily("switchyard_router_max_requests_in_flight",
                                      "The admission limit (limits.max_queue).");
    metrics::AddSample(limit, static_cast<double>(max_queue));
    auto backends = metrics::GaugeFamily("switchyard_router_attention_workers",
                                         "Attention workers the router sends requests to.");
    auto outstanding = metrics::GaugeFamily(
        "switchyard_router_backend_outstanding_tokens",
        "Tokens of outstanding work (prompt + tokens still to generate) per attention worker.");
    auto per_backend = metrics::GaugeFamily("switchyard_router_backend_requests_in_flight",
                                            "Requests in flight per attention worker.");
    const auto loads = core->Loads();
    metrics::AddSample(backends, static_cast<double>(loads.size()));
    for (const auto& l : loads) {
      metrics::AddSample(outstanding, static_cast<double>(l.outstanding),
                         {{"attention_worker", l.address}});
      metrics::AddSample(per_backend, static_cast<double>(l.in_flight),
                         {{"attention_worker", l.address}});
    }
    return std::vector<prometheus::MetricFamily>{in_flight, waiting,     limit,
                                                 backends,  outstanding, per_backend};
  });
}

RequestTracker::RequestTracker(RouterMetrics* metrics, const char* method,
                               grpc::CallbackServerContext* context)
    : metrics_(metrics),
      method_(method),
      context_(context),
      start_(std::chrono::steady_clock::now()) {}

void RequestTracker::Admitted(const std::string& request_id, int64_t prompt_tokens) {
  admitted_ = true;
  request_id_ = request_id;
  prompt_tokens_ = prompt_tokens;
}

void RequestTracker::Tokens(int64_t n) {
  if (n <= 0) return;
  last_token_ = std::chrono::steady_clock::now();
  if (tokens_ == 0) first_token_ = last_token_;
  tokens_ += n;
}

grpc::Status RequestTracker::Finish(grpc::Status status) {
  if (finished_) return status;
  finished_ = true;
  if (!request_id_.empty()) {
    context_->AddTrailingMetadata(cluster::kRequestIdTrailer, HeaderSafe(request_id_));
  }
  if (metrics_ == nullptr) return status;
  const grpc::StatusCode code = status.error_code();
  const char* outcome =
      status.ok()  ? "ok"
      : !admitted_ ? "rejected"
      : code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::DEADLINE_EXCEEDED
          ? "cancelled"
          : "failed";
  metrics_->requests_
      .Add({{"method", method_}, {"outcome", outcome}, {"code", api::GrpcCodeName(code)}})
      .Increment();
  if (!admitted_) return status;
  const auto now = std::chrono::steady_clock::now();
  metrics_->duration_.Observe(std::chrono::duration<double>(now - start_).count());
  metrics_->prompt_tokens_.Increment(static_cast<double>(prompt_tokens_));
  if (tokens_ > 0) {
    metrics_->generation_tokens_.Increment(static_cast<double>(tokens_));
    metrics_->ttft_.Observe(std::chrono::duration<double>(first_token_ - start_).count());
    if (tokens_ > 1) {
      metrics_->tpot_.Observe(std::chrono::duration<double>(last_token_ - first_token_).count() /
                              static_cast<double>(tokens_ - 1));
    }
  }
  return status;
}

}  // namespace sy::router

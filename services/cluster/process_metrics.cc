#include "services/cluster/process_metrics.h"

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace sy::cluster {

absl::StatusOr<int32_t> ChooseMetricsPort(int32_t from_config, int32_t flag) {
  if (flag < -1 || flag > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-port must be in [-1, 65535], got ", flag));
  }
  return flag >= 0 ? flag : from_config;
}

absl::StatusOr<std::unique_ptr<ProcessMetrics>> ProcessMetrics::Start(const std::string& host,
                                                                      int port,
                                                                      const std::string& process) {
  if (port == 0) {
    std::unique_ptr<ProcessMetrics> m(new ProcessMetrics());
    m->registry_ = std::make_shared<prometheus::Registry>();
    return m;
  }
  return Serve(host, port, process);
}

absl::StatusOr<std::unique_ptr<ProcessMetrics>> ProcessMetrics::StartOnFreePort(
    const std::string& host, const std::string& process) {
  return Serve(host, 0, process);
}

absl::StatusOr<std::unique_ptr<ProcessMetrics>> ProcessMetrics::Serve(const std::string& host,
                                                                      int port,
                                                                      const std::string& process) {
  std::unique_ptr<ProcessMetrics> m(new ProcessMetrics());
  m->registry_ = std::make_shared<prometheus::Registry>();
  absl::StatusOr<std::unique_ptr<metrics::Endpoint>> e =
      metrics::Endpoint::Start(host, port, m->registry_);
  if (!e.ok()) return e.status();
  m->endpoint_ = *std::move(e);
  SY_LOG(INFO) << process << ": metrics on " << m->endpoint_->url();
  return m;
}

ProcessMetrics::~ProcessMetrics() {
  if (endpoint_ == nullptr) return;
  endpoint_->DisableCollectors();
  endpoint_.reset();
}

void ProcessMetrics::DisableCollectors() {
  if (endpoint_ != nullptr) endpoint_->DisableCollectors();
}

void ProcessMetrics::AddCollector(metrics::Collector::Fn fn) {
  if (endpoint_ == nullptr) return;
  endpoint_->Add(std::make_shared<metrics::Collector>(std::move(fn)));
}

}  // namespace sy::cluster

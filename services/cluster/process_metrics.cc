#include "services/cluster/process_metrics.h"

#include <prometheus/gauge.h>

#include "common/log.h"

namespace sy::cluster {

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

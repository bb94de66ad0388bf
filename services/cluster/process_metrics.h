// The metrics of one Switchyard process: its registry (which the gRPC
// server's RPC observer and the process's components fill) and, unless its
// port is 0, the endpoint that serves it.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "services/metrics/metrics.h"

namespace sy::cluster {

// The metrics port a process serves on: --metrics-port when given (>= 0),
// else `from_config` (the YAML's, 0 without one). InvalidArgument for a flag
// outside [-1, 65535].
absl::StatusOr<int32_t> ChooseMetricsPort(int32_t from_config, int32_t flag);

class ProcessMetrics {
 public:
  // `process`: "router", "coordinator", "attention_worker 0", ... for logs.
  // Port 0: a registry that nothing serves. Unavailable when the port is
  // taken.
  static absl::StatusOr<std::unique_ptr<ProcessMetrics>> Start(const std::string& host, int port,
                                                               const std::string& process);
  // Serving on a free port (tests).
  static absl::StatusOr<std::unique_ptr<ProcessMetrics>> StartOnFreePort(
      const std::string& host, const std::string& process);
  // Stops serving (collectors first, so that none runs after this returns).
  ~ProcessMetrics();

  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }
  // Serves `fn`'s families on scrapes while this object lives; a no-op when
  // metrics are off.
  void AddCollector(metrics::Collector::Fn fn);
  // Stops every collector added so far (before what they read goes away).
  void DisableCollectors();
  bool serving() const { return endpoint_ != nullptr; }
  std::string url() const { return endpoint_ ? endpoint_->url() : ""; }
  int port() const { return endpoint_ ? endpoint_->port() : 0; }

 private:
  ProcessMetrics() = default;
  static absl::StatusOr<std::unique_ptr<ProcessMetrics>> Serve(const std::string& host, int port,
                                                               const std::string& process);
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<metrics::Endpoint> endpoint_;
};

// Disables a ProcessMetrics' collectors when it goes out of scope: declare
// it after what the collectors read (m may be null).
class CollectorsOff {
 public:
  explicit CollectorsOff(ProcessMetrics* m) : m_(m) {}
  ~CollectorsOff() {
    if (m_ != nullptr) m_->DisableCollectors();
  }
  CollectorsOff(const CollectorsOff&) = delete;
  CollectorsOff& operator=(const CollectorsOff&) = delete;

 private:
  ProcessMetrics* m_;
};

}  // namespace sy::cluster

// Prometheus metrics of a Switchyard process (prometheus-cpp).
//
// Every process owns one prometheus::Registry; its components register their
// families there (names start with switchyard_, units in the name: _seconds,
// _bytes, _total). Values that a component already keeps (queue lengths, KV
// blocks, worker states) are read at scrape time through a Collector instead
// of being copied into gauges on every change. An Endpoint serves the
// registry and the collectors as text at http://host:port/metrics; a process
// whose metrics port is 0 has no endpoint and its registry is never read.
//
// The endpoint's HTTP server is this file's own (one thread, one connection
// at a time, HTTP/1.0-style close after each answer), not prometheus-cpp's
// civetweb Exposer: Debian's civetweb starts its threads with 100 KB stacks,
// which glibc refuses (EINVAL) in processes whose libraries need more static
// TLS than that (cuBLASLt and OpenBLAS: ~170 KB in the worker binaries), and
// its shutdown waits out a 2 s poll. prometheus-cpp's registry, metric types
// and text serializer do the rest.
//
// Threads: the registry and every metric in it are thread-safe; a
// Collector's function runs on the endpoint's HTTP thread.
#pragma once

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace sy::metrics {

using Labels = std::map<std::string, std::string>;

// Histogram buckets (seconds) for LLM serving.
// Time to first token and end-to-end latency: 5 ms to 2 minutes.
std::vector<double> RequestLatencyBuckets();
// Time per output token: 1 ms to 2 s.
std::vector<double> TokenLatencyBuckets();
// One engine step or one of its phases, and RPC handling: 20 us to 10 s.
std::vector<double> StepBuckets();
// Counts (tokens per step, batch sizes): 1 to 16384 in powers of two.
std::vector<double> CountBuckets();

// Families computed at scrape time. Disable() (before what the function
// reads goes away) waits for a scrape in progress and makes later ones skip
// it.
class Collector : public prometheus::Collectable {
 public:
  using Fn = std::function<std::vector<prometheus::MetricFamily>()>;
  explicit Collector(Fn fn) : fn_(std::move(fn)) {}
  std::vector<prometheus::MetricFamily> Collect() const override;
  void Disable();

 private:
  mutable std::mutex mu_;
  Fn fn_;
};

// Builders for a Collector's families: a family, then one sample per label
// set.
prometheus::MetricFamily GaugeFamily(const std::string& name, const std::string& help);
prometheus::MetricFamily CounterFamily(const std::string& name, const std::string& help);
// Appends a sample to `family` (a gauge or counter family from above).
void AddSample(prometheus::MetricFamily& family, double value, const Labels& labels = {});

class Endpoint {
 public:
  // Serves `registry` (and the collectors added later) on host:port. Port 0
  // picks a free one (tests); the launcher and YAML turn metrics off before
  // getting here. Unavailable naming the address when it cannot be bound.
  // GET /metrics answers the exposition; anything else 404 (405 for another
  // method).
  static absl::StatusOr<std::unique_ptr<Endpoint>> Start(
      const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry);
  ~Endpoint();

  // Serves `collector` from now on (its function runs on scrapes).
  void Add(std::shared_ptr<Collector> collector);
  // Disables every collector (see Collector::Disable).
  void DisableCollectors();
  int port() const { return port_; }
  // http://host:port/metrics
  std::string url() const;

 private:
  Endpoint() = default;
  void Serve();
  void Answer(int fd);
  std::string Exposition();

  std::string host_;
  int port_ = 0;
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: the destructor's stop
  std::shared_ptr<prometheus::Registry> registry_;
  std::mutex mu_;  // collectors_
  std::vector<std::shared_ptr<Collector>> collectors_;
  std::thread thread_;
};

}  // namespace sy::metrics

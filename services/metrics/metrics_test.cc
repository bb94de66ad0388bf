#include "services/metrics/metrics.h"

#include <gtest/gtest.h>

#include <chrono>

#include "services/metrics/promtool_check.h"
#include "services/metrics/scrape.h"

namespace sy::metrics {
namespace {

using std::chrono::milliseconds;

TEST(MetricsEndpointTest, ServesRegistryAndCollectorsThatPromtoolAccepts) {
  auto registry = std::make_shared<prometheus::Registry>();
  auto& requests = prometheus::BuildCounter()
                       .Name("switchyard_test_requests_total")
                       .Help("Requests by outcome.")
                       .Register(*registry);
  requests.Add({{"outcome", "ok"}}).Increment(3);
  requests.Add({{"outcome", "error"}}).Increment();
  auto& latency = prometheus::BuildHistogram()
                      .Name("switchyard_test_latency_seconds")
                      .Help("Latency.")
                      .Register(*registry)
                      .Add({}, RequestLatencyBuckets());
  latency.Observe(0.03);
  latency.Observe(7);

  auto endpoint = Endpoint::Start("127.0.0.1", 0, registry);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  int queued = 5;
  (*endpoint)->Add(std::make_shared<Collector>([&queued] {
    auto f = GaugeFamily("switchyard_test_queued_requests", "Requests waiting.");
    AddSample(f, queued);
    auto c = CounterFamily("switchyard_test_steps_total", "Steps by kind.");
    AddSample(c, 10, {{"kind", "decode"}});
    AddSample(c, 2, {{"kind", "prefill"}});
    return std::vector<prometheus::MetricFamily>{f, c};
  }));
  EXPECT_GT((*endpoint)->port(), 0);
  EXPECT_EQ((*endpoint)->url(),
            "http://127.0.0.1:" + std::to_string((*endpoint)->port()) + "/metrics");

  auto text = HttpGet("127.0.0.1", (*endpoint)->port(), "/metrics", milliseconds(5000));
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_NE(text->find("switchyard_test_requests_total{outcome=\"ok\"} 3"), std::string::npos)
      << *text;
  EXPECT_NE(text->find("switchyard_test_latency_seconds_count 2"), std::string::npos) << *text;
  EXPECT_NE(text->find("switchyard_test_latency_seconds_bucket{le=\"0.05\"} 1"), std::string::npos)
      << *text;
  EXPECT_NE(text->find("switchyard_test_queued_requests 5"), std::string::npos) << *text;
  EXPECT_NE(text->find("switchyard_test_steps_total{kind=\"prefill\"} 2"), std::string::npos)
      << *text;
  EXPECT_EQ(PromtoolCheckMetrics(*text), "");

  // Collectors are read at scrape time.
  queued = 7;
  text = HttpGet("127.0.0.1", (*endpoint)->port(), "/metrics", milliseconds(5000));
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_NE(text->find("switchyard_test_queued_requests 7"), std::string::npos) << *text;

  // A taken port is a clear error naming the address.
  auto second = Endpoint::Start("127.0.0.1", (*endpoint)->port(), registry);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find("127.0.0.1:" + std::to_string((*endpoint)->port())),
            std::string::npos)
      << second.status();

  // Anything else than /metrics is not found; the check names the status.
  auto missing = HttpGet("127.0.0.1", (*endpoint)->port(), "/nothing", milliseconds(5000));
  EXPECT_FALSE(missing.ok());
}

TEST(MetricsEndpointTest, PromtoolRejectsBadNames) {
  // The checker itself must catch a convention break (a counter without
  // _total), or the tests that rely on it prove nothing.
  const std::string bad =
      "# HELP switchyard_bad_requests Requests.\n# TYPE switchyard_bad_requests counter\n"
      "switchyard_bad_requests 1\n";
  EXPECT_NE(PromtoolCheckMetrics(bad), "");
}

TEST(MetricsHttpGetTest, NothingListeningIsUnavailable) {
  // Port 1 on loopback: nothing listens there in a test environment.
  auto r = HttpGet("127.0.0.1", 1, "/metrics", milliseconds(2000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace sy::metrics

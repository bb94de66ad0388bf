#include "services/cluster/cluster_config.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sy::cluster {
namespace {

using ::testing::HasSubstr;

constexpr char kFull[] = R"(
model:
  path: tests/data/goldens/qwen3_moe
  load_format: auto
topology:
  attention_workers: 2
  expert_workers: 3
transport:
  backend: ucx
  timeout_ms: 5000
  attention_worker_base_port: 7400
  expert_worker_base_port: 7500
  ports_per_worker: 8
placement:
  redundant_experts: 2
  replicate: [3, 4]
  order: strided
coordinator:
  listen: 0.0.0.0:7000
  address: switchyard-coordinator:7000
  heartbeat_ms: 200
router:
  listen: 127.0.0.1:7001
attention_worker:
  base_port: 7100
  listen_host: 0.0.0.0
  advertise_host: sy-attention-{index}.sy-attention
  max_num_seqs: 32
  dedup_window_ms: 60000
  kv_admission: reserve
expert_worker:
  base_port: 7200
  listen_host: ::1
  memory_limit_bytes: 1000000
limits:
  max_queue: 64
  max_new_tokens: 256
eplb:
  enabled: true
  window_steps: 500
  window_seconds: 30
  min_window_steps: 10
  interval_seconds: 120
  threshold: 0.85
  min_gain: 0.05
  check_ms: 500
  policy: hierarchical
  planner: deepseek
  nodes: 3
  groups: 4
  stage_timeout_ms: 9000
  max_staging_bytes: 4096
metrics:
  host: 0.0.0.0
  coordinator_port: 7300
  router_port: 0
  attention_worker_base_port: 7310
  expert_worker_base_port: 7320
  per_expert_load: true
)";

TEST(ClusterConfigTest, ParsesEveryKey) {
  auto c = ParseClusterConfig(kFull, "c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->model.path, "tests/data/goldens/qwen3_moe");
  EXPECT_EQ(c->topology.attention_workers, 2);
  EXPECT_EQ(c->topology.expert_workers, 3);
  EXPECT_EQ(c->transport.timeout_ms, 5000);
  EXPECT_EQ(c->placement.redundant_experts, 2);
  EXPECT_THAT(c->placement.replicate, ::testing::ElementsAre(3, 4));
  EXPECT_EQ(c->placement.order, eplb::PlacementOrder::kStrided);
  EXPECT_EQ(c->coordinator.listen.address(), "0.0.0.0:7000");
  EXPECT_EQ(CoordinatorDialAddress(*c), "switchyard-coordinator:7000");
  EXPECT_EQ(DataPortRange(*c, /*attention=*/true, 1), "7408-7415");
  EXPECT_EQ(DataPortRange(*c, /*attention=*/false, 2), "7516-7523");
  EXPECT_EQ(WorkerListenAddress(*c, /*attention=*/true, 1), "0.0.0.0:7101");
  EXPECT_EQ(WorkerAdvertisedAddress(*c, /*attention=*/true, 1), "sy-attention-1.sy-attention:7101");
  EXPECT_EQ(AdvertisedAddressFor(*c, /*attention=*/true, 0, "0.0.0.0:9999"),
            "sy-attention-0.sy-attention:9999");
  EXPECT_EQ(WorkerListenAddress(*c, /*attention=*/false, 2), "[::1]:7202");
  EXPECT_EQ(WorkerAdvertisedAddress(*c, /*attention=*/false, 2), "[::1]:7202");
  EXPECT_EQ(c->coordinator.heartbeat_ms, 200);
  EXPECT_EQ(c->router.listen.port, 7001);
  EXPECT_EQ(c->attention_worker.base_port, 7100);
  EXPECT_EQ(c->attention_worker.max_num_seqs, 32);
  EXPECT_EQ(c->attention_worker.dedup_window_ms, 60000);
  EXPECT_EQ(c->attention_worker.kv_admission, "reserve");
  EXPECT_EQ(c->expert_worker.base_port, 7200);
  EXPECT_EQ(c->limits.max_queue, 64);
  EXPECT_EQ(c->limits.max_new_tokens, 256);
  EXPECT_EQ(c->expert_worker.memory_limit_bytes, 1000000);
  const EplbOptions& e = c->eplb;
  EXPECT_TRUE(e.enabled);
  EXPECT_EQ(e.window_steps, 500);
  EXPECT_EQ(e.window_seconds, 30.0);
  EXPECT_EQ(e.min_window_steps, 10);
  EXPECT_EQ(e.interval_seconds, 120.0);
  EXPECT_EQ(e.threshold, 0.85);
  EXPECT_EQ(e.min_gain, 0.05);
  EXPECT_EQ(e.check_ms, 500);
  EXPECT_EQ(e.policy, "hierarchical");
  EXPECT_EQ(e.planner, "deepseek");
  EXPECT_EQ(e.nodes, 3);
  EXPECT_EQ(e.groups, 4);
  EXPECT_EQ(e.stage_timeout_ms, 9000);
  EXPECT_EQ(e.max_staging_bytes, 4096);
  EXPECT_EQ(c->metrics.host, "0.0.0.0");
  EXPECT_TRUE(c->metrics.per_expert_load);
  EXPECT_EQ(MetricsPort(*c, "coordinator", 0), 7300);
  EXPECT_EQ(MetricsPort(*c, "router", 0), 0);  // off
  EXPECT_EQ(MetricsPort(*c, "attention_worker", 1), 7311);
  EXPECT_EQ(MetricsPort(*c, "expert_worker", 2), 7322);
}

TEST(ClusterConfigTest, DefaultsForMissingSections) {
  auto c = ParseClusterConfig("model: {path: /m}\n", "c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->transport.backend, "ucx");
  EXPECT_EQ(c->topology.attention_workers, 1);
  EXPECT_EQ(c->router.listen.address(), "127.0.0.1:50051");
  EXPECT_EQ(CoordinatorDialAddress(*c), "127.0.0.1:50100");
  EXPECT_EQ(WorkerListenAddress(*c, /*attention=*/true, 0), "127.0.0.1:50200");
  EXPECT_EQ(WorkerAdvertisedAddress(*c, /*attention=*/false, 0), "127.0.0.1:50300");
  EXPECT_EQ(DataPortRange(*c, /*attention=*/true, 0), "");  // UCX picks
  EXPECT_EQ(c->transport.ports_per_worker, 8);
  EXPECT_EQ(c->metrics.host, "127.0.0.1");
  EXPECT_FALSE(c->metrics.per_expert_load);
  EXPECT_EQ(MetricsPort(*c, "coordinator", 0), 9400);
  EXPECT_EQ(MetricsPort(*c, "router", 0), 9401);
  EXPECT_EQ(MetricsPort(*c, "attention_worker", 0), 9410);
  EXPECT_EQ(MetricsPort(*c, "expert_worker", 0), 9450);
}

// One worker per host (Kubernetes pods): every worker of a role on the
// role's base ports, and the overlap checks count one worker per role.
TEST(ClusterConfigTest, SharedPortsPerRole) {
  auto c = ParseClusterConfig(
      "model: {path: /m}\ntopology: {attention_workers: 4, expert_workers: 8, "
      "distinct_ports: false}\ntransport: {attention_worker_base_port: 50201, "
      "expert_worker_base_port: 50301}\nmetrics: {expert_worker_base_port: 9411}\n",
      "c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FALSE(c->topology.distinct_ports);
  EXPECT_EQ(WorkerListenAddress(*c, /*attention=*/true, 3), "127.0.0.1:50200");
  EXPECT_EQ(WorkerListenAddress(*c, /*attention=*/false, 7), "127.0.0.1:50300");
  EXPECT_EQ(MetricsPort(*c, "attention_worker", 3), 9410);
  EXPECT_EQ(MetricsPort(*c, "expert_worker", 7), 9411);
  EXPECT_EQ(DataPortRange(*c, /*attention=*/true, 3), "50201-50208");
  EXPECT_EQ(DataPortRange(*c, /*attention=*/false, 7), "50301-50308");
  // With distinct ports the same file overlaps.
  auto distinct = ParseClusterConfig(
      "model: {path: /m}\ntopology: {attention_workers: 4, expert_workers: 8}\n"
      "transport: {attention_worker_base_port: 50201}\n",
      "c.yaml");
  ASSERT_FALSE(distinct.ok());
  EXPECT_THAT(distinct.status().message(),
              HasSubstr("transport.attention_worker_base_port (50201 to 50232) overlaps the "
                        "ports of attention_worker.base_port"));
}

TEST(ClusterConfigTest, ErrorsNameKeyAndFile) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"model: {path: /m}\nbogus: 1\n", "bogus is not a known key"},
      {"model: {path: /m, colour: red}\n", "model.colour is not a known key"},
      {"model: {load_format: auto}\n", "model.path is required"},
      {"model: {path: /m, load_format: pickle}\n", "model.load_format"},
      {"model: {path: /m}\ntopology: {expert_workers: 0}\n",
       "topology.expert_workers must be >= 1"},
      {"model: {path: /m}\ntopology: {attention_workers: two}\n", "topology.attention_workers"},
      {"model: {path: /m}\ntransport: {backend: tcp}\n", "transport.backend"},
      {"model: {path: /m}\nplacement: {replicate: 3}\n", "placement.replicate"},
      {"model: {path: /m}\nplacement: {order: random}\n", "placement.order"},
      {"model: {path: /m}\nrouter: {listen: localhost}\n", "router.listen must be HOST:PORT"},
      {"model: {path: /m}\nrouter: {listen: 'h:99999'}\n", "router.listen"},
      {"model: {path: /m}\nlimits: [1, 2]\n", "limits must be a mapping"},
      {"model: {path: /m}\nattention_worker: {idle_sleep_us: 5, max_idle_sleep_us: 4}\n",
       "attention_worker.max_idle_sleep_us must be >= idle_sleep_us"},
      {"model: {path: /m}\ntransport: {timeout_ms: 100}\n"
       "attention_worker: {max_idle_sleep_us: 50000}\n",
       "attention_worker.max_idle_sleep_us must be under half of transport.timeout_ms (100 ms)"},
      {"model: {path: /m}\nattention_worker: {kv_admission: lazy}\n",
       "attention_worker.kv_admission must be on_demand or reserve"},
      {"model: {path: /m}\nattention_worker: {dedup_window_ms: -1}\n",
       "attention_worker.dedup_window_ms must be >= 0"},
      {"model: {path: /m}\neplb: {enabled: maybe}\n", "eplb.enabled has an invalid value"},
      {"model: {path: /m}\neplb: {threshold: 1.5}\n", "eplb.threshold must be in [0, 1]"},
      {"model: {path: /m}\neplb: {policy: local}\n", "eplb.policy must be global or hierarchical"},
      {"model: {path: /m}\neplb: {planner: magic}\n", "eplb.planner"},
      {"model: {path: /m}\ntopology: {expert_workers: 3}\neplb: {nodes: 2}\n",
       "eplb.nodes must divide topology.expert_workers (3)"},
      {"model: {path: /m}\neplb: {window_seconds: 0}\n", "eplb.window_seconds must be > 0"},
      {"model: {path: /m}\nexpert_worker: {memory_limit_bytes: -1}\n",
       "expert_worker.memory_limit_bytes must be >= 0"},
      {"model: {path: /m}\ntransport: {timeout_ms: 9223372036854775807}\n",
       "transport.timeout_ms must be <= 86400000 (a day)"},
      {"model: {path: /m}\ntopology: {attention_workers: 2147483647, expert_workers: 4}\n",
       "topology.attention_workers plus expert_workers must be <= 1024"},
      {"model: {path: /m}\nmetrics: {router_port: -1}\n", "metrics.router_port must be >= 0"},
      {"model: {path: /m}\nmetrics: {host: ''}\n", "metrics.host must not be empty"},
      {"model: {path: /m}\nmetrics: {scrape: yes}\n", "metrics.scrape is not a known key"},
      {"model: {path: /m}\ntopology: {expert_workers: 4}\nmetrics: {expert_worker_base_port: "
       "65533}\n",
       "metrics.expert_worker_base_port (65533) plus 3 workers must stay <= 65535"},
      {"model: {path: /m}\nmetrics: {router_port: 50051}\n",
       "metrics.router_port (50051) overlaps the ports of router.listen"},
      {"model: {path: /m}\ntopology: {attention_workers: 3}\n"
       "metrics: {attention_worker_base_port: 9400}\n",
       "metrics.attention_worker_base_port (9400 to 9402) overlaps the ports of "
       "metrics.coordinator_port"},
      {"model: {path: /m}\nmetrics: {per_expert_load: sometimes}\n",
       "metrics.per_expert_load has an invalid value"},
      {"model: {path: /m}\n{a: 1}: 2\n", "top level has a key that is not a name"},
      {"model: {path: /m}\ncoordinator: {listen: '0.0.0.0:50100'}\n",
       "coordinator.address is required when listen (0.0.0.0) binds every interface"},
      {"model: {path: /m}\ncoordinator: {address: '0.0.0.0:50100'}\n",
       "coordinator.address must name a host the other processes can reach"},
      {"model: {path: /m}\ncoordinator: {address: 'coordinator'}\n",
       "coordinator.address must be HOST:PORT"},
      {"model: {path: /m}\nexpert_worker: {listen_host: '::'}\n",
       "expert_worker.advertise_host is required when listen_host (::) binds every interface"},
      {"model: {path: /m}\nattention_worker: {listen_host: ''}\n",
       "attention_worker.listen_host must not be empty"},
      {"model: {path: /m}\nattention_worker: {advertise_host: 'aw-{rank}.svc'}\n",
       "attention_worker.advertise_host 'aw-{rank}.svc' is not a host name"},
      {"model: {path: /m}\ntransport: {ports_per_worker: 0}\n",
       "transport.ports_per_worker must be >= 1"},
      {"model: {path: /m}\ntopology: {expert_workers: 4}\n"
       "transport: {expert_worker_base_port: 65530}\n",
       "transport.expert_worker_base_port (65530) plus 4 workers x 8 ports must stay <= 65535"},
      {"model: {path: /m}\ntopology: {attention_workers: 2}\n"
       "transport: {attention_worker_base_port: 50298}\n",
       "transport.attention_worker_base_port (50298 to 50313) overlaps the ports of "
       "expert_worker.base_port"},
      {"model: {path: /m}\ntransport: {attention_worker_base_port: 31000, "
       "expert_worker_base_port: 31002}\n",
       "transport.expert_worker_base_port (31002 to 31009) overlaps the ports of "
       "transport.attention_worker_base_port"},
      {"model: {path: /m}\ntransport: {expert_worker_base_port: 9398}\n",
       "transport.expert_worker_base_port (9398 to 9405) overlaps the ports of "
       "metrics.coordinator_port"},
      {"model: {path: /m\n", "not valid YAML"},
      {"- a\n- b\n", "top level must be a mapping"},
  };
  for (const auto& [yaml, expect] : cases) {
    auto c = ParseClusterConfig(yaml, "bad.yaml");
    ASSERT_FALSE(c.ok()) << yaml;
    EXPECT_THAT(c.status().message(), HasSubstr(expect)) << yaml;
    EXPECT_THAT(c.status().message(), HasSubstr("bad.yaml")) << yaml;
  }
  EXPECT_EQ(LoadClusterConfig("/nonexistent.yaml").status().code(), absl::StatusCode::kNotFound);
}

// The security section: paths must name readable files, TLS needs its pair
// (or trio) of files, and errors name the key.
TEST(ClusterConfigTest, SecuritySection) {
  // Any readable file stands in for the PEM files here.
  const std::string f = std::string(SY_SOURCE_DIR) + "/README.md";
  auto c = ParseClusterConfig("model: {path: /m}\nsecurity:\n  api_keys_file: " + f +
                                  "\n  api_tls: {cert_file: " + f + ", key_file: " + f +
                                  "}\n  internal_tls: {ca_file: " + f + ", cert_file: " + f +
                                  ", key_file: " + f + ", server_name: sy-internal}\n",
                              "c.yaml");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->security.api_keys_file, f);
  EXPECT_EQ(c->security.api_tls.cert_file, f);
  EXPECT_EQ(c->security.api_tls.key_file, f);
  EXPECT_TRUE(c->security.internal_tls.enabled());
  EXPECT_EQ(c->security.internal_tls.server_name, "sy-internal");
  auto plain = ParseClusterConfig("model: {path: /m}\n", "c.yaml");
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->security.api_keys_file.empty());
  EXPECT_FALSE(plain->security.api_tls.enabled());
  EXPECT_FALSE(plain->security.internal_tls.enabled());
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"security: {api_keys_file: /nonexistent/keys}",
       "security.api_keys_file names '/nonexistent/keys', which cannot be read"},
      {"security: {api_tls: {cert_file: " + f + "}}", "security.api_tls.key_file is required"},
      {"security: {api_tls: {key_file: " + f + "}}", "security.api_tls.cert_file is required"},
      {"security: {internal_tls: {ca_file: " + f + ", cert_file: " + f + "}}",
       "security.internal_tls.key_file is required"},
      {"security: {internal_tls: {server_name: x}}",
       "security.internal_tls.server_name needs ca_file"},
      {"security: {tls: on}", "security.tls is not a known key"},
  };
  for (const auto& [yaml, expect] : cases) {
    auto bad = ParseClusterConfig("model: {path: /m}\n" + yaml + "\n", "bad.yaml");
    ASSERT_FALSE(bad.ok()) << yaml;
    EXPECT_THAT(bad.status().message(), HasSubstr(expect)) << yaml;
    EXPECT_THAT(bad.status().message(), HasSubstr("bad.yaml")) << yaml;
  }
}

}  // namespace
}  // namespace sy::cluster

// The cluster YAML: one file describing a whole Switchyard cluster (model,
// topology, transport, placement, ports, limits). switchyard-local and the
// Kubernetes ConfigMap use the same file; every process parses it once in
// main() into these typed options.
//
// A missing key takes the default documented in the README; an unknown key,
// a value of the wrong type or out of range is InvalidArgument naming the key
// path and the file (e.g. "cluster.yaml: topology.expert_workers must be >= 1").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "eplb/placement.h"
#include "services/security/tls_files.h"

namespace sy::cluster {

struct ModelOptions {
  std::string path;                  // model directory (config.json + safetensors)
  std::string load_format = "auto";  // auto | dummy
  uint64_t dummy_seed = 0;
};

struct TopologyOptions {
  int32_t attention_workers = 1;
  int32_t expert_workers = 1;
};

struct TransportOptions {
  std::string backend = "ucx";  // ucx | inproc
  int64_t timeout_ms = 30000;   // one dispatch/combine exchange at most
};

struct PlacementConfig {
  int32_t redundant_experts = 0;
  std::vector<int32_t> replicate;  // experts given the redundant slots
  eplb::PlacementOrder order = eplb::PlacementOrder::kContiguous;
};

struct ServiceAddress {
  std::string host = "127.0.0.1";
  int32_t port = 0;
  std::string address() const;  // host:port
};

struct LimitOptions {
  int64_t max_queue = 256;  // in-flight requests at the router before RESOURCE_EXHAUSTED
  int32_t max_new_tokens = 4096;
  int32_t max_logprobs = 20;
  int64_t max_model_len = 0;  // 0: the model's max_position_embeddings
};

struct AttentionWorkerOptions {
  int32_t base_port = 50200;  // worker i listens on base_port + i
  int64_t max_num_seqs = 64;
  int64_t max_batched_tokens = 8192;
  int64_t kv_block_size = 16;
  int64_t kv_blocks = 0;  // 0: derived from max_num_seqs and max_model_len
  // on_demand: admit on the prompt's blocks, preempt (and later recompute)
  // the newest sequences when the cache runs out; reserve: admit only when
  // prompt + max_new_tokens fit, never preempt.
  std::string kv_admission = "on_demand";
  int64_t idle_sleep_us = 0;           // pause between empty mesh steps while peers are busy
  int64_t max_idle_sleep_us = 100000;  // longest pause while the whole mesh is idle
  // Request de-duplication: a finished request's output is kept this long
  // for a retry of its id, and a request whose router went away runs on for
  // one to attach to (0: off; the router then routes client ids by load).
  int64_t dedup_window_ms = 300000;
};

struct ExpertWorkerOptions {
  int32_t base_port = 50300;
  // Bytes of expert weights a worker may hold, serving and staged together
  // (0: no limit); staging a re-placement beyond it fails and is aborted.
  int64_t memory_limit_bytes = 0;
};

struct CoordinatorOptions {
  ServiceAddress listen{"127.0.0.1", 50100};
  int64_t heartbeat_ms = 1000;
  int64_t worker_timeout_ms = 10000;  // no heartbeat this long: member is dead
};

// Expert-parallel load balancing (EPLB): the load window, the triggers and
// the planner the coordinator re-places experts with.
struct EplbOptions {
  bool enabled = false;                // automatic rebalancing (Admin Rebalance works either way)
  int64_t window_steps = 2000;         // the load window: at most this many recent mesh steps,
  double window_seconds = 60.0;        // and nothing older than this
  int64_t min_window_steps = 20;       // no automatic rebalance on fewer steps of load
  double interval_seconds = 0.0;       // periodic trigger (0: none)
  double threshold = 0.9;              // threshold trigger: balancedness below this,
  double min_gain = 0.02;              // and the plan would raise it by at least this
  int64_t check_ms = 2000;             // how often the triggers are evaluated
  std::string policy = "global";       // global | hierarchical
  std::string planner = "switchyard";  // switchyard | deepseek
  int32_t nodes = 1;                   // hierarchical: nodes the expert workers are spread over
  int32_t groups = 1;                  // hierarchical: expert groups
  int64_t stage_timeout_ms = 120000;   // staging longer than this aborts the re-placement
  // Extra expert bytes one expert worker may stage at a time (0: no bound);
  // a re-placement that needs more runs as several, a few layers each.
  int64_t max_staging_bytes = 0;
};

struct RouterOptions {
  ServiceAddress listen{"127.0.0.1", 50051};
  // On SIGTERM the router stops taking requests (NOT_SERVING; new calls are
  // refused) and lets those in flight finish for this long, then cancels
  // what is left and exits. Kubernetes: below terminationGracePeriodSeconds.
  int64_t drain_timeout_ms = 2000;
};

struct SecurityOptions {
  // API keys (services/security/security.h has the format) for the router's
  // Generate API (right "generate") and the coordinator's Admin API
  // ("admin"); empty: no key is asked for.
  std::string api_keys_file;
  // TLS on the router's Generate API (cert_file and key_file; ca_file, if
  // given, is what switchyard-local verifies the router with, else cert_file).
  security::TlsFiles api_tls;
  // Mutual TLS on every internal service (ca_file, cert_file, key_file and
  // optionally server_name); off: plaintext.
  security::TlsFiles internal_tls;
};

// Prometheus /metrics endpoints, one per process (port 0: that role's
// processes serve none).
struct MetricsOptions {
  std::string host = "127.0.0.1";  // every endpoint binds here
  int32_t coordinator_port = 9400;
  int32_t router_port = 9401;
  int32_t attention_worker_base_port = 9410;  // worker i: base + i
  int32_t expert_worker_base_port = 9450;
  // Per-expert load as layers x experts series (coordinator); off by
  // default, since the Admin API always has the full matrix.
  bool per_expert_load = false;
};

struct ClusterConfig {
  std::string source;  // file path, for messages
  ModelOptions model;
  TopologyOptions topology;
  TransportOptions transport;
  PlacementConfig placement;
  CoordinatorOptions coordinator;
  RouterOptions router;
  AttentionWorkerOptions attention_worker;
  ExpertWorkerOptions expert_worker;
  LimitOptions limits;
  EplbOptions eplb;
  SecurityOptions security;
  MetricsOptions metrics;
};

// The metrics port of a process (0: none), by role: "coordinator",
// "router", "attention_worker" or "expert_worker" (with its index).
int32_t MetricsPort(const ClusterConfig& config, const std::string& role, int32_t index);

absl::StatusOr<ClusterConfig> ParseClusterConfig(const std::string& yaml_text,
                                                 const std::string& source);
absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path);

}  // namespace sy::cluster

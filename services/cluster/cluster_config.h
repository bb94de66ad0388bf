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
  // Workers of a role take distinct ports (gRPC base_port + i, metrics
  // base + i, UCX range i), as processes sharing one host must; false: every
  // worker of a role uses the base ports, each on a host (or Kubernetes pod)
  // of its own, so that manifests can name one port per role.
  bool distinct_ports = true;
};

struct TransportOptions {
  std::string backend = "ucx";  // ucx | inproc
  int64_t timeout_ms = 30000;   // one dispatch/combine exchange at most
  // UCX data-plane listeners: worker i of a role binds its TCP listeners in
  // [base + i * ports_per_worker, base + (i + 1) * ports_per_worker); a base
  // of 0 lets UCX pick free ports. An expert worker runs two UCX contexts
  // (the mesh and weight staging), each listening once per network device.
  // UCX cannot rebind a port its predecessor's connections hold in TIME_WAIT
  // (a minute on Linux), so a range needs spares for restarts.
  int32_t attention_worker_base_port = 0;
  int32_t expert_worker_base_port = 0;
  int32_t ports_per_worker = 8;
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

// Where the workers of a role serve gRPC and where the others reach them:
// worker i binds listen_host:(base_port + i) and registers
// advertise_host:(base_port + i) with the coordinator, "{index}" in
// advertise_host replaced by i (Kubernetes: the pod's name under the
// StatefulSet's headless Service, e.g. "switchyard-expert-{index}.switchyard-expert").
struct WorkerAddressOptions {
  std::string listen_host = "127.0.0.1";
  std::string advertise_host;  // empty: listen_host (which must then not be a wildcard)
};

struct AttentionWorkerOptions {
  int32_t base_port = 50200;  // worker i listens on base_port + i
  WorkerAddressOptions addresses;
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
  WorkerAddressOptions addresses;
  // Bytes of expert weights a worker may hold, serving and staged together
  // (0: no limit); staging a re-placement beyond it fails and is aborted.
  int64_t memory_limit_bytes = 0;
};

struct CoordinatorOptions {
  ServiceAddress listen{"127.0.0.1", 50100};
  // What the other processes dial (Kubernetes: the coordinator's Service,
  // e.g. "switchyard-coordinator:50100"); empty: listen.
  std::string address;
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

// HOST:PORT, with an IPv6 host in brackets.
std::string JoinHostPort(const std::string& host, int32_t port);

// Whether `host` binds every interface (0.0.0.0, ::, [::], or empty).
bool IsWildcardHost(const std::string& host);

// Where worker `index` of a role binds its gRPC server, and the address it
// registers for the others to reach it at.
std::string WorkerListenAddress(const ClusterConfig& config, bool attention, int32_t index);
std::string WorkerAdvertisedAddress(const ClusterConfig& config, bool attention, int32_t index);
// The same for a worker listening on `listen` (HOST:PORT; e.g. a --listen
// flag): the role's advertise_host, if set, with listen's port; else listen.
std::string AdvertisedAddressFor(const ClusterConfig& config, bool attention, int32_t index,
                                 const std::string& listen);

// The address the workers and routers dial the coordinator at.
std::string CoordinatorDialAddress(const ClusterConfig& config);

// The UCX data-plane port range of worker `index` of a role, "FIRST-LAST"
// (UCX's PORT_RANGE syntax), or "" when UCX picks the ports.
std::string DataPortRange(const ClusterConfig& config, bool attention, int32_t index);

// The metrics port of a process (0: none), by role: "coordinator",
// "router", "attention_worker" or "expert_worker" (with its index).
int32_t MetricsPort(const ClusterConfig& config, const std::string& role, int32_t index);

absl::StatusOr<ClusterConfig> ParseClusterConfig(const std::string& yaml_text,
                                                 const std::string& source);
absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path);

}  // namespace sy::cluster

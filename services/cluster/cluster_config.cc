#include "services/cluster/cluster_config.h"

#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <string_view>
#include <tuple>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "yaml-cpp/yaml.h"

namespace sy::cluster {
namespace {

// Reads one YAML mapping, remembering which keys were used so the rest can
// be reported as unknown.
class Section {
 public:
  Section(const YAML::Node& node, std::string path, const std::string& source)
      : node_(node), path_(std::move(path)), source_(source) {}

  absl::Status Error(const std::string& key, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", Key(key), " ", what));
  }

  std::string Key(const std::string& key) const {
    return path_.empty() ? key : absl::StrCat(path_, ".", key);
  }

  absl::Status CheckMapping() const {
    if (node_ && !node_.IsNull() && !node_.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source_, ": ", path_.empty() ? "top level" : path_, " must be a mapping"));
    }
    return absl::OkStatus();
  }

  YAML::Node Get(const std::string& key) {
    used_.insert(key);
    if (!node_ || !node_.IsMap()) return YAML::Node();
    return node_[key];
  }

  template <typename T>
  absl::Status Read(const std::string& key, T* out) {
    YAML::Node v = Get(key);
    if (!v || v.IsNull()) return absl::OkStatus();  // keep the default
    if (!v.IsScalar()) return Error(key, "must be a scalar");
    try {
      *out = v.as<T>();
    } catch (const YAML::Exception&) {
      return Error(key, absl::StrCat("has an invalid value '", v.Scalar(), "'"));
    }
    return absl::OkStatus();
  }

  template <typename T>
  absl::Status ReadMin(const std::string& key, T min_value, T* out) {
    SY_RETURN_IF_ERROR(Read(key, out));
    if (*out < min_value) return Error(key, absl::StrCat("must be >= ", min_value));
    return absl::OkStatus();
  }

  // A duration: at least `min_value`, at most a day (so that the products
  // and sums the processes make of it cannot overflow).
  absl::Status ReadDuration(const std::string& key, int64_t min_value, int64_t per_second,
                            int64_t* out) {
    SY_RETURN_IF_ERROR(ReadMin(key, min_value, out));
    const int64_t day = 86400 * per_second;
    if (*out > day) return Error(key, absl::StrCat("must be <= ", day, " (a day)"));
    return absl::OkStatus();
  }

  absl::Status ReadIntList(const std::string& key, std::vector<int32_t>* out) {
    YAML::Node v = Get(key);
    if (!v || v.IsNull()) return absl::OkStatus();
    if (!v.IsSequence()) return Error(key, "must be a list of integers");
    out->clear();
    for (const auto& item : v) {
      try {
        out->push_back(item.as<int32_t>());
      } catch (const YAML::Exception&) {
        return Error(key, "must be a list of integers");
      }
    }
    return absl::OkStatus();
  }

  absl::Status ReadAddress(const std::string& key, ServiceAddress* out) {
    std::string text;
    SY_RETURN_IF_ERROR(Read(key, &text));
    if (text.empty()) return absl::OkStatus();
    const size_t colon = text.rfind(':');
    int port = -1;
    if (colon == std::string::npos || colon == 0) return Error(key, "must be HOST:PORT");
    try {
      size_t used = 0;
      port = std::stoi(text.substr(colon + 1), &used);
      if (used != text.size() - colon - 1) port = -1;
    } catch (...) {
      port = -1;
    }
    if (port < 0 || port > 65535) return Error(key, "must be HOST:PORT with a port in [0, 65535]");
    out->host = text.substr(0, colon);
    out->port = port;
    return absl::OkStatus();
  }

  // A path that must name a readable file when given.
  absl::Status ReadReadableFile(const std::string& key, std::string* out) {
    SY_RETURN_IF_ERROR(Read(key, out));
    if (out->empty()) return absl::OkStatus();
    std::ifstream f(*out, std::ios::binary);
    if (!f) return Error(key, absl::StrCat("names '", *out, "', which cannot be read"));
    return absl::OkStatus();
  }

  Section Child(const std::string& key) { return Section(Get(key), Key(key), source_); }

  absl::Status CheckUnknown() const {
    if (!node_ || !node_.IsMap()) return absl::OkStatus();
    for (const auto& kv : node_) {
      if (!kv.first.IsScalar()) {
        return absl::InvalidArgumentError(absl::StrCat(
            source_, ": ", path_.empty() ? "top level" : path_, " has a key that is not a name"));
      }
      const std::string k = kv.first.Scalar();
      if (!used_.count(k)) return Error(k, "is not a known key");
    }
    return absl::OkStatus();
  }

 private:
  YAML::Node node_;
  std::string path_;
  const std::string& source_;
  std::set<std::string> used_;
};

// Parses one child section with `fn`, then rejects its unknown keys.
absl::Status ParseSection(Section& parent, const std::string& key,
                          const std::function<absl::Status(Section&)>& fn) {
  Section s = parent.Child(key);
  SY_RETURN_IF_ERROR(s.CheckMapping());
  SY_RETURN_IF_ERROR(fn(s));
  return s.CheckUnknown();
}

}  // namespace

std::string ServiceAddress::address() const { return JoinHostPort(host, port); }

std::string JoinHostPort(const std::string& host, int32_t port) {
  if (host.find(':') != std::string::npos && !host.starts_with("[")) {
    return absl::StrCat("[", host, "]:", port);
  }
  return absl::StrCat(host, ":", port);
}

bool IsWildcardHost(const std::string& host) {
  return host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]";
}

namespace {

constexpr std::string_view kIndexPattern = "{index}";

// How many workers' worth of ports a role takes on one host.
int32_t PortsTaken(const ClusterConfig& c, bool attention) {
  if (!c.topology.distinct_ports) return 1;
  return attention ? c.topology.attention_workers : c.topology.expert_workers;
}

// A worker's offset from its role's base ports.
int32_t PortIndex(const ClusterConfig& c, int32_t index) {
  return c.topology.distinct_ports ? index : 0;
}

absl::Status ReadWorkerAddresses(Section& s, WorkerAddressOptions* out) {
  SY_RETURN_IF_ERROR(s.Read("listen_host", &out->listen_host));
  if (out->listen_host.empty()) return s.Error("listen_host", "must not be empty");
  if (out->listen_host.find_first_of("{}/ ") != std::string::npos) {
    return s.Error("listen_host", absl::StrCat("'", out->listen_host, "' is not a host"));
  }
  SY_RETURN_IF_ERROR(s.Read("advertise_host", &out->advertise_host));
  if (out->advertise_host.empty()) {
    if (IsWildcardHost(out->listen_host)) {
      return s.Error("advertise_host",
                     absl::StrCat("is required when listen_host (", out->listen_host,
                                  ") binds every interface: where the others reach the worker"));
    }
    return absl::OkStatus();
  }
  std::string rest = out->advertise_host;
  for (size_t at; (at = rest.find(kIndexPattern)) != std::string::npos;) {
    rest.erase(at, kIndexPattern.size());
  }
  if (rest.find_first_of("{}/ ") != std::string::npos || IsWildcardHost(rest)) {
    return s.Error("advertise_host", absl::StrCat("'", out->advertise_host,
                                                  "' is not a host name (\"{index}\" is the one "
                                                  "pattern it may hold)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ClusterConfig> ParseLoaded(const YAML::Node& root, const std::string& source) {
  ClusterConfig c;
  c.source = source;
  Section top(root, "", source);
  SY_RETURN_IF_ERROR(top.CheckMapping());
  SY_RETURN_IF_ERROR(ParseSection(top, "model", [&](Section& s) -> absl::Status {
    SY_RETURN_IF_ERROR(s.Read("path", &c.model.path));
    SY_RETURN_IF_ERROR(s.Read("load_format", &c.model.load_format));
    SY_RETURN_IF_ERROR(s.Read("dummy_seed", &c.model.dummy_seed));
    if (c.model.path.empty()) return s.Error("path", "is required");
    if (c.model.load_format != "auto" && c.model.load_format != "dummy") {
      return s.Error("load_format", "must be auto or dummy");
    }
    return absl::OkStatus();
  }));
  SY_RETURN_IF_ERROR(ParseSection(top, "topology", [&](Section& s) -> absl::Status {
    SY_RETURN_IF_ERROR(s.ReadMin("attention_workers", 1, &c.topology.attention_workers));
    SY_RETURN_IF_ERROR(s.ReadMin("expert_workers", 1, &c.topology.expert_workers));
    SY_RETURN_IF_ERROR(s.Read("distinct_ports", &c.topology.distinct_ports));
    if (int64_t{c.topology.attention_workers} + c.topology.expert_workers > 1024) {
      return s.Error("attention_workers", "plus expert_workers must be <= 1024");
    }
    return absl::OkStatus();
  }));
  SY_RETURN_IF_ERROR(ParseSection(top, "transport", [&](Section& s) -> absl::Status {
    SY_RETURN_IF_ERROR(s.Read("backend", &c.transport.backend));
    SY_RETURN_IF_ERROR(s.ReadDuration("timeout_ms", 1, 1000, &c.transport.timeout_ms));
    if (c.transport.backend != "ucx" && c.transport.backend != "inproc") {
      return s.Error("backend", "must be ucx or inproc");
    }
    auto& t = c.transport;
    SY_RETURN_IF_ERROR(s.ReadMin("ports_per_worker", 1, &t.ports_per_worker));
    if (t.ports_per_worker > 1024) return s.Error("ports_per_worker", "must be <= 1024");
    for (const auto& [key, port, workers] :
         {std::tuple<const char*, int32_t*, int32_t>{"attention_worker_base_port",
                                                     &t.attention_worker_base_port,
                                                     PortsTaken(c, /*attention=*/true)},
          {"expert_worker_base_port", &t.expert_worker_base_port,
           PortsTaken(c, /*attention=*/false)}}) {
      SY_RETURN_IF_ERROR(s.ReadMin(key, 0, port));
      if (*port != 0 && int64_t{*port} + int64_t{workers} * t.ports_per_worker - 1 > 65535) {
        return s.Error(key, absl::StrCat("(", *port, ") plus ", workers, " workers x ",
                                         t.ports_per_worker, " ports must stay <= 65535"));
      }
    }
    return absl::OkStatus();
  }));
  SY_RETURN_IF_ERROR(ParseSection(top, "placement", [&](Section& s) -> absl::Status {
    SY_RETURN_IF_ERROR(s.ReadMin("redundant_experts", 0, &c.placement.redundant_experts));
    SY_RETURN_IF_ERROR(s.ReadIntList("replicate", &c.placement.replicate));
    std::string order = "contiguous";
    SY_RETURN_IF_ERROR(s.Read("order", &order));
    if (order == "contiguous") {
      c.placement.order = eplb::PlacementOrder::kContiguous;
    } else if (order == "strided") {
      c.placement.order = eplb::PlacementOrder::kStrided;
    } else {
      return s.Error("order", "must be contiguous or strided");
    }
    return absl::OkStatus();
  }));
  SY_RETURN_IF_ERROR(ParseSection(top, "coordinator", [&](Section& s) -> absl::Status {
    SY_RETURN_IF_ERROR(s.ReadAddress("listen", &c.coordinator.listen));
    ServiceAddress dial{"", 0};
    SY_RETURN_IF_ERROR(s.ReadAddress("address", &dial));
    if (!dial.host.empty()) {
      if (IsWildcardHost(dial.host)) {
        return s.Error("address", "must name a host the other processes can reach, not a wildcard");
      }
      c.coordinator.address = JoinHostPort(dial.host, dial.port);
    } else if (IsWildcardHost(c.coordinator.listen.host)) {
      return s.Error("address", absl::StrCat("is required when listen (", c.coordinator.listen.host,
                                             ") binds every interface: what the others dial"));
    }
    SY_RETURN_IF_ERROR(s.ReadDuration("heartbeat_ms", 10, 1000, &c.coordinator.heartbeat_ms));
    SY_RETURN_IF_ERROR(
        s.ReadDuration("worker_timeout_ms", 100, 1000, &c.coordinator.worker_timeout_ms));
    return absl::OkStatus();
  }));
  SY_RETURN_IF_ERROR(ParseSection(top, "router", [&](Section& s) -> absl::Status {
    SY_RETURN_IF_ERROR(s.ReadAddress("listen", &c.router.listen));
    return s.ReadDuration("drain_timeout_ms", 0, 1000, &c.router.drain_timeout_ms);
  }));
  SY_RETURN_IF_ERROR(ParseSection(top, "attention_worker", [&](Section& s) -> absl::Status {
    auto& a = c.attention_worker;
    SY_RETURN_IF_ERROR(s.ReadMin("base_port", 0, &a.base_port));
    SY_RETURN_IF_ERROR(ReadWorkerAddresses(s, &a.addresses));
    SY_RETURN_IF_ERROR(s.ReadMin<int64_t>("max_num_seqs", 1, &a.max_num_seqs));
    SY_RETURN_IF_ERROR(s.ReadMin<int64_t>("max_batched_tokens", 1, &a.max_batched_tokens));
    SY_RETURN_IF_ERROR(s.ReadMin<int64_t>("kv_block_size", 1, &a.kv_block_size));
    SY_RETURN_IF_ERROR(s.ReadMin<int64_t>("kv_blocks", 0, &a.kv_blocks));
    SY_RETURN_IF_ERROR(s.Read("kv_admission", &a.kv_admission));
    if (a.kv_admission != "on_demand" && a.kv_admission != "reserve") {
      return s.Error("kv_admission", "must be on_demand or reserve");
    }
    SY_RETURN_IF_ERROR(s.ReadDuration("idle_sleep_us", 0, 1000000, &a.idle_sleep_us));
    SY_RETURN_IF_ERROR(s.ReadDuration("max_idle_sleep_us", 0, 1000000, &a.max_idle_sleep_us));
    SY_RETURN_IF_ERROR(s.ReadDuration("dedup_window_ms", 0, 1000, &a.dedup_window_ms));
    if (a.max_idle_sleep_us < a.idle_sleep_us) {
      return s.Error("max_idle_sleep_us", "must be >= idle_sleep_us");
    }
    // Expert workers wait for every attention worker's dispatch for at most
    // transport.timeout_ms: a longer idle pause would fail the mesh.
    if (a.max_idle_sleep_us >= c.transport.timeout_ms * 1000 / 2) {
      return s.Error("max_idle_sleep_us",
                     absl::StrCat("must be under half of transport.timeout_ms (",
                                  c.transport.timeout_ms, " ms), or an idle mesh times out"));
    }
    return absl::OkStatus();
  }));
  SY_RETURN_IF_ERROR(ParseSection(top, "expert_worker", [&](Section& s) -> absl::Status {
    SY_RETURN_IF_ERROR(s.ReadMin("base_port", 0, &c.expert_worker.base_port));
    SY_RETURN_IF_ERROR(ReadWorkerAddresses(s, &c.expert_worker.addresses));
    return s.ReadMin<int64_t>("memory_limit_bytes", 0, &c.expert_worker.memory_limit_bytes);
  }));
  SY_RETURN_IF_ERROR(ParseSection(top, "eplb", [&](Section& s) -> absl::Status {
    auto& e = c.eplb;
    SY_RETURN_IF_ERROR(s.Read("enabled", &e.enabled));
    SY_RETURN_IF_ERROR(s.ReadMin<int64_t>("window_steps", 1, &e.window_steps));
    SY_RETURN_IF_ERROR(s.Read("window_seconds", &e.window_seconds));
    if (!(e.window_seconds > 0)) return s.Error("window_seconds", "must be > 0");
    SY_RETURN_IF_ERROR(s.ReadMin<int64_t>("min_window_steps", 1, &e.min_window_steps));
    SY_RETURN_IF_ERROR(s.Read("interval_seconds", &e.interval_seconds));
    if (!(e.interval_seconds >= 0)) return s.Error("interval_seconds", "must be >= 0");
    SY_RETURN_IF_ERROR(s.Read("threshold", &e.threshold));
    if (!(e.threshold >= 0 && e.threshold <= 1)) return s.Error("threshold", "must be in [0, 1]");
    SY_RETURN_IF_ERROR(s.Read("min_gain", &e.min_gain));
    if (!(e.min_gain >= 0 && e.min_gain <= 1)) return s.Error("min_gain", "must be in [0, 1]");
    SY_RETURN_IF_ERROR(s.ReadDuration("check_ms", 10, 1000, &e.check_ms));
    SY_RETURN_IF_ERROR(s.Read("policy", &e.policy));
    if (e.policy != "global" && e.policy != "hierarchical") {
      return s.Error("policy", "must be global or hierarchical");
    }
    SY_RETURN_IF_ERROR(s.Read("planner", &e.planner));
    if (e.planner != "switchyard" && e.planner != "deepseek") {
      return s.Error("planner", "must be switchyard or deepseek");
    }
    SY_RETURN_IF_ERROR(s.ReadMin("nodes", 1, &e.nodes));
    SY_RETURN_IF_ERROR(s.ReadMin("groups", 1, &e.groups));
    SY_RETURN_IF_ERROR(s.ReadDuration("stage_timeout_ms", 100, 1000, &e.stage_timeout_ms));
    SY_RETURN_IF_ERROR(s.ReadMin<int64_t>("max_staging_bytes", 0, &e.max_staging_bytes));
    if (c.topology.expert_workers % e.nodes != 0) {
      return s.Error("nodes", absl::StrCat("must divide topology.expert_workers (",
                                           c.topology.expert_workers, ")"));
    }
    return absl::OkStatus();
  }));
  SY_RETURN_IF_ERROR(ParseSection(top, "limits", [&](Section& s) -> absl::Status {
    SY_RETURN_IF_ERROR(s.ReadMin<int64_t>("max_queue", 1, &c.limits.max_queue));
    SY_RETURN_IF_ERROR(s.ReadMin("max_new_tokens", 1, &c.limits.max_new_tokens));
    SY_RETURN_IF_ERROR(s.ReadMin("max_logprobs", 0, &c.limits.max_logprobs));
    SY_RETURN_IF_ERROR(s.ReadMin<int64_t>("max_model_len", 0, &c.limits.max_model_len));
    return absl::OkStatus();
  }));
  SY_RETURN_IF_ERROR(ParseSection(top, "security", [&](Section& s) -> absl::Status {
    auto& sec = c.security;
    SY_RETURN_IF_ERROR(s.ReadReadableFile("api_keys_file", &sec.api_keys_file));
    SY_RETURN_IF_ERROR(ParseSection(s, "api_tls", [&](Section& t) -> absl::Status {
      SY_RETURN_IF_ERROR(t.ReadReadableFile("cert_file", &sec.api_tls.cert_file));
      SY_RETURN_IF_ERROR(t.ReadReadableFile("key_file", &sec.api_tls.key_file));
      SY_RETURN_IF_ERROR(t.ReadReadableFile("ca_file", &sec.api_tls.ca_file));
      if (sec.api_tls.cert_file.empty() != sec.api_tls.key_file.empty()) {
        return t.Error(sec.api_tls.cert_file.empty() ? "cert_file" : "key_file",
                       "is required with the other (TLS needs a certificate and its key)");
      }
      if (sec.api_tls.cert_file.empty() && !sec.api_tls.ca_file.empty()) {
        return t.Error("ca_file", "needs cert_file and key_file");
      }
      return absl::OkStatus();
    }));
    SY_RETURN_IF_ERROR(ParseSection(s, "internal_tls", [&](Section& t) -> absl::Status {
      auto& tls = sec.internal_tls;
      SY_RETURN_IF_ERROR(t.ReadReadableFile("ca_file", &tls.ca_file));
      SY_RETURN_IF_ERROR(t.ReadReadableFile("cert_file", &tls.cert_file));
      SY_RETURN_IF_ERROR(t.ReadReadableFile("key_file", &tls.key_file));
      SY_RETURN_IF_ERROR(t.Read("server_name", &tls.server_name));
      const bool any = !tls.ca_file.empty() || !tls.cert_file.empty() || !tls.key_file.empty();
      for (const auto& [key, value] :
           {std::pair<const char*, const std::string*>{"ca_file", &tls.ca_file},
            {"cert_file", &tls.cert_file},
            {"key_file", &tls.key_file}}) {
        if (any && value->empty()) {
          return t.Error(key, "is required (mutual TLS needs ca_file, cert_file and key_file)");
        }
      }
      if (!any && !tls.server_name.empty()) {
        return t.Error("server_name", "needs ca_file, cert_file and key_file");
      }
      return absl::OkStatus();
    }));
    return absl::OkStatus();
  }));
  SY_RETURN_IF_ERROR(ParseSection(top, "metrics", [&](Section& s) -> absl::Status {
    auto& m = c.metrics;
    SY_RETURN_IF_ERROR(s.Read("host", &m.host));
    if (m.host.empty()) return s.Error("host", "must not be empty");
    struct Range {
      const char* key;
      int32_t* port;
      int32_t count;
    };
    const Range ranges[] = {
        {"coordinator_port", &m.coordinator_port, 1},
        {"router_port", &m.router_port, 1},
        {"attention_worker_base_port", &m.attention_worker_base_port,
         PortsTaken(c, /*attention=*/true)},
        {"expert_worker_base_port", &m.expert_worker_base_port, PortsTaken(c, /*attention=*/false)},
    };
    for (const Range& r : ranges) {
      SY_RETURN_IF_ERROR(s.ReadMin(r.key, 0, r.port));
      if (int64_t{*r.port} + r.count - 1 > 65535) {
        return s.Error(r.key, absl::StrCat("(", *r.port, ") plus ", r.count - 1,
                                           " workers must stay <= 65535"));
      }
    }
    // No two endpoints, and no endpoint and gRPC server, on one port.
    struct Taken {
      std::string what;
      int64_t begin, end;  // [begin, end)
    };
    std::vector<Taken> taken = {
        {"coordinator.listen", c.coordinator.listen.port, c.coordinator.listen.port + 1},
        {"router.listen", c.router.listen.port, c.router.listen.port + 1},
        {"attention_worker.base_port", c.attention_worker.base_port,
         int64_t{c.attention_worker.base_port} + PortsTaken(c, /*attention=*/true)},
        {"expert_worker.base_port", c.expert_worker.base_port,
         int64_t{c.expert_worker.base_port} + PortsTaken(c, /*attention=*/false)},
    };
    for (const Range& r : ranges) {
      if (*r.port == 0) continue;
      const int64_t b = *r.port, e = b + r.count;
      for (const Taken& t : taken) {
        if (t.begin == 0 || t.begin == t.end) continue;
        if (b < t.end && t.begin < e) {
          return s.Error(r.key,
                         absl::StrCat("(", *r.port, r.count > 1 ? absl::StrCat(" to ", e - 1) : "",
                                      ") overlaps the ports of ", t.what));
        }
      }
      taken.push_back({s.Key(r.key), b, e});
    }
    SY_RETURN_IF_ERROR(s.Read("per_expert_load", &m.per_expert_load));
    // The data-plane ranges, against each other and every port above.
    const auto& t = c.transport;
    for (const auto& [key, base, workers] :
         {std::tuple<const char*, int32_t, int32_t>{"transport.attention_worker_base_port",
                                                    t.attention_worker_base_port,
                                                    PortsTaken(c, /*attention=*/true)},
          {"transport.expert_worker_base_port", t.expert_worker_base_port,
           PortsTaken(c, /*attention=*/false)}}) {
      if (base == 0) continue;
      const int64_t b = base, e = b + int64_t{workers} * t.ports_per_worker;
      for (const Taken& other : taken) {
        if (other.begin == 0 || other.begin == other.end) continue;
        if (b < other.end && other.begin < e) {
          return absl::InvalidArgumentError(absl::StrCat(
              c.source, ": ", key, " (", b, " to ", e - 1, ") overlaps the ports of ", other.what));
        }
      }
      taken.push_back({key, b, e});
    }
    return absl::OkStatus();
  }));
  SY_RETURN_IF_ERROR(top.CheckUnknown());
  return c;
}

}  // namespace

absl::StatusOr<ClusterConfig> ParseClusterConfig(const std::string& yaml_text,
                                                 const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid YAML: ", e.what()));
  }
  // Section reads what it converts; anything else yaml-cpp throws on (an
  // odd node where a key or value was expected) is still the file's fault.
  try {
    return ParseLoaded(root, source);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
}

std::string WorkerListenAddress(const ClusterConfig& config, bool attention, int32_t index) {
  const int32_t base =
      attention ? config.attention_worker.base_port : config.expert_worker.base_port;
  const WorkerAddressOptions& a =
      attention ? config.attention_worker.addresses : config.expert_worker.addresses;
  return JoinHostPort(a.listen_host, base + PortIndex(config, index));
}

std::string WorkerAdvertisedAddress(const ClusterConfig& config, bool attention, int32_t index) {
  return AdvertisedAddressFor(config, attention, index,
                              WorkerListenAddress(config, attention, index));
}

std::string AdvertisedAddressFor(const ClusterConfig& config, bool attention, int32_t index,
                                 const std::string& listen) {
  const WorkerAddressOptions& a =
      attention ? config.attention_worker.addresses : config.expert_worker.addresses;
  const size_t colon = listen.rfind(':');
  if (a.advertise_host.empty() || colon == std::string::npos) return listen;
  std::string host = a.advertise_host;
  const std::string i = std::to_string(index);
  for (size_t at = 0; (at = host.find(kIndexPattern, at)) != std::string::npos; at += i.size()) {
    host.replace(at, kIndexPattern.size(), i);
  }
  int32_t port = 0;
  if (!absl::SimpleAtoi(listen.substr(colon + 1), &port)) return listen;
  return JoinHostPort(host, port);
}

std::string CoordinatorDialAddress(const ClusterConfig& config) {
  return config.coordinator.address.empty() ? config.coordinator.listen.address()
                                            : config.coordinator.address;
}

std::string DataPortRange(const ClusterConfig& config, bool attention, int32_t index) {
  const TransportOptions& t = config.transport;
  const int32_t base = attention ? t.attention_worker_base_port : t.expert_worker_base_port;
  if (base == 0) return "";
  const int64_t first = int64_t{base} + int64_t{PortIndex(config, index)} * t.ports_per_worker;
  return absl::StrCat(first, "-", first + t.ports_per_worker - 1);
}

int32_t MetricsPort(const ClusterConfig& config, const std::string& role, int32_t index) {
  const MetricsOptions& m = config.metrics;
  if (role == "coordinator") return m.coordinator_port;
  if (role == "router") return m.router_port;
  if (role == "attention_worker") {
    return m.attention_worker_base_port == 0
               ? 0
               : m.attention_worker_base_port + PortIndex(config, index);
  }
  if (role == "expert_worker") {
    return m.expert_worker_base_port == 0 ? 0
                                          : m.expert_worker_base_port + PortIndex(config, index);
  }
  return 0;
}

absl::StatusOr<ClusterConfig> LoadClusterConfig(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open cluster config"));
  std::stringstream buf;
  buf << in.rdbuf();
  return ParseClusterConfig(buf.str(), path);
}

}  // namespace sy::cluster

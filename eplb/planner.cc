#include "eplb/planner.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sy::eplb {
namespace {

// Indices of `w` by descending value, equal values by ascending index.
std::vector<int32_t> SortDescending(const std::vector<float>& w) {
  std::vector<int32_t> order(w.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return w[a] > w[b]; });
  return order;
}

struct Packing {
  std::vector<int32_t> pack;  // [item] pack index
  std::vector<int32_t> rank;  // [item] position within its pack
};

// Items in descending weight each go to the lightest pack that still has
// room (ties to the lower pack); every pack gets items / packs of them. Pack
// weights accumulate in float32, in that order.
Packing BalancedPacking(const std::vector<float>& w, int32_t num_packs) {
  const auto n = static_cast<int32_t>(w.size());
  const int32_t per_pack = n / num_packs;
  Packing out;
  out.pack.assign(n, 0);
  out.rank.assign(n, 0);
  if (per_pack == 1) {
    std::iota(out.pack.begin(), out.pack.end(), 0);
    return out;
  }
  std::vector<float> pack_w(num_packs, 0.0f);
  std::vector<int32_t> pack_n(num_packs, 0);
  for (const int32_t item : SortDescending(w)) {
    int32_t best = -1;
    for (int32_t p = 0; p < num_packs; ++p) {
      if (pack_n[p] < per_pack && (best < 0 || pack_w[p] < pack_w[best])) best = p;
    }
    out.pack[item] = best;
    out.rank[item] = pack_n[best]++;
    pack_w[best] += w[item];
  }
  return out;
}

struct Replication {
  std::vector<int32_t> phy2log;  // [num_phy]
  std::vector<int32_t> count;    // [num_log] replicas
};

// Slots 0..num_log-1 hold experts 0..num_log-1; each further slot goes to
// the expert with the largest load per replica (float32), ties to the lower
// index.
Replication Replicate(const std::vector<float>& w, int32_t num_phy) {
  const auto num_log = static_cast<int32_t>(w.size());
  Replication out;
  out.phy2log.resize(num_phy);
  std::iota(out.phy2log.begin(), out.phy2log.begin() + num_log, 0);
  out.count.assign(num_log, 1);
  for (int32_t slot = num_log; slot < num_phy; ++slot) {
    int32_t best = 0;
    float best_v = w[0] / static_cast<float>(out.count[0]);
    for (int32_t e = 1; e < num_log; ++e) {
      const float v = w[e] / static_cast<float>(out.count[e]);
      if (v > best_v) {
        best = e;
        best_v = v;
      }
    }
    out.phy2log[slot] = best;
    ++out.count[best];
  }
  return out;
}

std::vector<int32_t> Inverse(const std::vector<int32_t>& perm) {
  std::vector<int32_t> inv(perm.size());
  for (size_t i = 0; i < perm.size(); ++i)
    inv[static_cast<size_t>(perm[i])] = static_cast<int32_t>(i);
  return inv;
}

// One layer of DeepSeek's hierarchical policy (global: groups = nodes = 1).
std::vector<int32_t> PlanLayer(const std::vector<float>& w, const PlanShape& s, int32_t groups,
                               int32_t nodes) {
  const int32_t E = s.num_logical, P = s.num_physical;
  const int32_t group_size = E / groups, groups_per_node = groups / nodes;
  const int32_t log_per_node = E / nodes, phy_per_node = P / nodes;
  const int32_t workers_per_node = s.num_workers / nodes, phy_per_worker = P / s.num_workers;

  // 1. Whole groups onto nodes by their total load.
  std::vector<float> group_w(groups, 0.0f);
  for (int32_t g = 0; g < groups; ++g) {
    for (int32_t j = 0; j < group_size; ++j) group_w[g] += w[g * group_size + j];
  }
  const Packing node_of_group = BalancedPacking(group_w, nodes);
  // Node-major ids: node n owns [n * E/N, (n + 1) * E/N).
  std::vector<int32_t> log2mlog(E);
  for (int32_t g = 0; g < groups; ++g) {
    const int32_t base =
        (node_of_group.pack[g] * groups_per_node + node_of_group.rank[g]) * group_size;
    for (int32_t j = 0; j < group_size; ++j) log2mlog[g * group_size + j] = base + j;
  }
  const std::vector<int32_t> mlog2log = Inverse(log2mlog);

  std::vector<int32_t> phy2log(P);
  for (int32_t n = 0; n < nodes; ++n) {
    // 2. Replicas within the node.
    std::vector<float> node_w(log_per_node);
    for (int32_t k = 0; k < log_per_node; ++k) node_w[k] = w[mlog2log[n * log_per_node + k]];
    const Replication rep = Replicate(node_w, phy_per_node);
    // 3. The node's slots onto its workers by load per replica.
    std::vector<float> slot_w(phy_per_node);
    for (int32_t q = 0; q < phy_per_node; ++q) {
      const int32_t m = rep.phy2log[q];
      slot_w[q] = node_w[m] / static_cast<float>(rep.count[m]);
    }
    const Packing worker_of_slot = BalancedPacking(slot_w, workers_per_node);
    for (int32_t q = 0; q < phy_per_node; ++q) {
      const int32_t placed = worker_of_slot.pack[q] * phy_per_worker + worker_of_slot.rank[q];
      phy2log[n * phy_per_node + placed] = mlog2log[n * log_per_node + rep.phy2log[q]];
    }
  }
  return phy2log;
}

}  // namespace

absl::StatusOr<Policy> ParsePolicy(const std::string& name) {
  if (name == "global") return Policy::kGlobal;
  if (name == "hierarchical") return Policy::kHierarchical;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown policy \"", name, "\" (expected global or hierarchical)"));
}

const char* PolicyName(Policy policy) {
  return policy == Policy::kGlobal ? "global" : "hierarchical";
}

absl::Status ValidateShape(const PlanShape& s, Policy policy) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (s.num_logical <= 0) return bad("experts must be positive (got ", s.num_logical, ")");
  if (s.num_workers <= 0) return bad("gpus must be positive (got ", s.num_workers, ")");
  if (s.num_nodes <= 0) return bad("nodes must be positive (got ", s.num_nodes, ")");
  if (s.num_groups <= 0) return bad("groups must be positive (got ", s.num_groups, ")");
  if (s.num_physical < s.num_logical) {
    return bad("physical slots (", s.num_physical, ") fewer than experts (", s.num_logical, ")");
  }
  if (s.num_physical % s.num_workers != 0) {
    return bad("physical slots (", s.num_physical, ") not divisible by gpus (", s.num_workers, ")");
  }
  if (s.num_workers % s.num_nodes != 0) {
    return bad("gpus (", s.num_workers, ") not divisible by nodes (", s.num_nodes, ")");
  }
  if (policy == Policy::kHierarchical) {
    if (s.num_logical % s.num_groups != 0) {
      return bad("experts (", s.num_logical, ") not divisible by groups (", s.num_groups, ")");
    }
    if (s.num_groups % s.num_nodes != 0) {
      return bad("groups (", s.num_groups, ") not divisible by nodes (", s.num_nodes, ")");
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateLoad(const LoadMatrix& load, int32_t num_logical) {
  if (load.empty()) return absl::InvalidArgumentError("load has no layers");
  for (size_t l = 0; l < load.size(); ++l) {
    if (static_cast<int64_t>(load[l].size()) != num_logical) {
      return absl::InvalidArgumentError(absl::StrCat("load layer ", l, " has ", load[l].size(),
                                                     " experts, expected ", num_logical));
    }
    for (size_t e = 0; e < load[l].size(); ++e) {
      const double v = load[l][e];
      if (!std::isfinite(v) || v < 0.0) {
        return absl::InvalidArgumentError(absl::StrCat("load layer ", l, " expert ", e, " is ", v,
                                                       " (expected a finite count >= 0)"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidatePhy2Log(const Phy2Log& phy2log, int32_t num_layers, const PlanShape& s) {
  if (static_cast<int64_t>(phy2log.size()) != num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement has ", phy2log.size(), " layers, expected ", num_layers));
  }
  std::vector<int32_t> seen;
  for (size_t l = 0; l < phy2log.size(); ++l) {
    if (static_cast<int64_t>(phy2log[l].size()) != s.num_physical) {
      return absl::InvalidArgumentError(absl::StrCat(
          "placement layer ", l, " has ", phy2log[l].size(), " slots, expected ", s.num_physical));
    }
    seen.assign(static_cast<size_t>(s.num_logical), 0);
    for (size_t slot = 0; slot < phy2log[l].size(); ++slot) {
      const int32_t e = phy2log[l][slot];
      if (e < 0 || e >= s.num_logical) {
        return absl::InvalidArgumentError(absl::StrCat("placement layer ", l, " slot ", slot,
                                                       " holds expert ", e, ", outside [0, ",
                                                       s.num_logical, ")"));
      }
      seen[static_cast<size_t>(e)] = 1;
    }
    for (int32_t e = 0; e < s.num_logical; ++e) {
      if (seen[static_cast<size_t>(e)] == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("placement layer ", l, " has no slot for expert ", e));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Phy2Log> DeepSeekPlan(const LoadMatrix& load, const PlanShape& shape,
                                     Policy policy) {
  if (absl::Status st = ValidateShape(shape, policy); !st.ok()) return st;
  if (absl::Status st = ValidateLoad(load, shape.num_logical); !st.ok()) return st;
  const bool hier = policy == Policy::kHierarchical;
  const int32_t groups = hier ? shape.num_groups : 1, nodes = hier ? shape.num_nodes : 1;
  Phy2Log out;
  out.reserve(load.size());
  std::vector<float> w(static_cast<size_t>(shape.num_logical));
  for (const auto& row : load) {
    // DeepSeek plans on weight.float().
    for (size_t e = 0; e < row.size(); ++e) w[e] = static_cast<float>(row[e]);
    out.push_back(PlanLayer(w, shape, groups, nodes));
  }
  return out;
}

Score ScorePlacement(const LoadMatrix& load, const Phy2Log& phy2log, int32_t num_workers) {
  Score score;
  score.per_layer.reserve(load.size());
  std::vector<int32_t> replicas;
  std::vector<double> worker;
  for (size_t l = 0; l < load.size(); ++l) {
    const auto& slots = phy2log[l];
    replicas.assign(load[l].size(), 0);
    for (const int32_t e : slots) ++replicas[static_cast<size_t>(e)];
    const size_t per_worker = slots.size() / static_cast<size_t>(num_workers);
    worker.assign(static_cast<size_t>(num_workers), 0.0);
    for (size_t s = 0; s < slots.size(); ++s) {
      const auto e = static_cast<size_t>(slots[s]);
      worker[s / per_worker] += load[l][e] / replicas[e];
    }
    const double max = *std::max_element(worker.begin(), worker.end());
    const double mean = std::accumulate(worker.begin(), worker.end(), 0.0) / num_workers;
    score.per_layer.push_back(max > 0.0 ? mean / max : 1.0);
  }
  if (!score.per_layer.empty()) {
    score.balancedness = std::accumulate(score.per_layer.begin(), score.per_layer.end(), 0.0) /
                         static_cast<double>(score.per_layer.size());
    score.worst_layer = *std::min_element(score.per_layer.begin(), score.per_layer.end());
  }
  return score;
}

Movement CountMovement(const Phy2Log& current, const Phy2Log& next, int32_t num_workers) {
  Movement m;
  std::set<std::pair<int32_t, int32_t>> held;  // (worker, expert)
  for (size_t l = 0; l < next.size(); ++l) {
    const size_t per_worker = next[l].size() / static_cast<size_t>(num_workers);
    held.clear();
    for (size_t s = 0; s < current[l].size(); ++s) {
      held.emplace(static_cast<int32_t>(s / per_worker), current[l][s]);
    }
    std::set<std::pair<int32_t, int32_t>> placed;
    for (size_t s = 0; s < next[l].size(); ++s) {
      const std::pair<int32_t, int32_t> key(static_cast<int32_t>(s / per_worker), next[l][s]);
      // A second replica of an expert on the same worker needs no second copy.
      if (held.count(key) == 0 && placed.insert(key).second) ++m.expert_loads;
    }
    m.total_slots += static_cast<int64_t>(next[l].size());
  }
  return m;
}

}  // namespace sy::eplb

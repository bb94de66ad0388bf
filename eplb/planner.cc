#include "eplb/planner.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <numeric>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"

namespace sy::eplb {
namespace {

// Indices of `w` by descending value, equal values by ascending index.
template <typename T>
std::vector<int32_t> SortDescending(const std::vector<T>& w) {
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
// weights accumulate in T (float32 for DeepSeek's steps), in that order.
template <typename T>
Packing BalancedPacking(const std::vector<T>& w, int32_t num_packs) {
  const auto n = static_cast<int32_t>(w.size());
  const int32_t per_pack = n / num_packs;
  Packing out;
  out.pack.assign(n, 0);
  out.rank.assign(n, 0);
  if (per_pack == 1) {
    std::iota(out.pack.begin(), out.pack.end(), 0);
    return out;
  }
  std::vector<T> pack_w(num_packs, T{0});
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
// the expert with the largest load per replica (in T), ties to the lower
// index.
template <typename T>
Replication Replicate(const std::vector<T>& w, int32_t num_phy) {
  const auto num_log = static_cast<int32_t>(w.size());
  Replication out;
  out.phy2log.resize(num_phy);
  std::iota(out.phy2log.begin(), out.phy2log.begin() + num_log, 0);
  out.count.assign(num_log, 1);
  for (int32_t slot = num_log; slot < num_phy; ++slot) {
    int32_t best = 0;
    T best_v = w[0] / static_cast<T>(out.count[0]);
    for (int32_t e = 1; e < num_log; ++e) {
      const T v = w[e] / static_cast<T>(out.count[e]);
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

// ---- Switchyard's planner --------------------------------------------------

// Greedy packing as DeepSeek's, in double: the pack of each item.
std::vector<int32_t> PackGreedy(const std::vector<double>& w, int32_t num_packs) {
  return BalancedPacking(w, num_packs).pack;
}

// Groups onto nodes, groups / nodes each, by exhaustive search for the
// assignment that minimises `objective` (which must be at least every node's
// load / `scale`): groups in descending weight, nodes interchangeable (a
// group opens at most one empty node), branches pruned once a node's load /
// scale reaches the best found. Starts from `start` and returns it when
// nothing beats it.
class AssignmentSearch {
 public:
  using Objective = std::function<double(const std::vector<int32_t>& pack)>;

  AssignmentSearch(const std::vector<double>& w, int32_t nodes, double scale, Objective objective,
                   std::vector<int32_t> start)
      : w_(w),
        nodes_(nodes),
        per_node_(static_cast<int32_t>(w.size()) / nodes),
        scale_(scale),
        objective_(std::move(objective)),
        order_(SortDescending(w)),
        best_(std::move(start)) {
    best_value_ = objective_(best_);
  }

  std::vector<int32_t> Solve() {
    pack_.assign(w_.size(), -1);
    load_.assign(nodes_, 0.0);
    count_.assign(nodes_, 0);
    Visit(0);
    return best_;
  }
  double best_value() const { return best_value_; }

 private:
  void Visit(size_t k) {
    if (k == order_.size()) {
      const double v = objective_(pack_);
      if (v < best_value_ * (1.0 - 1e-12)) {
        best_value_ = v;
        best_ = pack_;
      }
      return;
    }
    const int32_t g = order_[k];
    bool opened_empty = false;
    for (int32_t n = 0; n < nodes_; ++n) {
      if (count_[n] == per_node_) continue;
      if (count_[n] == 0) {
        if (opened_empty) continue;  // the same subtree as the first empty node
        opened_empty = true;
      }
      if ((load_[n] + w_[g]) / scale_ >= best_value_ * (1.0 - 1e-12)) continue;
      load_[n] += w_[g];
      ++count_[n];
      pack_[g] = n;
      Visit(k + 1);
      pack_[g] = -1;
      --count_[n];
      load_[n] -= w_[g];
    }
  }

  const std::vector<double>& w_;
  const int32_t nodes_, per_node_;
  const double scale_;
  const Objective objective_;
  const std::vector<int32_t> order_;
  std::vector<int32_t> pack_, count_, best_;
  std::vector<double> load_;
  double best_value_ = 0.0;
};

// The heaviest node of an assignment.
double MaxNodeLoad(const std::vector<double>& w, const std::vector<int32_t>& pack, int32_t nodes) {
  std::vector<double> load(nodes, 0.0);
  for (size_t g = 0; g < w.size(); ++g) load[pack[g]] += w[g];
  return *std::max_element(load.begin(), load.end());
}

// Exact: the assignment with the lightest heaviest node.
AssignmentSearch NodeLoadSearch(const std::vector<double>& w, int32_t nodes) {
  return AssignmentSearch(
      w, nodes, 1.0,
      [&w, nodes](const std::vector<int32_t>& p) { return MaxNodeLoad(w, p, nodes); },
      PackGreedy(w, nodes));
}

// The heaviest load per replica once `slots` slots are shared out among
// experts `w` by ReplicaCounts (defined below).
double ReplicatedMax(const std::vector<double>& w, int32_t slots);

// Groups onto nodes for the hierarchical plan, judged by what a node can
// reach once its slots are replicated and packed: max over nodes of
// max(node load / workers per node, its replication bound). Exhaustive up
// to kMaxBoundGroups groups (8 groups on 4 nodes: 105 assignments), pruned
// by node loads; beyond that the node-load search above.
inline constexpr int32_t kMaxBoundGroups = 10;

// Max over nodes of max(node load / workers, its replication bound).
double NodeBound(const std::vector<double>& expert_w, int32_t groups, int32_t nodes, int32_t slots,
                 int32_t workers, const std::vector<int32_t>& pack) {
  const auto group_size = static_cast<int32_t>(expert_w.size()) / groups;
  double f = 0.0;
  for (int32_t n = 0; n < nodes; ++n) {
    std::vector<double> w;
    double load = 0.0;
    for (int32_t g = 0; g < groups; ++g) {
      if (pack[g] != n) continue;
      for (int32_t j = 0; j < group_size; ++j) {
        w.push_back(expert_w[g * group_size + j]);
        load += expert_w[g * group_size + j];
      }
    }
    f = std::max({f, load / workers, ReplicatedMax(w, slots)});
  }
  return f;
}

std::vector<double> GroupLoads(const std::vector<double>& expert_w, int32_t groups) {
  std::vector<double> gw(groups, 0.0);
  const auto group_size = static_cast<int32_t>(expert_w.size()) / groups;
  for (size_t e = 0; e < expert_w.size(); ++e) gw[e / group_size] += expert_w[e];
  return gw;
}

// Slots (items of weight w[i], on worker `worker[i]`, a fixed number per
// worker) rebalanced by swaps: repeatedly the heaviest worker trades one of
// its items for a lighter item of another worker, taking the trade that
// lowers the maximum most (or, with `cost`, the cheapest one that lowers
// it), until none does or the maximum is at most `target_max`.
struct Swapper {
  const std::vector<double>& w;
  std::vector<int32_t>& worker;
  int32_t num_workers;
  double target_max = 0.0;
  // With costs: item i on worker x costs 0 when (*held)[x * num_experts +
  // (*item_expert)[i]] is set, else 1 (a weight copy); null for no costs.
  const std::vector<char>* held = nullptr;
  const std::vector<int32_t>* item_expert = nullptr;
  int32_t num_experts = 0;

  int Cost(size_t i, int32_t x) const {
    return (*held)[static_cast<size_t>(x) * num_experts + (*item_expert)[i]] ? 0 : 1;
  }

  void Run() {
    std::vector<double> load(num_workers, 0.0);
    for (size_t i = 0; i < w.size(); ++i) load[worker[i]] += w[i];
    // No placement of these items beats max(mean load, heaviest item).
    const double floor = std::max(std::accumulate(load.begin(), load.end(), 0.0) / num_workers,
                                  w.empty() ? 0.0 : *std::max_element(w.begin(), w.end()));
    // Within 1e-4 of that floor is as good as balanced (and saves the tail
    // of tiny swaps).
    const double stop = std::max(target_max, floor * (1.0 + 1e-4));
    for (int iter = 0; iter < 100000; ++iter) {
      const auto h =
          static_cast<int32_t>(std::max_element(load.begin(), load.end()) - load.begin());
      if (load[h] <= stop) break;
      int best_cost = std::numeric_limits<int>::max();
      double best_max = load[h];
      int32_t bi = -1, bk = -1;
      for (size_t i = 0; i < w.size(); ++i) {
        if (worker[i] != h) continue;
        for (size_t k = 0; k < w.size(); ++k) {
          const int32_t j = worker[k];
          if (j == h) continue;
          const double d = w[i] - w[k];
          if (d <= 0) continue;
          const double m = std::max(load[h] - d, load[j] + d);
          if (m >= load[h] * (1.0 - 1e-12)) continue;
          const int c = held != nullptr ? Cost(i, j) + Cost(k, h) - Cost(i, h) - Cost(k, j) : 0;
          if (c < best_cost || (c == best_cost && m < best_max * (1.0 - 1e-12))) {
            best_cost = c;
            best_max = m;
            bi = static_cast<int32_t>(i);
            bk = static_cast<int32_t>(k);
          }
        }
      }
      if (bi < 0) break;
      const double d = w[bi] - w[bk];
      load[worker[bi]] -= d;
      load[worker[bk]] += d;
      std::swap(worker[bi], worker[bk]);
    }
  }
};

// Greedy, then the swaps above between nodes' groups (for more groups
// than the exact search takes).
std::vector<int32_t> GroupsBySwaps(const std::vector<double>& w, int32_t nodes) {
  std::vector<int32_t> pack = PackGreedy(w, nodes);
  Swapper{w, pack, nodes}.Run();
  return pack;
}

// Groups onto nodes, the heaviest node as light as the search finds.
std::vector<int32_t> GroupsToNodes(const std::vector<double>& w, int32_t nodes) {
  if (nodes == 1) return std::vector<int32_t>(w.size(), 0);
  if (static_cast<int32_t>(w.size()) <= kMaxExactGroups) return NodeLoadSearch(w, nodes).Solve();
  return GroupsBySwaps(w, nodes);
}

// Replica counts as DeepSeek's, in double.
std::vector<int32_t> ReplicaCounts(const std::vector<double>& w, int32_t slots) {
  return Replicate(w, slots).count;
}

double ReplicatedMax(const std::vector<double>& w, int32_t slots) {
  if (w.empty()) return 0.0;
  const std::vector<int32_t> count = ReplicaCounts(w, slots);
  double m = 0.0;
  for (size_t e = 0; e < w.size(); ++e) m = std::max(m, w[e] / count[e]);
  return m;
}

// No placement of `slots` slots on `workers` balances a layer better: its
// heaviest worker carries at least the mean, and at least the largest load
// per replica of the best replica counts (which ReplicaCounts attains).
double LayerReplicationBound(const std::vector<double>& w, int32_t slots, int32_t workers) {
  const double mean = std::accumulate(w.begin(), w.end(), 0.0) / workers;
  const double floor = std::max(mean, ReplicatedMax(w, slots));
  return floor > 0 ? mean / floor : 1.0;
}

// A set of experts' replicas packed onto workers (greedy, then swaps).
struct NodePacking {
  std::vector<int32_t> count;        // [expert] replicas
  std::vector<int32_t> item_expert;  // [item] expert (index into the set)
  std::vector<double> item_w;        // [item] load per replica
  std::vector<int32_t> worker;       // [item] worker
  double max = 0.0;                  // heaviest worker
};

NodePacking PackNode(const std::vector<double>& w, std::vector<int32_t> count, int32_t workers) {
  NodePacking p;
  p.count = std::move(count);
  for (size_t k = 0; k < w.size(); ++k) {
    for (int32_t r = 0; r < p.count[k]; ++r) {
      p.item_expert.push_back(static_cast<int32_t>(k));
      p.item_w.push_back(w[k] / p.count[k]);
    }
  }
  p.worker = PackGreedy(p.item_w, workers);
  Swapper{p.item_w, p.worker, workers}.Run();
  std::vector<double> load(workers, 0.0);
  for (size_t i = 0; i < p.item_w.size(); ++i) load[p.worker[i]] += p.item_w[i];
  p.max = *std::max_element(load.begin(), load.end());
  return p;
}

// Replica counts that minimise the largest load per replica do not always
// pack best: a hot expert's few large replicas can leave no worker room.
// While it helps, move one replica to an expert on the heaviest worker
// (its largest items first) from the expert that loses least by it.
void ImproveReplicaCounts(const std::vector<double>& w, int32_t workers, NodePacking* best) {
  constexpr int kRounds = 12, kCandidates = 3;
  const double mean = std::accumulate(w.begin(), w.end(), 0.0) / workers;
  for (int round = 0; round < kRounds; ++round) {
    if (best->max <= mean * (1.0 + 5e-4)) break;  // balanced already
    std::vector<double> load(workers, 0.0);
    for (size_t i = 0; i < best->item_w.size(); ++i) load[best->worker[i]] += best->item_w[i];
    const auto h = static_cast<int32_t>(std::max_element(load.begin(), load.end()) - load.begin());
    std::vector<int32_t> on_h;
    for (size_t i = 0; i < best->item_w.size(); ++i) {
      if (best->worker[i] == h) on_h.push_back(static_cast<int32_t>(i));
    }
    std::stable_sort(on_h.begin(), on_h.end(),
                     [&](int32_t a, int32_t b) { return best->item_w[a] > best->item_w[b]; });
    bool improved = false;
    for (int c = 0; c < kCandidates && c < static_cast<int>(on_h.size()) && !improved; ++c) {
      const int32_t b = best->item_expert[on_h[c]];
      int32_t a = -1;
      for (size_t e = 0; e < w.size(); ++e) {
        if (static_cast<int32_t>(e) == b || best->count[e] < 2) continue;
        if (a < 0 || w[e] / (best->count[e] - 1) < w[a] / (best->count[a] - 1)) {
          a = static_cast<int32_t>(e);
        }
      }
      if (a < 0 || w[a] / (best->count[a] - 1) >= best->max) continue;
      std::vector<int32_t> count = best->count;
      ++count[b];
      --count[a];
      NodePacking cand = PackNode(w, std::move(count), workers);
      if (cand.max < best->max * (1.0 - 1e-9)) {
        *best = std::move(cand);
        improved = true;
      }
    }
    if (!improved) break;
  }
}

// One layer from scratch (global: groups = nodes = 1).
std::vector<int32_t> OurLayer(const std::vector<double>& w, const PlanShape& s, int32_t groups,
                              int32_t nodes) {
  const int32_t E = s.num_logical, P = s.num_physical;
  const int32_t group_size = E / groups, phy_per_node = P / nodes;
  const int32_t workers_per_node = s.num_workers / nodes, per_worker = P / s.num_workers;
  const std::vector<double> group_w = GroupLoads(w, groups);
  std::vector<int32_t> node_of_group = GroupsToNodes(group_w, nodes);
  if (nodes > 1 && groups <= kMaxBoundGroups) {
    node_of_group = AssignmentSearch(
                        group_w, nodes, workers_per_node,
                        [&](const std::vector<int32_t>& p) {
                          return NodeBound(w, groups, nodes, phy_per_node, workers_per_node, p);
                        },
                        node_of_group)
                        .Solve();
  }
  std::vector<int32_t> phy2log(P);
  for (int32_t n = 0; n < nodes; ++n) {
    std::vector<int32_t> experts;  // this node's experts
    for (int32_t g = 0; g < groups; ++g) {
      if (node_of_group[g] != n) continue;
      for (int32_t j = 0; j < group_size; ++j) experts.push_back(g * group_size + j);
    }
    std::vector<double> node_w(experts.size());
    for (size_t k = 0; k < experts.size(); ++k) node_w[k] = w[experts[k]];
    NodePacking best = PackNode(node_w, ReplicaCounts(node_w, phy_per_node), workers_per_node);
    ImproveReplicaCounts(node_w, workers_per_node, &best);
    std::vector<int32_t> fill(workers_per_node, 0);
    for (size_t i = 0; i < best.item_w.size(); ++i) {
      const int32_t x = best.worker[i];
      phy2log[n * phy_per_node + x * per_worker + fill[x]++] = experts[best.item_expert[i]];
    }
  }
  return phy2log;
}

// Global minimal movement for one layer: see PlannerOptions.
std::vector<int32_t> OurLayerFrom(const std::vector<double>& w, const PlanShape& s,
                                  const std::vector<int32_t>& current, double tolerance) {
  const int32_t E = s.num_logical, P = s.num_physical, W = s.num_workers;
  const int32_t per_worker = P / W;
  // The from-scratch plan reaches the replication bound (to 1e-4 on the
  // DeepSeek-V3-like loads), so the bound stands in for it.
  const double target = LayerReplicationBound(w, P, W) - tolerance;
  const double mean = std::accumulate(w.begin(), w.end(), 0.0) / W;
  const double target_max = target > 0 ? mean / target : 0.0;

  const std::vector<int32_t> count = ReplicaCounts(w, P);
  // Keep each expert's current slots, up to its new replica count.
  std::vector<int32_t> kept(E, 0), item_expert, item_worker;
  std::vector<double> item_w;
  // held[x * E + e]: worker x holds expert e now (moving it there is free).
  std::vector<char> held(static_cast<size_t>(W) * E, 0);
  std::vector<int32_t> free_slots;
  for (int32_t slot = 0; slot < P; ++slot) {
    const int32_t e = current[slot];
    held[static_cast<size_t>(slot / per_worker) * E + e] = 1;
    if (kept[e] < count[e]) {
      ++kept[e];
      item_expert.push_back(e);
      item_worker.push_back(slot / per_worker);
      item_w.push_back(w[e] / count[e]);
    } else {
      free_slots.push_back(slot);
    }
  }
  // The missing replicas, heaviest first, onto the lightest worker with a
  // free slot.
  std::vector<double> load(W, 0.0);
  for (size_t i = 0; i < item_w.size(); ++i) load[item_worker[i]] += item_w[i];
  std::vector<int32_t> free_on(W, 0);
  for (const int32_t slot : free_slots) ++free_on[slot / per_worker];
  std::vector<int32_t> todo;
  std::vector<double> todo_w;
  for (int32_t e = 0; e < E; ++e) {
    for (int32_t r = kept[e]; r < count[e]; ++r) {
      todo.push_back(e);
      todo_w.push_back(w[e] / count[e]);
    }
  }
  for (const int32_t t : SortDescending(todo_w)) {
    int32_t best = -1;
    for (int32_t x = 0; x < W; ++x) {
      if (free_on[x] > 0 && (best < 0 || load[x] < load[best])) best = x;
    }
    --free_on[best];
    load[best] += todo_w[t];
    item_expert.push_back(todo[t]);
    item_worker.push_back(best);
    item_w.push_back(todo_w[t]);
  }
  Swapper sw{item_w, item_worker, W};
  sw.target_max = target_max;
  sw.held = &held;
  sw.item_expert = &item_expert;
  sw.num_experts = E;
  sw.Run();
  // Items that stayed keep their slot; the others fill the worker's free
  // slots.
  std::vector<int32_t> phy2log(P, -1);
  std::vector<std::vector<int32_t>> open(W);
  std::vector<char> placed(item_w.size(), 0);
  for (size_t i = 0; i < item_w.size(); ++i) {
    // An item on a worker that holds its expert now takes one of those slots.
    const int32_t x = item_worker[i], e = item_expert[i];
    for (int32_t slot = x * per_worker; slot < (x + 1) * per_worker; ++slot) {
      if (phy2log[slot] < 0 && current[slot] == e) {
        phy2log[slot] = e;
        placed[i] = 1;
        break;
      }
    }
  }
  for (int32_t slot = 0; slot < P; ++slot) {
    if (phy2log[slot] < 0) open[slot / per_worker].push_back(slot);
  }
  std::vector<size_t> next(W, 0);
  for (size_t i = 0; i < item_w.size(); ++i) {
    if (placed[i]) continue;
    const int32_t x = item_worker[i];
    phy2log[open[x][next[x]++]] = item_expert[i];
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

namespace {

// CountMovement with the worker of each slot given: current_worker(l, s)
// and next_worker(l, s).
template <typename CurrentWorker, typename NextWorker>
Movement CountMovementBy(const Phy2Log& current, const Phy2Log& next, int32_t num_workers,
                         CurrentWorker current_worker, NextWorker next_worker) {
  Movement m;
  m.per_worker.assign(next.size(), std::vector<int64_t>(static_cast<size_t>(num_workers), 0));
  std::set<std::pair<int32_t, int32_t>> held;  // (worker, expert)
  for (size_t l = 0; l < next.size(); ++l) {
    held.clear();
    for (size_t s = 0; s < current[l].size(); ++s)
      held.emplace(current_worker(l, s), current[l][s]);
    std::set<std::pair<int32_t, int32_t>> placed;
    for (size_t s = 0; s < next[l].size(); ++s) {
      const std::pair<int32_t, int32_t> key(next_worker(l, s), next[l][s]);
      // A second replica of an expert on the same worker needs no second copy.
      if (held.count(key) == 0 && placed.insert(key).second) {
        ++m.expert_loads;
        ++m.per_worker[l][static_cast<size_t>(key.first)];
      }
    }
    m.total_slots += static_cast<int64_t>(next[l].size());
  }
  return m;
}

}  // namespace

Movement CountMovement(const Phy2Log& current, const Phy2Log& next, int32_t num_workers) {
  auto even = [&](const Phy2Log& p) {
    return [&p, num_workers](size_t l, size_t s) {
      return static_cast<int32_t>(s / (p[l].size() / static_cast<size_t>(num_workers)));
    };
  };
  return CountMovementBy(current, next, num_workers, even(current), even(next));
}

Movement CountMovement(const Placement& current, const Placement& next) {
  auto ranged = [](const Placement& p) {
    return [&p](size_t, size_t s) { return p.WorkerOfSlot(static_cast<int32_t>(s)); };
  };
  return CountMovementBy(current.phy2log, next.phy2log, next.num_workers, ranged(current),
                         ranged(next));
}

absl::StatusOr<Phy2Log> Plan(const LoadMatrix& load, const PlanShape& shape,
                             const PlannerOptions& options) {
  if (absl::Status st = ValidateShape(shape, options.policy); !st.ok()) return st;
  if (absl::Status st = ValidateLoad(load, shape.num_logical); !st.ok()) return st;
  const auto layers = static_cast<int32_t>(load.size());
  if (options.current != nullptr) {
    if (absl::Status st = ValidatePhy2Log(*options.current, layers, shape); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("current placement: ", st.message()));
    }
  }
  const bool hier = options.policy == Policy::kHierarchical;
  const int32_t groups = hier ? shape.num_groups : 1, nodes = hier ? shape.num_nodes : 1;
  Phy2Log out;
  out.reserve(load.size());
  for (int32_t l = 0; l < layers; ++l) {
    if (options.current != nullptr && !hier) {
      out.push_back(
          OurLayerFrom(load[l], shape, (*options.current)[l], options.movement_tolerance));
    } else {
      out.push_back(OurLayer(load[l], shape, groups, nodes));
    }
  }
  return out;
}

std::vector<double> HierarchicalBound(const LoadMatrix& load, const PlanShape& shape) {
  std::vector<double> out;
  for (const auto& row : load) {
    const std::vector<double> group_w = GroupLoads(row, shape.num_groups);
    const double total = std::accumulate(group_w.begin(), group_w.end(), 0.0);
    const double best =
        MaxNodeLoad(group_w, GroupsToNodes(group_w, shape.num_nodes), shape.num_nodes);
    out.push_back(best > 0 ? total / shape.num_nodes / best : 1.0);
  }
  return out;
}

std::vector<double> ReplicationBound(const LoadMatrix& load, const PlanShape& shape) {
  std::vector<double> out;
  for (const auto& row : load) {
    out.push_back(LayerReplicationBound(row, shape.num_physical, shape.num_workers));
  }
  return out;
}

std::vector<double> HierarchicalReplicationBound(const LoadMatrix& load, const PlanShape& shape) {
  std::vector<double> out;
  const int32_t slots = shape.num_physical / shape.num_nodes;
  const int32_t workers = shape.num_workers / shape.num_nodes;
  for (const auto& row : load) {
    const double total = std::accumulate(row.begin(), row.end(), 0.0);
    const std::vector<double> group_w = GroupLoads(row, shape.num_groups);
    auto objective = [&](const std::vector<int32_t>& p) {
      return NodeBound(row, shape.num_groups, shape.num_nodes, slots, workers, p);
    };
    const std::vector<int32_t> start = GroupsToNodes(group_w, shape.num_nodes);
    double f = objective(start);
    if (shape.num_groups <= kMaxBoundGroups) {
      AssignmentSearch search(group_w, shape.num_nodes, workers, objective, start);
      search.Solve();
      f = search.best_value();
    }
    out.push_back(f > 0 ? total / shape.num_workers / f : 1.0);
  }
  return out;
}

LoadMatrix DecayedAverage(const std::vector<LoadMatrix>& windows, double decay) {
  if (windows.empty()) return {};
  LoadMatrix out = windows.back();
  for (auto& row : out) std::fill(row.begin(), row.end(), 0.0);
  double weight = 1.0, total = 0.0;
  for (size_t t = windows.size(); t-- > 0;) {
    for (size_t l = 0; l < out.size(); ++l) {
      for (size_t e = 0; e < out[l].size(); ++e) out[l][e] += weight * windows[t][l][e];
    }
    total += weight;
    weight *= decay;
  }
  for (auto& row : out) {
    for (double& v : row) v /= total;
  }
  return out;
}

double ChooseDecay(const std::vector<LoadMatrix>& windows, const PlanShape& shape, Policy policy,
                   const std::vector<double>& candidates) {
  if (windows.size() < 3 || candidates.empty()) return 0.0;
  PlannerOptions opt;
  opt.policy = policy;
  double best_decay = candidates.front(), best_score = -1.0;
  for (const double decay : candidates) {
    double score = 0.0;
    for (size_t t = 2; t < windows.size(); ++t) {
      const std::vector<LoadMatrix> past(windows.begin(), windows.begin() + t);
      const auto plan = Plan(DecayedAverage(past, decay), shape, opt);
      if (!plan.ok()) return 0.0;
      score += ScorePlacement(windows[t], *plan, shape.num_workers).balancedness;
    }
    if (score > best_score + 1e-12) {
      best_score = score;
      best_decay = decay;
    }
  }
  return best_decay;
}

}  // namespace sy::eplb

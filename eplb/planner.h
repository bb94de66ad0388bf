// Placement planning: given per-layer token counts of the logical experts,
// decide which logical expert each physical slot holds (phy2log), and score
// placements. No service dependencies; the coordinator and switchyard-eplb
// use it.
//
// Shapes follow DeepSeek's EPLB: E logical experts in G groups, P physical
// slots per layer spread over W expert workers ("GPUs" in DeepSeek's terms)
// on N nodes; slot s lives on worker s / (P / W) and node s / (P / N).
//
// Thread-safety: free functions on values; safe to call concurrently.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "eplb/placement.h"

namespace sy::eplb {

// [layer][logical expert] tokens routed in a window. Non-negative, finite.
using LoadMatrix = std::vector<std::vector<double>>;
// [layer][physical slot] logical expert.
using Phy2Log = std::vector<std::vector<int32_t>>;

enum class Policy {
  // Expert groups packed onto nodes, replicas chosen within each node, the
  // node's slots packed onto its workers: every replica of a group's experts
  // stays on that group's node (DeepSeek's prefill policy).
  kHierarchical,
  // One group, one node: replicas anywhere (DeepSeek's decode policy).
  kGlobal,
};

// "global" / "hierarchical"; InvalidArgument naming the value otherwise.
absl::StatusOr<Policy> ParsePolicy(const std::string& name);
const char* PolicyName(Policy policy);

struct PlanShape {
  int32_t num_logical = 0;   // E
  int32_t num_physical = 0;  // P >= E
  int32_t num_groups = 1;    // G (kHierarchical)
  int32_t num_nodes = 1;     // N
  int32_t num_workers = 1;   // W

  int32_t slots_per_worker() const { return num_physical / num_workers; }
};

// OK when `policy` can plan `shape`; otherwise InvalidArgument naming the
// sizes that do not divide (e.g. "experts (256) not divisible by groups (7)").
absl::Status ValidateShape(const PlanShape& shape, Policy policy);

// OK when `load` is [layers][num_logical] with finite values >= 0 (layers
// >= 1); otherwise InvalidArgument naming the layer and expert.
absl::Status ValidateLoad(const LoadMatrix& load, int32_t num_logical);

// OK when `phy2log` is a placement for `shape` over `num_layers` layers:
// [num_layers][num_physical] ids in [0, num_logical), every expert with at
// least one slot in every layer. InvalidArgument naming the first problem.
absl::Status ValidatePhy2Log(const Phy2Log& phy2log, int32_t num_layers, const PlanShape& shape);

// DeepSeek's EPLB (deepseek-ai/EPLB, eplb.py at d52c72d) reproduced: the
// same greedy steps in float32 arithmetic, ties to the lower index, equal
// loads ordered by ascending index (the stable order; the reference
// ../shared/tools/eplb_ref/ sorts the same way). For integer token counts
// (sums below 2^24 per group) the result equals the reference's phy2log
// exactly; the tests check it on cases it generated.
absl::StatusOr<Phy2Log> DeepSeekPlan(const LoadMatrix& load, const PlanShape& shape, Policy policy);

// Switchyard's planner: DeepSeek's steps, then what they leave on the table.
//  - Hierarchical: whole groups onto nodes by an exact search for the
//    assignment whose heaviest node is lightest (branch and bound; beyond
//    kMaxExactGroups groups, DeepSeek's greedy packing improved by swapping
//    groups between the heaviest node and the others).
//  - Each packing of slots onto workers (the whole layer for global, each
//    node's slots for hierarchical) refined by swapping a slot of the
//    heaviest worker with a lighter worker's while that lowers the maximum.
//  - Minimal movement (global, with `current`): replica counts as from
//    scratch, but every expert keeps the slots it holds now (up to its new
//    replica count), only the freed slots take the new replicas, and the
//    refinement stops once the layer is within `movement_tolerance` of the
//    from-scratch plan's balancedness, preferring swaps that move nothing.
// Deterministic; no state between calls.
inline constexpr int32_t kMaxExactGroups = 16;

struct PlannerOptions {
  Policy policy = Policy::kGlobal;
  // The placement serving now (valid for the same shape and layers), or
  // null to plan from scratch.
  const Phy2Log* current = nullptr;
  // Per layer balancedness the minimal-movement plan may give up against
  // the from-scratch plan.
  double movement_tolerance = 0.004;
};

absl::StatusOr<Phy2Log> Plan(const LoadMatrix& load, const PlanShape& shape,
                             const PlannerOptions& options);

// Per layer upper bound on the balancedness of any placement that keeps
// each group's replicas on one node, each node holding groups / nodes
// whole groups: mean node load over the lightest achievable heaviest node
// (exact for up to kMaxExactGroups groups, else the best found).
std::vector<double> HierarchicalBound(const LoadMatrix& load, const PlanShape& shape);

// Per layer upper bound on the balancedness of any placement with P slots on
// W workers: mean worker load over max(mean, the largest load per replica
// of the best replica counts).
std::vector<double> ReplicationBound(const LoadMatrix& load, const PlanShape& shape);

// The same with each node's replication counted: a node's heaviest worker
// carries at least max(node load / workers per node, the largest load per
// replica once its P / N slots are replicated), minimised over whole-group
// assignments (exact up to 10 groups, else the assignment the planner
// picks). Tighter than HierarchicalBound wherever a node's hot experts
// need more replicas than its spare slots allow.
std::vector<double> HierarchicalReplicationBound(const LoadMatrix& load, const PlanShape& shape);

// What to plan the next window on: the average of past windows (oldest
// first) with weight decay^age, age 0 for the newest. decay in [0, 1]: 1 is
// the plain mean, 0 the newest window alone. Windows must share one shape
// (ValidateLoad each first).
LoadMatrix DecayedAverage(const std::vector<LoadMatrix>& windows, double decay);

// The decay to plan the next window with, chosen by replaying the past:
// each candidate plans every window t >= 2 of `windows` from the windows
// before it, and the one whose plans scored best on the windows they did
// not see wins (ties to the smaller decay). Averaging past windows pays
// while the load drifts slowly (it evens out sampling noise) and costs when
// it drifts fast; this picks the side the trace is on. With fewer than 3
// windows, 0 (the last window alone).
double ChooseDecay(const std::vector<LoadMatrix>& windows, const PlanShape& shape, Policy policy,
                   const std::vector<double>& candidates = {0.0, 0.25, 0.5});

struct Score {
  // Per layer: mean worker load / max worker load, where a worker's load
  // is the sum over its slots of load[expert] / replicas[expert] (a layer
  // without load counts as 1).
  std::vector<double> per_layer;
  double balancedness = 1.0;  // mean over layers
  double worst_layer = 1.0;   // min over layers
};

// Scores a valid placement (ValidatePhy2Log) on `load`.
Score ScorePlacement(const LoadMatrix& load, const Phy2Log& phy2log, int32_t num_workers);

struct Movement {
  // (layer, worker, expert) triples the next placement puts on a worker that
  // did not hold that expert in the current one: each is one expert's
  // weights copied onto a worker.
  int64_t expert_loads = 0;
  int64_t total_slots = 0;                       // layers * P, for scale
  std::vector<std::vector<int64_t>> per_worker;  // [layer][worker]: expert_loads broken down
};

// Weight copies needed to go from `current` to `next` (both valid for the
// same shape and layer count).
Movement CountMovement(const Phy2Log& current, const Phy2Log& next, int32_t num_workers);
// The same between two placements of the same layers, whose workers may
// hold different slot counts (a placement over survivors, and one over
// every worker).
Movement CountMovement(const Placement& current, const Placement& next);

}  // namespace sy::eplb

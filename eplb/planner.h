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
  int64_t total_slots = 0;  // layers * P, for scale
};

// Weight copies needed to go from `current` to `next` (both valid for the
// same shape and layer count).
Movement CountMovement(const Phy2Log& current, const Phy2Log& next, int32_t num_workers);

}  // namespace sy::eplb

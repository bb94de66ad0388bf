// Copying expert weights between expert workers for a re-placement, over a
// transport of the expert workers alone (the "staging" transport: rank j is
// expert worker j), off the step loop.
//
// Every expert worker computes the same plan from the serving and the next
// placement: each (layer, expert) that the next placement puts on a worker
// that does not hold it comes from the lowest-index worker that holds it
// now. Each worker then makes one Exchange tagged with the next epoch: to
// every worker it supplies, one message with all the experts that worker
// takes from it; from every worker it takes from, one such message.
//
// Message: u32 magic 'SYW1', u32 count, then per expert i32 layer, i32
// expert, then gate_up ([2 * inter, hidden]) and down ([hidden, inter]) as
// floats. Host byte order, like the MoE wire format.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "eplb/placement.h"
#include "model/config.h"
#include "model/weights.h"
#include "transport/transport.h"

namespace sy::moe {

// (model layer, logical expert).
using ExpertKey = std::pair<int32_t, int32_t>;

struct CopyPlan {
  // What this worker receives: from worker -> keys, and sends: to worker -> keys.
  std::map<int32_t, std::vector<ExpertKey>> receive, send;
};

// The plan for expert worker `worker` (both placements valid, same layers and
// number of workers).
CopyPlan PlanExpertCopies(const eplb::Placement& current, const eplb::Placement& next,
                          int32_t worker);

// Runs this worker's part of the plan over `staging` (every other worker of
// the plan must run its part for the same epoch). `held` returns this
// worker's weights of a key it sends. The result holds what it received.
// Errors: the transport's (a peer gone, a timeout), DataLoss for a
// malformed message, NotFound when `held` lacks a key to send.
absl::StatusOr<std::map<ExpertKey, model::MlpWeights>> CopyExperts(
    const CopyPlan& plan, int64_t epoch, const model::ModelConfig& cfg,
    const std::function<std::shared_ptr<const model::MlpWeights>(const ExpertKey&)>& held,
    transport::Transport& staging, absl::Duration timeout);

}  // namespace sy::moe

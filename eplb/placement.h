// Expert placement: which logical expert each physical slot of each MoE layer
// holds, and which expert worker owns each slot.
//
// Per MoE layer there are P = E + R physical slots (E logical experts, R
// redundant replicas), a consecutive range of them on each of N expert
// workers: worker w owns slots [worker_begin[w], worker_begin[w + 1]), the
// same ranges in every layer. Workers may hold different numbers of slots
// (a worker with more memory), and a worker that died holds none (its slots
// dropped by SurvivorPlacement); at least one holds some. Slot ids are global: they name the same
// slot on every worker and on the wire. phy2log[layer][slot] is the logical expert of a slot;
// log2phy[layer][expert] lists the slots holding a replica of it (equivalent copies; an attention
// worker may send a token to any of them). Placements are immutable values; a new placement has a
// new epoch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sy::eplb {

struct Placement {
  int64_t epoch = 0;
  int32_t num_logical = 0;                    // E
  int32_t num_slots = 0;                      // P = E + R
  int32_t num_workers = 0;                    // N
  std::vector<int32_t> worker_begin;          // [N + 1]: 0, ..., P
  std::vector<int32_t> layers;                // model layer index of each MoE layer, ascending
  std::vector<std::vector<int32_t>> phy2log;  // [moe layer][slot]
  std::vector<std::vector<std::vector<int32_t>>> log2phy;  // [moe layer][expert] -> slots

  int32_t SlotBegin(int32_t worker) const { return worker_begin[worker]; }
  int32_t SlotEnd(int32_t worker) const { return worker_begin[worker + 1]; }
  int32_t NumSlotsOf(int32_t worker) const { return SlotEnd(worker) - SlotBegin(worker); }
  // The worker owning a slot in [0, P).
  int32_t WorkerOfSlot(int32_t slot) const;
  // Sets worker_begin to N equal ranges (P must divide by N).
  void SetEqualRanges();
  // Index into phy2log/log2phy of model layer `layer`, or -1 when not MoE.
  int32_t MoeIndex(int32_t layer) const;
  // Checks every invariant (sizes, every expert has a replica, log2phy is
  // the inverse of phy2log). InvalidArgument describing the first violation.
  absl::Status Validate() const;
  // The first worker holding no slots, or -1.
  int32_t FirstEmptyWorker() const;
};

// What SurvivorPlacement did.
struct SurvivorStats {
  int32_t dropped_slots = 0;  // slots of the dead workers, per MoE layer
  int32_t reloaded_slots =
      0;  // survivors' slots given an expert left without a replica (all layers)
};

// The placement of the same layers and experts over the workers with
// alive[w]: the dead workers' slots are dropped (their ranges become empty,
// the survivors keep what they hold in the same order, so slot ids shift);
// an expert left without a replica in a layer takes over a survivor's slot
// whose expert has the most replicas there (a survivor then loads it).
// `epoch` is the new placement's. FailedPrecondition when no worker survives
// or a layer has no replica to give up for a lost expert (naming both).
absl::StatusOr<Placement> SurvivorPlacement(const Placement& p, const std::vector<bool>& alive,
                                            int64_t epoch, SurvivorStats* stats = nullptr);

// How the initial placement deals logical experts to workers.
enum class PlacementOrder {
  kContiguous,  // worker w gets experts [w * E/N, (w + 1) * E/N) (first workers take the remainder)
  kStrided,     // expert e goes to worker e % N
};

struct PlacementOptions {
  int32_t num_workers = 1;
  int32_t redundant = 0;           // R extra slots per layer
  std::vector<int32_t> replicate;  // experts given the redundant slots (cycled); empty: 0, 1, ...
  PlacementOrder order = PlacementOrder::kContiguous;
};

// Builds the initial placement for MoE layers `layers` of a model with
// `num_experts` experts. (E + R) must divide by N. Redundant replicas go to
// the worker that does not already hold that expert and has the fewest slots.
absl::StatusOr<Placement> InitialPlacement(const std::vector<int32_t>& layers, int32_t num_experts,
                                           const PlacementOptions& options);

// Fills log2phy from phy2log.
void RebuildLog2Phy(Placement* p);

}  // namespace sy::eplb

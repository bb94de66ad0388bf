#include "eplb/placement.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace sy::eplb {

int32_t Placement::MoeIndex(int32_t layer) const {
  auto it = std::lower_bound(layers.begin(), layers.end(), layer);
  if (it == layers.end() || *it != layer) return -1;
  return static_cast<int32_t>(it - layers.begin());
}

int32_t Placement::WorkerOfSlot(int32_t slot) const {
  return static_cast<int32_t>(std::upper_bound(worker_begin.begin(), worker_begin.end(), slot) -
                              worker_begin.begin()) -
         1;
}

void Placement::SetEqualRanges() {
  worker_begin.resize(static_cast<size_t>(num_workers) + 1);
  for (int32_t w = 0; w <= num_workers; ++w) worker_begin[w] = w * (num_slots / num_workers);
}

void RebuildLog2Phy(Placement* p) {
  p->log2phy.assign(p->phy2log.size(), std::vector<std::vector<int32_t>>(p->num_logical));
  for (size_t l = 0; l < p->phy2log.size(); ++l) {
    for (int32_t s = 0; s < static_cast<int32_t>(p->phy2log[l].size()); ++s) {
      const int32_t e = p->phy2log[l][s];
      if (e >= 0 && e < p->num_logical) p->log2phy[l][e].push_back(s);
    }
  }
}

absl::Status Placement::Validate() const {
  if (num_logical <= 0 || num_workers <= 0 || num_slots < num_logical) {
    return absl::InvalidArgumentError("placement: bad sizes");
  }
  if (static_cast<int32_t>(worker_begin.size()) != num_workers + 1 || worker_begin.front() != 0 ||
      worker_begin.back() != num_slots) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement: worker slot ranges must run from 0 to ", num_slots, " over ",
                     num_workers, " expert workers"));
  }
  for (int32_t w = 0; w < num_workers; ++w) {
    if (worker_begin[w + 1] < worker_begin[w]) {
      return absl::InvalidArgumentError(
          absl::StrCat("placement: expert worker ", w, "'s slot range ends before it begins"));
    }
  }
  if (num_slots == 0) return absl::InvalidArgumentError("placement: no expert worker holds slots");
  if (phy2log.size() != layers.size() || log2phy.size() != layers.size()) {
    return absl::InvalidArgumentError("placement: layer count mismatch");
  }
  for (size_t l = 0; l < layers.size(); ++l) {
    if (static_cast<int32_t>(phy2log[l].size()) != num_slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("placement: layer ", layers[l], " has ", phy2log[l].size(), " slots"));
    }
    std::vector<int32_t> count(num_logical, 0);
    for (int32_t s = 0; s < num_slots; ++s) {
      const int32_t e = phy2log[l][s];
      if (e < 0 || e >= num_logical) {
        return absl::InvalidArgumentError(
            absl::StrCat("placement: layer ", layers[l], " slot ", s, " holds expert ", e));
      }
      ++count[e];
    }
    for (int32_t e = 0; e < num_logical; ++e) {
      if (count[e] == 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("placement: layer ", layers[l], " has no replica of expert ", e));
      }
      if (static_cast<int32_t>(log2phy[l][e].size()) != count[e]) {
        return absl::InvalidArgumentError("placement: log2phy is not the inverse of phy2log");
      }
      for (int32_t s : log2phy[l][e]) {
        if (s < 0 || s >= num_slots || phy2log[l][s] != e) {
          return absl::InvalidArgumentError("placement: log2phy is not the inverse of phy2log");
        }
      }
    }
  }
  return absl::OkStatus();
}

int32_t Placement::FirstEmptyWorker() const {
  for (int32_t w = 0; w < num_workers; ++w) {
    if (NumSlotsOf(w) == 0) return w;
  }
  return -1;
}

absl::StatusOr<Placement> SurvivorPlacement(const Placement& p, const std::vector<bool>& alive,
                                            int64_t epoch, SurvivorStats* stats) {
  if (static_cast<int32_t>(alive.size()) != p.num_workers) {
    return absl::InvalidArgumentError(absl::StrCat("survivor placement: ", alive.size(),
                                                   " liveness flags for ", p.num_workers,
                                                   " expert workers"));
  }
  Placement out;
  out.epoch = epoch;
  out.num_logical = p.num_logical;
  out.num_workers = p.num_workers;
  out.layers = p.layers;
  out.worker_begin.assign(static_cast<size_t>(p.num_workers) + 1, 0);
  std::vector<int32_t> kept;  // old slot ids kept, in order
  for (int32_t w = 0; w < p.num_workers; ++w) {
    if (alive[w]) {
      for (int32_t s = p.SlotBegin(w); s < p.SlotEnd(w); ++s) kept.push_back(s);
    }
    out.worker_begin[w + 1] = static_cast<int32_t>(kept.size());
  }
  out.num_slots = static_cast<int32_t>(kept.size());
  if (out.num_slots == 0) {
    return absl::FailedPreconditionError("survivor placement: no expert worker with slots is left");
  }
  SurvivorStats st;
  st.dropped_slots = p.num_slots - out.num_slots;
  out.phy2log.resize(p.layers.size());
  for (size_t l = 0; l < p.layers.size(); ++l) {
    std::vector<int32_t>& slots = out.phy2log[l];
    for (int32_t s : kept) slots.push_back(p.phy2log[l][s]);
    std::vector<int32_t> count(static_cast<size_t>(p.num_logical), 0);
    for (int32_t e : slots) ++count[e];
    for (int32_t lost = 0; lost < p.num_logical; ++lost) {
      if (count[lost] > 0) continue;
      // The slot whose expert has the most replicas (the last such slot, so
      // the first replicas, which the initial placement spreads, stay).
      int32_t best = -1;
      for (int32_t s = out.num_slots - 1; s >= 0; --s) {
        if (count[slots[s]] >= 2 && (best < 0 || count[slots[s]] > count[slots[best]])) best = s;
      }
      if (best < 0) {
        return absl::FailedPreconditionError(absl::StrCat(
            "survivor placement: expert ", lost, " of layer ", p.layers[l],
            " has no replica on a surviving expert worker, and no surviving slot holds a "
            "replicated expert that could make room for it"));
      }
      --count[slots[best]];
      slots[best] = lost;
      count[lost] = 1;
      ++st.reloaded_slots;
    }
  }
  RebuildLog2Phy(&out);
  SY_RETURN_IF_ERROR(out.Validate());
  if (stats != nullptr) *stats = st;
  return out;
}

absl::StatusOr<Placement> InitialPlacement(const std::vector<int32_t>& layers, int32_t num_experts,
                                           const PlacementOptions& options) {
  const int32_t N = options.num_workers, R = options.redundant, E = num_experts;
  if (N <= 0) return absl::InvalidArgumentError("placement: need at least one expert worker");
  if (R < 0) return absl::InvalidArgumentError("placement: redundant_experts must be >= 0");
  if (E <= 0) return absl::InvalidArgumentError("placement: model has no experts");
  if ((E + R) % N != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("placement: experts (", E, ") + redundant_experts (", R,
                     ") must be a multiple of the expert worker count (", N, ")"));
  }
  for (int32_t e : options.replicate) {
    if (e < 0 || e >= E) {
      return absl::InvalidArgumentError(
          absl::StrCat("placement: replicate lists expert ", e, " outside [0, ", E, ")"));
    }
  }
  const int32_t per_worker = (E + R) / N;
  // Deal logical experts to workers.
  std::vector<std::vector<int32_t>> by_worker(N);
  for (int32_t e = 0; e < E; ++e) {
    int32_t w;
    if (options.order == PlacementOrder::kStrided) {
      w = e % N;
    } else {
      // Contiguous ranges of E / N, the first E % N workers one more.
      const int32_t base = E / N, extra = E % N;
      const int32_t split = extra * (base + 1);
      w = e < split ? e / (base + 1) : extra + (e - split) / std::max(base, 1);
    }
    by_worker[w].push_back(e);
  }
  for (int32_t w = 0; w < N; ++w) {
    if (static_cast<int32_t>(by_worker[w].size()) > per_worker) {
      return absl::InvalidArgumentError(
          absl::StrCat("placement: worker ", w, " would need ", by_worker[w].size(),
                       " slots but has ", per_worker, "; add redundant slots or workers"));
    }
  }
  // Redundant replicas: fill the emptiest worker that lacks the expert.
  for (int32_t r = 0; r < R; ++r) {
    const int32_t e =
        options.replicate.empty() ? r % E : options.replicate[r % options.replicate.size()];
    auto holds = [&](int32_t w) {
      return std::find(by_worker[w].begin(), by_worker[w].end(), e) != by_worker[w].end();
    };
    // Prefer a worker without this expert, then the one with the fewest slots.
    auto better = [&](int32_t a, int32_t b) {
      if (holds(a) != holds(b)) return !holds(a);
      return by_worker[a].size() < by_worker[b].size();
    };
    int32_t best = -1;
    for (int32_t w = 0; w < N; ++w) {
      if (static_cast<int32_t>(by_worker[w].size()) >= per_worker) continue;
      if (best < 0 || better(w, best)) best = w;
    }
    by_worker[best].push_back(e);
  }
  Placement p;
  p.epoch = 1;
  p.num_logical = E;
  p.num_slots = E + R;
  p.num_workers = N;
  p.SetEqualRanges();
  p.layers = layers;
  std::vector<int32_t> slots;
  for (int32_t w = 0; w < N; ++w)
    slots.insert(slots.end(), by_worker[w].begin(), by_worker[w].end());
  p.phy2log.assign(layers.size(), slots);
  RebuildLog2Phy(&p);
  if (auto st = p.Validate(); !st.ok()) return st;
  return p;
}

}  // namespace sy::eplb

// Wire format and tags of the lockstep MoE step (dispatch and combine).
//
// Dispatch (attention worker -> expert worker), one message per expert
// worker per MoE layer per step:
//   u32 magic 'SYD3', u32 num_rows, i64 placement epoch, i64 next epoch,
//   u64 switch step, then num_rows x i32 global slot id (the slot of the
//   layer's placement, not an index local to the worker), then num_rows x
//   hidden floats (the token rows).
// Combine (expert worker -> attention worker): u32 magic 'SYC3', u32
// num_rows, u32 mesh_rows (rows the expert worker received from all attention
// workers for this layer: 0 means the whole mesh was idle), u32 reserved, i64
// placement epoch, i64 next epoch, u64 switch step, then num_rows x hidden
// floats: the unweighted expert outputs, in the order of the dispatch rows.
// Host byte order (all ranks of one cluster run the same build on the same
// architecture).
//
// (next epoch, switch step) is the placement switch the sender knows of: the
// whole mesh serves `next epoch` from mesh step `switch step` on (next epoch
// 0: none). The leader attention worker sets it, every expert worker echoes
// it in its combines, so every worker knows the switch before the step it
// names (see ExpertServer and RemoteExpertExecutor).
//
// Both sides check the epoch on receipt: a worker that serves another
// placement than the sender's answers with FailedPrecondition naming both
// epochs, never with rows computed by the wrong experts; a dispatch row whose
// slot the receiving worker does not hold is DataLoss naming the slot.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sy::moe {

inline constexpr uint32_t kDispatchMagic = 0x33445953;  // "SYD3"
inline constexpr uint32_t kCombineMagic = 0x33435953;   // "SYC3"
inline constexpr size_t kDispatchHeader = 32;
inline constexpr size_t kCombineHeader = 40;

// A placement switch: the mesh serves `epoch` from mesh step `step` on.
struct Switch {
  int64_t epoch = 0;  // 0: no switch pending
  uint64_t step = 0;
  bool pending() const { return epoch != 0; }
};

enum class Phase : uint64_t { kDispatch = 1, kCombine = 2 };

// 48-bit transport tag of (mesh generation, step, MoE layer index, phase):
// 8 bits of generation, 24 bits of step, 8 bits of MoE layer index, 8 bits
// of phase. Wrapping is harmless: tags only need to differ between messages
// that can be in flight together. The generation is the epoch at which the
// mesh's membership last formed (the coordinator's formed_epoch): a mesh
// re-formed after a failure counts steps from 0 again, and its tags never
// match messages the old mesh left in flight. Placement switches within a
// generation keep it, so a worker on the wrong placement still gets the
// message and fails on the epoch check at once.
inline uint64_t StepTag(int64_t generation, uint64_t step, int32_t moe_index, Phase phase) {
  return ((static_cast<uint64_t>(generation) & 0xFF) << 40) | ((step & 0xFFFFFFull) << 16) |
         ((static_cast<uint64_t>(moe_index) & 0xFF) << 8) | static_cast<uint64_t>(phase);
}

struct DispatchView {
  uint32_t num_rows = 0;
  Switch next;
  const int32_t* slots = nullptr;  // [num_rows] global slot id
  const float* rows = nullptr;     // [num_rows, hidden]
};

inline void EncodeDispatch(int64_t epoch, const Switch& next, const std::vector<int32_t>& slots,
                           const std::vector<float>& rows, std::vector<uint8_t>* out) {
  const uint32_t n = static_cast<uint32_t>(slots.size());
  out->resize(kDispatchHeader + n * sizeof(int32_t) + rows.size() * sizeof(float));
  std::memcpy(out->data(), &kDispatchMagic, 4);
  std::memcpy(out->data() + 4, &n, 4);
  std::memcpy(out->data() + 8, &epoch, 8);
  std::memcpy(out->data() + 16, &next.epoch, 8);
  std::memcpy(out->data() + 24, &next.step, 8);
  if (n > 0) {
    std::memcpy(out->data() + kDispatchHeader, slots.data(), n * sizeof(int32_t));
    std::memcpy(out->data() + kDispatchHeader + n * sizeof(int32_t), rows.data(),
                rows.size() * sizeof(float));
  }
}

inline absl::Status EpochMismatch(const char* what, int64_t got, int64_t want) {
  return absl::FailedPreconditionError(
      absl::StrCat(what, " for placement epoch ", got, ", this worker serves epoch ", want));
}

// Checks sizes against `hidden`, the epoch against `epoch`, and every slot
// against the receiver's slots [slot_begin, slot_end); the view points into
// `msg`.
inline absl::Status DecodeDispatch(const std::vector<uint8_t>& msg, int64_t hidden, int64_t epoch,
                                   int32_t slot_begin, int32_t slot_end, DispatchView* view) {
  if (msg.size() < kDispatchHeader) {
    return absl::DataLossError("dispatch message shorter than its header");
  }
  uint32_t magic, n;
  int64_t got_epoch;
  std::memcpy(&magic, msg.data(), 4);
  std::memcpy(&n, msg.data() + 4, 4);
  std::memcpy(&got_epoch, msg.data() + 8, 8);
  if (magic != kDispatchMagic) return absl::DataLossError("dispatch message has a bad magic");
  std::memcpy(&view->next.epoch, msg.data() + 16, 8);
  std::memcpy(&view->next.step, msg.data() + 24, 8);
  if (got_epoch != epoch) return EpochMismatch("dispatch", got_epoch, epoch);
  const size_t want =
      kDispatchHeader + static_cast<size_t>(n) * (sizeof(int32_t) + hidden * sizeof(float));
  if (msg.size() != want) {
    return absl::DataLossError(
        absl::StrCat("dispatch message of ", msg.size(), " bytes, expected ", want));
  }
  view->num_rows = n;
  view->slots = reinterpret_cast<const int32_t*>(msg.data() + kDispatchHeader);
  view->rows = reinterpret_cast<const float*>(msg.data() + kDispatchHeader + n * sizeof(int32_t));
  for (uint32_t i = 0; i < n; ++i) {
    if (view->slots[i] < slot_begin || view->slots[i] >= slot_end) {
      return absl::DataLossError(absl::StrCat("dispatch row ", i, " names slot ", view->slots[i],
                                              ", which this worker does not hold (its slots: [",
                                              slot_begin, ", ", slot_end, "))"));
    }
  }
  return absl::OkStatus();
}

inline void EncodeCombine(int64_t epoch, const Switch& next, const float* rows, uint32_t num_rows,
                          uint32_t mesh_rows, int64_t hidden, std::vector<uint8_t>* out) {
  out->resize(kCombineHeader + static_cast<size_t>(num_rows) * hidden * sizeof(float));
  const uint32_t reserved = 0;
  std::memcpy(out->data(), &kCombineMagic, 4);
  std::memcpy(out->data() + 4, &num_rows, 4);
  std::memcpy(out->data() + 8, &mesh_rows, 4);
  std::memcpy(out->data() + 12, &reserved, 4);
  std::memcpy(out->data() + 16, &epoch, 8);
  std::memcpy(out->data() + 24, &next.epoch, 8);
  std::memcpy(out->data() + 32, &next.step, 8);
  if (num_rows > 0) {
    std::memcpy(out->data() + kCombineHeader, rows, num_rows * hidden * sizeof(float));
  }
}

inline absl::Status DecodeCombine(const std::vector<uint8_t>& msg, int64_t epoch,
                                  uint32_t expected_rows, int64_t hidden, const float** rows,
                                  uint32_t* mesh_rows, Switch* next) {
  if (msg.size() < kCombineHeader) {
    return absl::DataLossError("combine message shorter than its header");
  }
  uint32_t magic, n;
  int64_t got_epoch;
  std::memcpy(&magic, msg.data(), 4);
  std::memcpy(&n, msg.data() + 4, 4);
  std::memcpy(mesh_rows, msg.data() + 8, 4);
  std::memcpy(&got_epoch, msg.data() + 16, 8);
  if (magic != kCombineMagic) return absl::DataLossError("combine message has a bad magic");
  std::memcpy(&next->epoch, msg.data() + 24, 8);
  std::memcpy(&next->step, msg.data() + 32, 8);
  if (got_epoch != epoch) return EpochMismatch("combine", got_epoch, epoch);
  if (n != expected_rows ||
      msg.size() != kCombineHeader + static_cast<size_t>(n) * hidden * sizeof(float)) {
    return absl::DataLossError(
        absl::StrCat("combine message with ", n, " rows, expected ", expected_rows));
  }
  *rows = reinterpret_cast<const float*>(msg.data() + kCombineHeader);
  return absl::OkStatus();
}

}  // namespace sy::moe

// Wire format and tags of the lockstep MoE step (dispatch and combine).
//
// Dispatch (attention worker -> expert worker), one message per expert
// worker per MoE layer per step:
//   u32 magic 'SYD1', u32 num_rows, then num_rows x i32 local slot,
//   then num_rows x hidden floats (the token rows).
// Combine (expert worker -> attention worker): u32 magic 'SYC1', u32
// num_rows, u32 mesh_rows (rows the expert worker received from all attention
// workers for this layer: 0 means the whole mesh was idle), then num_rows x
// hidden floats: the unweighted expert outputs, in the order of the dispatch
// rows. Host byte order (all ranks of one cluster
// run the same build on the same architecture).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sy::moe {

inline constexpr uint32_t kDispatchMagic = 0x31445953;  // "SYD1"
inline constexpr uint32_t kCombineMagic = 0x31435953;   // "SYC1"

enum class Phase : uint64_t { kDispatch = 1, kCombine = 2 };

// 48-bit transport tag of (step, MoE layer index, phase): 32 bits of step
// (wrapping is harmless: tags only need to differ between steps in flight),
// 8 bits of MoE layer index, 8 bits of phase.
inline uint64_t StepTag(uint64_t step, int32_t moe_index, Phase phase) {
  return ((step & 0xFFFFFFFFull) << 16) | ((static_cast<uint64_t>(moe_index) & 0xFF) << 8) |
         static_cast<uint64_t>(phase);
}

struct DispatchView {
  uint32_t num_rows = 0;
  const int32_t* slots = nullptr;  // [num_rows] local slot index
  const float* rows = nullptr;     // [num_rows, hidden]
};

inline void EncodeDispatch(const std::vector<int32_t>& slots, const std::vector<float>& rows,
                           std::vector<uint8_t>* out) {
  const uint32_t n = static_cast<uint32_t>(slots.size());
  out->resize(8 + n * sizeof(int32_t) + rows.size() * sizeof(float));
  std::memcpy(out->data(), &kDispatchMagic, 4);
  std::memcpy(out->data() + 4, &n, 4);
  if (n > 0) {
    std::memcpy(out->data() + 8, slots.data(), n * sizeof(int32_t));
    std::memcpy(out->data() + 8 + n * sizeof(int32_t), rows.data(), rows.size() * sizeof(float));
  }
}

// Checks sizes against `hidden` and `num_slots`; the view points into `msg`.
inline absl::Status DecodeDispatch(const std::vector<uint8_t>& msg, int64_t hidden,
                                   int32_t num_slots, DispatchView* view) {
  if (msg.size() < 8) return absl::DataLossError("dispatch message shorter than its header");
  uint32_t magic, n;
  std::memcpy(&magic, msg.data(), 4);
  std::memcpy(&n, msg.data() + 4, 4);
  if (magic != kDispatchMagic) return absl::DataLossError("dispatch message has a bad magic");
  const size_t want = 8 + static_cast<size_t>(n) * (sizeof(int32_t) + hidden * sizeof(float));
  if (msg.size() != want) {
    return absl::DataLossError(
        absl::StrCat("dispatch message of ", msg.size(), " bytes, expected ", want));
  }
  view->num_rows = n;
  view->slots = reinterpret_cast<const int32_t*>(msg.data() + 8);
  view->rows = reinterpret_cast<const float*>(msg.data() + 8 + n * sizeof(int32_t));
  for (uint32_t i = 0; i < n; ++i) {
    if (view->slots[i] < 0 || view->slots[i] >= num_slots) {
      return absl::DataLossError(absl::StrCat("dispatch row ", i, " names slot ", view->slots[i]));
    }
  }
  return absl::OkStatus();
}

inline void EncodeCombine(const float* rows, uint32_t num_rows, uint32_t mesh_rows, int64_t hidden,
                          std::vector<uint8_t>* out) {
  out->resize(12 + static_cast<size_t>(num_rows) * hidden * sizeof(float));
  std::memcpy(out->data(), &kCombineMagic, 4);
  std::memcpy(out->data() + 4, &num_rows, 4);
  std::memcpy(out->data() + 8, &mesh_rows, 4);
  if (num_rows > 0) std::memcpy(out->data() + 12, rows, num_rows * hidden * sizeof(float));
}

inline absl::Status DecodeCombine(const std::vector<uint8_t>& msg, uint32_t expected_rows,
                                  int64_t hidden, const float** rows, uint32_t* mesh_rows) {
  if (msg.size() < 12) return absl::DataLossError("combine message shorter than its header");
  uint32_t magic, n;
  std::memcpy(&magic, msg.data(), 4);
  std::memcpy(&n, msg.data() + 4, 4);
  std::memcpy(mesh_rows, msg.data() + 8, 4);
  if (magic != kCombineMagic) return absl::DataLossError("combine message has a bad magic");
  if (n != expected_rows || msg.size() != 12 + static_cast<size_t>(n) * hidden * sizeof(float)) {
    return absl::DataLossError(
        absl::StrCat("combine message with ", n, " rows, expected ", expected_rows));
  }
  *rows = reinterpret_cast<const float*>(msg.data() + 12);
  return absl::OkStatus();
}

}  // namespace sy::moe

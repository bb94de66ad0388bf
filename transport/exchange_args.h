// Argument checks shared by every Transport backend, so that all of them
// reject the same calls with the same InvalidArgument messages.
//
// Header-only and stateless: any thread may call these.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "transport/transport.h"

namespace sy::transport {

inline bool IsValidRank(int32_t rank) { return rank >= 0 && rank < kMaxRanks; }

// Checks the parts of an Exchange() call that do not depend on the backend.
// `is_known(peer)` says whether `peer` may be sent to / received from (this
// rank or a connected peer).
template <typename IsKnown>
absl::Status CheckExchangeArgs(int32_t self, uint64_t tag, const std::vector<SendItem>& sends,
                               const std::vector<int32_t>& recv_from,
                               const std::vector<std::vector<uint8_t>>* received,
                               IsKnown&& is_known) {
  if (tag > kMaxUserTag) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", self, ": tag ", tag, " exceeds kMaxUserTag (", kMaxUserTag, ")"));
  }
  if (received == nullptr && !recv_from.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", self, ": `received` is null"));
  }
  for (const SendItem& item : sends) {
    if (!IsValidRank(item.peer) || !is_known(item.peer)) {
      return absl::InvalidArgumentError(
          absl::StrCat("rank ", self, ": send to unknown peer ", item.peer, " (not connected)"));
    }
    if (item.data == nullptr && item.size != 0) {
      return absl::InvalidArgumentError(absl::StrCat("rank ", self, ": send of ", item.size,
                                                     " bytes to peer ", item.peer, " has no data"));
    }
  }
  for (int32_t peer : recv_from) {
    if (!IsValidRank(peer) || !is_known(peer)) {
      return absl::InvalidArgumentError(
          absl::StrCat("rank ", self, ": receive from unknown peer ", peer, " (not connected)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace sy::transport

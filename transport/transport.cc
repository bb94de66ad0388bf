#include "transport/transport.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace sy::transport {

absl::Status AllToAllV(Transport& t, uint64_t tag, const std::vector<int32_t>& ranks,
                       const std::vector<std::vector<uint8_t>>& send,
                       std::vector<std::vector<uint8_t>>* received, absl::Duration timeout) {
  if (received == nullptr) return absl::InvalidArgumentError("AllToAllV: `received` is null");
  if (send.size() != ranks.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("AllToAllV: ", send.size(), " send buffers for ", ranks.size(), " ranks"));
  }
  absl::flat_hash_set<int32_t> seen;
  for (int32_t rank : ranks) {
    if (!seen.insert(rank).second) {
      return absl::InvalidArgumentError(absl::StrCat("AllToAllV: rank ", rank, " listed twice"));
    }
  }

  const int32_t self = t.rank();
  std::vector<SendItem> sends;
  std::vector<int32_t> recv_from;
  std::vector<size_t> recv_index;  // recv_from[j] is ranks[recv_index[j]]
  sends.reserve(ranks.size());
  recv_from.reserve(ranks.size());
  recv_index.reserve(ranks.size());
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i] == self) continue;
    sends.push_back(SendItem{ranks[i], send[i].data(), send[i].size()});
    recv_from.push_back(ranks[i]);
    recv_index.push_back(i);
  }

  std::vector<std::vector<uint8_t>> got;
  SY_RETURN_IF_ERROR(t.Exchange(tag, sends, recv_from, &got, timeout));
  received->assign(ranks.size(), {});
  for (size_t j = 0; j < recv_from.size(); ++j) (*received)[recv_index[j]] = std::move(got[j]);
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i] == self) (*received)[i] = send[i];
  }
  return absl::OkStatus();
}

}  // namespace sy::transport

#include "transport/inproc/inproc_transport.h"

#include <algorithm>
#include <chrono>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status.h"
#include "transport/exchange_args.h"

namespace sy::transport::inproc {
namespace {

// Longest single condition-variable wait: keeps an infinite deadline from
// overflowing the clock arithmetic; the caller loops.
constexpr absl::Duration kMaxWaitSlice = absl::Hours(1);

absl::Status RankLeftError(int32_t self, int32_t peer) {
  return absl::UnavailableError(
      absl::StrCat("inproc rank ", self, ": peer rank ", peer, " is unavailable (closed)"));
}

}  // namespace

void Fabric::Join(int32_t rank) {
  std::lock_guard<std::mutex> lock(mu_);
  dead_.erase(rank);
  InboxLocked(rank);
}

void Fabric::Leave(int32_t rank) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!dead_.insert(rank).second) return;
  absl::erase_if(mailboxes_,
                 [rank](const auto& entry) { return std::get<0>(entry.first) == rank; });
  for (auto& [unused_rank, inbox] : inboxes_) inbox->cv.notify_all();
}

bool Fabric::IsDead(int32_t rank) const {
  std::lock_guard<std::mutex> lock(mu_);
  return dead_.contains(rank);
}

Fabric::Inbox& Fabric::InboxLocked(int32_t dst) {
  std::unique_ptr<Inbox>& inbox = inboxes_[dst];
  if (inbox == nullptr) inbox = std::make_unique<Inbox>();
  return *inbox;
}

absl::Status Fabric::Post(int32_t src, int32_t dst, uint64_t tag, const uint8_t* data,
                          size_t size) {
  std::vector<uint8_t> copy(data, data + size);  // outside the lock
  std::lock_guard<std::mutex> lock(mu_);
  if (dead_.contains(dst)) return RankLeftError(src, dst);
  mailboxes_[Key(dst, src, tag)].push_back(std::move(copy));
  InboxLocked(dst).cv.notify_all();
  return absl::OkStatus();
}

void Fabric::Wake(int32_t dst) {
  std::lock_guard<std::mutex> lock(mu_);
  InboxLocked(dst).cv.notify_all();
}

absl::Status Fabric::Collect(int32_t dst, uint64_t tag, const std::vector<int32_t>& srcs,
                             std::vector<std::vector<uint8_t>>* out, absl::Time deadline,
                             const std::function<bool()>& interrupted) {
  out->assign(srcs.size(), {});
  std::vector<bool> got(srcs.size(), false);
  size_t num_got = 0;
  std::unique_lock<std::mutex> lock(mu_);
  Inbox& inbox = InboxLocked(dst);
  while (true) {
    int32_t dead_src = -1;
    for (size_t i = 0; i < srcs.size(); ++i) {
      if (got[i]) continue;
      auto it = mailboxes_.find(Key(dst, srcs[i], tag));
      if (it != mailboxes_.end()) {
        (*out)[i] = std::move(it->second.front());
        it->second.pop_front();
        if (it->second.empty()) mailboxes_.erase(it);
        got[i] = true;
        ++num_got;
      } else if (dead_src < 0 && dead_.contains(srcs[i])) {
        dead_src = srcs[i];
      }
    }
    if (num_got == srcs.size()) return absl::OkStatus();
    if (dead_src >= 0) {
      out->clear();
      return RankLeftError(dst, dead_src);
    }
    if (interrupted && interrupted()) {
      out->clear();
      return absl::AbortedError("interrupted");
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      std::vector<int32_t> missing;
      for (size_t i = 0; i < srcs.size(); ++i) {
        if (!got[i]) missing.push_back(srcs[i]);
      }
      out->clear();
      return absl::DeadlineExceededError(
          absl::StrCat("inproc rank ", dst, ", tag ", tag, ": no message from ranks [",
                       absl::StrJoin(missing, ", "), "] within the timeout"));
    }
    // wait_for measures on the steady clock, so wall-clock jumps cannot
    // stretch the timeout.
    inbox.cv.wait_for(lock, absl::ToChronoNanoseconds(std::min(left, kMaxWaitSlice)));
  }
}

InprocTransport::InprocTransport(std::shared_ptr<Fabric> fabric, int32_t rank)
    : fabric_(std::move(fabric)), rank_(rank) {
  SY_CHECK(fabric_ != nullptr) << "InprocTransport needs a Fabric";
  SY_CHECK(IsValidRank(rank_)) << "rank " << rank_ << " out of range";
  fabric_->Join(rank_);
}

InprocTransport::~InprocTransport() { Close().IgnoreError(); }

std::string InprocTransport::local_address() const { return std::to_string(rank_); }

absl::Status InprocTransport::Connect(const std::vector<PeerAddress>& peers) {
  if (closed_) return absl::FailedPreconditionError(absl::StrCat("inproc rank ", rank_, " closed"));
  for (const PeerAddress& peer : peers) {
    int32_t address_rank = -1;
    if (!IsValidRank(peer.rank) || !absl::SimpleAtoi(peer.address, &address_rank) ||
        address_rank != peer.rank) {
      return absl::InvalidArgumentError(absl::StrCat("inproc rank ", rank_, ": bad peer (rank ",
                                                     peer.rank, ", address '", peer.address,
                                                     "'); the address is the rank as text"));
    }
  }
  for (const PeerAddress& peer : peers) {
    if (peer.rank != rank_) connected_.insert(peer.rank);
  }
  return absl::OkStatus();
}

absl::Status InprocTransport::Exchange(uint64_t tag, const std::vector<SendItem>& sends,
                                       const std::vector<int32_t>& recv_from,
                                       std::vector<std::vector<uint8_t>>* received,
                                       absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  if (closed_) return absl::FailedPreconditionError(absl::StrCat("inproc rank ", rank_, " closed"));
  if (interrupted()) return InterruptedError();
  SY_RETURN_IF_ERROR(CheckExchangeArgs(rank_, tag, sends, recv_from, received, [this](int32_t p) {
    return p == rank_ || connected_.contains(p);
  }));
  // A peer already known to be gone fails the call before anything is sent.
  for (const SendItem& item : sends) {
    if (fabric_->IsDead(item.peer)) return RankLeftError(rank_, item.peer);
  }
  for (int32_t peer : recv_from) {
    if (fabric_->IsDead(peer)) return RankLeftError(rank_, peer);
  }
  for (const SendItem& item : sends) {
    SY_RETURN_IF_ERROR(fabric_->Post(rank_, item.peer, tag, item.data, item.size));
  }
  if (recv_from.empty()) {
    if (received != nullptr) received->clear();
    return absl::OkStatus();
  }
  const absl::Status st =
      fabric_->Collect(rank_, tag, recv_from, received, deadline, [this] { return interrupted(); });
  return absl::IsAborted(st) ? InterruptedError() : st;
}

absl::Status InprocTransport::Close() {
  if (closed_) return absl::OkStatus();
  closed_ = true;
  fabric_->Leave(rank_);
  return absl::OkStatus();
}

}  // namespace sy::transport::inproc

#include "transport/ucx/ucx_transport.h"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status.h"
#include "transport/exchange_args.h"

namespace sy::transport::ucx {
namespace {

constexpr int kRankBits = 16;
static_assert(kMaxRanks == (1 << kRankBits));
static_assert(kMaxUserTag == (~uint64_t{0} >> kRankBits));
constexpr ucp_tag_t kFullTagMask = ~ucp_tag_t{0};
// Busy-polls this many idle progress rounds before yielding the CPU, so
// ranks sharing cores (tests, single host) still make progress.
constexpr int kIdleSpinsBeforeYield = 64;
// After this many idle rounds (a few milliseconds of spinning) the loop sleeps
// kIdleSleepUs between progress rounds.
constexpr int kIdleSpinsBeforeSleep = 4096;
// The sleep grows with the time already waited (a tenth of it, so a message
// arriving meanwhile costs at most ~10% extra), from kIdleSleepUs to
// kMaxIdleSleepUs: an idle mesh's waits last until the next empty step, and
// waking every 100 us through them cost each expert worker of the local
// cluster about 9% of a core.
constexpr int64_t kIdleSleepUs = 100;
constexpr int64_t kMaxIdleSleepUs = 1000;

ucp_tag_t WireTag(uint64_t user_tag, int32_t src_rank) {
  return (user_tag << kRankBits) | static_cast<ucp_tag_t>(src_rank);
}

}  // namespace

// A send of the current Exchange still in flight (`request` empty once
// done), from a copy of the caller's bytes: a send still unmatched when the
// call is interrupted can then be left to UCX (see Abandon) instead of
// closing a live peer's endpoint. The copy costs a memcpy per send; sends
// that complete at once drop it right away.
struct UcxTransport::PendingSend {
  UcxTransport::Peer* peer;
  UcpRequest request;
  std::vector<uint8_t> buffer;
};

// One receive of the current Exchange: not yet matched, in flight
// (`request`), or done.
struct UcxTransport::PendingRecv {
  int32_t src = -1;
  Peer* peer = nullptr;  // nullptr for this rank
  size_t index = 0;      // into recv_from / *received
  bool matched = false;
  bool done = false;
  UcpRequest request;
};

absl::StatusOr<std::unique_ptr<UcxTransport>> UcxTransport::Create(const Options& options) {
  if (!IsValidRank(options.rank)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ucx transport: rank ", options.rank, " out of range [0, ", kMaxRanks, ")"));
  }
  SY_ASSIGN_OR_RETURN(
      std::unique_ptr<UcpContext> context,
      UcpContext::Create(absl::StrCat("switchyard-rank-", options.rank), options.port_range));
  SY_ASSIGN_OR_RETURN(std::unique_ptr<UcpWorker> worker,
                      UcpWorker::Create(*context, options.serialized));
  SY_ASSIGN_OR_RETURN(std::string address, worker->Address());
  return std::unique_ptr<UcxTransport>(
      new UcxTransport(options, std::move(context), std::move(worker), std::move(address)));
}

UcxTransport::UcxTransport(const Options& options, std::unique_ptr<UcpContext> context,
                           std::unique_ptr<UcpWorker> worker, std::string address)
    : rank_(options.rank),
      options_(options),
      address_(std::move(address)),
      context_(std::move(context)),
      worker_(std::move(worker)) {}

UcxTransport::~UcxTransport() { Close().IgnoreError(); }

void UcxTransport::OnEndpointError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  Peer* peer = static_cast<Peer*>(arg);
  peer->error.store(status, std::memory_order_relaxed);  // published by the release below
  peer->failed.store(true, std::memory_order_release);
}

absl::Status UcxTransport::ClosedError() const {
  return absl::FailedPreconditionError(absl::StrCat("ucx rank ", rank_, ": transport is closed"));
}

absl::Status UcxTransport::PeerDownError(const Peer& peer) const {
  const ucs_status_t error = peer.error.load(std::memory_order_relaxed);
  return absl::UnavailableError(absl::StrCat("ucx rank ", rank_, ": peer rank ", peer.rank,
                                             " is unavailable (", ucs_status_string(error), ")"));
}

void UcxTransport::FailPeer(Peer& peer, ucs_status_t status) {
  if (!peer.failed.load(std::memory_order_acquire)) {
    peer.error.store(status, std::memory_order_relaxed);
    peer.failed.store(true, std::memory_order_release);
  }
  if (peer.ep != nullptr) peer.ep->Close(/*flush=*/false, absl::InfinitePast());
}

void UcxTransport::CloseFailedEndpoints() {
  for (auto& [unused_rank, peer] : peers_) {
    if (peer->failed.load(std::memory_order_acquire) && peer->ep->is_open()) {
      peer->ep->Close(/*flush=*/false, absl::InfinitePast());
    }
  }
}

void UcxTransport::ReapOrphans() {
  std::erase_if(orphans_,
                [](const Orphan& orphan) { return orphan.request.Status() != UCS_INPROGRESS; });
}

absl::Status UcxTransport::Connect(const std::vector<PeerAddress>& peers) {
  if (worker_ == nullptr) return ClosedError();
  for (const PeerAddress& peer : peers) {
    if (!IsValidRank(peer.rank) || (peer.rank != rank_ && peer.address.empty())) {
      return absl::InvalidArgumentError(absl::StrCat("ucx rank ", rank_, ": bad peer (rank ",
                                                     peer.rank, ", ", peer.address.size(),
                                                     "-byte address)"));
    }
  }
  CloseFailedEndpoints();
  for (const PeerAddress& address : peers) {
    if (address.rank == rank_) continue;
    auto it = peers_.find(address.rank);
    if (it != peers_.end() && it->second->ep->is_open() && it->second->address == address.address) {
      continue;
    }
    if (it != peers_.end()) RetirePeer(it);  // the old endpoint goes first
    auto peer = std::make_unique<Peer>(address.rank, address.address);
    SY_ASSIGN_OR_RETURN(peer->ep, UcpEndpoint::Create(worker_.get(), address.address,
                                                      &OnEndpointError, peer.get()));
    peers_.emplace(address.rank, std::move(peer));
  }
  return absl::OkStatus();
}

absl::Status UcxTransport::Disconnect(int32_t rank) {
  if (worker_ == nullptr) return ClosedError();
  auto it = peers_.find(rank);
  if (it == peers_.end()) return absl::OkStatus();
  RetirePeer(it);
  return absl::OkStatus();
}

void UcxTransport::Poll() {
  if (worker_ == nullptr) return;
  for (int i = 0; i < 8; ++i) worker_->Progress();
  CloseFailedEndpoints();
  ReapOrphans();
}

void UcxTransport::RetirePeer(absl::flat_hash_map<int32_t, std::unique_ptr<Peer>>::iterator it) {
  // The close is seen through: a successor may listen where its predecessor
  // did (a configured port range), and UCX's TCP transport tells peers apart
  // by address, so a stale endpoint's connection state would be taken for
  // the successor's (seen: tcp_iface.c's `ep->conn_state != CLOSED` assertion
  // in a restarted worker).
  UcpEndpoint& old = *it->second->ep;
  const absl::Time deadline = absl::Now() + options_.close_timeout;
  old.Close(/*flush=*/false, deadline);
  while (old.closing() && absl::Now() < deadline) worker_->Progress();
  retired_peers_.push_back(std::move(it->second));
  peers_.erase(it);
}

absl::Status UcxTransport::AdvanceRecv(uint64_t tag, PendingRecv& recv,
                                       std::vector<uint8_t>& buffer) {
  if (!recv.matched) {
    if (recv.peer == nullptr) {  // from this rank: a message queued by an earlier send to self
      auto it = self_messages_.find(tag);
      if (it == self_messages_.end()) return absl::OkStatus();
      buffer = std::move(it->second.front());
      it->second.pop_front();
      if (it->second.empty()) self_messages_.erase(it);
      recv.matched = recv.done = true;
      return absl::OkStatus();
    }
    ucp_tag_recv_info_t info{};
    const ucp_tag_message_h message =
        ucp_tag_probe_nb(worker_->get(), WireTag(tag, recv.src), kFullTagMask, /*remove=*/1, &info);
    if (message == nullptr) return absl::OkStatus();
    recv.matched = true;
    // The probe gave the length, so an immediate completion (which does not
    // report it) needs nothing more.
    buffer.resize(info.length);
    ucp_request_param_t params{};
    const ucs_status_ptr_t result = ucp_tag_msg_recv_nbx(
        worker_->get(), buffer.empty() ? &scratch_ : buffer.data(), info.length, message, &params);
    if (UCS_PTR_IS_ERR(result)) {
      recv.done = true;
      return UcsError(UCS_PTR_STATUS(result), "ucp_tag_msg_recv_nbx", __FILE__, __LINE__);
    }
    if (result == nullptr) {
      recv.done = true;
      return absl::OkStatus();
    }
    recv.request = UcpRequest(result);
  }
  const ucs_status_t status = recv.request.Status();
  if (status == UCS_INPROGRESS) return absl::OkStatus();
  recv.request.Reset();
  recv.done = true;
  if (status != UCS_OK) {
    FailPeer(*recv.peer, status);
    return PeerDownError(*recv.peer);
  }
  return absl::OkStatus();
}

absl::Status UcxTransport::Exchange(uint64_t tag, const std::vector<SendItem>& sends,
                                    const std::vector<int32_t>& recv_from,
                                    std::vector<std::vector<uint8_t>>* received,
                                    absl::Duration timeout) {
  const absl::Time started = absl::Now();
  const absl::Time deadline = started + timeout;
  if (worker_ == nullptr) return ClosedError();
  SY_RETURN_IF_ERROR(CheckExchangeArgs(rank_, tag, sends, recv_from, received, [this](int32_t p) {
    return p == rank_ || peers_.contains(p);
  }));
  if (interrupted()) return InterruptedError();
  ReapOrphans();
  CloseFailedEndpoints();
  // A peer already known to be gone fails the call before anything is sent.
  auto find_peer = [this](int32_t rank) -> Peer* {
    return rank == rank_ ? nullptr : peers_.at(rank).get();
  };
  for (const SendItem& item : sends) {
    Peer* peer = find_peer(item.peer);
    if (peer != nullptr && !peer->ep->is_open()) return PeerDownError(*peer);
  }
  for (int32_t src : recv_from) {
    Peer* peer = find_peer(src);
    if (peer != nullptr && !peer->ep->is_open()) return PeerDownError(*peer);
  }

  absl::Status failure;
  std::vector<PendingSend> pending_sends;
  const ucp_tag_t send_tag = WireTag(tag, rank_);
  for (const SendItem& item : sends) {
    Peer* peer = find_peer(item.peer);
    if (peer == nullptr) {
      self_messages_[tag].emplace_back(item.data, item.data + item.size);
      continue;
    }
    ucp_request_param_t params{};  // contiguous bytes, completion polled below
    PendingSend send{peer, UcpRequest(), std::vector<uint8_t>(item.data, item.data + item.size)};
    const ucs_status_ptr_t result =
        ucp_tag_send_nbx(peer->ep->get(), item.size > 0 ? send.buffer.data() : &scratch_, item.size,
                         send_tag, &params);
    if (UCS_PTR_IS_ERR(result)) {
      FailPeer(*peer, UCS_PTR_STATUS(result));
      failure = PeerDownError(*peer);
      break;
    }
    if (result != nullptr) {
      send.request = UcpRequest(result);
      pending_sends.push_back(std::move(send));
    }
  }

  if (received != nullptr) received->assign(recv_from.size(), {});
  std::vector<PendingRecv> recvs(recv_from.size());
  for (size_t i = 0; i < recv_from.size(); ++i) {
    recvs[i].src = recv_from[i];
    recvs[i].peer = find_peer(recv_from[i]);
    recvs[i].index = i;
  }

  size_t num_sends_left = pending_sends.size();
  size_t num_recvs_left = recvs.size();
  int idle_spins = 0;
  while (failure.ok()) {
    bool advanced = worker_->Progress() != 0;
    for (PendingSend& send : pending_sends) {
      if (send.request.empty()) continue;
      const ucs_status_t status = send.request.Status();
      if (status == UCS_INPROGRESS) continue;
      send.request.Reset();
      --num_sends_left;
      advanced = true;
      if (status != UCS_OK) {
        FailPeer(*send.peer, status);
        failure = PeerDownError(*send.peer);
        break;
      }
    }
    for (PendingRecv& recv : recvs) {
      if (!failure.ok()) break;
      if (recv.done) continue;
      failure = AdvanceRecv(tag, recv, (*received)[recv.index]);
      if (recv.done) {
        --num_recvs_left;
        advanced = true;
      }
    }
    if (!failure.ok()) break;
    if (num_sends_left == 0 && num_recvs_left == 0) return absl::OkStatus();

    // A peer whose endpoint failed while we still wait on it ends the call.
    for (const PendingSend& send : pending_sends) {
      if (!send.request.empty() && send.peer->failed.load(std::memory_order_acquire)) {
        failure = PeerDownError(*send.peer);
      }
    }
    for (const PendingRecv& recv : recvs) {
      if (!recv.done && recv.peer != nullptr && recv.peer->failed.load(std::memory_order_acquire)) {
        failure = PeerDownError(*recv.peer);
      }
    }
    if (!failure.ok()) break;
    if (interrupted()) {
      failure = InterruptedError();
      break;
    }

    if (absl::Now() >= deadline) {
      std::vector<int32_t> missing_from;
      std::vector<int32_t> unsent_to;
      for (const PendingRecv& recv : recvs) {
        if (!recv.done) missing_from.push_back(recv.src);
      }
      for (const PendingSend& send : pending_sends) {
        if (!send.request.empty()) unsent_to.push_back(send.peer->rank);
      }
      failure = absl::DeadlineExceededError(
          absl::StrCat("ucx rank ", rank_, ", tag ", tag, ": not complete within ",
                       absl::FormatDuration(timeout), "; no message from ranks [",
                       absl::StrJoin(missing_from, ", "), "]; sends to ranks [",
                       absl::StrJoin(unsent_to, ", "), "] in flight"));
      break;
    }
    if (advanced) {
      idle_spins = 0;
    } else if (++idle_spins >= kIdleSpinsBeforeSleep) {
      // Long waits (an idle mesh between requests) sleep instead of burning
      // a core per rank.
      const int64_t waited_us = absl::ToInt64Microseconds(absl::Now() - started);
      std::this_thread::sleep_for(
          std::chrono::microseconds(std::clamp(waited_us / 10, kIdleSleepUs, kMaxIdleSleepUs)));
    } else if (idle_spins % kIdleSpinsBeforeYield == 0) {
      std::this_thread::yield();
    }
  }
  Abandon(pending_sends, recvs, received, deadline, absl::IsAborted(failure));
  return failure;
}

void UcxTransport::Abandon(std::vector<PendingSend>& sends, std::vector<PendingRecv>& recvs,
                           std::vector<std::vector<uint8_t>>* received, absl::Time deadline,
                           bool interrupted) {
  // Receives in flight write into their buffers until UCX completes them,
  // and a matched receive cannot be cancelled (ucp_request_cancel only
  // removes unmatched ones): keep request and buffer until it completes.
  for (PendingRecv& recv : recvs) {
    if (recv.request.empty()) continue;
    orphans_.push_back({std::move(recv.request), std::move((*received)[recv.index])});
  }
  if (received != nullptr) received->clear();

  // Sends get a short grace. After an interrupt (the mesh is re-forming) a
  // send still in flight is one the peer abandoned its receive for: it keeps
  // its own buffer, so it is left to UCX (its tag carries the old mesh
  // generation, which no later receive matches) and the live peer's endpoint
  // stays open; force-closing it would fail the peer's first exchange of the
  // re-formed mesh. Otherwise (a failed or silent peer) the endpoints the
  // sends are stuck on are force-closed, which completes them with
  // UCS_ERR_CANCELED.
  const absl::Time grace_end = std::min(deadline, absl::Now() + options_.abandon_grace);
  auto any_send_left = [&sends] {
    bool any = false;
    for (PendingSend& send : sends) {
      if (!send.request.empty() && send.request.Status() != UCS_INPROGRESS) send.request.Reset();
      any = any || !send.request.empty();
    }
    return any;
  };
  while (any_send_left() && absl::Now() < grace_end) {
    worker_->Progress();
    CloseFailedEndpoints();
  }
  for (PendingSend& send : sends) {
    if (send.request.empty()) continue;
    if (interrupted && !send.peer->failed.load(std::memory_order_acquire)) {
      orphans_.push_back({std::move(send.request), std::move(send.buffer)});
      continue;
    }
    SY_LOG(WARNING) << "ucx rank " << rank_ << ": send to rank " << send.peer->rank
                    << " still in flight after a failed exchange; closing its endpoint";
    FailPeer(*send.peer, UCS_ERR_CANCELED);
  }
  for (PendingSend& send : sends) {
    if (send.request.empty()) continue;
    if (send.request.Status() == UCS_INPROGRESS) {
      // Not expected: a force close completes the endpoint's requests.
      SY_LOG(ERROR) << "ucx rank " << rank_ << ": send to rank " << send.peer->rank
                    << " still in flight after its endpoint was force-closed";
    }
    send.request.Reset();
  }
}

absl::Status UcxTransport::Close() {
  if (worker_ == nullptr) return absl::OkStatus();
  // Let data already handed to UCX leave (a flush needs no help from the
  // peers), then force-close the endpoints: a graceful close would wait for
  // every peer to progress, which idle or dead peers never do.
  const absl::Status flushed = worker_->Flush(absl::Now() + options_.close_timeout);
  if (!flushed.ok()) {
    SY_LOG(WARNING) << "ucx rank " << rank_ << ": closing with unflushed data: " << flushed;
  }
  for (auto& [unused_rank, peer] : peers_) peer->ep->Close(/*flush=*/false, absl::InfinitePast());
  // Force closes (these and those of failed peers) can take a few progress
  // calls to end; UCX aborts the process if the worker goes first.
  std::vector<UcpEndpoint*> endpoints;
  for (auto& [unused_rank, peer] : peers_) endpoints.push_back(peer->ep.get());
  for (auto& peer : retired_peers_) endpoints.push_back(peer->ep.get());
  const auto closing = [&] {
    return std::any_of(endpoints.begin(), endpoints.end(),
                       [](const UcpEndpoint* ep) { return ep != nullptr && ep->closing(); });
  };
  const absl::Time close_deadline = absl::Now() + options_.close_timeout;
  while (closing() && absl::Now() < close_deadline) worker_->Progress();
  const bool closes_done = !closing();
  for (UcpEndpoint* ep : endpoints) {
    if (ep != nullptr) ep->ForgetClose();
  }
  ReapOrphans();
  // Buffers of receives UCX may still write to live until the worker is gone.
  std::vector<std::vector<uint8_t>> late_buffers;
  for (Orphan& orphan : orphans_) {
    orphan.request.Release();  // dies with the worker
    late_buffers.push_back(std::move(orphan.buffer));
  }
  orphans_.clear();
  if (closes_done) {
    worker_.reset();
    context_.reset();
  } else {
    // Destroying the worker now would abort the process; leave it (and its
    // context) to the process's exit.
    SY_LOG(WARNING) << "ucx rank " << rank_ << ": endpoint closes did not end within "
                    << absl::FormatDuration(options_.close_timeout)
                    << "; leaving the UCX worker to the process's exit";
    struct Kept {
      std::unique_ptr<UcpContext> context;
      std::unique_ptr<UcpWorker> worker;
    };
    static auto* const kept = new std::vector<Kept>;  // never destroyed; reachable for LSan
    static std::mutex kept_mu;
    std::lock_guard<std::mutex> lock(kept_mu);
    kept->push_back({std::move(context_), std::move(worker_)});
  }
  peers_.clear();
  retired_peers_.clear();
  self_messages_.clear();
  return absl::OkStatus();
}

}  // namespace sy::transport::ucx

// The `ucx` transport: UCP tagged messages in host memory over whatever UCX
// selects from its own configuration (UCX_TLS, UCX_NET_DEVICES, ...: shared
// memory, TCP, RDMA).
//
// Endpoints use UCP_ERR_HANDLING_MODE_PEER, so a peer that dies fails its
// requests instead of leaving them hanging. UCX 1.13 then selects only
// transports that can report peer failure (tcp, InfiniBand), never its
// shared-memory ones (sysv, posix, cma), even between ranks of one host.
//
// Wire format: UCP tag = (user_tag << 16) | source_rank, matched with a full
// mask, so a receive names exactly one (tag, source). Messages are received
// by probing for that tag (ucp_tag_probe_nb, remove=1) to learn the length and
// then ucp_tag_msg_recv_nbx into a buffer of that size; messages of other tags
// stay queued inside UCX until an Exchange asks for them.
//
// Ownership: a UcxTransport owns one ucp_context, one worker and one endpoint
// per connected peer, and the buffers of receives abandoned by a failed
// Exchange until UCX is done with them. The caller's send buffers are only
// read while Exchange() runs: Exchange never returns while UCX still uses
// them (see Exchange below).
//
// Threading: one thread at a time drives a UcxTransport (the worker is
// single-threaded); UCX's own async thread never calls into this class.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "transport/transport.h"
#include "transport/ucx/ucp_handles.h"

namespace sy::transport::ucx {

class UcxTransport final : public Transport {
 public:
  struct Options {
    int32_t rank = -1;
    // How long Close() lets data already handed to UCX leave (a worker
    // flush) before it force-closes the endpoints.
    absl::Duration close_timeout = absl::Milliseconds(200);
    // After a failed Exchange, how long sends still in flight may take to
    // finish (never past the Exchange's deadline) before their endpoints are
    // force-closed.
    absl::Duration abandon_grace = absl::Milliseconds(50);
    // The TCP ports UCX's listeners may bind, "FIRST-LAST"; empty: any.
    std::string port_range;
    // Used from several threads, one at a time (see TransportOptions).
    bool serialized = false;
  };

  static absl::StatusOr<std::unique_ptr<UcxTransport>> Create(const Options& options);
  // Close().
  ~UcxTransport() override;
  UcxTransport(const UcxTransport&) = delete;
  UcxTransport& operator=(const UcxTransport&) = delete;

  std::string_view backend() const override { return "ucx"; }
  // Host memory only; `rdma` is reported false (not queried from UCX).
  Capabilities capabilities() const override { return Capabilities{}; }
  int32_t rank() const override { return rank_; }
  // The UCP worker address blob.
  std::string local_address() const override { return address_; }

  // Creates an endpoint per new peer. Re-listing a peer with the same
  // address is a no-op unless its endpoint failed; a failed peer or one with
  // a new address (a restarted rank) gets a new endpoint, which is how a
  // re-formed mesh reconnects it.
  absl::Status Connect(const std::vector<PeerAddress>& peers) override;
  absl::Status Disconnect(int32_t rank) override;
  void Poll() override;

  // Failure handling: a peer whose endpoint reported an error fails the call
  // with Unavailable. When the call fails (error or deadline), in-flight
  // receives are abandoned (their buffers stay owned here until UCX lets go),
  // and in-flight sends get `abandon_grace` to finish; the endpoints of peers
  // whose sends are still in flight then are force-closed, so those peers
  // report Unavailable until Connect() lists them again, except after an
  // interrupt, when a live peer's unfinished sends are left to UCX (sends go
  // from a copy of the caller's bytes, so the call never holds them).
  absl::Status Exchange(uint64_t tag, const std::vector<SendItem>& sends,
                        const std::vector<int32_t>& recv_from,
                        std::vector<std::vector<uint8_t>>* received,
                        absl::Duration timeout) override;

  // Flushes the worker (bounded by close_timeout), force-closes every
  // endpoint, then destroys the worker and the context. Peers notice when
  // their endpoint to this rank fails (promptly over TCP, through UCX
  // keepalive otherwise) or by their timeout. Later calls fail with
  // FailedPrecondition. Messages the peers have not received yet may be lost:
  // end the last exchange with a receive (or a barrier) first.
  absl::Status Close() override;

 private:
  // One remote rank. Owned by peers_ (or retired_peers_ after a reconnect),
  // heap-allocated so the endpoint's error handler can keep a pointer to it;
  // kept until the worker is destroyed, so no late callback sees freed memory.
  struct Peer {
    Peer(int32_t peer_rank, std::string peer_address)
        : rank(peer_rank), address(std::move(peer_address)) {}
    const int32_t rank;
    const std::string address;  // the worker address the endpoint was made from
    std::unique_ptr<UcpEndpoint> ep;
    // Written by the endpoint error handler; release/acquire publishes
    // `error` with the flag. The handler runs inside ucp_worker_progress on
    // the driving thread today; the atomics keep it correct should UCX ever
    // call it from its async thread.
    std::atomic<bool> failed{false};
    std::atomic<ucs_status_t> error{UCS_OK};
  };
  struct PendingSend;
  struct PendingRecv;
  // A receive or send abandoned by a failed Exchange: its buffer must outlive
  // the request.
  struct Orphan {
    UcpRequest request;
    std::vector<uint8_t> buffer;
  };

  UcxTransport(const Options& options, std::unique_ptr<UcpContext> context,
               std::unique_ptr<UcpWorker> worker, std::string address);

  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);

  absl::Status ClosedError() const;
  // Unavailable naming `peer`, with the UCX error that took it down.
  absl::Status PeerDownError(const Peer& peer) const;
  // Marks `peer` failed with `status` (if not already) and force-closes its
  // endpoint, completing its in-flight requests.
  void FailPeer(Peer& peer, ucs_status_t status);
  // Force-closes the endpoints whose error handler has fired.
  void CloseFailedEndpoints();
  // Closes the endpoint of `it` to completion (bounded by close_timeout) and
  // moves its peer to retired_peers_.
  void RetirePeer(absl::flat_hash_map<int32_t, std::unique_ptr<Peer>>::iterator it);
  // Frees abandoned receives that UCX has finished with.
  void ReapOrphans();
  // Starts or checks one receive; sets `recv.done` when it has completed.
  absl::Status AdvanceRecv(uint64_t tag, PendingRecv& recv, std::vector<uint8_t>& buffer);
  // Cleans up after a failed Exchange (see Exchange()).
  void Abandon(std::vector<PendingSend>& sends, std::vector<PendingRecv>& recvs,
               std::vector<std::vector<uint8_t>>* received, absl::Time deadline, bool interrupted);

  const int32_t rank_;
  const Options options_;
  const std::string address_;
  // Members are torn down explicitly in Close(): endpoints, then the worker,
  // then the context, then the Peer objects and orphaned buffers.
  std::unique_ptr<UcpContext> context_;
  std::unique_ptr<UcpWorker> worker_;
  absl::flat_hash_map<int32_t, std::unique_ptr<Peer>> peers_;
  std::vector<std::unique_ptr<Peer>> retired_peers_;
  std::vector<Orphan> orphans_;
  // Messages this rank sent to itself, by user tag, oldest first.
  absl::flat_hash_map<uint64_t, std::deque<std::vector<uint8_t>>> self_messages_;
  // Stand-in buffer for zero-byte sends and receives.
  uint8_t scratch_ = 0;
};

}  // namespace sy::transport::ucx

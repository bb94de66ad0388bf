// The data-plane transport of the MoE mesh: tagged point-to-point messages
// between ranks, and the all-to-all-v built from them.
//
// Every attention worker and expert worker owns one Transport. Ranks exchange
// opaque addresses through the coordinator (local_address() -> Connect()),
// then move byte messages identified by a 48-bit user tag (the mesh step,
// the MoE layer and the phase). Backends: `inproc` (threads of one process)
// and `ucx` (UCP tagged messages in host memory over whatever UCX selects:
// shared memory, TCP, RDMA); a `nccl` backend for device memory comes later.
//
// Failure model: an exchange never hangs. A peer that is gone (process died,
// endpoint error, closed) or silent past the timeout fails the call with
// Unavailable or DeadlineExceeded naming the peer rank; the transport stays
// usable for exchanges that do not involve the failed peer.
//
// Threading: one thread at a time drives a Transport (the worker's step
// loop); backends may run internal threads.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace sy::transport {

struct Capabilities {
  bool host_memory = true;     // payloads live in host memory
  bool device_memory = false;  // payloads may live in GPU memory
  bool rdma = false;           // a zero-copy network path is in use
};

// How to reach one member of the mesh.
struct PeerAddress {
  int32_t rank = -1;
  std::string address;  // backend-specific bytes from that rank's local_address()
};

// One outgoing message of an exchange.
struct SendItem {
  int32_t peer = -1;
  const uint8_t* data = nullptr;
  size_t size = 0;
};

// Largest user tag (48 bits: the backends keep the low 16 bits of the wire
// tag for the source rank).
inline constexpr uint64_t kMaxUserTag = (uint64_t{1} << 48) - 1;
inline constexpr int32_t kMaxRanks = 1 << 16;

class Transport {
 public:
  virtual ~Transport() = default;

  virtual std::string_view backend() const = 0;
  virtual Capabilities capabilities() const = 0;
  virtual int32_t rank() const = 0;
  // Bytes the other ranks pass to Connect() to reach this one.
  virtual std::string local_address() const = 0;

  // Establishes endpoints to `peers` (this rank may be listed; it is
  // skipped). May be called again with more peers; re-listing a connected
  // peer is a no-op.
  virtual absl::Status Connect(const std::vector<PeerAddress>& peers) = 0;

  // Closes the endpoint to `rank` now (it left the mesh), so that a successor
  // listening where it did meets no state of the old endpoint; Connect()
  // with its new address reconnects. A rank without an endpoint is fine.
  virtual absl::Status Disconnect(int32_t rank) { return absl::OkStatus(); }

  // Does pending connection work (accepts, a peer's failure) without an
  // exchange, for a transport idle between uses; the driving thread's call
  // like any other. Default: nothing to do.
  virtual void Poll() {}

  // Sends every item of `sends` and receives exactly one message with `tag`
  // from each rank in `recv_from`, returning when all have completed.
  // `received` gets one buffer per entry of `recv_from`, in that order.
  // Messages of other tags that arrive meanwhile are kept for later calls.
  // Errors: InvalidArgument (tag > kMaxUserTag, unknown peer), Unavailable (a
  // peer involved is gone), DeadlineExceeded (not complete within `timeout`).
  virtual absl::Status Exchange(uint64_t tag, const std::vector<SendItem>& sends,
                                const std::vector<int32_t>& recv_from,
                                std::vector<std::vector<uint8_t>>* received,
                                absl::Duration timeout) = 0;

  // Optional: marks this rank gone for its peers (tests, orderly shutdown).
  virtual absl::Status Close() { return absl::UnimplementedError("Close"); }

  // Any thread: the Exchange in progress, and every later one until
  // ClearInterrupt(), returns Aborted promptly (sends already handed over
  // may still be delivered). A worker does this when the mesh is re-formed
  // without a peer that its step may be waiting on. Messages that arrive
  // meanwhile are kept for later calls.
  void Interrupt() {
    interrupted_.store(true, std::memory_order_release);
    WakeForInterrupt();
  }
  // The driving thread, between exchanges: exchanges run again.
  void ClearInterrupt() { interrupted_.store(false, std::memory_order_release); }
  bool interrupted() const { return interrupted_.load(std::memory_order_acquire); }

 protected:
  // Ends a backend's wait so it sees interrupted() (any thread).
  virtual void WakeForInterrupt() {}
  absl::Status InterruptedError() const {
    return absl::AbortedError(absl::StrCat(std::string(backend()), " rank ", rank(),
                                           ": exchange interrupted (the mesh is re-forming)"));
  }

 private:
  std::atomic<bool> interrupted_{false};
};

// All-to-all-v among `ranks` (this rank included or not): sends send[i] to
// ranks[i] and receives one message from every other rank of `ranks`.
// The message to self, if listed, is copied locally.
absl::Status AllToAllV(Transport& t, uint64_t tag, const std::vector<int32_t>& ranks,
                       const std::vector<std::vector<uint8_t>>& send,
                       std::vector<std::vector<uint8_t>>* received, absl::Duration timeout);

}  // namespace sy::transport

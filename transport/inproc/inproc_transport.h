// The `inproc` transport: ranks that are threads of one process exchange
// messages through a shared Fabric (tests and the single-process mode).
//
// Ownership: every InprocTransport of a mesh holds a shared_ptr to the same
// Fabric; the Fabric owns copies of all messages in flight. A message is
// copied once on send and moved out on receive.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "transport/transport.h"

namespace sy::transport::inproc {

// Mailboxes keyed by (dst, src, tag) plus the liveness of every rank, guarded
// by one mutex; each destination has its own condition variable so a post
// wakes only the rank it is addressed to.
//
// Thread-safe: all ranks' threads call it concurrently.
class Fabric {
 public:
  Fabric() = default;
  Fabric(const Fabric&) = delete;
  Fabric& operator=(const Fabric&) = delete;

  // Marks `rank` alive (again, if it had left).
  void Join(int32_t rank);
  // Marks `rank` dead: drops the messages addressed to it and wakes every
  // rank waiting, so those waiting on it fail at once. Idempotent.
  void Leave(int32_t rank);
  bool IsDead(int32_t rank) const;

  // Queues a copy of `size` bytes from `src` to `dst`. Unavailable if `dst`
  // has left.
  absl::Status Post(int32_t src, int32_t dst, uint64_t tag, const uint8_t* data, size_t size);

  // Takes one message with `tag` from each rank of `srcs` (in that order)
  // into (*out)[i], waiting until `deadline`. Unavailable when a source has
  // left without leaving the message; DeadlineExceeded naming the missing
  // sources otherwise; Aborted once `interrupted` holds. Messages already
  // taken when it fails are dropped.
  absl::Status Collect(int32_t dst, uint64_t tag, const std::vector<int32_t>& srcs,
                       std::vector<std::vector<uint8_t>>* out, absl::Time deadline,
                       const std::function<bool()>& interrupted);
  // Wakes `dst`'s waits (so they check their interrupt).
  void Wake(int32_t dst);

 private:
  using Key = std::tuple<int32_t, int32_t, uint64_t>;  // (dst, src, tag)
  struct Inbox {
    std::condition_variable cv;  // signalled on a post to this rank and on any Leave()
  };

  Inbox& InboxLocked(int32_t dst);

  mutable std::mutex mu_;
  absl::flat_hash_map<Key, std::deque<std::vector<uint8_t>>> mailboxes_;
  // unique_ptr: waiters hold a reference to the cv while the map may grow.
  absl::flat_hash_map<int32_t, std::unique_ptr<Inbox>> inboxes_;
  absl::flat_hash_set<int32_t> dead_;
};

// One rank on a Fabric. Construction joins the fabric; Close() or the
// destructor leaves it.
//
// Threading: one thread at a time drives an InprocTransport (see
// Transport); the Fabric itself is shared and thread-safe.
class InprocTransport final : public Transport {
 public:
  InprocTransport(std::shared_ptr<Fabric> fabric, int32_t rank);
  ~InprocTransport() override;
  InprocTransport(const InprocTransport&) = delete;
  InprocTransport& operator=(const InprocTransport&) = delete;

  std::string_view backend() const override { return "inproc"; }
  Capabilities capabilities() const override { return Capabilities{}; }
  int32_t rank() const override { return rank_; }
  // The rank number as decimal text.
  std::string local_address() const override;

  // Checks that each address is the decimal text of its rank and remembers
  // the peer as connected.
  absl::Status Connect(const std::vector<PeerAddress>& peers) override;
  absl::Status Exchange(uint64_t tag, const std::vector<SendItem>& sends,
                        const std::vector<int32_t>& recv_from,
                        std::vector<std::vector<uint8_t>>* received,
                        absl::Duration timeout) override;
  // Leaves the fabric; later calls fail with FailedPrecondition.
  absl::Status Close() override;

 protected:
  void WakeForInterrupt() override { fabric_->Wake(rank_); }

 private:
  std::shared_ptr<Fabric> fabric_;
  const int32_t rank_;
  absl::flat_hash_set<int32_t> connected_;
  bool closed_ = false;
};

}  // namespace sy::transport::inproc

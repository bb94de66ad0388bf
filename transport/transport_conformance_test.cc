// One conformance suite for every Transport backend: each rank is a thread of
// this process with its own Transport, created through the registry.
// UCX runs over loopback / shared memory only (UCX_NET_DEVICES=lo, set in
// main() before any UCX initialisation).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transport/inproc/inproc_transport.h"
#include "transport/registry.h"
#include "transport/transport.h"

namespace sy::transport {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using Bytes = std::vector<uint8_t>;

#define EXPECT_OK(expr)                 \
  do {                                  \
    const absl::Status sy_st_ = (expr); \
    EXPECT_TRUE(sy_st_.ok()) << sy_st_; \
  } while (false)

// Generous: successful exchanges never get near it.
constexpr absl::Duration kTimeout = absl::Seconds(20);
// For exchanges that are meant to fail.
constexpr absl::Duration kFailTimeout = absl::Seconds(2);
// How late past its timeout a failing exchange may return.
constexpr absl::Duration kLateness = absl::Seconds(1);

// Deterministic bytes for the message (src -> dst, tag) of `size` bytes.
Bytes Pattern(int32_t src, int32_t dst, uint64_t tag, size_t size) {
  Bytes bytes(size);
  uint32_t state = static_cast<uint32_t>(src * 7919 + dst * 104729) ^ static_cast<uint32_t>(tag);
  for (uint8_t& byte : bytes) {
    state = state * 1664525u + 1013904223u;
    byte = static_cast<uint8_t>(state >> 24);
  }
  return bytes;
}

SendItem Item(int32_t peer, const Bytes& bytes) {
  return SendItem{peer, bytes.data(), bytes.size()};
}

// Whether `port` can be bound on 127.0.0.1 just now.
bool PortFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// The first of `n` consecutive free ports in [20000, 32000) (below the
// ephemeral range), 0 if none.
int FreePorts(int n) {
  static int next = 20000 + static_cast<int>(getpid() % 1000) * 8;
  for (int tries = 0; tries < 1500; ++tries) {
    const int base = next;
    next = next + 8 >= 32000 ? 20000 : next + 8;
    bool free = true;
    for (int i = 0; i < n && free; ++i) free = PortFree(base + i);
    if (free) return base;
  }
  return 0;
}

// Runs body(rank) for ranks [0, num_ranks), each on its own thread.
void RunRanks(int32_t num_ranks, const std::function<void(int32_t)>& body) {
  std::vector<std::thread> threads;
  for (int32_t rank = 0; rank < num_ranks; ++rank) threads.emplace_back(body, rank);
  for (std::thread& thread : threads) thread.join();
}

// One all-to-all over every rank of `mesh`, each rank on its thread (after
// `before(rank)` there): rank r sends d a pattern of base_size + d bytes,
// and must get each peer's.
void ExpectAllToAll(
    std::vector<std::unique_ptr<Transport>>& mesh, uint64_t tag, size_t base_size = 100,
    const std::function<void(int32_t)>& before = [](int32_t) {}) {
  const int32_t n = static_cast<int32_t>(mesh.size());
  std::vector<int32_t> ranks(n);
  for (int32_t r = 0; r < n; ++r) ranks[r] = r;
  RunRanks(n, [&](int32_t rank) {
    before(rank);
    std::vector<Bytes> send;
    for (int32_t dst : ranks) send.push_back(Pattern(rank, dst, tag, base_size + dst));
    std::vector<Bytes> got;
    EXPECT_OK(AllToAllV(*mesh[rank], tag, ranks, send, &got, kTimeout));
    for (int32_t src : ranks) {
      EXPECT_TRUE(got.size() == mesh.size() &&
                  got[src] == Pattern(src, rank, tag, base_size + rank));
    }
  });
}

class TransportConformanceTest : public ::testing::TestWithParam<std::string> {
 protected:
  // `num_ranks` transports of the backend under test, all connected to all.
  // Transports are created and destroyed on the test's main thread; RunRanks
  // hands each to one thread at a time.
  std::vector<std::unique_ptr<Transport>> MakeMesh(int32_t num_ranks) {
    std::vector<std::unique_ptr<Transport>> mesh;
    for (int32_t rank = 0; rank < num_ranks; ++rank) {
      std::unique_ptr<Transport> transport = MakeRank(rank);
      if (transport == nullptr) return {};
      mesh.push_back(std::move(transport));
    }
    const std::vector<PeerAddress> addresses = Addresses(mesh);
    for (auto& transport : mesh) {
      EXPECT_OK(transport->Connect(addresses));
      EXPECT_OK(transport->Connect(addresses));  // re-listing is a no-op
    }
    return mesh;
  }

  // One unconnected rank of the backend under test (nullptr on failure).
  std::unique_ptr<Transport> MakeRank(int32_t rank, const std::string& port_range = "") {
    TransportOptions options;
    options.backend = GetParam();
    options.rank = rank;
    options.fabric = fabric_;
    options.port_range = port_range;
    absl::StatusOr<std::unique_ptr<Transport>> transport = CreateTransport(options);
    if (!transport.ok()) {
      ADD_FAILURE() << transport.status();
      return nullptr;
    }
    EXPECT_EQ((*transport)->backend(), GetParam());
    EXPECT_EQ((*transport)->rank(), rank);
    EXPECT_TRUE((*transport)->capabilities().host_memory);
    return *std::move(transport);
  }

  static std::vector<PeerAddress> Addresses(const std::vector<std::unique_ptr<Transport>>& mesh) {
    std::vector<PeerAddress> addresses;
    for (const auto& transport : mesh) {
      addresses.push_back(PeerAddress{transport->rank(), transport->local_address()});
    }
    return addresses;
  }

  std::shared_ptr<inproc::Fabric> fabric_ = std::make_shared<inproc::Fabric>();
};

TEST_P(TransportConformanceTest, MessageSizes) {
  auto mesh = MakeMesh(2);
  ASSERT_EQ(mesh.size(), 2u);
  const std::vector<size_t> sizes = {0, 1, 7, 4096, size_t{1} << 20, size_t{4} << 20};
  RunRanks(2, [&](int32_t rank) {
    const int32_t peer = 1 - rank;
    for (size_t i = 0; i < sizes.size(); ++i) {
      const uint64_t tag = 100 + i;
      const Bytes out = Pattern(rank, peer, tag, sizes[i]);
      std::vector<Bytes> in;
      EXPECT_OK(mesh[rank]->Exchange(tag, {Item(peer, out)}, {peer}, &in, kTimeout));
      ASSERT_EQ(in.size(), 1u);
      EXPECT_EQ(in[0].size(), sizes[i]);
      EXPECT_TRUE(in[0] == Pattern(peer, rank, tag, sizes[i])) << "size " << sizes[i];
    }
  });
}

TEST_P(TransportConformanceTest, UnevenAllToAllV) {
  constexpr int32_t kRanks = 4;
  auto mesh = MakeMesh(kRanks);
  ASSERT_EQ(mesh.size(), size_t{kRanks});
  const std::vector<size_t> menu = {0, 1, 7, 4096, 65536 + 13, 300000};
  auto size_of = [&](int32_t src, int32_t dst) { return menu[(src * 3 + dst) % menu.size()]; };
  constexpr uint64_t kTag = 7;
  RunRanks(kRanks, [&](int32_t rank) {
    // Each rank lists the mesh in its own order.
    std::vector<int32_t> ranks;
    for (int32_t i = 0; i < kRanks; ++i) ranks.push_back((rank + i) % kRanks);
    std::vector<Bytes> send;
    for (int32_t dst : ranks) send.push_back(Pattern(rank, dst, kTag, size_of(rank, dst)));
    std::vector<Bytes> got;
    EXPECT_OK(AllToAllV(*mesh[rank], kTag, ranks, send, &got, kTimeout));
    ASSERT_EQ(got.size(), ranks.size());
    for (size_t i = 0; i < ranks.size(); ++i) {
      EXPECT_TRUE(got[i] == Pattern(ranks[i], rank, kTag, size_of(ranks[i], rank)))
          << "rank " << rank << " from " << ranks[i];
    }
  });
}

TEST_P(TransportConformanceTest, ManyStepsWithDistinctTags) {
  constexpr int32_t kRanks = 4;
  constexpr int kSteps = 200;
  auto mesh = MakeMesh(kRanks);
  ASSERT_EQ(mesh.size(), size_t{kRanks});
  auto size_of = [](int step, int32_t src, int32_t dst) {
    return static_cast<size_t>((step * 31 + src * 7 + dst * 3) % 257);
  };
  const std::vector<int32_t> ranks = {0, 1, 2, 3};
  RunRanks(kRanks, [&](int32_t rank) {
    for (int step = 0; step < kSteps; ++step) {
      const uint64_t tag = 1000 + static_cast<uint64_t>(step);
      std::vector<Bytes> send;
      for (int32_t dst : ranks) send.push_back(Pattern(rank, dst, tag, size_of(step, rank, dst)));
      std::vector<Bytes> got;
      const absl::Status status = AllToAllV(*mesh[rank], tag, ranks, send, &got, kTimeout);
      ASSERT_TRUE(status.ok()) << "step " << step << ": " << status;
      for (int32_t src : ranks) {
        ASSERT_TRUE(got[src] == Pattern(src, rank, tag, size_of(step, src, rank)))
            << "step " << step << " rank " << rank << " from " << src;
      }
    }
  });
}

// Rank 0 sends tags 2, 3, 3, kMaxUserTag and then 1; rank 1 receives tag 1
// first: everything that arrived before it is kept for later calls.
TEST_P(TransportConformanceTest, OutOfOrderTagsAreKept) {
  auto mesh = MakeMesh(2);
  ASSERT_EQ(mesh.size(), 2u);
  const Bytes msg1 = Pattern(0, 1, 1, 100);
  const Bytes msg2 = Pattern(0, 1, 2, 200);
  const Bytes msg3a = Pattern(0, 1, 3, 30);
  const Bytes msg3b = Pattern(0, 1, 33, 31);
  const Bytes msg_max = Pattern(0, 1, kMaxUserTag, 9);
  RunRanks(2, [&](int32_t rank) {
    Transport& t = *mesh[rank];
    std::vector<Bytes> got;
    if (rank == 0) {
      EXPECT_OK(t.Exchange(2, {Item(1, msg2)}, {}, &got, kTimeout));
      EXPECT_OK(t.Exchange(3, {Item(1, msg3a)}, {}, nullptr, kTimeout));
      EXPECT_OK(t.Exchange(3, {Item(1, msg3b)}, {}, nullptr, kTimeout));
      EXPECT_OK(t.Exchange(kMaxUserTag, {Item(1, msg_max)}, {}, nullptr, kTimeout));
      EXPECT_OK(t.Exchange(1, {Item(1, msg1)}, {}, nullptr, kTimeout));
      return;
    }
    EXPECT_OK(t.Exchange(1, {}, {0}, &got, kTimeout));
    ASSERT_EQ(got.size(), 1u);
    EXPECT_TRUE(got[0] == msg1);
    EXPECT_OK(t.Exchange(kMaxUserTag, {}, {0}, &got, kTimeout));
    EXPECT_TRUE(got.at(0) == msg_max);
    EXPECT_OK(t.Exchange(2, {}, {0}, &got, kTimeout));
    EXPECT_TRUE(got.at(0) == msg2);
    // Two messages with one tag from one source arrive in order.
    EXPECT_OK(t.Exchange(3, {}, {0, 0}, &got, kTimeout));
    ASSERT_EQ(got.size(), 2u);
    EXPECT_TRUE(got[0] == msg3a);
    EXPECT_TRUE(got[1] == msg3b);
  });
}

TEST_P(TransportConformanceTest, EmptyExchangeIsOk) {
  auto mesh = MakeMesh(2);
  ASSERT_EQ(mesh.size(), 2u);
  std::vector<Bytes> got = {Bytes{1, 2, 3}};
  EXPECT_OK(mesh[0]->Exchange(5, {}, {}, &got, absl::Milliseconds(100)));
  EXPECT_TRUE(got.empty());
  EXPECT_OK(mesh[1]->Exchange(5, {}, {}, nullptr, absl::ZeroDuration()));
}

TEST_P(TransportConformanceTest, SelfMessages) {
  auto mesh = MakeMesh(2);
  ASSERT_EQ(mesh.size(), 2u);
  const Bytes to_self = Pattern(0, 0, 9, 123);
  const Bytes to_peer = Pattern(0, 1, 9, 45);
  RunRanks(2, [&](int32_t rank) {
    std::vector<Bytes> got;
    if (rank == 0) {
      EXPECT_OK(mesh[0]->Exchange(9, {Item(0, to_self), Item(1, to_peer)}, {0}, &got, kTimeout));
      ASSERT_EQ(got.size(), 1u);
      EXPECT_TRUE(got[0] == to_self);
    } else {
      EXPECT_OK(mesh[1]->Exchange(9, {}, {0}, &got, kTimeout));
      ASSERT_EQ(got.size(), 1u);
      EXPECT_TRUE(got[0] == to_peer);
    }
  });
}

// MoE shape: 2 attention ranks dispatch token rows to 3 expert ranks, which
// reply (combine) with a function of what they got.
TEST_P(TransportConformanceTest, BipartiteDispatchCombine) {
  const std::vector<int32_t> attention = {0, 1};
  const std::vector<int32_t> experts = {2, 3, 4};
  constexpr int kSteps = 20;
  auto mesh = MakeMesh(5);
  ASSERT_EQ(mesh.size(), 5u);
  auto rows_size = [](int step, int32_t a, int32_t e) {
    return static_cast<size_t>(((a + 1) * (e + 2) * step * 37) % 3000);
  };
  auto expert_fn = [](const Bytes& in, int32_t e) {
    Bytes out(in.size() + 1);
    for (size_t i = 0; i < in.size(); ++i) out[i] = static_cast<uint8_t>(in[i] + e);
    out.back() = static_cast<uint8_t>(e);
    return out;
  };
  RunRanks(5, [&](int32_t rank) {
    Transport& t = *mesh[rank];
    const bool is_attention = rank < 2;
    for (int step = 0; step < kSteps; ++step) {
      const uint64_t dispatch_tag = 2 * static_cast<uint64_t>(step) + 10;
      const uint64_t combine_tag = dispatch_tag + 1;
      std::vector<Bytes> got;
      if (is_attention) {
        std::vector<Bytes> rows;
        std::vector<SendItem> sends;
        for (int32_t e : experts)
          rows.push_back(Pattern(rank, e, dispatch_tag, rows_size(step, rank, e)));
        for (size_t i = 0; i < experts.size(); ++i) sends.push_back(Item(experts[i], rows[i]));
        ASSERT_TRUE(t.Exchange(dispatch_tag, sends, {}, nullptr, kTimeout).ok());
        const absl::Status status = t.Exchange(combine_tag, {}, experts, &got, kTimeout);
        ASSERT_TRUE(status.ok()) << status;
        for (size_t i = 0; i < experts.size(); ++i) {
          ASSERT_TRUE(got[i] == expert_fn(rows[i], experts[i])) << "step " << step;
        }
      } else {
        const absl::Status status = t.Exchange(dispatch_tag, {}, attention, &got, kTimeout);
        ASSERT_TRUE(status.ok()) << status;
        std::vector<Bytes> replies;
        std::vector<SendItem> sends;
        for (size_t i = 0; i < attention.size(); ++i) {
          ASSERT_TRUE(got[i] == Pattern(attention[i], rank, dispatch_tag,
                                        rows_size(step, attention[i], rank)));
          replies.push_back(expert_fn(got[i], rank));
        }
        for (size_t i = 0; i < attention.size(); ++i)
          sends.push_back(Item(attention[i], replies[i]));
        ASSERT_TRUE(t.Exchange(combine_tag, sends, {}, nullptr, kTimeout).ok());
      }
    }
  });
}

// Rank 2 does one step, then its transport is destroyed while ranks 0 and 1
// wait on it; they fail within the timeout and still talk to each other.
TEST_P(TransportConformanceTest, PeerDiesMidExchange) {
  auto mesh = MakeMesh(3);
  ASSERT_EQ(mesh.size(), 3u);
  const std::vector<int32_t> ranks = {0, 1, 2};
  RunRanks(3, [&](int32_t rank) {
    std::vector<Bytes> send;
    for (int32_t dst : ranks) send.push_back(Pattern(rank, dst, 1, 64));
    std::vector<Bytes> got;
    ASSERT_TRUE(AllToAllV(*mesh[rank], 1, ranks, send, &got, kTimeout).ok());
    if (rank == 2) {
      absl::SleepFor(absl::Milliseconds(100));
      mesh[2].reset();
      return;
    }
    const absl::Time start = absl::Now();
    const absl::Status status = AllToAllV(*mesh[rank], 2, ranks, send, &got, kFailTimeout);
    const absl::Duration elapsed = absl::Now() - start;
    EXPECT_THAT(status.code(),
                AnyOf(absl::StatusCode::kUnavailable, absl::StatusCode::kDeadlineExceeded))
        << status;
    EXPECT_LT(elapsed, kFailTimeout + kLateness);
    if (status.code() == absl::StatusCode::kUnavailable) {
      EXPECT_THAT(std::string(status.message()), HasSubstr("peer rank 2"));
    } else {
      EXPECT_THAT(std::string(status.message()), HasSubstr("ranks [2]"));
    }
    if (GetParam() == "inproc") {  // a closed inproc rank is noticed at once
      EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
      EXPECT_LT(elapsed, absl::Milliseconds(500));
    }
    // The survivors keep working with each other.
    const int32_t other = 1 - rank;
    const Bytes out = Pattern(rank, other, 3, 1000);
    EXPECT_OK(mesh[rank]->Exchange(3, {Item(other, out)}, {other}, &got, kTimeout));
    EXPECT_TRUE(got.size() == 1 && got[0] == Pattern(other, rank, 3, 1000));
    // And a new exchange involving the dead rank fails too, within the timeout.
    const absl::Time again = absl::Now();
    const absl::Status status4 = mesh[rank]->Exchange(4, {Item(2, out)}, {2}, &got, kFailTimeout);
    EXPECT_FALSE(status4.ok());
    EXPECT_LT(absl::Now() - again, kFailTimeout + kLateness);
  });
}

// Rank 2 is alive but never sends: the others fail with DeadlineExceeded
// naming it, then carry on between themselves.
TEST_P(TransportConformanceTest, SilentPeerTimesOut) {
  auto mesh = MakeMesh(3);
  ASSERT_EQ(mesh.size(), 3u);
  RunRanks(2, [&](int32_t rank) {
    const int32_t other = 1 - rank;
    const Bytes out = Pattern(rank, other, 1, 500);
    const Bytes to_silent = Pattern(rank, 2, 1, 500);
    std::vector<Bytes> got;
    const absl::Time start = absl::Now();
    const absl::Status status = mesh[rank]->Exchange(1, {Item(other, out), Item(2, to_silent)},
                                                     {other, 2}, &got, kFailTimeout);
    const absl::Duration elapsed = absl::Now() - start;
    EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("ranks [2]"));
    EXPECT_GE(elapsed, kFailTimeout - absl::Milliseconds(50));
    EXPECT_LT(elapsed, kFailTimeout + kLateness);
    EXPECT_TRUE(got.empty());
    const Bytes next = Pattern(rank, other, 2, 300);
    EXPECT_OK(mesh[rank]->Exchange(2, {Item(other, next)}, {other}, &got, kTimeout));
    EXPECT_TRUE(got.size() == 1 && got[0] == Pattern(other, rank, 2, 300));
  });
}

// Interrupt() from another thread ends a wait on a live but silent peer at
// once with Aborted, refuses later exchanges until ClearInterrupt(), and
// keeps what arrived meanwhile: the message sent during the interrupt is
// received afterwards.
TEST_P(TransportConformanceTest, InterruptEndsTheWaitAndKeepsMessages) {
  auto mesh = MakeMesh(2);
  ASSERT_EQ(mesh.size(), 2u);
  std::vector<Bytes> got;
  std::thread interrupter([&] {
    absl::SleepFor(absl::Milliseconds(100));
    mesh[0]->Interrupt();
  });
  const absl::Time start = absl::Now();
  const absl::Status waited = mesh[0]->Exchange(1, {}, {1}, &got, absl::Seconds(30));
  interrupter.join();
  EXPECT_EQ(waited.code(), absl::StatusCode::kAborted) << waited;
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_TRUE(mesh[0]->interrupted());
  // Rank 1 sends tag 2 while rank 0 is interrupted.
  const Bytes late = Pattern(1, 0, 2, 700);
  EXPECT_OK(mesh[1]->Exchange(2, {Item(0, late)}, {}, nullptr, kTimeout));
  EXPECT_EQ(mesh[0]->Exchange(2, {}, {1}, &got, kTimeout).code(), absl::StatusCode::kAborted);
  mesh[0]->ClearInterrupt();
  EXPECT_FALSE(mesh[0]->interrupted());
  EXPECT_OK(mesh[0]->Exchange(2, {}, {1}, &got, kTimeout));
  EXPECT_TRUE(got.size() == 1 && got[0] == late);
  // Both ways again.
  RunRanks(2, [&](int32_t rank) {
    const int32_t other = 1 - rank;
    std::vector<Bytes> in;
    EXPECT_OK(mesh[rank]->Exchange(3, {Item(other, Pattern(rank, other, 3, 64))}, {other}, &in,
                                   kTimeout));
    EXPECT_TRUE(in.size() == 1 && in[0] == Pattern(other, rank, 3, 64));
  });
}

// An exchange interrupted while its send to a live peer is still unmatched
// (a large message, which UCX sends by rendezvous, to a peer that never
// posts that tag: a mesh re-forming) leaves the peer usable: the caller's
// buffer is gone once the call returns, and the next exchange both ways
// works without a Connect().
TEST_P(TransportConformanceTest, InterruptedSendLeavesALivePeerUsable) {
  auto mesh = MakeMesh(2);
  ASSERT_EQ(mesh.size(), 2u);
  std::thread interrupter([&] {
    absl::SleepFor(absl::Milliseconds(100));
    mesh[0]->Interrupt();
  });
  absl::Status sent;
  {
    const Bytes big = Pattern(0, 1, 10, 8 << 20);
    sent = mesh[0]->Exchange(10, {Item(1, big)}, {}, nullptr, absl::Seconds(30));
  }
  interrupter.join();
  if (mesh[0]->backend() == "ucx") {
    EXPECT_EQ(sent.code(), absl::StatusCode::kAborted) << sent;
  } else {
    EXPECT_TRUE(sent.ok() || sent.code() == absl::StatusCode::kAborted) << sent;
  }
  mesh[0]->ClearInterrupt();
  for (uint64_t tag = 11; tag < 14; ++tag) {
    RunRanks(2, [&](int32_t rank) {
      const int32_t other = 1 - rank;
      std::vector<Bytes> in;
      EXPECT_OK(mesh[rank]->Exchange(tag, {Item(other, Pattern(rank, other, tag, 4096))}, {other},
                                     &in, kTimeout));
      EXPECT_TRUE(in.size() == 1 && in[0] == Pattern(other, rank, tag, 4096));
    });
  }
}

// A rank that left is replaced by a new transport with the same rank; after
// everyone connects to its new address the mesh works again.
TEST_P(TransportConformanceTest, ReplacedRankRejoins) {
  auto mesh = MakeMesh(3);
  ASSERT_EQ(mesh.size(), 3u);
  auto all_to_all = [&](uint64_t tag) { ExpectAllToAll(mesh, tag); };
  all_to_all(1);
  mesh[2].reset();
  mesh[2] = MakeRank(2);
  ASSERT_NE(mesh[2], nullptr);
  const std::vector<PeerAddress> addresses = Addresses(mesh);
  for (auto& transport : mesh) EXPECT_OK(transport->Connect(addresses));
  all_to_all(2);
}

// Replacements of one rank in a configured port range, as a restarted
// process (or Kubernetes pod) gets: each binds a port of the range its
// predecessors left (or one they used without a connection) and the mesh
// works with it, whether or not the others saw the old one fail first.
// (inproc has no ports: there it is ReplacedRankRejoins three times over.)
TEST_P(TransportConformanceTest, ReplacedRankRejoinsWithinItsPortRange) {
  // Four ports each: a replacement cannot rebind a port its predecessor's
  // connections hold in TIME_WAIT, so each of the three rounds below takes
  // a fresh one (a fourth replacement within the minute would wait for one).
  std::vector<std::string> ranges;
  for (int32_t rank = 0; rank < 3; ++rank) {
    const int port = FreePorts(4);
    ASSERT_GT(port, 0);
    ranges.push_back(std::to_string(port) + "-" + std::to_string(port + 3));
  }
  std::vector<std::unique_ptr<Transport>> mesh;
  for (int32_t rank = 0; rank < 3; ++rank) {
    mesh.push_back(MakeRank(rank, ranges[rank]));
    ASSERT_NE(mesh.back(), nullptr);
  }
  for (auto& transport : mesh) EXPECT_OK(transport->Connect(Addresses(mesh)));
  auto all_to_all = [&](uint64_t tag) { ExpectAllToAll(mesh, tag); };
  all_to_all(1);
  for (int round = 0; round < 3; ++round) {
    mesh[2].reset();
    if (round % 2 == 0) {
      // The survivors see it gone first, as after a crash mid-step...
      RunRanks(2, [&](int32_t rank) {
        std::vector<Bytes> got;
        const Bytes out = Pattern(rank, 2, 10 + round, 64);
        EXPECT_FALSE(
            mesh[rank]->Exchange(10 + round, {Item(2, out)}, {2}, &got, kFailTimeout).ok());
      });
    }  // ... or only learn of the new one (an idle transport, e.g. staging).
    mesh[2] = MakeRank(2, ranges[2]);
    ASSERT_NE(mesh[2], nullptr);
    for (auto& transport : mesh) EXPECT_OK(transport->Connect(Addresses(mesh)));
    all_to_all(20 + round);
  }
}

// A transport that never progressed its endpoint to a peer (an idle one:
// weight staging between re-placements) learns of the peer's replacement on
// the same port: its stale endpoint must not reach the new process.
TEST_P(TransportConformanceTest, StaleEndpointToAReplacedIdlePeer) {
  const int port = FreePorts(1);
  ASSERT_GT(port, 0);
  const std::string range = std::to_string(port) + "-" + std::to_string(port);
  std::unique_ptr<Transport> survivor = MakeRank(0);
  std::unique_ptr<Transport> old_peer = MakeRank(1, range);
  ASSERT_TRUE(survivor != nullptr && old_peer != nullptr);
  EXPECT_OK(survivor->Connect({{1, old_peer->local_address()}}));
  old_peer.reset();
  std::vector<std::unique_ptr<Transport>> mesh;
  mesh.push_back(std::move(survivor));
  mesh.push_back(MakeRank(1, range));
  ASSERT_NE(mesh[1], nullptr);
  // The new peer reaches out first; the survivor learns of it a moment later.
  const std::vector<PeerAddress> addresses = Addresses(mesh);
  EXPECT_OK(mesh[1]->Connect(addresses));
  for (uint64_t tag = 1; tag <= 3; ++tag) {
    ExpectAllToAll(mesh, tag, /*base_size=*/5000, [&](int32_t rank) {
      if (rank == 0 && tag == 1) {
        absl::SleepFor(absl::Milliseconds(200));
        EXPECT_OK(mesh[0]->Connect(addresses));
      }
    });
  }
}

// Disconnect() of a rank that left, then Connect() to its successor on
// the same port range: the mesh works again (and unknown ranks are fine).
TEST_P(TransportConformanceTest, DisconnectThenReconnect) {
  const int port = FreePorts(4);
  ASSERT_GT(port, 0);
  const std::string range = std::to_string(port) + "-" + std::to_string(port + 3);
  std::vector<std::unique_ptr<Transport>> mesh;
  mesh.push_back(MakeRank(0));
  mesh.push_back(MakeRank(1, range));
  ASSERT_TRUE(mesh[0] != nullptr && mesh[1] != nullptr);
  for (auto& transport : mesh) EXPECT_OK(transport->Connect(Addresses(mesh)));
  ExpectAllToAll(mesh, 1);
  EXPECT_OK(mesh[0]->Disconnect(7));  // never connected
  mesh[1].reset();
  mesh[0]->Poll();  // an idle transport notices the loss
  EXPECT_OK(mesh[0]->Disconnect(1));
  EXPECT_OK(mesh[0]->Disconnect(1));  // again: nothing left to close
  mesh[1] = MakeRank(1, range);
  ASSERT_NE(mesh[1], nullptr);
  for (auto& transport : mesh) EXPECT_OK(transport->Connect(Addresses(mesh)));
  ExpectAllToAll(mesh, 2);
}

TEST_P(TransportConformanceTest, InvalidArguments) {
  auto mesh = MakeMesh(2);
  ASSERT_EQ(mesh.size(), 2u);
  Transport& t = *mesh[0];
  const Bytes bytes = {1, 2, 3};
  std::vector<Bytes> got;
  auto code = [](const absl::Status& status) { return status.code(); };
  constexpr absl::StatusCode kInvalid = absl::StatusCode::kInvalidArgument;
  const absl::Duration timeout = absl::Milliseconds(100);
  EXPECT_EQ(code(t.Exchange(kMaxUserTag + 1, {}, {}, &got, timeout)), kInvalid);
  EXPECT_EQ(code(t.Exchange(kMaxUserTag + 1, {Item(1, bytes)}, {1}, &got, timeout)), kInvalid);
  EXPECT_EQ(code(t.Exchange(1, {Item(5, bytes)}, {}, &got, timeout)), kInvalid);  // unknown peer
  EXPECT_EQ(code(t.Exchange(1, {}, {5}, &got, timeout)), kInvalid);
  EXPECT_EQ(code(t.Exchange(1, {Item(-1, bytes)}, {}, &got, timeout)), kInvalid);
  EXPECT_EQ(code(t.Exchange(1, {}, {kMaxRanks}, &got, timeout)), kInvalid);
  EXPECT_EQ(code(t.Exchange(1, {}, {1}, nullptr, timeout)), kInvalid);
  EXPECT_EQ(code(t.Exchange(1, {SendItem{1, nullptr, 10}}, {}, &got, timeout)), kInvalid);
  EXPECT_EQ(code(t.Connect({PeerAddress{kMaxRanks, "x"}})), kInvalid);
  EXPECT_EQ(code(t.Connect({PeerAddress{-3, "x"}})), kInvalid);
  EXPECT_EQ(code(AllToAllV(t, 1, {0, 1}, {bytes}, &got, timeout)), kInvalid);
  EXPECT_EQ(code(AllToAllV(t, 1, {1, 1}, {bytes, bytes}, &got, timeout)), kInvalid);
  if (GetParam() == "inproc") {
    EXPECT_EQ(code(t.Connect({PeerAddress{1, "not a rank"}})), kInvalid);
  }
  // Nothing above disturbed the transports.
  RunRanks(2, [&](int32_t rank) {
    const Bytes out = Pattern(rank, 1 - rank, 8, 10);
    std::vector<Bytes> in;
    EXPECT_OK(mesh[rank]->Exchange(8, {Item(1 - rank, out)}, {1 - rank}, &in, kTimeout));
    EXPECT_TRUE(in.size() == 1 && in[0] == Pattern(1 - rank, rank, 8, 10));
  });
}

TEST_P(TransportConformanceTest, ClosedTransportRefusesWork) {
  auto mesh = MakeMesh(2);
  ASSERT_EQ(mesh.size(), 2u);
  EXPECT_OK(mesh[1]->Close());
  EXPECT_OK(mesh[1]->Close());  // idempotent
  std::vector<Bytes> got;
  EXPECT_EQ(mesh[1]->Exchange(1, {}, {0}, &got, kFailTimeout).code(),
            absl::StatusCode::kFailedPrecondition);
  // The open rank fails within its timeout when it waits on the closed one.
  const absl::Time start = absl::Now();
  EXPECT_FALSE(mesh[0]->Exchange(1, {}, {1}, &got, kFailTimeout).ok());
  EXPECT_LT(absl::Now() - start, kFailTimeout + kLateness);
}

INSTANTIATE_TEST_SUITE_P(Backends, TransportConformanceTest, ::testing::Values("inproc", "ucx"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST(TransportRegistryTest, BuildsKnownBackendsOnly) {
  const std::vector<std::string> backends = AvailableTransportBackends();
  EXPECT_THAT(backends, ::testing::Contains("inproc"));
  EXPECT_THAT(backends, ::testing::Contains("ucx"));
  TransportOptions options;
  options.rank = 0;
  options.backend = "carrier-pigeon";
  EXPECT_EQ(CreateTransport(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.backend = "inproc";  // no fabric
  EXPECT_EQ(CreateTransport(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.fabric = std::make_shared<inproc::Fabric>();
  options.rank = kMaxRanks;
  EXPECT_EQ(CreateTransport(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.rank = 0;
  EXPECT_TRUE(CreateTransport(options).ok());
}

}  // namespace
}  // namespace sy::transport

int main(int argc, char** argv) {
  // Loopback only (../shared/TOOLCHAIN.md), set before any UCX initialisation.
  setenv("UCX_NET_DEVICES", "lo", /*overwrite=*/1);
#if defined(__SANITIZE_THREAD__)
  // libucs's load-time constructor hooks mmap/madvise for UCX memory events;
  // glibc calls madvise while a thread exits, after TSan has dropped the
  // thread's state, and the hook's rwlock then crashes TSan. The hooks can
  // only be kept out before libucs loads, so re-run this binary without them.
  if (std::getenv("UCX_MEM_EVENTS") == nullptr) {
    setenv("UCX_MEM_EVENTS", "no", /*overwrite=*/1);
    execv("/proc/self/exe", argv);
    std::perror("execv /proc/self/exe");
    return 1;
  }
#endif
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

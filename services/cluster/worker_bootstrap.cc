#include "services/cluster/worker_bootstrap.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <iterator>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/listening_ports.h"
#include "common/log.h"
#include "common/status.h"
#include "grpcpp/grpcpp.h"
#include "services/cluster/grpc_server.h"
#include "services/coordinator/coordinator_service.h"

namespace sy::cluster {

namespace pb = ::switchyard::internal::v1;
using Clock = std::chrono::steady_clock;

namespace {

// Long-polls GetMesh with `req` (the coordinator holds the call until the
// mesh is complete, ready or newer, as asked, up to a second) until `done`
// holds for the answer, `deadline` passes or `stop` is set; `mesh` is the
// last answer. `progress` runs after each answer that is not there yet.
bool PollMesh(pb::Coordinator::Stub& stub, const pb::GetMeshRequest& req,
              const std::function<bool(const pb::Mesh&)>& done, Clock::time_point deadline,
              pb::Mesh* mesh, const std::function<void(const pb::Mesh&)>& progress = {},
              const std::atomic<bool>* stop = nullptr) {
  while (stop == nullptr || !stop->load()) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    const auto asked = Clock::now();
    grpc::Status st = stub.GetMesh(&ctx, req, mesh);
    if (st.ok() && done(*mesh)) return true;
    if (!st.ok()) SY_LOG(DEBUG) << "GetMesh: " << st.error_message();
    if (Clock::now() > deadline) return false;
    if (progress) progress(*mesh);
    // An error, or an answer from a coordinator shutting down, comes back at
    // once: pause before asking again.
    if (Clock::now() - asked < std::chrono::milliseconds(100)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
  return false;
}

// The ranks of the members in mesh `m` (neither dropped nor joining):
// attention ranks in order, expert ranks by index (-1 when out).
moe::MeshRanks RanksIn(const ClusterConfig& cfg, const pb::Mesh& m) {
  moe::MeshRanks ranks;
  ranks.experts.assign(cfg.topology.expert_workers, -1);
  for (const pb::Member& member : m.members()) {
    if (member.dropped() || member.joining()) continue;
    if (member.role() == pb::ROLE_ATTENTION) {
      ranks.attention.push_back(member.rank());
    } else {
      const int32_t j = member.rank() - cfg.topology.attention_workers;
      if (j >= 0 && j < cfg.topology.expert_workers) ranks.experts[j] = member.rank();
    }
  }
  std::sort(ranks.attention.begin(), ranks.attention.end());
  return ranks;
}

// The reform a worker of mesh generation `generation` must adopt from `m`
// (nullopt: not re-formed since; an error: its placement is invalid).
absl::StatusOr<std::optional<moe::MeshReform>> ReformFrom(const ClusterConfig& cfg,
                                                          const pb::Mesh& m, int64_t generation) {
  if (m.formed_epoch() <= generation) return std::optional<moe::MeshReform>();
  moe::MeshReform r;
  r.generation = m.formed_epoch();
  SY_ASSIGN_OR_RETURN(r.placement, coordinator::PlacementFromProto(m.placement()));
  r.ranks = RanksIn(cfg, m);
  return std::optional<moe::MeshReform>(std::move(r));
}

// Why `m` no longer has this process (rank, at `address`) as a member: it
// was dropped, or another process registered the rank since; "" when it has.
std::string GoneFrom(const pb::Mesh& m, int32_t rank, const std::string& address) {
  for (const pb::Member& member : m.members()) {
    if (member.rank() != rank) continue;
    if (member.dropped()) return "the coordinator re-formed the mesh without this worker";
    if (member.transport_address() != address) {
      return absl::StrCat("rank ", rank, " registered again from ", member.grpc_address(),
                          ": this worker was replaced");
    }
  }
  return "";
}

// The transport addresses of the members in the mesh (not dropped, not
// joining).
std::vector<transport::PeerAddress> MeshPeers(const pb::Mesh& m) {
  std::vector<transport::PeerAddress> peers;
  for (const pb::Member& member : m.members()) {
    if (!member.dropped() && !member.joining()) {
      peers.push_back({member.rank(), member.transport_address()});
    }
  }
  return peers;
}

}  // namespace

int32_t RankOf(const ClusterConfig& cfg, bool attention, int32_t index) {
  return attention ? index : cfg.topology.attention_workers + index;
}

absl::StatusOr<std::unique_ptr<transport::Transport>> CreateDataPlaneTransport(
    const transport::TransportOptions& options, const std::string& what) {
  const absl::StatusOr<std::vector<int32_t>> before = ListeningTcpPorts();
  absl::StatusOr<std::unique_ptr<transport::Transport>> made = transport::CreateTransport(options);
  if (!made.ok() && !options.port_range.empty()) {
    return Annotate(
        made.status(),
        absl::StrCat(what, " transport with its listeners in ports ", options.port_range,
                     " (if no port of the range could be bound: another process has "
                     "it, or a predecessor's connections hold it in TIME_WAIT for up "
                     "to a minute; widen transport.ports_per_worker)"));
  }
  SY_ASSIGN_OR_RETURN(std::unique_ptr<transport::Transport> created, std::move(made));
  const absl::StatusOr<std::vector<int32_t>> after = ListeningTcpPorts();
  if (!before.ok() || !after.ok()) return created;  // nothing to log; the transport is fine
  std::vector<int32_t> opened;
  std::set_difference(after->begin(), after->end(), before->begin(), before->end(),
                      std::back_inserter(opened));
  const std::string where =
      absl::StrCat("rank ", options.rank, ": ", options.backend, " ", what, " transport");
  if (options.port_range.empty()) {
    SY_LOG(INFO) << where << " listening on TCP ports [" << absl::StrJoin(opened, ", ") << "]";
    return created;
  }
  int32_t first = 0, last = 0;
  const std::vector<std::string> bounds = absl::StrSplit(options.port_range, '-');
  if (bounds.size() != 2 || !absl::SimpleAtoi(bounds[0], &first) ||
      !absl::SimpleAtoi(bounds[1], &last)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": port range '", options.port_range, "' is not FIRST-LAST"));
  }
  const bool outside =
      std::any_of(opened.begin(), opened.end(), [&](int32_t p) { return p < first || p > last; });
  if (opened.empty() || outside) {
    SY_LOG(WARNING) << where << " listens on TCP ports [" << absl::StrJoin(opened, ", ")
                    << "], configured to " << options.port_range
                    << (opened.empty() ? ": every port of the range is taken? peers on other "
                                         "hosts cannot reach this worker"
                                       : "");
  } else {
    SY_LOG(INFO) << where << " listening on TCP ports [" << absl::StrJoin(opened, ", ")
                 << "] (range " << options.port_range << ")";
  }
  return created;
}

absl::StatusOr<JoinedMesh> JoinMesh(const ClusterConfig& cfg, bool attention, int32_t index,
                                    const std::string& listen_address,
                                    transport::Transport& transport,
                                    std::chrono::milliseconds timeout,
                                    const std::string& staging_address) {
  const std::string grpc_address = AdvertisedAddressFor(cfg, attention, index, listen_address);
  const auto deadline = Clock::now() + timeout;
  // Workers often start before the coordinator listens: the channel retries
  // connecting every 100-500 ms instead of gRPC's default exponential backoff.
  auto channel = CoordinatorChannel(CoordinatorDialAddress(cfg));
  auto stub = pb::Coordinator::NewStub(channel);
  pb::RegisterRequest req;
  req.set_role(attention ? pb::ROLE_ATTENTION : pb::ROLE_EXPERT);
  req.set_index(index);
  req.set_grpc_address(grpc_address);
  req.set_transport_address(transport.local_address());
  req.set_staging_address(staging_address);
  req.set_worker_name(absl::StrCat(attention ? "attention-" : "expert-", index));
  req.mutable_capabilities()->set_transport(std::string(transport.backend()));
  pb::RegisterResponse resp;
  for (int attempt = 0;; ++attempt) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::Status st = stub->Register(&ctx, req, &resp);
    if (st.ok()) break;
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE &&
        st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
      return absl::Status(static_cast<absl::StatusCode>(st.error_code()),
                          absl::StrCat("registering with the coordinator at ",
                                       CoordinatorDialAddress(cfg), ": ", st.error_message()));
    }
    if (Clock::now() > deadline) {
      return absl::UnavailableError(absl::StrCat("coordinator at ", CoordinatorDialAddress(cfg),
                                                 " unreachable: ", st.error_message()));
    }
    if (attempt % 10 == 0) {
      SY_LOG(INFO) << "waiting for the coordinator at " << CoordinatorDialAddress(cfg) << " ("
                   << st.error_message() << ")";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  JoinedMesh out;
  out.rank = resp.rank();
  out.registration = resp.registration();
  if (out.rank != transport.rank()) {
    return absl::InternalError(absl::StrCat("coordinator assigned rank ", out.rank,
                                            " but the transport was built for rank ",
                                            transport.rank()));
  }
  out.heartbeat = std::make_unique<Heartbeat>(cfg, out.rank, out.registration);
  out.heartbeat->SetRegisterRequest(req);
  SY_LOG(INFO) << "registered as rank " << out.rank << "; waiting for the mesh";
  pb::Mesh mesh;
  pb::GetMeshRequest complete;
  complete.set_wait_complete(true);
  if (!PollMesh(
          *stub, complete, [](const pb::Mesh& m) { return m.complete(); }, deadline, &mesh)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the mesh did not complete in time (", mesh.members_size(), " of ",
        cfg.topology.attention_workers + cfg.topology.expert_workers, " workers registered)"));
  }
  SY_ASSIGN_OR_RETURN(out.placement, coordinator::PlacementFromProto(mesh.placement()));
  out.generation = mesh.formed_epoch();
  out.attention_grpc_addresses.resize(cfg.topology.attention_workers);
  out.expert_staging_addresses.resize(cfg.topology.expert_workers);
  // A replacement (joining) takes part once the reform that admits it lists it.
  out.ranks = RanksIn(cfg, mesh);
  for (const pb::Member& m : mesh.members()) {
    if (m.rank() == out.rank) out.joining = m.joining();
    if (m.dropped()) continue;  // gone
    if (m.role() == pb::ROLE_ATTENTION) {
      out.attention_grpc_addresses[m.rank()] = m.grpc_address();
    } else {
      const int32_t j = m.rank() - cfg.topology.attention_workers;
      if (j >= 0 && j < cfg.topology.expert_workers) {
        out.expert_staging_addresses[j] = m.staging_address();
      }
    }
  }
  SY_RETURN_IF_ERROR(Annotate(transport.Connect(MeshPeers(mesh)), "connecting the mesh"));
  if (out.joining) {
    SY_LOG(INFO) << "registered as a replacement into the running mesh (epoch " << mesh.epoch()
                 << "); it joins once this worker has loaded";
  } else {
    SY_LOG(INFO) << "mesh joined at epoch " << mesh.epoch() << ": " << out.ranks.attention.size()
                 << " attention and " << out.ranks.experts.size() << " expert workers";
  }
  return out;
}

Heartbeat::Heartbeat(const ClusterConfig& cfg, int32_t rank, uint64_t registration) {
  const std::string address = CoordinatorDialAddress(cfg);
  const auto period = std::chrono::milliseconds(cfg.coordinator.heartbeat_ms);
  thread_ = std::thread([this, address, period, rank, registration_at_start = registration] {
    uint64_t registration = registration_at_start;
    auto stub = pb::Coordinator::NewStub(CoordinatorChannel(address));
    int64_t sent_news = 0;
    auto next_unknown_warning = Clock::now();
    auto news = [this] {
      std::lock_guard<std::mutex> lock(reporter_mu_);
      return news_ ? news_() : int64_t{0};
    };
    while (!stop_.load()) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + period);
      pb::HeartbeatRequest req;
      req.set_rank(rank);
      req.set_registration(registration);
      req.set_ready(ready_.load(std::memory_order_relaxed));
      sent_news = news();
      {
        std::lock_guard<std::mutex> lock(reporter_mu_);
        if (reporter_) reporter_(&req);
        req.set_mesh_failed_epoch(mesh_failed_epoch_);
        req.set_mesh_failure(mesh_failure_);
      }
      pb::HeartbeatResponse resp;
      grpc::Status st = stub->Heartbeat(&ctx, req, &resp);
      std::optional<pb::RegisterRequest> again;
      if (st.error_code() == grpc::StatusCode::NOT_FOUND) {
        std::lock_guard<std::mutex> lock(reporter_mu_);
        if (register_request_.has_value()) {
          again = register_request_;
          if (recovery_) recovery_(again->mutable_recovery());
        }
      }
      if (again.has_value()) {
        // The coordinator restarted: register again, with what this worker
        // serves, and beat with the new token.
        grpc::ClientContext rctx;
        rctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
        pb::RegisterResponse rresp;
        const grpc::Status rst = stub->Register(&rctx, *again, &rresp);
        if (rst.ok()) {
          registration = rresp.registration();
          SY_LOG(WARNING) << "rank " << rank << ": the coordinator at " << address
                          << " did not know this worker (it restarted); registered again"
                          << (again->has_recovery()
                                  ? absl::StrCat(" as serving epoch ",
                                                 again->recovery().serving_epoch(), " (generation ",
                                                 again->recovery().generation(), ")")
                                  : std::string());
          beat_now_.store(true);
        } else if (Clock::now() >= next_unknown_warning) {
          SY_LOG(WARNING) << "rank " << rank << ": registering again with the coordinator at "
                          << address << ": " << rst.error_message();
          next_unknown_warning = Clock::now() + std::chrono::seconds(10);
        }
      } else if (st.error_code() == grpc::StatusCode::NOT_FOUND) {
        // The coordinator does not know this worker (it restarted, or this
        // worker was replaced): say so, at most once a minute, instead of
        // beating into the void silently.
        if (Clock::now() >= next_unknown_warning) {
          SY_LOG(WARNING) << "the coordinator at " << address << " does not know rank " << rank
                          << " (" << st.error_message()
                          << "): it has restarted or replaced this worker; heartbeats go on";
          next_unknown_warning = Clock::now() + std::chrono::minutes(1);
        }
      } else if (!st.ok()) {
        SY_LOG(DEBUG) << "heartbeat failed: " << st.error_message();
      }
      for (auto waited = std::chrono::milliseconds(0);
           waited < period && !stop_.load() && !beat_now_.exchange(false) && news() == sent_news;
           waited += std::chrono::milliseconds(20)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  });
}

void Heartbeat::ReportMeshFailure(int64_t epoch, const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(reporter_mu_);
    if (epoch < mesh_failed_epoch_) return;
    mesh_failed_epoch_ = epoch;
    mesh_failure_ = why;
  }
  beat_now_.store(true);
}

bool FollowReforms(const ClusterConfig& cfg, const pb::Mesh& m, int32_t rank, int64_t generation,
                   transport::Transport& transport, std::atomic<bool>* dropped,
                   const std::function<void(moe::MeshReform)>& request) {
  if (const std::string gone = GoneFrom(m, rank, transport.local_address()); !gone.empty()) {
    if (!dropped->exchange(true)) {
      SY_LOG(ERROR) << "rank " << rank << ": " << gone << "; stopping";
      transport.Interrupt();
    }
    return true;
  }
  absl::StatusOr<std::optional<moe::MeshReform>> reform = ReformFrom(cfg, m, generation);
  if (!reform.ok()) {
    SY_LOG(ERROR) << "rank " << rank << ": re-formed mesh epoch " << m.epoch()
                  << " is invalid: " << reform.status();
  } else if (reform->has_value()) {
    // The step thread connects when it adopts the reform (a replacement that
    // joined has a new address): the transport is not this thread's to use.
    (*reform)->peers = MeshPeers(m);
    request(**std::move(reform));
  }
  return false;
}

absl::Status AwaitAdmission(const std::string& who, const std::function<bool()>& admitted,
                            const std::function<absl::Status(absl::Duration poll)>& adopt,
                            const std::function<bool()>& give_up) {
  SY_LOG(INFO) << who << ": loaded; waiting to be admitted to the mesh";
  const auto deadline = Clock::now() + kReadyTimeout;
  while (!admitted() && !give_up()) {
    if (Clock::now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(who, ": the coordinator did not admit this replacement"));
    }
    SY_RETURN_IF_ERROR(adopt(absl::Milliseconds(200)));
  }
  return absl::OkStatus();
}

std::chrono::milliseconds ReformWait(const ClusterConfig& cfg) {
  return std::chrono::milliseconds(2 * cfg.coordinator.worker_timeout_ms);
}

void Heartbeat::SetRegisterRequest(pb::RegisterRequest req) {
  std::lock_guard<std::mutex> lock(reporter_mu_);
  register_request_ = std::move(req);
}

void Heartbeat::SetRecoveryReporter(RecoveryReporter reporter) {
  std::lock_guard<std::mutex> lock(reporter_mu_);
  recovery_ = std::move(reporter);
}

void Heartbeat::SetReady() {
  ready_.store(true, std::memory_order_relaxed);
  beat_now_.store(true);
}

void Heartbeat::SetReporter(Reporter reporter, NewsProbe news) {
  std::lock_guard<std::mutex> lock(reporter_mu_);
  reporter_ = std::move(reporter);
  news_ = std::move(news);
}

MeshWatcher::MeshWatcher(const ClusterConfig& cfg, std::function<void(const pb::Mesh&)> on_change) {
  const std::string address = CoordinatorDialAddress(cfg);
  thread_ = std::thread([this, address, on_change = std::move(on_change)] {
    auto stub = pb::Coordinator::NewStub(CoordinatorChannel(address));
    int64_t version = 0;
    uint64_t incarnation = 0;
    pb::Mesh mesh;
    while (!stop_.load()) {
      pb::GetMeshRequest req;
      req.set_newer_than_version(std::max<int64_t>(version, 1));
      // A restarted coordinator counts versions from 1 again: any answer
      // from another incarnation is news.
      if (PollMesh(
              *stub, req,
              [&](const pb::Mesh& m) {
                return m.version() > version || m.incarnation() != incarnation;
              },
              Clock::time_point::max(), &mesh, {}, &stop_)) {
        if (incarnation != 0 && mesh.incarnation() != incarnation) {
          SY_LOG(WARNING) << "the coordinator restarted (a new incarnation); following its mesh";
        }
        incarnation = mesh.incarnation();
        version = mesh.version();
        on_change(mesh);
      }
    }
  });
}

MeshWatcher::~MeshWatcher() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

absl::Status WaitForReadyMesh(const ClusterConfig& cfg, std::chrono::milliseconds timeout) {
  auto stub = pb::Coordinator::NewStub(CoordinatorChannel(CoordinatorDialAddress(cfg)));
  auto not_ready = [](const pb::Mesh& mesh) {
    std::vector<int32_t> ranks;
    for (const pb::Member& m : mesh.members()) {
      if (!m.ready() || !m.alive()) ranks.push_back(m.rank());
    }
    return absl::StrJoin(ranks, ", ");
  };
  auto next_log = Clock::now() + std::chrono::seconds(5);
  pb::Mesh mesh;
  pb::GetMeshRequest ready;
  ready.set_wait_ready(true);
  if (PollMesh(
          *stub, ready, [](const pb::Mesh& m) { return m.ready(); }, Clock::now() + timeout, &mesh,
          [&](const pb::Mesh& m) {
            if (Clock::now() < next_log) return;
            SY_LOG(INFO) << "waiting for the mesh to be ready; still loading: ranks "
                         << not_ready(m);
            next_log = Clock::now() + std::chrono::seconds(5);
          })) {
    return absl::OkStatus();
  }
  return absl::DeadlineExceededError(
      absl::StrCat("the mesh was not ready in time; not ready: ranks ", not_ready(mesh)));
}

Heartbeat::~Heartbeat() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

}  // namespace sy::cluster

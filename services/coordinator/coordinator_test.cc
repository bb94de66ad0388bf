// The coordinator over real gRPC on 127.0.0.1: registration, ranks, mesh
// completion, placement round trip, heartbeats and expiry.
#include <atomic>
#include <map>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "services/cluster/grpc_server.h"
#include "services/cluster/worker_bootstrap.h"
#include "services/coordinator/coordinator_service.h"
#include "services/coordinator/mesh_prober.h"

namespace sy::coordinator {
namespace {

using ::testing::HasSubstr;

eplb::Placement TestPlacement() {
  eplb::PlacementOptions o;
  o.num_workers = 2;
  o.redundant = 2;
  auto p = eplb::InitialPlacement({1, 2, 3}, 8, o);
  EXPECT_TRUE(p.ok());
  return *p;
}

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CoordinatorOptions o;
    o.attention_workers = 2;
    o.expert_workers = 2;
    o.worker_timeout = std::chrono::milliseconds(300);
    core_ = std::make_unique<CoordinatorCore>(o, TestPlacement());
    service_ = std::make_unique<CoordinatorService>(core_.get());
    auto server = cluster::StartGrpcServer("127.0.0.1:0", {service_.get()});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_.port),
                                   grpc::InsecureChannelCredentials());
    stub_ = pb::Coordinator::NewStub(channel_);
  }
  void TearDown() override {
    service_->Drain();
    server_.server->Shutdown();
  }

  grpc::Status Register(pb::Role role, int32_t index, const std::string& addr,
                        pb::RegisterResponse* resp) {
    grpc::ClientContext ctx;
    pb::RegisterRequest req;
    req.set_role(role);
    req.set_index(index);
    req.set_grpc_address(addr);
    req.set_transport_address("blob-" + addr);
    req.set_worker_name(addr);
    return stub_->Register(&ctx, req, resp);
  }

  pb::Mesh GetMesh(bool wait) {
    grpc::ClientContext ctx;
    pb::GetMeshRequest req;
    req.set_wait_complete(wait);
    pb::Mesh mesh;
    EXPECT_TRUE(stub_->GetMesh(&ctx, req, &mesh).ok());
    return mesh;
  }

  std::unique_ptr<CoordinatorCore> core_;
  std::unique_ptr<CoordinatorService> service_;
  cluster::GrpcServer server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::Coordinator::Stub> stub_;
};

TEST_F(CoordinatorTest, RanksMeshAndPlacement) {
  pb::RegisterResponse r;
  ASSERT_TRUE(Register(pb::ROLE_EXPERT, 0, "e0:1", &r).ok());
  EXPECT_EQ(r.rank(), 2);  // expert ranks follow the attention ranks
  ASSERT_TRUE(Register(pb::ROLE_ATTENTION, 1, "a1:1", &r).ok());
  EXPECT_EQ(r.rank(), 1);
  EXPECT_FALSE(GetMesh(false).complete());
  ASSERT_TRUE(Register(pb::ROLE_ATTENTION, 0, "a0:1", &r).ok());
  EXPECT_EQ(r.rank(), 0);
  // Index outside the topology; index held by another live address.
  grpc::Status st = Register(pb::ROLE_ATTENTION, 2, "a2:1", &r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("index 2"));
  st = Register(pb::ROLE_ATTENTION, 1, "other:1", &r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  // Re-registering an address keeps its rank.
  ASSERT_TRUE(Register(pb::ROLE_ATTENTION, 1, "a1:1", &r).ok());
  EXPECT_EQ(r.rank(), 1);
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    pb::RegisterResponse r2;
    EXPECT_TRUE(Register(pb::ROLE_EXPERT, 1, "e1:1", &r2).ok());
  });
  pb::Mesh mesh;
  for (int i = 0; i < 50 && !mesh.complete(); ++i) mesh = GetMesh(true);
  late.join();
  ASSERT_TRUE(mesh.complete());
  ASSERT_EQ(mesh.members_size(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(mesh.members(i).rank(), i);
  EXPECT_EQ(mesh.members(3).transport_address(), "blob-e1:1");
  auto placement = PlacementFromProto(mesh.placement());
  ASSERT_TRUE(placement.ok()) << placement.status();
  EXPECT_EQ(placement->phy2log, TestPlacement().phy2log);
  EXPECT_EQ(placement->num_workers, 2);
  EXPECT_EQ(placement->worker_begin, TestPlacement().worker_begin);
  EXPECT_EQ(placement->layers, std::vector<int32_t>({1, 2, 3}));
}

// Workers long-poll GetMesh(wait_complete) while the others start up. The
// parked calls must not occupy gRPC's callback threads: registrations over
// fresh connections still go through while many of them wait, and every
// waiter learns of the complete mesh.
TEST_F(CoordinatorTest, WaitingForTheMeshDoesNotStallTheServer) {
  constexpr int kWaiters = 24;
  const std::string address = "127.0.0.1:" + std::to_string(server_.port);
  // A channel of its own (its own TCP connection): a distinct channel
  // argument stops gRPC from sharing one subchannel between them.
  auto own_stub = [&](int i) {
    grpc::ChannelArguments args;
    args.SetInt("switchyard.test.connection", i);
    return pb::Coordinator::NewStub(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  };
  std::atomic<int> complete{0};
  std::atomic<int> polls{0};
  std::vector<std::thread> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&, i] {
      auto stub = own_stub(i);
      for (int attempt = 0; attempt < 100; ++attempt) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
        pb::GetMeshRequest req;
        req.set_wait_complete(true);
        pb::Mesh mesh;
        const grpc::Status st = stub->GetMesh(&ctx, req, &mesh);
        ASSERT_TRUE(st.ok()) << st.error_message();
        polls.fetch_add(1);
        if (mesh.complete()) {
          EXPECT_EQ(mesh.members_size(), 4);
          complete.fetch_add(1);
          return;
        }
      }
    });
  }
  // Let the waiters connect and park, then register over new connections
  // with a short deadline.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  int n = 0;
  for (auto [role, index] : {std::pair{pb::ROLE_ATTENTION, 0},
                             {pb::ROLE_ATTENTION, 1},
                             {pb::ROLE_EXPERT, 0},
                             {pb::ROLE_EXPERT, 1}}) {
    auto stub = own_stub(1000 + n++);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    pb::RegisterRequest req;
    req.set_role(role);
    req.set_index(index);
    req.set_grpc_address("w" + std::to_string(n) + ":1");
    req.set_transport_address("blob");
    pb::RegisterResponse resp;
    const grpc::Status st = stub->Register(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << "registration " << n << " while " << kWaiters
                         << " GetMesh calls wait: " << st.error_message();
  }
  for (auto& t : waiters) t.join();
  EXPECT_EQ(complete.load(), kWaiters);
}

// A parked GetMesh is answered (with the incomplete mesh) when its wait runs
// out, and when the service drains for shutdown: a service that would hold
// calls for ten minutes answers the parked one at Drain(), and parks no more.
TEST_F(CoordinatorTest, ParkedGetMeshIsAnsweredIncompleteOnTimeoutAndDrain) {
  EXPECT_FALSE(GetMesh(true).complete());  // nobody registers: answered after the wait

  CoordinatorOptions o;
  o.attention_workers = 1;
  o.expert_workers = 2;
  CoordinatorCore core(o, TestPlacement());
  CoordinatorService service(&core, std::chrono::minutes(10));
  auto server = cluster::StartGrpcServer("127.0.0.1:0", {&service});
  ASSERT_TRUE(server.ok()) << server.status();
  auto stub = pb::Coordinator::NewStub(grpc::CreateChannel(
      "127.0.0.1:" + std::to_string(server->port), grpc::InsecureChannelCredentials()));
  const auto call = [&](pb::Mesh* mesh) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    pb::GetMeshRequest req;
    req.set_wait_complete(true);
    return stub->GetMesh(&ctx, req, mesh);
  };
  pb::Mesh mesh;
  grpc::Status st;
  std::thread waiter([&] { st = call(&mesh); });
  for (int i = 0; i < 1000 && service.parked() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(service.parked(), 1u);
  service.Drain();
  waiter.join();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(mesh.complete());
  EXPECT_EQ(service.parked(), 0u);

  // After draining, a waiting call is answered without being parked.
  std::atomic<bool> done{false};
  std::thread late([&] {
    pb::Mesh m;
    EXPECT_TRUE(call(&m).ok());
    done.store(true);
  });
  while (!done.load()) {
    EXPECT_EQ(service.parked(), 0u);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  late.join();
  server->server->Shutdown();
}

TEST_F(CoordinatorTest, BadRegistrationsAreRefused) {
  pb::RegisterResponse r;
  EXPECT_EQ(Register(pb::ROLE_UNSPECIFIED, 0, "x:1", &r).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext ctx;
  pb::RegisterRequest req;
  req.set_role(pb::ROLE_EXPERT);
  grpc::Status st = stub_->Register(&ctx, req, &r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("grpc_address"));
}

TEST_F(CoordinatorTest, HeartbeatsAndExpiry) {
  pb::RegisterResponse r;
  ASSERT_TRUE(Register(pb::ROLE_EXPERT, 0, "e0:1", &r).ok());
  grpc::ClientContext ctx;
  pb::HeartbeatRequest hb;
  hb.set_rank(r.rank());
  pb::HeartbeatResponse resp;
  // Without the registration's token: refused.
  EXPECT_EQ(stub_->Heartbeat(&ctx, hb, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  ASSERT_NE(r.registration(), 0u);
  hb.set_registration(r.registration());
  grpc::ClientContext ctx1;
  ASSERT_TRUE(stub_->Heartbeat(&ctx1, hb, &resp).ok());
  const int64_t version = resp.version();
  EXPECT_TRUE(core_->ExpireSilent(std::chrono::steady_clock::now()).empty());
  auto later = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  EXPECT_THAT(core_->ExpireSilent(later), ::testing::ElementsAre(r.rank()));
  EXPECT_GT(core_->version(), version);
  EXPECT_FALSE(GetMesh(false).members(0).alive());
  grpc::ClientContext ctx2;
  hb.set_rank(77);
  EXPECT_EQ(stub_->Heartbeat(&ctx2, hb, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

// A worker whose heartbeats the coordinator does not know (it restarted
// empty) says so in its log, once a minute, instead of beating silently.
TEST_F(CoordinatorTest, HeartbeatsTheCoordinatorDoesNotKnowAreLogged) {
  cluster::ClusterConfig cfg;
  cfg.coordinator.listen.port = server_.port;
  cfg.coordinator.heartbeat_ms = 20;
  ::testing::internal::CaptureStderr();
  {
    cluster::Heartbeat hb(cfg, 3, 12345);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  const std::string err = ::testing::internal::GetCapturedStderr();
  const std::string what = "does not know rank 3";
  ASSERT_THAT(err, HasSubstr(what));
  EXPECT_EQ(err.find(what), err.rfind(what)) << "logged more than once:\n" << err;
  EXPECT_THAT(err, HasSubstr("it has restarted or replaced this worker"));
}

// Ready means ready: a complete mesh is not ready until every worker has
// reported (in a heartbeat) that it loaded what it serves; a parked
// GetMesh(wait_ready) is answered when the last one does; readiness is
// sticky across heartbeats and cleared by registering again.
TEST_F(CoordinatorTest, ReadyOnlyOnceEveryWorkerHasLoaded) {
  const std::vector<std::pair<pb::Role, int32_t>> workers = {
      {pb::ROLE_ATTENTION, 0}, {pb::ROLE_ATTENTION, 1}, {pb::ROLE_EXPERT, 0}, {pb::ROLE_EXPERT, 1}};
  std::vector<int32_t> ranks;
  std::map<int32_t, uint64_t> tokens;
  for (const auto& [role, index] : workers) {
    pb::RegisterResponse r;
    ASSERT_TRUE(Register(role, index, "w" + std::to_string(ranks.size()) + ":1", &r).ok());
    ranks.push_back(r.rank());
    tokens[r.rank()] = r.registration();
  }
  auto heartbeat = [&](int32_t rank, bool ready) {
    grpc::ClientContext ctx;
    pb::HeartbeatRequest hb;
    hb.set_rank(rank);
    hb.set_registration(tokens[rank]);
    hb.set_ready(ready);
    pb::HeartbeatResponse resp;
    return stub_->Heartbeat(&ctx, hb, &resp);
  };
  pb::Mesh mesh = GetMesh(false);
  EXPECT_TRUE(mesh.complete());
  EXPECT_FALSE(mesh.ready());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(heartbeat(ranks[i], true).ok());
  ASSERT_TRUE(heartbeat(ranks[0], false).ok());  // sticky
  mesh = GetMesh(false);
  EXPECT_FALSE(mesh.ready());
  EXPECT_TRUE(mesh.members(0).ready());
  EXPECT_FALSE(mesh.members(3).ready());
  // The last expert worker finishes loading while a call waits for readiness.
  std::thread loader([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_TRUE(heartbeat(ranks[3], true).ok());
  });
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  pb::GetMeshRequest req;
  req.set_wait_ready(true);
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(stub_->GetMesh(&ctx, req, &mesh).ok());
  loader.join();
  EXPECT_TRUE(mesh.ready());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  // A worker that registers again (a restart) is loading again.
  pb::RegisterResponse r;
  ASSERT_TRUE(Register(pb::ROLE_EXPERT, 1, "w3:1", &r).ok());
  EXPECT_FALSE(GetMesh(false).ready());
  EXPECT_FALSE(GetMesh(false).members(3).ready());
}

// A ready mesh of 1 attention and 2 expert workers where each expert worker
// holds every expert (4 experts, 4 redundant slots): losing either leaves a
// replica of each. `addresses`: the gRPC addresses of ranks 0, 1 and 2.
std::unique_ptr<CoordinatorCore> ReadyReplicatedMesh(eplb::Placement* initial,
                                                     const std::vector<std::string>& addresses = {
                                                         "a0:1", "e0:1", "e1:1"}) {
  eplb::PlacementOptions po;
  po.num_workers = 2;
  po.redundant = 4;
  auto p = eplb::InitialPlacement({0, 1}, 4, po);
  EXPECT_TRUE(p.ok());
  *initial = *p;
  CoordinatorOptions o;
  o.attention_workers = 1;
  o.expert_workers = 2;
  o.worker_timeout = std::chrono::milliseconds(200);
  auto core = std::make_unique<CoordinatorCore>(o, *p);
  EXPECT_TRUE(core->Register(Role::kAttention, 0, addresses[0], "t-a0", "a0").ok());
  EXPECT_TRUE(core->Register(Role::kExpert, 0, addresses[1], "t-e0", "e0").ok());
  EXPECT_TRUE(core->Register(Role::kExpert, 1, addresses[2], "t-e1", "e1").ok());
  for (int32_t rank : {0, 1, 2}) EXPECT_TRUE(core->Heartbeat(rank, true).ok());
  EXPECT_TRUE(core->GetMesh().ready);
  return core;
}

TEST(CoordinatorReformTest, DropsADeadExpertWorkerAndKeepsServing) {
  eplb::Placement initial;
  auto core = ReadyReplicatedMesh(&initial);
  std::vector<std::tuple<int64_t, int32_t, std::string>> reports;
  core->SetMeshFailureSink([&](int64_t epoch, int32_t rank, const std::string& why) {
    reports.emplace_back(epoch, rank, why);
  });
  // A worker reports a failed step of the serving epoch; a stale one is ignored.
  HeartbeatInfo failed;
  failed.ready = true;
  failed.mesh_failed_epoch = 1;
  failed.mesh_failure = "peer rank 2 is unavailable";
  ASSERT_TRUE(core->Heartbeat(0, failed).ok());
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(std::get<0>(reports[0]), 1);
  EXPECT_EQ(std::get<1>(reports[0]), 0);

  auto e = core->Reform({2}, 1, "a failed step");
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(*e, 2);
  const MeshView v = core->GetMesh();
  EXPECT_EQ(v.epoch, 2);
  EXPECT_EQ(v.formed_epoch, 2);
  EXPECT_EQ(v.placement.epoch, 2);
  EXPECT_EQ(v.placement.NumSlotsOf(1), 0);
  EXPECT_EQ(v.placement.NumSlotsOf(0), initial.NumSlotsOf(0));
  EXPECT_TRUE(v.placement.Validate().ok());
  EXPECT_TRUE(v.ready) << "the survivors hold every expert";
  EXPECT_TRUE(v.members[2].dropped);
  EXPECT_EQ(v.members[2].dropped_epoch, 2);
  EXPECT_FALSE(v.members[2].alive);
  // A second report of the same failed epoch changes nothing.
  auto again = core->Reform({}, 1, "a failed step");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, 2);
  failed.mesh_failed_epoch = 1;
  ASSERT_TRUE(core->Heartbeat(0, failed).ok());
  EXPECT_EQ(reports.size(), 1u);
  // The dropped worker's heartbeats and re-registration are refused.
  auto hb = core->Heartbeat(2, true);
  EXPECT_EQ(hb.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(hb.status().message(), HasSubstr("dropped from the mesh at epoch 2"));
  // No re-placement while degraded.
  EXPECT_EQ(core->BeginTransition(v.placement).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // A resync (no one dead) only moves the epoch.
  auto resync = core->Reform({}, 2, "a timed-out step");
  ASSERT_TRUE(resync.ok());
  EXPECT_EQ(*resync, 3);
  EXPECT_EQ(core->GetMesh().formed_epoch, 3);
  EXPECT_EQ(core->GetMesh().placement.phy2log, v.placement.phy2log);
}

// A replacement registers at the dropped worker's index while the survivors
// serve: it is joining (the mesh stays ready and is not re-formed), the old
// process's heartbeats are refused, and its first ready heartbeat re-forms
// the mesh with it (holding no slots yet). The mesh is whole again, so the
// placement from before the failure is handed out once, to move the experts
// back.
TEST(CoordinatorReformTest, AReplacementJoinsAndThePlacementBeforeTheFailureComesBack) {
  eplb::Placement initial;
  auto core = ReadyReplicatedMesh(&initial);
  ASSERT_TRUE(core->Reform({2}, 1, "a failed step").ok());
  EXPECT_FALSE(core->TakeRestore().has_value());
  uint64_t token = 0;
  auto rank = core->Register(Role::kExpert, 1, "e1:2", "t-e1b", "e1", "", &token);
  ASSERT_TRUE(rank.ok()) << rank.status();
  EXPECT_EQ(*rank, 2);
  ASSERT_NE(token, 0u);
  MeshView v = core->GetMesh();
  EXPECT_TRUE(v.members[2].joining);
  EXPECT_FALSE(v.members[2].dropped);
  EXPECT_EQ(v.members[2].transport_address, "t-e1b");
  EXPECT_TRUE(v.ready) << "the survivors go on serving while the replacement loads";
  EXPECT_EQ(v.formed_epoch, 2);
  EXPECT_EQ(v.placement.NumSlotsOf(1), 0);
  EXPECT_EQ(core->BeginTransition(initial).status().code(), absl::StatusCode::kFailedPrecondition);
  // A heartbeat carrying another registration's token (the replaced process).
  HeartbeatInfo stale;
  stale.ready = true;
  stale.registration = token ^ 1;
  auto refused = core->Heartbeat(2, stale);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("this process was replaced"));
  EXPECT_TRUE(core->GetMesh().members[2].joining);
  // Loaded: admitted at a new epoch, with no slots yet.
  HeartbeatInfo loaded;
  loaded.ready = true;
  loaded.registration = token;
  auto epoch = core->Heartbeat(2, loaded);
  ASSERT_TRUE(epoch.ok()) << epoch.status();
  EXPECT_EQ(*epoch, 3);
  v = core->GetMesh();
  EXPECT_EQ(v.formed_epoch, 3);
  EXPECT_FALSE(v.members[2].joining);
  EXPECT_FALSE(v.members[2].dropped);
  EXPECT_EQ(v.members[2].dropped_epoch, 0);
  EXPECT_EQ(v.placement.NumSlotsOf(1), 0);
  EXPECT_TRUE(v.ready);
  std::optional<eplb::Placement> restore = core->TakeRestore();
  ASSERT_TRUE(restore.has_value());
  EXPECT_EQ(restore->phy2log, initial.phy2log);
  EXPECT_EQ(restore->worker_begin, initial.worker_begin);
  EXPECT_FALSE(core->TakeRestore().has_value()) << "handed out once";
  auto next = core->BeginTransition(*restore);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(*next, 4);
}

// A replacement that goes silent while it loads is dropped again; the
// serving mesh, which never included it, is not re-formed.
TEST(CoordinatorReformTest, AReplacementThatGoesSilentIsDroppedWithoutAReform) {
  eplb::Placement initial;
  auto core = ReadyReplicatedMesh(&initial);
  ASSERT_TRUE(core->Reform({2}, 1, "a failed step").ok());
  ASSERT_TRUE(core->Register(Role::kExpert, 1, "e1:2", "t-e1b", "e1").ok());
  // The survivors keep beating; the replacement does not.
  for (int i = 0; i < 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(80));
    for (int32_t rank : {0, 1}) ASSERT_TRUE(core->Heartbeat(rank, true).ok());
  }
  const int64_t version = core->version();
  EXPECT_TRUE(core->ExpireSilent(std::chrono::steady_clock::now()).empty());
  const MeshView v = core->GetMesh();
  EXPECT_GT(v.version, version);
  EXPECT_TRUE(v.members[2].dropped);
  EXPECT_FALSE(v.members[2].joining);
  EXPECT_EQ(v.epoch, 2);
  EXPECT_EQ(v.formed_epoch, 2);
  EXPECT_TRUE(v.ready);
  // Another replacement may register.
  EXPECT_TRUE(core->Register(Role::kExpert, 1, "e1:3", "t-e1c", "e1").ok());
}

// A coordinator that restarted (empty) rebuilds its state from the workers
// that register again while serving: the generation, the newest placement
// the expert workers serve, and readiness; it is `recovering` until every
// index is back, and refuses a recovery placement that does not fit.
TEST(CoordinatorRecoveryTest, RebuildsTheMeshFromServingWorkers) {
  eplb::Placement initial;
  auto old = ReadyReplicatedMesh(&initial);
  ASSERT_TRUE(old->Reform({}, 1, "a resync").ok());  // generation 2, epoch 2
  const MeshView served = old->GetMesh();
  ASSERT_EQ(served.formed_epoch, 2);
  eplb::Placement p = served.placement;

  CoordinatorOptions o;
  o.attention_workers = 1;
  o.expert_workers = 2;
  o.worker_timeout = std::chrono::milliseconds(200);
  CoordinatorCore fresh(o, initial);
  EXPECT_NE(fresh.GetMesh().incarnation, served.incarnation);
  RecoveryInfo aw;
  aw.serving_epoch = 2;
  aw.generation = 2;
  ASSERT_TRUE(fresh.Register(Role::kAttention, 0, "a0:1", "t-a0", "a0", "", nullptr, &aw).ok());
  MeshView v = fresh.GetMesh();
  EXPECT_TRUE(v.recovering);
  EXPECT_FALSE(v.ready);
  EXPECT_EQ(v.formed_epoch, 2);
  EXPECT_TRUE(v.members[0].ready);
  // A placement for another topology is refused, naming the field.
  RecoveryInfo bad;
  bad.generation = 2;
  bad.placement = initial;
  bad.placement->num_workers = 3;
  auto refused = fresh.Register(Role::kExpert, 0, "e0:1", "t-e0", "e0", "", nullptr, &bad);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("recovery.placement"));
  RecoveryInfo ew;
  ew.serving_epoch = 2;
  ew.generation = 2;
  ew.placement = p;
  ASSERT_TRUE(fresh.Register(Role::kExpert, 0, "e0:1", "t-e0", "e0", "", nullptr, &ew).ok());
  EXPECT_EQ(fresh.epoch(), 2);
  EXPECT_TRUE(fresh.GetMesh().recovering);
  ASSERT_TRUE(fresh.Register(Role::kExpert, 1, "e1:1", "t-e1", "e1", "", nullptr, &ew).ok());
  v = fresh.GetMesh();
  EXPECT_FALSE(v.recovering);
  EXPECT_TRUE(v.complete);
  EXPECT_TRUE(v.ready) << "the workers serve: no loading to wait for";
  EXPECT_EQ(v.epoch, 2);
  EXPECT_EQ(v.formed_epoch, 2);
  EXPECT_EQ(v.placement.phy2log, p.phy2log);
  // It has served: a worker that later registers again (without recovery:
  // its process restarted) is a replacement, as in any running mesh.
  ASSERT_TRUE(fresh.Register(Role::kExpert, 1, "e1:1", "t-e1b", "e1").ok());
  EXPECT_TRUE(fresh.GetMesh().members[2].joining);
  EXPECT_EQ(fresh.GetMesh().formed_epoch, 3);
}

// A worker that does not register again within a worker timeout of the
// first recovery is taken for gone: the mesh is re-formed without it.
TEST(CoordinatorRecoveryTest, WorkersThatDoNotComeBackAreDropped) {
  eplb::Placement initial;
  auto old = ReadyReplicatedMesh(&initial);
  CoordinatorOptions o;
  o.attention_workers = 1;
  o.expert_workers = 2;
  o.worker_timeout = std::chrono::milliseconds(200);
  CoordinatorCore fresh(o, initial);
  RecoveryInfo r;
  r.serving_epoch = 1;
  r.generation = 1;
  ASSERT_TRUE(fresh.Register(Role::kAttention, 0, "a0:1", "t-a0", "a0", "", nullptr, &r).ok());
  r.placement = initial;
  ASSERT_TRUE(fresh.Register(Role::kExpert, 0, "e0:1", "t-e0", "e0", "", nullptr, &r).ok());
  EXPECT_TRUE(fresh.ExpireSilent(std::chrono::steady_clock::now()).empty());
  EXPECT_TRUE(fresh.GetMesh().recovering);
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  for (int32_t rank : {0, 1}) ASSERT_TRUE(fresh.Heartbeat(rank, true).ok());
  fresh.ExpireSilent(std::chrono::steady_clock::now());
  const MeshView v = fresh.GetMesh();
  EXPECT_FALSE(v.recovering);
  ASSERT_EQ(v.members.size(), 3u);
  EXPECT_TRUE(v.members[2].dropped);
  EXPECT_EQ(v.placement.NumSlotsOf(1), 0);
  EXPECT_EQ(v.formed_epoch, 2);
  EXPECT_TRUE(v.ready) << "expert worker 0 holds every expert";
}

TEST(CoordinatorReformTest, SurvivorsWithoutEveryExpertAreNotReady) {
  eplb::PlacementOptions po;
  po.num_workers = 2;
  auto p = eplb::InitialPlacement({0}, 4, po);  // no replicas
  ASSERT_TRUE(p.ok());
  CoordinatorOptions o;
  o.attention_workers = 1;
  o.expert_workers = 2;
  CoordinatorCore core(o, *p);
  ASSERT_TRUE(core.Register(Role::kAttention, 0, "a0:1", "t-a0", "a0").ok());
  ASSERT_TRUE(core.Register(Role::kExpert, 0, "e0:1", "t-e0", "e0").ok());
  ASSERT_TRUE(core.Register(Role::kExpert, 1, "e1:1", "t-e1", "e1").ok());
  for (int32_t rank : {0, 1, 2}) ASSERT_TRUE(core.Heartbeat(rank, true).ok());
  auto e = core.Reform({1}, 0, "a failed step");
  EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(e.status().message(), HasSubstr("no replica on a surviving expert worker"));
  const MeshView v = core.GetMesh();
  EXPECT_FALSE(v.ready);
  EXPECT_TRUE(v.members[1].dropped);
}

TEST(CoordinatorReformTest, SilenceAfterTheMeshWasReadyReformsIt) {
  eplb::Placement initial;
  auto core = ReadyReplicatedMesh(&initial);
  // Ranks 0 and 1 keep beating; rank 2 (expert worker 1) falls silent.
  std::this_thread::sleep_for(std::chrono::milliseconds(120));
  for (int32_t rank : {0, 1}) ASSERT_TRUE(core->Heartbeat(rank, true).ok());
  const std::vector<int32_t> expired =
      core->ExpireSilent(std::chrono::steady_clock::now() + std::chrono::milliseconds(100));
  EXPECT_EQ(expired, std::vector<int32_t>{2});
  const MeshView v = core->GetMesh();
  EXPECT_EQ(v.epoch, 2);
  EXPECT_TRUE(v.members[2].dropped);
  EXPECT_EQ(v.placement.NumSlotsOf(1), 0);
  EXPECT_TRUE(v.ready);
}

// The prober after a reported failed step: it health-checks every member
// over real gRPC, drops the one whose server is gone and re-forms the mesh;
// a second report of the same epoch does nothing; a report when every
// member answers only moves the epoch (a resync).
TEST(MeshProberTest, DropsTheUnreachableAndResyncsOtherwise) {
  std::vector<cluster::GrpcServer> servers;
  for (int i = 0; i < 3; ++i) {
    auto s = cluster::StartGrpcServer("127.0.0.1:0", {});
    ASSERT_TRUE(s.ok()) << s.status();
    s->SetServing({}, true);
    servers.push_back(std::move(*s));
  }
  std::vector<std::string> addresses;
  for (const auto& srv : servers) addresses.push_back("127.0.0.1:" + std::to_string(srv.port));
  eplb::Placement initial;
  std::unique_ptr<CoordinatorCore> owned = ReadyReplicatedMesh(&initial, addresses);
  CoordinatorCore& core = *owned;
  MeshProber prober(&core, std::chrono::milliseconds(500));
  core.SetMeshFailureSink([&](int64_t epoch, int32_t rank, const std::string& why) {
    prober.Report(epoch, rank, why);
  });
  auto await_epoch = [&](int64_t want) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (core.epoch() < want && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return core.epoch();
  };
  servers[2].server->Shutdown();  // expert worker 1 is gone
  HeartbeatInfo failed;
  failed.ready = true;
  failed.mesh_failed_epoch = 1;
  failed.mesh_failure = "peer rank 2 is unavailable";
  ASSERT_TRUE(core.Heartbeat(0, failed).ok());
  ASSERT_TRUE(core.Heartbeat(1, failed).ok());  // the same failure, seen by another worker
  EXPECT_EQ(await_epoch(2), 2);
  MeshView v = core.GetMesh();
  EXPECT_TRUE(v.members[2].dropped);
  EXPECT_FALSE(v.members[0].dropped);
  EXPECT_FALSE(v.members[1].dropped);
  EXPECT_TRUE(v.ready);
  // Every member left answers: a report of epoch 2 resyncs to epoch 3.
  failed.mesh_failed_epoch = 2;
  ASSERT_TRUE(core.Heartbeat(1, failed).ok());
  EXPECT_EQ(await_epoch(3), 3);
  v = core.GetMesh();
  EXPECT_EQ(v.formed_epoch, 3);
  EXPECT_FALSE(v.members[1].dropped);
  EXPECT_EQ(prober.reforms(), 2);
  core.SetMeshFailureSink({});
  for (int i = 0; i < 2; ++i) servers[i].server->Shutdown();
}

}  // namespace
}  // namespace sy::coordinator

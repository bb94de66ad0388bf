// switchyard-admin: the operator's CLI over the coordinator's Admin API.
//
//   switchyard-admin status --addr COORDINATOR
//   switchyard-admin load --addr COORDINATOR
//   switchyard-admin rebalance --addr COORDINATOR [--policy global|hierarchical] [--force]
//
// `status` prints one JSON object: epoch, balancedness (measured on the
// load window, mean over MoE layers; null before any load), per-layer
// balancedness, the placement (phy2log per MoE layer, with the expert
// workers' slot ranges), members and the rebalance history. `load` prints
// the window's load matrix (tokens per step, [MoE layer][expert]).
// `rebalance` runs one rebalance to its end and prints its record: outcome
// (committed, skipped or aborted), epoch, balancedness_before and
// balancedness_after (predicted on the window), moved_experts, ...
//
// Exit status: 0 on success (rebalance: committed or skipped); 1 when a
// rebalance aborted; 2 for a bad flag or command; 3 when the call failed
// (the message goes to stderr).
#include <grpcpp/grpcpp.h>

#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "nlohmann/json.hpp"
#include "services/cluster/process.h"
#include "switchyard/v1/admin.grpc.pb.h"
#include "tools/connect_flags.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50100", "Coordinator address, host:port");
ABSL_FLAG(std::string, policy, "", "rebalance: global or hierarchical; empty = the configured one");
ABSL_FLAG(bool, force, false,
          "rebalance: re-place even when the plan is not predicted to raise the balancedness");
ABSL_FLAG(int64_t, deadline_ms, 600000, "Deadline of the call in milliseconds");

namespace {

namespace v1 = ::switchyard::v1;
using json = nlohmann::ordered_json;

constexpr const char* kProgram = "switchyard-admin";

int RpcError(const grpc::Status& status) {
  std::cerr << kProgram << ": " << status.error_message() << " (gRPC code "
            << static_cast<int>(status.error_code()) << ")\n";
  return status.error_code() == grpc::StatusCode::INVALID_ARGUMENT ? 2 : 3;
}

json RecordJson(const v1::RebalanceRecord& r) {
  json j;
  j["id"] = r.id();
  j["trigger"] = r.trigger();
  j["outcome"] = r.outcome();
  j["reason"] = r.reason();
  j["policy"] = r.policy();
  j["planner"] = r.planner();
  j["epoch"] = r.epoch_after();
  j["epoch_before"] = r.epoch_before();
  j["balancedness_before"] = r.balancedness_before();
  j["balancedness_after"] = r.balancedness_after();
  j["moved_experts"] = r.moved_experts();
  j["moved_bytes"] = r.moved_bytes();
  j["rounds"] = r.rounds();
  j["seconds"] = r.seconds();
  j["started_unix_ms"] = r.started_unix_ms();
  return j;
}

// The TLS and API-key flags' connection (set in main).
sy::tools::Connection connection;

// Every call's deadline and API key.
void SetDeadline(grpc::ClientContext* ctx) {
  connection.Authorize(ctx);
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(absl::GetFlag(FLAGS_deadline_ms)));
}

int Status(v1::Admin::Stub& stub) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::StatusResponse s;
  grpc::Status st = stub.Status(&ctx, v1::StatusRequest{}, &s);
  if (!st.ok()) return RpcError(st);
  json j;
  j["epoch"] = s.epoch();
  j["balancedness"] = s.has_balancedness() ? json(s.balancedness()) : json(nullptr);
  j["layer_balancedness"] =
      std::vector<double>(s.layer_balancedness().begin(), s.layer_balancedness().end());
  j["window_steps"] = s.window_steps();
  j["rebalancing"] = s.rebalancing();
  json placement = json::array();
  for (const auto& row : s.placement()) {
    placement.push_back(std::vector<int32_t>(row.phy2log().begin(), row.phy2log().end()));
  }
  j["placement"] = placement;
  j["moe_layers"] = std::vector<int32_t>(s.moe_layers().begin(), s.moe_layers().end());
  j["worker_slot_begin"] =
      std::vector<int32_t>(s.worker_slot_begin().begin(), s.worker_slot_begin().end());
  json members = json::array();
  for (const auto& m : s.members()) {
    members.push_back({{"rank", m.rank()},
                       {"role", m.role()},
                       {"index", m.index()},
                       {"grpc_address", m.grpc_address()},
                       {"alive", m.alive()},
                       {"ready", m.ready()},
                       {"dropped", m.dropped()},
                       {"joining", m.joining()},
                       {"serving_epoch", m.serving_epoch()},
                       {"staged_epoch", m.staged_epoch()}});
  }
  j["members"] = members;
  json history = json::array();
  for (const auto& r : s.rebalances()) history.push_back(RecordJson(r));
  j["rebalances"] = history;
  j["version"] = s.version();
  std::cout << j.dump() << "\n";
  return 0;
}

int Load(v1::Admin::Stub& stub) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::LoadResponse r;
  grpc::Status st = stub.Load(&ctx, v1::LoadRequest{}, &r);
  if (!st.ok()) return RpcError(st);
  json layers = json::array();
  json load = json::array();
  for (const auto& row : r.layers()) {
    layers.push_back(row.layer());
    load.push_back(std::vector<double>(row.tokens_per_step().begin(), row.tokens_per_step().end()));
  }
  std::cout
      << json{{"window_steps", r.window_steps()}, {"moe_layers", layers}, {"load", load}}.dump()
      << "\n";
  return 0;
}

int Rebalance(v1::Admin::Stub& stub) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::RebalanceRequest req;
  req.set_policy(absl::GetFlag(FLAGS_policy));
  req.set_force(absl::GetFlag(FLAGS_force));
  v1::RebalanceRecord r;
  grpc::Status st = stub.Rebalance(&ctx, req, &r);
  if (!st.ok()) return RpcError(st);
  std::cout << RecordJson(r).dump() << "\n";
  return r.outcome() == "aborted" ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "switchyard-admin status|load|rebalance --addr COORDINATOR [--policy P] [--force]\n"
      "  [--tls-ca CA --tls-cert CERT --tls-key KEY] [--api-key-file FILE]");
  std::vector<std::string> arg_storage;
  sy::cluster::ListAllFlagsInHelp();
  std::vector<char*> dashed = sy::cluster::DashesToUnderscores(argc, argv, &arg_storage);
  std::vector<char*> args = absl::ParseCommandLine(static_cast<int>(dashed.size()), dashed.data());
  if (args.size() != 2) {
    std::cerr << kProgram << ": expected one command: status, load or rebalance\n";
    return 2;
  }
  const std::string cmd = args[1];
  const std::string policy = absl::GetFlag(FLAGS_policy);
  if (!policy.empty() && policy != "global" && policy != "hierarchical") {
    std::cerr << kProgram << ": --policy must be global or hierarchical, not '" << policy << "'\n";
    return 2;
  }
  if (!sy::tools::ConnectFromFlagsOrSay(kProgram, absl::GetFlag(FLAGS_addr), &connection)) {
    return 2;
  }
  auto stub = v1::Admin::NewStub(connection.channel);
  if (cmd == "status") return Status(*stub);
  if (cmd == "load") return Load(*stub);
  if (cmd == "rebalance") return Rebalance(*stub);
  std::cerr << kProgram << ": unknown command '" << cmd << "' (status, load or rebalance)\n";
  return 2;
}

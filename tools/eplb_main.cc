// switchyard-eplb: plans an expert placement from per-layer expert loads
// (eplb/planner.h) and prints one JSON object with its balancedness, the
// expert weights it would move against the placement now serving, and the
// planning time. --planner deepseek runs DeepSeek's EPLB exactly, the default
// Switchyard's planner (eplb/planner.h: better balance, and with --current
// under the global policy, minimal movement).
//
//   switchyard-eplb --experts 256 --gpus 32 --nodes 4 --groups 8 --physical 288
//       --policy global --load LOAD.json [--current CUR.json] --out OUT.json
//
// LOAD.json: {"load": [[tokens per logical expert] per layer]}. OUT.json and
// CUR.json: {"phy2log": [[logical expert per slot] per layer]}, slot s on
// expert worker s / (physical / gpus). Bad input is an error on stderr naming
// the problem, exit 2.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "eplb/planner.h"
#include "nlohmann/json.hpp"
#include "services/cluster/process.h"

ABSL_FLAG(int32_t, experts, 0, "Logical experts per MoE layer (required)");
ABSL_FLAG(int32_t, gpus, 0,
          "Expert workers; slot s lives on worker s / (physical / gpus) (required)");
ABSL_FLAG(int32_t, nodes, 1, "Nodes; worker w lives on node w / (gpus / nodes)");
ABSL_FLAG(int32_t, groups, 1, "Expert groups (hierarchical policy)");
ABSL_FLAG(int32_t, physical, 0, "Physical slots per layer (>= experts); 0 = experts");
ABSL_FLAG(std::string, policy, "global", "global or hierarchical");
ABSL_FLAG(std::string, load, "", "JSON {\"load\": [[tokens per expert] per layer]} (required)");
ABSL_FLAG(std::string, current, "",
          "JSON {\"phy2log\": ...} of the placement now serving: count the expert weights the "
          "new one moves");
ABSL_FLAG(std::string, out, "", "Write the planned {\"phy2log\": ...} here");
ABSL_FLAG(std::string, planner, "switchyard",
          "switchyard (DeepSeek's steps refined; with --current and the global policy, minimal "
          "movement) or deepseek (DeepSeek's EPLB exactly)");

namespace {

constexpr const char* kTool = "switchyard-eplb";

absl::StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  std::ifstream in(path);
  if (!in.good()) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  return j;
}

// j[key] as a matrix of numbers; InvalidArgument naming the file, key, row
// and column otherwise.
template <typename T>
absl::StatusOr<std::vector<std::vector<T>>> ReadMatrix(const nlohmann::json& j,
                                                       const std::string& path,
                                                       const std::string& key) {
  if (!j.is_object() || !j.contains(key)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": needs a \"", key, "\" key"));
  }
  const nlohmann::json& m = j.at(key);
  if (!m.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": \"", key, "\" is not an array"));
  }
  std::vector<std::vector<T>> out;
  for (size_t r = 0; r < m.size(); ++r) {
    if (!m[r].is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": \"", key, "\"[", r, "] is not an array"));
    }
    std::vector<T> row;
    for (size_t c = 0; c < m[r].size(); ++c) {
      const nlohmann::json& v = m[r][c];
      const bool ok = std::is_integral_v<T> ? v.is_number_integer() : v.is_number();
      if (!ok) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": \"", key, "\"[", r, "][", c, "] is not ",
                         std::is_integral_v<T> ? "an integer" : "a number"));
      }
      row.push_back(v.get<T>());
    }
    out.push_back(std::move(row));
  }
  return out;
}

int Fail(const absl::Status& st) {
  std::cerr << kTool << ": " << st.message() << "\n";
  return 2;
}

int Run() {
  using sy::eplb::LoadMatrix;
  using sy::eplb::Phy2Log;
  sy::eplb::PlanShape shape;
  shape.num_logical = absl::GetFlag(FLAGS_experts);
  shape.num_workers = absl::GetFlag(FLAGS_gpus);
  shape.num_nodes = absl::GetFlag(FLAGS_nodes);
  shape.num_groups = absl::GetFlag(FLAGS_groups);
  shape.num_physical = absl::GetFlag(FLAGS_physical);
  if (shape.num_physical == 0) shape.num_physical = shape.num_logical;
  if (absl::GetFlag(FLAGS_load).empty()) {
    return Fail(absl::InvalidArgumentError("--load is required"));
  }
  const auto policy = sy::eplb::ParsePolicy(absl::GetFlag(FLAGS_policy));
  if (!policy.ok()) return Fail(policy.status());
  if (absl::Status st = sy::eplb::ValidateShape(shape, *policy); !st.ok()) return Fail(st);

  const std::string load_path = absl::GetFlag(FLAGS_load);
  const auto load_json = ReadJson(load_path);
  if (!load_json.ok()) return Fail(load_json.status());
  const auto load = ReadMatrix<double>(*load_json, load_path, "load");
  if (!load.ok()) return Fail(load.status());
  if (absl::Status st = sy::eplb::ValidateLoad(*load, shape.num_logical); !st.ok()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(load_path, ": ", st.message())));
  }
  const auto layers = static_cast<int32_t>(load->size());

  Phy2Log current;
  const std::string current_path = absl::GetFlag(FLAGS_current);
  if (!current_path.empty()) {
    const auto cur_json = ReadJson(current_path);
    if (!cur_json.ok()) return Fail(cur_json.status());
    auto cur = ReadMatrix<int32_t>(*cur_json, current_path, "phy2log");
    if (!cur.ok()) return Fail(cur.status());
    if (absl::Status st = sy::eplb::ValidatePhy2Log(*cur, layers, shape); !st.ok()) {
      return Fail(absl::InvalidArgumentError(
          absl::StrCat(current_path, ": not a valid placement: ", st.message())));
    }
    current = std::move(*cur);
  }

  const std::string planner = absl::GetFlag(FLAGS_planner);
  if (planner != "switchyard" && planner != "deepseek") {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--planner must be switchyard or deepseek (got \"", planner, "\")")));
  }
  sy::eplb::PlannerOptions options;
  options.policy = *policy;
  options.current = current.empty() ? nullptr : &current;
  const auto t0 = std::chrono::steady_clock::now();
  const auto plan = planner == "deepseek" ? sy::eplb::DeepSeekPlan(*load, shape, *policy)
                                          : sy::eplb::Plan(*load, shape, options);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (!plan.ok()) return Fail(plan.status());

  const sy::eplb::Score score = sy::eplb::ScorePlacement(*load, *plan, shape.num_workers);
  nlohmann::json out = {{"policy", sy::eplb::PolicyName(*policy)},
                        {"planner", planner},
                        {"layers", layers},
                        {"experts", shape.num_logical},
                        {"physical", shape.num_physical},
                        {"gpus", shape.num_workers},
                        {"nodes", shape.num_nodes},
                        {"groups", shape.num_groups},
                        {"balancedness", score.balancedness},
                        {"worst_layer_balancedness", score.worst_layer},
                        {"planning_ms", ms}};
  if (!current.empty()) {
    const sy::eplb::Score before = sy::eplb::ScorePlacement(*load, current, shape.num_workers);
    const sy::eplb::Movement moved = sy::eplb::CountMovement(current, *plan, shape.num_workers);
    out["current_balancedness"] = before.balancedness;
    out["moved_expert_loads"] = moved.expert_loads;
    out["moved_fraction_of_slots"] =
        static_cast<double>(moved.expert_loads) / static_cast<double>(moved.total_slots);
  }
  const std::string out_path = absl::GetFlag(FLAGS_out);
  if (!out_path.empty()) {
    std::ofstream f(out_path);
    f << nlohmann::json{{"phy2log", *plan}, {"gpus", shape.num_workers}}.dump() << "\n";
    if (!f.good()) return Fail(absl::InternalError(absl::StrCat(out_path, ": cannot write")));
    out["out"] = out_path;
  }
  std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  sy::cluster::ListAllFlagsInHelp();
  absl::SetProgramUsageMessage(
      "Plans an expert placement from per-layer expert loads.\n"
      "  switchyard-eplb --experts 256 --gpus 32 --nodes 4 --groups 8 --physical 288 "
      "--policy global --load LOAD.json [--current CUR.json] --out OUT.json");
  std::vector<std::string> arg_storage;
  std::vector<char*> args = sy::cluster::DashesToUnderscores(argc, argv, &arg_storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  return Run();
}

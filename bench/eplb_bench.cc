// Placement planning benchmark: Switchyard's planner beside DeepSeek's EPLB
// (both in this binary, eplb/planner.h) on load files, for both policies:
// balancedness (mean over layers of mean worker load / max), the bound
// (replication bound for global, whole-group node bound for hierarchical),
// the share of the gap to it that each closes, planning time on one core,
// and, with a second window in the file, minimal movement: the expert
// weights each plan for window 1 must copy when window 0's DeepSeek plan is
// serving.
//
// Usage: switchyard-eplb-bench --gpus 32 --nodes 4 --groups 8 --physical 288
//          [--per-layer] LOAD.json [LOAD.json ...]
// LOAD.json: {"load": [[...] per layer]} or {"load": [[[...] per layer] per
// window]} (bench/eplb_bench.sh makes them with ../shared/tools/eplb_ref).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "eplb/planner.h"
#include "nlohmann/json.hpp"

namespace {

using sy::eplb::LoadMatrix;
using sy::eplb::Phy2Log;

double Mean(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

template <typename Fn>
double TimeMs(Fn&& fn, int repeats) {
  double best = 1e30;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(
        best,
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

int Run(int argc, char** argv) {
  sy::eplb::PlanShape shape;
  std::vector<std::string> files;
  int64_t experts = 0;
  bool per_layer = false;
  for (int i = 1; i < argc; ++i) {
    auto num = [&](const char* flag, int32_t* v) {
      if (std::strcmp(argv[i], flag) == 0 && i + 1 < argc) {
        *v = std::atoi(argv[++i]);
        return true;
      }
      return false;
    };
    if (num("--gpus", &shape.num_workers) || num("--nodes", &shape.num_nodes) ||
        num("--groups", &shape.num_groups) || num("--physical", &shape.num_physical)) {
      continue;
    }
    if (std::strcmp(argv[i], "--per-layer") == 0) {
      per_layer = true;
      continue;
    }
    files.emplace_back(argv[i]);
  }
  if (files.empty()) {
    std::fprintf(stderr, "usage: %s --gpus W --nodes N --groups G --physical P LOAD.json [...]\n",
                 argv[0]);
    return 2;
  }
  std::string cmd;
  for (int i = 0; i < argc; ++i) cmd += std::string(i ? " " : "") + argv[i];
  std::printf("# command: %s\n", cmd.c_str());
  std::printf("%-34s %-12s %-10s %8s %8s %8s %8s %9s\n", "load", "policy", "planner", "balance",
              "worst", "bound", "gap_shut", "ms");
  for (const std::string& path : files) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    const nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, false);
    if (j.is_discarded() || !j.contains("load")) {
      std::fprintf(stderr, "%s: not a load file\n", path.c_str());
      return 2;
    }
    std::vector<LoadMatrix> windows;
    if (j["load"][0][0].is_array()) {
      windows = j["load"].get<std::vector<LoadMatrix>>();
    } else {
      windows.push_back(j["load"].get<LoadMatrix>());
    }
    experts = static_cast<int64_t>(windows[0][0].size());
    shape.num_logical = static_cast<int32_t>(experts);
    std::string name = path.substr(path.find_last_of('/') + 1);
    const LoadMatrix& load = windows[0];
    for (const auto policy : {sy::eplb::Policy::kGlobal, sy::eplb::Policy::kHierarchical}) {
      if (!sy::eplb::ValidateShape(shape, policy).ok()) continue;
      const std::vector<double> bound = policy == sy::eplb::Policy::kGlobal
                                            ? sy::eplb::ReplicationBound(load, shape)
                                            : sy::eplb::HierarchicalBound(load, shape);
      Phy2Log ds, ours;
      const double ds_ms = TimeMs([&] { ds = *sy::eplb::DeepSeekPlan(load, shape, policy); }, 3);
      sy::eplb::PlannerOptions opt;
      opt.policy = policy;
      const double our_ms = TimeMs([&] { ours = *sy::eplb::Plan(load, shape, opt); }, 3);
      const auto s_ds = sy::eplb::ScorePlacement(load, ds, shape.num_workers);
      const auto s_ours = sy::eplb::ScorePlacement(load, ours, shape.num_workers);
      const double b = Mean(bound);
      const std::vector<double> rbound = policy == sy::eplb::Policy::kGlobal
                                             ? bound
                                             : sy::eplb::HierarchicalReplicationBound(load, shape);
      const double gap = b - s_ds.balancedness;
      std::printf("%-34s %-12s %-10s %8.4f %8.4f %8.4f %8s %9.2f\n", name.c_str(),
                  sy::eplb::PolicyName(policy), "deepseek", s_ds.balancedness, s_ds.worst_layer, b,
                  "-", ds_ms);
      const double rb = Mean(rbound), rgap = rb - s_ds.balancedness;
      std::printf(
          "%-34s %-12s %-10s %8.4f %8.4f %8.4f %7.0f%% %9.2f  (replication-aware bound %.4f: "
          "%.0f%% of that gap)\n",
          name.c_str(), sy::eplb::PolicyName(policy), "switchyard", s_ours.balancedness,
          s_ours.worst_layer, b,
          gap > 0 ? 100.0 * (s_ours.balancedness - s_ds.balancedness) / gap : 0.0, our_ms, rb,
          rgap > 0 ? 100.0 * (s_ours.balancedness - s_ds.balancedness) / rgap : 100.0);
      if (per_layer) {
        for (size_t l = 0; l < load.size(); ++l) {
          double total = 0, top = 0;
          for (const double v : load[l]) {
            total += v;
            top = std::max(top, v);
          }
          std::printf(
              "  layer %2zu deepseek %.4f switchyard %.4f bound %.4f replication-aware %.4f "
              "hottest/mean %.2f\n",
              l, s_ds.per_layer[l], s_ours.per_layer[l], bound[l], rbound[l],
              top / (total / shape.num_workers));
        }
      }
    }
    if (windows.size() >= 2 && sy::eplb::ValidateShape(shape, sy::eplb::Policy::kGlobal).ok()) {
      // Window 0's DeepSeek plan serves; plan window 1.
      const Phy2Log serving = *sy::eplb::DeepSeekPlan(windows[0], shape, sy::eplb::Policy::kGlobal);
      const LoadMatrix& next = windows[1];
      const Phy2Log ds = *sy::eplb::DeepSeekPlan(next, shape, sy::eplb::Policy::kGlobal);
      sy::eplb::PlannerOptions opt;
      opt.current = &serving;
      Phy2Log ours;
      const double ms = TimeMs([&] { ours = *sy::eplb::Plan(next, shape, opt); }, 3);
      const auto m_ds = sy::eplb::CountMovement(serving, ds, shape.num_workers);
      const auto m_ours = sy::eplb::CountMovement(serving, ours, shape.num_workers);
      std::printf(
          "%-34s movement (global, window 1 from window 0's DeepSeek plan): deepseek %lld "
          "expert copies (%.1f%% of slots), balancedness %.4f; switchyard %lld (%.1f%%, %.0f%% "
          "of deepseek's), balancedness %.4f, %.2f ms\n",
          name.c_str(), static_cast<long long>(m_ds.expert_loads),
          100.0 * m_ds.expert_loads / m_ds.total_slots,
          sy::eplb::ScorePlacement(next, ds, shape.num_workers).balancedness,
          static_cast<long long>(m_ours.expert_loads),
          100.0 * m_ours.expert_loads / m_ours.total_slots,
          100.0 * m_ours.expert_loads / std::max<int64_t>(1, m_ds.expert_loads),
          sy::eplb::ScorePlacement(next, ours, shape.num_workers).balancedness, ms);
    }
    if (windows.size() >= 4) {
      // Held out: plan window t (t >= 3) from the windows before it, on their
      // decayed average with the decay `choose` gives, score on window t.
      auto held_out = [&](const std::function<double(const std::vector<LoadMatrix>&)>& choose) {
        double sum = 0.0;
        for (size_t t = 3; t < windows.size(); ++t) {
          const std::vector<LoadMatrix> past(windows.begin(), windows.begin() + t);
          const Phy2Log plan =
              *sy::eplb::Plan(sy::eplb::DecayedAverage(past, choose(past)), shape, {});
          sum += sy::eplb::ScorePlacement(windows[t], plan, shape.num_workers).balancedness;
        }
        return sum / static_cast<double>(windows.size() - 3);
      };
      for (const double decay : {0.0, 0.25, 0.5, 0.75}) {
        std::printf("%-34s held-out (global, windows 3..%zu): planned on %s -> balancedness %.4f\n",
                    name.c_str(), windows.size() - 1,
                    decay == 0.0 ? "the last window"
                                 : ("decayed average, decay " + std::to_string(decay)).c_str(),
                    held_out([decay](const std::vector<LoadMatrix>&) { return decay; }));
      }
      // ChooseDecay as the coordinator would use it: at each window, the
      // decay chosen on the windows before it.
      std::printf(
          "%-34s held-out (global, windows 3..%zu): decay chosen by ChooseDecay -> "
          "balancedness %.4f\n",
          name.c_str(), windows.size() - 1, held_out([&](const std::vector<LoadMatrix>& past) {
            return sy::eplb::ChooseDecay(past, shape, sy::eplb::Policy::kGlobal);
          }));
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return Run(argc, argv); }

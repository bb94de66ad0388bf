#include "services/coordinator/rebalancer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"

namespace sy::coordinator {
namespace {

using Clock = std::chrono::steady_clock;

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

Rebalancer::Rebalancer(CoordinatorCore* core, LoadWindow* window, cluster::EplbOptions options,
                       int64_t bytes_per_expert)
    : core_(core),
      window_(window),
      options_(std::move(options)),
      bytes_per_expert_(bytes_per_expert) {}

Rebalancer::~Rebalancer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

void Rebalancer::Stop() {
  stopping_.store(true);
  std::lock_guard<std::mutex> lock(mu_);
  stop_ = true;
  cv_.notify_all();
}

void Rebalancer::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { TriggerLoop(); });
}

std::vector<RebalanceRecord> Rebalancer::History() const {
  std::lock_guard<std::mutex> lock(mu_);
  return history_;
}

void Rebalancer::TriggerLoop() {
  const auto check = std::chrono::milliseconds(options_.check_ms);
  const auto interval = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.interval_seconds));
  const auto rest = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(options_.window_seconds));
  auto last_interval = Clock::now();
  auto threshold_rests_until = Clock::now();
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, check, [this] { return stop_; })) return;
    }
    if (std::optional<eplb::Placement> whole = core_->TakeRestore(); whole.has_value()) {
      Restore(*whole);
      continue;
    }
    if (!options_.enabled) continue;
    const MeshView mesh = core_->GetMesh();
    if (!mesh.ready || mesh.next.has_value()) continue;
    const auto now = Clock::now();
    std::string trigger;
    if (options_.interval_seconds > 0 && now - last_interval >= interval) {
      trigger = "interval";
      last_interval = now;
    } else if (now >= threshold_rests_until) {
      const LoadSnapshot snap = window_->Get(mesh.epoch, now);
      if (snap.layer_balancedness.has_value() && snap.serving_steps >= options_.min_window_steps &&
          snap.balancedness < options_.threshold) {
        trigger = "threshold";
      }
    }
    if (trigger.empty()) continue;
    absl::StatusOr<RebalanceRecord> r = RunOnce(trigger, "");
    if (!r.ok()) {
      SY_LOG(WARNING) << "rebalance (" << trigger << ") did not run: " << r.status();
      continue;
    }
    if (trigger == "threshold" && r->outcome != "committed") threshold_rests_until = now + rest;
  }
}

absl::StatusOr<RebalanceRecord> Rebalancer::RunOnce(const std::string& trigger,
                                                    const std::string& policy_name, bool force) {
  SY_ASSIGN_OR_RETURN(eplb::Policy policy,
                      eplb::ParsePolicy(policy_name.empty() ? options_.policy : policy_name));
  std::lock_guard<std::mutex> run(run_mu_);
  if (stopping_.load()) return absl::UnavailableError("the coordinator is shutting down");
  const MeshView mesh = core_->GetMesh();
  if (!mesh.ready) {
    return absl::FailedPreconditionError(
        "the mesh is not ready (a worker is missing, dead or loading)");
  }
  running_.store(true);
  RebalanceRecord r = Run(trigger, policy, force, mesh);
  running_.store(false);
  Record(r);
  return r;
}

void Rebalancer::Record(const RebalanceRecord& r) {
  SY_LOG(INFO) << "rebalance " << r.id << " (" << r.trigger << ", " << r.policy
               << "): " << r.outcome << (r.reason.empty() ? "" : ": ") << r.reason
               << "; balancedness " << r.balancedness_before << " -> " << r.balancedness_after
               << ", " << r.moved_experts << " experts moved, epoch " << r.epoch_before << " -> "
               << r.epoch_after << ", " << r.seconds << " s";
  if (observer_) observer_(r);
  std::lock_guard<std::mutex> lock(mu_);
  history_.push_back(r);
  if (history_.size() > 100) history_.erase(history_.begin());
}

void Rebalancer::Restore(const eplb::Placement& whole) {
  std::lock_guard<std::mutex> run(run_mu_);
  if (stopping_.load()) return;
  const MeshView mesh = core_->GetMesh();
  RebalanceRecord r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    r.id = next_id_++;
  }
  r.trigger = "rejoin";
  r.policy = "restore";
  r.planner = "the placement before the failure";
  r.epoch_before = r.epoch_after = mesh.epoch;
  r.started_unix_ms = UnixMs();
  const auto start = Clock::now();
  r.moved_experts = eplb::CountMovement(mesh.placement, whole).expert_loads;
  r.moved_bytes = r.moved_experts * bytes_per_expert_;
  if (mesh.placement.phy2log == whole.phy2log &&
      mesh.placement.worker_begin == whole.worker_begin) {
    r.outcome = "skipped";
    r.reason = "the serving placement is the one from before the failure";
  } else {
    running_.store(true);
    int64_t epoch = 0;
    const absl::Status st = Transition(whole, &epoch);
    running_.store(false);
    r.outcome = st.ok() ? "committed" : "aborted";
    r.reason = st.ok() ? "experts moved back onto the replacements" : std::string(st.message());
    r.rounds = st.ok() ? 1 : 0;
  }
  r.epoch_after = core_->epoch();
  r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  Record(r);
}

RebalanceRecord Rebalancer::Run(const std::string& trigger, eplb::Policy policy, bool force,
                                const MeshView& mesh) {
  RebalanceRecord r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    r.id = next_id_++;
  }
  r.trigger = trigger;
  r.policy = eplb::PolicyName(policy);
  r.planner = options_.planner;
  r.epoch_before = r.epoch_after = mesh.epoch;
  r.started_unix_ms = UnixMs();
  const auto start = Clock::now();
  auto finish = [&](const std::string& outcome, std::string reason) {
    r.outcome = outcome;
    r.reason = std::move(reason);
    r.epoch_after = core_->epoch();
    r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return r;
  };
  const eplb::Placement& cur = mesh.placement;
  const LoadSnapshot snap = window_->Get(mesh.epoch, Clock::now());
  if (snap.steps == 0) return finish("skipped", "no load has been reported yet");
  eplb::PlanShape shape;
  shape.num_logical = cur.num_logical;
  shape.num_physical = cur.num_slots;
  shape.num_workers = cur.num_workers;
  shape.num_nodes = policy == eplb::Policy::kHierarchical ? options_.nodes : 1;
  shape.num_groups = policy == eplb::Policy::kHierarchical ? options_.groups : 1;
  for (int32_t w = 0; w <= cur.num_workers; ++w) {
    if (cur.worker_begin[w] != w * (cur.num_slots / cur.num_workers) ||
        cur.num_slots % cur.num_workers != 0) {
      return finish("skipped",
                    "the planner needs equal slot counts on every expert worker; this placement "
                    "has uneven ones");
    }
  }
  if (absl::Status st = eplb::ValidateShape(shape, policy); !st.ok()) {
    return finish("aborted", std::string(st.message()));
  }
  eplb::PlannerOptions po;
  po.policy = policy;
  po.current = &cur.phy2log;
  absl::StatusOr<eplb::Phy2Log> plan = options_.planner == "deepseek"
                                           ? eplb::DeepSeekPlan(snap.logical, shape, policy)
                                           : eplb::Plan(snap.logical, shape, po);
  if (!plan.ok()) return finish("aborted", absl::StrCat("planning: ", plan.status().message()));
  r.balancedness_before =
      eplb::ScorePlacement(snap.logical, cur.phy2log, cur.num_workers).balancedness;
  r.balancedness_after = eplb::ScorePlacement(snap.logical, *plan, cur.num_workers).balancedness;
  const eplb::Movement moved = eplb::CountMovement(cur.phy2log, *plan, cur.num_workers);
  r.moved_experts = moved.expert_loads;
  r.moved_bytes = moved.expert_loads * bytes_per_expert_;
  if (moved.expert_loads == 0) return finish("skipped", "the plan is the serving placement");
  const double gain = r.balancedness_after - r.balancedness_before;
  if (!force && gain <= 1e-9) {
    return finish("skipped",
                  absl::StrCat("the plan would not raise the balancedness (", r.balancedness_before,
                               " -> ", r.balancedness_after, " on the window)"));
  }
  if (trigger != "operator" && gain < options_.min_gain) {
    return finish("skipped", absl::StrCat("predicted gain ", gain, " is below eplb.min_gain (",
                                          options_.min_gain, ")"));
  }
  // Rounds of layers that fit max_staging_bytes on every worker.
  std::vector<std::vector<int32_t>> rounds;
  const auto layers = static_cast<int32_t>(cur.layers.size());
  if (options_.max_staging_bytes <= 0) {
    rounds.emplace_back();
    for (int32_t l = 0; l < layers; ++l) rounds.back().push_back(l);
  } else {
    std::vector<int64_t> used(cur.num_workers, 0);
    for (int32_t l = 0; l < layers; ++l) {
      const std::vector<int64_t>& copies = moved.per_worker[l];
      bool fits = !rounds.empty();
      for (int32_t w = 0; w < cur.num_workers; ++w) {
        const int64_t need = copies[w] * bytes_per_expert_;
        if (need > options_.max_staging_bytes) {
          return finish("aborted", absl::StrCat("layer ", cur.layers[l], " needs ", need,
                                                " bytes of staging on expert worker ", w,
                                                ", more than eplb.max_staging_bytes (",
                                                options_.max_staging_bytes, ")"));
        }
        if (used[w] + need > options_.max_staging_bytes) fits = false;
      }
      if (!fits) {
        rounds.emplace_back();
        std::fill(used.begin(), used.end(), 0);
      }
      rounds.back().push_back(l);
      for (int32_t w = 0; w < cur.num_workers; ++w) used[w] += copies[w] * bytes_per_expert_;
    }
  }
  eplb::Placement next = cur;
  for (const std::vector<int32_t>& round : rounds) {
    for (int32_t l : round) next.phy2log[l] = (*plan)[l];
    int64_t epoch = 0;
    if (absl::Status st = Transition(next, &epoch); !st.ok()) {
      return finish("aborted", std::string(st.message()));
    }
    ++r.rounds;
  }
  return finish("committed", "");
}

absl::Status Rebalancer::Transition(const eplb::Placement& next, int64_t* epoch) {
  SY_ASSIGN_OR_RETURN(*epoch, core_->BeginTransition(next));
  const auto timeout = std::chrono::milliseconds(options_.stage_timeout_ms);
  const auto deadline = Clock::now() + timeout;
  while (true) {
    std::optional<TransitionProgress> p = core_->Progress(*epoch);
    if (!p.has_value()) return absl::InternalError("the re-placement disappeared");
    if (!p->failure.empty()) {
      (void)core_->AbortTransition(*epoch, p->failure);
      return absl::AbortedError(absl::StrCat("staging epoch ", *epoch, " failed on ", p->failure));
    }
    if (p->staged == p->expert_workers) break;
    if (stopping_.load()) {
      (void)core_->AbortTransition(*epoch, "the coordinator is shutting down");
      return absl::AbortedError("the coordinator is shutting down");
    }
    if (Clock::now() > deadline) {
      const std::string why = absl::StrCat("staging epoch ", *epoch, " did not finish within ",
                                           options_.stage_timeout_ms, " ms (", p->staged, " of ",
                                           p->expert_workers, " expert workers staged)");
      (void)core_->AbortTransition(*epoch, why);
      return absl::DeadlineExceededError(why);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  SY_RETURN_IF_ERROR(core_->CommitTransition(*epoch));
  // Committed: the mesh switches at the step the leader announces; wait for
  // every worker to report it.
  const auto switch_deadline = Clock::now() + timeout;
  while (true) {
    std::optional<TransitionProgress> p = core_->Progress(*epoch);
    if (!p.has_value()) {
      // A re-formation (a worker died before every worker switched) dropped
      // it: the re-formed mesh serves its own placement, nothing to wait for.
      return absl::AbortedError(
          absl::StrCat("epoch ", *epoch, " was committed, then dropped by a mesh re-formation"));
    }
    if (p->done) return absl::OkStatus();
    if (stopping_.load()) return absl::AbortedError("the coordinator is shutting down");
    if (Clock::now() > switch_deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("epoch ", *epoch,
                       " was committed, but not every worker reported serving "
                       "it within ",
                       options_.stage_timeout_ms, " ms"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace sy::coordinator

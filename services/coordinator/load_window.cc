#include "services/coordinator/load_window.h"

#include <algorithm>

namespace sy::coordinator {

LoadWindow::LoadWindow(int32_t num_layers, int32_t num_logical, int32_t num_workers,
                       const LoadWindowOptions& options)
    : num_layers_(num_layers),
      num_logical_(num_logical),
      num_workers_(num_workers),
      options_(options) {}

bool LoadWindow::Complete(const Chunk& c) const {
  return std::all_of(c.reported.begin(), c.reported.end(), [](bool r) { return r; });
}

void LoadWindow::Add(const eplb::Placement& p, int32_t worker, const LoadSample& sample,
                     std::chrono::steady_clock::time_point now) {
  if (worker < 0 || worker >= num_workers_ || worker >= p.num_workers || sample.steps <= 0 ||
      static_cast<int32_t>(sample.slot_tokens.size()) != num_layers_ ||
      static_cast<int32_t>(p.layers.size()) != num_layers_) {
    return;  // not from this mesh's shape: ignored
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, fresh] = chunks_.try_emplace(sample.first_step);
  Chunk& c = it->second;
  if (fresh) {
    c.epoch = sample.epoch;
    c.steps = sample.steps;
    c.at = now;
    c.reported.assign(num_workers_, false);
    c.logical.assign(num_layers_, std::vector<double>(num_logical_, 0.0));
    c.worker.assign(num_layers_, std::vector<double>(num_workers_, 0.0));
  } else if (c.epoch != sample.epoch || c.steps != sample.steps || c.reported[worker]) {
    return;  // disagrees with what the other workers reported: ignored
  }
  c.reported[worker] = true;
  const int32_t begin = p.SlotBegin(worker), n = p.NumSlotsOf(worker);
  for (int32_t l = 0; l < num_layers_; ++l) {
    const auto& tokens = sample.slot_tokens[l];
    for (int32_t i = 0; i < n && i < static_cast<int32_t>(tokens.size()); ++i) {
      const int32_t expert = p.phy2log[l][begin + i];
      const auto t = static_cast<double>(std::max<int64_t>(tokens[i], 0));
      if (expert >= 0 && expert < num_logical_) c.logical[l][expert] += t;
      c.worker[l][worker] += t;
    }
  }
  TrimLocked(now);
}

void LoadWindow::TrimLocked(std::chrono::steady_clock::time_point now) const {
  for (auto it = chunks_.begin(); it != chunks_.end();) {
    it = now - it->second.at > options_.window ? chunks_.erase(it) : std::next(it);
  }
  // Keep the newest complete chunks holding at most window_steps (and
  // everything newer than the oldest kept, complete or not).
  int64_t steps = 0;
  auto keep_from = chunks_.end();
  for (auto it = chunks_.rbegin(); it != chunks_.rend(); ++it) {
    if (!Complete(it->second)) continue;
    if (steps > 0 && steps + it->second.steps > options_.window_steps) break;
    steps += it->second.steps;
    keep_from = std::prev(it.base());
  }
  if (keep_from != chunks_.end()) chunks_.erase(chunks_.begin(), keep_from);
}

LoadSnapshot LoadWindow::Get(int64_t serving_epoch,
                             std::chrono::steady_clock::time_point now) const {
  LoadSnapshot s;
  s.logical.assign(num_layers_, std::vector<double>(num_logical_, 0.0));
  std::vector<std::vector<double>> worker(num_layers_, std::vector<double>(num_workers_, 0.0));
  std::lock_guard<std::mutex> lock(mu_);
  TrimLocked(now);
  for (const auto& [first, c] : chunks_) {
    if (!Complete(c)) continue;
    s.steps += c.steps;
    for (int32_t l = 0; l < num_layers_; ++l) {
      for (int32_t x = 0; x < num_logical_; ++x) s.logical[l][x] += c.logical[l][x];
    }
    if (c.epoch != serving_epoch) continue;
    s.serving_steps += c.steps;
    for (int32_t l = 0; l < num_layers_; ++l) {
      for (int32_t w = 0; w < num_workers_; ++w) worker[l][w] += c.worker[l][w];
    }
  }
  if (s.steps > 0) {
    for (auto& row : s.logical) {
      for (double& v : row) v /= static_cast<double>(s.steps);
    }
  }
  if (s.serving_steps > 0) {
    std::vector<double> per_layer(num_layers_, 1.0);
    double sum = 0.0;
    for (int32_t l = 0; l < num_layers_; ++l) {
      const auto& r = worker[l];
      const double max = *std::max_element(r.begin(), r.end());
      double mean = 0.0;
      for (double v : r) mean += v;
      mean /= static_cast<double>(r.size());
      per_layer[l] = max > 0.0 ? mean / max : 1.0;
      sum += per_layer[l];
    }
    s.balancedness = sum / static_cast<double>(num_layers_);
    s.layer_balancedness = std::move(per_layer);
  }
  return s;
}

}  // namespace sy::coordinator

#include "services/moe/expert_copy.h"

#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace sy::moe {
namespace {

constexpr uint32_t kCopyMagic = 0x31575953;  // "SYW1"

std::set<int32_t> HeldBy(const eplb::Placement& p, int32_t moe_index, int32_t worker) {
  return std::set<int32_t>(p.phy2log[moe_index].begin() + p.SlotBegin(worker),
                           p.phy2log[moe_index].begin() + p.SlotEnd(worker));
}

}  // namespace

CopyPlan PlanExpertCopies(const eplb::Placement& current, const eplb::Placement& next,
                          int32_t worker) {
  CopyPlan plan;
  for (size_t l = 0; l < next.layers.size(); ++l) {
    const auto li = static_cast<int32_t>(l);
    std::vector<std::set<int32_t>> now(current.num_workers);
    for (int32_t w = 0; w < current.num_workers; ++w) now[w] = HeldBy(current, li, w);
    for (int32_t w = 0; w < next.num_workers; ++w) {
      for (int32_t x : HeldBy(next, li, w)) {
        if (w < current.num_workers && now[w].count(x)) continue;
        int32_t source = -1;
        for (int32_t v = 0; v < current.num_workers && source < 0; ++v) {
          if (now[v].count(x)) source = v;
        }
        if (source < 0) continue;  // nobody holds it: the worker loads it itself
        const ExpertKey key{next.layers[l], x};
        if (w == worker) plan.receive[source].push_back(key);
        if (source == worker) plan.send[w].push_back(key);
      }
    }
  }
  return plan;
}

absl::StatusOr<std::map<ExpertKey, model::MlpWeights>> CopyExperts(
    const CopyPlan& plan, int64_t epoch, const model::ModelConfig& cfg,
    const std::function<std::shared_ptr<const model::MlpWeights>(const ExpertKey&)>& held,
    transport::Transport& staging, absl::Duration timeout) {
  const int64_t H = cfg.hidden_size, I = cfg.moe_intermediate_size;
  const size_t gu = static_cast<size_t>(2 * I * H), dn = static_cast<size_t>(H * I);
  const size_t per_expert = 8 + (gu + dn) * sizeof(float);
  std::vector<std::vector<uint8_t>> out;
  std::vector<transport::SendItem> sends;
  out.reserve(plan.send.size());
  for (const auto& [to, keys] : plan.send) {
    std::vector<uint8_t>& m = out.emplace_back(8 + keys.size() * per_expert);
    const auto count = static_cast<uint32_t>(keys.size());
    std::memcpy(m.data(), &kCopyMagic, 4);
    std::memcpy(m.data() + 4, &count, 4);
    uint8_t* p = m.data() + 8;
    for (const ExpertKey& k : keys) {
      std::shared_ptr<const model::MlpWeights> w = held(k);
      if (w == nullptr || w->gate_up.data.size() != gu || w->down.data.size() != dn) {
        return absl::NotFoundError(absl::StrCat("this worker does not hold expert ", k.second,
                                                " of layer ", k.first, " to send"));
      }
      std::memcpy(p, &k.first, 4);
      std::memcpy(p + 4, &k.second, 4);
      std::memcpy(p + 8, w->gate_up.data.data(), gu * sizeof(float));
      std::memcpy(p + 8 + gu * sizeof(float), w->down.data.data(), dn * sizeof(float));
      p += per_expert;
    }
    sends.push_back({to, m.data(), m.size()});
  }
  std::vector<int32_t> from;
  for (const auto& [source, keys] : plan.receive) from.push_back(source);
  std::vector<std::vector<uint8_t>> received;
  if (sends.empty() && from.empty()) return std::map<ExpertKey, model::MlpWeights>{};
  // 48-bit tag: the epoch (staging messages never share a transport with steps).
  const uint64_t tag = static_cast<uint64_t>(epoch) & transport::kMaxUserTag;
  SY_RETURN_IF_ERROR(Annotate(staging.Exchange(tag, sends, from, &received, timeout),
                              absl::StrCat("copying experts for placement epoch ", epoch)));
  std::map<ExpertKey, model::MlpWeights> got;
  for (size_t i = 0; i < from.size(); ++i) {
    const std::vector<uint8_t>& m = received[i];
    const std::vector<ExpertKey>& want = plan.receive.at(from[i]);
    uint32_t magic = 0, count = 0;
    if (m.size() >= 8) {
      std::memcpy(&magic, m.data(), 4);
      std::memcpy(&count, m.data() + 4, 4);
    }
    if (magic != kCopyMagic || count != want.size() || m.size() != 8 + count * per_expert) {
      return absl::DataLossError(absl::StrCat("expert copy from worker ", from[i], ": ", m.size(),
                                              " bytes, expected ", want.size(), " experts"));
    }
    const uint8_t* p = m.data() + 8;
    for (uint32_t e = 0; e < count; ++e, p += per_expert) {
      ExpertKey k;
      std::memcpy(&k.first, p, 4);
      std::memcpy(&k.second, p + 4, 4);
      if (k != want[e]) {
        return absl::DataLossError(absl::StrCat("expert copy from worker ", from[i],
                                                ": unexpected expert ", k.second, " of layer ",
                                                k.first));
      }
      model::MlpWeights w;
      w.gate_up.shape = {2 * I, H};
      w.gate_up.data.resize(gu);
      std::memcpy(w.gate_up.data.data(), p + 8, gu * sizeof(float));
      w.down.shape = {H, I};
      w.down.data.resize(dn);
      std::memcpy(w.down.data.data(), p + 8 + gu * sizeof(float), dn * sizeof(float));
      got.emplace(k, std::move(w));
    }
  }
  return got;
}

}  // namespace sy::moe

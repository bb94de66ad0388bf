// The transformers reference cases of tests/data/goldens (see its README),
// as golden_test and gpu_golden_test read them.
#pragma once

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace sy::testing {

struct GoldenPrompt {
  std::vector<int32_t> prompt;
  std::vector<int32_t> greedy;
  std::vector<std::vector<float>> logits;  // [steps, vocab]
  std::vector<float> margins;              // top-1 minus top-2 logit per step
};

inline std::string GoldenDir(const std::string& name) {
  return std::string(SY_SOURCE_DIR) + "/tests/data/goldens/" + name;
}

// The prompts of case `name`; a missing file is a test failure (and none).
inline std::vector<GoldenPrompt> LoadGoldenPrompts(const std::string& name) {
  std::ifstream in(GoldenDir(name) + "/golden.json");
  EXPECT_TRUE(in.good()) << "missing " << GoldenDir(name) << "/golden.json";
  std::vector<GoldenPrompt> out;
  if (!in.good()) return out;
  nlohmann::json j = nlohmann::json::parse(in);
  for (const auto& p : j["prompts"]) {
    GoldenPrompt g;
    g.prompt = p["prompt"].get<std::vector<int32_t>>();
    g.greedy = p["greedy"].get<std::vector<int32_t>>();
    for (const auto& s : p["steps"]) {
      g.logits.push_back(s["logits"].get<std::vector<float>>());
      g.margins.push_back(s["margin"].get<float>());
    }
    out.push_back(std::move(g));
  }
  return out;
}

}  // namespace sy::testing

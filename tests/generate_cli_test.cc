// switchyard-generate as a user runs it: the JSON document on stdout, exit
// codes, error messages on stderr.
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"

namespace {

using ::testing::HasSubstr;

using Result = ::sy::testing::CliResult;

Result RunGenerate(const std::string& args) {
  return ::sy::testing::RunTool("switchyard-generate", args);
}

const std::string kModel = std::string(SY_SOURCE_DIR) + "/tests/data/goldens/qwen3_moe";

TEST(GenerateCliTest, PrintsOneJsonObjectMatchingTheGoldens) {
  Result r = RunGenerate(
      "--model " + kModel +
      " --prompt-ids 1,7,42,100,3 --max-new-tokens 24 --logprobs 5 --prompt-logprobs 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  nlohmann::json j = nlohmann::json::parse(r.out);
  std::ifstream gin(kModel + "/golden.json");
  nlohmann::json golden = nlohmann::json::parse(gin);
  EXPECT_EQ(j["tokens"], golden["prompts"][0]["greedy"]);
  EXPECT_EQ(j["finish_reason"], "length");
  ASSERT_EQ(j["logprobs"].size(), 24u);
  EXPECT_EQ(j["logprobs"][0]["top"].size(), 5u);
  EXPECT_EQ(j["logprobs"][0]["token"], j["tokens"][0]);
  EXPECT_EQ(j["logprobs"][0]["top"][0]["token"], j["tokens"][0]);  // greedy = argmax
  ASSERT_EQ(j["prompt_logprobs"].size(), 5u);
  EXPECT_TRUE(j["prompt_logprobs"][0].is_null());
  EXPECT_EQ(j["prompt_logprobs"][1]["token"], 7);
  EXPECT_EQ(j["prompt_logprobs"][1]["top"].size(), 2u);
  for (const char* key : {"load_ms", "prefill_ms", "decode_ms", "ttft_ms", "total_ms"}) {
    EXPECT_TRUE(j["timings"].contains(key)) << key;
  }
  EXPECT_EQ(j["timings"]["prompt_tokens"], 5);
  EXPECT_EQ(j["timings"]["output_tokens"], 24);
  // Field order as documented.
  EXPECT_EQ(r.out.find("{\"tokens\""), 0u);
  EXPECT_THAT(r.err, HasSubstr("Qwen3MoeForCausalLM"));  // logs go to stderr
}

TEST(GenerateCliTest, SamplingFlagsImplyTemperatureOneAndSeedsReproduce) {
  const std::string args = "--model " + kModel + " --prompt-ids 1,7,42 --max-new-tokens 12";
  Result greedy = RunGenerate(args);
  Result a = RunGenerate(args + " --top-k 50 --seed 11");
  Result b = RunGenerate(args + " --top_k=50 --seed=11");  // abseil spelling too
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  auto tokens = [](const Result& r) { return nlohmann::json::parse(r.out)["tokens"]; };
  EXPECT_EQ(tokens(a), tokens(b));
  EXPECT_NE(tokens(a), tokens(greedy));
  EXPECT_TRUE(nlohmann::json::parse(greedy.out)["logprobs"].is_null());
}

TEST(GenerateCliTest, BadInputExitCodesAndMessages) {
  Result r = RunGenerate("--model " + kModel + " --prompt-ids 1,7,999");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("prompt[2] = 999 is outside the vocabulary"));
  EXPECT_TRUE(r.out.empty());
  r = RunGenerate("--model " + kModel + " --prompt-ids 1,x");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("'x' is not a token id"));
  r = RunGenerate("--model " + kModel);
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--prompt-ids is required"));
  r = RunGenerate("--model /nonexistent --prompt-ids 1");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("/nonexistent/config.json"));
  r = RunGenerate("--model " + kModel + " --prompt-ids 1 --max-new-tokens 0");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("stopping.max_new_tokens"));
  r = RunGenerate("--model " + kModel + " --prompt-ids 1 --kv-block-size 0");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("block_size"));
  // Given values that look like the defaults' "unset" are errors, not unset.
  r = RunGenerate("--model " + kModel + " --prompt-ids 1 --temperature -1");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--temperature must be a number >= 0 (0 = greedy), not '-1'"));
  r = RunGenerate("--model " + kModel + " --prompt-ids 1 --seed -5");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--seed must be an integer >= 0, not '-5'"));
  r = RunGenerate("--model " + kModel + " --prompt-ids 1 --seed=-1");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--seed must be an integer >= 0, not '-1'"));
  r = RunGenerate("--model " + kModel + " --prompt-ids 1 --temperature warm");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--temperature must be a number >= 0"));
  r = RunGenerate("--bogus-flag 1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("bogus_flag"));
}

// The device flags: bad values are usage errors naming the flag; --device
// cuda either runs (a GPU is present: the greedy tokens are the goldens', as
// gpu_golden_test checks in depth) or fails with the reason, never crashes.
TEST(GenerateCliTest, DeviceFlags) {
  Result r = RunGenerate("--model " + kModel + " --prompt-ids 1,7 --device tpu");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--device must be cpu or cuda"));
  r = RunGenerate("--model " + kModel + " --prompt-ids 1,7 --dtype f16");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--dtype must be f32 or bf16"));
  r = RunGenerate("--model " + kModel + " --prompt-ids 1,7 --dtype bf16");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("bf16 is not supported on the CPU"));
  r = RunGenerate("--model " + kModel + " --prompt-ids 1,7 --device cuda --gpu-memory-fraction 2");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.err, HasSubstr("--gpu-memory-fraction"));
  r = RunGenerate("--model " + kModel +
                  " --prompt-ids 1,7,42,100,3 --max-new-tokens 4 --device cuda --dtype f32");
  if (r.exit_code == 0) {
    std::ifstream gin(kModel + "/golden.json");
    nlohmann::json golden = nlohmann::json::parse(gin);
    std::vector<int32_t> want = golden["prompts"][0]["greedy"].get<std::vector<int32_t>>();
    want.resize(4);
    EXPECT_EQ(nlohmann::json::parse(r.out)["tokens"].get<std::vector<int32_t>>(), want);
  } else {
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_THAT(r.err, HasSubstr("--device cuda: "));
    EXPECT_TRUE(r.out.empty());
  }
}

TEST(GenerateCliTest, HelpListsTheFlags) {
  Result r = RunGenerate("--help");
  EXPECT_THAT(r.out + r.err, HasSubstr("max_new_tokens"));
  EXPECT_THAT(r.out + r.err, HasSubstr("prompt_logprobs"));
}

}  // namespace

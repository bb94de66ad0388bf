#include "services/api/convert.h"

#include <cmath>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/api/validate.h"

namespace sy::api {
namespace {

using ::testing::HasSubstr;

engine::GenerationRequest FullRequest() {
  engine::GenerationRequest r;
  r.id = "req-7";
  r.prompt = {1, 7, 42};
  r.sampling.temperature = 0.7f;
  r.sampling.top_k = 40;
  r.sampling.top_p = 0.9f;
  r.sampling.min_p = 0.05f;
  r.sampling.repetition_penalty = 1.1f;
  r.sampling.presence_penalty = 0.5f;
  r.sampling.frequency_penalty = -0.25f;
  r.sampling.has_seed = true;
  r.sampling.seed = 123456789012345ull;
  r.stopping.max_new_tokens = 24;
  r.stopping.min_new_tokens = 2;
  r.stopping.stop_token_ids = {5, 9};
  r.stopping.ignore_eos = true;
  r.logprobs = 5;
  r.prompt_logprobs = 0;
  return r;
}

void ExpectSameRequest(const engine::GenerationRequest& a, const engine::GenerationRequest& b) {
  EXPECT_EQ(a.id, b.id);
  EXPECT_EQ(a.prompt, b.prompt);
  EXPECT_EQ(a.sampling.temperature, b.sampling.temperature);
  EXPECT_EQ(a.sampling.top_k, b.sampling.top_k);
  EXPECT_EQ(a.sampling.top_p, b.sampling.top_p);
  EXPECT_EQ(a.sampling.min_p, b.sampling.min_p);
  EXPECT_EQ(a.sampling.repetition_penalty, b.sampling.repetition_penalty);
  EXPECT_EQ(a.sampling.presence_penalty, b.sampling.presence_penalty);
  EXPECT_EQ(a.sampling.frequency_penalty, b.sampling.frequency_penalty);
  EXPECT_EQ(a.sampling.has_seed, b.sampling.has_seed);
  EXPECT_EQ(a.sampling.seed, b.sampling.seed);
  EXPECT_EQ(a.stopping.max_new_tokens, b.stopping.max_new_tokens);
  EXPECT_EQ(a.stopping.min_new_tokens, b.stopping.min_new_tokens);
  EXPECT_EQ(a.stopping.stop_token_ids, b.stopping.stop_token_ids);
  EXPECT_EQ(a.stopping.ignore_eos, b.stopping.ignore_eos);
  EXPECT_EQ(a.logprobs, b.logprobs);
  EXPECT_EQ(a.prompt_logprobs, b.prompt_logprobs);
}

TEST(ConvertRequest, DefaultsWhenUnset) {
  v1::GenerateRequest proto;
  proto.add_input_ids(3);
  auto r = FromProto(proto);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->id, "");
  EXPECT_EQ(r->prompt, std::vector<int32_t>({3}));
  EXPECT_EQ(r->sampling.temperature, 0.0f);
  EXPECT_EQ(r->sampling.top_k, 0);
  EXPECT_EQ(r->sampling.top_p, 1.0f);
  EXPECT_EQ(r->sampling.min_p, 0.0f);
  EXPECT_EQ(r->sampling.repetition_penalty, 1.0f);
  EXPECT_EQ(r->sampling.presence_penalty, 0.0f);
  EXPECT_EQ(r->sampling.frequency_penalty, 0.0f);
  EXPECT_FALSE(r->sampling.has_seed);
  EXPECT_EQ(r->stopping.max_new_tokens, 16);
  EXPECT_EQ(r->stopping.min_new_tokens, 0);
  EXPECT_TRUE(r->stopping.stop_token_ids.empty());
  EXPECT_FALSE(r->stopping.ignore_eos);
  EXPECT_EQ(r->logprobs, -1);
  EXPECT_EQ(r->prompt_logprobs, -1);
}

TEST(ConvertRequest, SeedZeroIsPresent) {
  v1::GenerateRequest proto;
  proto.mutable_sampling()->set_seed(0);
  auto r = FromProto(proto);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->sampling.has_seed);
  EXPECT_EQ(r->sampling.seed, 0u);
}

TEST(ConvertRequest, ExplicitZeroLogprobsMeansChosenOnly) {
  v1::GenerateRequest proto;
  proto.set_logprobs(0);
  auto r = FromProto(proto);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->logprobs, 0);
  EXPECT_EQ(r->prompt_logprobs, -1);
}

TEST(ConvertRequest, RoundTrip) {
  const engine::GenerationRequest in = FullRequest();
  v1::GenerateRequest proto;
  ToProto(in, &proto);
  EXPECT_TRUE(proto.sampling().has_seed());
  EXPECT_TRUE(proto.has_logprobs());
  auto out = FromProto(proto);
  ASSERT_TRUE(out.ok()) << out.status();
  ExpectSameRequest(in, *out);
}

TEST(ConvertRequest, RoundTripOfDefaultsLeavesOptionalFieldsUnset) {
  engine::GenerationRequest in;
  in.prompt = {4};
  v1::GenerateRequest proto;
  ToProto(in, &proto);
  EXPECT_FALSE(proto.sampling().has_seed());
  EXPECT_FALSE(proto.has_logprobs());
  EXPECT_FALSE(proto.has_prompt_logprobs());
  auto out = FromProto(proto);
  ASSERT_TRUE(out.ok());
  ExpectSameRequest(in, *out);
}

TEST(ConvertRequest, NegativeLogprobsRefused) {
  v1::GenerateRequest proto;
  proto.set_logprobs(-1);
  auto r = FromProto(proto);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("logprobs"));
  v1::GenerateRequest proto2;
  proto2.set_prompt_logprobs(-3);
  auto r2 = FromProto(proto2);
  EXPECT_EQ(r2.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r2.status().message()), HasSubstr("prompt_logprobs"));
}

engine::RequestUpdate FinalUpdate() {
  engine::RequestUpdate u;
  u.id = "req-1";
  u.new_tokens = {11, 12};
  u.new_logprobs = {{11, -0.5f, {{11, -0.5f}, {3, -1.5f}}}, {12, -0.25f, {{12, -0.25f}}}};
  u.prompt_logprobs = std::vector<std::optional<engine::TokenLogprob>>{
      std::nullopt, engine::TokenLogprob{7, -2.0f, {{8, -1.0f}}}};
  u.finish = engine::FinishReason::kStop;
  u.error = "";
  engine::RequestTimings t;
  t.queue_ms = 1.5;
  t.ttft_ms = 2.5;
  t.total_ms = 9.0;
  t.prompt_tokens = 2;
  t.output_tokens = 2;
  u.timings = t;
  return u;
}

TEST(ConvertUpdate, RoundTrip) {
  const engine::RequestUpdate in = FinalUpdate();
  v1::GenerateStreamResponse proto;
  ToProto(in, &proto);
  EXPECT_EQ(proto.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(proto.usage().prompt_tokens(), 2);
  EXPECT_EQ(proto.usage().completion_tokens(), 2);
  ASSERT_EQ(proto.prompt_logprobs_size(), 2);
  EXPECT_FALSE(proto.prompt_logprobs(0).present());
  EXPECT_TRUE(proto.prompt_logprobs(1).present());

  const engine::RequestUpdate out = FromProto(proto);
  EXPECT_EQ(out.id, in.id);
  EXPECT_EQ(out.new_tokens, in.new_tokens);
  ASSERT_EQ(out.new_logprobs.size(), 2u);
  EXPECT_EQ(out.new_logprobs[0].token, 11);
  EXPECT_EQ(out.new_logprobs[0].logprob, -0.5f);
  ASSERT_EQ(out.new_logprobs[0].top.size(), 2u);
  EXPECT_EQ(out.new_logprobs[0].top[1].token, 3);
  EXPECT_EQ(out.new_logprobs[0].top[1].logprob, -1.5f);
  ASSERT_TRUE(out.prompt_logprobs.has_value());
  ASSERT_EQ(out.prompt_logprobs->size(), 2u);
  EXPECT_FALSE((*out.prompt_logprobs)[0].has_value());
  ASSERT_TRUE((*out.prompt_logprobs)[1].has_value());
  EXPECT_EQ((*out.prompt_logprobs)[1]->token, 7);
  EXPECT_EQ((*out.prompt_logprobs)[1]->top[0].token, 8);
  EXPECT_EQ(out.finish, engine::FinishReason::kStop);
  ASSERT_TRUE(out.timings.has_value());
  EXPECT_EQ(out.timings->queue_ms, 1.5);
  EXPECT_EQ(out.timings->ttft_ms, 2.5);
  EXPECT_EQ(out.timings->total_ms, 9.0);
  EXPECT_EQ(out.timings->prompt_tokens, 2);
  EXPECT_EQ(out.timings->output_tokens, 2);
}

TEST(ConvertUpdate, IntermediateMessageHasNoUsageOrTimings) {
  engine::RequestUpdate in;
  in.id = "x";
  in.new_tokens = {4};
  v1::GenerateStreamResponse proto;
  ToProto(in, &proto);
  EXPECT_FALSE(proto.has_usage());
  EXPECT_FALSE(proto.has_timings());
  EXPECT_EQ(proto.prompt_logprobs_size(), 0);
  EXPECT_EQ(proto.finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
  const engine::RequestUpdate out = FromProto(proto);
  EXPECT_FALSE(out.timings.has_value());
  EXPECT_FALSE(out.prompt_logprobs.has_value());
  EXPECT_EQ(out.finish, engine::FinishReason::kNone);
}

TEST(ConvertUpdate, ErrorMessage) {
  engine::RequestUpdate in;
  in.id = "e";
  in.finish = engine::FinishReason::kError;
  in.error = "forward pass failed";
  in.timings = engine::RequestTimings{};
  v1::GenerateStreamResponse proto;
  ToProto(in, &proto);
  EXPECT_EQ(proto.finish_reason(), v1::FINISH_REASON_ERROR);
  EXPECT_EQ(proto.error_message(), "forward pass failed");
  EXPECT_EQ(FromProto(proto).error, "forward pass failed");
}

TEST(ConvertFinishReason, AllValuesRoundTrip) {
  for (auto r :
       {engine::FinishReason::kNone, engine::FinishReason::kLength, engine::FinishReason::kStop,
        engine::FinishReason::kCancelled, engine::FinishReason::kError}) {
    EXPECT_EQ(FromProto(ToProto(r)), r);
  }
}

TEST(FoldStream, CollectsAllMessages) {
  v1::GenerateResponse folded;
  engine::RequestUpdate first;
  first.id = "req-1";
  first.new_tokens = {10};
  first.new_logprobs = {{10, -0.1f, {}}};
  first.prompt_logprobs = std::vector<std::optional<engine::TokenLogprob>>{std::nullopt};
  v1::GenerateStreamResponse part;
  ToProto(first, &part);
  FoldStreamResponse(part, &folded);
  ToProto(FinalUpdate(), &part);
  FoldStreamResponse(part, &folded);

  EXPECT_EQ(folded.request_id(), "req-1");
  EXPECT_THAT(folded.output_ids(), ::testing::ElementsAre(10, 11, 12));
  ASSERT_EQ(folded.logprobs_size(), 3);
  EXPECT_EQ(folded.logprobs(2).token(), 12);
  // The last message's prompt logprobs replace the earlier ones.
  EXPECT_EQ(folded.prompt_logprobs_size(), 2);
  EXPECT_EQ(folded.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(folded.usage().completion_tokens(), 2);
  EXPECT_EQ(folded.timings().total_ms(), 9.0);

  const engine::RequestUpdate whole = UpdateFromResponse(folded);
  EXPECT_EQ(whole.new_tokens, std::vector<int32_t>({10, 11, 12}));
  EXPECT_EQ(whole.new_logprobs.size(), 3u);
  ASSERT_TRUE(whole.prompt_logprobs.has_value());
  EXPECT_EQ(whole.finish, engine::FinishReason::kStop);
  ASSERT_TRUE(whole.timings.has_value());
  EXPECT_EQ(whole.timings->ttft_ms, 2.5);
}

TEST(FoldStream, NoPromptLogprobsStaysUnset) {
  v1::GenerateResponse folded;
  engine::RequestUpdate u;
  u.id = "a";
  u.new_tokens = {1};
  u.finish = engine::FinishReason::kLength;
  u.timings = engine::RequestTimings{};
  v1::GenerateStreamResponse part;
  ToProto(u, &part);
  FoldStreamResponse(part, &folded);
  EXPECT_FALSE(UpdateFromResponse(folded).prompt_logprobs.has_value());
}

TEST(ConvertModelInfo, FromConfigAndLimits) {
  model::ModelConfig cfg;
  cfg.architecture = "Qwen3MoeForCausalLM";
  cfg.family = model::Family::kQwen3Moe;
  cfg.vocab_size = 512;
  cfg.num_layers = 4;
  cfg.num_experts = 16;
  cfg.top_k = 4;
  cfg.hidden_size = 128;
  cfg.eos_token_ids = {2, 3};
  Limits limits{512, 500, 256, 10};
  v1::ModelInfoResponse info;
  ToProto(cfg, limits, &info);
  EXPECT_EQ(info.architecture(), "Qwen3MoeForCausalLM");
  EXPECT_EQ(info.model_type(), std::string(model::FamilyName(model::Family::kQwen3Moe)));
  EXPECT_EQ(info.vocab_size(), 512);
  EXPECT_EQ(info.max_context(), 500);
  EXPECT_EQ(info.max_new_tokens_limit(), 256);
  EXPECT_EQ(info.max_logprobs(), 10);
  EXPECT_THAT(info.eos_token_ids(), ::testing::ElementsAre(2, 3));
  EXPECT_EQ(info.num_layers(), 4);
  EXPECT_EQ(info.num_experts(), 16);
  EXPECT_EQ(info.experts_per_token(), 4);
  EXPECT_EQ(info.hidden_size(), 128);
}

TEST(ConvertStatus, CodesMapBothWays) {
  const std::pair<absl::StatusCode, grpc::StatusCode> pairs[] = {
      {absl::StatusCode::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT},
      {absl::StatusCode::kResourceExhausted, grpc::StatusCode::RESOURCE_EXHAUSTED},
      {absl::StatusCode::kUnavailable, grpc::StatusCode::UNAVAILABLE},
      {absl::StatusCode::kDeadlineExceeded, grpc::StatusCode::DEADLINE_EXCEEDED},
      {absl::StatusCode::kNotFound, grpc::StatusCode::NOT_FOUND},
      {absl::StatusCode::kAlreadyExists, grpc::StatusCode::ALREADY_EXISTS},
      {absl::StatusCode::kCancelled, grpc::StatusCode::CANCELLED},
      {absl::StatusCode::kInternal, grpc::StatusCode::INTERNAL},
      {absl::StatusCode::kUnknown, grpc::StatusCode::UNKNOWN},
      {absl::StatusCode::kFailedPrecondition, grpc::StatusCode::FAILED_PRECONDITION},
      {absl::StatusCode::kUnimplemented, grpc::StatusCode::UNIMPLEMENTED},
      {absl::StatusCode::kAborted, grpc::StatusCode::ABORTED},
      {absl::StatusCode::kOutOfRange, grpc::StatusCode::OUT_OF_RANGE},
      {absl::StatusCode::kPermissionDenied, grpc::StatusCode::PERMISSION_DENIED},
      {absl::StatusCode::kUnauthenticated, grpc::StatusCode::UNAUTHENTICATED},
      {absl::StatusCode::kDataLoss, grpc::StatusCode::DATA_LOSS},
  };
  for (const auto& [a, g] : pairs) {
    const grpc::Status gs = ToGrpcStatus(absl::Status(a, "some message"));
    EXPECT_EQ(gs.error_code(), g);
    EXPECT_EQ(gs.error_message(), "some message");
    const absl::Status back = FromGrpcStatus(gs);
    EXPECT_EQ(back.code(), a);
    EXPECT_EQ(std::string(back.message()), "some message");
  }
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

// --- ValidateRequest ---------------------------------------------------------

Limits TestLimits() { return Limits{512, 64, 32, 5}; }

engine::GenerationRequest ValidRequest() {
  engine::GenerationRequest r;
  r.prompt = {1, 2, 3};
  r.stopping.max_new_tokens = 8;
  return r;
}

void ExpectInvalid(const engine::GenerationRequest& r, const std::string& needle) {
  const absl::Status st = ValidateRequest(r, TestLimits());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << needle;
  EXPECT_THAT(std::string(st.message()), HasSubstr(needle));
}

TEST(ValidateRequest, AcceptsValid) {
  EXPECT_TRUE(ValidateRequest(ValidRequest(), TestLimits()).ok());
  engine::GenerationRequest r = ValidRequest();
  r.prompt.assign(32, 7);
  r.stopping.max_new_tokens = 32;  // exactly the context
  r.logprobs = 5;
  r.prompt_logprobs = 0;
  r.stopping.stop_token_ids = {0, 511};
  EXPECT_TRUE(ValidateRequest(r, TestLimits()).ok());
}

TEST(ValidateRequest, EmptyPrompt) {
  engine::GenerationRequest r = ValidRequest();
  r.prompt.clear();
  ExpectInvalid(r, "input_ids must not be empty");
}

TEST(ValidateRequest, TokenOutsideVocabulary) {
  engine::GenerationRequest r = ValidRequest();
  r.prompt = {1, 2, 3, 900};
  ExpectInvalid(r, "input_ids[3] = 900 is outside the vocabulary [0, 512)");
  r.prompt = {-1};
  ExpectInvalid(r, "input_ids[0] = -1 is outside the vocabulary [0, 512)");
  r.prompt = {512};
  ExpectInvalid(r, "input_ids[0] = 512");
}

TEST(ValidateRequest, PromptLongerThanContext) {
  engine::GenerationRequest r = ValidRequest();
  r.prompt.assign(64, 1);
  ExpectInvalid(r, "input_ids (64 tokens)");
  r.prompt.assign(100, 1);
  ExpectInvalid(r, "context limit of 64 tokens");
}

TEST(ValidateRequest, PromptPlusMaxNewTokensOverContext) {
  engine::GenerationRequest r = ValidRequest();
  r.prompt.assign(40, 1);
  r.stopping.max_new_tokens = 25;
  ExpectInvalid(r, "stopping.max_new_tokens (25) + input_ids (40 tokens) exceeds the context");
}

TEST(ValidateRequest, MaxNewTokens) {
  engine::GenerationRequest r = ValidRequest();
  r.stopping.max_new_tokens = 0;
  ExpectInvalid(r, "stopping.max_new_tokens (0) must be >= 1");
  r.stopping.max_new_tokens = 33;
  ExpectInvalid(r, "stopping.max_new_tokens (33) exceeds the limit of 32");
}

TEST(ValidateRequest, MinNewTokens) {
  engine::GenerationRequest r = ValidRequest();
  r.stopping.min_new_tokens = -1;
  ExpectInvalid(r, "stopping.min_new_tokens");
  r.stopping.min_new_tokens = 9;
  ExpectInvalid(r, "stopping.min_new_tokens (9) must be in [0, max_new_tokens]");
}

TEST(ValidateRequest, StopTokenOutsideVocabulary) {
  engine::GenerationRequest r = ValidRequest();
  r.stopping.stop_token_ids = {4, 512};
  ExpectInvalid(r, "stopping.stop_token_ids[1] = 512 is outside the vocabulary");
}

TEST(ValidateRequest, Logprobs) {
  engine::GenerationRequest r = ValidRequest();
  r.logprobs = 6;
  ExpectInvalid(r, "logprobs (6) must be in [0, 5]");
  r.logprobs = -2;
  ExpectInvalid(r, "logprobs (-2)");
  r = ValidRequest();
  r.prompt_logprobs = 6;
  ExpectInvalid(r, "prompt_logprobs (6) must be in [0, 5]");
}

TEST(ValidateRequest, Sampling) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    void (*set)(engine::SamplingParams*);
    const char* needle;
  };
  const Case cases[] = {
      {[](engine::SamplingParams* p) { p->temperature = -0.5f; }, "sampling.temperature"},
      {[](engine::SamplingParams* p) { p->top_k = -1; }, "sampling.top_k"},
      {[](engine::SamplingParams* p) { p->top_p = 0.0f; }, "sampling.top_p must be in (0, 1]"},
      {[](engine::SamplingParams* p) { p->top_p = 1.5f; }, "sampling.top_p must be in (0, 1]"},
      {[](engine::SamplingParams* p) { p->min_p = 2.0f; }, "sampling.min_p"},
      {[](engine::SamplingParams* p) { p->repetition_penalty = 0.0f; },
       "sampling.repetition_penalty"},
      {[](engine::SamplingParams* p) { p->presence_penalty = 3.0f; }, "sampling.presence_penalty"},
      {[](engine::SamplingParams* p) { p->frequency_penalty = -2.5f; },
       "sampling.frequency_penalty"},
  };
  for (const Case& c : cases) {
    engine::GenerationRequest r = ValidRequest();
    c.set(&r.sampling);
    ExpectInvalid(r, c.needle);
  }
  engine::GenerationRequest r = ValidRequest();
  r.sampling.temperature = nan;
  ExpectInvalid(r, "sampling.temperature");
}

TEST(ValidateRequest, ProtoDefaultsAreValid) {
  v1::GenerateRequest proto;
  proto.add_input_ids(1);
  auto r = FromProto(proto);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(ValidateRequest(*r, TestLimits()).ok());
}

}  // namespace
}  // namespace sy::api

#include "services/api/convert.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace sy::api {
namespace {

void TopToProto(const engine::TopLogprob& t, v1::TopLogprob* proto) {
  proto->set_token(t.token);
  proto->set_logprob(t.logprob);
}

}  // namespace

absl::StatusOr<engine::GenerationRequest> FromProto(const v1::GenerateRequest& proto) {
  engine::GenerationRequest r;
  r.id = proto.request_id();
  r.prompt.assign(proto.input_ids().begin(), proto.input_ids().end());

  const v1::SamplingParams& s = proto.sampling();
  engine::SamplingParams& sp = r.sampling;
  if (s.has_temperature()) sp.temperature = s.temperature();
  if (s.has_top_k()) sp.top_k = s.top_k();
  if (s.has_top_p()) sp.top_p = s.top_p();
  if (s.has_min_p()) sp.min_p = s.min_p();
  if (s.has_repetition_penalty()) sp.repetition_penalty = s.repetition_penalty();
  if (s.has_presence_penalty()) sp.presence_penalty = s.presence_penalty();
  if (s.has_frequency_penalty()) sp.frequency_penalty = s.frequency_penalty();
  if (s.has_seed()) {
    sp.has_seed = true;
    sp.seed = s.seed();
  }

  const v1::StoppingParams& st = proto.stopping();
  if (st.has_max_new_tokens()) r.stopping.max_new_tokens = st.max_new_tokens();
  r.stopping.min_new_tokens = st.min_new_tokens();
  r.stopping.stop_token_ids.assign(st.stop_token_ids().begin(), st.stop_token_ids().end());
  r.stopping.ignore_eos = st.ignore_eos();

  // -1 is the engine's "none"; an explicit negative value in the proto would
  // silently mean "none", so it is refused instead.
  if (proto.has_logprobs()) {
    if (proto.logprobs() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("logprobs (", proto.logprobs(), ") must be >= 0 (leave it unset for none)"));
    }
    r.logprobs = proto.logprobs();
  }
  if (proto.has_prompt_logprobs()) {
    if (proto.prompt_logprobs() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("prompt_logprobs (", proto.prompt_logprobs(),
                                                     ") must be >= 0 (leave it unset for none)"));
    }
    r.prompt_logprobs = proto.prompt_logprobs();
  }
  return r;
}

void ToProto(const engine::GenerationRequest& r, v1::GenerateRequest* proto) {
  proto->Clear();
  proto->set_request_id(r.id);
  proto->mutable_input_ids()->Add(r.prompt.begin(), r.prompt.end());
  v1::SamplingParams* s = proto->mutable_sampling();
  s->set_temperature(r.sampling.temperature);
  s->set_top_k(r.sampling.top_k);
  s->set_top_p(r.sampling.top_p);
  s->set_min_p(r.sampling.min_p);
  s->set_repetition_penalty(r.sampling.repetition_penalty);
  s->set_presence_penalty(r.sampling.presence_penalty);
  s->set_frequency_penalty(r.sampling.frequency_penalty);
  if (r.sampling.has_seed) s->set_seed(r.sampling.seed);
  v1::StoppingParams* st = proto->mutable_stopping();
  st->set_max_new_tokens(r.stopping.max_new_tokens);
  st->set_min_new_tokens(r.stopping.min_new_tokens);
  st->mutable_stop_token_ids()->Add(r.stopping.stop_token_ids.begin(),
                                    r.stopping.stop_token_ids.end());
  st->set_ignore_eos(r.stopping.ignore_eos);
  if (r.logprobs >= 0) proto->set_logprobs(r.logprobs);
  if (r.prompt_logprobs >= 0) proto->set_prompt_logprobs(r.prompt_logprobs);
}

v1::FinishReason ToProto(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kNone:
      return v1::FINISH_REASON_UNSPECIFIED;
    case engine::FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case engine::FinishReason::kCancelled:
      return v1::FINISH_REASON_CANCELLED;
    case engine::FinishReason::kError:
      return v1::FINISH_REASON_ERROR;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

engine::FinishReason FromProto(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH:
      return engine::FinishReason::kLength;
    case v1::FINISH_REASON_STOP:
      return engine::FinishReason::kStop;
    case v1::FINISH_REASON_CANCELLED:
      return engine::FinishReason::kCancelled;
    case v1::FINISH_REASON_ERROR:
      return engine::FinishReason::kError;
    default:
      return engine::FinishReason::kNone;
  }
}

void ToProto(const engine::TokenLogprob& lp, v1::TokenLogprob* proto) {
  proto->set_token(lp.token);
  proto->set_logprob(lp.logprob);
  for (const auto& t : lp.top) TopToProto(t, proto->add_top());
}

engine::TokenLogprob FromProto(const v1::TokenLogprob& proto) {
  engine::TokenLogprob lp;
  lp.token = proto.token();
  lp.logprob = proto.logprob();
  lp.top.reserve(proto.top_size());
  for (const auto& t : proto.top()) lp.top.push_back({t.token(), t.logprob()});
  return lp;
}

namespace {

void PromptLogprobsToProto(const std::vector<std::optional<engine::TokenLogprob>>& in,
                           google::protobuf::RepeatedPtrField<v1::PromptLogprob>* out) {
  for (const auto& lp : in) {
    v1::PromptLogprob* p = out->Add();
    p->set_present(lp.has_value());
    if (lp.has_value()) ToProto(*lp, p->mutable_logprob());
  }
}

std::vector<std::optional<engine::TokenLogprob>> PromptLogprobsFromProto(
    const google::protobuf::RepeatedPtrField<v1::PromptLogprob>& in) {
  std::vector<std::optional<engine::TokenLogprob>> out;
  out.reserve(in.size());
  for (const auto& p : in) {
    if (p.present()) {
      out.emplace_back(FromProto(p.logprob()));
    } else {
      out.emplace_back(std::nullopt);
    }
  }
  return out;
}

void TimingsToProto(const engine::RequestTimings& t, v1::Usage* usage, v1::Timings* timings) {
  usage->set_prompt_tokens(static_cast<int32_t>(t.prompt_tokens));
  usage->set_completion_tokens(static_cast<int32_t>(t.output_tokens));
  timings->set_queue_ms(t.queue_ms);
  timings->set_ttft_ms(t.ttft_ms);
  timings->set_total_ms(t.total_ms);
}

engine::RequestTimings TimingsFromProto(const v1::Usage& usage, const v1::Timings& timings) {
  engine::RequestTimings t;
  t.queue_ms = timings.queue_ms();
  t.ttft_ms = timings.ttft_ms();
  t.total_ms = timings.total_ms();
  t.prompt_tokens = usage.prompt_tokens();
  t.output_tokens = usage.completion_tokens();
  return t;
}

}  // namespace

void ToProto(const engine::RequestUpdate& u, v1::GenerateStreamResponse* proto) {
  proto->Clear();
  proto->set_request_id(u.id);
  proto->mutable_output_ids()->Add(u.new_tokens.begin(), u.new_tokens.end());
  for (const auto& lp : u.new_logprobs) ToProto(lp, proto->add_logprobs());
  if (u.prompt_logprobs.has_value()) {
    PromptLogprobsToProto(*u.prompt_logprobs, proto->mutable_prompt_logprobs());
  }
  proto->set_finish_reason(ToProto(u.finish));
  if (u.timings.has_value()) {
    TimingsToProto(*u.timings, proto->mutable_usage(), proto->mutable_timings());
  }
  proto->set_error_message(u.error);
}

engine::RequestUpdate FromProto(const v1::GenerateStreamResponse& proto) {
  engine::RequestUpdate u;
  u.id = proto.request_id();
  u.new_tokens.assign(proto.output_ids().begin(), proto.output_ids().end());
  u.new_logprobs.reserve(proto.logprobs_size());
  for (const auto& lp : proto.logprobs()) u.new_logprobs.push_back(FromProto(lp));
  if (proto.prompt_logprobs_size() > 0) {
    u.prompt_logprobs = PromptLogprobsFromProto(proto.prompt_logprobs());
  }
  u.finish = FromProto(proto.finish_reason());
  u.error = proto.error_message();
  if (proto.has_usage() || proto.has_timings()) {
    u.timings = TimingsFromProto(proto.usage(), proto.timings());
  }
  return u;
}

void FoldStreamResponse(const v1::GenerateStreamResponse& part, v1::GenerateResponse* out) {
  if (!part.request_id().empty()) out->set_request_id(part.request_id());
  out->mutable_output_ids()->MergeFrom(part.output_ids());
  out->mutable_logprobs()->MergeFrom(part.logprobs());
  if (part.prompt_logprobs_size() > 0) *out->mutable_prompt_logprobs() = part.prompt_logprobs();
  if (part.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    out->set_finish_reason(part.finish_reason());
  }
  if (part.has_usage()) *out->mutable_usage() = part.usage();
  if (part.has_timings()) *out->mutable_timings() = part.timings();
  if (!part.error_message().empty()) out->set_error_message(part.error_message());
}

engine::RequestUpdate UpdateFromResponse(const v1::GenerateResponse& r) {
  engine::RequestUpdate u;
  u.id = r.request_id();
  u.new_tokens.assign(r.output_ids().begin(), r.output_ids().end());
  u.new_logprobs.reserve(r.logprobs_size());
  for (const auto& lp : r.logprobs()) u.new_logprobs.push_back(FromProto(lp));
  if (r.prompt_logprobs_size() > 0)
    u.prompt_logprobs = PromptLogprobsFromProto(r.prompt_logprobs());
  u.finish = FromProto(r.finish_reason());
  u.error = r.error_message();
  if (r.has_usage() || r.has_timings()) u.timings = TimingsFromProto(r.usage(), r.timings());
  return u;
}

void ToProto(const model::ModelConfig& config, const Limits& limits, v1::ModelInfoResponse* proto) {
  proto->Clear();
  proto->set_architecture(config.architecture);
  proto->set_model_type(std::string(model::FamilyName(config.family)));
  proto->set_vocab_size(static_cast<int32_t>(config.vocab_size));
  proto->set_max_context(static_cast<int32_t>(limits.max_context));
  proto->set_max_new_tokens_limit(static_cast<int32_t>(limits.max_new_tokens_limit));
  proto->set_max_logprobs(limits.max_logprobs);
  proto->mutable_eos_token_ids()->Add(config.eos_token_ids.begin(), config.eos_token_ids.end());
  proto->set_num_layers(static_cast<int32_t>(config.num_layers));
  proto->set_num_experts(static_cast<int32_t>(config.num_experts));
  proto->set_experts_per_token(static_cast<int32_t>(config.top_k));
  proto->set_hidden_size(static_cast<int32_t>(config.hidden_size));
}

}  // namespace sy::api

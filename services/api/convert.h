// The converter layer of the public API: switchyard.v1 protos <-> engine
// domain types, and absl::Status <-> grpc::Status, in one place. Services and
// the client use these; core classes see only the domain types.
//
// Defaults for unset optional fields are the engine's: temperature 0, top_k 0,
// top_p 1, min_p 0, penalties off, max_new_tokens 16, logprobs and
// prompt_logprobs -1 (none); a present seed sets has_seed. Pure functions; any
// thread.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/engine.h"
#include "model/config.h"
#include "services/api/grpc_status.h"
#include "services/api/validate.h"
#include "switchyard/v1/generate.pb.h"

namespace sy::api {

namespace v1 = ::switchyard::v1;

// Requests. FromProto fails only on what the engine type cannot express (an
// explicit negative logprobs / prompt_logprobs); range checks are
// ValidateRequest's job.
absl::StatusOr<engine::GenerationRequest> FromProto(const v1::GenerateRequest& proto);
void ToProto(const engine::GenerationRequest& request, v1::GenerateRequest* proto);

// Metadata key (value "1") on a router's AttentionWorker/Generate call that
// carries GenerationRequest::dedup, which the public proto does not have.
inline constexpr char kDedupMetadata[] = "sy-dedup";

// Finish reasons. kNone <-> FINISH_REASON_UNSPECIFIED.
v1::FinishReason ToProto(engine::FinishReason reason);
engine::FinishReason FromProto(v1::FinishReason reason);

// Logprobs.
void ToProto(const engine::TokenLogprob& lp, v1::TokenLogprob* proto);
engine::TokenLogprob FromProto(const v1::TokenLogprob& proto);

// Stream messages. Usage and timings are written only when the update
// carries timings (the last message); FromProto sets timings when the message
// has usage or timings.
void ToProto(const engine::RequestUpdate& update, v1::GenerateStreamResponse* proto);
engine::RequestUpdate FromProto(const v1::GenerateStreamResponse& proto);

// Folds one stream message into the unary response: tokens and logprobs are
// appended; prompt logprobs, finish reason, usage, timings and error are
// taken from the message that carries them.
void FoldStreamResponse(const v1::GenerateStreamResponse& part, v1::GenerateResponse* out);
// A whole unary response as one engine update (prompt_logprobs is set only
// when the response has them), e.g. for tools::GenerationResult::Apply.
engine::RequestUpdate UpdateFromResponse(const v1::GenerateResponse& response);

// ModelInfo from the model's config and the limits the router enforces.
void ToProto(const model::ModelConfig& config, const Limits& limits, v1::ModelInfoResponse* proto);

}  // namespace sy::api

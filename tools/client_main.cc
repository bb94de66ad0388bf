// switchyard-client: talks to a Switchyard router's public gRPC API.
//
//   switchyard-client generate --addr HOST:PORT --prompt-ids 1,7,42 --max-new-tokens 24
//       [--stream] [--deadline-ms N] [sampling/stopping/logprob flags of switchyard-generate]
//   switchyard-client info --addr HOST:PORT
//   switchyard-client health --addr HOST:PORT [--service NAME]
//
// `generate` prints the same JSON object as switchyard-generate (timings are
// the server's); with --stream, one JSON line per stream message:
// {"tokens": [new], "logprobs": [...] | null, "finish_reason": null | "length" | ...},
// plus "prompt_logprobs" on the message that carries them and "timings" on
// the last. `info` prints ModelInfo as JSON; `health` prints the serving
// status and exits 0 only when SERVING.
//
// Exit status: 0 on success; 2 for a bad flag or an INVALID_ARGUMENT from the
// server; 1 for any other error (the message goes to stderr).
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "services/api/convert.h"
#include "services/cluster/process.h"
#include "switchyard/v1/generate.grpc.pb.h"
#include "tools/generate_output.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "Router address, host:port");
ABSL_FLAG(int64_t, deadline_ms, 0, "Deadline of the call in milliseconds; 0 = none");
ABSL_FLAG(bool, stream, false, "generate: print one JSON line per stream message");
ABSL_FLAG(std::string, request_id, "", "generate: request id; empty = assigned by the router");
ABSL_FLAG(std::string, prompt_ids, "", "generate: comma-separated prompt token ids (required)");
ABSL_FLAG(int32_t, max_new_tokens, 16, "Stop after this many generated tokens");
ABSL_FLAG(int32_t, min_new_tokens, 0, "Do not stop on EOS/stop tokens before this many tokens");
ABSL_FLAG(std::string, stop_token_ids, "", "Comma-separated extra stop token ids");
ABSL_FLAG(bool, ignore_eos, false, "Do not stop on the model's EOS token");
ABSL_FLAG(double, temperature, 0.0, "Sampling temperature; 0 = greedy");
ABSL_FLAG(int32_t, top_k, 0, "Keep the k most likely tokens; 0 = off");
ABSL_FLAG(double, top_p, 1.0, "Nucleus sampling mass; 1 = off");
ABSL_FLAG(double, min_p, 0.0, "Drop tokens below min_p x the top probability; 0 = off");
ABSL_FLAG(double, repetition_penalty, 1.0, "Penalty for tokens already in prompt/output; 1 = off");
ABSL_FLAG(double, presence_penalty, 0.0, "Subtracted from logits of tokens already generated");
ABSL_FLAG(double, frequency_penalty, 0.0, "Subtracted per occurrence in the output");
ABSL_FLAG(int64_t, seed, -1, "Sampling seed (reproducible per request); -1 = random");
ABSL_FLAG(int32_t, logprobs, -1, "Report logprob of each chosen token plus top-N; -1 = off");
ABSL_FLAG(int32_t, prompt_logprobs, -1, "Report logprobs of prompt tokens plus top-N; -1 = off");
ABSL_FLAG(std::string, service, "", "health: service name; empty = the whole server");

namespace {

namespace v1 = ::switchyard::v1;
using json = nlohmann::ordered_json;

constexpr const char* kProgram = "switchyard-client";

bool ParseIds(const std::string& text, const char* flag, std::vector<int32_t>* out) {
  out->clear();
  if (text.empty()) return true;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v)) {
      std::cerr << kProgram << ": --" << flag << ": '" << part << "' is not a token id\n";
      return false;
    }
    out->push_back(v);
  }
  return true;
}

void SetDeadline(grpc::ClientContext* context) {
  const int64_t ms = absl::GetFlag(FLAGS_deadline_ms);
  if (ms > 0)
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
}

// Reports a failed call; returns the exit status.
int RpcError(const grpc::Status& status) {
  std::cerr << kProgram << ": " << status.error_message() << " (gRPC code "
            << static_cast<int>(status.error_code()) << ")\n";
  return status.error_code() == grpc::StatusCode::INVALID_ARGUMENT ? 2 : 1;
}

json TimingsJson(const sy::engine::RequestTimings& t) {
  return {{"queue_ms", t.queue_ms},
          {"ttft_ms", t.ttft_ms},
          {"total_ms", t.total_ms},
          {"prompt_tokens", t.prompt_tokens},
          {"output_tokens", t.output_tokens}};
}

// One --stream line.
json StreamLineJson(const sy::engine::RequestUpdate& u, bool want_logprobs) {
  json line;
  line["tokens"] = u.new_tokens;
  if (want_logprobs) {
    json lps = json::array();
    for (const auto& lp : u.new_logprobs) lps.push_back(sy::tools::LogprobJson(lp));
    line["logprobs"] = lps;
  } else {
    line["logprobs"] = nullptr;
  }
  line["finish_reason"] = u.finish == sy::engine::FinishReason::kNone
                              ? json(nullptr)
                              : json(std::string(sy::engine::FinishReasonName(u.finish)));
  if (u.prompt_logprobs.has_value()) {
    json pls = json::array();
    for (const auto& lp : *u.prompt_logprobs) {
      pls.push_back(lp.has_value() ? sy::tools::LogprobJson(*lp) : json(nullptr));
    }
    line["prompt_logprobs"] = pls;
  }
  if (!u.error.empty()) line["error"] = u.error;
  if (u.timings.has_value()) line["timings"] = TimingsJson(*u.timings);
  return line;
}

int Generate(v1::Generate::Stub* stub) {
  sy::engine::GenerationRequest req;
  req.id = absl::GetFlag(FLAGS_request_id);
  if (!ParseIds(absl::GetFlag(FLAGS_prompt_ids), "prompt_ids", &req.prompt) ||
      !ParseIds(absl::GetFlag(FLAGS_stop_token_ids), "stop_token_ids",
                &req.stopping.stop_token_ids)) {
    return 2;
  }
  if (req.prompt.empty()) {
    std::cerr << kProgram << ": --prompt-ids is required\n";
    return 2;
  }
  req.stopping.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  req.stopping.min_new_tokens = absl::GetFlag(FLAGS_min_new_tokens);
  req.stopping.ignore_eos = absl::GetFlag(FLAGS_ignore_eos);
  auto& sp = req.sampling;
  sp.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  sp.top_k = absl::GetFlag(FLAGS_top_k);
  sp.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  sp.min_p = static_cast<float>(absl::GetFlag(FLAGS_min_p));
  sp.repetition_penalty = static_cast<float>(absl::GetFlag(FLAGS_repetition_penalty));
  sp.presence_penalty = static_cast<float>(absl::GetFlag(FLAGS_presence_penalty));
  sp.frequency_penalty = static_cast<float>(absl::GetFlag(FLAGS_frequency_penalty));
  if (absl::GetFlag(FLAGS_seed) >= 0) {
    sp.has_seed = true;
    sp.seed = static_cast<uint64_t>(absl::GetFlag(FLAGS_seed));
  }
  req.logprobs = absl::GetFlag(FLAGS_logprobs);
  req.prompt_logprobs = absl::GetFlag(FLAGS_prompt_logprobs);
  if (req.logprobs < -1 || req.prompt_logprobs < -1) {
    std::cerr << kProgram << ": --logprobs and --prompt-logprobs must be >= -1\n";
    return 2;
  }
  v1::GenerateRequest request;
  sy::api::ToProto(req, &request);
  const bool want_logprobs = req.logprobs >= 0;

  grpc::ClientContext context;
  SetDeadline(&context);
  if (absl::GetFlag(FLAGS_stream)) {
    auto reader = stub->GenerateStream(&context, request);
    v1::GenerateStreamResponse message;
    bool failed = false;
    while (reader->Read(&message)) {
      const sy::engine::RequestUpdate u = sy::api::FromProto(message);
      failed = failed || u.finish == sy::engine::FinishReason::kError;
      std::cout << StreamLineJson(u, want_logprobs).dump() << std::endl;
    }
    const grpc::Status status = reader->Finish();
    if (!status.ok()) return RpcError(status);
    return failed ? 1 : 0;
  }
  v1::GenerateResponse response;
  const grpc::Status status = stub->Generate(&context, request, &response);
  if (!status.ok()) return RpcError(status);
  sy::tools::GenerationResult result;
  result.want_logprobs = want_logprobs;
  result.Apply(sy::api::UpdateFromResponse(response));
  std::cout << sy::tools::ResultJson(result, json::object()).dump() << std::endl;
  return result.finish == sy::engine::FinishReason::kError ? 1 : 0;
}

int Info(v1::Generate::Stub* stub) {
  grpc::ClientContext context;
  SetDeadline(&context);
  v1::ModelInfoResponse info;
  const grpc::Status status = stub->ModelInfo(&context, v1::ModelInfoRequest(), &info);
  if (!status.ok()) return RpcError(status);
  json out;
  out["architecture"] = info.architecture();
  out["model_type"] = info.model_type();
  out["vocab_size"] = info.vocab_size();
  out["max_context"] = info.max_context();
  out["max_new_tokens_limit"] = info.max_new_tokens_limit();
  out["max_logprobs"] = info.max_logprobs();
  out["eos_token_ids"] =
      std::vector<int32_t>(info.eos_token_ids().begin(), info.eos_token_ids().end());
  out["num_layers"] = info.num_layers();
  out["num_experts"] = info.num_experts();
  out["experts_per_token"] = info.experts_per_token();
  out["hidden_size"] = info.hidden_size();
  std::cout << out.dump() << std::endl;
  return 0;
}

int Health(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  SetDeadline(&context);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(absl::GetFlag(FLAGS_service));
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return RpcError(status);
  std::cout << grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status())
            << std::endl;
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Client of the Switchyard Generate API.\n"
      "  switchyard-client generate --addr HOST:PORT --prompt-ids 1,7,42 [--stream]\n"
      "  switchyard-client info --addr HOST:PORT\n"
      "  switchyard-client health --addr HOST:PORT [--service NAME]");
  std::vector<std::string> arg_storage;
  std::vector<char*> args = sy::cluster::DashesToUnderscores(argc, argv, &arg_storage);
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() != 2) {
    std::cerr << kProgram << ": expected one command: generate, info or health (--help)\n";
    return 2;
  }
  const std::string command = positional[1];
  auto channel = grpc::CreateChannel(absl::GetFlag(FLAGS_addr), grpc::InsecureChannelCredentials());
  if (command == "generate") {
    auto stub = v1::Generate::NewStub(channel);
    return Generate(stub.get());
  }
  if (command == "info") {
    auto stub = v1::Generate::NewStub(channel);
    return Info(stub.get());
  }
  if (command == "health") return Health(channel);
  std::cerr << kProgram << ": unknown command '" << command
            << "'; expected generate, info or health\n";
  return 2;
}

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
#include "tools/connect_flags.h"
#include "tools/generate_output.h"
#include "tools/request_flags.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "Router address, host:port");
ABSL_FLAG(int64_t, deadline_ms, 0, "Deadline of the call in milliseconds; 0 = none");
ABSL_FLAG(bool, stream, false, "generate: print one JSON line per stream message");
ABSL_FLAG(std::string, request_id, "", "generate: request id; empty = assigned by the router");
ABSL_FLAG(std::string, service, "", "health: service name; empty = the whole server");

namespace {

namespace v1 = ::switchyard::v1;
using json = nlohmann::ordered_json;

constexpr const char* kProgram = "switchyard-client";

// The TLS and API-key flags' connection (set in main).
sy::tools::Connection connection;

// Every call's deadline and API key.
void SetDeadline(grpc::ClientContext* context) {
  connection.Authorize(context);
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
  if (!sy::tools::RequestFromFlags(kProgram, &req)) return 2;
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
  sy::cluster::ListAllFlagsInHelp();
  std::vector<char*> args = sy::cluster::DashesToUnderscores(argc, argv, &arg_storage);
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() != 2) {
    std::cerr << kProgram << ": expected one command: generate, info or health (--help)\n";
    return 2;
  }
  const std::string command = positional[1];
  if (!sy::tools::ConnectFromFlagsOrSay(kProgram, absl::GetFlag(FLAGS_addr), &connection)) {
    return 2;
  }
  const std::shared_ptr<grpc::Channel> channel = connection.channel;
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

// switchyard-router: the public Generate API of a Switchyard cluster. Validates
// and admits requests, and forwards each to the attention worker with the
// least outstanding work.
//
//   switchyard-router --listen 127.0.0.1:50051 --model DIR
//       --attention-workers 127.0.0.1:50061,127.0.0.1:50062 --max-queue 256
//
// Runs until SIGINT or SIGTERM. Logs go to stderr.
#include <signal.h>

#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "services/router/router_server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "host:port to serve the Generate API on");
ABSL_FLAG(std::string, model, "", "Model directory with config.json (required)");
ABSL_FLAG(std::string, attention_workers, "", "Comma-separated host:port of the attention workers");
ABSL_FLAG(int64_t, max_queue, 256, "Requests in flight at most; beyond: RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, max_model_len, 0, "Context limit in tokens; 0 = max_position_embeddings");
ABSL_FLAG(int64_t, max_new_tokens_limit, 4096, "Largest max_new_tokens a request may ask for");
ABSL_FLAG(int32_t, max_logprobs, 20, "Largest top-N for logprobs and prompt_logprobs");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warning or error");

namespace {

// Accepts --flag-name as well as abseil's --flag_name spelling.
std::vector<char*> DashesToUnderscores(int argc, char** argv, std::vector<std::string>* storage) {
  storage->reserve(argc);
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i > 0 && arg.rfind("--", 0) == 0) {
      const size_t end = std::min(arg.find('='), arg.size());
      for (size_t j = 2; j < end; ++j) {
        if (arg[j] == '-') arg[j] = '_';
      }
    }
    storage->push_back(std::move(arg));
  }
  std::vector<char*> out;
  for (auto& s : *storage) out.push_back(s.data());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves the Switchyard Generate API and forwards requests to attention workers.\n"
      "  switchyard-router --listen 127.0.0.1:50051 --model DIR "
      "--attention-workers HOST:PORT,...");
  std::vector<std::string> arg_storage;
  std::vector<char*> args = DashesToUnderscores(argc, argv, &arg_storage);
  absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  sy::LogLevel level;
  if (!sy::ParseLogLevel(absl::GetFlag(FLAGS_log_level), &level)) {
    std::cerr << "switchyard-router: --log_level must be debug, info, warning or error\n";
    return 2;
  }
  sy::SetMinLogLevel(level);

  sy::router::RouterOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.max_queue = absl::GetFlag(FLAGS_max_queue);
  options.max_context = absl::GetFlag(FLAGS_max_model_len);
  options.max_new_tokens_limit = absl::GetFlag(FLAGS_max_new_tokens_limit);
  options.max_logprobs = absl::GetFlag(FLAGS_max_logprobs);
  options.attention_workers =
      absl::StrSplit(absl::GetFlag(FLAGS_attention_workers), ',', absl::SkipWhitespace());
  if (options.model_dir.empty()) {
    std::cerr << "switchyard-router: --model is required\n";
    return 2;
  }

  // Block the shutdown signals before gRPC starts its threads (they inherit
  // the mask), then wait for one on this thread.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = sy::router::RouterServer::Create(options);
  if (!server.ok()) {
    std::cerr << "switchyard-router: " << server.status().message() << "\n";
    return server.status().code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  SY_LOG(INFO) << "switchyard-router listening on " << (*server)->address();
  int sig = 0;
  sigwait(&signals, &sig);
  SY_LOG(INFO) << "switchyard-router: signal " << sig << ", shutting down";
  (*server)->Shutdown();
  return 0;
}

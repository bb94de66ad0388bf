// Closed-loop load generator for a Switchyard router's GenerateStream API.
//
//   build/bin/switchyard-loadgen --addr HOST:PORT --concurrency N --duration-s T
//       [--prompt-len P --prompt-len-max Pmax] [--max-new-tokens M --max-new-tokens-max Mmax]
//       [--vocab V] [--seed S] [--warmup-s W] [--temperature X] [--channels C] [--json]
//
// N workers each keep one GenerateStream call in flight (gRPC callback API)
// and start the next request as soon as the previous one finishes; after a
// failed request a worker waits first (10 ms, doubling up to 1 s, back to
// none after a success), so a refusing server (a full queue, no workers) is
// not hammered. Prompts are
// random token ids in [0, vocab) (vocab from ModelInfo unless --vocab is
// given) of a length drawn uniformly from [P, Pmax]; max_new_tokens is drawn
// from [M, Mmax] and ignore_eos is set, so every successful request returns
// exactly that many tokens.
//
// The run lasts W + T seconds: the first W seconds are warm-up, the figures
// cover the T seconds after it. A request counts when it finishes inside that
// window; calls still in flight at the end are cancelled and not counted.
// Per request: TTFT (call start -> first message carrying output tokens),
// TPOT ((last token time - first token time) / (tokens - 1), requests of two
// or more tokens), end-to-end latency (call start -> final status). Failed
// calls are counted by gRPC status code (a stream that ends OK with
// finish_reason error or cancelled counts as FINISH_REASON_ERROR /
// FINISH_REASON_CANCELLED) and stay out of the latency figures.
//
// Prints the command line, then the figures; with --json also one JSON object
// on the last line. Exit status: 0; 1 when no request completed, more than
// half of the finished requests failed, or the router could not be reached;
// 2 for a bad flag value or a stray argument (abseil itself exits 1 on an
// unknown flag).
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "services/api/convert.h"
#include "services/cluster/process.h"
#include "switchyard/v1/generate.grpc.pb.h"
#include "tools/connect_flags.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "Router address, host:port");
ABSL_FLAG(int32_t, concurrency, 1, "Number of streams kept in flight");
ABSL_FLAG(double, duration_s, 10.0, "Measured seconds (after the warm-up)");
ABSL_FLAG(double, warmup_s, 0.0, "Seconds of load before measuring starts");
ABSL_FLAG(int32_t, prompt_len, 128, "Shortest prompt, tokens");
ABSL_FLAG(int32_t, prompt_len_max, 0, "Longest prompt, tokens; 0 = --prompt-len");
ABSL_FLAG(int32_t, max_new_tokens, 64, "Fewest generated tokens per request");
ABSL_FLAG(int32_t, max_new_tokens_max, 0,
          "Most generated tokens per request; 0 = --max-new-tokens");
ABSL_FLAG(int32_t, vocab, 0, "Prompt token ids are drawn from [0, vocab); 0 = ask ModelInfo");
ABSL_FLAG(uint64_t, seed, 0, "Seed of the prompt and length draws");
ABSL_FLAG(double, temperature, 0.0, "Sampling temperature; 0 = greedy");
ABSL_FLAG(int32_t, channels, 1, "gRPC channels (connections) the streams are spread over");
ABSL_FLAG(double, connect_timeout_s, 10.0, "Give up when the router is not reachable by then");
ABSL_FLAG(bool, json, false, "Also print the figures as one JSON object on the last line");

namespace {

namespace v1 = ::switchyard::v1;
using Clock = std::chrono::steady_clock;
using json = nlohmann::ordered_json;

constexpr const char* kProgram = "switchyard-loadgen";

struct Options {
  std::string addr;
  int concurrency = 1;
  double duration_s = 0;
  double warmup_s = 0;
  int prompt_min = 0;
  int prompt_max = 0;
  int new_min = 0;
  int new_max = 0;
  int vocab = 0;
  uint64_t seed = 0;
  double temperature = 0;
  int channels = 1;
  double connect_timeout_s = 0;
  bool json = false;
};

// What one finished call reports.
struct RequestResult {
  Clock::time_point end;
  std::string error;  // empty = success; else the status code's name
  std::string error_message;
  int prompt_tokens = 0;
  int requested_tokens = 0;
  int tokens = 0;
  double ttft_ms = 0;
  double tpot_ms = 0;  // valid when tokens >= 2
  double latency_ms = 0;
};

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

class LoadGen;

class Worker;

// One GenerateStream call; deletes itself when done.
class Call final : public grpc::ClientReadReactor<v1::GenerateStreamResponse> {
 public:
  Call(Worker* worker, v1::GenerateRequest request)
      : worker_(worker), request_(std::move(request)) {}

  grpc::ClientContext* context() { return &context_; }

  void Start(v1::Generate::Stub* stub);

  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  Worker* const worker_;
  grpc::ClientContext context_;
  const v1::GenerateRequest request_;
  v1::GenerateStreamResponse response_;
  Clock::time_point start_;
  Clock::time_point first_token_;
  Clock::time_point last_token_;
  int tokens_ = 0;
  v1::FinishReason finish_ = v1::FINISH_REASON_UNSPECIFIED;
  std::string finish_error_;
};

// Shared state of a run: options, the measurement window, the results.
class LoadGen {
 public:
  explicit LoadGen(const Options& options) : options_(options) {}

  const Options& options() const { return options_; }
  bool stopping() const { return stopping_.load(std::memory_order_acquire); }

  // Tokens that arrived inside the measurement window (finished or not).
  void CountStreamed(int tokens, Clock::time_point now) {
    if (now >= measure_start_ && !stopping()) streamed_tokens_.fetch_add(tokens);
  }

  void Record(RequestResult r) {
    std::lock_guard<std::mutex> lock(mu_);
    results_.push_back(std::move(r));
  }

  void WorkerIdle() {
    std::lock_guard<std::mutex> lock(mu_);
    --active_;
    idle_cv_.notify_all();
  }

  // Starts `w`'s next call after `delay`, on the scheduler thread (never on
  // a gRPC callback thread).
  void StartLater(Worker* w, Clock::duration delay) {
    std::lock_guard<std::mutex> lock(mu_);
    delayed_.emplace(Clock::now() + delay, w);
    delayed_cv_.notify_all();
  }

  // Runs the load until the window ends and every call has finished.
  void Run(const std::vector<std::unique_ptr<v1::Generate::Stub>>& stubs);

  // Prints the figures; returns the exit status.
  int Report(const std::string& command, const v1::ModelInfoResponse* info);

 private:
  const Options options_;
  std::atomic<bool> stopping_{false};
  Clock::time_point start_;
  Clock::time_point measure_start_;
  Clock::time_point stop_;
  std::atomic<int64_t> streamed_tokens_{0};
  int cancelled_at_end_ = 0;

  void SchedulerLoop();

  std::mutex mu_;
  std::condition_variable idle_cv_;
  int active_ = 0;
  std::vector<RequestResult> results_;
  std::condition_variable delayed_cv_;
  std::multimap<Clock::time_point, Worker*> delayed_;  // guarded by mu_
};

// Keeps one call in flight until the run stops.
class Worker {
 public:
  Worker(LoadGen* lg, v1::Generate::Stub* stub, uint64_t seed) : lg_(lg), stub_(stub), rng_(seed) {}

  // Starts the first call.
  void Start() {
    Call* call = NewCall();
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_ = call;
    }
    call->Start(stub_);
  }

  // Starts the next call now, or goes idle once the run is stopping.
  void StartNext() {
    Call* next = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!lg_->stopping()) next = NewCall();
      current_ = next;
    }
    if (next != nullptr) {
      next->Start(stub_);
    } else {
      lg_->WorkerIdle();
    }
  }

  // Cancels the call in flight, if any; returns whether there was one. Calls
  // made after LoadGen::stopping() turned true are never started.
  bool Cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    if (current_ == nullptr) return false;
    current_->context()->TryCancel();
    return true;
  }

  // From Call::OnDone: records the result and starts the next call. `call`
  // must not be touched afterwards (it is deleted here).
  void Done(Call* call, RequestResult result) {
    const bool failed = !result.error.empty();
    lg_->Record(std::move(result));
    backoff_ = failed ? std::clamp(2 * backoff_, std::chrono::milliseconds(10),
                                   std::chrono::milliseconds(1000))
                      : std::chrono::milliseconds(0);
    if (failed) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        current_ = nullptr;
      }
      delete call;
      lg_->StartLater(this, backoff_);
      return;
    }
    Call* next = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // The stop flag is read under mu_: LoadGen sets it before cancelling
      // through Cancel(), so a call made here is either cancelled there or
      // not made at all.
      if (!lg_->stopping()) next = NewCall();
      current_ = next;
    }
    delete call;
    if (next != nullptr) {
      next->Start(stub_);
    } else {
      lg_->WorkerIdle();
    }
  }

  LoadGen* loadgen() { return lg_; }

 private:
  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  Call* NewCall() {
    const Options& o = lg_->options();
    v1::GenerateRequest request;
    const int prompt_len = Uniform(o.prompt_min, o.prompt_max);
    std::uniform_int_distribution<int32_t> token(0, o.vocab - 1);
    request.mutable_input_ids()->Reserve(prompt_len);
    for (int i = 0; i < prompt_len; ++i) request.add_input_ids(token(rng_));
    request.mutable_stopping()->set_max_new_tokens(Uniform(o.new_min, o.new_max));
    request.mutable_stopping()->set_ignore_eos(true);
    if (o.temperature > 0) {
      request.mutable_sampling()->set_temperature(static_cast<float>(o.temperature));
    }
    return new Call(this, std::move(request));
  }

  LoadGen* const lg_;
  v1::Generate::Stub* const stub_;
  std::mt19937_64 rng_;  // only touched under mu_ or before Start()
  std::mutex mu_;
  Call* current_ = nullptr;
  std::chrono::milliseconds backoff_{0};  // gRPC callback threads, one call at a time
};

void LoadGen::SchedulerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (delayed_.empty()) {
      if (stopping() && active_ == 0) return;
      delayed_cv_.wait_for(lock, std::chrono::milliseconds(50));
      continue;
    }
    const auto due = delayed_.begin()->first;
    if (!stopping() && Clock::now() < due) {
      delayed_cv_.wait_until(lock, due);
      continue;
    }
    Worker* w = delayed_.begin()->second;
    delayed_.erase(delayed_.begin());
    lock.unlock();
    w->StartNext();  // goes idle when stopping
    lock.lock();
  }
}

// The API key of --api-key-file / $SWITCHYARD_API_KEY (set in main).
sy::tools::Connection* api_key_holder = nullptr;

void Call::Start(v1::Generate::Stub* stub) {
  start_ = Clock::now();
  if (api_key_holder != nullptr) api_key_holder->Authorize(&context_);
  stub->async()->GenerateStream(&context_, &request_, this);
  StartRead(&response_);
  StartCall();
}

void Call::OnReadDone(bool ok) {
  if (!ok) return;  // end of stream; OnDone follows
  const Clock::time_point now = Clock::now();
  const int n = response_.output_ids_size();
  if (n > 0) {
    if (tokens_ == 0) first_token_ = now;
    last_token_ = now;
    tokens_ += n;
    worker_->loadgen()->CountStreamed(n, now);
  }
  if (response_.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    finish_ = response_.finish_reason();
    finish_error_ = response_.error_message();
  }
  StartRead(&response_);
}

void Call::OnDone(const grpc::Status& status) {
  RequestResult r;
  r.end = Clock::now();
  r.prompt_tokens = request_.input_ids_size();
  r.requested_tokens = request_.stopping().max_new_tokens();
  r.tokens = tokens_;
  if (!status.ok()) {
    r.error = sy::api::GrpcCodeName(status.error_code());
    r.error_message = status.error_message();
  } else if (finish_ == v1::FINISH_REASON_ERROR) {
    r.error = "FINISH_REASON_ERROR";
    r.error_message = finish_error_;
  } else if (finish_ == v1::FINISH_REASON_CANCELLED) {
    r.error = "FINISH_REASON_CANCELLED";
    r.error_message = finish_error_;
  } else if (tokens_ == 0) {
    r.error = "NO_TOKENS";
    r.error_message = "the stream ended without output tokens";
  } else {
    r.ttft_ms = Ms(first_token_ - start_);
    r.tpot_ms = tokens_ >= 2 ? Ms(last_token_ - first_token_) / (tokens_ - 1) : 0;
    r.latency_ms = Ms(r.end - start_);
  }
  worker_->Done(this, std::move(r));
}

void LoadGen::Run(const std::vector<std::unique_ptr<v1::Generate::Stub>>& stubs) {
  std::vector<std::unique_ptr<Worker>> workers;
  std::seed_seq base{static_cast<uint32_t>(options_.seed),
                     static_cast<uint32_t>(options_.seed >> 32)};
  std::vector<uint64_t> seeds(options_.concurrency);
  {
    std::vector<uint32_t> raw(2 * options_.concurrency);
    base.generate(raw.begin(), raw.end());
    for (int i = 0; i < options_.concurrency; ++i) {
      seeds[i] = (uint64_t{raw[2 * i]} << 32) | raw[2 * i + 1];
    }
  }
  for (int i = 0; i < options_.concurrency; ++i) {
    workers.push_back(std::make_unique<Worker>(this, stubs[i % stubs.size()].get(), seeds[i]));
  }
  start_ = Clock::now();
  measure_start_ = start_ + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(options_.warmup_s));
  const Clock::time_point end =
      measure_start_ + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(options_.duration_s));
  {
    std::lock_guard<std::mutex> lock(mu_);
    active_ = options_.concurrency;
  }
  std::thread scheduler([this] { SchedulerLoop(); });
  for (auto& w : workers) w->Start();
  std::this_thread::sleep_until(end);
  stop_ = Clock::now();
  stopping_.store(true, std::memory_order_release);
  for (auto& w : workers) cancelled_at_end_ += w->Cancel() ? 1 : 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    delayed_cv_.notify_all();  // waiting workers go idle now
  }
  {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [this] { return active_ == 0; });
    delayed_cv_.notify_all();
  }
  scheduler.join();
}

struct Percentiles {
  std::optional<double> p50, p90, p99;
};

// Linear interpolation between the closest ranks.
std::optional<double> Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return std::nullopt;
  const double pos = q * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

Percentiles Summarize(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return {Percentile(values, 0.50), Percentile(values, 0.90), Percentile(values, 0.99)};
}

std::string Fixed(std::optional<double> v) {
  return v.has_value() ? absl::StrFormat("%.2f", *v) : std::string("n/a");
}

json PercentilesJson(const Percentiles& p) {
  auto v = [](std::optional<double> x) { return x.has_value() ? json(*x) : json(nullptr); };
  return {{"p50", v(p.p50)}, {"p90", v(p.p90)}, {"p99", v(p.p99)}};
}

int LoadGen::Report(const std::string& command, const v1::ModelInfoResponse* info) {
  std::vector<double> ttft, tpot, latency;
  int64_t completed = 0, output_tokens = 0, input_tokens = 0, length_mismatches = 0;
  int64_t errors = 0, warmup_requests = 0;
  std::map<std::string, int64_t> errors_by_code;
  std::map<std::string, std::string> first_message;
  for (const RequestResult& r : results_) {
    if (r.end > stop_) continue;  // cancelled at the end (or raced with it)
    if (r.end < measure_start_) {
      ++warmup_requests;
      continue;
    }
    if (!r.error.empty()) {
      ++errors;
      ++errors_by_code[r.error];
      first_message.emplace(r.error, r.error_message);
      continue;
    }
    ++completed;
    output_tokens += r.tokens;
    input_tokens += r.prompt_tokens;
    if (r.tokens != r.requested_tokens) ++length_mismatches;
    ttft.push_back(r.ttft_ms);
    if (r.tokens >= 2) tpot.push_back(r.tpot_ms);
    latency.push_back(r.latency_ms);
  }
  const double window_s = std::chrono::duration<double>(stop_ - measure_start_).count();
  const Percentiles ttft_p = Summarize(ttft);
  const Percentiles tpot_p = Summarize(tpot);
  const Percentiles latency_p = Summarize(latency);
  const double streamed = static_cast<double>(streamed_tokens_.load());

  const Options& o = options_;
  std::printf("target %s", o.addr.c_str());
  if (info != nullptr) {
    std::printf(" (%s, vocab %d, max context %d)", info->model_type().c_str(), info->vocab_size(),
                info->max_context());
  }
  std::printf(
      "\nconcurrency %d, measured %.2f s after %.2f s warm-up, prompt %d-%d tokens, "
      "max_new_tokens %d-%d, vocab %d, temperature %g, seed %llu, channels %d\n",
      o.concurrency, window_s, o.warmup_s, o.prompt_min, o.prompt_max, o.new_min, o.new_max,
      o.vocab, o.temperature, static_cast<unsigned long long>(o.seed), o.channels);
  std::printf("requests completed:    %lld\n", static_cast<long long>(completed));
  std::printf("requests/s:            %.3f\n", completed / window_s);
  std::printf("output tokens/s:       %.2f  (streamed, incl. unfinished: %.2f)\n",
              output_tokens / window_s, streamed / window_s);
  std::printf("input tokens/s:        %.2f\n", input_tokens / window_s);
  auto line = [](const char* name, const Percentiles& p, size_t n) {
    std::printf("%-22s p50 %s  p90 %s  p99 %s  (n=%zu)\n", name, Fixed(p.p50).c_str(),
                Fixed(p.p90).c_str(), Fixed(p.p99).c_str(), n);
  };
  line("TTFT ms:", ttft_p, ttft.size());
  line("TPOT ms:", tpot_p, tpot.size());
  line("latency ms:", latency_p, latency.size());
  std::vector<std::string> parts;
  for (const auto& [code, n] : errors_by_code) parts.push_back(absl::StrCat(code, " ", n));
  std::printf("errors:                %lld%s%s\n", static_cast<long long>(errors),
              parts.empty() ? "" : "  ", absl::StrJoin(parts, ", ").c_str());
  std::printf("cancelled at end: %d, finished during warm-up: %lld, wrong length: %lld\n",
              cancelled_at_end_, static_cast<long long>(warmup_requests),
              static_cast<long long>(length_mismatches));
  for (const auto& [code, message] : first_message) {
    std::fprintf(stderr, "%s: first %s: %s\n", kProgram, code.c_str(), message.c_str());
  }

  if (o.json) {
    json out;
    out["command"] = command;
    out["addr"] = o.addr;
    out["concurrency"] = o.concurrency;
    out["duration_s"] = window_s;
    out["warmup_s"] = o.warmup_s;
    out["prompt_len"] = {o.prompt_min, o.prompt_max};
    out["max_new_tokens"] = {o.new_min, o.new_max};
    out["vocab"] = o.vocab;
    out["temperature"] = o.temperature;
    out["seed"] = o.seed;
    out["channels"] = o.channels;
    out["requests_completed"] = completed;
    out["requests_per_s"] = completed / window_s;
    out["output_tokens_per_s"] = output_tokens / window_s;
    out["streamed_output_tokens_per_s"] = streamed / window_s;
    out["input_tokens_per_s"] = input_tokens / window_s;
    out["ttft_ms"] = PercentilesJson(ttft_p);
    out["tpot_ms"] = PercentilesJson(tpot_p);
    out["latency_ms"] = PercentilesJson(latency_p);
    out["errors"] = errors;
    json by_code = json::object();
    for (const auto& [code, n] : errors_by_code) by_code[code] = n;
    out["errors_by_code"] = by_code;
    out["cancelled_at_end"] = cancelled_at_end_;
    out["finished_during_warmup"] = warmup_requests;
    out["wrong_length"] = length_mismatches;
    std::printf("%s\n", out.dump().c_str());
  }
  std::fflush(stdout);

  if (completed == 0) {
    std::fprintf(stderr, "%s: no request completed\n", kProgram);
    return 1;
  }
  if (2 * errors > completed + errors) {
    std::fprintf(stderr, "%s: %lld of %lld requests failed\n", kProgram,
                 static_cast<long long>(errors), static_cast<long long>(completed + errors));
    return 1;
  }
  return 0;
}

// Reads and checks the flags; prints why and returns nullopt when one is bad.
std::optional<Options> ReadOptions() {
  Options o;
  o.addr = absl::GetFlag(FLAGS_addr);
  o.concurrency = absl::GetFlag(FLAGS_concurrency);
  o.duration_s = absl::GetFlag(FLAGS_duration_s);
  o.warmup_s = absl::GetFlag(FLAGS_warmup_s);
  o.prompt_min = absl::GetFlag(FLAGS_prompt_len);
  o.prompt_max = absl::GetFlag(FLAGS_prompt_len_max);
  if (o.prompt_max == 0) o.prompt_max = o.prompt_min;
  o.new_min = absl::GetFlag(FLAGS_max_new_tokens);
  o.new_max = absl::GetFlag(FLAGS_max_new_tokens_max);
  if (o.new_max == 0) o.new_max = o.new_min;
  o.vocab = absl::GetFlag(FLAGS_vocab);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.temperature = absl::GetFlag(FLAGS_temperature);
  o.channels = absl::GetFlag(FLAGS_channels);
  o.connect_timeout_s = absl::GetFlag(FLAGS_connect_timeout_s);
  o.json = absl::GetFlag(FLAGS_json);
  std::string bad;
  if (o.addr.empty()) {
    bad = "--addr is required";
  } else if (o.concurrency < 1 || o.concurrency > 65536) {
    bad = "--concurrency must be in [1, 65536]";
  } else if (!(o.duration_s > 0) || o.duration_s > 1e6) {
    bad = "--duration-s must be > 0";
  } else if (!(o.warmup_s >= 0) || o.warmup_s > 1e6) {
    bad = "--warmup-s must be >= 0";
  } else if (o.prompt_min < 1 || o.prompt_max < o.prompt_min) {
    bad = "--prompt-len must be >= 1 and --prompt-len-max >= --prompt-len";
  } else if (o.new_min < 1 || o.new_max < o.new_min) {
    bad = "--max-new-tokens must be >= 1 and --max-new-tokens-max >= --max-new-tokens";
  } else if (o.vocab < 0) {
    bad = "--vocab must be >= 0";
  } else if (!(o.temperature >= 0)) {
    bad = "--temperature must be >= 0";
  } else if (o.channels < 1 || o.channels > 1024) {
    bad = "--channels must be in [1, 1024]";
  } else if (!(o.connect_timeout_s > 0)) {
    bad = "--connect-timeout-s must be > 0";
  }
  if (!bad.empty()) {
    std::fprintf(stderr, "%s: %s\n", kProgram, bad.c_str());
    return std::nullopt;
  }
  o.channels = std::min(o.channels, o.concurrency);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Closed-loop load generator for a Switchyard router.\n"
      "  switchyard-loadgen --addr HOST:PORT --concurrency N --duration-s T [--warmup-s W]\n"
      "      [--prompt-len P --prompt-len-max Pmax] [--max-new-tokens M --max-new-tokens-max "
      "Mmax]\n"
      "      [--vocab V] [--seed S] [--temperature X] [--channels C] [--json]");
  std::vector<std::string> arg_storage;
  sy::cluster::ListAllFlagsInHelp();
  std::vector<char*> args = sy::cluster::DashesToUnderscores(argc, argv, &arg_storage);
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() != 1) {
    std::fprintf(stderr, "%s: unexpected argument '%s' (--help)\n", kProgram, positional[1]);
    return 2;
  }
  std::optional<Options> options = ReadOptions();
  if (!options.has_value()) return 2;

  const std::string command = absl::StrJoin(std::vector<std::string>(argv, argv + argc), " ");
  std::printf("command: %s\n", command.c_str());
  std::fflush(stdout);

  // Separate channels get separate connections (a local subchannel pool each).
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<v1::Generate::Stub>> stubs;
  const auto connect_deadline = std::chrono::system_clock::now() +
                                std::chrono::duration_cast<std::chrono::system_clock::duration>(
                                    std::chrono::duration<double>(options->connect_timeout_s));
  sy::tools::Connection connection;
  for (int i = 0; i < options->channels; ++i) {
    grpc::ChannelArguments channel_args;
    channel_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    if (!sy::tools::ConnectFromFlagsOrSay(kProgram, options->addr, &connection, channel_args)) {
      return 2;
    }
    api_key_holder = &connection;
    channels.push_back(connection.channel);
    if (!channels.back()->WaitForConnected(connect_deadline)) {
      std::fprintf(stderr, "%s: cannot connect to %s\n", kProgram, options->addr.c_str());
      return 1;
    }
    stubs.push_back(v1::Generate::NewStub(channels.back()));
  }

  std::optional<v1::ModelInfoResponse> info;
  if (options->vocab == 0) {
    grpc::ClientContext context;
    context.set_deadline(connect_deadline);
    connection.Authorize(&context);
    info.emplace();
    const grpc::Status status = stubs[0]->ModelInfo(&context, v1::ModelInfoRequest(), &*info);
    if (!status.ok()) {
      std::fprintf(stderr, "%s: ModelInfo: %s (%s)\n", kProgram, status.error_message().c_str(),
                   sy::api::GrpcCodeName(status.error_code()));
      return 1;
    }
    if (info->vocab_size() < 1) {
      std::fprintf(stderr, "%s: ModelInfo reports vocab_size %d; pass --vocab\n", kProgram,
                   info->vocab_size());
      return 1;
    }
    options->vocab = info->vocab_size();
    if (options->prompt_max + options->new_max > info->max_context() ||
        options->new_max > info->max_new_tokens_limit()) {
      std::fprintf(stderr,
                   "%s: warning: prompt %d + max_new_tokens %d exceed the model's limits "
                   "(max context %d, max_new_tokens %d); such requests will fail\n",
                   kProgram, options->prompt_max, options->new_max, info->max_context(),
                   info->max_new_tokens_limit());
    }
  }

  LoadGen loadgen(*options);
  loadgen.Run(stubs);
  return loadgen.Report(command, info.has_value() ? &*info : nullptr);
}

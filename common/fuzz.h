// Randomized robustness testing with a fixed budget (the fuzz tests of the
// parsers and of the APIs): a shared run configuration, a bounded loop and a
// byte-string mutator.
//
// Environment: SY_FUZZ_SECONDS (default 20) is each test binary's wall-time
// budget, SY_FUZZ_ITERATIONS caps each loop, SY_FUZZ_SEED (printed)
// reproduces a run.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace sy::fuzz {

inline double EnvDouble(const char* name, double fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  char* end = nullptr;
  const double parsed = std::strtod(value, &end);
  return (end != value && parsed >= 0) ? parsed : fallback;
}

inline uint64_t EnvU64(const char* name, uint64_t fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long parsed = std::strtoull(value, &end, 0);
  return end != value ? static_cast<uint64_t>(parsed) : fallback;
}

struct Config {
  double total_seconds = EnvDouble("SY_FUZZ_SECONDS", 20.0);
  uint64_t seed = 0;
  uint64_t max_iterations = EnvU64("SY_FUZZ_ITERATIONS", 2'000'000);
};

// Read once per binary; `default_seed` applies when SY_FUZZ_SEED is unset.
inline const Config& GetConfig(uint64_t default_seed) {
  static const Config* config = [default_seed] {
    auto* c = new Config();
    c->seed = EnvU64("SY_FUZZ_SEED", default_seed);
    std::printf(
        "[fuzz] seed=%llu (set SY_FUZZ_SEED to reproduce), budget=%.1fs, "
        "max_iterations=%llu per loop\n",
        static_cast<unsigned long long>(c->seed), c->total_seconds,
        static_cast<unsigned long long>(c->max_iterations));
    return c;
  }();
  return *config;
}

// Runs `body(iteration)` until the iteration cap, `fraction` of the time
// budget, or `stop()` (e.g. the first test failure, rather than repeating a
// failing input a million times); prints and returns the iterations run.
template <typename Body, typename Stop>
uint64_t RunBounded(const Config& config, const char* label, double fraction, Body body,
                    Stop stop) {
  using Clock = std::chrono::steady_clock;
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(config.total_seconds * fraction));
  uint64_t iterations = 0;
  while (iterations < config.max_iterations && Clock::now() < deadline) {
    body(iterations);
    ++iterations;
    if (stop()) break;
  }
  std::printf("[fuzz] %s: %llu iterations\n", label, static_cast<unsigned long long>(iterations));
  std::fflush(stdout);
  return iterations;
}

// How many inputs a loop's code accepted and refused (both must happen for
// the mutations to be exploring the format's edge).
struct Tally {
  uint64_t accepted = 0;
  uint64_t refused = 0;
  void Count(bool ok) { ++(ok ? accepted : refused); }
  void Print(const char* label) const {
    std::printf("[fuzz] %s: %llu accepted, %llu refused\n", label,
                static_cast<unsigned long long>(accepted),
                static_cast<unsigned long long>(refused));
  }
};

inline size_t Pick(std::mt19937_64& rng, size_t n) { return n == 0 ? 0 : rng() % n; }

// What a mutator may insert: single characters that matter to the format
// (`punctuation`), whole fragments (tokens, keys, odd values) and extreme
// numbers to put in place of a number.
struct Dictionary {
  std::string punctuation;
  std::vector<std::string> fragments;
  std::vector<std::string> numbers;
};

// Applies one random mutation to `s`, keeping it at most `max_bytes` long.
inline void MutateOnce(std::string& s, std::mt19937_64& rng, const Dictionary& dict,
                       size_t max_bytes) {
  switch (Pick(rng, 10)) {
    case 0:  // flip one bit
      if (!s.empty()) s[Pick(rng, s.size())] ^= static_cast<char>(1u << Pick(rng, 8));
      break;
    case 1:  // overwrite a byte, biased toward the format's punctuation
      if (!s.empty()) {
        s[Pick(rng, s.size())] = (rng() & 1) && !dict.punctuation.empty()
                                     ? dict.punctuation[Pick(rng, dict.punctuation.size())]
                                     : static_cast<char>(rng());
      }
      break;
    case 2: {  // insert random bytes
      const size_t pos = Pick(rng, s.size() + 1);
      std::string bytes(1 + Pick(rng, 4), '\0');
      for (char& c : bytes) c = static_cast<char>(rng());
      s.insert(pos, bytes);
      break;
    }
    case 3:  // delete a range
      if (!s.empty()) {
        const size_t pos = Pick(rng, s.size());
        s.erase(pos, 1 + Pick(rng, std::min<size_t>(16, s.size() - pos)));
      }
      break;
    case 4:  // truncate
      s.resize(Pick(rng, s.size() + 1));
      break;
    case 5: {  // swap two digits, or change one
      std::vector<size_t> digits;
      for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] >= '0' && s[i] <= '9') digits.push_back(i);
      }
      if (digits.empty()) break;
      const size_t a = digits[Pick(rng, digits.size())];
      if (digits.size() > 1 && (rng() & 1)) {
        std::swap(s[a], s[digits[Pick(rng, digits.size())]]);
      } else {
        s[a] = static_cast<char>('0' + Pick(rng, 10));
      }
      break;
    }
    case 6: {  // replace a number with an extreme one
      if (dict.numbers.empty()) break;
      std::vector<std::pair<size_t, size_t>> numbers;  // [start, end)
      for (size_t i = 0; i < s.size();) {
        if (s[i] >= '0' && s[i] <= '9') {
          size_t j = i;
          while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
          numbers.emplace_back(i, j);
          i = j;
        } else {
          ++i;
        }
      }
      if (numbers.empty()) break;
      const auto [begin, end] = numbers[Pick(rng, numbers.size())];
      s.replace(begin, end - begin, dict.numbers[Pick(rng, dict.numbers.size())]);
      break;
    }
    case 7:  // insert a fragment
      if (!dict.fragments.empty()) {
        s.insert(Pick(rng, s.size() + 1), dict.fragments[Pick(rng, dict.fragments.size())]);
      }
      break;
    case 8: {  // duplicate a range somewhere else
      if (s.empty()) break;
      const size_t pos = Pick(rng, s.size());
      const std::string piece = s.substr(pos, 1 + Pick(rng, 32));
      s.insert(Pick(rng, s.size() + 1), piece);
      break;
    }
    case 9: {  // swap two bytes (reorders tokens)
      if (s.size() < 2) break;
      std::swap(s[Pick(rng, s.size())], s[Pick(rng, s.size())]);
      break;
    }
  }
  if (s.size() > max_bytes) s.resize(max_bytes);
}

// One to four mutations.
inline void Mutate(std::string& s, std::mt19937_64& rng, const Dictionary& dict, size_t max_bytes) {
  const size_t rounds = 1 + Pick(rng, 4);
  for (size_t i = 0; i < rounds; ++i) MutateOnce(s, rng, dict, max_bytes);
}

}  // namespace sy::fuzz

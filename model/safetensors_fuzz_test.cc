// Randomized robustness test for the safetensors reader.
//
// Starting from a handful of valid files, each iteration applies a few random
// mutations (bit flips, insertions, deletions, truncation, digit swaps, huge
// numbers, JSON fragments) and feeds the result to ParseSafetensorsHeader or
// SafetensorsFile::Open. Every call must either succeed with a self-consistent
// tensor table or fail with a non-empty message naming the source; a crash,
// hang or sanitizer report is a failure. A third loop generates structured
// headers whose validity is known in advance and compares the parser's
// verdict against that oracle.
//
// Bounded by iterations and by wall time: SY_FUZZ_SECONDS (default 20) is the
// budget for the whole binary, SY_FUZZ_ITERATIONS caps each loop, and
// SY_FUZZ_SEED (printed) reproduces a run.
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include "common/fuzz.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "model/safetensors.h"

namespace sy::model {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kDefaultSeed = 0x5afe7e1502025ull;
constexpr size_t kMaxInputBytes = 1 << 16;

const fuzz::Config& Config() { return fuzz::GetConfig(kDefaultSeed); }

// Runs `body(iteration)` within `fraction` of the budget, stopping at the
// first failure.
template <typename Body>
uint64_t RunBounded(const char* label, double fraction, Body body) {
  return fuzz::RunBounded(Config(), label, fraction, body,
                          [] { return ::testing::Test::HasFailure(); });
}

std::string U64Le(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return out;
}

uint64_t ReadU64Le(std::string_view bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(bytes[i]);
  return value;
}

// A valid seed file, kept as header and data so mutations can target either.
struct SeedFile {
  std::string header;
  std::string data;
};

SeedFile MakeSeed(const nlohmann::json& header, size_t data_size, std::mt19937_64& rng) {
  SeedFile seed;
  seed.header = header.dump();
  seed.data.resize(data_size);
  for (char& c : seed.data) c = static_cast<char>(rng());
  return seed;
}

std::vector<SeedFile> MakeSeeds(std::mt19937_64& rng) {
  using nlohmann::json;
  std::vector<SeedFile> seeds;
  seeds.push_back(MakeSeed(json::parse(R"({
      "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})"),
                           24, rng));
  seeds.push_back(MakeSeed(json::parse(R"({
      "__metadata__": {"format": "pt", "author": "fuzz"},
      "a.weight": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
      "a.bias": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [8, 16]},
      "ids": {"dtype": "I64", "shape": [1], "data_offsets": [16, 24]}})"),
                           24, rng));
  seeds.push_back(MakeSeed(json::parse(R"({
      "scalar": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
      "empty": {"dtype": "F16", "shape": [0, 7], "data_offsets": [4, 4]},
      "mask": {"dtype": "BOOL", "shape": [3], "data_offsets": [4, 7]},
      "q": {"dtype": "F8_E4M3", "shape": [1, 1, 1], "data_offsets": [7, 8]},
      "r": {"dtype": "F8_E5M2", "shape": [2], "data_offsets": [8, 10]}})"),
                           12, rng));
  {
    json many = json::object();
    const char* dtypes[] = {"F32", "F16", "BF16", "F64", "I32", "I16", "I8", "U8"};
    const size_t sizes[] = {4, 2, 2, 8, 4, 2, 1, 1};
    uint64_t offset = 0;
    for (int i = 0; i < 12; ++i) {
      const size_t d = static_cast<size_t>(i) % 8;
      const uint64_t n = 1 + static_cast<uint64_t>(i);
      many["layers." + std::to_string(i) + ".w"] = {
          {"dtype", dtypes[d]}, {"shape", {n}}, {"data_offsets", {offset, offset + n * sizes[d]}}};
      offset += n * sizes[d];
    }
    seeds.push_back(MakeSeed(many, offset, rng));
  }
  {
    // Padded header, as the reference writer aligns the data section to 8.
    SeedFile padded = MakeSeed(json::parse(R"({
        "x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}})"),
                               6, rng);
    while (padded.header.size() % 8 != 0) padded.header.push_back(' ');
    seeds.push_back(padded);
  }
  seeds.push_back(MakeSeed(json::object(), 0, rng));
  return seeds;
}

const char* const kFragments[] = {
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "false",
    "-",
    "0",
    "-0",
    "1.5",
    "1e999",
    "-1",
    "[]",
    "{}",
    "[0,0]",
    "[0]",
    "\"F16\"",
    "\"BF16\"",
    "\"F32\"",
    "\"BOOL\"",
    "\"I64\"",
    "\"F4\"",
    "\"dtype\"",
    "\"shape\"",
    "\"data_offsets\"",
    "\"__metadata__\"",
    "\\u0000",
    "\\ud800",
    "\\\"",
    " ",
    "\n",
    "\xff",
    "\xc3\xa9",
    "\x00",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "4294967296",
    "{\"t\":{\"dtype\":\"U8\",\"shape\":[1],"
    "\"data_offsets\":[0,1]}}",
};

const char* const kHugeNumbers[] = {
    "0",
    "1",
    "-1",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e308",
    "-9223372036854775808",
    "2.5",
};

using fuzz::Pick;

const fuzz::Dictionary& Dict() {
  static const fuzz::Dictionary* d = new fuzz::Dictionary{
      "{}[],:\"0123456789-. \\e",
      std::vector<std::string>(std::begin(kFragments), std::end(kFragments)),
      std::vector<std::string>(std::begin(kHugeNumbers), std::end(kHugeNumbers))};
  return *d;
}

void Mutate(std::string& s, std::mt19937_64& rng) { fuzz::Mutate(s, rng, Dict(), kMaxInputBytes); }

// Checks a successful parse: every tensor inside the data section, sizes
// matching dtype and shape, names unique, no two non-empty tensors sharing a
// byte.
void ExpectConsistent(const std::vector<TensorInfo>& tensors, uint64_t data_size,
                      const std::string& context) {
  std::set<std::string> names;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const TensorInfo& t : tensors) {
    EXPECT_TRUE(names.insert(t.name).second) << context << ": duplicate " << t.name;
    EXPECT_NE(t.name, "__metadata__") << context;
    EXPECT_LE(t.data_begin, t.data_end) << context << ": " << t.name;
    EXPECT_LE(t.data_end, data_size) << context << ": " << t.name;
    const int64_t n = t.num_elements();
    ASSERT_GE(n, 0) << context << ": " << t.name;
    for (int64_t dim : t.shape) EXPECT_GE(dim, 0) << context << ": " << t.name;
    const size_t width = StDTypeSize(t.dtype);
    ASSERT_GT(width, 0u) << context;
    uint64_t bytes = 0;
    EXPECT_FALSE(__builtin_mul_overflow(static_cast<uint64_t>(n), uint64_t{width}, &bytes))
        << context << ": " << t.name;
    EXPECT_EQ(bytes, t.data_end - t.data_begin) << context << ": " << t.name;
    if (t.data_end > t.data_begin) ranges.emplace_back(t.data_begin, t.data_end);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    EXPECT_LE(ranges[i - 1].second, ranges[i].first) << context << ": overlapping tensors";
  }
}

void ExpectGoodError(const absl::Status& status, std::string_view source,
                     const std::string& context) {
  EXPECT_FALSE(status.message().empty()) << context;
  EXPECT_THAT(std::string(status.message()), ::testing::HasSubstr(std::string(source))) << context;
}

bool IsFloat(StDType dtype) {
  return dtype == StDType::kF32 || dtype == StDType::kF16 || dtype == StDType::kBF16;
}

volatile uint8_t g_sink = 0;  // keeps the byte-touching loop from being elided

// Opens `path` (holding `bytes`) and checks the outcome; returns true on
// success.
bool CheckOpen(const std::string& path, const std::string& bytes, const std::string& context) {
  auto file = SafetensorsFile::Open(path);
  if (!file.ok()) {
    ExpectGoodError(file.status(), path, context);
    return false;
  }
  // Success means the length prefix held up; recompute the data size from the
  // raw bytes rather than trusting the reader.
  EXPECT_GE(bytes.size(), 8u) << context;
  if (bytes.size() < 8) return false;
  const uint64_t header_size = ReadU64Le(bytes);
  EXPECT_LE(header_size, bytes.size() - 8) << context;
  if (header_size > bytes.size() - 8) return false;
  const uint64_t data_size = bytes.size() - 8 - header_size;
  const SafetensorsFile& f = **file;
  ExpectConsistent(f.tensors(), data_size, context);

  // The standalone parser must agree with Open.
  auto reparsed =
      ParseSafetensorsHeader(std::string_view(bytes).substr(8, header_size), data_size, "reparse");
  EXPECT_TRUE(reparsed.ok()) << context << ": " << reparsed.status();
  if (reparsed.ok()) {
    EXPECT_EQ(reparsed->size(), f.tensors().size()) << context;
  }

  std::vector<float> buffer;
  for (const TensorInfo& t : f.tensors()) {
    const TensorInfo* found = f.Find(t.name);
    EXPECT_EQ(found, &t) << context << ": " << t.name;
    // Touch every byte of the tensor: with ASan or a bad offset this faults.
    uint8_t checksum = 0;
    const uint8_t* raw = f.data(t);
    for (uint64_t i = 0; i < t.data_end - t.data_begin; ++i) checksum ^= raw[i];
    g_sink = g_sink ^ checksum;
    if (t.num_elements() > (1 << 20)) continue;
    buffer.assign(static_cast<size_t>(t.num_elements()) + 1, 0.0f);
    const absl::Status read = f.ReadF32(t.name, t.shape, buffer.data());
    if (IsFloat(t.dtype)) {
      EXPECT_TRUE(read.ok()) << context << ": " << read;
    } else {
      EXPECT_EQ(read.code(), absl::StatusCode::kInvalidArgument) << context;
      ExpectGoodError(read, path, context);
    }
    std::vector<int64_t> wrong = t.shape;
    wrong.push_back(1);
    const absl::Status mismatch = f.ReadF32(t.name, wrong, buffer.data());
    EXPECT_FALSE(mismatch.ok()) << context;
    ExpectGoodError(mismatch, path, context);
  }
  return true;
}

class SafetensorsFuzzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/safetensors_fuzz_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string dir_;
};

TEST_F(SafetensorsFuzzTest, MutatedHeaders) {
  std::mt19937_64 rng(Config().seed);
  const std::vector<SeedFile> seeds = MakeSeeds(rng);
  uint64_t accepted = 0;
  const uint64_t iterations = RunBounded("MutatedHeaders", 0.4, [&](uint64_t iteration) {
    const SeedFile& seed = seeds[Pick(rng, seeds.size())];
    std::string header = seed.header;
    Mutate(header, rng);
    uint64_t data_size = seed.data.size();
    switch (Pick(rng, 8)) {
      case 0:
        data_size = 0;
        break;
      case 1:
        data_size = rng();
        break;
      case 2:
        data_size = ~uint64_t{0};
        break;
      case 3:
        data_size += Pick(rng, 16);
        break;
      case 4:
        data_size -= std::min<uint64_t>(data_size, Pick(rng, 16));
        break;
      default:
        break;
    }
    const std::string context = "header iteration " + std::to_string(iteration) + ": " + header;
    auto parsed = ParseSafetensorsHeader(header, data_size, "fuzz.safetensors");
    if (parsed.ok()) {
      ++accepted;
      ExpectConsistent(*parsed, data_size, context);
    } else {
      ExpectGoodError(parsed.status(), "fuzz.safetensors", context);
    }
  });
  std::printf("[fuzz] MutatedHeaders: %llu accepted\n", static_cast<unsigned long long>(accepted));
  EXPECT_GT(iterations, 0u);
}

TEST_F(SafetensorsFuzzTest, MutatedFiles) {
  std::mt19937_64 rng(Config().seed ^ 0x9e3779b97f4a7c15ull);
  const std::vector<SeedFile> seeds = MakeSeeds(rng);
  uint64_t accepted = 0;
  const uint64_t iterations = RunBounded("MutatedFiles", 0.4, [&](uint64_t iteration) {
    const SeedFile& seed = seeds[Pick(rng, seeds.size())];
    std::string header = seed.header;
    std::string data = seed.data;
    const size_t target = Pick(rng, 4);
    if (target != 1) Mutate(header, rng);
    if (target == 1 || target == 3) Mutate(data, rng);
    uint64_t length = header.size();
    switch (Pick(rng, 10)) {  // usually keep the length prefix truthful
      case 0:
        length = rng();
        break;
      case 1:
        length += Pick(rng, 8);
        break;
      case 2:
        length -= std::min<uint64_t>(length, Pick(rng, 8));
        break;
      default:
        break;
    }
    std::string bytes = U64Le(length) + header + data;
    if (Pick(rng, 5) == 0) Mutate(bytes, rng);  // raw damage, prefix included
    // A fresh file each time: rewriting one in place with O_TRUNC makes ext4
    // flush it to disk on close, which would dominate the loop.
    const std::string path = dir_ + "/mutated" + std::to_string(iteration) + ".safetensors";
    {
      std::ofstream out(path, std::ios::binary);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      ASSERT_TRUE(out.good());
    }
    const std::string context = "file iteration " + std::to_string(iteration);
    if (CheckOpen(path, bytes, context)) ++accepted;
    std::error_code ec;
    std::filesystem::remove(path, ec);
  });
  std::printf("[fuzz] MutatedFiles: %llu accepted\n", static_cast<unsigned long long>(accepted));
  EXPECT_GT(iterations, 0u);
}

// Structured headers with random dtypes, shapes and offsets, where the right
// verdict is computed independently from the format's rules.
TEST_F(SafetensorsFuzzTest, GeneratedHeadersMatchOracle) {
  std::mt19937_64 rng(Config().seed ^ 0x243f6a8885a308d3ull);
  struct DType {
    const char* name;
    uint64_t size;  // 0: not a safetensors dtype
  };
  const DType dtypes[] = {{"F32", 4},     {"F16", 2},     {"BF16", 2}, {"F64", 8}, {"I64", 8},
                          {"I32", 4},     {"I16", 2},     {"I8", 1},   {"U8", 1},  {"BOOL", 1},
                          {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"f32", 0},  {"F8", 0},  {"", 0}};
  struct Entry {
    const DType* dtype;
    std::vector<uint64_t> shape;
    uint64_t begin = 0;
    uint64_t end = 0;
    bool elements_overflow = false;  // a dim or prefix product exceeds int64
    bool bytes_overflow = false;     // element count times dtype size exceeds uint64
    uint64_t bytes = 0;
  };
  uint64_t accepted = 0;
  const uint64_t iterations = RunBounded("GeneratedHeadersMatchOracle", 0.2, [&](uint64_t it) {
    std::vector<Entry> entries(Pick(rng, 7));
    uint64_t cursor = 0;
    for (Entry& e : entries) {
      e.dtype = Pick(rng, 8) == 0 ? &dtypes[Pick(rng, std::size(dtypes))] : &dtypes[Pick(rng, 12)];
      e.shape.resize(Pick(rng, 4));
      uint64_t elements = 1;
      for (uint64_t& dim : e.shape) {
        dim = Pick(rng, 16) == 0 ? (uint64_t{1} << (30 + Pick(rng, 34))) : Pick(rng, 5);
        // Dimensions are int64 in TensorInfo, so one past INT64_MAX is invalid
        // even when another dimension is zero.
        if (dim > static_cast<uint64_t>(INT64_MAX)) e.elements_overflow = true;
        if (e.elements_overflow || elements == 0) continue;
        if (__builtin_mul_overflow(elements, dim, &elements) ||
            elements > static_cast<uint64_t>(INT64_MAX)) {
          e.elements_overflow = true;
        }
      }
      e.bytes_overflow = __builtin_mul_overflow(elements, e.dtype->size, &e.bytes);
      const uint64_t span = e.bytes_overflow ? 64 : std::min<uint64_t>(e.bytes, 64);
      e.begin = cursor;
      e.end = cursor + span;
      switch (Pick(rng, 6)) {
        case 0:  // random placement, possibly overlapping another tensor
          e.begin = Pick(rng, 48);
          e.end = e.begin + span;
          break;
        case 1:  // size unrelated to dtype and shape
          e.end = e.begin + Pick(rng, 16);
          break;
        case 2:  // reversed
          std::swap(e.begin, e.end);
          break;
        default:  // back to back
          break;
      }
      cursor = std::max(cursor, e.end);
    }
    // Sometimes the data section is a little short or long.
    const uint64_t data_size = cursor + Pick(rng, 3) - std::min<uint64_t>(cursor, Pick(rng, 3));

    nlohmann::json header = nlohmann::json::object();
    bool valid = true;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (size_t i = 0; i < entries.size(); ++i) {
      const Entry& e = entries[i];
      const bool ok = e.dtype->size != 0 && !e.elements_overflow && !e.bytes_overflow &&
                      e.begin <= e.end && e.end <= data_size && e.bytes == e.end - e.begin;
      valid = valid && ok;
      if (ok && e.end > e.begin) ranges.emplace_back(e.begin, e.end);
      header["t" + std::to_string(i)] = {
          {"dtype", e.dtype->name}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) {
      if (ranges[i - 1].second > ranges[i].first) valid = false;
    }
    if (Pick(rng, 4) == 0) header["__metadata__"] = {{"k", "v"}};

    const std::string text = header.dump();
    auto parsed = ParseSafetensorsHeader(text, data_size, "gen.safetensors");
    ASSERT_EQ(parsed.ok(), valid) << "iteration " << it << ", data_size " << data_size << ": "
                                  << text << " -> " << parsed.status();
    if (parsed.ok()) {
      ++accepted;
      ExpectConsistent(*parsed, data_size, text);
      EXPECT_EQ(parsed->size(), entries.size());
    } else {
      ExpectGoodError(parsed.status(), "gen.safetensors", text);
    }
  });
  std::printf("[fuzz] GeneratedHeadersMatchOracle: %llu accepted\n",
              static_cast<unsigned long long>(accepted));
  EXPECT_GT(iterations, 0u);
}

}  // namespace
}  // namespace sy::model

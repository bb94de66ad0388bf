#include "model/safetensors.h"

#include <stdlib.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sy::model {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

// One tensor to place in a generated file.
struct TensorSpec {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::string U64Le(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return out;
}

// A safetensors file from a literal header and data section.
std::string FileFromParts(std::string_view header, std::string_view data) {
  return U64Le(header.size()) + std::string(header) + std::string(data);
}

// A well-formed header + data section with tensors laid out back to back in
// the order given.
std::string BuildHeader(const std::vector<TensorSpec>& tensors,
                        const std::map<std::string, std::string>& metadata, std::string* data) {
  nlohmann::json header = nlohmann::json::object();
  data->clear();
  for (const TensorSpec& t : tensors) {
    const uint64_t begin = data->size();
    data->append(t.bytes);
    header[t.name] = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {begin, data->size()}}};
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  return header.dump();
}

std::string BuildFile(const std::vector<TensorSpec>& tensors,
                      const std::map<std::string, std::string>& metadata = {}) {
  std::string data;
  const std::string header = BuildHeader(tensors, metadata, &data);
  return FileFromParts(header, data);
}

std::string F32Bytes(const std::vector<float>& values) {
  std::string out(values.size() * 4, '\0');
  std::memcpy(out.data(), values.data(), out.size());
  return out;
}

std::string U16Bytes(const std::vector<uint16_t>& values) {
  std::string out;
  for (uint16_t v : values) {
    out.push_back(static_cast<char>(v & 0xff));
    out.push_back(static_cast<char>(v >> 8));
  }
  return out;
}

uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/safetensors_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Writes `contents` to `name` under the temp dir (creating subdirs) and
  // returns the full path.
  std::string Write(const std::string& name, std::string_view contents) {
    const fs::path path = fs::path(dir_) / name;
    fs::create_directories(path.parent_path());
    std::ofstream out(path, std::ios::binary);
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    EXPECT_TRUE(out.good());
    return path.string();
  }

  absl::Status OpenStatus(const std::string& name, std::string_view contents) {
    return SafetensorsFile::Open(Write(name, contents)).status();
  }

  std::string dir_;
};

// ---------------------------------------------------------------------------
// dtype table

TEST(StDTypeTest, NamesAndSizes) {
  EXPECT_EQ(StDTypeName(StDType::kF32), "F32");
  EXPECT_EQ(StDTypeName(StDType::kBF16), "BF16");
  EXPECT_EQ(StDTypeName(StDType::kF8E4M3), "F8_E4M3");
  EXPECT_EQ(StDTypeName(StDType::kBool), "BOOL");
  EXPECT_EQ(StDTypeSize(StDType::kF64), 8u);
  EXPECT_EQ(StDTypeSize(StDType::kF16), 2u);
  EXPECT_EQ(StDTypeSize(StDType::kI32), 4u);
  EXPECT_EQ(StDTypeSize(StDType::kF8E5M2), 1u);
  EXPECT_EQ(StDTypeSize(StDType::kU8), 1u);
}

TEST(TensorInfoTest, NumElements) {
  TensorInfo info;
  EXPECT_EQ(info.num_elements(), 1);  // scalar
  info.shape = {2, 3, 4};
  EXPECT_EQ(info.num_elements(), 24);
  info.shape = {5, 0};
  EXPECT_EQ(info.num_elements(), 0);
}

// ---------------------------------------------------------------------------
// Conversion

TEST(ConvertToF32Test, F16MatchesReferenceForEveryBitPattern) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  std::vector<float> out(all.size());
  ASSERT_TRUE(ConvertToF32(StDType::kF16, all.data(), 65536, out.data()).ok());
  for (uint32_t h = 0; h < 65536; ++h) {
    const int exponent = (h >> 10) & 0x1f;
    const int mantissa = h & 0x3ff;
    const double sign = (h & 0x8000) ? -1.0 : 1.0;
    if (exponent == 31) {
      if (mantissa == 0) {
        EXPECT_EQ(out[h], static_cast<float>(sign * INFINITY)) << h;
      } else {
        EXPECT_TRUE(std::isnan(out[h])) << h;
      }
      continue;
    }
    const double expected = exponent == 0 ? sign * std::ldexp(mantissa, -24)
                                          : sign * std::ldexp(1024 + mantissa, exponent - 25);
    EXPECT_EQ(out[h], static_cast<float>(expected)) << h;
    EXPECT_EQ(std::signbit(out[h]), (h & 0x8000) != 0) << h;
  }
}

TEST(ConvertToF32Test, RejectsNonFloatDtypes) {
  const int32_t values[2] = {1, 2};
  float out[2];
  const absl::Status status = ConvertToF32(StDType::kI32, values, 2, out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("I32"));
  EXPECT_EQ(ConvertToF32(StDType::kF8E4M3, values, 0, out).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ConvertToF32(StDType::kF32, values, -1, out).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ConvertToF32(StDType::kF32, nullptr, 0, nullptr).ok());
}

// ---------------------------------------------------------------------------
// SafetensorsFile: reading values

TEST_F(SafetensorsTest, ReadsF32Exactly) {
  const std::vector<float> values = {1.5f, -2.25f, 3.0e-38f, std::numeric_limits<float>::max(),
                                     0.1f, -0.0f};
  const std::string path =
      Write("f32.safetensors", BuildFile({{"w", "F32", {2, 3}, F32Bytes(values)}}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 1u);
  const TensorInfo* info = (*file)->Find("w");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->dtype, StDType::kF32);
  EXPECT_THAT(info->shape, ElementsAre(2, 3));
  EXPECT_EQ(info->data_begin, 0u);
  EXPECT_EQ(info->data_end, 24u);
  EXPECT_EQ(info->num_elements(), 6);
  EXPECT_EQ((*file)->path(), path);
  EXPECT_TRUE((*file)->metadata().empty());

  std::vector<float> out(6, 42.0f);
  ASSERT_TRUE((*file)->ReadF32("w", {2, 3}, out.data()).ok());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(Bits(out[i]), Bits(values[i])) << i;
  EXPECT_EQ(std::memcmp((*file)->data(*info), values.data(), 24), 0);
}

TEST_F(SafetensorsTest, ReadsF16IncludingSubnormalsAndSpecials) {
  const std::vector<uint16_t> halves = {
      0x3c00,  // 1
      0xc000,  // -2
      0x3555,  // 0.333251953125
      0x0001,  // smallest subnormal, 2^-24
      0x03ff,  // largest subnormal, 1023 * 2^-24
      0x8200,  // -512 * 2^-24
      0x0400,  // smallest normal, 2^-14
      0x7bff,  // 65504
      0x7c00,  // +inf
      0xfc00,  // -inf
      0x8000,  // -0
      0x7e00,  // NaN
  };
  const std::string path =
      Write("f16.safetensors", BuildFile({{"h", "F16", {12}, U16Bytes(halves)}}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<float> out(12);
  ASSERT_TRUE((*file)->ReadF32("h", {12}, out.data()).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -2.0f);
  EXPECT_EQ(out[2], 0.333251953125f);
  EXPECT_EQ(out[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(out[4], std::ldexp(1023.0f, -24));
  EXPECT_EQ(out[5], -std::ldexp(512.0f, -24));
  EXPECT_EQ(out[6], std::ldexp(1.0f, -14));
  EXPECT_EQ(out[7], 65504.0f);
  EXPECT_EQ(out[8], std::numeric_limits<float>::infinity());
  EXPECT_EQ(out[9], -std::numeric_limits<float>::infinity());
  EXPECT_EQ(Bits(out[10]), 0x80000000u);
  EXPECT_TRUE(std::isnan(out[11]));
}

TEST_F(SafetensorsTest, ReadsBF16Exactly) {
  const std::vector<uint16_t> values = {0x3f80, 0xc040, 0x4049, 0x0001, 0x7f80, 0xff80, 0x8000};
  const std::string path =
      Write("bf16.safetensors", BuildFile({{"b", "BF16", {7}, U16Bytes(values)}}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<float> out(7);
  ASSERT_TRUE((*file)->ReadF32("b", {7}, out.data()).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -3.0f);
  EXPECT_EQ(out[2], 3.140625f);
  EXPECT_EQ(Bits(out[3]), 0x00010000u);  // bf16 subnormal
  EXPECT_EQ(out[4], std::numeric_limits<float>::infinity());
  EXPECT_EQ(out[5], -std::numeric_limits<float>::infinity());
  EXPECT_EQ(Bits(out[6]), 0x80000000u);
}

TEST_F(SafetensorsTest, ReadsUnalignedDataAndSeveralTensors) {
  // A 3-byte header pad makes the data section start at an odd address.
  std::string data;
  std::string header = BuildHeader({{"a", "U8", {3}, "xyz"},
                                    {"b", "F32", {2}, F32Bytes({7.0f, -8.5f})},
                                    {"c", "F16", {1}, U16Bytes({0x3800})}},
                                   {}, &data);
  header += "   ";  // trailing whitespace padding is legal JSON
  const std::string path = Write("multi.safetensors", FileFromParts(header, data));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->tensors().size(), 3u);
  // Tensors come back in data order.
  EXPECT_EQ((*file)->tensors()[0].name, "a");
  EXPECT_EQ((*file)->tensors()[1].name, "b");
  EXPECT_EQ((*file)->tensors()[2].name, "c");
  float b[2];
  ASSERT_TRUE((*file)->ReadF32("b", {2}, b).ok());
  EXPECT_EQ(b[0], 7.0f);
  EXPECT_EQ(b[1], -8.5f);
  float c = 0;
  ASSERT_TRUE((*file)->ReadF32("c", {1}, &c).ok());
  EXPECT_EQ(c, 0.5f);
}

TEST_F(SafetensorsTest, ScalarAndEmptyTensors) {
  const std::string path = Write(
      "scalar.safetensors",
      BuildFile(
          {{"s", "F32", {}, F32Bytes({4.0f})}, {"e", "F32", {0, 5}, ""}, {"e2", "BF16", {0}, ""}}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  float s = 0;
  ASSERT_TRUE((*file)->ReadF32("s", {}, &s).ok());
  EXPECT_EQ(s, 4.0f);
  EXPECT_TRUE((*file)->ReadF32("e", {0, 5}, nullptr).ok());
  EXPECT_EQ((*file)->Find("e")->num_elements(), 0);
}

TEST_F(SafetensorsTest, Metadata) {
  const std::string path = Write(
      "meta.safetensors",
      BuildFile({{"w", "F32", {1}, F32Bytes({1.0f})}}, {{"format", "pt"}, {"note", "hello"}}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().size(), 2u);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->metadata().at("note"), "hello");
  EXPECT_EQ((*file)->tensors().size(), 1u);  // __metadata__ is not a tensor
  EXPECT_EQ((*file)->Find("__metadata__"), nullptr);

  const absl::Status bad =
      OpenStatus("badmeta.safetensors", FileFromParts(R"({"__metadata__":{"format":1}})", ""));
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(bad), HasSubstr("badmeta.safetensors"));
  EXPECT_THAT(Message(bad), HasSubstr("format"));

  const absl::Status not_object =
      OpenStatus("badmeta2.safetensors", FileFromParts(R"({"__metadata__":["x"]})", ""));
  EXPECT_EQ(not_object.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(not_object), HasSubstr("__metadata__"));
}

// ---------------------------------------------------------------------------
// SafetensorsFile: read errors

TEST_F(SafetensorsTest, ShapeMismatchNamesFileTensorAndShapes) {
  const std::string path =
      Write("shape.safetensors", BuildFile({{"layer.w", "F32", {2, 2}, F32Bytes({1, 2, 3, 4})}}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  float out[4];
  const absl::Status status = (*file)->ReadF32("layer.w", {4}, out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("shape.safetensors"));
  EXPECT_THAT(Message(status), HasSubstr("layer.w"));
  EXPECT_THAT(Message(status), HasSubstr("[4]"));
  EXPECT_THAT(Message(status), HasSubstr("[2, 2]"));
}

TEST_F(SafetensorsTest, MissingTensor) {
  const std::string path =
      Write("missing.safetensors", BuildFile({{"present", "F32", {1}, F32Bytes({1})}}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->Find("absent"), nullptr);
  float out;
  const absl::Status status = (*file)->ReadF32("absent", {1}, &out);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(status), HasSubstr("missing.safetensors"));
  EXPECT_THAT(Message(status), HasSubstr("absent"));
}

TEST_F(SafetensorsTest, ReadingNonFloatDtypeNamesDtype) {
  const std::string path =
      Write("ints.safetensors", BuildFile({{"ids", "I64", {2}, std::string(16, '\1')},
                                           {"mask", "BOOL", {3}, std::string(3, '\1')},
                                           {"q", "F8_E4M3", {2}, std::string(2, '\x38')}}));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  float out[3];
  absl::Status status = (*file)->ReadF32("ids", {2}, out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("I64"));
  EXPECT_THAT(Message(status), HasSubstr("ids"));
  EXPECT_THAT(Message(status), HasSubstr("ints.safetensors"));
  status = (*file)->ReadF32("mask", {3}, out);
  EXPECT_THAT(Message(status), HasSubstr("BOOL"));
  status = (*file)->ReadF32("q", {2}, out);
  EXPECT_THAT(Message(status), HasSubstr("F8_E4M3"));
}

// ---------------------------------------------------------------------------
// SafetensorsFile: malformed files

TEST_F(SafetensorsTest, MissingEmptyAndNonRegularFiles) {
  auto missing = SafetensorsFile::Open(dir_ + "/nope.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(missing.status()), HasSubstr("nope.safetensors"));

  const absl::Status empty = OpenStatus("empty.safetensors", "");
  EXPECT_FALSE(empty.ok());
  EXPECT_THAT(Message(empty), HasSubstr("empty.safetensors"));

  auto directory = SafetensorsFile::Open(dir_);
  EXPECT_FALSE(directory.ok());
  EXPECT_THAT(Message(directory.status()), HasSubstr(dir_));
}

TEST_F(SafetensorsTest, TruncatedFile) {
  const std::string good = BuildFile({{"w", "F32", {4}, F32Bytes({1, 2, 3, 4})}});
  // Shorter than the length prefix.
  absl::Status status = OpenStatus("short.safetensors", good.substr(0, 5));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(status), HasSubstr("short.safetensors"));
  // Cut inside the header.
  status = OpenStatus("cut_header.safetensors", good.substr(0, 20));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(status), HasSubstr("cut_header.safetensors"));
  // Cut inside the data section: the tensor runs past the end.
  status = OpenStatus("cut_data.safetensors", good.substr(0, good.size() - 1));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(status), HasSubstr("cut_data.safetensors"));
  EXPECT_THAT(Message(status), HasSubstr("'w'"));
}

TEST_F(SafetensorsTest, BadHeaderLength) {
  // Over the 100 MiB cap.
  absl::Status status = OpenStatus("huge.safetensors", U64Le(uint64_t{101} << 20) + "{}");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("huge.safetensors"));
  // Near 2^64, where naive arithmetic would wrap.
  status = OpenStatus("wrap.safetensors", U64Le(~uint64_t{0} - 3) + "{}");
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(Message(status), HasSubstr("wrap.safetensors"));
  // Longer than the file.
  status = OpenStatus("long.safetensors", U64Le(100) + "{}");
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(status), HasSubstr("long.safetensors"));
  // Zero-length header is not JSON.
  status = OpenStatus("zero.safetensors", U64Le(0));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SafetensorsTest, BadJson) {
  const std::vector<std::string> headers = {R"({"w": {"dtype": "F32")",
                                            "not json",
                                            R"({"a":1,})",
                                            std::string("{\0}", 3),
                                            "\xff\xfe",
                                            "{\"k\": \"\xff\"}",
                                            std::string(40, '[') + std::string(40, ']')};
  for (const std::string& header : headers) {
    const absl::Status status = OpenStatus("badjson.safetensors", FileFromParts(header, ""));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << header;
    EXPECT_THAT(Message(status), HasSubstr("badjson.safetensors"));
  }
  const absl::Status array = OpenStatus("array.safetensors", FileFromParts("[1, 2]", ""));
  EXPECT_EQ(array.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(array), HasSubstr("not an object"));
}

TEST_F(SafetensorsTest, EmptyHeaderObjectIsValid) {
  auto file = SafetensorsFile::Open(Write("none.safetensors", FileFromParts("{}", "")));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
}

TEST_F(SafetensorsTest, OutOfRangeOffsets) {
  const absl::Status status =
      OpenStatus("range.safetensors",
                 FileFromParts(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               std::string(8, 'x')));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(Message(status), HasSubstr("range.safetensors"));
  EXPECT_THAT(Message(status), HasSubstr("'w'"));
}

TEST_F(SafetensorsTest, OverlappingOffsets) {
  const absl::Status status =
      OpenStatus("overlap.safetensors",
                 FileFromParts(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               std::string(12, 'x')));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("overlap.safetensors"));
  EXPECT_THAT(Message(status), HasSubstr("'a'"));
  EXPECT_THAT(Message(status), HasSubstr("'b'"));

  // Identical ranges overlap too; touching ranges and empty tensors do not.
  EXPECT_FALSE(OpenStatus("same.safetensors",
                          FileFromParts(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                                        R"("b":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}})",
                                        "xx"))
                   .ok());
  EXPECT_TRUE(OpenStatus("touch.safetensors",
                         FileFromParts(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                                       R"("z":{"dtype":"U8","shape":[0],"data_offsets":[1,1]},)"
                                       R"("b":{"dtype":"I8","shape":[2],"data_offsets":[2,4]}})",
                                       "xxxx"))
                  .ok());
}

TEST_F(SafetensorsTest, SizeDtypeMismatch) {
  // F16 [3] needs 6 bytes, the offsets give 8.
  const absl::Status status = OpenStatus(
      "size.safetensors", FileFromParts(R"({"h":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}})",
                                        std::string(8, 'x')));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("size.safetensors"));
  EXPECT_THAT(Message(status), HasSubstr("'h'"));
  EXPECT_THAT(Message(status), HasSubstr("F16"));
}

TEST_F(SafetensorsTest, UnknownDtype) {
  const absl::Status status =
      OpenStatus("dtype.safetensors",
                 FileFromParts(R"({"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", "x"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("dtype.safetensors"));
  EXPECT_THAT(Message(status), HasSubstr("'w'"));
  EXPECT_THAT(Message(status), HasSubstr("F4"));
}

TEST(ParseHeaderTest, RejectsIllFormedEntries) {
  struct Case {
    const char* header;
    const char* expect;  // substring of the message
  };
  const Case cases[] = {
      {R"({"t": 5})", "not an object"},
      {R"({"t": {"shape":[1],"data_offsets":[0,4]}})", "dtype"},
      {R"({"t": {"dtype":7,"shape":[1],"data_offsets":[0,4]}})", "dtype"},
      {R"({"t": {"dtype":"F32","data_offsets":[0,4]}})", "shape"},
      {R"({"t": {"dtype":"F32","shape":{},"data_offsets":[0,4]}})", "shape"},
      {R"({"t": {"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", "shape[0]"},
      {R"({"t": {"dtype":"F32","shape":["1"],"data_offsets":[0,4]}})", "shape[0]"},
      {R"({"t": {"dtype":"F32","shape":[2,-1],"data_offsets":[0,4]}})", "negative"},
      {R"({"t": {"dtype":"F32","shape":[1]}})", "data_offsets"},
      {R"({"t": {"dtype":"F32","shape":[1],"data_offsets":[0]}})", "data_offsets"},
      {R"({"t": {"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", "data_offsets"},
      {R"({"t": {"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", "data_offsets"},
      {R"({"t": {"dtype":"F32","shape":[1],"data_offsets":"0,4"}})", "data_offsets"},
      {R"({"t": {"dtype":"F32","shape":[1],"data_offsets":[0,1e2]}})", "data_offsets"},
      {R"({"t": {"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551616]}})",
       "data_offsets"},
      {R"({"t": {"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", "begin"},
      {R"({"t": {"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}})",
       "overflow"},
      {R"({"t": {"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,4]}})", "overflow"},
      {R"({"t": {"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,4]}})", "overflow"},
      {R"({"t": {"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
       R"( "t": {"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       "more than once"},
  };
  for (const Case& c : cases) {
    auto parsed = ParseSafetensorsHeader(c.header, 64, "hdr.safetensors");
    ASSERT_FALSE(parsed.ok()) << c.header;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << c.header;
    EXPECT_THAT(Message(parsed.status()), HasSubstr("hdr.safetensors")) << c.header;
    EXPECT_THAT(Message(parsed.status()), HasSubstr(c.expect)) << c.header;
    if (std::string_view(c.header).starts_with(R"({"t")")) {
      EXPECT_THAT(Message(parsed.status()), HasSubstr("'t'")) << c.header;
    }
  }
}

TEST(ParseHeaderTest, HostileTextIsEscapedAndShortenedInMessages) {
  const std::string long_name(100000, 'n');
  const std::string header = R"({")" + long_name + R"(": {"dtype":"\u0001\u00e9","shape":[1],)" +
                             R"("data_offsets":[0,1]}})";
  auto parsed = ParseSafetensorsHeader(header, 1, "hostile.safetensors");
  ASSERT_FALSE(parsed.ok());
  const std::string message = Message(parsed.status());
  EXPECT_THAT(message, HasSubstr("hostile.safetensors"));
  EXPECT_THAT(message, HasSubstr("nnnnnnnn"));
  EXPECT_THAT(message, HasSubstr("(100000 bytes)"));
  EXPECT_THAT(message, HasSubstr("\\x01\\xc3\\xa9"));
  EXPECT_LT(message.size(), 1000u);
  for (char c : message) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << static_cast<int>(c);
}

TEST(ParseHeaderTest, AcceptsAllDtypesAndIgnoresUnknownEntryKeys) {
  const char* header = R"({
    "a": {"dtype":"F64","shape":[1],"data_offsets":[0,8]},
    "b": {"dtype":"I64","shape":[1],"data_offsets":[8,16]},
    "c": {"dtype":"I32","shape":[1],"data_offsets":[16,20]},
    "d": {"dtype":"I16","shape":[1],"data_offsets":[20,22]},
    "e": {"dtype":"I8","shape":[1],"data_offsets":[22,23]},
    "f": {"dtype":"U8","shape":[1],"data_offsets":[23,24]},
    "g": {"dtype":"BOOL","shape":[1],"data_offsets":[24,25]},
    "h": {"dtype":"F8_E4M3","shape":[1],"data_offsets":[25,26]},
    "i": {"dtype":"F8_E5M2","shape":[1],"data_offsets":[26,27]},
    "j": {"dtype":"F16","shape":[1],"data_offsets":[27,29]},
    "k": {"dtype":"BF16","shape":[1],"data_offsets":[29,31],"extra":true},
    "l": {"dtype":"F32","shape":[1],"data_offsets":[31,35]}
  })";
  auto parsed = ParseSafetensorsHeader(header, 35, "all.safetensors");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_EQ(parsed->size(), 12u);
  const StDType expected[] = {StDType::kF64,    StDType::kI64, StDType::kI32,  StDType::kI16,
                              StDType::kI8,     StDType::kU8,  StDType::kBool, StDType::kF8E4M3,
                              StDType::kF8E5M2, StDType::kF16, StDType::kBF16, StDType::kF32};
  for (size_t i = 0; i < 12; ++i) EXPECT_EQ((*parsed)[i].dtype, expected[i]) << i;
  // One byte short of the last tensor's end.
  EXPECT_EQ(ParseSafetensorsHeader(header, 34, "all.safetensors").status().code(),
            absl::StatusCode::kDataLoss);
}

// ---------------------------------------------------------------------------
// Checkpoint

class CheckpointTest : public SafetensorsTest {
 protected:
  // Two shards: shard 1 holds "a" (F32) and "b" (BF16); shard 2 holds "c"
  // (F16) and "extra", which the index does not list.
  void WriteShardedCheckpoint(const std::string& sub) {
    Write(sub + "/model-00001-of-00002.safetensors",
          BuildFile({{"a", "F32", {2}, F32Bytes({1.0f, 2.0f})},
                     {"b", "BF16", {1, 2}, U16Bytes({0x4000, 0xbf80})}}));
    Write(sub + "/model-00002-of-00002.safetensors",
          BuildFile({{"c", "F16", {3}, U16Bytes({0x3c00, 0x0001, 0x7c00})},
                     {"extra", "F32", {1}, F32Bytes({9.0f})}}));
    Write(sub + "/model.safetensors.index.json", R"({
      "metadata": {"total_size": 30},
      "weight_map": {
        "c": "model-00002-of-00002.safetensors",
        "a": "model-00001-of-00002.safetensors",
        "b": "model-00001-of-00002.safetensors"
      }
    })");
  }
};

TEST_F(CheckpointTest, ShardedWithIndex) {
  WriteShardedCheckpoint("ckpt");
  auto ckpt = Checkpoint::Open(dir_ + "/ckpt");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->dir(), dir_ + "/ckpt");
  EXPECT_THAT((*ckpt)->TensorNames(), ElementsAre("a", "b", "c"));
  EXPECT_TRUE((*ckpt)->Has("a"));
  EXPECT_TRUE((*ckpt)->Has("c"));
  EXPECT_FALSE((*ckpt)->Has("extra"));  // only the index decides
  EXPECT_FALSE((*ckpt)->Has("d"));

  auto shape = (*ckpt)->Shape("b");
  ASSERT_TRUE(shape.ok()) << shape.status();
  EXPECT_THAT(*shape, ElementsAre(1, 2));

  float a[2], b[2], c[3];
  ASSERT_TRUE((*ckpt)->ReadF32("a", {2}, a).ok());
  EXPECT_EQ(a[0], 1.0f);
  EXPECT_EQ(a[1], 2.0f);
  ASSERT_TRUE((*ckpt)->ReadF32("b", {1, 2}, b).ok());
  EXPECT_EQ(b[0], 2.0f);
  EXPECT_EQ(b[1], -1.0f);
  ASSERT_TRUE((*ckpt)->ReadF32("c", {3}, c).ok());
  EXPECT_EQ(c[0], 1.0f);
  EXPECT_EQ(c[1], std::ldexp(1.0f, -24));
  EXPECT_EQ(c[2], std::numeric_limits<float>::infinity());

  const absl::Status absent = (*ckpt)->ReadF32("d", {1}, a);
  EXPECT_EQ(absent.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(absent), HasSubstr("'d'"));
  EXPECT_THAT(Message(absent), HasSubstr("ckpt"));
  const auto absent_shape = (*ckpt)->Shape("d");
  EXPECT_EQ(absent_shape.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(absent_shape.status()), HasSubstr("'d'"));

  const absl::Status mismatch = (*ckpt)->ReadF32("c", {1, 3}, c);
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(mismatch), HasSubstr("model-00002-of-00002.safetensors"));
  EXPECT_THAT(Message(mismatch), HasSubstr("'c'"));
}

TEST_F(CheckpointTest, ConcurrentLazyOpen) {
  WriteShardedCheckpoint("ckpt");
  auto ckpt = Checkpoint::Open(dir_ + "/ckpt");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const Checkpoint& checkpoint = **ckpt;
  std::vector<std::thread> threads;
  std::vector<int> failures(8, 0);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&checkpoint, &failures, t] {
      for (int i = 0; i < 50; ++i) {
        float a[2], c[3];
        if (!checkpoint.ReadF32("a", {2}, a).ok() || a[1] != 2.0f) ++failures[t];
        if (!checkpoint.ReadF32("c", {3}, c).ok() || c[0] != 1.0f) ++failures[t];
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < 8; ++t) EXPECT_EQ(failures[t], 0) << t;
}

TEST_F(CheckpointTest, IndexPointsAtMissingShard) {
  WriteShardedCheckpoint("ckpt");
  fs::remove(dir_ + "/ckpt/model-00002-of-00002.safetensors");
  auto ckpt = Checkpoint::Open(dir_ + "/ckpt");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();  // shards open lazily
  float a[2], c[3];
  EXPECT_TRUE((*ckpt)->ReadF32("a", {2}, a).ok());
  const absl::Status status = (*ckpt)->ReadF32("c", {3}, c);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(status), HasSubstr("model-00002-of-00002.safetensors"));
  EXPECT_THAT(Message(status), HasSubstr("'c'"));
  EXPECT_FALSE((*ckpt)->Shape("c").ok());
}

TEST_F(CheckpointTest, IndexListsTensorAbsentFromShard) {
  WriteShardedCheckpoint("ckpt");
  Write("ckpt/model.safetensors.index.json",
        R"({"weight_map": {"a": "model-00001-of-00002.safetensors",
                           "ghost": "model-00001-of-00002.safetensors"}})");
  auto ckpt = Checkpoint::Open(dir_ + "/ckpt");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_TRUE((*ckpt)->Has("ghost"));
  float out[1];
  const absl::Status status = (*ckpt)->ReadF32("ghost", {1}, out);
  EXPECT_FALSE(status.ok());
  EXPECT_THAT(Message(status), HasSubstr("ghost"));
  EXPECT_THAT(Message(status), HasSubstr("model-00001-of-00002.safetensors"));
  EXPECT_THAT(Message(status), HasSubstr("model.safetensors.index.json"));
  EXPECT_FALSE((*ckpt)->Shape("ghost").ok());
}

TEST_F(CheckpointTest, BadIndexFiles) {
  const std::string shard = BuildFile({{"a", "F32", {1}, F32Bytes({1.0f})}});
  const struct {
    const char* index;
    const char* expect;
  } cases[] = {
      {"not json", "not valid JSON"},
      {"[1]", "not an object"},
      {R"({"metadata": {}})", "weight_map"},
      {R"({"weight_map": ["a"]})", "weight_map"},
      {R"({"weight_map": {"a": 3}})", "'a'"},
      {R"({"weight_map": {"a": "../outside.safetensors"}})", "../outside.safetensors"},
      {R"({"weight_map": {"a": "sub/x.safetensors"}})", "sub/x.safetensors"},
      {R"({"weight_map": {"a": "/etc/passwd"}})", "/etc/passwd"},
      {R"({"weight_map": {"a": ".."}})", "'a'"},
      {R"({"weight_map": {"a": ""}})", "'a'"},
  };
  int n = 0;
  for (const auto& c : cases) {
    const std::string sub = "bad" + std::to_string(n++);
    Write(sub + "/s.safetensors", shard);
    Write(sub + "/model.safetensors.index.json", c.index);
    auto ckpt = Checkpoint::Open(dir_ + "/" + sub);
    ASSERT_FALSE(ckpt.ok()) << c.index;
    EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument) << c.index;
    EXPECT_THAT(Message(ckpt.status()), HasSubstr("model.safetensors.index.json")) << c.index;
    EXPECT_THAT(Message(ckpt.status()), HasSubstr(c.expect)) << c.index;
  }
}

TEST_F(CheckpointTest, SingleModelFile) {
  Write("one/model.safetensors", BuildFile({{"w", "F32", {1}, F32Bytes({5.0f})}}));
  Write("one/other.safetensors", BuildFile({{"x", "F32", {1}, F32Bytes({6.0f})}}));
  auto ckpt = Checkpoint::Open(dir_ + "/one");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_THAT((*ckpt)->TensorNames(), ElementsAre("w"));
  float w = 0;
  ASSERT_TRUE((*ckpt)->ReadF32("w", {1}, &w).ok());
  EXPECT_EQ(w, 5.0f);
}

TEST_F(CheckpointTest, SingleFileFallback) {
  Write("fb/weights.safetensors",
        BuildFile({{"z", "BF16", {2}, U16Bytes({0x3f80, 0x4040})}, {"y", "U8", {1}, "q"}}));
  Write("fb/README.md", "not a checkpoint");
  auto ckpt = Checkpoint::Open(dir_ + "/fb");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_THAT((*ckpt)->TensorNames(), ElementsAre("y", "z"));
  auto shape = (*ckpt)->Shape("z");
  ASSERT_TRUE(shape.ok());
  EXPECT_THAT(*shape, ElementsAre(2));
  float z[2];
  ASSERT_TRUE((*ckpt)->ReadF32("z", {2}, z).ok());
  EXPECT_EQ(z[0], 1.0f);
  EXPECT_EQ(z[1], 3.0f);
}

TEST_F(CheckpointTest, SymlinkedFilesAsInTheHubCache) {
  // Hugging Face's cache keeps snapshot files as symlinks to blobs.
  Write("blobs/abc123", BuildFile({{"w", "F16", {1}, U16Bytes({0x4200})}}));
  fs::create_directories(dir_ + "/snap");
  fs::create_symlink(dir_ + "/blobs/abc123", dir_ + "/snap/model-1.safetensors");
  fs::create_symlink(dir_ + "/blobs/missing", dir_ + "/snap/dangling.safetensors");
  auto ckpt = Checkpoint::Open(dir_ + "/snap");
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  float w = 0;
  ASSERT_TRUE((*ckpt)->ReadF32("w", {1}, &w).ok());
  EXPECT_EQ(w, 3.0f);
}

TEST_F(CheckpointTest, SingleFileThatIsBroken) {
  Write("broken/model.safetensors", "garbage!garbage!");
  auto ckpt = Checkpoint::Open(dir_ + "/broken");
  ASSERT_FALSE(ckpt.ok());
  EXPECT_THAT(Message(ckpt.status()), HasSubstr("model.safetensors"));
}

TEST_F(CheckpointTest, NoUsableFile) {
  fs::create_directories(dir_ + "/empty");
  auto empty = Checkpoint::Open(dir_ + "/empty");
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(empty.status()), HasSubstr(dir_ + "/empty"));

  Write("two/a.safetensors", BuildFile({{"a", "F32", {1}, F32Bytes({1.0f})}}));
  Write("two/b.safetensors", BuildFile({{"b", "F32", {1}, F32Bytes({1.0f})}}));
  auto two = Checkpoint::Open(dir_ + "/two");
  EXPECT_EQ(two.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(two.status()), HasSubstr(dir_ + "/two"));

  auto nowhere = Checkpoint::Open(dir_ + "/does-not-exist");
  EXPECT_EQ(nowhere.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(Message(nowhere.status()), HasSubstr("does-not-exist"));
}

}  // namespace
}  // namespace sy::model

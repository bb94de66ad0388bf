// Test-only safetensors writer: builds `.safetensors` files and sharded
// checkpoint directories (shards + model.safetensors.index.json) from fp32
// values, so tests can make checkpoints of any layout and dtype.
//
// Values are converted to the tensor's dtype with round-to-nearest-even
// (F16 overflows to infinity and keeps subnormals; NaN stays NaN). Tensors are
// laid out in the order given, and the header is padded with spaces so the
// data section starts 8-byte aligned, as the reference writer does.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "model/safetensors.h"

namespace sy::model {

// One tensor to write: `values` holds the product of `shape` fp32 values in
// row-major order; they are stored as `dtype` (F32, F16 or BF16).
struct WriterTensor {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

// fp32 -> bf16 bit pattern, round to nearest even; NaN becomes a quiet NaN.
inline uint16_t FloatToBf16Bits(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  const uint32_t lsb = (bits >> 16) & 1u;
  return static_cast<uint16_t>((bits + 0x7fffu + lsb) >> 16);
}

// fp32 -> IEEE binary16 bit pattern, round to nearest even. Magnitudes that
// round above 65504 become infinity; tiny ones become subnormals or zero.
inline uint16_t FloatToF16Bits(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t mag = bits & 0x7fffffffu;
  if (mag > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (mag >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  // Rounds an integer mantissa `m` right by `shift` bits, ties to even.
  auto round_shift = [](uint32_t m, uint32_t shift) {
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u) != 0)) ++q;
    return q;
  };
  const uint32_t exponent = mag >> 23;
  if (exponent >= 113) {
    // Normal in fp16: rebias the exponent and drop 13 mantissa bits. A
    // rounding carry into the exponent field gives the right encoding.
    const uint32_t rebased = mag - ((127u - 15u) << 23);
    return static_cast<uint16_t>(sign | round_shift(rebased, 13));
  }
  if (exponent < 102) return static_cast<uint16_t>(sign);  // below 2^-25: rounds to zero
  // Subnormal in fp16: the value in units of 2^-24 (a result of 0x400 is the
  // smallest normal, again the right encoding).
  const uint32_t mantissa = (mag & 0x7fffffu) | 0x800000u;
  return static_cast<uint16_t>(sign | round_shift(mantissa, 126u - exponent));
}

// Bytes of `values` stored as `dtype` (little-endian).
inline absl::StatusOr<std::string> EncodeTensorData(StDType dtype,
                                                    const std::vector<float>& values) {
  std::string out;
  switch (dtype) {
    case StDType::kF32:
      out.resize(values.size() * 4);
      for (size_t i = 0; i < values.size(); ++i) {
        const uint32_t b = std::bit_cast<uint32_t>(values[i]);
        for (int k = 0; k < 4; ++k) out[4 * i + k] = static_cast<char>((b >> (8 * k)) & 0xffu);
      }
      return out;
    case StDType::kF16:
    case StDType::kBF16:
      out.resize(values.size() * 2);
      for (size_t i = 0; i < values.size(); ++i) {
        const uint16_t b =
            dtype == StDType::kF16 ? FloatToF16Bits(values[i]) : FloatToBf16Bits(values[i]);
        out[2 * i] = static_cast<char>(b & 0xffu);
        out[2 * i + 1] = static_cast<char>(b >> 8);
      }
      return out;
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "safetensors writer: dtype ", std::string(StDTypeName(dtype)), " is not supported"));
  }
}

// The complete bytes of a safetensors file holding `tensors`.
inline absl::StatusOr<std::string> EncodeSafetensors(
    const std::vector<WriterTensor>& tensors,
    const std::map<std::string, std::string>& metadata = {}) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const WriterTensor& t : tensors) {
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    if (numel != static_cast<int64_t>(t.values.size())) {
      return absl::InvalidArgumentError(absl::StrCat("safetensors writer: tensor '", t.name,
                                                     "' has ", t.values.size(), " values for ",
                                                     numel, " elements"));
    }
    if (header.contains(t.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors writer: tensor '", t.name, "' given twice"));
    }
    absl::StatusOr<std::string> bytes = EncodeTensorData(t.dtype, t.values);
    if (!bytes.ok()) return bytes.status();
    const uint64_t begin = data.size();
    data += *bytes;
    header[t.name] = {{"dtype", std::string(StDTypeName(t.dtype))},
                      {"shape", t.shape},
                      {"data_offsets", {begin, static_cast<uint64_t>(data.size())}}};
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string header_text = header.dump();
  header_text.append((8 - (header_text.size() % 8)) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t header_size = header_text.size();
  for (int k = 0; k < 8; ++k) out[k] = static_cast<char>((header_size >> (8 * k)) & 0xffu);
  out += header_text;
  out += data;
  return out;
}

inline absl::Status WriteFileBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

// Writes `tensors` as one safetensors file at `path`.
inline absl::Status WriteSafetensors(const std::string& path,
                                     const std::vector<WriterTensor>& tensors) {
  absl::StatusOr<std::string> bytes = EncodeSafetensors(tensors, {{"format", "pt"}});
  if (!bytes.ok()) return bytes.status();
  return WriteFileBytes(path, *bytes);
}

// Hub shard file name, e.g. "model-00002-of-00003.safetensors".
inline std::string ShardFileName(int index, int count) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "model-%05d-of-%05d.safetensors", index + 1, count);
  return buf;
}

// Writes `tensors` into `dir` as `num_shards` files (consecutive runs of the
// list, as even in count as possible) plus model.safetensors.index.json, the
// way Hugging Face's save_pretrained shards a model.
inline absl::Status WriteShardedCheckpoint(const std::string& dir,
                                           const std::vector<WriterTensor>& tensors,
                                           int num_shards) {
  if (num_shards < 1 || static_cast<size_t>(num_shards) > tensors.size()) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors writer: cannot split ",
                                                   tensors.size(), " tensors into ", num_shards,
                                                   " non-empty shards"));
  }
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total_size = 0;
  size_t next = 0;
  for (int s = 0; s < num_shards; ++s) {
    const size_t end =
        tensors.size() * static_cast<size_t>(s + 1) / static_cast<size_t>(num_shards);
    std::vector<WriterTensor> shard(tensors.begin() + static_cast<std::ptrdiff_t>(next),
                                    tensors.begin() + static_cast<std::ptrdiff_t>(end));
    next = end;
    const std::string file = ShardFileName(s, num_shards);
    for (const WriterTensor& t : shard) {
      weight_map[t.name] = file;
      total_size += t.values.size() * StDTypeSize(t.dtype);
    }
    absl::Status written = WriteSafetensors(dir + "/" + file, shard);
    if (!written.ok()) return written;
  }
  nlohmann::json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  return WriteFileBytes(dir + "/model.safetensors.index.json", index.dump(2));
}

}  // namespace sy::model

// Reading Hugging Face safetensors checkpoints, memory-mapped.
//
// A SafetensorsFile maps one `.safetensors` file read-only and parses its
// header; tensor data is touched only when a tensor is read, so a worker that
// needs a few tensors of a large shard pages in only those. A Checkpoint is a
// model directory: one `model.safetensors` or shards listed in
// `model.safetensors.index.json`.
//
// Every malformed input (truncated file, bad header JSON, offsets outside the
// data section or overlapping, unknown dtype, shape/size mismatch, missing
// tensor) is an absl::Status naming the file and, where there is one, the
// tensor. Nothing here aborts on bad input.
//
// Thread safety: after Open() returns, all const methods may be called from
// any thread concurrently.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sy::model {

// Element types a safetensors header may name. Only kF32, kF16 and kBF16 can
// be read as weights; the others parse (so a header is accepted whole) but
// reading them is an error naming the dtype.
enum class StDType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool, kF8E4M3, kF8E5M2 };

std::string_view StDTypeName(StDType dtype);
size_t StDTypeSize(StDType dtype);

struct TensorInfo {
  std::string name;
  StDType dtype = StDType::kF32;
  std::vector<int64_t> shape;
  uint64_t data_begin = 0;  // byte offsets relative to the start of the data section
  uint64_t data_end = 0;

  int64_t num_elements() const;
};

// Parses the JSON header of a safetensors file. `data_size` is the number of
// bytes after the header; every tensor's [begin, end) must lie inside it, match
// dtype size times element count, and not overlap another tensor. `source`
// names the file in error messages. Exposed for tests and fuzzing.
absl::StatusOr<std::vector<TensorInfo>> ParseSafetensorsHeader(std::string_view header_json,
                                                               uint64_t data_size,
                                                               std::string_view source);

// Converts `num_elements` values of `dtype` at `src` to fp32 (`dst` must hold
// num_elements floats). Returns InvalidArgument for non-float dtypes.
absl::Status ConvertToF32(StDType dtype, const void* src, int64_t num_elements, float* dst);

class SafetensorsFile {
 public:
  // Maps and validates `path`. Fails on a missing/unreadable file, a file too
  // short for its header length, a header length over 100 MiB, or a bad header.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // nullptr when the file has no tensor of that name.
  const TensorInfo* Find(std::string_view name) const;
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // The header's "__metadata__" string map (may be empty).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Raw bytes of a tensor inside the mapping (valid while this object lives).
  const uint8_t* data(const TensorInfo& info) const { return data_ + info.data_begin; }

  // Reads tensor `name` converted to fp32 into `out` (num_elements floats).
  // `expected_shape` must equal the stored shape, else InvalidArgument naming
  // file, tensor, expected and actual shape.
  absl::Status ReadF32(std::string_view name, const std::vector<int64_t>& expected_shape,
                       float* out) const;
  // Reads sub-tensor `index0` along dimension 0 (see Checkpoint::ReadF32Slice).
  absl::Status ReadF32Slice(std::string_view name, const std::vector<int64_t>& expected_shape,
                            int64_t index0, float* out) const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  void* map_base_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section inside the mapping
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: `model.safetensors`, or the shards named by
// `model.safetensors.index.json` ("weight_map": tensor -> file). Shards are
// opened lazily on first access. Absent both, any single `*.safetensors` file
// in the directory is used if there is exactly one.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& dir);

  ~Checkpoint();
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  const std::string& dir() const { return dir_; }
  bool Has(std::string_view name) const;
  // All tensor names, sorted.
  std::vector<std::string> TensorNames() const;
  // Shape of tensor `name`; NotFound naming the tensor and directory.
  absl::StatusOr<std::vector<int64_t>> Shape(std::string_view name) const;
  // As SafetensorsFile::ReadF32, resolving the shard; NotFound when absent.
  absl::Status ReadF32(std::string_view name, const std::vector<int64_t>& expected_shape,
                       float* out) const;
  // Reads sub-tensor `index0` along dimension 0 of tensor `name` (whose whole
  // shape must equal `expected_shape`) as fp32 into `out` (numel / shape[0]
  // floats). Used for one expert of a fused [E, ...] expert tensor; only that
  // slice's bytes are touched. OutOfRange when index0 is not in [0, shape[0]).
  absl::Status ReadF32Slice(std::string_view name, const std::vector<int64_t>& expected_shape,
                            int64_t index0, float* out) const;

 private:
  Checkpoint() = default;
  absl::StatusOr<const SafetensorsFile*> FileFor(std::string_view name) const;

  struct Impl;
  std::string dir_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sy::model

#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace sy::model {

// The data section is read in place, so host and file byte order must agree.
static_assert(std::endian::native == std::endian::little,
              "safetensors reading assumes a little-endian host");

namespace {

using Json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = uint64_t{100} << 20;  // 100 MiB
constexpr uint64_t kMaxIndexBytes = uint64_t{100} << 20;
// A valid header nests three levels deep (root, entry, shape array). Bounding
// the depth before parsing keeps a hostile "[[[[..." header from costing
// gigabytes of parser stack.
constexpr int kMaxJsonDepth = 16;
constexpr std::string_view kMetadataKey = "__metadata__";
constexpr std::string_view kIndexFileName = "model.safetensors.index.json";
constexpr std::string_view kSingleFileName = "model.safetensors";
constexpr std::string_view kSafetensorsSuffix = ".safetensors";

struct DTypeEntry {
  StDType dtype;
  std::string_view name;
  size_t size;
};

constexpr DTypeEntry kDTypes[] = {
    {StDType::kF32, "F32", 4},   {StDType::kF16, "F16", 2},        {StDType::kBF16, "BF16", 2},
    {StDType::kF64, "F64", 8},   {StDType::kI64, "I64", 8},        {StDType::kI32, "I32", 4},
    {StDType::kI16, "I16", 2},   {StDType::kI8, "I8", 1},          {StDType::kU8, "U8", 1},
    {StDType::kBool, "BOOL", 1}, {StDType::kF8E4M3, "F8_E4M3", 1}, {StDType::kF8E5M2, "F8_E5M2", 1},
};

const DTypeEntry* LookupDType(std::string_view name) {
  for (const DTypeEntry& entry : kDTypes) {
    if (entry.name == name) return &entry;
  }
  return nullptr;
}

// absl::StrCat over arguments that may include std::string_view (Debian's
// abseil has its own string_view type, which AlphaNum requires).
template <typename T>
auto ToAlphaNumArg(const T& value) {
  if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    const std::string_view view = value;
    return absl::string_view(view.data(), view.size());
  } else {
    return value;
  }
}

template <typename... Args>
std::string Cat(const Args&... args) {
  return absl::StrCat(ToAlphaNumArg(args)...);
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return Cat("[", absl::StrJoin(shape, ", "), "]");
}

// Text taken from the input, made fit for an error message: bytes outside
// printable ASCII become \xNN and anything past 200 bytes is cut, so a
// hostile file cannot produce a megabyte-long or binary status message.
std::string ForMessage(std::string_view text) {
  constexpr size_t kMaxBytes = 200;
  std::string out;
  for (size_t i = 0; i < text.size() && i < kMaxBytes; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += {'\\', 'x', kHex[c >> 4], kHex[c & 0xf]};
    }
  }
  if (text.size() > kMaxBytes) out += Cat("... (", text.size(), " bytes)");
  return out;
}

// Prefix for errors about one tensor of one file.
std::string TensorContext(std::string_view source, std::string_view tensor) {
  return Cat(source, ": tensor '", ForMessage(tensor), "'");
}

// True when `text` nests arrays/objects deeper than `limit`. Brackets inside
// string literals are skipped; for malformed input the answer does not matter
// because the parser rejects it anyway.
bool NestingExceeds(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

// Parses `text` into a JSON object, turning every failure into a status
// naming `source`: nesting too deep, a syntax error (with nlohmann's
// position), a non-object root, or a root key given twice (nlohmann would
// otherwise keep only the last occurrence). `what` says which document it is.
absl::Status ParseJsonObject(std::string_view text, std::string_view what, std::string_view source,
                             Json* out) {
  if (NestingExceeds(text, kMaxJsonDepth)) {
    return absl::InvalidArgumentError(
        Cat(source, ": ", what, " JSON nests deeper than ", kMaxJsonDepth, " levels"));
  }
  std::set<std::string, std::less<>> root_keys;
  std::optional<std::string> duplicate_key;
  Json::parser_callback_t callback = [&](int depth, Json::parse_event_t event, Json& parsed) {
    // Keys reported at depth 1 belong to the root object, and only to it.
    if (depth == 1 && event == Json::parse_event_t::key && !duplicate_key.has_value() &&
        parsed.is_string()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!root_keys.insert(key).second) duplicate_key = key;
    }
    return true;
  };
  try {
    *out = Json::parse(text.data(), text.data() + text.size(), callback);
  } catch (const std::exception& e) {
    // Syntax errors, and anything else (allocation failure) the parser throws.
    return absl::InvalidArgumentError(
        Cat(source, ": ", what, " is not valid JSON (", ForMessage(e.what()), ")"));
  }
  if (!out->is_object()) {
    return absl::InvalidArgumentError(
        Cat(source, ": ", what, " is a JSON ", out->type_name(), ", not an object"));
  }
  if (duplicate_key.has_value()) {
    return absl::InvalidArgumentError(
        Cat(source, ": ", what, " names '", ForMessage(*duplicate_key), "' more than once"));
  }
  return absl::OkStatus();
}

// Reads a non-negative JSON integer (which nlohmann stores as unsigned).
bool JsonToU64(const Json& value, uint64_t* out) {
  if (!value.is_number_unsigned()) return false;
  *out = value.get<uint64_t>();
  return true;
}

absl::Status ParseTensorEntry(std::string_view source, const std::string& name, const Json& entry,
                              uint64_t data_size, TensorInfo* info) {
  const std::string context = TensorContext(source, name);
  if (!entry.is_object()) {
    return absl::InvalidArgumentError(
        Cat(context, ": header entry is a JSON ", entry.type_name(), ", not an object"));
  }
  info->name = name;

  // dtype
  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) {
    return absl::InvalidArgumentError(Cat(context, ": missing \"dtype\""));
  }
  if (!dtype_it->is_string()) {
    return absl::InvalidArgumentError(
        Cat(context, ": \"dtype\" is a JSON ", dtype_it->type_name(), ", not a string"));
  }
  const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
  const DTypeEntry* dtype = LookupDType(dtype_name);
  if (dtype == nullptr) {
    return absl::InvalidArgumentError(
        Cat(context, ": unknown dtype \"", ForMessage(dtype_name), "\""));
  }
  info->dtype = dtype->dtype;

  // shape, with the element count accumulated as it is read.
  auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) {
    return absl::InvalidArgumentError(Cat(context, ": missing \"shape\""));
  }
  if (!shape_it->is_array()) {
    return absl::InvalidArgumentError(
        Cat(context, ": \"shape\" is a JSON ", shape_it->type_name(), ", not an array"));
  }
  info->shape.clear();
  info->shape.reserve(shape_it->size());
  int64_t num_elements = 1;
  for (size_t i = 0; i < shape_it->size(); ++i) {
    const Json& dim = (*shape_it)[i];
    if (dim.is_number_integer() && !dim.is_number_unsigned()) {
      return absl::InvalidArgumentError(
          Cat(context, ": negative dimension ", dim.get<int64_t>(), " at shape[", i, "]"));
    }
    uint64_t value = 0;
    if (!JsonToU64(dim, &value)) {
      return absl::InvalidArgumentError(
          Cat(context, ": shape[", i, "] is a JSON ", dim.type_name(), ", not an integer"));
    }
    // Each dimension must fit TensorInfo's int64, and so must every prefix
    // product (checked in order, so [2^40, 2^40, 0] is rejected too).
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(num_elements, static_cast<int64_t>(value), &num_elements)) {
      return absl::InvalidArgumentError(
          Cat(context, ": element count of the shape overflows int64"));
    }
    info->shape.push_back(static_cast<int64_t>(value));
  }

  // data_offsets
  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) {
    return absl::InvalidArgumentError(Cat(context, ": missing \"data_offsets\""));
  }
  if (!offsets_it->is_array() || offsets_it->size() != 2 ||
      !JsonToU64((*offsets_it)[0], &info->data_begin) ||
      !JsonToU64((*offsets_it)[1], &info->data_end)) {
    return absl::InvalidArgumentError(
        Cat(context, ": \"data_offsets\" must be an array of two non-negative integers"));
  }
  if (info->data_begin > info->data_end) {
    return absl::InvalidArgumentError(
        Cat(context, ": data_offsets begin ", info->data_begin, " > end ", info->data_end));
  }
  if (info->data_end > data_size) {
    return absl::DataLossError(Cat(context, ": data_offsets end ", info->data_end,
                                   " is past the end of the data section (", data_size, " bytes)"));
  }
  uint64_t expected_bytes = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(num_elements), uint64_t{dtype->size},
                             &expected_bytes)) {
    return absl::InvalidArgumentError(Cat(context, ": byte size of ", dtype->name, " shape ",
                                          ShapeString(info->shape), " overflows"));
  }
  const uint64_t actual_bytes = info->data_end - info->data_begin;
  if (actual_bytes != expected_bytes) {
    return absl::InvalidArgumentError(Cat(context, ": data_offsets span ", actual_bytes,
                                          " bytes but ", dtype->name, " shape ",
                                          ShapeString(info->shape), " needs ", expected_bytes));
  }
  return absl::OkStatus();
}

absl::Status ParseMetadata(std::string_view source, const Json& value,
                           std::map<std::string, std::string>* metadata) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        Cat(source, ": \"", kMetadataKey, "\" is a JSON ", value.type_name(), ", not an object"));
  }
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(Cat(source, ": \"", kMetadataKey, "\" value for '",
                                            ForMessage(it.key()), "' is a JSON ",
                                            it.value().type_name(), ", not a string"));
    }
    (*metadata)[it.key()] = it.value().get<std::string>();
  }
  return absl::OkStatus();
}

struct ParsedHeader {
  std::vector<TensorInfo> tensors;  // ordered by data_begin, ties by name
  std::map<std::string, std::string> metadata;
};

absl::StatusOr<ParsedHeader> ParseHeader(std::string_view header_json, uint64_t data_size,
                                         std::string_view source) {
  Json root;
  SY_RETURN_IF_ERROR(ParseJsonObject(header_json, "header", source, &root));

  ParsedHeader parsed;
  parsed.tensors.reserve(root.size());
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == kMetadataKey) {
      SY_RETURN_IF_ERROR(ParseMetadata(source, it.value(), &parsed.metadata));
      continue;
    }
    TensorInfo info;
    SY_RETURN_IF_ERROR(ParseTensorEntry(source, it.key(), it.value(), data_size, &info));
    parsed.tensors.push_back(std::move(info));
  }

  // Overlap check: once sorted by begin, each tensor must end at or before
  // the next one starts. Empty tensors occupy no bytes and overlap nothing.
  std::sort(parsed.tensors.begin(), parsed.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) {
              return std::tie(a.data_begin, a.name) < std::tie(b.data_begin, b.name);
            });
  const TensorInfo* previous = nullptr;  // last non-empty tensor seen
  for (const TensorInfo& info : parsed.tensors) {
    if (info.data_begin == info.data_end) continue;
    if (previous != nullptr && previous->data_end > info.data_begin) {
      return absl::InvalidArgumentError(Cat(TensorContext(source, info.name), ": data_offsets [",
                                            info.data_begin, ", ", info.data_end,
                                            ") overlap tensor '", previous->name, "' at [",
                                            previous->data_begin, ", ", previous->data_end, ")"));
    }
    previous = &info;
  }
  return parsed;
}

// fp16 bit pattern -> fp32, exact for every input (subnormals, infinities and
// NaN payloads included).
float HalfToFloat(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  const uint32_t exponent = (half >> 10) & 0x1fu;
  const uint32_t mantissa = half & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf or NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13);  // normal: rebias
  } else {
    // Zero or subnormal: mantissa * 2^-24, a normal fp32 (or zero), exactly.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    bits = sign | std::bit_cast<uint32_t>(magnitude);
  }
  return std::bit_cast<float>(bits);
}

// The data section has no alignment guarantee, so 16-bit values are
// assembled byte by byte.
uint16_t LoadU16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (static_cast<unsigned>(p[1]) << 8));
}

absl::Status ErrnoError(int error_number, std::string_view what, const std::string& path) {
  return absl::ErrnoToStatus(error_number, Cat(path, ": ", what));
}

// Reads a whole small file (the index JSON) into `out`.
absl::Status ReadSmallFile(const std::string& path, uint64_t max_bytes, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(Cat(path, ": cannot open"));
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) return absl::DataLossError(Cat(path, ": cannot determine the file size"));
  if (static_cast<uint64_t>(size) > max_bytes) {
    return absl::InvalidArgumentError(
        Cat(path, ": ", static_cast<int64_t>(size), " bytes exceeds the limit of ", max_bytes));
  }
  in.seekg(0, std::ios::beg);
  out->assign(static_cast<size_t>(size), '\0');
  if (size > 0 && !in.read(out->data(), size)) {
    return absl::DataLossError(Cat(path, ": read failed"));
  }
  return absl::OkStatus();
}

// A shard name from the index must stay inside the checkpoint directory: no
// separators, not "." or "..", no NUL.
bool IsPlainFileName(std::string_view name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find_first_of(std::string_view("/\\\0", 3)) == std::string_view::npos;
}

}  // namespace

std::string_view StDTypeName(StDType dtype) {
  for (const DTypeEntry& entry : kDTypes) {
    if (entry.dtype == dtype) return entry.name;
  }
  return "UNKNOWN";
}

size_t StDTypeSize(StDType dtype) {
  for (const DTypeEntry& entry : kDTypes) {
    if (entry.dtype == dtype) return entry.size;
  }
  return 0;
}

// Product of the dimensions; -1 when a dimension is negative or the product
// overflows (neither happens for a TensorInfo that came out of a parse).
int64_t TensorInfo::num_elements() const {
  int64_t count = 1;
  for (int64_t dim : shape) {
    if (dim < 0 || __builtin_mul_overflow(count, dim, &count)) return -1;
  }
  return count;
}

absl::StatusOr<std::vector<TensorInfo>> ParseSafetensorsHeader(std::string_view header_json,
                                                               uint64_t data_size,
                                                               std::string_view source) {
  SY_ASSIGN_OR_RETURN(ParsedHeader parsed, ParseHeader(header_json, data_size, source));
  return std::move(parsed.tensors);
}

absl::Status ConvertToF32(StDType dtype, const void* src, int64_t num_elements, float* dst) {
  if (dtype != StDType::kF32 && dtype != StDType::kF16 && dtype != StDType::kBF16) {
    return absl::InvalidArgumentError(
        Cat("dtype ", StDTypeName(dtype), " cannot be converted to F32"));
  }
  if (num_elements < 0) {
    return absl::InvalidArgumentError(Cat("negative element count ", num_elements));
  }
  if (num_elements == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) {
    return absl::InvalidArgumentError("null buffer passed to ConvertToF32");
  }
  const auto* in = static_cast<const uint8_t*>(src);
  const auto count = static_cast<size_t>(num_elements);
  switch (dtype) {
    case StDType::kF32:
      std::memcpy(dst, in, count * sizeof(float));
      break;
    case StDType::kF16:
      for (size_t i = 0; i < count; ++i) dst[i] = HalfToFloat(LoadU16(in + 2 * i));
      break;
    case StDType::kBF16:
      // bf16 is the upper half of an fp32 bit pattern.
      for (size_t i = 0; i < count; ++i) {
        dst[i] = std::bit_cast<float>(static_cast<uint32_t>(LoadU16(in + 2 * i)) << 16);
      }
      break;
    default:
      break;  // rejected above
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, "cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int error_number = errno;
    ::close(fd);
    return ErrnoError(error_number, "cannot stat", path);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(Cat(path, ": not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return absl::DataLossError(
        Cat(path, ": file is ", file_size, " bytes, too short for the 8-byte header length"));
  }
  if (file_size > std::numeric_limits<size_t>::max()) {
    ::close(fd);
    return absl::InvalidArgumentError(Cat(path, ": file too large to map"));
  }

  // The object owns the mapping from here on, so every early return unmaps.
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  void* base = ::mmap(nullptr, static_cast<size_t>(file_size), PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_errno = errno;
  ::close(fd);  // the mapping holds its own reference to the file
  if (base == MAP_FAILED) return ErrnoError(mmap_errno, "mmap failed", path);
  file->map_base_ = base;
  file->map_size_ = static_cast<size_t>(file_size);

  const auto* bytes = static_cast<const uint8_t*>(base);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes, sizeof(header_size));  // little-endian, as on disk
  if (header_size > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        Cat(path, ": header length ", header_size, " exceeds the limit of ", kMaxHeaderBytes));
  }
  if (header_size > file_size - 8) {
    return absl::DataLossError(Cat(path, ": header length ", header_size, " exceeds the ",
                                   file_size - 8,
                                   " bytes after the length prefix (truncated file?)"));
  }
  const std::string_view header(reinterpret_cast<const char*>(bytes + 8),
                                static_cast<size_t>(header_size));
  const uint64_t data_size = file_size - 8 - header_size;
  SY_ASSIGN_OR_RETURN(ParsedHeader parsed, ParseHeader(header, data_size, path));

  file->data_ = bytes + 8 + header_size;
  file->tensors_ = std::move(parsed.tensors);
  file->metadata_ = std::move(parsed.metadata);
  for (size_t i = 0; i < file->tensors_.size(); ++i) {
    file->index_.emplace(file->tensors_[i].name, i);
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_base_ != nullptr) ::munmap(map_base_, map_size_);
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::Status SafetensorsFile::ReadF32(std::string_view name,
                                      const std::vector<int64_t>& expected_shape,
                                      float* out) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(Cat(path_, ": no tensor '", name, "'"));
  }
  if (info->shape != expected_shape) {
    return absl::InvalidArgumentError(Cat(TensorContext(path_, name), ": expected shape ",
                                          ShapeString(expected_shape), ", file has ",
                                          ShapeString(info->shape)));
  }
  return Annotate(ConvertToF32(info->dtype, data(*info), info->num_elements(), out),
                  TensorContext(path_, name));
}

absl::Status SafetensorsFile::ReadF32Slice(std::string_view name,
                                           const std::vector<int64_t>& expected_shape,
                                           int64_t index0, float* out) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(Cat(path_, ": no tensor '", name, "'"));
  }
  if (info->shape != expected_shape || info->shape.empty()) {
    return absl::InvalidArgumentError(Cat(TensorContext(path_, name), ": expected shape ",
                                          ShapeString(expected_shape), ", file has ",
                                          ShapeString(info->shape)));
  }
  if (index0 < 0 || index0 >= info->shape[0]) {
    return absl::OutOfRangeError(Cat(TensorContext(path_, name), ": slice ", index0,
                                     " outside dimension 0 of size ", info->shape[0]));
  }
  const int64_t slice_elems = info->num_elements() / info->shape[0];
  const uint8_t* base = data(*info) + index0 * slice_elems * StDTypeSize(info->dtype);
  return Annotate(ConvertToF32(info->dtype, base, slice_elems, out), TensorContext(path_, name));
}

// ---------------------------------------------------------------------------
// Checkpoint

struct Checkpoint::Impl {
  struct Shard {
    std::string path;
    std::mutex mu;                          // guards `file` while it is lazily opened
    std::unique_ptr<SafetensorsFile> file;  // null until first use
  };
  std::string index_path;  // empty for a single-file checkpoint
  std::vector<std::unique_ptr<Shard>> shards;
  std::map<std::string, size_t, std::less<>> tensor_shard;  // tensor -> index into shards
};

namespace {

// Builds the tensor -> shard map from `model.safetensors.index.json`.
absl::Status LoadIndex(const std::string& dir, const std::string& index_path,
                       std::vector<std::string>* shard_files,
                       std::map<std::string, size_t, std::less<>>* tensor_shard) {
  std::string text;
  SY_RETURN_IF_ERROR(ReadSmallFile(index_path, kMaxIndexBytes, &text));
  Json root;
  SY_RETURN_IF_ERROR(ParseJsonObject(text, "index", index_path, &root));
  auto map_it = root.find("weight_map");
  if (map_it == root.end()) {
    return absl::InvalidArgumentError(Cat(index_path, ": missing \"weight_map\""));
  }
  if (!map_it->is_object()) {
    return absl::InvalidArgumentError(
        Cat(index_path, ": \"weight_map\" is a JSON ", map_it->type_name(), ", not an object"));
  }
  std::map<std::string, size_t> shard_ids;
  for (auto it = map_it->begin(); it != map_it->end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(Cat(index_path, ": weight_map entry for tensor '",
                                            ForMessage(it.key()), "' is a JSON ",
                                            it.value().type_name(), ", not a string"));
    }
    const std::string& file_name = it.value().get_ref<const std::string&>();
    if (!IsPlainFileName(file_name)) {
      return absl::InvalidArgumentError(Cat(
          index_path, ": weight_map entry for tensor '", ForMessage(it.key()), "' names shard \"",
          ForMessage(file_name), "\", which is not a plain file name in ", dir));
    }
    auto [shard_it, inserted] = shard_ids.emplace(file_name, shard_files->size());
    if (inserted) shard_files->push_back(file_name);
    tensor_shard->emplace(it.key(), shard_it->second);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(Cat(dir, ": not a directory"));
  }
  std::unique_ptr<Checkpoint> checkpoint(new Checkpoint());
  checkpoint->dir_ = dir;
  checkpoint->impl_ = std::make_unique<Impl>();
  Impl& impl = *checkpoint->impl_;
  const fs::path root(dir);

  const fs::path index_path = root / std::string(kIndexFileName);
  if (fs::exists(index_path, ec)) {
    impl.index_path = index_path.string();
    std::vector<std::string> shard_files;
    SY_RETURN_IF_ERROR(LoadIndex(dir, impl.index_path, &shard_files, &impl.tensor_shard));
    for (const std::string& file_name : shard_files) {
      auto shard = std::make_unique<Impl::Shard>();
      shard->path = (root / file_name).string();
      impl.shards.push_back(std::move(shard));
    }
    return checkpoint;
  }

  // Single-file checkpoint: model.safetensors, else the only *.safetensors.
  fs::path single = root / std::string(kSingleFileName);
  if (!fs::exists(single, ec)) {
    std::vector<fs::path> candidates;
    fs::directory_iterator it(root, ec);
    if (ec) {
      return absl::NotFoundError(Cat(dir, ": cannot list directory: ", ec.message()));
    }
    for (; it != fs::directory_iterator(); it.increment(ec)) {
      if (ec) break;
      const std::string name = it->path().filename().string();
      std::error_code type_ec;  // a dangling symlink is skipped, not an error
      if (name.size() > kSafetensorsSuffix.size() && name.ends_with(kSafetensorsSuffix) &&
          it->is_regular_file(type_ec)) {
        candidates.push_back(it->path());
      }
    }
    if (ec) {
      return absl::NotFoundError(Cat(dir, ": cannot list directory: ", ec.message()));
    }
    if (candidates.size() != 1) {
      return absl::NotFoundError(Cat(dir, ": no ", kIndexFileName, " or ", kSingleFileName,
                                     ", and ", candidates.size(),
                                     " *.safetensors files instead of exactly one"));
    }
    single = candidates.front();
  }
  auto shard = std::make_unique<Impl::Shard>();
  shard->path = single.string();
  SY_ASSIGN_OR_RETURN(shard->file, SafetensorsFile::Open(shard->path));
  for (const TensorInfo& info : shard->file->tensors()) impl.tensor_shard.emplace(info.name, 0);
  impl.shards.push_back(std::move(shard));
  return checkpoint;
}

Checkpoint::~Checkpoint() = default;

bool Checkpoint::Has(std::string_view name) const {
  return impl_->tensor_shard.find(name) != impl_->tensor_shard.end();
}

std::vector<std::string> Checkpoint::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(impl_->tensor_shard.size());
  for (const auto& [name, shard] : impl_->tensor_shard) names.push_back(name);
  return names;  // std::map keeps them sorted
}

absl::StatusOr<const SafetensorsFile*> Checkpoint::FileFor(std::string_view name) const {
  auto it = impl_->tensor_shard.find(name);
  if (it == impl_->tensor_shard.end()) {
    return absl::NotFoundError(Cat(dir_, ": checkpoint has no tensor '", name, "'"));
  }
  Impl::Shard& shard = *impl_->shards[it->second];
  const SafetensorsFile* file = nullptr;
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    if (shard.file == nullptr) {
      // A failed open is not cached: the next access tries again.
      auto opened = SafetensorsFile::Open(shard.path);
      if (!opened.ok()) {
        return Annotate(opened.status(),
                        Cat("opening shard for tensor '", name, "' listed in ", impl_->index_path));
      }
      shard.file = std::move(opened).value();
    }
    file = shard.file.get();
  }
  if (file->Find(name) == nullptr) {
    return absl::NotFoundError(Cat(file->path(), ": tensor '", name, "' is listed in ",
                                   impl_->index_path, " but absent from the shard"));
  }
  return file;
}

absl::StatusOr<std::vector<int64_t>> Checkpoint::Shape(std::string_view name) const {
  SY_ASSIGN_OR_RETURN(const SafetensorsFile* file, FileFor(name));
  return file->Find(name)->shape;
}

absl::Status Checkpoint::ReadF32(std::string_view name, const std::vector<int64_t>& expected_shape,
                                 float* out) const {
  SY_ASSIGN_OR_RETURN(const SafetensorsFile* file, FileFor(name));
  return file->ReadF32(name, expected_shape, out);
}

absl::Status Checkpoint::ReadF32Slice(std::string_view name,
                                      const std::vector<int64_t>& expected_shape, int64_t index0,
                                      float* out) const {
  SY_ASSIGN_OR_RETURN(const SafetensorsFile* file, FileFor(name));
  return file->ReadF32Slice(name, expected_shape, index0, out);
}

}  // namespace sy::model

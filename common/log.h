// Minimal leveled logging to stderr (Debian 12's abseil predates absl/log).
//
//   SY_LOG(INFO) << "loaded " << n << " tensors";
//   SY_CHECK(ptr != nullptr) << "programmer error only";
//
// SY_CHECK is for programmer errors; input a user can send gets an
// absl::Status instead. Thread-safe: each message is written with one call.
#pragma once

#include <sstream>
#include <string_view>

namespace sy {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kFatal = 4 };

// Messages below this level are dropped. Default kInfo; SWITCHYARD_LOG_LEVEL
// is read once by binaries' main(), never by library code.
void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();
// Parses "debug", "info", "warning", "error"; returns false on anything else.
bool ParseLogLevel(std::string_view text, LogLevel* level);

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

// Swallows the stream when a message is filtered out.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace sy

#define SY_LOG_LEVEL_DEBUG ::sy::LogLevel::kDebug
#define SY_LOG_LEVEL_INFO ::sy::LogLevel::kInfo
#define SY_LOG_LEVEL_WARNING ::sy::LogLevel::kWarning
#define SY_LOG_LEVEL_ERROR ::sy::LogLevel::kError
#define SY_LOG_LEVEL_FATAL ::sy::LogLevel::kFatal

#define SY_LOG(level)                          \
  (SY_LOG_LEVEL_##level < ::sy::MinLogLevel()) \
      ? (void)0                                \
      : ::sy::LogVoidify() & ::sy::LogMessage(SY_LOG_LEVEL_##level, __FILE__, __LINE__).stream()

#define SY_CHECK(cond)                                                                             \
  (cond)                                                                                           \
      ? (void)0                                                                                    \
      : ::sy::LogVoidify() & ::sy::LogMessage(::sy::LogLevel::kFatal, __FILE__, __LINE__).stream() \
                                 << "Check failed: " #cond " "

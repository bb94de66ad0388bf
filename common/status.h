// Status helpers shared by every Switchyard library.
//
// Debian 12's abseil (20220623) has no ABSL_RETURN_IF_ERROR, so the project
// carries its own pair of macros. Host code returns absl::Status or
// absl::StatusOr<T>; these chain them without nesting.
#pragma once

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SY_STATUS_CONCAT_INNER(a, b) a##b
#define SY_STATUS_CONCAT(a, b) SY_STATUS_CONCAT_INNER(a, b)

// Evaluates `expr` (an absl::Status) and returns it from the enclosing
// function when it is not OK.
#define SY_RETURN_IF_ERROR(expr)                     \
  do {                                               \
    ::absl::Status sy_status_tmp_ = (expr);          \
    if (!sy_status_tmp_.ok()) return sy_status_tmp_; \
  } while (false)

// `SY_ASSIGN_OR_RETURN(auto x, Foo());` evaluates an absl::StatusOr<T>, returns
// its status on error, otherwise moves the value into `lhs`.
#define SY_ASSIGN_OR_RETURN(lhs, expr) \
  SY_ASSIGN_OR_RETURN_IMPL(SY_STATUS_CONCAT(sy_statusor_, __LINE__), lhs, expr)

#define SY_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return std::move(tmp).status(); \
  lhs = std::move(tmp).value()

namespace sy {

// Prepends `context: ` to a non-OK status message, keeping its code.
inline absl::Status Annotate(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), std::string(context) + ": " + std::string(status.message()));
}

}  // namespace sy

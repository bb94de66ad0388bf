// The one mapping between absl::Status and grpc::Status for every
// Switchyard service and client: codes map one to one (absl's codes are
// gRPC's canonical codes), the message is kept.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace sy::api {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);
// "OK", "CANCELLED", ... for logs, metrics labels and reports.
const char* GrpcCodeName(grpc::StatusCode code);

}  // namespace sy::api

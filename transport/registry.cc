#include "transport/registry.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "transport/exchange_args.h"

#if SY_TRANSPORT_WITH_UCX
#include "transport/ucx/ucx_transport.h"
#endif

namespace sy::transport {

std::vector<std::string> AvailableTransportBackends() {
  std::vector<std::string> names = {"inproc"};
#if SY_TRANSPORT_WITH_UCX
  names.push_back("ucx");
#endif
  return names;
}

absl::StatusOr<std::unique_ptr<Transport>> CreateTransport(const TransportOptions& options) {
  if (!IsValidRank(options.rank)) {
    return absl::InvalidArgumentError(
        absl::StrCat("transport rank ", options.rank, " out of range [0, ", kMaxRanks, ")"));
  }
  if (options.backend == "inproc") {
    if (options.fabric == nullptr) {
      return absl::InvalidArgumentError("the inproc transport needs TransportOptions::fabric");
    }
    return std::unique_ptr<Transport>(
        std::make_unique<inproc::InprocTransport>(options.fabric, options.rank));
  }
  if (options.backend == "ucx") {
#if SY_TRANSPORT_WITH_UCX
    ucx::UcxTransport::Options ucx_options;
    ucx_options.rank = options.rank;
    ucx_options.port_range = options.port_range;
    ucx_options.serialized = options.serialized;
    SY_ASSIGN_OR_RETURN(std::unique_ptr<ucx::UcxTransport> transport,
                        ucx::UcxTransport::Create(ucx_options));
    return std::unique_ptr<Transport>(std::move(transport));
#else
    return absl::UnimplementedError("transport backend 'ucx' is not built into this binary");
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown transport backend '", options.backend,
                   "' (available: ", absl::StrJoin(AvailableTransportBackends(), ", "), ")"));
}

absl::StatusOr<std::vector<std::unique_ptr<Transport>>> CreateInprocTransports(int32_t n) {
  TransportOptions options;
  options.backend = "inproc";
  options.fabric = std::make_shared<inproc::Fabric>();
  std::vector<std::unique_ptr<Transport>> out;
  for (int32_t r = 0; r < n; ++r) {
    options.rank = r;
    SY_ASSIGN_OR_RETURN(std::unique_ptr<Transport> t, CreateTransport(options));
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace sy::transport

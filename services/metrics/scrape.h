// A minimal HTTP/1.0 GET over TCP, for scraping /metrics in tests, the
// launcher's checks and tools (no TLS, no redirects).
#pragma once

#include <chrono>
#include <string>

#include "absl/status/statusor.h"

namespace sy::metrics {

// The body of GET http://host:port<path> when the answer is 200; Unavailable
// when nothing answers within `timeout`, Internal for another status (named).
absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path,
                                    std::chrono::milliseconds timeout);

}  // namespace sy::metrics

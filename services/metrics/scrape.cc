#include "services/metrics/scrape.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace sy::metrics {
namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

// Waits for `events` on fd until `deadline`; false on timeout or error.
bool WaitFor(int fd, short events, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    const int r = poll(&p, 1, static_cast<int>(left.count()));
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return false;
  }
}

}  // namespace

absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& path,
                                    std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const std::string where = absl::StrCat(host, ":", port, path);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 ||
      res == nullptr) {
    return absl::UnavailableError(absl::StrCat("GET ", where, ": cannot resolve ", host));
  }
  Fd s;
  s.fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  const int rc = s.fd < 0 ? -1 : connect(s.fd, res->ai_addr, res->ai_addrlen);
  freeaddrinfo(res);
  if (s.fd < 0 || (rc != 0 && errno != EINPROGRESS)) {
    return absl::UnavailableError(absl::StrCat("GET ", where, ": ", std::strerror(errno)));
  }
  if (!WaitFor(s.fd, POLLOUT, deadline)) {
    return absl::UnavailableError(absl::StrCat("GET ", where, ": no connection"));
  }
  int err = 0;
  socklen_t len = sizeof(err);
  getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0)
    return absl::UnavailableError(absl::StrCat("GET ", where, ": ", std::strerror(err)));
  const std::string req = absl::StrCat("GET ", path, " HTTP/1.0\r\nHost: ", host, "\r\n\r\n");
  size_t sent = 0;
  while (sent < req.size()) {
    if (!WaitFor(s.fd, POLLOUT, deadline)) {
      return absl::UnavailableError(absl::StrCat("GET ", where, ": send timed out"));
    }
    const ssize_t n = send(s.fd, req.data() + sent, req.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      return absl::UnavailableError(absl::StrCat("GET ", where, ": ", std::strerror(errno)));
    }
    if (n > 0) sent += static_cast<size_t>(n);
  }
  std::string resp;
  char buf[16384];
  for (;;) {
    if (!WaitFor(s.fd, POLLIN, deadline)) {
      return absl::UnavailableError(absl::StrCat("GET ", where, ": no answer in time"));
    }
    const ssize_t n = recv(s.fd, buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("GET ", where, ": ", std::strerror(errno)));
    }
    resp.append(buf, static_cast<size_t>(n));
  }
  const size_t head_end = resp.find("\r\n\r\n");
  if (head_end == std::string::npos) {
    return absl::InternalError(absl::StrCat("GET ", where, ": malformed answer"));
  }
  const std::string status_line = resp.substr(0, resp.find("\r\n"));
  std::vector<std::string> parts = absl::StrSplit(status_line, ' ');
  int code = 0;
  if (parts.size() < 2 || !absl::SimpleAtoi(parts[1], &code)) {
    return absl::InternalError(
        absl::StrCat("GET ", where, ": malformed status line '", status_line, "'"));
  }
  if (code != 200) {
    return absl::InternalError(absl::StrCat("GET ", where, ": ", status_line));
  }
  return resp.substr(head_end + 4);
}

}  // namespace sy::metrics

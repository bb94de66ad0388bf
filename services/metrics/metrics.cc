#include "services/metrics/metrics.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/text_serializer.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace sy::metrics {

std::vector<double> RequestLatencyBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120};
}

std::vector<double> TokenLatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2};
}

std::vector<double> StepBuckets() {
  return {2e-5,  5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01,
          0.025, 0.05, 0.1,  0.25,   0.5,  1,    2.5,    5,    10};
}

std::vector<double> CountBuckets() {
  std::vector<double> b;
  for (double v = 1; v <= 16384; v *= 2) b.push_back(v);
  return b;
}

namespace {

prometheus::MetricFamily Family(const std::string& name, const std::string& help,
                                prometheus::MetricType type) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = type;
  return f;
}

}  // namespace

prometheus::MetricFamily GaugeFamily(const std::string& name, const std::string& help) {
  return Family(name, help, prometheus::MetricType::Gauge);
}

prometheus::MetricFamily CounterFamily(const std::string& name, const std::string& help) {
  return Family(name, help, prometheus::MetricType::Counter);
}

void AddSample(prometheus::MetricFamily& family, double value, const Labels& labels) {
  prometheus::ClientMetric m;
  for (const auto& [k, v] : labels) m.label.push_back({k, v});
  if (family.type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  family.metric.push_back(std::move(m));
}

std::vector<prometheus::MetricFamily> Collector::Collect() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!fn_) return {};
  return fn_();
}

void Collector::Disable() {
  std::lock_guard<std::mutex> lock(mu_);
  fn_ = nullptr;
}

absl::StatusOr<std::unique_ptr<Endpoint>> Endpoint::Start(
    const std::string& host, int port, std::shared_ptr<prometheus::Registry> registry) {
  const bool v6 = host.find(':') != std::string::npos;
  const std::string bind_to =
      v6 ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res) != 0 ||
      res == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot listen on ", bind_to, " (cannot resolve ", host, ")"));
  }
  const int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  bool ok = fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
            bind(fd, res->ai_addr, res->ai_addrlen) == 0 && listen(fd, 64) == 0;
  const int err = errno;
  freeaddrinfo(res);
  if (!ok) {
    if (fd >= 0) close(fd);
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot listen on ", bind_to, " (", std::strerror(err), ")"));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  std::unique_ptr<Endpoint> e(new Endpoint());
  e->host_ = host;
  e->port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                               : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  e->listen_fd_ = fd;
  e->wake_fd_ = eventfd(0, EFD_CLOEXEC);
  if (e->wake_fd_ < 0) {
    const int efd_err = errno;
    close(fd);
    return absl::InternalError(absl::StrCat("metrics: eventfd: ", std::strerror(efd_err)));
  }
  e->registry_ = std::move(registry);
  Endpoint* self = e.get();
  e->thread_ = std::thread([self] { self->Serve(); });
  return e;
}

Endpoint::~Endpoint() {
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  close(listen_fd_);
  close(wake_fd_);
}

void Endpoint::Serve() {
  for (;;) {
    pollfd p[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[1].revents != 0) return;
    if ((p[0].revents & POLLIN) == 0) continue;
    const int c = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    Answer(c);
    close(c);
  }
}

namespace {

// Sends all of `data`, giving up after `deadline`.
void SendAll(int fd, const std::string& data, std::chrono::steady_clock::time_point deadline) {
  size_t sent = 0;
  while (sent < data.size() && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLOUT, 0};
    if (poll(&p, 1, 1000) <= 0) continue;
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EINTR && errno != EAGAIN) return;
    if (n > 0) sent += static_cast<size_t>(n);
  }
}

std::string Response(const char* status, const std::string& content_type, const std::string& body) {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", content_type,
                      "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
}

}  // namespace

void Endpoint::Answer(int fd) {
  // One request per connection, its head within 5 s (a scraper sends it at
  // once; a stalled client must not hold the endpoint).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  std::string head;
  char buf[2048];
  while (head.find("\r\n\r\n") == std::string::npos && head.size() < 16384) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return;
    pollfd p{fd, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return;
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return;
    head.append(buf, static_cast<size_t>(n));
  }
  const std::string line = head.substr(0, head.find("\r\n"));
  std::vector<std::string> parts = absl::StrSplit(line, ' ');
  const std::string text_plain = "text/plain; charset=utf-8";
  if (parts.size() < 2) {
    SendAll(fd, Response("400 Bad Request", text_plain, "bad request\n"), deadline);
    return;
  }
  std::string path = parts[1];
  if (const size_t q = path.find('?'); q != std::string::npos) path.resize(q);
  if (parts[0] != "GET") {
    SendAll(fd, Response("405 Method Not Allowed", text_plain, "only GET\n"), deadline);
    return;
  }
  if (path != "/metrics") {
    SendAll(fd, Response("404 Not Found", text_plain, "metrics are at /metrics\n"), deadline);
    return;
  }
  SendAll(fd, Response("200 OK", "text/plain; version=0.0.4; charset=utf-8", Exposition()),
          deadline);
}

std::string Endpoint::Exposition() {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  std::vector<std::shared_ptr<Collector>> collectors;
  {
    std::lock_guard<std::mutex> lock(mu_);
    collectors = collectors_;
  }
  for (const auto& c : collectors) {
    std::vector<prometheus::MetricFamily> more = c->Collect();
    families.insert(families.end(), std::make_move_iterator(more.begin()),
                    std::make_move_iterator(more.end()));
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

void Endpoint::Add(std::shared_ptr<Collector> collector) {
  std::lock_guard<std::mutex> lock(mu_);
  collectors_.push_back(std::move(collector));
}

void Endpoint::DisableCollectors() {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& c : collectors_) c->Disable();
}

std::string Endpoint::url() const {
  const bool v6 = host_.find(':') != std::string::npos;
  return v6 ? absl::StrCat("http://[", host_, "]:", port_, "/metrics")
            : absl::StrCat("http://", host_, ":", port_, "/metrics");
}

}  // namespace sy::metrics

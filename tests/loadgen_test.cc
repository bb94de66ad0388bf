// switchyard-loadgen as a process against a router without a reachable
// attention worker: every request fails at once with UNAVAILABLE, and each
// loadgen worker backs off (10 ms, doubling up to 1 s) instead of retrying
// in a tight loop, so a refusing server sees tens of requests in two
// seconds, not tens of thousands; the figures still report every failure by
// code.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/cli_test_util.h"

namespace sy {
namespace {

// A loopback port that nothing listens on (bound once, then released).
int UnusedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  close(fd);
  return ntohs(a.sin_port);
}

TEST(LoadgenTest, FailedRequestsBackOffInsteadOfSpinning) {
  const int port = UnusedPort(), dead = UnusedPort();
  ASSERT_GT(port, 0);
  ASSERT_GT(dead, 0);
  const std::string pid_file = ::testing::TempDir() + "/loadgen_test_router.pid";
  const std::string router = std::string(SY_BINARY_DIR) + "/bin/switchyard-router --model " +
                             std::string(SY_SOURCE_DIR) + "/tests/data/goldens/qwen3_moe" +
                             " --listen 127.0.0.1:" + std::to_string(port) +
                             " --attention-workers 127.0.0.1:" + std::to_string(dead);
  ASSERT_EQ(
      std::system(("sh -c '" + router + " >/dev/null 2>&1 & echo $! > " + pid_file + "'").c_str()),
      0);
  pid_t pid = -1;
  std::ifstream(pid_file) >> pid;
  ASSERT_GT(pid, 0);
  struct Stop {
    pid_t pid;
    ~Stop() { kill(pid, SIGTERM); }
  } stop{pid};
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the router listens
  const auto r = testing::RunTool(
      "switchyard-loadgen", "--addr 127.0.0.1:" + std::to_string(port) +
                                " --vocab 100 --concurrency 4 --duration-s 2 --warmup-s 0 --json");
  // No request completed: exit 1, but the figures are printed.
  EXPECT_EQ(r.exit_code, 1) << r.err;
  // The JSON object is the last line.
  std::string out = r.out;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  const size_t last = out.rfind('\n');
  const std::string line = last == std::string::npos ? out : out.substr(last + 1);
  ASSERT_FALSE(line.empty() || line[0] != '{') << r.out << r.err;
  const nlohmann::json j = nlohmann::json::parse(line);
  const int64_t errors = j.at("errors").get<int64_t>();
  // 4 workers x (10 + 20 + ... + 640 ms, then 1 s waits) in 2 s: about 9 each.
  EXPECT_GE(errors, 4);
  EXPECT_LE(errors, 100) << "no backoff: " << errors << " failed requests in 2 s";
  EXPECT_GT(j.at("errors_by_code").value("UNAVAILABLE", 0), 0) << j.dump();
  EXPECT_EQ(j.at("requests_completed").get<int64_t>(), 0);
}

}  // namespace
}  // namespace sy

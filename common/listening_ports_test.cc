#include "common/listening_ports.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

#include "gtest/gtest.h"

namespace sy {
namespace {

// A TCP socket on 127.0.0.1, bound to a free port; listening if asked.
struct Socket {
  explicit Socket(bool listen_on) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    EXPECT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    port = ntohs(addr.sin_port);
    if (listen_on) {
      EXPECT_EQ(listen(fd, 4), 0);
    }
  }
  ~Socket() { close(fd); }
  int fd = -1;
  int32_t port = 0;
};

bool Has(const std::vector<int32_t>& ports, int32_t port) {
  return std::find(ports.begin(), ports.end(), port) != ports.end();
}

TEST(ListeningTcpPortsTest, ListsListenersOnlyAndOnlyThisProcesss) {
  Socket listener(/*listen_on=*/true);
  Socket bound_only(/*listen_on=*/false);
  absl::StatusOr<std::vector<int32_t>> ports = ListeningTcpPorts();
  ASSERT_TRUE(ports.ok()) << ports.status();
  EXPECT_TRUE(Has(*ports, listener.port));
  EXPECT_FALSE(Has(*ports, bound_only.port));
  EXPECT_TRUE(std::is_sorted(ports->begin(), ports->end()));

  // A child that closed its copy of the listener does not list it; the
  // parent, asked about by pid, does.
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(listener.fd);
    close(ready[0]);
    const char byte = 1;
    if (write(ready[1], &byte, 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  close(ready[1]);
  char byte = 0;
  ASSERT_EQ(read(ready[0], &byte, 1), 1);
  close(ready[0]);
  absl::StatusOr<std::vector<int32_t>> of_child = ListeningTcpPorts(child);
  absl::StatusOr<std::vector<int32_t>> of_parent = ListeningTcpPorts(getpid());
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  ASSERT_TRUE(of_child.ok()) << of_child.status();
  ASSERT_TRUE(of_parent.ok()) << of_parent.status();
  EXPECT_FALSE(Has(*of_child, listener.port));
  EXPECT_TRUE(Has(*of_parent, listener.port));

  // Reaped: gone.
  EXPECT_EQ(ListeningTcpPorts(child).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace sy

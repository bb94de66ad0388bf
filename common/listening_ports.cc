#include "common/listening_ports.h"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace sy {
namespace {

// Socket inodes of the process's open descriptors ("socket:[INODE]").
absl::StatusOr<std::set<uint64_t>> SocketInodes(const std::string& proc) {
  const std::string fd_dir = proc + "/fd";
  DIR* dir = opendir(fd_dir.c_str());
  if (dir == nullptr) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(fd_dir, ": no such process"));
    return absl::PermissionDeniedError(absl::StrCat(fd_dir, ": cannot be read"));
  }
  std::set<uint64_t> inodes;
  while (const dirent* entry = readdir(dir)) {
    char target[128];
    const std::string link = absl::StrCat(fd_dir, "/", entry->d_name);
    const ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
    if (n <= 0) continue;
    const absl::string_view text(target, static_cast<size_t>(n));
    constexpr absl::string_view kPrefix = "socket:[";
    if (!absl::StartsWith(text, kPrefix) || !absl::EndsWith(text, "]")) continue;
    uint64_t inode = 0;
    if (absl::SimpleAtoi(text.substr(kPrefix.size(), text.size() - kPrefix.size() - 1), &inode)) {
      inodes.insert(inode);
    }
  }
  closedir(dir);
  return inodes;
}

// Adds the ports of `table`'s LISTEN sockets (state 0A) whose inode is in
// `inodes`. Lines: "sl local_address rem_address st tx:rx tr:when retrnsmt
// uid timeout inode ...", local_address as HEXIP:HEXPORT.
void AddListening(const std::string& table, const std::set<uint64_t>& inodes,
                  std::set<int32_t>* ports) {
  std::ifstream in(table);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::vector<absl::string_view> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (f.size() < 10 || f[3] != "0A") continue;
    uint64_t inode = 0;
    if (!absl::SimpleAtoi(f[9], &inode) || !inodes.count(inode)) continue;
    const size_t colon = f[1].rfind(':');
    int32_t port = 0;
    if (colon == absl::string_view::npos || !absl::SimpleHexAtoi(f[1].substr(colon + 1), &port)) {
      continue;
    }
    ports->insert(port);
  }
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> ListeningTcpPorts(pid_t pid) {
  const std::string proc = pid == 0 ? std::string("/proc/self") : absl::StrCat("/proc/", pid);
  absl::StatusOr<std::set<uint64_t>> inodes = SocketInodes(proc);
  if (!inodes.ok()) return inodes.status();
  std::set<int32_t> ports;
  AddListening(proc + "/net/tcp", *inodes, &ports);
  AddListening(proc + "/net/tcp6", *inodes, &ports);
  return std::vector<int32_t>(ports.begin(), ports.end());
}

}  // namespace sy

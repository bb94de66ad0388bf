// Test helper: runs Debian's `promtool check metrics` (scripts/install_deps.sh
// installs package prometheus) on an exposition text.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include <unistd.h>

namespace sy::metrics {

// Empty when promtool accepts `exposition`; otherwise what it (or the shell)
// said, with its exit status.
inline std::string PromtoolCheckMetrics(const std::string& exposition) {
  char path[] = "/tmp/sy_promtool_XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return "cannot create a temporary file";
  close(fd);
  {
    std::ofstream out(path);
    out << exposition;
  }
  const std::string cmd = std::string("promtool check metrics < ") + path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string said;
  if (p != nullptr) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0) said.append(buf, n);
  }
  const int status = p == nullptr ? -1 : pclose(p);
  unlink(path);
  if (status == 0) return "";
  if (said.find("not found") != std::string::npos) {
    said += " (promtool comes with Debian's prometheus package: scripts/install_deps.sh)";
  }
  return "promtool check metrics exited with status " + std::to_string(status) + ": " + said;
}

}  // namespace sy::metrics

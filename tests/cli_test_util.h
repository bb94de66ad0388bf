// Runs one of the project's command-line tools as a user would: a real
// process, stdout captured, stderr kept in a file, the exit code decoded.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include "gtest/gtest.h"

namespace sy::testing {

struct CliResult {
  int exit_code = -1;  // -1 when the process did not exit normally
  std::string out;     // stdout
  std::string err;     // stderr
};

// Runs `$SY_BINARY_DIR/bin/<tool> <args>` through the shell.
inline CliResult RunTool(const std::string& tool, const std::string& args) {
  const std::string err_file = ::testing::TempDir() + "/" + tool + "_stderr.txt";
  const std::string cmd =
      std::string(SY_BINARY_DIR) + "/bin/" + tool + " " + args + " 2>" + err_file;
  CliResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(err_file);
  r.err.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return r;
}

}  // namespace sy::testing

// Small text helpers shared by the tools and tests.
#pragma once

#include <cstddef>
#include <istream>
#include <string>

namespace sy {

// The last `max_lines` lines of `in`, each indented by four spaces and ended
// with a newline (for quoting a log's end in an error message).
std::string IndentedTail(std::istream& in, size_t max_lines);

}  // namespace sy

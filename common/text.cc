#include "common/text.h"

#include <deque>

namespace sy {

std::string IndentedTail(std::istream& in, size_t max_lines) {
  std::deque<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    lines.push_back(std::move(line));
    if (lines.size() > max_lines) lines.pop_front();
  }
  std::string out;
  for (const auto& l : lines) out += "    " + l + "\n";
  return out;
}

}  // namespace sy

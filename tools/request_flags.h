// The request flags switchyard-generate and switchyard-client share, so both
// tools take the same flags with the same meaning and defaults: prompt ids,
// stopping, sampling and logprobs.
#pragma once

#include "engine/engine.h"

namespace sy::tools {

// Builds a request from the shared flags (after absl::ParseCommandLine).
// A bad value prints "<program>: --flag: ..." to stderr and returns false.
// --temperature left at its default means greedy unless --top-k, --top-p,
// --min-p or --seed asks for sampling (then 1).
bool RequestFromFlags(const char* program, engine::GenerationRequest* req);

}  // namespace sy::tools

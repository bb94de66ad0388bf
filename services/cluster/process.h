// Process plumbing shared by the Switchyard service binaries: orderly
// shutdown on SIGINT/SIGTERM, and flag spelling.
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace sy::cluster {

// Installs SIGINT/SIGTERM handlers that request shutdown (idempotent).
void InstallShutdownHandlers();
// True once shutdown was requested (signal or RequestShutdown()).
bool ShutdownRequested();
void RequestShutdown();
// Sleeps until shutdown is requested or `timeout` passes; returns
// ShutdownRequested().
bool WaitForShutdown(std::chrono::milliseconds timeout);

// Rewrites "--flag-name[=v]" to abseil's "--flag_name[=v]" so flags may be
// spelled with dashes. `storage` owns the strings the result points into.
std::vector<char*> DashesToUnderscores(int argc, char** argv, std::vector<std::string>* storage);

// Makes --help list every flag of the program (abseil's default shows only
// flags defined in a file named after the binary, which none of ours is),
// leaving out abseil's own built-in flags. Call before ParseCommandLine.
void ListAllFlagsInHelp();

}  // namespace sy::cluster

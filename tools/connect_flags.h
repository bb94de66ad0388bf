// How the command-line clients (switchyard-client, switchyard-admin,
// switchyard-loadgen) reach a server: the flags they share for TLS and API
// keys, and the channel and call metadata those flags give.
//   --tls-ca FILE        connect over TLS, verifying the server with this CA
//   --tls-cert FILE      present this client certificate (mutual TLS, e.g.
//   --tls-key FILE         switchyard-admin to a coordinator with internal TLS)
//   --tls-server-name N  check the server's certificate for N, not the host
//   --api-key-file FILE  send the key in this file ("authorization: Bearer");
//                        else $SWITCHYARD_API_KEY when set
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace sy::tools {

struct Connection {
  std::shared_ptr<grpc::Channel> channel;
  std::string api_key;  // empty: none sent

  // Adds the API key, if any, to a call's metadata.
  void Authorize(grpc::ClientContext* context) const;
};

// The channel to `address` and the API key the flags ask for; errors name
// the flag and the file.
absl::StatusOr<Connection> ConnectFromFlags(const std::string& address,
                                            grpc::ChannelArguments args = {});
// The same into `out`; on an error prints "<program>: <error>" to stderr and
// returns false (the caller exits 2).
bool ConnectFromFlagsOrSay(const char* program, const std::string& address, Connection* out,
                           grpc::ChannelArguments args = {});

}  // namespace sy::tools

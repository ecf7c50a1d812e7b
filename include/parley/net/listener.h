// Listening sockets. Each reactor gets its own socket on the same address (SO_REUSEPORT), so
// the kernel spreads new connections over the cores and no accept queue is shared.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace parley::net {

// Binds and listens on host:port (IPv4 literal, "localhost", or an IPv6 literal).
// port 0 picks a free port; BoundPort tells which.
absl::StatusOr<int> OpenListener(const std::string& host, uint16_t port, bool reuse_port,
                                 int backlog = 4096);

// The local port a socket is bound to.
absl::StatusOr<uint16_t> BoundPort(int fd);

}  // namespace parley::net

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

// OK if nothing listens on host:port now. SO_REUSEPORT lets every process of the same user
// bind the port beside us, and the kernel would then split new connections between them, so
// a second server started on a busy port would silently take half of the users. Call before
// opening the SO_REUSEPORT listeners; it cannot close the window between check and bind.
absl::Status CheckPortFree(const std::string& host, uint16_t port);

// The local port a socket is bound to.
absl::StatusOr<uint16_t> BoundPort(int fd);

}  // namespace parley::net

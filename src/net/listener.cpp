#include "parley/net/listener.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace parley::net {

namespace {

// A socket bound to host:port, not yet listening.
absl::StatusOr<int> BindSocket(const std::string& host, uint16_t port, bool reuse_port) {
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  int family = AF_INET;
  const std::string literal = host == "localhost" ? "127.0.0.1" : host;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&addr);
  if (inet_pton(AF_INET, literal.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    addr_len = sizeof(sockaddr_in);
  } else if (inet_pton(AF_INET6, literal.c_str(), &v6->sin6_addr) == 1) {
    family = AF_INET6;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    addr_len = sizeof(sockaddr_in6);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("listen host '", host, "' is not an IP address or localhost"));
  }
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (reuse_port) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), addr_len) != 0) {
    int err = errno;
    ::close(fd);
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", host, ":", port, ": ", strerror(err)));
  }
  return fd;
}

}  // namespace

absl::StatusOr<int> OpenListener(const std::string& host, uint16_t port, bool reuse_port,
                                 int backlog) {
  auto bound = BindSocket(host, port, reuse_port);
  if (!bound.ok()) return bound.status();
  const int fd = *bound;
  if (::listen(fd, backlog) != 0) {
    int err = errno;
    ::close(fd);
    return absl::UnavailableError(absl::StrCat("listen: ", strerror(err)));
  }
  return fd;
}

absl::Status CheckPortFree(const std::string& host, uint16_t port) {
  // Without SO_REUSEPORT, bind fails while any socket listens on the port, whoever owns it.
  // (SO_REUSEADDR stays on, so connections of an earlier run in TIME_WAIT do not count.)
  auto probe = BindSocket(host, port, /*reuse_port=*/false);
  if (!probe.ok()) return probe.status();
  ::close(*probe);
  return absl::OkStatus();
}

absl::StatusOr<uint16_t> BoundPort(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return absl::InternalError(absl::StrCat("getsockname: ", strerror(errno)));
  }
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
}

}  // namespace parley::net

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "parley/net/core_mesh.h"
#include "parley/net/listener.h"
#include "parley/net/reactor.h"

using namespace parley::net;

namespace {

// Echoes whatever arrives; "q" closes after flushing.
class EchoHandler : public ConnectionHandler {
 public:
  size_t OnData(Connection& conn, std::span<char> data) override {
    std::string_view s(data.data(), data.size());
    if (s == "q") {
      conn.Write("bye");
      conn.CloseAfterFlush();
      return data.size();
    }
    conn.Write(s);
    return data.size();
  }
};

// Answers each read with whether its socket has TCP_NODELAY ("1" or "0").
class NoDelayHandler : public ConnectionHandler {
 public:
  size_t OnData(Connection& conn, std::span<char> data) override {
    int on = 0;
    socklen_t len = sizeof(on);
    const bool read = getsockopt(conn.fd(), IPPROTO_TCP, TCP_NODELAY, &on, &len) == 0;
    conn.Write(read && on != 0 ? "1" : "0");
    return data.size();
  }
};

int ConnectTo(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  return fd;
}

std::string ReadExactly(int fd, size_t n) {
  std::string out;
  char buf[4096];
  while (out.size() < n) {
    ssize_t r = read(fd, buf, std::min(sizeof(buf), n - out.size()));
    if (r <= 0) break;
    out.append(buf, static_cast<size_t>(r));
  }
  return out;
}

// Runs `cores` reactors on threads until the test body returns.
struct Cluster {
  explicit Cluster(int cores, ReactorOptions options = {}) : mesh(cores) {
    for (int i = 0; i < cores; ++i) {
      reactors.push_back(std::make_unique<Reactor>(i, options, &mesh));
      mesh.Attach(i, reactors.back().get());
    }
  }
  void Start(std::function<void(Reactor&)> setup = {}) {
    for (auto& r : reactors) {
      threads.emplace_back([this, &r, setup] {
        // Catch2 assertions are not thread-safe: report to the test's thread instead.
        if (!r->Init().ok()) {
          init_failed.store(true);
          ready.fetch_add(1);
          return;
        }
        if (setup) setup(*r);
        r->AddPoller([this, &r] {
          if (stop.load()) r->BeginShutdown(0);
        });
        ready.fetch_add(1);
        while (ready.load() < static_cast<int>(reactors.size())) std::this_thread::yield();
        r->Run();
      });
    }
    while (ready.load() < static_cast<int>(reactors.size())) std::this_thread::yield();
    REQUIRE_FALSE(init_failed.load());
  }
  ~Cluster() {
    stop.store(true);
    for (auto& r : reactors) r->Notify();
    for (auto& t : threads) t.join();
  }
  CoreMesh mesh;
  std::vector<std::unique_ptr<Reactor>> reactors;
  std::vector<std::thread> threads;
  std::atomic<int> ready{0};
  std::atomic<bool> stop{false};
  std::atomic<bool> init_failed{false};
};

// Starts a one-core `cluster` serving a new loopback listener with `Handler`s; returns the port.
template <typename Handler>
uint16_t StartServing(Cluster& cluster) {
  auto fd = OpenListener("127.0.0.1", 0, true);
  REQUIRE(fd.ok());
  auto port = BoundPort(*fd);
  REQUIRE(port.ok());
  int listen_fd = *fd;
  cluster.Start([listen_fd](Reactor& r) {
    r.Listen(listen_fd, [](Connection&) { return std::make_unique<Handler>(); });
  });
  return *port;
}

}  // namespace

TEST_CASE("a port another SO_REUSEPORT listener holds is reported busy", "[net]") {
  // Two reuse-port listeners of one user may share a port; the check is what keeps a second
  // server from silently taking half of the first one's connections.
  auto first = OpenListener("127.0.0.1", 0, /*reuse_port=*/true);
  REQUIRE(first.ok());
  auto port = BoundPort(*first);
  REQUIRE(port.ok());
  auto second = OpenListener("127.0.0.1", *port, /*reuse_port=*/true);
  CHECK(second.ok());  // what the check exists for: the kernel would allow this
  if (second.ok()) ::close(*second);
  absl::Status busy = CheckPortFree("127.0.0.1", *port);
  CHECK(absl::IsUnavailable(busy));
  CHECK(busy.message().find("in use") != std::string::npos);
  ::close(*first);
  CHECK(CheckPortFree("127.0.0.1", *port).ok());
}

TEST_CASE("reactor accepts, echoes and closes after flushing", "[net]") {
  Cluster cluster(1);
  int c = ConnectTo(StartServing<EchoHandler>(cluster));
  const std::string big(300000, 'x');  // larger than one provided buffer and one send
  REQUIRE(write(c, "hello", 5) == 5);
  CHECK(ReadExactly(c, 5) == "hello");
  size_t off = 0;
  std::thread writer([&] {
    while (off < big.size()) {
      ssize_t w = write(c, big.data() + off, big.size() - off);
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }
  });
  CHECK(ReadExactly(c, big.size()) == big);
  writer.join();
  REQUIRE(write(c, "q", 1) == 1);
  CHECK(ReadExactly(c, 3) == "bye");
  char b;
  CHECK(read(c, &b, 1) == 0);  // orderly close after the last bytes
  close(c);
}

TEST_CASE("accepted connections have Nagle's algorithm off", "[net]") {
  // Set once on the listener and inherited: small frames (acks, events) must not wait for the
  // peer's delayed ACK.
  Cluster cluster(1);
  int c = ConnectTo(StartServing<NoDelayHandler>(cluster));
  REQUIRE(write(c, "?", 1) == 1);
  CHECK(ReadExactly(c, 1) == "1");
  close(c);
}

TEST_CASE("cross-core tasks run on the target core in submission order", "[net]") {
  Cluster cluster(2);
  constexpr int kTasks = 200000;  // more than one queue holds: exercises the overflow path
  std::vector<int> seen;          // touched by core 1 only
  std::atomic<bool> done{false};
  std::atomic<bool> wrong_thread{false};
  std::atomic<bool> submitted{false};
  std::thread::id core1_thread;
  CoreMesh& mesh = cluster.mesh;
  cluster.Start([&](Reactor& r) {
    if (r.core() == 1) core1_thread = std::this_thread::get_id();
    if (r.core() != 0) return;
    r.Defer([&] {
      // Core 1 is held in its first task until every task is submitted, so the queue must
      // overflow whatever the relative speed of the two threads.
      mesh.SubmitTo(0, 1, [&] {
        while (!submitted.load()) std::this_thread::yield();
      });
      for (int i = 0; i < kTasks; ++i) {
        mesh.SubmitTo(0, 1, [&, i] {
          if (std::this_thread::get_id() != core1_thread) wrong_thread.store(true);
          seen.push_back(i);
          if (i == kTasks - 1) done.store(true);
        });
      }
      submitted.store(true);
    });
  });
  for (int i = 0; i < 1000 && !done.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(done.load());
  CHECK_FALSE(wrong_thread.load());
  REQUIRE(seen.size() == static_cast<size_t>(kTasks));
  bool ordered = true;
  for (int i = 0; i < kTasks; ++i) ordered = ordered && seen[i] == i;
  CHECK(ordered);
  CHECK(mesh.overflowed(0) > 0);
}

TEST_CASE("an idle reactor is woken by a cross-core task", "[net]") {
  Cluster cluster(2);
  std::atomic<int> pongs{0};
  CoreMesh& mesh = cluster.mesh;
  // Ping-pong 1000 times: each hop must wake a sleeping core.
  std::function<void(int)> hop = [&](int n) {
    if (n == 0) return;
    mesh.SubmitTo(0, 1, [&, n] {
      mesh.SubmitTo(1, 0, [&, n] {
        pongs.fetch_add(1);
        hop(n - 1);
      });
    });
  };
  cluster.Start([&](Reactor& r) {
    if (r.core() == 0) r.Defer([&] { hop(1000); });
  });
  for (int i = 0; i < 1000 && pongs.load() < 1000; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(pongs.load() == 1000);
}

namespace {

// Replies "<core>:<data>"; on "M" it hands the socket to core 1 and keeps the rest of the
// buffer unconsumed so that it travels with the socket.
class MovingHandler : public ConnectionHandler {
 public:
  explicit MovingHandler(CoreMesh* mesh) : mesh_(mesh) {}
  size_t OnData(Connection& conn, std::span<char> data) override {
    std::string_view s(data.data(), data.size());
    Reactor& r = conn.reactor();
    if (r.core() == 0 && !s.empty() && s[0] == 'M') {
      conn.Write("moving;");
      CoreMesh* mesh = mesh_;
      r.Detach(&conn, [mesh](DetachedSocket socket) {
        mesh->SubmitTo(0, 1, [mesh, socket = std::move(socket)]() mutable {
          mesh->reactor(1).Adopt(std::move(socket), [mesh](Connection&) {
            return std::make_unique<MovingHandler>(mesh);
          });
        });
      });
      return 1;  // the rest is delivered on core 1
    }
    conn.Write(std::to_string(r.core()) + ":" + std::string(s) + ";");
    return data.size();
  }

 private:
  CoreMesh* mesh_;
};

}  // namespace

TEST_CASE("a connection moves to another core with its unread input and unsent output", "[net]") {
  auto fd = OpenListener("127.0.0.1", 0, false);
  REQUIRE(fd.ok());
  auto port = BoundPort(*fd);
  REQUIRE(port.ok());
  Cluster cluster(2);
  int listen_fd = *fd;
  CoreMesh* mesh = &cluster.mesh;
  cluster.Start([listen_fd, mesh](Reactor& r) {
    if (r.core() == 0) {
      r.Listen(listen_fd, [mesh](Connection&) { return std::make_unique<MovingHandler>(mesh); });
    }
  });
  int c = ConnectTo(*port);
  REQUIRE(write(c, "hi", 2) == 2);
  CHECK(ReadExactly(c, 5) == "0:hi;");
  REQUIRE(write(c, "Mabc", 4) == 4);  // the move request and data for the new core together
  CHECK(ReadExactly(c, 7 + 6) == "moving;1:abc;");
  REQUIRE(write(c, "xyz", 3) == 3);
  CHECK(ReadExactly(c, 6) == "1:xyz;");
  close(c);
}

namespace {

// "B" queues 16 MiB of output, "b" 512 KiB; anything else is echoed.
class BulkHandler : public ConnectionHandler {
 public:
  size_t OnData(Connection& conn, std::span<char> data) override {
    std::string_view s(data.data(), data.size());
    if (s == "B" || s == "b") {
      conn.Write(std::string(s == "B" ? 16u << 20 : 512u << 10, 'o'));
    } else {
      conn.Write(s);
    }
    return data.size();
  }
};

}  // namespace

TEST_CASE("over the output budget the connection holding the most is shed", "[net]") {
  ReactorOptions options;
  options.max_output_bytes = 8u << 20;
  Cluster cluster(1, options);
  const uint16_t port = StartServing<BulkHandler>(cluster);
  Reactor& reactor = *cluster.reactors[0];
  int small = ConnectTo(port);
  int big = ConnectTo(port);
  REQUIRE(write(small, "b", 1) == 1);
  REQUIRE(write(big, "B", 1) == 1);
  // The 16 MiB queue alone is past the 8 MiB budget: it is cut off; the 512 KiB one is not.
  std::string got_big;
  char buf[65536];
  while (true) {
    ssize_t r = read(big, buf, sizeof(buf));
    if (r <= 0) break;
    got_big.append(buf, static_cast<size_t>(r));
  }
  CHECK(got_big.size() < (16u << 20));
  CHECK(reactor.shed_count() == 1);
  CHECK(ReadExactly(small, 512u << 10) == std::string(512u << 10, 'o'));
  REQUIRE(write(small, "ping", 4) == 4);
  CHECK(ReadExactly(small, 4) == "ping");
  // Everything sent or dropped: the count of unsent bytes is back to zero.
  for (int i = 0; i < 200 && reactor.output_bytes() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(reactor.output_bytes() == 0);
  CHECK(reactor.shed_count() == 1);
  close(small);
  close(big);
}

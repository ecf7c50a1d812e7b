#include "parley/server/server.h"

#include <unistd.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "parley/net/listener.h"
#include "parley/server/protocol_endpoint.h"

namespace parley::server {

Server::Server(const Config& config) : config_(config) {}

Server::~Server() {
  Stop(0);
  for (auto& t : threads_running_) {
    if (t.joinable()) t.join();
  }
  for (int fd : listen_fds_) {
    if (fd >= 0) ::close(fd);
  }
}

absl::Status Server::Start() {
  threads_ = config_.server.threads > 0 ? config_.server.threads
                                        : static_cast<int>(std::thread::hardware_concurrency());
  if (threads_ <= 0) threads_ = 1;

  auto address = ParseListenAddress(config_.server.listen);
  if (!address.ok()) return address.status();

  // One SO_REUSEPORT socket per core; with port 0 the first one picks the port for all.
  uint16_t port = address->port;
  for (int i = 0; i < threads_; ++i) {
    auto fd = net::OpenListener(address->host, port, /*reuse_port=*/true);
    if (!fd.ok()) return fd.status();
    listen_fds_.push_back(*fd);
    if (port == 0) {
      auto bound = net::BoundPort(*fd);
      if (!bound.ok()) return bound.status();
      port = *bound;
    }
  }
  port_ = port;

  std::string node = config_.server.node_name;
  if (node.empty()) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    node = host;
  }

  mesh_ = std::make_unique<net::CoreMesh>(threads_);
  init_status_.resize(threads_);
  for (int i = 0; i < threads_; ++i) {
    net::ReactorOptions options;
    options.max_connections = config_.limits.max_connections;
    reactors_.push_back(std::make_unique<net::Reactor>(i, options, mesh_.get()));
    mesh_->Attach(i, reactors_.back().get());
    metrics_.push_back(std::make_unique<CoreMetrics>());
    auto ctx = std::make_unique<CoreContext>();
    ctx->config = &config_;
    ctx->core = i;
    ctx->reactor = reactors_.back().get();
    ctx->mesh = mesh_.get();
    ctx->node_name = node;
    ctx->metrics = metrics_.back().get();
    contexts_.push_back(std::move(ctx));
  }

  routes_.protocol_endpoint = [](CoreContext& ctx) { return MakeProtocolEndpoint(ctx); };
  routes_.metrics = [this] {
    std::vector<CoreMetrics*> all;
    for (auto& m : metrics_) all.push_back(m.get());
    return RenderMetrics(all);
  };

  for (int i = 0; i < threads_; ++i) threads_running_.emplace_back([this, i] { CoreMain(i); });
  while (init_done_.load() < threads_) std::this_thread::yield();
  if (init_failed_.load()) {
    go_.store(true);
    for (auto& t : threads_running_) t.join();
    threads_running_.clear();
    for (auto& s : init_status_) {
      if (!s.ok()) return s;
    }
  }
  go_.store(true);
  return absl::OkStatus();
}

void Server::CoreMain(int core) {
  net::Reactor& reactor = *reactors_[core];
  absl::Status status = reactor.Init();
  init_status_[core] = status;
  if (!status.ok()) init_failed_.store(true);
  init_done_.fetch_add(1);
  while (!go_.load()) std::this_thread::yield();
  if (init_failed_.load()) return;

  CoreContext& ctx = *contexts_[core];
  reactor.Listen(listen_fds_[core], [this, &ctx](net::Connection& conn) {
    return std::make_unique<HttpSession>(ctx, routes_, conn);
  });
  listen_fds_[core] = -1;  // the reactor owns it now
  reactor.AddPoller([this, &reactor] {
    if (stop_requested_.load(std::memory_order_relaxed)) {
      reactor.BeginShutdown(stop_grace_ms_.load());
    }
  });
  reactor.Run();
}

void Server::Stop(int64_t grace_ms) {
  stop_grace_ms_.store(grace_ms);
  if (stop_requested_.exchange(true)) return;
  for (auto& r : reactors_) r->Notify();
}

int Server::Wait() {
  for (auto& t : threads_running_) t.join();
  threads_running_.clear();
  return 0;
}

}  // namespace parley::server

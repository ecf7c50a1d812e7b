// The whole server process: one reactor thread per core, each with its own listening socket,
// joined by a CoreMesh. Start() returns once every core serves; Stop() may be called from any
// thread (e.g. after SIGTERM) and makes every core close its WebSockets with 1001, flush, and
// return; Wait() joins them.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "parley/chat/engine_shard.h"
#include "parley/chat/router.h"
#include "parley/config/config.h"
#include "parley/net/core_mesh.h"
#include "parley/net/reactor.h"
#include "parley/server/core_context.h"
#include "parley/server/http_session.h"
#include "parley/server/metrics.h"
#include "parley/store/shard_writer.h"
#include "parley/store/store.h"

namespace parley::server {

class Server {
 public:
  explicit Server(const Config& config);
  ~Server();

  absl::Status Start();
  uint16_t port() const { return port_; }
  int threads() const { return threads_; }
  // Any thread: begin the graceful shutdown (bounded by `grace_ms`).
  void Stop(int64_t grace_ms = 4000);
  // Joins every core; returns 0 on a clean stop.
  int Wait();

 private:
  void CoreMain(int core);
  void AppendEngineMetrics(std::string* out);

  const Config& config_;
  int threads_ = 1;
  uint16_t port_ = 0;
  // Destruction order matters: engines and writers go before the store they use.
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<store::LogSyncer> syncer_;  // with synced storage: the node's log sync
  std::unique_ptr<net::CoreMesh> mesh_;
  std::unique_ptr<chat::Router> router_;
  std::vector<std::unique_ptr<net::Reactor>> reactors_;
  std::vector<std::unique_ptr<store::ShardWriter>> writers_;
  std::vector<std::unique_ptr<chat::EngineShard>> engines_;
  std::vector<chat::EngineShard*> engine_ptrs_;
  std::vector<std::unique_ptr<CoreContext>> contexts_;
  std::vector<CoreContext*> context_ptrs_;
  std::vector<std::unique_ptr<CoreMetrics>> metrics_;
  std::vector<int> listen_fds_;
  std::vector<std::thread> threads_running_;
  HttpRoutes routes_;

  // Start-up handshake between Start() and the core threads.
  std::atomic<int> init_done_{0};
  std::atomic<bool> init_failed_{false};
  std::atomic<bool> go_{false};
  std::vector<absl::Status> init_status_;

  std::atomic<bool> stop_requested_{false};
  std::atomic<int64_t> stop_grace_ms_{4000};
};

}  // namespace parley::server

#include "parley/server/server.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "parley/net/listener.h"
#include "parley/server/chat_endpoint.h"
#include "parley/util/latency_histogram.h"
#include "parley/util/strings.h"
#include "parley/util/thread_name.h"

namespace parley::server {

namespace {

// The largest commit a reactor writes itself (ShardWriter::WriteInlineUpTo): a few dozen
// messages, some tens of microseconds of memtable inserts.
constexpr size_t kInlineCommitBytes = 16 << 10;

}  // namespace

Server::Server(const Config& config) : config_(config) {}

Server::~Server() {
  Stop(0);
  for (auto& t : threads_running_) {
    if (t.joinable()) t.join();
  }
  // Commit what the writers still hold (their callbacks use the engines, reactors and mesh).
  // Then the reactors, whose leftover connections still report to their core's context and
  // metrics, and only then the contexts and engines, before the store closes.
  writers_.clear();
  reactors_.clear();
  contexts_.clear();
  engines_.clear();
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
  if (port != 0) {
    absl::Status free = net::CheckPortFree(address->host, port);
    if (!free.ok()) return free;
  }
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

  std::error_code ec;
  std::filesystem::create_directories(config_.storage.data_dir, ec);
  if (ec) {
    return absl::UnavailableError(absl::StrCat("cannot create data directory ",
                                               config_.storage.data_dir, ": ", ec.message()));
  }
  store::StoreOptions store_options;
  store_options.data_dir = config_.storage.data_dir;
  store_options.sync = config_.storage.sync == "fsync";
  store_options.min_free_bytes = config_.storage.min_free_bytes;
  auto store = store::Store::Open(store_options);
  if (!store.ok()) return store.status();
  store_ = std::move(*store);
  // One thread syncs the log for every core's writer (see store/log_syncer.h).
  if (store_->options().sync) syncer_ = std::make_unique<store::LogSyncer>(*store_);
  // Finish every group change and fan-out a crash interrupted before anyone can read an
  // inbox; group events first, so that members who joined get the messages sent since.
  if (absl::Status st = chat::EngineShard::RecoverGroupEvents(*store_); !st.ok()) return st;
  if (absl::Status st = chat::EngineShard::RecoverFanouts(*store_); !st.ok()) return st;

  mesh_ = std::make_unique<net::CoreMesh>(threads_);
  router_ = std::make_unique<chat::Router>(*mesh_, threads_);
  init_status_.resize(threads_);
  for (int i = 0; i < threads_; ++i) {
    net::ReactorOptions options;
    // Process-wide limits, split evenly between the reactors (no shared counter on the hot path).
    const auto share = [this](uint32_t limit) {
      return limit == 0 ? 0u : (limit + static_cast<uint32_t>(threads_) - 1) / threads_;
    };
    options.max_connections = share(config_.limits.max_connections);
    options.max_connections_per_address = share(config_.limits.max_connections_per_ip);
    const uint64_t total_out = config_.limits.max_outbound_total_bytes;
    options.max_output_bytes = total_out == 0 ? 0 : std::max<uint64_t>(1, total_out / threads_);
    reactors_.push_back(std::make_unique<net::Reactor>(i, options, mesh_.get()));
    net::Reactor* reactor = reactors_.back().get();
    mesh_->Attach(i, reactor);
    writers_.push_back(std::make_unique<store::ShardWriter>(
        *store_, [reactor] { reactor->Notify(); }, syncer_.get()));
    writers_.back()->NameThread(StrCat("parley-store", i));
    // A commit of a few messages is written by the reactor itself when its writer is idle
    // (never synced there): at low rates that saves two thread wake-ups per commit, at high
    // rates commits are bigger than this and go to the writer thread as before.
    writers_.back()->WriteInlineUpTo(kInlineCommitBytes);
    chat::EngineShard::Deps deps;
    deps.core = i;
    deps.config = &config_;
    deps.store = store_.get();
    deps.writer = writers_.back().get();
    deps.router = router_.get();
    deps.reactor = reactor;
    deps.all = &engine_ptrs_;
    engines_.push_back(std::make_unique<chat::EngineShard>(deps));
    engine_ptrs_.push_back(engines_.back().get());
    metrics_.push_back(std::make_unique<CoreMetrics>());
    auto ctx = std::make_unique<CoreContext>();
    ctx->config = &config_;
    ctx->core = i;
    ctx->reactor = reactor;
    ctx->mesh = mesh_.get();
    ctx->node_name = node;
    ctx->metrics = metrics_.back().get();
    ctx->engine = engines_.back().get();
    ctx->router = router_.get();
    ctx->all = &context_ptrs_;
    context_ptrs_.push_back(ctx.get());
    contexts_.push_back(std::move(ctx));
  }

  routes_.protocol_endpoint = [](CoreContext& ctx) { return MakeChatEndpoint(ctx); };
  routes_.metrics = [this] {
    std::vector<CoreMetrics*> all;
    for (auto& m : metrics_) all.push_back(m.get());
    std::string out = RenderMetrics(all);
    AppendEngineMetrics(&out);
    return out;
  };

  for (int i = 0; i < threads_; ++i) {
    threads_running_.emplace_back([this, i] { CoreMain(i); });
    NameThread(threads_running_.back(), StrCat("parley-core", i));
  }
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
  chat::EngineShard& engine = *engines_[core];
  store::ShardWriter& writer = *writers_[core];
  reactor.AddPoller([&engine] { engine.Poll(); });
  // At shutdown: last-seen times still held go to the writer, then the writer empties.
  reactor.AddDrainCheck([&engine] { return engine.FlushLastSeen(); });
  reactor.AddDrainCheck([&writer] { return writer.busy(); });
  reactor.AddPoller([this, &reactor] {
    if (stop_requested_.load(std::memory_order_relaxed)) {
      reactor.BeginShutdown(stop_grace_ms_.load());
    }
  });
  reactor.Run();
}

void Server::AppendEngineMetrics(std::string* out) {
  auto family = [&](const char* name, const char* type, const char* help, auto value) {
    absl::StrAppend(out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
    for (size_t i = 0; i < engines_.size(); ++i) {
      absl::StrAppend(out, name, "{core=\"", i, "\"} ", value(*engines_[i], *writers_[i]), "\n");
    }
  };
  using E = chat::EngineShard;
  using W = store::ShardWriter;
  family("parley_messages_accepted_total", "counter", "Messages sequenced and stored.",
         [](E& e, W&) { return e.stats().messages_accepted.load(std::memory_order_relaxed); });
  family("parley_messages_delivered_total", "counter", "Live message deliveries to devices.",
         [](E& e, W&) { return e.stats().messages_delivered.load(std::memory_order_relaxed); });
  family("parley_inbox_appends_total", "counter", "Inbox entries written.",
         [](E& e, W&) { return e.stats().inbox_appends.load(std::memory_order_relaxed); });
  family("parley_users_online", "gauge", "Users with at least one connected device.",
         [](E& e, W&) { return e.stats().online_users.load(std::memory_order_relaxed); });
  family("parley_devices_online", "gauge", "Connected, authenticated devices.",
         [](E& e, W&) { return e.stats().online_devices.load(std::memory_order_relaxed); });
  family("parley_storage_commits_total", "counter", "Group commits written.",
         [](E&, W& w) { return w.stats().commits.load(std::memory_order_relaxed); });
  family("parley_storage_commit_failures_total", "counter", "Group commits that failed.",
         [](E&, W& w) { return w.stats().failures.load(std::memory_order_relaxed); });
  family("parley_storage_inline_commits_total", "counter",
         "Group commits written by the reactor itself (small, with its writer idle).",
         [](E&, W& w) { return w.stats().inline_commits.load(std::memory_order_relaxed); });
  family("parley_storage_bytes_written_total", "counter", "Bytes of batches committed.",
         [](E&, W& w) { return w.stats().bytes.load(std::memory_order_relaxed); });
  family("parley_connections_refused_total", "counter",
         "Connections answered 503 and closed (connection limits, out of descriptors).",
         [this](E& e, W&) { return reactors_[e.core()]->refused_count(); });
  family("parley_outbound_bytes", "gauge",
         "Unsent outbound bytes queued on the core's connections (budget: the core's share of "
         "limits.max_outbound_total_bytes).",
         [this](E& e, W&) { return reactors_[e.core()]->output_bytes(); });
  family("parley_outbound_budget_closes_total", "counter",
         "Connections closed (4008) because the core's connections held more unsent data than "
         "its share of limits.max_outbound_total_bytes.",
         [this](E& e, W&) { return reactors_[e.core()]->shed_count(); });
  family("parley_mesh_overflow_total", "counter", "Cross-core tasks that found a full queue.",
         [this](E& e, W&) { return mesh_->overflowed(e.core()); });
  family("parley_mesh_queue_depth", "gauge",
         "Cross-core tasks waiting in the queues into the core (approximate: read while the "
         "cores run).",
         [this](E& e, W&) {
           size_t depth = 0;
           for (int from = 0; from < mesh_->cores(); ++from) {
             depth += mesh_->QueueDepth(from, e.core());
           }
           return depth;
         });

  // Histograms, summed over cores.
  std::vector<const LatencyHistogram*> parts;
  for (const auto& e : engines_) parts.push_back(&e->stats().send_latency);
  LatencyHistogram::AppendPrometheus(out, "parley_send_commit_seconds",
                                     "Time from sequencing a message to its durable commit.",
                                     parts);
  parts.clear();
  for (const auto& w : writers_) parts.push_back(&w->stats().latency);
  LatencyHistogram::AppendPrometheus(
      out, "parley_storage_commit_seconds",
      "Duration of one group commit's write (with fsync unless a separate log sync follows: see "
      "parley_storage_log_sync_seconds).",
      parts);
  if (syncer_ != nullptr) {
    // Node-wide: one thread syncs the log for every core.
    const LatencyHistogram* sync = &syncer_->sync_latency();
    LatencyHistogram::AppendPrometheus(
        out, "parley_storage_log_sync_seconds",
        "Duration of one sync of the write-ahead log (fdatasync), which makes every core's "
        "writes before it durable.",
        {&sync, 1});
  }
  store::Store::Stats st = store_->GetStats();
  absl::StrAppend(out, "# HELP parley_storage_live_data_bytes Estimated live data in RocksDB.\n",
                  "# TYPE parley_storage_live_data_bytes gauge\nparley_storage_live_data_bytes ",
                  st.live_data_bytes, "\n");
  absl::StrAppend(out, "# HELP parley_storage_memtable_bytes RocksDB memtables.\n",
                  "# TYPE parley_storage_memtable_bytes gauge\nparley_storage_memtable_bytes ",
                  st.memtable_bytes, "\n");
  absl::StrAppend(out,
                  "# HELP parley_storage_disk_free_bytes Free space on the data volume (measured "
                  "at most every 100 ms).\n",
                  "# TYPE parley_storage_disk_free_bytes gauge\nparley_storage_disk_free_bytes ",
                  st.disk_free_bytes, "\n");
  absl::StrAppend(out,
                  "# HELP parley_storage_writes_refused 1 while the store refuses writes (free "
                  "space below storage.min_free_bytes, or recovering from a failed write).\n",
                  "# TYPE parley_storage_writes_refused gauge\nparley_storage_writes_refused ",
                  st.writes_refused ? 1 : 0, "\n");
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

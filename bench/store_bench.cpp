// Storage layer costs: building one message's batch, committing batches of messages with and
// without fsync, and the shard writer's group commit under a steady stream of small batches.
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_format.h"
#include "parley/store/shard_writer.h"
#include "parley/store/store.h"

namespace {

using parley::store::Batch;
using parley::store::DedupeRecord;
using parley::store::InboxRecord;
using parley::store::MessageRecord;
using parley::store::ShardWriter;
using parley::store::Store;
using parley::store::StoreOptions;
using parley::store::UserConvRecord;

class BenchDir {
 public:
  BenchDir() {
    std::string tmpl = "/tmp/parley-store-bench-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) std::abort();
    path_ = tmpl;
  }
  ~BenchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::unique_ptr<Store> OpenStore(const std::string& dir, bool sync) {
  StoreOptions o;
  o.data_dir = dir;
  o.sync = sync;
  auto s = Store::Open(o);
  if (!s.ok()) std::abort();
  return std::move(*s);
}

// What the chat layer writes for one direct message: the message, the sender's dedupe entry,
// an inbox entry and a conversation entry for each of the two users.
void AddMessage(Batch& b, int64_t n) {
  static const std::string kBody(100, 'b');
  const int64_t ts = 1764380000000 + n;
  b.PutMessage("d:alice:bob", n, MessageRecord{"alice", "c-" + std::to_string(n), ts, kBody, ""});
  b.PutDedupe("alice", "c-" + std::to_string(n), DedupeRecord{"d:alice:bob", n, ts}, ts);
  b.PutInbox("alice", n, InboxRecord{"d:alice:bob", n, ""});
  b.PutInbox("bob", n, InboxRecord{"d:alice:bob", n, ""});
  b.PutUserConv("alice", "d:alice:bob", UserConvRecord{n, ts, n, 0});
  b.PutUserConv("bob", "d:alice:bob", UserConvRecord{n, ts, n - 1, 0});
}

void BM_BuildMessageBatch(benchmark::State& state) {
  BenchDir dir;
  auto store = OpenStore(dir.path(), false);
  Batch b = store->NewBatch();
  int64_t n = 0;
  for (auto _ : state) {
    AddMessage(b, ++n);
    benchmark::DoNotOptimize(b.ByteSize());
    b.Clear();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_BuildMessageBatch);

// Store::Write of a batch of `range(0)` messages; only the Write is timed.
void BM_Write(benchmark::State& state) {
  const int per_batch = static_cast<int>(state.range(0));
  const bool sync = state.range(1) != 0;
  BenchDir dir;
  auto store = OpenStore(dir.path(), sync);
  Batch b = store->NewBatch();
  int64_t n = 0;
  for (auto _ : state) {
    b.Clear();
    for (int i = 0; i < per_batch; ++i) AddMessage(b, ++n);
    const auto start = std::chrono::steady_clock::now();
    if (!store->Write(b).ok()) state.SkipWithError("write failed");
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  state.SetItemsProcessed(state.iterations() * per_batch);
  state.counters["bytes_per_msg"] = static_cast<double>(b.ByteSize()) / per_batch;
}
BENCHMARK(BM_Write)
    ->ArgNames({"msgs", "sync"})
    ->ArgsProduct({{1, 64, 512}, {0, 1}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// Direct messages between `range(0)` pairs of users, 64 per Write (no fsync): the memtable
// holds many owners, as on a busy server, and cmids are random like the UUIDs clients send.
// Only the Write is timed, so the figure is the storage CPU per message.
void BM_WriteManyConversations(benchmark::State& state) {
  const int pairs = static_cast<int>(state.range(0));
  BenchDir dir;
  auto store = OpenStore(dir.path(), false);
  std::vector<std::string> users, convs;
  for (int p = 0; p < pairs; ++p) {
    users.push_back("sender" + std::to_string(p));
    users.push_back("receiver" + std::to_string(p));
    convs.push_back("d:receiver" + std::to_string(p) + ":sender" + std::to_string(p));
  }
  std::vector<int64_t> seq(pairs, 0);
  static const std::string kBody(100, 'b');
  uint64_t rng = 0x9e3779b97f4a7c15ull;
  auto next_random = [&rng] {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
  };
  Batch b = store->NewBatch();
  int64_t ts = 1764380000000;
  for (auto _ : state) {
    b.Clear();
    for (int i = 0; i < 64; ++i) {
      const int p = static_cast<int>(next_random() % pairs);
      const int64_t n = ++seq[p];
      const std::string cmid = absl::StrFormat("%016x%016x", next_random(), next_random());
      const std::string& from = users[2 * p];
      const std::string& to = users[2 * p + 1];
      ++ts;
      b.PutMessage(convs[p], n, MessageRecord{from, cmid, ts, kBody, ""});
      b.PutDedupe(from, cmid, DedupeRecord{convs[p], n, ts}, ts);
      b.PutInbox(from, n, InboxRecord{convs[p], n, ""});
      b.PutInbox(to, n, InboxRecord{convs[p], n, ""});
      b.PutUserConv(from, convs[p], UserConvRecord{n, ts, n, 0});
      b.PutUserConv(to, convs[p], UserConvRecord{n, ts, n - 1, 0});
    }
    const auto start = std::chrono::steady_clock::now();
    if (!store->Write(b).ok()) state.SkipWithError("write failed");
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  state.SetItemsProcessed(state.iterations() * 64);
}
BENCHMARK(BM_WriteManyConversations)
    ->ArgName("pairs")
    ->Arg(1)
    ->Arg(100)
    ->Arg(10000)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

// One message per Poll (a reactor iteration with a single send), at most `range(0)` messages
// awaiting durability at a time; the writer thread merges what queues up behind an fsync.
void BM_ShardWriterStream(benchmark::State& state) {
  const int64_t window = state.range(0);
  BenchDir dir;
  auto store = OpenStore(dir.path(), true);
  std::atomic<uint64_t> notified{0};
  int64_t n = 0;
  int64_t pending = 0;
  uint64_t commits = 0;
  uint64_t batches = 0;
  const auto start = std::chrono::steady_clock::now();
  {
    ShardWriter w(*store, [&] { notified.fetch_add(1, std::memory_order_release); });
    for (auto _ : state) {
      while (pending >= window) {
        const uint64_t seen = notified.load(std::memory_order_acquire);
        w.Poll();
        if (pending < window) break;
        while (notified.load(std::memory_order_acquire) == seen) std::this_thread::yield();
      }
      AddMessage(w.current(), ++n);
      ++pending;
      w.OnCommit([&](const absl::Status&) { --pending; });
      w.Poll();
    }
    while (w.busy()) {
      w.Poll();
      std::this_thread::yield();
    }
    commits = w.stats().commits.load();
    batches = w.stats().batches.load();
  }
  // Includes the final drain, which the benchmark's own timer leaves out.
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  state.SetItemsProcessed(state.iterations());
  state.counters["durable_msgs_per_s"] = static_cast<double>(n) / secs;
  state.counters["msgs_per_commit"] = commits ? static_cast<double>(batches) / commits : 0;
}
BENCHMARK(BM_ShardWriterStream)->ArgName("window")->Arg(1)->Arg(64)->Arg(1024)->UseRealTime();

}  // namespace

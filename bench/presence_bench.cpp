// Memory and time of one core's presence table (parley::chat::PresenceTable).
//   BM_UsersMemory:   N users connected -> heap bytes per user entry (the id included).
//   BM_EdgesMemory:   S sessions each watching K of U users -> heap bytes per watch edge, and per
//                     owner-side subscription (one per watched user and watching core).
//   BM_StatusUpdate:  one status change of a user watched by W sessions: the table's work for
//                     it (change, subscribers, snapshot, the watching sessions).
//   BM_WatchUnwatch:  adding and removing single edges in a table that holds 1 M edges.
// Heap bytes are glibc's own figures (mallinfo2: bytes in use, chunk headers and rounding
// included) before and after building the structure, so they are what the process pays.
#include <benchmark/benchmark.h>
#include <malloc.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "parley/chat/presence_table.h"

namespace {

using parley::chat::PresenceStatus;
using parley::chat::PresenceTable;

constexpr int64_t kNow = 1764380000123;

size_t HeapInUse() {
  const struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

// `n` distinct user ids of the id alphabet; id_len 0: lengths spread over 8..24 bytes. Each is
// random characters, then '_' and a counter, which keeps them distinct (n < 10^6).
std::vector<std::string> MakeIds(size_t n, size_t id_len, uint64_t seed) {
  static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789.";
  std::mt19937_64 rng(seed);
  std::vector<std::string> ids;
  ids.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t len = id_len != 0 ? id_len : 8 + rng() % 17;
    const std::string tail = "_" + std::to_string(i);
    std::string s;
    while (s.size() + tail.size() < len) s.push_back(kAlphabet[rng() % 37]);
    s += tail;
    ids.push_back(std::move(s));
  }
  return ids;
}

double MeanLength(const std::vector<std::string>& ids) {
  double sum = 0;
  for (const auto& s : ids) sum += static_cast<double>(s.size());
  return ids.empty() ? 0 : sum / static_cast<double>(ids.size());
}

// Args: users N, id length (0: 8..24 bytes).
void BM_UsersMemory(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  const std::vector<std::string> ids = MakeIds(n, static_cast<size_t>(state.range(1)), 1);
  double bytes_per_user = 0, ns_per_connect = 0;
  for (auto _ : state) {
    const size_t before = HeapInUse();
    const auto t0 = std::chrono::steady_clock::now();
    auto table = std::make_unique<PresenceTable>();
    for (const auto& id : ids) table->Connect(id, kNow);
    const auto t1 = std::chrono::steady_clock::now();
    const size_t after = HeapInUse();
    bytes_per_user = static_cast<double>(after - before) / static_cast<double>(n);
    ns_per_connect =
        std::chrono::duration<double, std::nano>(t1 - t0).count() / static_cast<double>(n);
    if (table->users() != n) state.SkipWithError("lost users");
    benchmark::DoNotOptimize(table.get());
  }
  state.counters["bytes_per_user"] = bytes_per_user;
  state.counters["mean_id_bytes"] = MeanLength(ids);
  state.counters["ns_per_connect"] = ns_per_connect;
}
BENCHMARK(BM_UsersMemory)
    ->ArgNames({"users", "id_len"})
    ->Args({100000, 0})
    ->Args({1000000, 0})
    ->Args({1000000, 8})
    ->Args({1000000, 16})
    ->Args({1000000, 24})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

// Args: sessions S, watches per session K, universe U of watched users.
void BM_EdgesMemory(benchmark::State& state) {
  const size_t sessions = static_cast<size_t>(state.range(0));
  const size_t per_session = static_cast<size_t>(state.range(1));
  const size_t universe = static_cast<size_t>(state.range(2));
  const std::vector<std::string> ids = MakeIds(universe, 0, 2);
  std::mt19937_64 rng(3);
  std::vector<std::pair<uint64_t, uint32_t>> edges;
  edges.reserve(sessions * per_session);
  for (size_t s = 0; s < sessions; ++s) {
    for (size_t k = 0; k < per_session; ++k) {
      edges.emplace_back(uint64_t{1} << 40 | s, static_cast<uint32_t>(rng() % universe));
    }
  }
  double bytes_per_edge = 0, bytes_per_subscription = 0, ns_per_watch = 0;
  size_t n_edges = 0, n_subs = 0;
  for (auto _ : state) {
    const size_t before = HeapInUse();
    auto table = std::make_unique<PresenceTable>();
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& [session, u] : edges) table->Watch(session, ids[u]);
    const auto t1 = std::chrono::steady_clock::now();
    const size_t with_edges = HeapInUse();
    // The owner side: each watched user subscribed by this core.
    n_subs = 0;
    for (const auto& id : ids) {
      if (table->Subscribers(id) != 0) continue;
      bool watched = false;
      table->ForEachWatcher(id, [&](uint64_t) { watched = true; });
      if (!watched) continue;
      table->Subscribe(0, id);
      ++n_subs;
    }
    const size_t with_subs = HeapInUse();
    n_edges = table->edges();
    bytes_per_edge = static_cast<double>(with_edges - before) / static_cast<double>(n_edges);
    bytes_per_subscription =
        static_cast<double>(with_subs - with_edges) / static_cast<double>(n_subs);
    ns_per_watch = std::chrono::duration<double, std::nano>(t1 - t0).count() /
                   static_cast<double>(edges.size());
    benchmark::DoNotOptimize(table.get());
  }
  state.counters["edges"] = static_cast<double>(n_edges);
  state.counters["watched_users"] = static_cast<double>(n_subs);
  state.counters["bytes_per_edge"] = bytes_per_edge;
  state.counters["bytes_per_subscription"] = bytes_per_subscription;
  state.counters["ns_per_watch"] = ns_per_watch;
}
BENCHMARK(BM_EdgesMemory)
    ->ArgNames({"sessions", "per_session", "universe"})
    ->Args({10000, 100, 100000})
    ->Args({10000, 100, 1000000})
    ->Args({1000, 1000, 100000})
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

// Arg: watchers W of each changing user. 100 k users online; 1024 of them, in turn, toggle
// between online and busy; each is watched by W sessions.
void BM_StatusUpdate(benchmark::State& state) {
  const size_t watchers = static_cast<size_t>(state.range(0));
  const std::vector<std::string> ids = MakeIds(100000, 0, 4);
  PresenceTable table;
  for (const auto& id : ids) table.Connect(id, kNow);
  constexpr size_t kTargets = 1024;
  std::mt19937_64 rng(5);
  std::vector<const std::string*> targets;
  for (size_t t = 0; t < kTargets; ++t) {
    const std::string& id = ids[rng() % ids.size()];
    targets.push_back(&id);
    table.Subscribe(0, id);
    for (size_t w = 0; w < watchers; ++w) table.Watch(rng() % 20000, id);
  }
  size_t i = 0;
  uint64_t notified = 0;
  for (auto _ : state) {
    const std::string& user = *targets[i++ % kTargets];
    const bool busy = table.Get(user, kNow).status == PresenceStatus::kBusy;
    if (!table.SetStatus(user, busy ? PresenceStatus::kOnline : PresenceStatus::kBusy)) {
      state.SkipWithError("no change");
      break;
    }
    if (table.Subscribers(user) == 0) continue;
    const PresenceTable::View view = table.Get(user, kNow);
    benchmark::DoNotOptimize(view);
    table.ForEachWatcher(user, [&](uint64_t session) {
      benchmark::DoNotOptimize(session);
      ++notified;
    });
  }
  state.counters["notified_per_update"] =
      static_cast<double>(notified) / static_cast<double>(state.iterations());
  state.SetItemsProcessed(static_cast<int64_t>(notified));
}
BENCHMARK(BM_StatusUpdate)->Arg(1)->Arg(10)->Arg(100)->Arg(1000);

// One iteration: 1000 new edges added one by one, then removed one by one, in a table that
// already holds 10 k sessions x 100 edges over 100 k users.
void BM_WatchUnwatch(benchmark::State& state) {
  const std::vector<std::string> ids = MakeIds(100000, 0, 6);
  PresenceTable table;
  std::mt19937_64 rng(7);
  for (uint64_t s = 0; s < 10000; ++s) {
    for (int k = 0; k < 100; ++k) table.Watch(s, ids[rng() % ids.size()]);
  }
  constexpr size_t kBatch = 1000;
  std::vector<std::pair<uint64_t, const std::string*>> batch;
  double watch_ns = 0, unwatch_ns = 0;
  for (auto _ : state) {
    state.PauseTiming();
    batch.clear();
    while (batch.size() < kBatch) {
      const uint64_t s = rng() % 10000;
      const std::string* u = &ids[rng() % ids.size()];
      if (!table.IsWatching(s, *u)) batch.emplace_back(s, u);
    }
    state.ResumeTiming();
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& [s, u] : batch) table.Watch(s, *u);
    const auto t1 = std::chrono::steady_clock::now();
    for (const auto& [s, u] : batch) benchmark::DoNotOptimize(table.Unwatch(s, *u));
    const auto t2 = std::chrono::steady_clock::now();
    watch_ns += std::chrono::duration<double, std::nano>(t1 - t0).count();
    unwatch_ns += std::chrono::duration<double, std::nano>(t2 - t1).count();
  }
  const double ops = static_cast<double>(state.iterations()) * kBatch;
  state.counters["ns_per_watch"] = watch_ns / ops;
  state.counters["ns_per_unwatch"] = unwatch_ns / ops;
  state.SetItemsProcessed(static_cast<int64_t>(2 * ops));
}
BENCHMARK(BM_WatchUnwatch)->Unit(benchmark::kMicrosecond);

}  // namespace

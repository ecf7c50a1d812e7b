// Cross-core hop costs: the SPSC ring every routed task goes through.
//   BM_SpscThroughput: tasks per second from one thread to another (batched drain).
//   BM_SpscPingPong:   one task there and one back, i.e. the latency of a routed request.
#include <benchmark/benchmark.h>

#include <atomic>
#include <thread>

#include "parley/net/reactor.h"
#include "parley/net/spsc_queue.h"

namespace {

using parley::net::SpscQueue;
using parley::net::Task;

void BM_SpscThroughput(benchmark::State& state) {
  SpscQueue<Task> q(65536);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> ran{0};
  std::thread consumer([&] {
    uint64_t local = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      while (auto t = q.TryPop()) {
        (*t)();
        ++local;
      }
    }
    while (auto t = q.TryPop()) {
      (*t)();
      ++local;
    }
    ran.store(local);
  });
  uint64_t counter = 0;
  for (auto _ : state) {
    Task t = [&counter] { benchmark::DoNotOptimize(counter); };
    while (!q.TryPush(t)) {
    }
  }
  stop.store(true);
  consumer.join();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SpscThroughput)->UseRealTime();

void BM_SpscPingPong(benchmark::State& state) {
  SpscQueue<Task> there(1024), back(1024);
  std::atomic<bool> stop{false};
  std::thread peer([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      if (auto t = there.TryPop()) (*t)();
    }
  });
  std::atomic<bool> answered{false};
  for (auto _ : state) {
    answered.store(false, std::memory_order_relaxed);
    Task ask = [&] {
      Task reply = [&] { answered.store(true, std::memory_order_release); };
      while (!back.TryPush(reply)) {
      }
    };
    while (!there.TryPush(ask)) {
    }
    while (true) {
      if (auto t = back.TryPop()) {
        (*t)();
        break;
      }
    }
    benchmark::DoNotOptimize(answered.load(std::memory_order_acquire));
  }
  stop.store(true);
  peer.join();
}
BENCHMARK(BM_SpscPingPong)->UseRealTime();

}  // namespace

// Makes the node's write-ahead log durable for every writer, on one thread of its own.
//
// RocksDB keeps one log per node. Writers (the ShardWriter threads, one per core) write without
// syncing and take a ticket for each write (NoteWritten); this thread syncs the log whenever
// tickets are outstanding, so one fdatasync covers everything written before it started, from
// every core, and a writer never waits behind a sync to write its next batch. A write is
// durable once completed() reaches its ticket, unless OutcomeOf says that sync failed.
//
// Thread-safety: NoteWritten, completed, failures and OutcomeOf from any thread. Listeners run
// on the syncer thread after every sync, under the listener lock: AddListener/RemoveListener
// must not be called from a listener.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "parley/util/latency_histogram.h"

namespace parley::store {

class Store;

class LogSyncer {
 public:
  using SyncFn = std::function<absl::Status()>;

  // Syncs with Store::SyncLog and publishes the store's durable snapshot after each sync.
  explicit LogSyncer(Store& store);
  explicit LogSyncer(SyncFn sync);  // tests substitute the sync
  ~LogSyncer();                     // completes every ticket taken, then stops
  LogSyncer(const LogSyncer&) = delete;
  LogSyncer& operator=(const LogSyncer&) = delete;

  // After a write returned: its ticket (1, 2, ...). Wakes the syncer.
  uint64_t NoteWritten();
  // The newest ticket taken (0: none yet).
  uint64_t last_ticket() const { return written_.load(std::memory_order_acquire); }
  // Every ticket <= completed() has its outcome.
  uint64_t completed() const { return completed_.load(std::memory_order_acquire); }
  // Failed syncs so far; while 0, every completed ticket is durable.
  uint64_t failures() const { return failure_count_.load(std::memory_order_acquire); }
  // The outcome of a completed ticket: ok, or the error of the sync that should have covered it.
  absl::Status OutcomeOf(uint64_t ticket) const;

  // `notify` runs after every sync until removed (by the same id).
  int AddListener(std::function<void()> notify);
  void RemoveListener(int id);

  // Figures for /metrics: syncs and their latency.
  uint64_t syncs() const { return syncs_.load(std::memory_order_relaxed); }
  const LatencyHistogram& sync_latency() const { return sync_latency_; }

 private:
  struct FailedRange {
    uint64_t first = 0, last = 0;
    absl::Status status;
  };
  void ThreadMain();

  SyncFn sync_;
  std::atomic<uint64_t> written_{0};    // tickets taken (futex word the thread waits on)
  std::atomic<uint64_t> completed_{0};  // tickets with an outcome
  std::atomic<uint64_t> failure_count_{0};
  std::atomic<uint64_t> syncs_{0};
  LatencyHistogram sync_latency_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;  // guards failed_ and listeners_ (never taken on a reactor's hot path)
  std::vector<FailedRange> failed_;
  std::vector<std::pair<int, std::function<void()>>> listeners_;
  int next_listener_ = 0;
  std::thread thread_;
};

}  // namespace parley::store

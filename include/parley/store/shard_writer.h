// Group commit for one core: everything a reactor writes while the previous commit is on its
// way to disk goes there in one batch, on a thread of its own, so fsync never runs on a
// reactor thread.
//
// Use (reactor thread only):
//   writer.current().PutMessage(...);            // add operations during the iteration
//   writer.OnCommit([](const absl::Status& s){...});  // runs once that batch is durable
//   writer.Poll();                                // once per loop iteration (a reactor poller)
// Poll first runs the callbacks of finished batches, in submission order, then hands the
// current batch (if any) to the writer thread when no commit is in progress: what arrives
// during a commit gathers in current() and becomes the next commit (a batch past 16 MiB goes
// without waiting, and the thread merges such queued batches). When it has finished a commit
// the thread calls `notify` (the reactor's Notify) so that Poll runs soon.
//
// Failure: if a commit fails (disk full, I/O error), its callbacks get the error, and so do
// the callbacks of every batch submitted before Poll reported that failure (they may build on
// state the failed batch was to persist). Batches submitted after it are attempted normally.
// "Submitted" counts from the moment an operation enters current(): operations (and OnCommit
// callbacks) added before Poll runs the failed batch's callbacks fail with it, without being
// written; those added from then on, including by those callbacks, are attempted normally.
// Nothing submitted before a failure was reported ever commits after the failed batch.
//
// Destruction drains: the destructor runs Poll (on the destroying thread) until every
// submitted batch has completed, so every callback runs exactly once. Callbacks must not call
// Poll or destroy the writer.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "parley/net/spsc_queue.h"
#include "parley/store/store.h"

namespace parley::store {

class ShardWriter {
 public:
  using Callback = absl::AnyInvocable<void(const absl::Status&)>;

  // Commits a batch; Store::Write by default. Tests substitute it to inject failures.
  using WriteFn = std::function<absl::Status(Batch&)>;

  ShardWriter(Store& store, std::function<void()> notify);
  ShardWriter(Store& store, std::function<void()> notify, WriteFn write);
  ~ShardWriter();  // commits what was submitted, then stops the thread
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  Batch& current() { return current_; }
  void OnCommit(Callback done) { current_callbacks_.push_back(std::move(done)); }
  void Poll();

  // True while anything is submitted and not yet completed (for shutdown draining).
  bool busy() const { return in_flight_ != 0 || !current_.empty() || !current_callbacks_.empty(); }

  // Figures for /metrics (read from any thread).
  struct Stats {
    std::atomic<uint64_t> commits{0};
    std::atomic<uint64_t> batches{0};
    std::atomic<uint64_t> failures{0};  // commits that returned an error
    std::atomic<uint64_t> bytes{0};
    // Commit latency histogram, microseconds: bucket i counts commits < kBucketsUs[i]
    // (cumulative, as Prometheus "le" buckets; the last bucket counts every commit).
    static constexpr uint64_t kBucketsUs[] = {100,   250,   500,   1000,   2500,   5000,
                                              10000, 25000, 50000, 100000, 250000, 1000000};
    static constexpr size_t kBuckets = sizeof(kBucketsUs) / sizeof(kBucketsUs[0]);
    std::atomic<uint64_t> latency_le[kBuckets + 1] = {};  // last = +Inf
    std::atomic<uint64_t> latency_sum_us{0};
  };
  const Stats& stats() const { return stats_; }

 private:
  struct Job {
    Batch batch;
    uint64_t generation = 0;
    absl::Status status;
  };
  void ThreadMain();
  void SubmitCurrent();  // seals current_ and its callbacks into a job of generation_
  void FlushBacklog();   // moves backlog_ into to_thread_ as far as it fits, wakes the thread
  void Signal();         // thread side: results are ready

  Store& store_;
  std::function<void()> notify_;
  WriteFn write_;
  Batch current_;
  std::vector<Callback> current_callbacks_;
  std::deque<std::vector<Callback>> waiting_callbacks_;  // per submitted job, in order
  size_t in_flight_ = 0;
  uint64_t generation_ = 0;  // bumped by Poll when it reports a failure

  net::SpscQueue<std::unique_ptr<Job>> to_thread_{1024};
  net::SpscQueue<std::unique_ptr<Job>> from_thread_{1024};
  std::deque<std::unique_ptr<Job>> backlog_;  // when to_thread_ is full
  std::atomic<uint64_t> submitted_{0};        // futex word the thread waits on
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> completed_{0};           // bumped by the thread per result delivery
  std::vector<std::unique_ptr<Job>> free_jobs_;  // finished jobs kept to reuse their buffers
  Stats stats_;
  std::thread thread_;
};

}  // namespace parley::store

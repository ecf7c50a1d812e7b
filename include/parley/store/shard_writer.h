// Group commit for one core: everything a reactor writes while the previous commit is on its
// way to disk goes there in one batch, on a thread of its own, so fsync never runs on a
// reactor thread.
//
// Use (reactor thread only):
//   writer.current().PutMessage(...);                  // add operations
//   writer.OnWritten([](const absl::Status& s){...});  // runs once that batch is written
//   writer.OnCommit([](const absl::Status& s){...});   // runs once that batch is durable
//   writer.Poll();                                     // once per loop iteration (a poller)
//   writer.BeforeSeal([](Batch& b){...});              // last additions to every batch
// Poll runs the callbacks of finished work, in submission order, then hands the current batch
// (if any) to the writer thread (or, see WriteInlineUpTo, writes a small one itself) unless a
// batch is still being written: what arrives meanwhile gathers in current() and becomes the
// next write (a batch past 16 MiB goes without waiting, and the thread merges such queued
// batches). The thread calls `notify` (the reactor's
// Notify) whenever it has results, so that Poll runs soon.
//
// Two phases (with a LogSyncer, i.e. synced storage). The thread writes a batch without
// syncing (RocksDB's log and memtables) and reports it "written"; the node's LogSyncer thread
// syncs the log for every core at once and the batch is reported durable when that sync has
// passed it. OnWritten callbacks run at the first report, OnCommit callbacks at the second.
// Between the two the data is readable but could still be lost by a crash; but the node has a
// single log, synced in order, so anything written after it (by any core) is durable only once
// it is too. That lets the next step of a message (appending it to its recipients' inboxes)
// start at "written" and need one sync, not two; and the writer never waits for a sync to
// write its next batch. Without a syncer the two reports coincide. OnCommit callbacks of
// consecutive batches run in submission order; so do OnWritten callbacks.
//
// Failure: if a write or sync fails (disk full, I/O error), the callbacks of the batches it
// concerns get the error (an OnWritten callback only if the write itself failed), and so do
// the callbacks of every batch submitted before Poll reported that failure (they may build on
// state the failed batch was to persist). Batches submitted after it are attempted normally.
// (After a failed sync, the batches of that generation not yet written fail unwritten; one
// being written when Poll saw the failure commits if a later sync succeeds. The store refuses
// writes after a failed sync until RocksDB resumes.)
// "Submitted" counts from the moment an operation enters current(): operations (and callbacks)
// added before Poll runs the failed batch's callbacks fail with it, without being written;
// those added from then on, including by those callbacks, are attempted normally. Nothing
// submitted before a failure was reported ever commits after the failed batch.
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
#include <optional>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "parley/net/spsc_queue.h"
#include "parley/store/log_syncer.h"
#include "parley/store/store.h"
#include "parley/util/latency_histogram.h"

namespace parley::store {

class ShardWriter {
 public:
  using Callback = absl::AnyInvocable<void(const absl::Status&)>;

  // Commits a batch; Store::Write by default. Tests substitute it to inject failures.
  using WriteFn = std::function<absl::Status(Batch&)>;

  // With a `syncer`, commits have two phases: the batch is written without a sync
  // (Store::WriteUnsynced, or `write`), reported written, and reported durable once the
  // syncer has synced the log past it. Without one, a commit is one Store::Write (or `write`).
  ShardWriter(Store& store, std::function<void()> notify, LogSyncer* syncer = nullptr);
  ShardWriter(Store& store, std::function<void()> notify, WriteFn write,
              LogSyncer* syncer = nullptr);
  ~ShardWriter();  // commits what was submitted, then stops the thread
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  Batch& current() { return current_; }
  void OnWritten(Callback done) { current_written_.push_back(std::move(done)); }
  void OnCommit(Callback done) { current_callbacks_.push_back(std::move(done)); }
  // Runs on the reactor thread each time current() is sealed into a commit (written or, after
  // a failure was reported, failed unwritten), with the batch, just before. For records that
  // many operations of one batch rewrite: the owner adds the latest value once per commit
  // instead of once per change. Null removes the hook. It must not call Poll or OnCommit.
  void BeforeSeal(absl::AnyInvocable<void(Batch&)> fn) { before_seal_ = std::move(fn); }
  // Lets Poll write a sealed batch of at most `max_bytes` itself, on the calling (reactor)
  // thread, when no commit is in flight, instead of handing it to the writer thread and
  // waiting for the thread's report: two thread wake-ups fewer per commit, which is most of a
  // commit's latency at low rates. The write is unsynced (Store::WriteUnsyncedIfQuick, which
  // declines, leaving the batch to the thread, whenever the write could wait); the sync stays
  // with the LogSyncer. Without a syncer only unsynced storage (options().sync false) is
  // written inline. Order, callbacks and failure reporting are as for the thread's writes;
  // OnWritten callbacks may run within the Poll that sealed the batch (and what they add may
  // be written in that Poll too). 0 (the default) writes everything on the thread.
  void WriteInlineUpTo(size_t max_bytes) { inline_max_bytes_ = max_bytes; }
  void Poll();

  // True while anything is submitted and not yet completed (for shutdown draining).
  bool busy() const { return in_flight_ != 0 || !awaiting_sync_.empty() || current_pending(); }

  // Figures for /metrics (read from any thread).
  struct Stats {
    std::atomic<uint64_t> commits{0};
    std::atomic<uint64_t> batches{0};
    std::atomic<uint64_t> failures{0};  // commits that returned an error
    std::atomic<uint64_t> bytes{0};
    std::atomic<uint64_t> inline_commits{0};  // of `commits`, written by Poll's caller
    LatencyHistogram latency;                 // of each commit's write
  };
  const Stats& stats() const { return stats_; }

  // Names the writer thread (e.g. "parley-store0").
  void NameThread(std::string_view name);

 private:
  struct Job {
    Batch batch;
    uint64_t id = 0;  // submission order, from 1
    uint64_t generation = 0;
    absl::Status status;  // of the write
    uint64_t ticket = 0;  // written unsynced: durable once the syncer completes this ticket
  };
  // A submitted job's callbacks, on the reactor side.
  struct Waiting {
    uint64_t id = 0;
    uint64_t generation = 0;
    uint64_t ticket = 0;
    std::vector<Callback> written;
    std::vector<Callback> committed;
    bool final = false;  // status below is known (no sync to wait for)
    absl::Status status;
  };
  // The outcome of a commit's write, and the sync ticket that makes it durable (0: nothing
  // to wait for).
  struct Written {
    absl::Status status;
    uint64_t ticket = 0;
  };
  // Reactor side: the first report of a failure (of a write, or of a sync).
  void ReportFailure(uint64_t generation, bool sync);
  // Either thread: writes one commit with `write` and does the bookkeeping the writer thread
  // and inline writes share (figures, the ticket). An empty batch writes nothing and is
  // durable once everything written before it is. nullopt: `write` declined, nothing written.
  std::optional<Written> Commit(Batch& batch, bool inline_write,
                                absl::FunctionRef<std::optional<absl::Status>(Batch&)> write);
  // Reactor side: a job is written (by the thread or inline); runs its OnWritten callbacks
  // and queues it for its OnCommit callbacks.
  void ReportWritten(Waiting w, Written result);
  void Seal();                     // runs the BeforeSeal hook once per sealed current_
  Waiting TakeCurrentCallbacks();  // current_'s callbacks, as a job with the next id
  void ThreadMain();
  void SubmitCurrent();  // seals current_ and its callbacks into a job of generation_
  // With nothing in flight: seals and writes current_ on this thread and reports it written;
  // false if inline writes are off, the batch is too big, or the store declined.
  bool WriteCurrentInline();
  void RunCommitted();  // OnCommit callbacks of jobs whose outcome is known, in order
  bool current_pending() const {
    return !current_.empty() || !current_callbacks_.empty() || !current_written_.empty();
  }
  // Inline writes in one Poll before the rest goes to the thread (OnWritten callbacks can
  // keep adding).
  static constexpr int kMaxInlineRounds = 4;
  void FlushBacklog();  // moves backlog_ into to_thread_ as far as it fits, wakes the thread
  void Signal();        // thread side: results are ready

  Store& store_;
  std::function<void()> notify_;
  WriteFn write_;
  LogSyncer* syncer_;
  int listener_ = 0;
  Batch current_;
  absl::AnyInvocable<void(Batch&)> before_seal_;
  bool current_sealed_ = false;  // before_seal_ ran on current_ (an inline write declined)
  size_t inline_max_bytes_ = 0;
  std::vector<Callback> current_callbacks_;
  std::vector<Callback> current_written_;
  std::deque<Waiting> awaiting_write_;  // submitted jobs not yet reported written, in order
  std::deque<Waiting> awaiting_sync_;   // written, OnCommit callbacks not yet run, in order
  size_t in_flight_ = 0;                // jobs not yet reported written
  uint64_t next_id_ = 0;
  uint64_t generation_ = 0;  // bumped by Poll when it reports a failure

  net::SpscQueue<std::unique_ptr<Job>> to_thread_{1024};
  net::SpscQueue<std::unique_ptr<Job>> from_thread_{1024};
  std::deque<std::unique_ptr<Job>> backlog_;  // when to_thread_ is full
  std::atomic<uint64_t> submitted_{0};        // futex word the thread waits on
  std::atomic<bool> stop_{false};
  // Reactor -> thread: 1 + the newest generation with a failed sync (0: none).
  std::atomic<uint64_t> sync_failed_generation_{0};
  std::atomic<uint64_t> completed_{0};           // bumped by the thread per result delivery
  std::vector<std::unique_ptr<Job>> free_jobs_;  // finished jobs kept to reuse their buffers
  Stats stats_;
  std::thread thread_;
};

}  // namespace parley::store

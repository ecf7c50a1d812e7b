#include "parley/store/shard_writer.h"

#include <rocksdb/write_batch.h>

#include <chrono>
#include <optional>
#include <utility>

#include "parley/util/clock.h"
#include "parley/util/thread_name.h"

namespace parley::store {

namespace {

// A group commit stops merging at this size so that one commit's latency stays bounded.
constexpr size_t kMaxMergeBytes = 16u << 20;
// Finished jobs are reused (their WriteBatch keeps its buffer, so building the next batch
// neither reallocates nor touches fresh pages); with one commit in flight two suffice. Under
// load a commit holds a few MiB, so buffers up to the merge limit are kept.
constexpr size_t kMaxFreeJobs = 4;
constexpr size_t kMaxReusedCapacity = kMaxMergeBytes * 2;

}  // namespace

ShardWriter::ShardWriter(Store& store, std::function<void()> notify, LogSyncer* syncer)
    : ShardWriter(store, std::move(notify), nullptr, syncer) {}

ShardWriter::ShardWriter(Store& store, std::function<void()> notify, WriteFn write,
                         LogSyncer* syncer)
    : store_(store), notify_(std::move(notify)), write_(std::move(write)), syncer_(syncer) {
  current_ = store_.NewBatch();
  if (syncer_ != nullptr) listener_ = syncer_->AddListener([this] { Signal(); });
  thread_ = std::thread([this] { ThreadMain(); });
}

ShardWriter::~ShardWriter() {
  // Every submitted batch completes and every callback runs before the thread stops.
  for (;;) {
    const uint64_t seen = completed_.load(std::memory_order_acquire);
    Poll();
    if (!busy()) break;
    completed_.wait(seen, std::memory_order_acquire);
  }
  stop_.store(true, std::memory_order_release);
  submitted_.fetch_add(1, std::memory_order_release);
  submitted_.notify_one();
  thread_.join();
  if (syncer_ != nullptr) syncer_->RemoveListener(listener_);
}

void ShardWriter::NameThread(std::string_view name) {
  parley::NameThread(thread_, name);
}

void ShardWriter::ReportFailure(uint64_t generation, bool sync) {
  if (generation != generation_) return;  // this failure was reported already
  // The first report of this failure. Whatever is in current_ was added before it was
  // reported and may build on the failed state: it fails too (the thread fails every job of
  // this generation without writing it). Later submissions get a new generation. A failed
  // write is known to the thread already; a failed sync is not: tell it.
  if (sync) sync_failed_generation_.store(generation + 1, std::memory_order_release);
  if (current_pending()) SubmitCurrent();
  ++generation_;
}

void ShardWriter::Poll() {
  while (std::optional<std::unique_ptr<Job>> popped = from_thread_.TryPop()) {
    std::unique_ptr<Job> job = std::move(*popped);
    Waiting w = std::move(awaiting_write_.front());
    awaiting_write_.pop_front();
    --in_flight_;
    Written result{std::move(job->status), job->ticket};
    job->status = absl::OkStatus();
    job->ticket = 0;
    if (free_jobs_.size() < kMaxFreeJobs && job->batch.raw() != nullptr &&
        job->batch.raw()->Data().capacity() <= kMaxReusedCapacity) {
      free_jobs_.push_back(std::move(job));
    }
    ReportWritten(std::move(w), std::move(result));
  }
  if (syncer_ != nullptr && !awaiting_sync_.empty()) {
    // completed() before failures(): a failure is recorded before its tickets complete.
    const uint64_t completed = syncer_->completed();
    const bool any_failure = syncer_->failures() != 0;
    for (Waiting& w : awaiting_sync_) {
      if (w.final) continue;
      if (w.ticket > completed) break;
      w.final = true;
      if (any_failure) w.status = syncer_->OutcomeOf(w.ticket);
      if (!w.status.ok()) {
        stats_.failures.fetch_add(1, std::memory_order_relaxed);
        ReportFailure(w.generation, /*sync=*/true);
      }
    }
  }
  RunCommitted();
  // Group commit: while a batch is being written, everything new gathers in current_ and goes
  // in the next write (no copying of queued batches into each other). A batch that grew past
  // kMaxMergeBytes goes anyway, so that one commit's size and latency stay bounded. With
  // nothing in flight, a small batch may be written right here; its OnWritten callbacks may
  // add to current_ again, hence the loop (bounded: then the thread takes over).
  for (int round = 0; current_pending(); ++round) {
    if (in_flight_ != 0 && current_.ByteSize() < kMaxMergeBytes) break;
    if (in_flight_ == 0 && round < kMaxInlineRounds && WriteCurrentInline()) {
      RunCommitted();
      continue;
    }
    SubmitCurrent();
    break;
  }
  FlushBacklog();
}

void ShardWriter::RunCommitted() {
  // OnCommit callbacks in submission order: a job whose outcome is known waits for the
  // durability of those before it.
  while (!awaiting_sync_.empty() && awaiting_sync_.front().final) {
    Waiting w = std::move(awaiting_sync_.front());
    awaiting_sync_.pop_front();
    for (Callback& cb : w.committed) cb(w.status);
  }
}

std::optional<ShardWriter::Written> ShardWriter::Commit(
    Batch& batch, bool inline_write, absl::FunctionRef<std::optional<absl::Status>(Batch&)> write) {
  Written result;
  if (batch.empty()) {
    // Callbacks without operations: durable once everything written so far is.
    if (syncer_ != nullptr) result.ticket = syncer_->last_ticket();
    return result;
  }
  const int64_t start_us = MonoMicros();
  std::optional<absl::Status> status = write(batch);
  if (!status.has_value()) return std::nullopt;
  result.status = *std::move(status);
  stats_.commits.fetch_add(1, std::memory_order_relaxed);
  if (inline_write) stats_.inline_commits.fetch_add(1, std::memory_order_relaxed);
  stats_.bytes.fetch_add(batch.ByteSize(), std::memory_order_relaxed);
  stats_.latency.RecordSince(start_us);
  if (!result.status.ok()) {
    stats_.failures.fetch_add(1, std::memory_order_relaxed);
  } else if (syncer_ != nullptr) {
    result.ticket = syncer_->NoteWritten();
  }
  return result;
}

void ShardWriter::ReportWritten(Waiting w, Written result) {
  if (!result.status.ok()) ReportFailure(w.generation, /*sync=*/false);
  w.status = std::move(result.status);
  w.ticket = result.ticket;
  w.final = !w.status.ok() || w.ticket == 0;
  std::vector<Callback> written = std::move(w.written);
  const absl::Status status = w.status;
  awaiting_sync_.push_back(std::move(w));
  for (Callback& cb : written) cb(status);
}

void ShardWriter::Seal() {
  if (before_seal_ && !current_sealed_) before_seal_(current_);
  current_sealed_ = true;
}

ShardWriter::Waiting ShardWriter::TakeCurrentCallbacks() {
  Waiting w;
  w.id = ++next_id_;
  w.generation = generation_;
  w.written = std::move(current_written_);
  w.committed = std::move(current_callbacks_);
  current_written_.clear();
  current_callbacks_.clear();
  return w;
}

bool ShardWriter::WriteCurrentInline() {
  if (inline_max_bytes_ == 0 || current_.ByteSize() > inline_max_bytes_) return false;
  // Without a syncer a commit is a whole Store::Write: only unsynced storage can be written
  // here (fsync never runs on the calling thread).
  if (syncer_ == nullptr && !write_ && store_.options().sync) return false;
  Seal();  // stays sealed if the store declines: SubmitCurrent must not run the hook again
  std::optional<Written> result =
      Commit(current_, /*inline_write=*/true, [&](Batch& batch) -> std::optional<absl::Status> {
        if (write_) return write_(batch);
        return store_.WriteUnsyncedIfQuick(batch);
      });
  if (!result.has_value()) return false;  // nothing written: it would have had to wait
  stats_.batches.fetch_add(1, std::memory_order_relaxed);
  current_.Clear();
  current_sealed_ = false;
  ReportWritten(TakeCurrentCallbacks(), *std::move(result));
  return true;
}

void ShardWriter::SubmitCurrent() {
  Seal();
  current_sealed_ = false;
  std::unique_ptr<Job> job;
  if (free_jobs_.empty()) {
    job = std::make_unique<Job>();
    job->batch = store_.NewBatch();
  } else {
    job = std::move(free_jobs_.back());
    free_jobs_.pop_back();
  }
  // current_ takes the job's empty (possibly already grown) buffer.
  std::swap(job->batch, current_);
  Waiting w = TakeCurrentCallbacks();
  job->id = w.id;
  job->generation = w.generation;
  awaiting_write_.push_back(std::move(w));
  ++in_flight_;
  backlog_.push_back(std::move(job));
}

void ShardWriter::FlushBacklog() {
  bool pushed = false;
  while (!backlog_.empty() && to_thread_.TryPush(backlog_.front())) {
    backlog_.pop_front();
    pushed = true;
  }
  if (pushed) {
    submitted_.fetch_add(1, std::memory_order_release);
    submitted_.notify_one();
  }
}

void ShardWriter::Signal() {
  completed_.fetch_add(1, std::memory_order_release);
  completed_.notify_all();
  if (notify_) notify_();
}

void ShardWriter::ThreadMain() {
  std::vector<std::unique_ptr<Job>> jobs;
  // The newest generation that had a failed write; its remaining jobs are not written.
  bool failed = false;
  uint64_t failed_generation = 0;
  absl::Status failed_status;

  for (;;) {
    const uint64_t seen = submitted_.load(std::memory_order_acquire);
    while (std::optional<std::unique_ptr<Job>> job = to_thread_.TryPop()) {
      jobs.push_back(std::move(*job));
    }
    if (jobs.empty()) {
      if (stop_.load(std::memory_order_acquire)) return;
      submitted_.wait(seen, std::memory_order_acquire);
      continue;
    }

    for (size_t i = 0; i < jobs.size();) {
      const uint64_t generation = jobs[i]->generation;
      size_t end = i + 1;
      absl::Status status;
      uint64_t ticket = 0;
      const uint64_t sync_failed = sync_failed_generation_.load(std::memory_order_acquire);
      if (sync_failed != 0 && (!failed || failed_generation < sync_failed - 1)) {
        // The reactor saw a failed sync of this generation: its remaining jobs fail unwritten.
        failed = true;
        failed_generation = sync_failed - 1;
        failed_status = absl::UnavailableError("store: log sync failed");
      }
      if (failed && generation <= failed_generation) {
        while (end < jobs.size() && jobs[end]->generation == generation) ++end;
        status = failed_status;
      } else {
        // Consecutive jobs of one generation go to disk together.
        Batch& merged = jobs[i]->batch;
        while (end < jobs.size() && jobs[end]->generation == generation &&
               merged.ByteSize() < kMaxMergeBytes) {
          merged.Append(jobs[end]->batch);
          ++end;
        }
        // The thread's writes are never declined: it is the place to wait.
        Written result = *Commit(
            merged, /*inline_write=*/false, [&](Batch& batch) -> std::optional<absl::Status> {
              if (write_) return write_(batch);
              return syncer_ != nullptr ? store_.WriteUnsynced(batch) : store_.Write(batch);
            });
        if (!result.status.ok()) {
          failed = true;
          failed_generation = generation;
          failed_status = result.status;
        }
        status = std::move(result.status);
        ticket = result.ticket;
      }
      stats_.batches.fetch_add(end - i, std::memory_order_relaxed);
      for (size_t k = i; k < end; ++k) {
        jobs[k]->status = status;
        jobs[k]->ticket = ticket;
        jobs[k]->batch.Clear();
      }
      i = end;
    }

    for (std::unique_ptr<Job>& job : jobs) {
      // More results than the ring holds: let Poll drain it first.
      while (!from_thread_.TryPush(job)) {
        Signal();
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
    jobs.clear();
    Signal();
  }
}

}  // namespace parley::store

#include "parley/store/log_syncer.h"

#include <utility>

#include "parley/store/store.h"
#include "parley/util/clock.h"
#include "parley/util/thread_name.h"

namespace parley::store {

LogSyncer::LogSyncer(Store& store)
    : LogSyncer([&store] {
        // Everything in this snapshot was written before the sync starts, so it is durable
        // once the sync succeeds: history reads may then see it.
        Store::SnapshotRef snapshot = store.TakeSnapshot();
        absl::Status status = store.SyncLog();
        if (status.ok()) store.PublishDurable(std::move(snapshot));
        return status;
      }) {
  // What was written before the syncer existed was written synced.
  store.PublishDurable(store.TakeSnapshot());
}

LogSyncer::LogSyncer(SyncFn sync) : sync_(std::move(sync)) {
  thread_ = std::thread([this] { ThreadMain(); });
  NameThread(thread_, "parley-logsync");
}

LogSyncer::~LogSyncer() {
  stop_.store(true, std::memory_order_release);
  // A last ticket wakes the thread (a futex wait returns only on a change); it costs one sync.
  NoteWritten();
  thread_.join();
}

uint64_t LogSyncer::NoteWritten() {
  const uint64_t ticket = written_.fetch_add(1, std::memory_order_acq_rel) + 1;
  written_.notify_one();
  return ticket;
}

absl::Status LogSyncer::OutcomeOf(uint64_t ticket) const {
  if (failure_count_.load(std::memory_order_acquire) == 0) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(mu_);
  for (const FailedRange& r : failed_) {
    if (ticket >= r.first && ticket <= r.last) return r.status;
  }
  return absl::OkStatus();
}

int LogSyncer::AddListener(std::function<void()> notify) {
  std::lock_guard<std::mutex> lock(mu_);
  listeners_.emplace_back(++next_listener_, std::move(notify));
  return next_listener_;
}

void LogSyncer::RemoveListener(int id) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = listeners_.begin(); it != listeners_.end(); ++it) {
    if (it->first == id) {
      listeners_.erase(it);
      return;
    }
  }
}

void LogSyncer::ThreadMain() {
  for (;;) {
    // Every ticket up to `target` was taken after its write returned, so the sync that starts
    // now covers it.
    const uint64_t target = written_.load(std::memory_order_acquire);
    const uint64_t done = completed_.load(std::memory_order_relaxed);
    if (target == done) {
      if (stop_.load(std::memory_order_acquire)) return;
      written_.wait(target, std::memory_order_acquire);
      continue;
    }
    const int64_t start_us = MonoMicros();
    absl::Status status = sync_();
    syncs_.fetch_add(1, std::memory_order_relaxed);
    sync_latency_.RecordSince(start_us);
    std::lock_guard<std::mutex> lock(mu_);
    if (!status.ok()) {
      failed_.push_back(FailedRange{done + 1, target, std::move(status)});
      failure_count_.fetch_add(1, std::memory_order_release);
    }
    completed_.store(target, std::memory_order_release);
    for (auto& [id, notify] : listeners_) notify();
  }
}

}  // namespace parley::store

// Cross-core messaging: every ordered pair of cores has its own SPSC queue of tasks.
//
// `SubmitTo(from, to, task)` is the only way work crosses cores: the task runs on core `to`'s
// reactor thread, in the order it was submitted from `from`. Per pair FIFO is what the chat
// layer's ordering relies on (a conversation's messages leave its owner core in seq order and
// reach every member's core in that order).
//
// Wake-up: the first task queued for an idle core wakes it with IORING_OP_MSG_RING from the
// sender's ring, or by writing the target's eventfd where the kernel lacks MSG_RING. A full
// queue never drops a task: the sender keeps it in its own overflow list and retries on every
// loop iteration (back-pressure stays on the sending core; `overflowed()` counts it).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "parley/net/reactor.h"
#include "parley/net/spsc_queue.h"

namespace parley::net {

class CoreMesh {
 public:
  CoreMesh(int cores, size_t queue_capacity = 65536);

  int cores() const { return cores_; }

  // Registers core i's reactor (before any SubmitTo).
  void Attach(int core, Reactor* reactor) { reactors_[core] = reactor; }
  Reactor& reactor(int core) { return *reactors_[core]; }

  // On core `from`'s thread: run `task` on core `to`. from == to defers it locally.
  void SubmitTo(int from, int to, Task task);

  // On core `core`'s thread: runs every task queued for it, and retries its own overflow.
  // Returns the number of tasks run; *more is set when work is left (the caller must not
  // block waiting for a wake-up then).
  size_t Drain(int core, bool* more);

  // Total tasks that found their queue full (metrics).
  uint64_t overflowed(int from) const {
    return overflow_count_[from].load(std::memory_order_relaxed);
  }
  size_t QueueDepth(int from, int to) const { return Queue(from, to).SizeApprox(); }

 private:
  SpscQueue<Task>& Queue(int from, int to) { return *queues_[from * cores_ + to]; }
  const SpscQueue<Task>& Queue(int from, int to) const { return *queues_[from * cores_ + to]; }
  void Wake(int from, int to);

  int cores_;
  std::vector<std::unique_ptr<SpscQueue<Task>>> queues_;
  std::vector<Reactor*> reactors_;
  // Per sending core: tasks waiting for room, per destination (touched by `from` only).
  std::vector<std::vector<std::deque<Task>>> overflow_;
  std::unique_ptr<std::atomic<uint64_t>[]> overflow_count_;
};

}  // namespace parley::net

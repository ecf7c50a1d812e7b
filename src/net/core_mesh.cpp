#include "parley/net/core_mesh.h"

namespace parley::net {

CoreMesh::CoreMesh(int cores, size_t queue_capacity)
    : cores_(cores),
      reactors_(cores, nullptr),
      overflow_(cores),
      overflow_count_(new std::atomic<uint64_t>[cores]) {
  queues_.reserve(static_cast<size_t>(cores) * cores);
  for (int i = 0; i < cores * cores; ++i) {
    queues_.push_back(std::make_unique<SpscQueue<Task>>(queue_capacity));
  }
  for (int i = 0; i < cores; ++i) {
    overflow_[i].resize(cores);
    overflow_count_[i].store(0);
  }
}

void CoreMesh::SubmitTo(int from, int to, Task task) {
  if (from == to) {
    reactors_[to]->Defer(std::move(task));
    return;
  }
  auto& spill = overflow_[from][to];
  // Keep FIFO: once something waits in the overflow list, later tasks queue behind it.
  if (!spill.empty() || !Queue(from, to).TryPush(task)) {
    spill.push_back(std::move(task));
    overflow_count_[from].fetch_add(1, std::memory_order_relaxed);
  }
  Wake(from, to);
}

void CoreMesh::Wake(int from, int to) {
  Reactor& target = *reactors_[to];
  if (!target.wake_pending().exchange(true, std::memory_order_acq_rel)) {
    target.WakeFrom(*reactors_[from]);
  }
}

size_t CoreMesh::Drain(int core, bool* more) {
  size_t ran = 0;
  *more = false;
  // Retry this core's own overflow first so that its queues keep FIFO order.
  for (int to = 0; to < cores_; ++to) {
    auto& spill = overflow_[core][to];
    if (spill.empty()) continue;
    while (!spill.empty() && Queue(core, to).TryPush(spill.front())) spill.pop_front();
    Wake(core, to);
    if (!spill.empty()) *more = true;
  }
  for (int from = 0; from < cores_; ++from) {
    if (from == core) continue;
    auto& q = Queue(from, core);
    // Bounded per call so that one busy sender cannot starve the loop's own I/O.
    for (size_t n = 0; n < q.capacity(); ++n) {
      auto task = q.TryPop();
      if (!task) break;
      (*task)();
      ++ran;
    }
    if (q.SizeApprox() != 0) *more = true;
  }
  return ran;
}

}  // namespace parley::net

// Bounded single-producer / single-consumer ring, the building block of cross-core messaging.
//
// Guarantees: exactly one thread calls TryPush and exactly one (other) thread calls TryPop /
// Drain; both are wait-free and lock-free. Items come out in the order they went in. A full
// ring refuses the push (TryPush returns false) so that the caller applies back-pressure or
// spills to its own overflow list: nothing is ever dropped silently.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <new>
#include <optional>
#include <utility>

namespace parley::net {

template <typename T>
class SpscQueue {
 public:
  // capacity is rounded up to a power of two.
  explicit SpscQueue(size_t capacity) {
    size_t cap = 2;
    while (cap < capacity) cap <<= 1;
    mask_ = cap - 1;
    slots_ = std::make_unique<Slot[]>(cap);
  }
  SpscQueue(const SpscQueue&) = delete;
  SpscQueue& operator=(const SpscQueue&) = delete;

  ~SpscQueue() {
    while (TryPop()) {
    }
  }

  size_t capacity() const { return mask_ + 1; }

  // Producer side. Returns false (and leaves `item` untouched) when the ring is full.
  bool TryPush(T& item) {
    const size_t tail = tail_.load(std::memory_order_relaxed);
    if (tail - cached_head_ > mask_) {
      cached_head_ = head_.load(std::memory_order_acquire);
      if (tail - cached_head_ > mask_) return false;
    }
    new (slots_[tail & mask_].storage) T(std::move(item));
    tail_.store(tail + 1, std::memory_order_release);
    return true;
  }

  // Consumer side.
  std::optional<T> TryPop() {
    const size_t head = head_.load(std::memory_order_relaxed);
    if (head == cached_tail_) {
      cached_tail_ = tail_.load(std::memory_order_acquire);
      if (head == cached_tail_) return std::nullopt;
    }
    T* slot = std::launder(reinterpret_cast<T*>(slots_[head & mask_].storage));
    std::optional<T> out(std::move(*slot));
    slot->~T();
    head_.store(head + 1, std::memory_order_release);
    return out;
  }

  // Approximate depth, for metrics (either side may call it).
  size_t SizeApprox() const {
    return tail_.load(std::memory_order_relaxed) - head_.load(std::memory_order_relaxed);
  }

 private:
  struct Slot {
    alignas(T) unsigned char storage[sizeof(T)];
  };
  static constexpr size_t kLine = 64;

  size_t mask_ = 0;
  std::unique_ptr<Slot[]> slots_;
  // Consumer-owned line.
  alignas(kLine) std::atomic<size_t> head_{0};
  size_t cached_tail_ = 0;
  // Producer-owned line.
  alignas(kLine) std::atomic<size_t> tail_{0};
  size_t cached_head_ = 0;
};

}  // namespace parley::net

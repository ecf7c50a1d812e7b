#include <catch2/catch.hpp>
#include <thread>

#include "parley/net/spsc_queue.h"

using parley::net::SpscQueue;

TEST_CASE("spsc queue keeps FIFO order and refuses pushes when full", "[net]") {
  SpscQueue<int> q(4);
  REQUIRE(q.capacity() == 4);
  for (int i = 0; i < 4; ++i) {
    int v = i;
    REQUIRE(q.TryPush(v));
  }
  int extra = 99;
  CHECK_FALSE(q.TryPush(extra));
  CHECK(extra == 99);  // a refused item is left with the caller
  for (int i = 0; i < 4; ++i) {
    auto v = q.TryPop();
    REQUIRE(v.has_value());
    CHECK(*v == i);
  }
  CHECK_FALSE(q.TryPop().has_value());
}

TEST_CASE("spsc queue hands every item across threads exactly once, in order", "[net]") {
  SpscQueue<uint64_t> q(1024);
  constexpr uint64_t kItems = 2'000'000;
  std::thread producer([&] {
    for (uint64_t i = 0; i < kItems; ++i) {
      uint64_t v = i;
      while (!q.TryPush(v)) std::this_thread::yield();
    }
  });
  uint64_t expected = 0;
  while (expected < kItems) {
    auto v = q.TryPop();
    if (!v) continue;
    REQUIRE(*v == expected);
    ++expected;
  }
  producer.join();
  CHECK_FALSE(q.TryPop().has_value());
}

TEST_CASE("spsc queue destroys items left in it", "[net]") {
  auto counter = std::make_shared<int>(0);
  {
    SpscQueue<std::shared_ptr<int>> q(8);
    for (int i = 0; i < 5; ++i) {
      auto p = counter;
      REQUIRE(q.TryPush(p));
    }
    CHECK(counter.use_count() == 6);
  }
  CHECK(counter.use_count() == 1);
}

// Per-core counters. Each core writes only its own CoreMetrics (relaxed atomics, so the
// /metrics handler on any core may read every core's figures without locks).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace parley::server {

struct CoreMetrics {
  std::atomic<int64_t> connections{0};  // open TCP connections
  std::atomic<int64_t> websockets{0};   // open WebSocket sessions
  std::atomic<uint64_t> http_requests{0};
  std::atomic<uint64_t> ws_messages_in{0};
  std::atomic<uint64_t> ws_messages_out{0};
  std::atomic<uint64_t> ws_protocol_errors{0};  // connections failed with 1002/1003/1007/1009
  std::atomic<uint64_t> slow_consumer_closes{0};

  void Add(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }
  void Add(std::atomic<int64_t>& c, int64_t n) { c.fetch_add(n, std::memory_order_relaxed); }
};

// Renders every core's counters in Prometheus text format.
std::string RenderMetrics(const std::vector<CoreMetrics*>& cores);

}  // namespace parley::server

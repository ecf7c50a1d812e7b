// A latency histogram for /metrics. One thread records into it; any thread may read it (relaxed
// atomics: a reader may see a sample counted a moment before its time is in the sum). Every
// histogram of Parley has the same buckets, from 100 µs to 1 s, so that per-core series can be
// summed and histograms compared.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <span>
#include <string>
#include <string_view>

namespace parley {

class LatencyHistogram {
 public:
  static constexpr uint64_t kBoundsUs[] = {100,   250,   500,   1000,   2500,   5000,
                                           10000, 25000, 50000, 100000, 250000, 1000000};
  static constexpr size_t kBounds = std::size(kBoundsUs);

  void Record(uint64_t us);
  // Records the time since `start_us`, a MonoMicros() reading.
  void RecordSince(int64_t start_us);

  // Samples below kBoundsUs[b]; b == kBounds: every sample (Prometheus "le" buckets).
  uint64_t CountBelow(size_t b) const;
  uint64_t count() const { return CountBelow(kBounds); }
  uint64_t sum_us() const { return sum_us_.load(std::memory_order_relaxed); }

  // Appends one Prometheus histogram (HELP, TYPE, buckets in seconds, _sum, _count) that sums
  // `parts`, e.g. one histogram per core.
  static void AppendPrometheus(std::string* out, std::string_view name, std::string_view help,
                               std::span<const LatencyHistogram* const> parts);

 private:
  std::atomic<uint64_t> in_bucket_[kBounds + 1] = {};  // [kBoundsUs[b-1], kBoundsUs[b])
  std::atomic<uint64_t> sum_us_{0};
};

}  // namespace parley

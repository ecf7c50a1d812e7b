#include "parley/util/latency_histogram.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "parley/util/clock.h"
#include "parley/util/strings.h"

namespace parley {

void LatencyHistogram::Record(uint64_t us) {
  size_t b = 0;
  while (b < kBounds && us >= kBoundsUs[b]) ++b;
  in_bucket_[b].fetch_add(1, std::memory_order_relaxed);
  sum_us_.fetch_add(us, std::memory_order_relaxed);
}

void LatencyHistogram::RecordSince(int64_t start_us) {
  Record(static_cast<uint64_t>(std::max<int64_t>(0, MonoMicros() - start_us)));
}

uint64_t LatencyHistogram::CountBelow(size_t b) const {
  uint64_t n = 0;
  for (size_t i = 0; i <= b && i <= kBounds; ++i)
    n += in_bucket_[i].load(std::memory_order_relaxed);
  return n;
}

void LatencyHistogram::AppendPrometheus(std::string* out, std::string_view name,
                                        std::string_view help,
                                        std::span<const LatencyHistogram* const> parts) {
  const absl::string_view name_a = ToAbsl(name);
  absl::StrAppend(out, "# HELP ", name_a, " ", ToAbsl(help), "\n# TYPE ", name_a, " histogram\n");
  // One pass over the buckets, so that _count is the +Inf bucket even while samples arrive.
  uint64_t cumulative = 0;
  for (size_t b = 0; b <= kBounds; ++b) {
    for (const LatencyHistogram* h : parts) {
      cumulative += h->in_bucket_[b].load(std::memory_order_relaxed);
    }
    absl::StrAppend(out, name_a, "_bucket{le=\"",
                    b < kBounds ? absl::StrCat(kBoundsUs[b] / 1e6) : "+Inf", "\"} ", cumulative,
                    "\n");
  }
  uint64_t sum_us = 0;
  for (const LatencyHistogram* h : parts) sum_us += h->sum_us();
  // Seconds to the microsecond (StrCat's 6 significant digits would round long totals).
  absl::StrAppend(out, name_a, "_sum ", absl::StrFormat("%.6f", sum_us / 1e6), "\n", name_a,
                  "_count ", cumulative, "\n");
}

}  // namespace parley

#include <catch2/catch.hpp>

#include "parley/util/clock.h"
#include "parley/util/ids.h"
#include "parley/util/latency_histogram.h"
#include "parley/util/stable_hash.h"

TEST_CASE("ids follow the protocol alphabet and length", "[util]") {
  using parley::IsValidId;
  CHECK(IsValidId("alice"));
  CHECK(IsValidId("a.b@c-d_E9"));
  CHECK(IsValidId(std::string(64, 'x')));
  CHECK_FALSE(IsValidId(""));
  CHECK_FALSE(IsValidId(std::string(65, 'x')));
  CHECK_FALSE(IsValidId("a b"));
  CHECK_FALSE(IsValidId("a:b"));
  CHECK_FALSE(IsValidId("caf\xc3\xa9"));
}

TEST_CASE("the stable hash is XXH3-64 with seed 0 and never changes", "[util]") {
  // Pinned values: shard placement of persisted data depends on them.
  CHECK(parley::StableHash("") == 0x2D06800538D394C2ull);
  CHECK(parley::StableHash("alice") != parley::StableHash("bob"));
  CHECK(parley::StableHash("alice") == parley::StableHash(std::string("alice")));
}

TEST_CASE("latency histogram counts below each bound and renders summed Prometheus buckets",
          "[util]") {
  parley::LatencyHistogram a, b;
  a.Record(0);        // below the first bound (100 us)
  a.Record(99);       // still below it
  a.Record(100);      // a bound belongs to the next bucket ("le" is "less than" here)
  a.Record(2000000);  // past the last bound: only +Inf counts it
  b.Record(300);
  CHECK(a.CountBelow(0) == 2);
  CHECK(a.CountBelow(1) == 3);
  CHECK(a.CountBelow(parley::LatencyHistogram::kBounds - 1) == 3);
  CHECK(a.count() == 4);
  CHECK(a.sum_us() == 2000199);

  std::string out;
  const parley::LatencyHistogram* parts[] = {&a, &b};
  parley::LatencyHistogram::AppendPrometheus(&out, "x_seconds", "help text", parts);
  CHECK(out.rfind("# HELP x_seconds help text\n# TYPE x_seconds histogram\n", 0) == 0);
  CHECK(out.find("x_seconds_bucket{le=\"0.0001\"} 2\n") != std::string::npos);
  CHECK(out.find("x_seconds_bucket{le=\"0.00025\"} 3\n") != std::string::npos);
  CHECK(out.find("x_seconds_bucket{le=\"0.0005\"} 4\n") != std::string::npos);  // b's 300 us
  CHECK(out.find("x_seconds_bucket{le=\"1\"} 4\n") != std::string::npos);
  CHECK(out.find("x_seconds_bucket{le=\"+Inf\"} 5\n") != std::string::npos);
  CHECK(out.find("x_seconds_sum 2.000499\n") != std::string::npos);
  CHECK(out.find("x_seconds_count 5\n") != std::string::npos);
}

TEST_CASE("latency histogram records the time since a monotonic reading", "[util]") {
  parley::LatencyHistogram h;
  h.RecordSince(parley::MonoMicros() - 5000);  // started 5 ms ago
  h.RecordSince(parley::MonoMicros() + 1000);  // a start in the future counts as 0
  CHECK(h.count() == 2);
  CHECK(h.CountBelow(0) == 1);  // the future one, below 100 us
  CHECK(h.CountBelow(4) == 1);  // below 2.5 ms: not the 5 ms one
  CHECK(h.sum_us() >= 5000);
}

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>

#include "parley/util/clock.h"
#include "parley/util/ids.h"
#include "parley/util/json_writer.h"
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

namespace {

// The escaping JSON requires, one byte at a time: what AppendJsonString must produce.
std::string ReferenceJsonString(std::string_view s) {
  static const std::map<unsigned char, std::string> kEscapes = {
      {'"', R"(\")"},  {'\\', R"(\\)"}, {'\n', R"(\n)"}, {'\r', R"(\r)"},
      {'\t', R"(\t)"}, {'\b', R"(\b)"}, {'\f', R"(\f)"}};
  std::string out = "\"";
  for (unsigned char c : s) {
    if (auto it = kEscapes.find(c); it != kEscapes.end()) {
      out += it->second;
    } else if (c < 0x20) {
      char hex[8];
      std::snprintf(hex, sizeof(hex), "\\u%04x", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

}  // namespace

TEST_CASE("JSON strings are escaped wherever the special bytes fall", "[util]") {
  // Every byte that needs escaping, and bytes at the edges of the ones that do not (0x20, 0x7f,
  // 0x80, 0xff: the vector check compares unsigned), at every offset of strings that span
  // several 16-byte blocks.
  const std::string specials = std::string("\"\\\n\r\t\b\f\x01\x1f", 9) + std::string(1, '\0');
  const std::string plain = std::string(" ~\x7f\x80\xff", 5);
  for (size_t len : {0, 1, 15, 16, 17, 31, 32, 33, 47, 64}) {
    for (size_t at = 0; at < len; ++at) {
      for (char special : specials) {
        std::string s(len, 'a');
        for (size_t i = 0; i < len; ++i) s[i] = plain[i % plain.size()];
        s[at] = special;
        std::string out = "x";  // appends to what is there
        parley::AppendJsonString(&out, s);
        INFO("len " << len << " at " << at << " byte " << static_cast<int>(special));
        REQUIRE(out == "x" + ReferenceJsonString(s));
      }
    }
  }
  // Several escapes in one block and runs of them.
  std::string dense;
  for (int c = 0; c < 256; ++c) dense += static_cast<char>(c);
  dense += dense;
  std::string out;
  parley::AppendJsonString(&out, dense);
  CHECK(out == ReferenceJsonString(dense));
}

TEST_CASE("JSON objects: keys, strings, integers at their limits", "[util]") {
  std::string out;
  parley::JsonObjectWriter(&out)
      .Int("min", INT64_MIN)
      .Int("max", INT64_MAX)
      .Int("zero", 0)
      .Str("s", "a\"b")
      .Bool("t", true)
      .Raw("r", "[1]")
      .Close();
  CHECK(out ==
        R"({"min":-9223372036854775808,"max":9223372036854775807,"zero":0,"s":"a\"b","t":true,)"
        R"("r":[1]})");
  std::string empty;
  parley::JsonObjectWriter(&empty).Close();
  CHECK(empty == "{}");
}

// Small pieces shared by the load tool: clocks, a fast RNG, a scanner for the server's JSON
// frames, a mergeable latency histogram and the JSON report line.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace parley::load {

// CLOCK_MONOTONIC in nanoseconds; every thread of the tool reads the same clock, so a time
// stamped by a sender can be compared with the receiver's clock.
int64_t NowNs();

// xorshift64*: cheap and good enough to pick users and masking keys.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed ? seed : 0x9E3779B97F4A7C15ull) {}
  uint64_t Next() {
    s_ ^= s_ >> 12;
    s_ ^= s_ << 25;
    s_ ^= s_ >> 27;
    return s_ * 0x2545F4914F6CDD1Dull;
  }
  // Uniform in [0, n) (n > 0); the modulo bias is irrelevant for load generation.
  uint64_t Below(uint64_t n) { return Next() % n; }
  // True with probability p.
  bool Chance(double p) { return static_cast<double>(Next() >> 11) * 0x1.0p-53 < p; }

 private:
  uint64_t s_;
};

// Walks the top-level members of one JSON object as the server writes it. Values are handed
// over raw: strings with their quotes (escapes not decoded), numbers, literals, or nested
// objects/arrays as a whole. Returns false if the text is not a well-formed object at the top
// level (nested values are only skipped, not validated).
template <typename F>
bool ForEachMember(std::string_view obj, F&& f);

// The raw value of a string member without its quotes (escapes are left as they are: ids and
// codes never contain any).
inline std::string_view Unquote(std::string_view raw) {
  if (raw.size() >= 2 && raw.front() == '"' && raw.back() == '"')
    return raw.substr(1, raw.size() - 2);
  return {};
}
// Parses a JSON integer; false if `raw` is not one.
bool ParseInt(std::string_view raw, int64_t* out);
// Parses lower-case hex digits (the send-time stamp at the start of a load message's body);
// false on any other character.
bool ParseHex(std::string_view s, int64_t* out);

// Skips one JSON value starting at text[pos] (pos at its first character, no leading blanks);
// returns the position after it, or npos when the text ends first.
size_t SkipValue(std::string_view text, size_t pos);

// Log-linear histogram of non-negative values (nanoseconds here): exact below 128, then 64
// sub-buckets per power of two (relative error < 1.6%). Mergeable; min, max and sum are exact.
class Histogram {
 public:
  Histogram();
  void Record(uint64_t v);
  void Merge(const Histogram& other);
  uint64_t count() const { return count_; }
  uint64_t min() const { return count_ ? min_ : 0; }
  uint64_t max() const { return max_; }
  double mean() const {
    return count_ ? static_cast<double>(sum_) / static_cast<double>(count_) : 0;
  }
  // The value at quantile q in [0, 1] (bucket midpoint, clamped to [min, max]).
  uint64_t Quantile(double q) const;
  // {"count":..,"p50_us":..,"p90_us":..,"p99_us":..,"p999_us":..,"max_us":..,"mean_us":..}
  std::string JsonMicros() const;
  // "p50 123 µs  p90 ...": one line for the human summary.
  std::string TextMicros() const;

 private:
  static size_t Index(uint64_t v);
  static uint64_t Lower(size_t index);
  static uint64_t Upper(size_t index);  // exclusive
  std::vector<uint64_t> buckets_;
  uint64_t count_ = 0, min_ = UINT64_MAX, max_ = 0, sum_ = 0;
};

// One flat JSON object built in insertion order; values are already-serialised JSON.
class JsonLine {
 public:
  JsonLine& Int(std::string_view key, int64_t v);
  JsonLine& Num(std::string_view key, double v);  // fixed, 3 decimals; NaN/inf become null
  JsonLine& Str(std::string_view key, std::string_view v);
  JsonLine& Bool(std::string_view key, bool v);
  JsonLine& Raw(std::string_view key, std::string_view json);
  std::string Build() const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

// Appends the cmid of a sender's message number `n`: 32 hex digits that look random (a
// bijective mix of n, so one sender's cmids never collide), or "c<n>" when !random.
void AppendCmid(std::string* out, uint64_t n, bool random);
// Appends s as a JSON string literal.
void AppendQuoted(std::string* out, std::string_view s);
// printf into a std::string.
std::string Format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// ---- template implementation ----
template <typename F>
bool ForEachMember(std::string_view t, F&& f) {
  size_t i = 0;
  auto blank = [&] {
    while (i < t.size() && (t[i] == ' ' || t[i] == '\n' || t[i] == '\r' || t[i] == '\t')) ++i;
  };
  blank();
  if (i >= t.size() || t[i] != '{') return false;
  ++i;
  blank();
  if (i < t.size() && t[i] == '}') return true;
  while (i < t.size()) {
    blank();
    if (i >= t.size() || t[i] != '"') return false;
    size_t kend = SkipValue(t, i);
    if (kend == std::string_view::npos) return false;
    std::string_view key = t.substr(i + 1, kend - i - 2);
    i = kend;
    blank();
    if (i >= t.size() || t[i] != ':') return false;
    ++i;
    blank();
    size_t vend = SkipValue(t, i);
    if (vend == std::string_view::npos) return false;
    f(key, t.substr(i, vend - i));
    i = vend;
    blank();
    if (i >= t.size()) return false;
    if (t[i] == '}') return true;
    if (t[i] != ',') return false;
    ++i;
  }
  return false;
}

}  // namespace parley::load

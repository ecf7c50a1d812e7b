#include "util.h"

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "parley/util/json_writer.h"

namespace parley::load {

int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

bool ParseInt(std::string_view raw, int64_t* out) {
  if (raw.empty()) return false;
  size_t i = 0;
  bool neg = false;
  if (raw[0] == '-') {
    neg = true;
    i = 1;
  }
  if (i == raw.size()) return false;
  int64_t v = 0;
  for (; i < raw.size(); ++i) {
    char c = raw[i];
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = neg ? -v : v;
  return true;
}

size_t SkipValue(std::string_view t, size_t i) {
  constexpr size_t npos = std::string_view::npos;
  if (i >= t.size()) return npos;
  char c = t[i];
  if (c == '"') {
    size_t j = i + 1;
    for (;;) {
      const void* q = std::memchr(t.data() + j, '"', t.size() - j);
      if (q == nullptr) return npos;
      size_t k = static_cast<const char*>(q) - t.data();
      size_t bs = 0;  // an odd run of backslashes before the quote escapes it
      while (k - bs > i + 1 && t[k - bs - 1] == '\\') ++bs;
      if (bs % 2 == 0) return k + 1;
      j = k + 1;
    }
  }
  if (c == '{' || c == '[') {
    int depth = 0;
    for (size_t j = i; j < t.size(); ++j) {
      char d = t[j];
      if (d == '"') {
        size_t e = SkipValue(t, j);
        if (e == npos) return npos;
        j = e - 1;
      } else if (d == '{' || d == '[') {
        ++depth;
      } else if (d == '}' || d == ']') {
        if (--depth == 0) return j + 1;
      }
    }
    return npos;
  }
  size_t j = i;
  while (j < t.size() && t[j] != ',' && t[j] != '}' && t[j] != ']' && t[j] != ' ' && t[j] != '\n' &&
         t[j] != '\r' && t[j] != '\t') {
    ++j;
  }
  return j == i ? npos : j;
}

// ---- Histogram: indexes 0..127 exact; then for the highest set bit m >= 7, 64 buckets of
// width 2^(m-6) covering [2^m, 2^(m+1)).
namespace {
constexpr size_t kLinear = 128;
constexpr size_t kSub = 64;
constexpr size_t kBuckets = kLinear + (63 - 7 + 1) * kSub;
}  // namespace

Histogram::Histogram() : buckets_(kBuckets, 0) {}

size_t Histogram::Index(uint64_t v) {
  if (v < kLinear) return static_cast<size_t>(v);
  int m = 63 - __builtin_clzll(v);
  uint64_t sub = (v >> (m - 6)) & (kSub - 1);
  return kLinear + static_cast<size_t>(m - 7) * kSub + static_cast<size_t>(sub);
}

uint64_t Histogram::Lower(size_t index) {
  if (index < kLinear) return index;
  size_t k = index - kLinear;
  int m = static_cast<int>(k / kSub) + 7;
  uint64_t sub = k % kSub;
  return (uint64_t{1} << m) + (sub << (m - 6));
}

uint64_t Histogram::Upper(size_t index) {
  if (index < kLinear) return index + 1;
  size_t k = index - kLinear;
  int m = static_cast<int>(k / kSub) + 7;
  return Lower(index) + (uint64_t{1} << (m - 6));
}

void Histogram::Record(uint64_t v) {
  ++buckets_[Index(v)];
  ++count_;
  sum_ += v;
  if (v < min_) min_ = v;
  if (v > max_) max_ = v;
}

void Histogram::Merge(const Histogram& o) {
  for (size_t i = 0; i < kBuckets; ++i) buckets_[i] += o.buckets_[i];
  count_ += o.count_;
  sum_ += o.sum_;
  if (o.count_ && o.min_ < min_) min_ = o.min_;
  if (o.max_ > max_) max_ = o.max_;
}

uint64_t Histogram::Quantile(double q) const {
  if (count_ == 0) return 0;
  if (q >= 1.0) return max_;
  uint64_t rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(count_)));
  if (rank == 0) rank = 1;
  uint64_t seen = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    seen += buckets_[i];
    if (seen >= rank) {
      uint64_t mid = i < kLinear ? i : (Lower(i) + Upper(i) - 1) / 2;
      if (mid < min_) mid = min_;
      if (mid > max_) mid = max_;
      return mid;
    }
  }
  return max_;
}

std::string Histogram::JsonMicros() const {
  auto us = [](uint64_t ns) { return static_cast<double>(ns) / 1000.0; };
  return Format(
      "{\"count\":%llu,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
      "\"max_us\":%.1f,\"mean_us\":%.1f}",
      static_cast<unsigned long long>(count_), us(Quantile(0.5)), us(Quantile(0.9)),
      us(Quantile(0.99)), us(Quantile(0.999)), us(max()), mean() / 1000.0);
}

std::string Histogram::TextMicros() const {
  auto us = [](uint64_t ns) { return static_cast<double>(ns) / 1000.0; };
  return Format("p50 %.0f  p90 %.0f  p99 %.0f  p99.9 %.0f  max %.0f µs  (n=%llu, mean %.0f µs)",
                us(Quantile(0.5)), us(Quantile(0.9)), us(Quantile(0.99)), us(Quantile(0.999)),
                us(max()), static_cast<unsigned long long>(count_), mean() / 1000.0);
}

bool ParseHex(std::string_view s, int64_t* out) {
  uint64_t v = 0;
  for (char ch : s) {
    int d;
    if (ch >= '0' && ch <= '9') {
      d = ch - '0';
    } else if (ch >= 'a' && ch <= 'f') {
      d = ch - 'a' + 10;
    } else {
      return false;
    }
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  *out = static_cast<int64_t>(v);
  return true;
}

// ---- JsonLine ----
namespace {
uint64_t Mix64(uint64_t z) {  // splitmix64's finaliser: a bijection on 64-bit values
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

void AppendCmid(std::string* out, uint64_t n, bool random) {
  if (!random) {
    out->push_back('c');
    out->append(std::to_string(n));
    return;
  }
  static constexpr char kHex[] = "0123456789abcdef";
  const uint64_t words[2] = {Mix64(n), Mix64(n ^ 0x5bd1e995ull)};
  for (uint64_t w : words) {
    for (int i = 15; i >= 0; --i) out->push_back(kHex[(w >> (i * 4)) & 15]);
  }
}

void AppendQuoted(std::string* out, std::string_view s) {
  parley::AppendJsonString(out, s);
}

JsonLine& JsonLine::Int(std::string_view key, int64_t v) {
  fields_.emplace_back(std::string(key), std::to_string(v));
  return *this;
}
JsonLine& JsonLine::Num(std::string_view key, double v) {
  fields_.emplace_back(std::string(key), std::isfinite(v) ? Format("%.3f", v) : "null");
  return *this;
}
JsonLine& JsonLine::Str(std::string_view key, std::string_view v) {
  std::string s;
  AppendQuoted(&s, v);
  fields_.emplace_back(std::string(key), std::move(s));
  return *this;
}
JsonLine& JsonLine::Bool(std::string_view key, bool v) {
  fields_.emplace_back(std::string(key), v ? "true" : "false");
  return *this;
}
JsonLine& JsonLine::Raw(std::string_view key, std::string_view json) {
  fields_.emplace_back(std::string(key), std::string(json));
  return *this;
}
std::string JsonLine::Build() const {
  std::string out = "{";
  for (size_t i = 0; i < fields_.size(); ++i) {
    if (i) out.push_back(',');
    AppendQuoted(&out, fields_[i].first);
    out.push_back(':');
    out.append(fields_[i].second);
  }
  out.push_back('}');
  return out;
}

std::string Format(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return {};
  if (static_cast<size_t>(n) < sizeof buf) return std::string(buf, static_cast<size_t>(n));
  std::string s(static_cast<size_t>(n) + 1, '\0');
  va_start(ap, fmt);
  vsnprintf(s.data(), s.size(), fmt, ap);
  va_end(ap);
  s.resize(static_cast<size_t>(n));
  return s;
}

}  // namespace parley::load

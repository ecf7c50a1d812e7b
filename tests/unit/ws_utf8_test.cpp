#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "parley/ws/utf8.h"

using parley::ws::IsValidUtf8;
using parley::ws::Utf8Stream;

namespace {

// Reference model, derived independently of the implementation: a partial sequence is viable
// when the range of code points its completions can reach contains one that is legal for that
// sequence length (not overlong, not a surrogate, not above U+10FFFF).
bool Viable(uint32_t bits, int have, int len) {
  const int missing = len - have;
  const uint32_t lo = bits << (6 * missing);
  const uint32_t hi = lo | ((1u << (6 * missing)) - 1);
  const uint32_t minimum = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
  if (hi < minimum || lo > 0x10FFFF) return false;
  if (lo >= 0xD800 && hi <= 0xDFFF) return false;
  return true;
}

struct RefResult {
  size_t first_bad;  // index of the first byte that makes the prefix invalid, or size
  bool complete;     // no partial sequence at the end
};

RefResult Reference(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<uint8_t>(s[i]);
    int len;
    uint32_t bits;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      len = 2, bits = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      len = 3, bits = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      len = 4, bits = b & 0x07;
    } else {
      return {i, false};
    }
    if (!Viable(bits, 1, len)) return {i, false};
    for (int k = 1; k < len; ++k) {
      if (i + k >= s.size()) return {s.size(), false};
      const auto c = static_cast<uint8_t>(s[i + k]);
      if ((c & 0xC0) != 0x80) return {i + k, false};
      bits = (bits << 6) | (c & 0x3F);
      if (!Viable(bits, k + 1, len)) return {i + k, false};
    }
    i += len;
  }
  return {s.size(), true};
}

std::string Encode(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

// Mostly valid UTF-8 of every length, with occasional raw bytes that may break it.
std::string RandomText(std::mt19937& rng, size_t chars) {
  std::string s;
  for (size_t i = 0; i < chars; ++i) {
    switch (rng() % 8) {
      case 0:
        s += static_cast<char>(rng() % 256);
        break;
      case 1:
        s += Encode(0x80 + rng() % (0x800 - 0x80));
        break;
      case 2: {
        uint32_t cp = 0x800 + rng() % (0x10000 - 0x800);
        if (cp >= 0xD800 && cp <= 0xDFFF) cp -= 0x1000;
        s += Encode(cp);
        break;
      }
      case 3:
        s += Encode(0x10000 + rng() % (0x110000 - 0x10000));
        break;
      default:
        s += static_cast<char>('a' + rng() % 26);
        break;
    }
  }
  return s;
}

}  // namespace

TEST_CASE("IsValidUtf8 accepts valid and rejects invalid sequences", "[ws][utf8]") {
  CHECK(IsValidUtf8(""));
  CHECK(IsValidUtf8("hello"));
  CHECK(IsValidUtf8("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"));  // "kosme" in Greek
  CHECK(IsValidUtf8("\xf0\x9f\x98\x80"));                              // U+1F600
  CHECK(IsValidUtf8("\xf4\x8f\xbf\xbf"));                              // U+10FFFF
  CHECK(IsValidUtf8("\xed\x9f\xbf"));                                  // U+D7FF
  CHECK_FALSE(IsValidUtf8("\xed\xa0\x80"));                            // U+D800 surrogate
  CHECK_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));                        // above U+10FFFF
  CHECK_FALSE(IsValidUtf8("\xc0\xaf"));                                // overlong '/'
  CHECK_FALSE(IsValidUtf8("\xe0\x80\xaf"));                            // overlong
  CHECK_FALSE(IsValidUtf8("\xf0\x80\x80\xaf"));                        // overlong
  CHECK_FALSE(IsValidUtf8("\x80"));                                    // stray continuation
  CHECK_FALSE(IsValidUtf8("\xff"));
  CHECK_FALSE(IsValidUtf8("\xce"));  // truncated
}

TEST_CASE("Utf8Stream accepts valid text split at every byte", "[ws][utf8]") {
  const std::string text =
      "a\xc3\xa9z\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf\xed\x9f\xbf\xee\x80\x80"
      "end";
  REQUIRE(IsValidUtf8(text));
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    Utf8Stream u;
    CHECK(u.Feed(std::string_view(text).substr(0, cut)));
    CHECK(u.Feed(std::string_view(text).substr(cut)));
    CHECK(u.Finish());
  }
  Utf8Stream bytewise;
  for (char c : text) REQUIRE(bytewise.Feed(std::string_view(&c, 1)));
  CHECK(bytewise.Finish());
}

TEST_CASE("Utf8Stream fails at the byte that makes a carried sequence impossible", "[ws][utf8]") {
  struct Case {
    std::string head;  // accepted
    std::string bad;   // rejected as soon as fed
  };
  const std::vector<Case> cases = {
      {"", "\xf5"},     {"", "\xff"},      {"", "\xc0"},          {"", "\xc1"},
      {"\xe0", "\x9f"}, {"\xed", "\xa0"},  {"\xf0", "\x8f"},      {"\xf4", "\x90"},
      {"\xe2", "a"},    {"\xe2\x82", "a"}, {"\xf0\x9f\x98", "("}, {"ab\xe2", "\xc3"},
  };
  for (const Case& c : cases) {
    INFO("head size " << c.head.size());
    Utf8Stream u;
    REQUIRE(u.Feed(c.head));
    CHECK_FALSE(u.Feed(c.bad));
    CHECK_FALSE(u.Feed("ok"));  // sticky
    CHECK_FALSE(u.Finish());
    u.Reset();
    CHECK(u.Feed("ok"));
    CHECK(u.Finish());
  }
  // The same impossible prefixes at the end of a larger chunk are rejected at once, although
  // they are incomplete.
  for (std::string tail :
       {"\xf5", "\xc1", "\xe0\x80", "\xed\xbf", "\xf0\x80", "\xf4\xbf", "\xf0\x9f\x28"}) {
    Utf8Stream u;
    CHECK_FALSE(u.Feed("some ascii text " + tail));
  }
}

TEST_CASE("Utf8Stream keeps an incomplete sequence pending", "[ws][utf8]") {
  Utf8Stream u;
  REQUIRE(u.Feed("x\xf0\x9f"));
  CHECK_FALSE(u.Finish());
  REQUIRE(u.Feed("\x98"));
  CHECK_FALSE(u.Finish());
  REQUIRE(u.Feed(""));
  REQUIRE(u.Feed("\x80y"));
  CHECK(u.Finish());
}

TEST_CASE("Utf8Stream matches the reference model for random text and chunking", "[ws][utf8]") {
  std::mt19937 rng(12345);
  for (int iter = 0; iter < 3000; ++iter) {
    const std::string s = RandomText(rng, 1 + rng() % 80);
    const RefResult ref = Reference(s);
    CHECK(IsValidUtf8(s) == (ref.first_bad == s.size() && ref.complete));

    // Random chunk boundaries; Feed must fail exactly on the chunk holding the first bad byte.
    Utf8Stream u;
    size_t pos = 0;
    bool failed = false;
    while (pos < s.size() && !failed) {
      const size_t n = std::min(s.size() - pos, size_t{rng() % 9});
      const bool ok = u.Feed(std::string_view(s).substr(pos, n));
      const bool bad_in_chunk = ref.first_bad >= pos && ref.first_bad < pos + n;
      INFO("text size " << s.size() << " chunk at " << pos << " size " << n << " first bad "
                        << ref.first_bad);
      REQUIRE(ok == !bad_in_chunk);
      failed = !ok;
      pos += n;
    }
    if (!failed) CHECK(u.Finish() == ref.complete);
  }
}

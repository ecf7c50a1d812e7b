#include "parley/util/json_writer.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace parley {
namespace {

bool NeedsEscape(unsigned char c) {
  return c < 0x20 || c == '"' || c == '\\';
}

// Index of the first byte at or after `i` that JSON must escape, or s.size(). Message bodies
// rarely have any: sixteen bytes are checked at once where SSE2 is there (every x86-64).
size_t FindEscape(std::string_view s, size_t i) {
#if defined(__SSE2__)
  const __m128i quote = _mm_set1_epi8('"');
  const __m128i backslash = _mm_set1_epi8('\\');
  const __m128i max_control = _mm_set1_epi8(0x1F);
  for (; i + 16 <= s.size(); i += 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s.data() + i));
    // Unsigned v <= 0x1F exactly when min(v, 0x1F) == v.
    const __m128i control = _mm_cmpeq_epi8(_mm_min_epu8(v, max_control), v);
    const __m128i special =
        _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)), control);
    if (const int mask = _mm_movemask_epi8(special)) {
      return i + static_cast<size_t>(__builtin_ctz(static_cast<unsigned>(mask)));
    }
  }
#endif
  for (; i < s.size(); ++i) {
    if (NeedsEscape(static_cast<unsigned char>(s[i]))) return i;
  }
  return s.size();
}

void AppendEscape(std::string* out, unsigned char c) {
  // The bytes with a short escape, each followed by its letter: \" \\ \n \r \t \b \f.
  static constexpr std::string_view kShort = "\"\"\\\\\nn\rr\tt\bb\ff";
  for (size_t i = 0; i < kShort.size(); i += 2) {
    if (static_cast<unsigned char>(kShort[i]) == c) {
      const char esc[2] = {'\\', kShort[i + 1]};
      out->append(esc, 2);
      return;
    }
  }
  static constexpr char kHex[] = "0123456789abcdef";
  const char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xF]};
  out->append(esc, 6);
}

}  // namespace

void AppendJsonString(std::string* out, std::string_view s) {
  size_t i = FindEscape(s, 0);
  if (i == s.size()) {  // the common case: one copy between the quotes
    out->reserve(out->size() + s.size() + 2);
    out->push_back('"');
    out->append(s.data(), s.size());
    out->push_back('"');
    return;
  }
  out->push_back('"');
  size_t run = 0;  // start of the current run of bytes that need no escaping
  while (i < s.size()) {
    out->append(s.data() + run, i - run);
    AppendEscape(out, static_cast<unsigned char>(s[i]));
    run = i + 1;
    i = FindEscape(s, run);
  }
  out->append(s.data() + run, s.size() - run);
  out->push_back('"');
}

}  // namespace parley

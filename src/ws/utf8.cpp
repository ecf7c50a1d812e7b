#include "parley/ws/utf8.h"

#include <simdjson.h>

namespace parley::ws {
namespace {

// Length of the sequence a lead byte announces; 1 for ASCII and for bytes that cannot start a
// sequence (continuations, 0xF8..0xFF), which the callers treat as "not a carry candidate".
inline size_t SequenceLength(uint8_t b) {
  if (b < 0xC0) return 1;
  if (b < 0xE0) return 2;
  if (b < 0xF0) return 3;
  if (b < 0xF8) return 4;
  return 1;
}

// True if p[0..n) (1 <= n <= sequence length) can begin a valid code point. Encodes the
// Unicode well-formed byte table: no overlongs (C0, C1, E0 <A0, F0 <90), no surrogates
// (ED >=A0), nothing above U+10FFFF (F4 >=90, F5..FF).
bool ViablePrefix(const uint8_t* p, size_t n) {
  const uint8_t b0 = p[0];
  if (b0 < 0xC2 || b0 > 0xF4) return false;
  if (n >= 2) {
    uint8_t lo = 0x80, hi = 0xBF;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
    if (p[1] < lo || p[1] > hi) return false;
  }
  for (size_t i = 2; i < n; ++i) {
    if ((p[i] & 0xC0) != 0x80) return false;
  }
  return true;
}

}  // namespace

bool IsValidUtf8(std::string_view s) {
  return simdjson::validate_utf8(s.data(), s.size());
}

bool Utf8Stream::Feed(std::string_view chunk) {
  if (!ok_) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(chunk.data());
  size_t n = chunk.size();

  // Complete the code point carried over from the previous chunk, byte by byte, so that an
  // impossible continuation is rejected at the byte that makes it impossible.
  if (pending_len_ > 0) {
    const size_t need = SequenceLength(pending_[0]);
    while (pending_len_ < need && n > 0) {
      pending_[pending_len_++] = *p++;
      --n;
      if (!ViablePrefix(pending_, pending_len_)) return ok_ = false;
    }
    if (pending_len_ < need) return true;  // chunk exhausted, still a viable prefix
    pending_len_ = 0;
  }
  if (n == 0) return true;

  // Split off an incomplete trailing sequence (at most 3 bytes): look back for its lead byte.
  size_t carry = 0;
  for (size_t k = 1; k <= 3 && k <= n; ++k) {
    const uint8_t b = p[n - k];
    if ((b & 0xC0) == 0x80) continue;  // continuation: keep looking for the lead
    if (b >= 0xC0 && SequenceLength(b) > k) carry = k;
    break;
  }
  if (carry > 0 && !ViablePrefix(p + n - carry, carry)) return ok_ = false;
  if (!simdjson::validate_utf8(reinterpret_cast<const char*>(p), n - carry)) return ok_ = false;
  for (size_t i = 0; i < carry; ++i) pending_[i] = p[n - carry + i];
  pending_len_ = static_cast<uint8_t>(carry);
  return true;
}

}  // namespace parley::ws

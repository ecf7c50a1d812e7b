// UTF-8 validation for WebSocket text messages, including across fragment boundaries.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace parley::ws {

// Whole-buffer validation (SIMD via simdjson).
bool IsValidUtf8(std::string_view s);

// Incremental validator: feed fragments in order; fails as soon as the bytes seen so far
// cannot be the prefix of valid UTF-8 (fail-fast, RFC 6455 section 8.1).
class Utf8Stream {
 public:
  // False once any prefix is invalid; stays false until Reset.
  bool Feed(std::string_view chunk);
  // True if everything fed forms complete, valid UTF-8 (no dangling partial sequence).
  bool Finish() const { return ok_ && pending_len_ == 0; }
  void Reset() {
    ok_ = true;
    pending_len_ = 0;
  }

 private:
  bool ok_ = true;
  uint8_t pending_[4] = {};
  uint8_t pending_len_ = 0;
};

}  // namespace parley::ws

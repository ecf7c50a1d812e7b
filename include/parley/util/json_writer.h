// Minimal JSON output for protocol frames: appends to a caller-owned string, no allocation
// beyond the string's growth. Keys are written by the caller as literals.
#pragma once

#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>

namespace parley {

// Appends `s` as a JSON string literal (quotes included), escaping what JSON requires.
// Input must be valid UTF-8 (it always is: it came from validated WebSocket text).
void AppendJsonString(std::string* out, std::string_view s);

// Builds one JSON object: {"k":v,...}.
class JsonObjectWriter {
 public:
  explicit JsonObjectWriter(std::string* out) : out_(out) { out_->push_back('{'); }
  JsonObjectWriter& Str(std::string_view key, std::string_view value) {
    Key(key);
    AppendJsonString(out_, value);
    return *this;
  }
  JsonObjectWriter& Int(std::string_view key, int64_t value) {
    Key(key);
    char digits[20];  // an int64 has at most 19 digits and a sign
    const auto end = std::to_chars(digits, digits + sizeof(digits), value).ptr;
    out_->append(digits, static_cast<size_t>(end - digits));
    return *this;
  }
  JsonObjectWriter& Bool(std::string_view key, bool value) {
    Key(key);
    out_->append(value ? "true" : "false");
    return *this;
  }
  // Inserts already-serialised JSON (e.g. a stored `meta` object or an array).
  JsonObjectWriter& Raw(std::string_view key, std::string_view json) {
    Key(key);
    out_->append(json);
    return *this;
  }
  void Close() { out_->push_back('}'); }

 private:
  void Key(std::string_view key) {
    out_->append(first_ ? "\"" : ",\"", first_ ? 1 : 2);
    first_ = false;
    out_->append(key.data(), key.size());
    out_->append("\":", 2);
  }
  std::string* out_;
  bool first_ = true;
};

}  // namespace parley

// String helpers that take std::string_view.
//
// Debian's Abseil is built with its own absl::string_view type (not std::string_view), so
// absl::StrCat and absl::Status messages do not mix with std::string_view. These helpers
// bridge the two without copies.
#pragma once

#include <concepts>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"

namespace parley {

inline std::string_view ToStd(absl::string_view s) {
  return {s.data(), s.size()};
}
inline absl::string_view ToAbsl(std::string_view s) {
  return {s.data(), s.size()};
}

namespace strings_internal {
inline void AppendOne(std::string* out, std::string_view s) {
  out->append(s);
}
inline void AppendOne(std::string* out, absl::string_view s) {
  out->append(s.data(), s.size());
}
inline void AppendOne(std::string* out, const char* s) {
  out->append(s);
}
inline void AppendOne(std::string* out, const std::string& s) {
  out->append(s);
}
inline void AppendOne(std::string* out, char c) {
  out->push_back(c);
}
template <std::integral T>
requires(!std::same_as<T, char> && !std::same_as<T, bool>) void AppendOne(std::string* out, T v) {
  out->append(std::to_string(v));
}
}  // namespace strings_internal

template <typename... Args>
void StrAppend(std::string* out, const Args&... args) {
  (strings_internal::AppendOne(out, args), ...);
}

template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  StrAppend(&out, args...);
  return out;
}

}  // namespace parley

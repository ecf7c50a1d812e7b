// Identifier rules shared by every layer (PROTOCOL.md section 2).
#pragma once

#include <string_view>

namespace parley {

inline constexpr size_t kMaxIdBytes = 64;

// A user, group, device or client-message id: 1-64 bytes of [A-Za-z0-9_.@-].
constexpr bool IsValidId(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdBytes) return false;
  for (char c : id) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '@' || c == '-';
    if (!ok) return false;
  }
  return true;
}

}  // namespace parley

// Fuzzes token verification with arbitrary bytes: it must never crash, and whatever it accepts
// must carry a valid subject (acceptance of a forged token would also need a broken HMAC).
// Every input is also signed and re-verified to exercise the accepting path.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "parley/auth/jwt.h"
#include "parley/util/ids.h"

namespace {
constexpr std::string_view kSecret = "fuzz-secret-0123456789abcdef";
constexpr int64_t kNow = 1800000000;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  parley::auth::VerifyResult r = parley::auth::VerifyHs256(input, kSecret, kNow);
  if (r.ok && !parley::IsValidId(r.claims.subject)) std::abort();
  if (!r.ok && r.message.empty()) std::abort();

  // Signing any subject and verifying it round-trips exactly when the subject is a valid id.
  std::string token = parley::auth::SignHs256(input, kNow + 60, kSecret);
  parley::auth::VerifyResult back = parley::auth::VerifyHs256(token, kSecret, kNow);
  bool expect_ok = parley::IsValidId(input) && token.size() <= 8192;
  if (back.ok != expect_ok) std::abort();
  if (back.ok && (back.claims.subject != input || back.claims.expires_at != kNow + 60)) {
    std::abort();
  }
  return 0;
}

// JSON Web Tokens, HS256 only (RFC 7519 / RFC 7515, compact serialisation).
//
// Verification is constant-time in the signature comparison (CRYPTO_memcmp), rejects every
// "alg" other than "HS256" (including "none"), requires a string "sub" that is a valid Parley
// id, and honours "exp" (seconds since the epoch) and "nbf" when present.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace parley::auth {

struct TokenClaims {
  std::string subject;     // "sub"
  int64_t expires_at = 0;  // "exp" in seconds since the epoch; 0 when absent
};

// kMalformed: not a well-formed HS256 token (bad encoding, JSON, or claims; longer than 8 KiB).
// kBadSignature: the signature does not verify, or "nbf" is still in the future (the token is
//   not acceptable now, but it has not expired either).
// kExpired: "exp" <= now. kUnsupported: "alg" is missing or not "HS256", or "crit" is present.
enum class TokenError { kMalformed, kBadSignature, kExpired, kUnsupported };

struct VerifyResult {
  bool ok = false;
  TokenClaims claims;
  TokenError error = TokenError::kMalformed;
  std::string message;  // human text for the protocol error
};

// Verifies `token` against `secret` at time `now_s` (seconds since the epoch).
VerifyResult VerifyHs256(std::string_view token, std::string_view secret, int64_t now_s);

// Signs a token for `subject`, expiring at `expires_at_s` (0 = no exp claim).
std::string SignHs256(std::string_view subject, int64_t expires_at_s, std::string_view secret);

}  // namespace parley::auth

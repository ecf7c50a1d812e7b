// HS256 JSON Web Tokens. Order of checks: shape and encoding, then the header (which names the
// algorithm), then the signature, and only a token whose signature verifies has its payload
// parsed: unauthenticated input never reaches the claims parser.
#include "parley/auth/jwt.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <simdjson.h>

#include <array>
#include <string>

#include "parley/util/ids.h"
#include "parley/util/json_writer.h"

namespace parley::auth {
namespace {

// Tokens travel in the hello frame; 8 KiB is far above any sane claim set.
constexpr size_t kMaxTokenBytes = 8192;
constexpr size_t kSignatureBytes = 32;  // SHA-256

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int DecodeChar(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

std::string Base64UrlEncode(std::string_view in) {
  std::string out;
  out.reserve((in.size() * 4 + 2) / 3);
  size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    uint32_t v = (uint32_t{static_cast<unsigned char>(in[i])} << 16) |
                 (uint32_t{static_cast<unsigned char>(in[i + 1])} << 8) |
                 uint32_t{static_cast<unsigned char>(in[i + 2])};
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(kAlphabet[(v >> 6) & 63]);
    out.push_back(kAlphabet[v & 63]);
  }
  size_t rest = in.size() - i;
  if (rest == 1) {
    uint32_t v = uint32_t{static_cast<unsigned char>(in[i])} << 16;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
  } else if (rest == 2) {
    uint32_t v = (uint32_t{static_cast<unsigned char>(in[i])} << 16) |
                 (uint32_t{static_cast<unsigned char>(in[i + 1])} << 8);
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(kAlphabet[(v >> 6) & 63]);
  }
  return out;
}

// Strict base64url: alphabet only, no padding, and the unused low bits of the last character
// must be zero, so each byte string has exactly one accepted encoding (no malleable signatures).
bool Base64UrlDecode(std::string_view in, std::string* out) {
  if (in.size() % 4 == 1) return false;
  out->clear();
  out->reserve(in.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int d = DecodeChar(c);
    if (d < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(d);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out->push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return (acc & ((1u << bits) - 1)) == 0;
}

bool HmacSha256(std::string_view key, std::string_view data,
                std::array<unsigned char, kSignatureBytes>* out) {
  // HMAC() treats a null key as "no key"; point at a byte so an empty key is an empty key.
  static constexpr unsigned char kEmpty = 0;
  const void* key_ptr = key.empty() ? static_cast<const void*>(&kEmpty) : key.data();
  unsigned int len = 0;
  unsigned char* r =
      HMAC(EVP_sha256(), key_ptr, static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), out->data(), &len);
  return r != nullptr && len == kSignatureBytes;
}

VerifyResult Fail(TokenError error, std::string message) {
  VerifyResult r;
  r.ok = false;
  r.error = error;
  r.message = std::move(message);
  return r;
}

// Reads a JSON integer claim into *out. False when the value is not an integer that fits int64.
bool ReadIntClaim(simdjson::dom::element value, int64_t* out) {
  if (!value.is_int64()) return false;
  *out = value.get_int64().value_unsafe();
  return true;
}

}  // namespace

VerifyResult VerifyHs256(std::string_view token, std::string_view secret, int64_t now_s) {
  if (token.size() > kMaxTokenBytes) {
    return Fail(TokenError::kMalformed,
                "token is longer than " + std::to_string(kMaxTokenBytes) + " bytes");
  }
  size_t dot1 = token.find('.');
  size_t dot2 = dot1 == std::string_view::npos ? dot1 : token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) {
    return Fail(TokenError::kMalformed, "token must have three dot-separated parts");
  }
  std::string_view header_b64 = token.substr(0, dot1);
  std::string_view payload_b64 = token.substr(dot1 + 1, dot2 - dot1 - 1);
  std::string_view signature_b64 = token.substr(dot2 + 1);
  std::string header;
  std::string payload;
  std::string signature;
  if (!Base64UrlDecode(header_b64, &header) || !Base64UrlDecode(payload_b64, &payload) ||
      !Base64UrlDecode(signature_b64, &signature)) {
    return Fail(TokenError::kMalformed, "token is not valid unpadded base64url");
  }

  simdjson::dom::parser parser;
  simdjson::dom::object header_obj;
  if (parser.parse(header.data(), header.size()).get_object().get(header_obj) !=
      simdjson::SUCCESS) {
    return Fail(TokenError::kMalformed, "token header is not a JSON object");
  }
  bool have_alg = false;
  bool have_typ = false;
  for (simdjson::dom::key_value_pair field : header_obj) {
    if (field.key == "alg") {
      std::string_view alg;
      if (have_alg || field.value.get(alg) != simdjson::SUCCESS) {
        return Fail(TokenError::kMalformed, "token header \"alg\" must be a single string");
      }
      if (alg != "HS256") {
        return Fail(TokenError::kUnsupported, "token algorithm \"" +
                                                  std::string(alg.substr(0, 32)) +
                                                  "\" is not supported; only HS256 is");
      }
      have_alg = true;
    } else if (field.key == "typ") {
      std::string_view typ;
      if (have_typ || field.value.get(typ) != simdjson::SUCCESS || typ != "JWT") {
        return Fail(TokenError::kMalformed, "token header \"typ\" must be \"JWT\" when present");
      }
      have_typ = true;
    } else if (field.key == "crit") {
      // RFC 7515 4.1.11: extensions the verifier does not understand must fail the token.
      return Fail(TokenError::kUnsupported, "token header \"crit\" extensions are not supported");
    }
  }
  if (!have_alg) return Fail(TokenError::kUnsupported, "token header has no \"alg\"");

  if (secret.empty()) {
    return Fail(TokenError::kBadSignature, "the server has no token secret configured");
  }
  std::array<unsigned char, kSignatureBytes> expected;
  if (!HmacSha256(secret, token.substr(0, dot2), &expected)) {
    return Fail(TokenError::kBadSignature, "token signature could not be computed");
  }
  if (signature.size() != kSignatureBytes ||
      CRYPTO_memcmp(expected.data(), signature.data(), kSignatureBytes) != 0) {
    return Fail(TokenError::kBadSignature, "token signature does not verify");
  }

  simdjson::dom::object claims_obj;
  if (parser.parse(payload.data(), payload.size()).get_object().get(claims_obj) !=
      simdjson::SUCCESS) {
    return Fail(TokenError::kMalformed, "token payload is not a JSON object");
  }
  bool have_sub = false;
  bool have_exp = false;
  bool have_nbf = false;
  int64_t exp = 0;
  int64_t nbf = 0;
  VerifyResult result;
  for (simdjson::dom::key_value_pair field : claims_obj) {
    // A repeated claim is refused: parsers disagree on which copy wins.
    if (field.key == "sub") {
      std::string_view sub;
      if (have_sub || field.value.get(sub) != simdjson::SUCCESS || !IsValidId(sub)) {
        return Fail(TokenError::kMalformed,
                    "token \"sub\" must be one user id (1-64 bytes of A-Z a-z 0-9 _ . @ -)");
      }
      result.claims.subject = std::string(sub);
      have_sub = true;
    } else if (field.key == "exp") {
      if (have_exp || !ReadIntClaim(field.value, &exp)) {
        return Fail(TokenError::kMalformed, "token \"exp\" must be one integer (seconds)");
      }
      have_exp = true;
    } else if (field.key == "nbf") {
      if (have_nbf || !ReadIntClaim(field.value, &nbf)) {
        return Fail(TokenError::kMalformed, "token \"nbf\" must be one integer (seconds)");
      }
      have_nbf = true;
    }
  }
  if (!have_sub) return Fail(TokenError::kMalformed, "token has no \"sub\" claim");
  if (have_exp && exp <= now_s) {
    return Fail(TokenError::kExpired,
                "token expired at " + std::to_string(exp) + " (now " + std::to_string(now_s) + ")");
  }
  if (have_nbf && nbf > now_s) {
    // Not an expiry: the token is simply not acceptable yet, like a bad signature.
    return Fail(TokenError::kBadSignature, "token is not valid before " + std::to_string(nbf) +
                                               " (now " + std::to_string(now_s) + ")");
  }
  result.ok = true;
  result.claims.expires_at = have_exp ? exp : 0;
  return result;
}

std::string SignHs256(std::string_view subject, int64_t expires_at_s, std::string_view secret) {
  std::string payload = "{\"sub\":";
  AppendJsonString(&payload, subject);
  if (expires_at_s != 0) payload += ",\"exp\":" + std::to_string(expires_at_s);
  payload.push_back('}');
  std::string token = Base64UrlEncode("{\"alg\":\"HS256\",\"typ\":\"JWT\"}");
  token += '.';
  token += Base64UrlEncode(payload);
  std::array<unsigned char, kSignatureBytes> mac{};
  HmacSha256(secret, token, &mac);
  token += '.';
  token += Base64UrlEncode(std::string_view(reinterpret_cast<const char*>(mac.data()), mac.size()));
  return token;
}

}  // namespace parley::auth

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "parley/auth/jwt.h"

using parley::auth::SignHs256;
using parley::auth::TokenError;
using parley::auth::VerifyHs256;
using parley::auth::VerifyResult;

namespace {

constexpr std::string_view kSecret = "parley-test-secret-0123456789";
constexpr int64_t kNow = 1800000000;

// Reference vectors computed outside Parley with Python's hmac/hashlib/base64 modules:
//   b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b'=').decode()
//   si = b64(header) + '.' + b64(payload)
//   si + '.' + b64(hmac.new(secret, si.encode(), hashlib.sha256).digest())
// with secret b'parley-test-secret-0123456789' and header b'{"alg":"HS256","typ":"JWT"}'.
constexpr std::string_view kAliceExp2e9 =  // payload {"sub":"alice","exp":2000000000}
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMDAwMH0."
    "XDm9k_APpZl0fLuu2Yf1hly7xTqZ1h9VjXznX4h_eYg";
constexpr std::string_view kBobNoExp =  // payload {"sub":"bob"}
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJib2IifQ."
    "Ym6XdLJgKbHrZb_8Qq9Ndy71VKhRIpAkigVyfwi_nmA";
// payload {"sub":"carol","exp":1700000000,"nbf":1600000000,"iat":1600000000,"iss":"test"}
constexpr std::string_view kCarolWithExtras =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjYXJvbCIsImV4cCI6MTcwMDAwMDAwMCwibmJmIjox"
    "NjAwMDAwMDAwLCJpYXQiOjE2MDAwMDAwMDAsImlzcyI6InRlc3QifQ."
    "r8tfv0yHSDsGXiOraSDu5EuGjqQuFjUEXUO7JcC_OXs";
// header {"alg":"none"}, payload {"sub":"alice"}, signed anyway with the secret.
constexpr std::string_view kAlgNone =
    "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.dKO6dO6irYppK2Tb1fj-aLM0fmgjcXwSeqfefD-wDr0";
// header {"alg":"HS512","typ":"JWT"}
constexpr std::string_view kAlgHs512 =
    "eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9."
    "m9PA2YycIy1tN9PKY3uTnEQo-tf80H_TDzP7dl9sRbw";
// header {"typ":"JWT"} (no alg)
constexpr std::string_view kAlgMissing =
    "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJhbGljZSJ9.aEt9ZKQTDZJ-UyRuc6GC3ePy6V85IeT0rGuEKmMOBhQ";
// header {"alg":"RS256"}
constexpr std::string_view kAlgRs256 =
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.H2Y8shnUa6bbNsoBcbeAUbMcAFCe5WMcTu-q1JdGr7k";
// header [1,2]
constexpr std::string_view kHeaderArray =
    "WzEsMl0.eyJzdWIiOiJhbGljZSJ9.oDJ8RXk-DoixEeduvHSiVf1B00XcrZzni__IjkGzm7k";
// header {"alg":"HS256","typ":"JWS"}
constexpr std::string_view kTypJws =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXUyJ9.eyJzdWIiOiJhbGljZSJ9."
    "o2J4yxlPQojOQOnRhakvEJa-KvRqBsu2fx4qHLaKHZg";

// The test's own encoder and signer, independent of jwt.cpp, to build tokens with arbitrary
// header and payload text. Checked against the reference vectors above.
std::string B64(std::string_view in) {
  static constexpr char kA[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  size_t bits = 0;
  uint32_t acc = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(kA[(acc >> bits) & 63]);
    }
  }
  if (bits > 0) out.push_back(kA[(acc << (6 - bits)) & 63]);
  return out;
}

std::string Mac(std::string_view secret, std::string_view data) {
  unsigned char out[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  return std::string(reinterpret_cast<char*>(out), len);
}

std::string Make(std::string_view header, std::string_view payload,
                 std::string_view secret = kSecret) {
  std::string si = B64(header) + "." + B64(payload);
  return si + "." + B64(Mac(secret, si));
}

std::string MakeClaims(std::string_view payload) {
  return Make(R"({"alg":"HS256","typ":"JWT"})", payload);
}

}  // namespace

TEST_CASE("jwt: the test signer reproduces the reference vectors", "[auth][jwt]") {
  CHECK(MakeClaims(R"({"sub":"alice","exp":2000000000})") == kAliceExp2e9);
  CHECK(MakeClaims(R"({"sub":"bob"})") == kBobNoExp);
}

TEST_CASE("jwt: SignHs256 matches the reference vectors byte for byte", "[auth][jwt]") {
  CHECK(SignHs256("alice", 2000000000, kSecret) == kAliceExp2e9);
  CHECK(SignHs256("bob", 0, kSecret) == kBobNoExp);
}

TEST_CASE("jwt: reference vectors verify", "[auth][jwt]") {
  VerifyResult r = VerifyHs256(kAliceExp2e9, kSecret, kNow);
  REQUIRE(r.ok);
  CHECK(r.claims.subject == "alice");
  CHECK(r.claims.expires_at == 2000000000);

  r = VerifyHs256(kBobNoExp, kSecret, kNow);
  REQUIRE(r.ok);
  CHECK(r.claims.subject == "bob");
  CHECK(r.claims.expires_at == 0);

  // Unknown claims (iat, iss) are ignored; nbf in the past is fine; exp is honoured.
  r = VerifyHs256(kCarolWithExtras, kSecret, 1650000000);
  REQUIRE(r.ok);
  CHECK(r.claims.subject == "carol");
  CHECK(r.claims.expires_at == 1700000000);
}

TEST_CASE("jwt: sign/verify round trip", "[auth][jwt]") {
  for (std::string user :
       {std::string("a"), std::string("alice"), std::string("x.y@z-w_9"), std::string(64, 'q')}) {
    for (int64_t exp : {int64_t{0}, kNow + 1, int64_t{4102444800}}) {
      std::string token = SignHs256(user, exp, kSecret);
      VerifyResult r = VerifyHs256(token, kSecret, kNow);
      INFO(token);
      REQUIRE(r.ok);
      CHECK(r.claims.subject == user);
      CHECK(r.claims.expires_at == exp);
      // The same token under another secret fails.
      VerifyResult other = VerifyHs256(token, "another-secret-0123456789", kNow);
      CHECK_FALSE(other.ok);
      CHECK(other.error == TokenError::kBadSignature);
    }
  }
}

TEST_CASE("jwt: SignHs256 escapes the subject as JSON", "[auth][jwt]") {
  // Not a valid id, so it does not verify; but the payload must be the JSON for that string.
  std::string token = SignHs256("a\"b\\c\n\x01", 0, kSecret);
  CHECK(token == MakeClaims(R"({"sub":"a\"b\\c\n\u0001"})"));
  VerifyResult r = VerifyHs256(token, kSecret, kNow);
  CHECK_FALSE(r.ok);
  CHECK(r.error == TokenError::kMalformed);
}

TEST_CASE("jwt: tampering is detected", "[auth][jwt]") {
  std::string good(kAliceExp2e9);
  SECTION("a flipped signature character") {
    std::string t = good;
    char& c = t[t.size() - 5];
    c = c == 'A' ? 'B' : 'A';
    VerifyResult r = VerifyHs256(t, kSecret, kNow);
    CHECK_FALSE(r.ok);
    CHECK(r.error == TokenError::kBadSignature);
    CHECK_FALSE(r.message.empty());
  }
  SECTION("another payload under the original signature") {
    size_t d1 = good.find('.');
    size_t d2 = good.rfind('.');
    std::string t =
        good.substr(0, d1) + "." + B64(R"({"sub":"mallory","exp":2000000000})") + good.substr(d2);
    VerifyResult r = VerifyHs256(t, kSecret, kNow);
    CHECK_FALSE(r.ok);
    CHECK(r.error == TokenError::kBadSignature);
  }
  SECTION("a truncated signature") {
    VerifyResult r = VerifyHs256(good.substr(0, good.size() - 3), kSecret, kNow);
    CHECK_FALSE(r.ok);
    CHECK(r.error == TokenError::kBadSignature);
  }
  SECTION("an empty signature") {
    VerifyResult r = VerifyHs256(good.substr(0, good.rfind('.') + 1), kSecret, kNow);
    CHECK_FALSE(r.ok);
    CHECK(r.error == TokenError::kBadSignature);
  }
  SECTION("a non-canonical last character of the signature") {
    // 32 bytes take 43 characters; the last one carries 2 unused bits, which must be zero.
    // Flipping only those bits keeps the decoded bytes and must still be refused.
    std::string t = good;
    char last = t.back();
    static constexpr std::string_view kA =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    t.back() = kA[kA.find(last) ^ 1];
    VerifyResult r = VerifyHs256(t, kSecret, kNow);
    CHECK_FALSE(r.ok);
    CHECK(r.error == TokenError::kMalformed);
  }
  SECTION("an empty secret never verifies, even a token made with one") {
    std::string t = Make(R"({"alg":"HS256"})", R"({"sub":"alice"})", "");
    VerifyResult r = VerifyHs256(t, "", kNow);
    CHECK_FALSE(r.ok);
    CHECK(r.error == TokenError::kBadSignature);
  }
}

TEST_CASE("jwt: algorithms other than HS256 are unsupported", "[auth][jwt]") {
  for (std::string_view t : {kAlgNone, kAlgHs512, kAlgMissing, kAlgRs256}) {
    INFO(t);
    VerifyResult r = VerifyHs256(t, kSecret, kNow);
    CHECK_FALSE(r.ok);
    CHECK(r.error == TokenError::kUnsupported);
  }
  // alg none with the customary empty signature.
  std::string none = B64(R"({"alg":"none","typ":"JWT"})") + "." + B64(R"({"sub":"alice"})") + ".";
  VerifyResult r = VerifyHs256(none, kSecret, kNow);
  CHECK(r.error == TokenError::kUnsupported);
  CHECK_FALSE(r.ok);
  // Case matters: "hs256" is not HS256.
  r = VerifyHs256(Make(R"({"alg":"hs256"})", R"({"sub":"alice"})"), kSecret, kNow);
  CHECK(r.error == TokenError::kUnsupported);
  // crit extensions cannot be honoured.
  r = VerifyHs256(Make(R"({"alg":"HS256","crit":["exp"]})", R"({"sub":"alice"})"), kSecret, kNow);
  CHECK(r.error == TokenError::kUnsupported);
  CHECK_FALSE(r.ok);
}

TEST_CASE("jwt: header rules", "[auth][jwt]") {
  VerifyResult r = VerifyHs256(kHeaderArray, kSecret, kNow);
  CHECK_FALSE(r.ok);
  CHECK(r.error == TokenError::kMalformed);

  r = VerifyHs256(kTypJws, kSecret, kNow);
  CHECK_FALSE(r.ok);
  CHECK(r.error == TokenError::kMalformed);

  // typ is optional.
  r = VerifyHs256(Make(R"({"alg":"HS256"})", R"({"sub":"alice"})"), kSecret, kNow);
  CHECK(r.ok);
  // alg must be a string, and only one.
  r = VerifyHs256(Make(R"({"alg":1})", R"({"sub":"alice"})"), kSecret, kNow);
  CHECK(r.error == TokenError::kMalformed);
  r = VerifyHs256(Make(R"({"alg":"HS256","alg":"none"})", R"({"sub":"alice"})"), kSecret, kNow);
  CHECK(r.error == TokenError::kMalformed);
  CHECK_FALSE(r.ok);
  // Not JSON at all.
  r = VerifyHs256(Make("alg=HS256", R"({"sub":"alice"})"), kSecret, kNow);
  CHECK(r.error == TokenError::kMalformed);
  CHECK_FALSE(r.ok);
}

TEST_CASE("jwt: claim rules", "[auth][jwt]") {
  struct Case {
    std::string payload;
    TokenError error;
  };
  std::vector<Case> cases = {
      {R"({"exp":2000000000})", TokenError::kMalformed},   // no sub
      {R"({"sub":""})", TokenError::kMalformed},           // empty id
      {R"({"sub":"a b"})", TokenError::kMalformed},        // not the id alphabet
      {R"({"sub":"caf\u00e9"})", TokenError::kMalformed},  // non-ASCII
      {"{\"sub\":\"" + std::string(65, 'x') + "\"}", TokenError::kMalformed},     // too long
      {R"({"sub":42})", TokenError::kMalformed},                                  // not a string
      {R"({"sub":["alice"]})", TokenError::kMalformed},                           // not a string
      {R"({"sub":"alice","sub":"bob"})", TokenError::kMalformed},                 // repeated
      {R"({"sub":"alice","exp":"2000000000"})", TokenError::kMalformed},          // exp as string
      {R"({"sub":"alice","exp":2000000000.5})", TokenError::kMalformed},          // exp not integer
      {R"({"sub":"alice","exp":1e10})", TokenError::kMalformed},                  // exp as float
      {R"({"sub":"alice","exp":18446744073709551615})", TokenError::kMalformed},  // > int64
      {R"({"sub":"alice","nbf":null})", TokenError::kMalformed},                  // nbf not integer
      {R"({"sub":"alice","exp":1800000000})", TokenError::kExpired},              // exp == now
      {R"({"sub":"alice","exp":1})", TokenError::kExpired},
      {R"({"sub":"alice","exp":-5})", TokenError::kExpired},
      {R"({"sub":"alice","nbf":1800000001})", TokenError::kBadSignature},  // not yet valid
      {R"(["alice"])", TokenError::kMalformed},                            // not an object
      {R"("alice")", TokenError::kMalformed},
      {R"({"sub":"alice")", TokenError::kMalformed},  // truncated JSON
      {"", TokenError::kMalformed},
  };
  for (const Case& c : cases) {
    INFO(c.payload);
    VerifyResult r = VerifyHs256(MakeClaims(c.payload), kSecret, kNow);
    CHECK_FALSE(r.ok);
    CHECK(r.error == c.error);
    CHECK_FALSE(r.message.empty());
  }
  // Boundaries that pass: exp one second ahead, nbf exactly now, large exp.
  for (std::string payload :
       {R"({"sub":"alice","exp":1800000001})", R"({"sub":"alice","nbf":1800000000})",
        R"({"sub":"alice","exp":9223372036854775807})"}) {
    INFO(payload);
    VerifyResult r = VerifyHs256(MakeClaims(payload), kSecret, kNow);
    CHECK(r.ok);
    CHECK(r.claims.subject == "alice");
  }
  // The expired message says so.
  VerifyResult r = VerifyHs256(kAliceExp2e9, kSecret, 2000000000);
  CHECK(r.error == TokenError::kExpired);
  CHECK_THAT(r.message, Catch::Contains("expired"));
}

TEST_CASE("jwt: encoding and shape", "[auth][jwt]") {
  std::string good(kBobNoExp);
  size_t d1 = good.find('.');
  size_t d2 = good.rfind('.');
  auto error_of = [](std::string_view t) {
    VerifyResult r = VerifyHs256(t, kSecret, kNow);
    CHECK_FALSE(r.ok);
    return r.error;
  };
  // Padding is refused in every segment.
  CHECK(error_of(good + "=") == TokenError::kMalformed);
  CHECK(error_of(good.substr(0, d2) + "==" + good.substr(d2)) == TokenError::kMalformed);
  CHECK(error_of(good.substr(0, d1) + "=" + good.substr(d1)) == TokenError::kMalformed);
  // Standard base64 characters and other non-alphabet bytes.
  for (char bad : {'+', '/', ' ', '\n', '\0', '\xff', '%'}) {
    std::string t = good;
    t[d1 + 3] = bad;
    INFO(static_cast<int>(bad));
    CHECK(error_of(t) == TokenError::kMalformed);
  }
  // A segment of length 1 mod 4 cannot be base64.
  CHECK(error_of("eyJhbGciOiJIUzI1NiJ9.e.AAAA") == TokenError::kMalformed);
  // Wrong segment counts.
  CHECK(error_of("") == TokenError::kMalformed);
  CHECK(error_of(".") == TokenError::kMalformed);
  CHECK(error_of("..") == TokenError::kMalformed);
  CHECK(error_of(good.substr(0, d2)) == TokenError::kMalformed);
  CHECK(error_of(good + ".") == TokenError::kMalformed);
  CHECK(error_of(good + "." + good.substr(d2 + 1)) == TokenError::kMalformed);
  CHECK(error_of("abc") == TokenError::kMalformed);
}

TEST_CASE("jwt: tokens over 8 KiB are refused before any work", "[auth][jwt]") {
  // A correctly signed token whose payload pushes it just past 8192 bytes.
  std::string filler(6200, 'z');
  std::string big = MakeClaims(R"({"sub":"alice","pad":")" + filler + "\"}");
  REQUIRE(big.size() > 8192);
  VerifyResult r = VerifyHs256(big, kSecret, kNow);
  CHECK_FALSE(r.ok);
  CHECK(r.error == TokenError::kMalformed);
  // Just under the cap, the same construction verifies.
  std::string small = MakeClaims(R"({"sub":"alice","pad":")" + std::string(5900, 'z') + "\"}");
  REQUIRE(small.size() <= 8192);
  CHECK(VerifyHs256(small, kSecret, kNow).ok);
}

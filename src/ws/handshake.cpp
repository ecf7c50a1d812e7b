#include "parley/ws/handshake.h"

#include <openssl/evp.h>

#include "parley/http/response.h"

namespace parley::ws {
namespace {

constexpr std::string_view kGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

bool IsBase64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/';
}

// 16 bytes encode to exactly 22 base64 characters plus "==".
bool IsKey16(std::string_view key) {
  if (key.size() != 24 || key.substr(22) != "==") return false;
  for (size_t i = 0; i < 22; ++i) {
    if (!IsBase64Char(key[i])) return false;
  }
  return true;
}

// Subprotocol names are compared exactly (the client checks the echoed name byte for byte),
// unlike the case-insensitive tokens of Connection/Upgrade.
bool OffersSubprotocol(const http::Request& req, std::string_view name) {
  for (const http::Header& h : req.headers) {
    if (!http::EqualsIgnoreCase(h.name, "Sec-WebSocket-Protocol")) continue;
    std::string_view rest = h.value;
    while (true) {
      const size_t comma = rest.find(',');
      std::string_view item = rest.substr(0, comma);
      while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) item.remove_prefix(1);
      while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) item.remove_suffix(1);
      if (item == name) return true;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return false;
}

}  // namespace

std::string AcceptKey(std::string_view sec_websocket_key) {
  std::string input;
  input.reserve(sec_websocket_key.size() + kGuid.size());
  input.append(sec_websocket_key).append(kGuid);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_Digest(input.data(), input.size(), digest, &digest_len, EVP_sha1(), nullptr) != 1) {
    return {};  // only on allocation failure inside OpenSSL; the handshake then fails
  }
  unsigned char b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
  const int n = EVP_EncodeBlock(b64, digest, static_cast<int>(digest_len));
  return std::string(reinterpret_cast<const char*>(b64), static_cast<size_t>(n));
}

UpgradeDecision CheckUpgrade(const http::Request& req) {
  UpgradeDecision d;
  auto reject = [&d](int status, std::string_view reason) {
    d.http_status = status;
    d.error_reason = reason;
    return d;
  };
  if (req.method != "GET") return reject(400, "WebSocket upgrade needs GET");
  if (req.version_minor < 1) return reject(400, "WebSocket upgrade needs HTTP/1.1");
  if (!req.HasToken("Upgrade", "websocket")) return reject(400, "missing Upgrade: websocket");
  if (!req.HasToken("Connection", "upgrade")) return reject(400, "missing Connection: upgrade");
  if (req.Find("Sec-WebSocket-Version") != "13") {
    return reject(426, "unsupported Sec-WebSocket-Version");
  }
  const std::string_view key = req.Find("Sec-WebSocket-Key");
  if (key.empty()) return reject(400, "missing Sec-WebSocket-Key");
  if (!IsKey16(key)) return reject(400, "invalid Sec-WebSocket-Key");
  d.http_status = 101;
  d.select_subprotocol = OffersSubprotocol(req, kSubprotocol);
  return d;
}

void AppendUpgradeResponse(std::string* out, std::string_view sec_websocket_key,
                           bool select_subprotocol) {
  out->append(
      "HTTP/1.1 101 Switching Protocols\r\n"
      "Upgrade: websocket\r\n"
      "Connection: Upgrade\r\n"
      "Sec-WebSocket-Accept: ");
  out->append(AcceptKey(sec_websocket_key)).append("\r\n");
  if (select_subprotocol)
    out->append("Sec-WebSocket-Protocol: ").append(kSubprotocol).append("\r\n");
  out->append("\r\n");
}

void AppendVersionRequired(std::string* out) {
  // The connection is closed after a failed handshake: the client will retry on a new one.
  http::AppendResponse(out, 426, "text/plain", "unsupported WebSocket version\n",
                       /*keep_alive=*/false, "Sec-WebSocket-Version: 13\r\n");
}

}  // namespace parley::ws

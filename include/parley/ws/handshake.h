// RFC 6455 opening handshake, server side.
#pragma once

#include <string>
#include <string_view>

#include "parley/http/request_parser.h"

namespace parley::ws {

inline constexpr std::string_view kSubprotocol = "parley.v1";

// base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")).
std::string AcceptKey(std::string_view sec_websocket_key);

struct UpgradeDecision {
  int http_status = 0;              // 101 on success, else the error status to answer with
  std::string_view error_reason;    // for error bodies
  bool select_subprotocol = false;  // the client offered parley.v1
};

// Validates an upgrade request: GET, Upgrade: websocket, Connection: upgrade, a
// Sec-WebSocket-Key that base64-decodes to 16 bytes (else 400), Sec-WebSocket-Version 13
// (else 426). Missing key is 400.
UpgradeDecision CheckUpgrade(const http::Request& req);

// Appends the 101 Switching Protocols response (with Sec-WebSocket-Protocol when selected).
void AppendUpgradeResponse(std::string* out, std::string_view sec_websocket_key,
                           bool select_subprotocol);

// Appends the 426 answer carrying "Sec-WebSocket-Version: 13".
void AppendVersionRequired(std::string* out);

}  // namespace parley::ws

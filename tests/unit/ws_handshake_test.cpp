#include <catch2/catch.hpp>
#include <string>

#include "parley/http/request_parser.h"
#include "parley/ws/handshake.h"

using namespace parley;

namespace {

std::string Upgrade(std::string_view extra,
                    std::string_view key_line = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                    std::string_view version_line = "Sec-WebSocket-Version: 13\r\n",
                    std::string_view method = "GET") {
  return std::string(method) + " /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n" +
         "Connection: Upgrade\r\n" + std::string(key_line) + std::string(version_line) +
         std::string(extra) + "\r\n";
}

ws::UpgradeDecision Check(const std::string& head) {
  http::Request req;
  const http::ParseOutcome o = http::RequestParser().Parse(head, &req);
  REQUIRE(o.status == http::ParseStatus::kComplete);
  return ws::CheckUpgrade(req);
}

}  // namespace

TEST_CASE("AcceptKey follows the RFC 6455 example", "[ws][handshake]") {
  // RFC 6455 section 1.3 (cross-checked with `openssl sha1 -binary | base64`).
  CHECK(ws::AcceptKey("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  CHECK(ws::AcceptKey("x3JJHMbDL1EzLkh9GBhXDw==") == "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
}

TEST_CASE("CheckUpgrade accepts a valid upgrade and selects parley.v1", "[ws][handshake]") {
  ws::UpgradeDecision d = Check(Upgrade(""));
  CHECK(d.http_status == 101);
  CHECK_FALSE(d.select_subprotocol);

  d = Check(Upgrade("Sec-WebSocket-Protocol: chat, parley.v1\r\n"));
  CHECK(d.http_status == 101);
  CHECK(d.select_subprotocol);
  d = Check(Upgrade("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: parley.v1 \r\n"));
  CHECK(d.select_subprotocol);
  d = Check(Upgrade("Sec-WebSocket-Protocol: chat, parley.v2\r\n"));
  CHECK(d.http_status == 101);
  CHECK_FALSE(d.select_subprotocol);
  // Subprotocol names are exact.
  CHECK_FALSE(Check(Upgrade("Sec-WebSocket-Protocol: PARLEY.V1\r\n")).select_subprotocol);
  CHECK_FALSE(Check(Upgrade("Sec-WebSocket-Protocol: parley.v1x\r\n")).select_subprotocol);

  // Connection/Upgrade tokens are case-insensitive and may be in lists.
  CHECK(Check("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\n"
              "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n"
              "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\r\n")
            .http_status == 101);
}

TEST_CASE("CheckUpgrade rejects bad upgrades with 400 or 426", "[ws][handshake]") {
  CHECK(Check(Upgrade("", "")).http_status == 400);  // missing key
  CHECK(Check(Upgrade("", "Sec-WebSocket-Key: short==\r\n")).http_status == 400);
  CHECK(Check(Upgrade("", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=\r\n")).http_status == 400);
  CHECK(Check(Upgrade("", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n")).http_status == 400);
  CHECK(Check(Upgrade("", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ*==\r\n")).http_status == 400);
  // 20 bytes of key material encode to 28 characters.
  CHECK(Check(Upgrade("", "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEBESExQ=\r\n")).http_status ==
        400);

  CHECK(Check(Upgrade("", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                      "Sec-WebSocket-Version: 8\r\n"))
            .http_status == 426);
  CHECK(Check(Upgrade("", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")).http_status ==
        426);

  CHECK(Check(Upgrade("", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                      "Sec-WebSocket-Version: 13\r\n", "POST"))
            .http_status == 400);
  CHECK(Check("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            .http_status == 400);  // no Upgrade header
  CHECK(Check("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
              "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            .http_status == 400);  // Connection lacks upgrade
  CHECK(Check("GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n"
              "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            .http_status == 400);
}

TEST_CASE("upgrade responses", "[ws][handshake]") {
  std::string out;
  ws::AppendUpgradeResponse(&out, "dGhlIHNhbXBsZSBub25jZQ==", true);
  CHECK(out ==
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        "Sec-WebSocket-Protocol: parley.v1\r\n\r\n");
  out.clear();
  ws::AppendUpgradeResponse(&out, "dGhlIHNhbXBsZSBub25jZQ==", false);
  CHECK(out.find("Sec-WebSocket-Protocol") == std::string::npos);
  CHECK(out.size() > 4);
  CHECK(out.substr(out.size() - 4) == "\r\n\r\n");

  out.clear();
  ws::AppendVersionRequired(&out);
  CHECK(out.rfind("HTTP/1.1 426 Upgrade Required\r\n", 0) == 0);
  CHECK(out.find("\r\nSec-WebSocket-Version: 13\r\n") != std::string::npos);
  // The answer parses as a complete response head with a body of the declared length.
  const size_t head_end = out.find("\r\n\r\n");
  REQUIRE(head_end != std::string::npos);
  const size_t cl = out.find("Content-Length: ");
  REQUIRE(cl != std::string::npos);
  CHECK(std::stoul(out.substr(cl + 16)) == out.size() - head_end - 4);
}

#include <catch2/catch.hpp>
#include <string>

#include "parley/http/request_parser.h"
#include "parley/http/response.h"

using namespace parley::http;

namespace {

ParseOutcome ParseWith(const RequestParser& p, std::string_view buf, Request* req) {
  return p.Parse(buf, req);
}

ParseOutcome Parse(std::string_view buf, Request* req) {
  return ParseWith(RequestParser(), buf, req);
}

int ErrorStatus(std::string_view buf, const RequestParser& p = RequestParser()) {
  Request req;
  const ParseOutcome o = p.Parse(buf, &req);
  return o.status == ParseStatus::kError ? o.error_status : 0;
}

const std::string kBrowserUpgrade =
    "GET /ws?token=abc HTTP/1.1\r\n"
    "Host: chat.example.org:8080\r\n"
    "Connection: keep-alive, Upgrade\r\n"
    "Pragma: no-cache\r\n"
    "Cache-Control: no-cache\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\n"
    "Upgrade: websocket\r\n"
    "Origin: https://chat.example.org\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    "Sec-WebSocket-Protocol: chat, parley.v1\r\n"
    "\r\n";

}  // namespace

TEST_CASE("a valid GET with headers parses into views of the buffer", "[http]") {
  const std::string buf = kBrowserUpgrade + "NEXT REQUEST";
  Request req;
  const ParseOutcome o = Parse(buf, &req);
  REQUIRE(o.status == ParseStatus::kComplete);
  CHECK(o.consumed == kBrowserUpgrade.size());
  CHECK(req.method == "GET");
  CHECK(req.target == "/ws?token=abc");
  CHECK(req.path == "/ws");
  CHECK(req.version_minor == 1);
  CHECK(req.headers.size() == 13);
  CHECK(req.headers[0].name == "Host");
  CHECK(req.headers[0].value == "chat.example.org:8080");
  CHECK(req.content_length == 0);
  CHECK(req.keep_alive);
  // Views point into the buffer, not into copies.
  CHECK(req.method.data() == buf.data());
  CHECK(req.headers[12].value.data() >= buf.data());
  CHECK(req.headers[12].value.data() < buf.data() + o.consumed);
}

TEST_CASE("header lookup is case-insensitive and values are trimmed", "[http]") {
  Request req;
  REQUIRE(Parse("POST /api/v1/send HTTP/1.1\r\nhOsT: x\r\nContent-LENGTH: \t 42 \t\r\n"
                "X-Empty:\r\nX-Dup: first\r\nx-dup: second\r\n\r\n",
                &req)
              .status == ParseStatus::kComplete);
  CHECK(req.Find("host") == "x");
  CHECK(req.Find("HOST") == "x");
  CHECK(req.Find("content-length") == "42");
  CHECK(req.content_length == 42);
  CHECK(req.Find("X-EMPTY").empty());
  CHECK(req.Find("X-Dup") == "first");
  CHECK(req.Find("Missing").empty());
  CHECK(req.Find("Hos").empty());
}

TEST_CASE("HasToken reads comma-separated lists across header lines", "[http]") {
  Request req;
  REQUIRE(Parse(kBrowserUpgrade, &req).status == ParseStatus::kComplete);
  CHECK(req.HasToken("Connection", "upgrade"));
  CHECK(req.HasToken("connection", "Keep-Alive"));
  CHECK_FALSE(req.HasToken("Connection", "close"));
  CHECK_FALSE(req.HasToken("Connection", "keep"));
  CHECK(req.HasToken("Upgrade", "WebSocket"));
  CHECK(req.HasToken("Sec-WebSocket-Protocol", "parley.v1"));
  CHECK_FALSE(req.HasToken("X-Absent", "a"));

  REQUIRE(
      Parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: foo ,  bar,,\r\nConnection: Upgrade\r\n\r\n",
            &req)
          .status == ParseStatus::kComplete);
  CHECK(req.HasToken("Connection", "bar"));
  CHECK(req.HasToken("Connection", "upgrade"));
  CHECK_FALSE(req.HasToken("Connection", "foo ,  bar"));
}

TEST_CASE("keep-alive defaults differ between HTTP/1.0 and HTTP/1.1", "[http]") {
  struct Case {
    std::string head;
    bool keep_alive;
  };
  const Case cases[] = {
      {"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false},
      {"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, CLOSE\r\n\r\n", false},
      {"GET / HTTP/1.0\r\n\r\n", false},
      {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true},
      {"GET / HTTP/1.0\r\nConnection: close\r\n\r\n", false},
  };
  for (const Case& c : cases) {
    INFO(c.head);
    Request req;
    REQUIRE(Parse(c.head, &req).status == ParseStatus::kComplete);
    CHECK(req.keep_alive == c.keep_alive);
  }
  Request req;
  REQUIRE(Parse("GET / HTTP/1.0\r\n\r\n", &req).status == ParseStatus::kComplete);
  CHECK(req.version_minor == 0);  // Host is optional in 1.0
}

TEST_CASE("malformed requests are 400", "[http]") {
  const char* bad[] = {
      // request line
      "GET\r\nHost: h\r\n\r\n",
      "GET /\r\nHost: h\r\n\r\n",
      "GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
      " GET / HTTP/1.1\r\nHost: h\r\n\r\n",
      "G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
      "GET / HTTP/1.1x\r\nHost: h\r\n\r\n",
      "GET / http/1.1\r\nHost: h\r\n\r\n",
      "GET / HTTP/1.10\r\nHost: h\r\n\r\n",
      "GET / HTTP/1\r\nHost: h\r\n\r\n",
      // Host
      "GET / HTTP/1.1\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
      // header syntax
      "GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nName : x\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\n: x\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01z\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\rz\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n",
      // obs-fold
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n  continued\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tcontinued\r\n\r\n",
      // bare LF
      "GET / HTTP/1.1\nHost: h\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\n\r\n",
      "GET / HTTP/1.1\r\nHost: h\r\n\n",
      // Content-Length and Transfer-Encoding
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
      "POST / HTTP/1.1\r\nHost: h\r\ntransfer-encoding: identity\r\n\r\n",
  };
  for (const char* head : bad) {
    INFO(head);
    CHECK(ErrorStatus(head) == 400);
  }
  Request req;
  const ParseOutcome o =
      Parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\n", &req);
  REQUIRE(o.status == ParseStatus::kComplete);
  CHECK(req.content_length == 18446744073709551615ull);
}

TEST_CASE("unsupported versions are 505", "[http]") {
  for (const char* v : {"HTTP/2.0", "HTTP/1.2", "HTTP/1.9", "HTTP/0.9", "HTTP/3.0", "HTTP/9.1"}) {
    INFO(v);
    CHECK(ErrorStatus(std::string("GET / ") + v + "\r\nHost: h\r\n\r\n") == 505);
    // The request line alone decides: no need to wait for the headers.
    CHECK(ErrorStatus(std::string("GET / ") + v + "\r\n") == 505);
  }
}

TEST_CASE("heads over the size or header-count limit are 431", "[http]") {
  const RequestParser p(/*max_head_bytes=*/256, /*max_headers=*/4);
  std::string head = "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: " + std::string(240, 'p') + "\r\n\r\n";
  REQUIRE(head.size() > 256);
  CHECK(ErrorStatus(head, p) == 431);
  // Without the terminator it is 431 as soon as the limit is reached, not later.
  CHECK(ErrorStatus(head.substr(0, 256), p) == 431);
  CHECK(ErrorStatus(head.substr(0, 255), p) == 0);
  // A head of exactly the limit is accepted.
  std::string exact = "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ";
  exact += std::string(256 - exact.size() - 4, 'p') + "\r\n\r\n";
  REQUIRE(exact.size() == 256);
  Request req;
  CHECK(p.Parse(exact + "body", &req).status == ParseStatus::kComplete);
  CHECK(ErrorStatus("GET / HTTP/1.1\r\nHost: h\r\nX-Pad: " + std::string(256, 'p'), p) == 431);

  CHECK(ErrorStatus("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", p) == 0);
  CHECK(ErrorStatus("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", p) == 431);
}

TEST_CASE("every prefix of a valid head is incomplete", "[http]") {
  for (const std::string& head :
       {kBrowserUpgrade, std::string("\r\n\r\nGET / HTTP/1.0\r\n\r\n"),
        std::string("POST /api/v1/send HTTP/1.1\r\nHost: h\r\nContent-Length: 7\r\n\r\n")}) {
    Request req;
    for (size_t n = 0; n < head.size(); ++n) {
      INFO("prefix " << n);
      const ParseOutcome o = Parse(std::string_view(head).substr(0, n), &req);
      REQUIRE(o.status == ParseStatus::kIncomplete);
    }
    const ParseOutcome o = Parse(head, &req);
    REQUIRE(o.status == ParseStatus::kComplete);
    CHECK(o.consumed == head.size());
  }
}

TEST_CASE("a prefix of an invalid head is incomplete or the same error", "[http]") {
  const std::string head = "GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\nMore: y\r\n\r\n";
  const size_t bad_line_end = head.find("x\r\n") + 3;
  for (size_t n = 0; n <= head.size(); ++n) {
    INFO("prefix " << n);
    CHECK(ErrorStatus(std::string_view(head).substr(0, n)) == (n >= bad_line_end ? 400 : 0));
  }
}

TEST_CASE("absolute-form targets yield the path", "[http]") {
  Request req;
  REQUIRE(Parse("GET http://h:1/ws?x=1 HTTP/1.1\r\nHost: h:1\r\n\r\n", &req).status ==
          ParseStatus::kComplete);
  CHECK(req.path == "/ws");
  REQUIRE(Parse("GET HTTP://h HTTP/1.1\r\nHost: h\r\n\r\n", &req).status == ParseStatus::kComplete);
  CHECK(req.path == "/");
  REQUIRE(Parse("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", &req).status == ParseStatus::kComplete);
  CHECK(req.path == "*");
}

TEST_CASE("responses carry status, length and connection handling", "[http]") {
  std::string out;
  AppendResponse(&out, 200, "application/json", "{\"status\":\"ok\"}", true);
  CHECK(out ==
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
        "{\"status\":\"ok\"}");
  out.clear();
  AppendResponse(&out, 404, "text/plain", "nope\n", false, "X-A: 1\r\nX-B: 2\r\n");
  CHECK(out ==
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
        "Connection: close\r\nX-A: 1\r\nX-B: 2\r\n\r\nnope\n");
  out.clear();
  AppendResponse(&out, 204, "", "", true);
  CHECK(out == "HTTP/1.1 204 No Content\r\n\r\n");
  CHECK(ReasonPhrase(431) == "Request Header Fields Too Large");
  CHECK(ReasonPhrase(505) == "HTTP Version Not Supported");
  CHECK(ReasonPhrase(426) == "Upgrade Required");
}

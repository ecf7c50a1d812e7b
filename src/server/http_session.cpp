#include "parley/server/http_session.h"

#include "parley/http/response.h"
#include "parley/server/echo_endpoint.h"
#include "parley/server/web_assets.h"
#include "parley/ws/handshake.h"

namespace parley::server {

namespace {
// Request bodies are only used by the admin API; anything larger is refused.
constexpr uint64_t kMaxRequestBody = 1 << 20;
constexpr std::string_view kJson = "application/json";
constexpr std::string_view kText = "text/plain; charset=utf-8";
}  // namespace

HttpSession::HttpSession(CoreContext& ctx, const HttpRoutes& routes, net::Connection& conn)
    : ctx_(ctx),
      routes_(routes),
      conn_(conn),
      parser_(ctx.config->limits.max_header_bytes) {
  ctx_.metrics->Add(ctx_.metrics->connections, 1);
  conn_.SetDeadline(ctx_.reactor->now_ms() + ctx_.config->limits.handshake_timeout_ms);
}

HttpSession::~HttpSession() = default;

size_t HttpSession::OnData(net::Connection& conn, std::span<char> data) {
  size_t used = 0;
  while (used < data.size() && !conn_.closing() && conn_.handler() == this) {
    std::string_view buf(data.data() + used, data.size() - used);
    http::Request req;
    http::ParseOutcome outcome = parser_.Parse(buf, &req);
    if (outcome.status == http::ParseStatus::kIncomplete) break;
    if (outcome.status == http::ParseStatus::kError) {
      keep_alive_ = false;
      Respond(outcome.error_status, kText, outcome.error_reason);
      return data.size();
    }
    if (req.content_length > kMaxRequestBody) {
      keep_alive_ = false;
      Respond(413, kText, "request body too large");
      return data.size();
    }
    if (buf.size() - outcome.consumed < req.content_length) break;  // body not complete
    ctx_.metrics->Add(ctx_.metrics->http_requests);
    keep_alive_ = req.keep_alive;
    std::string_view body = buf.substr(outcome.consumed, req.content_length);
    used += outcome.consumed + req.content_length;
    Route(req, body);
    if (conn_.handler() == this && !conn_.closing()) {
      // Next request on a keep-alive connection gets a fresh head timeout.
      conn_.SetDeadline(ctx_.reactor->now_ms() + ctx_.config->limits.handshake_timeout_ms);
    }
  }
  return used;
}

void HttpSession::OnClosed(net::Connection&) { ctx_.metrics->Add(ctx_.metrics->connections, -1); }

void HttpSession::OnDeadline(net::Connection&, int64_t) {
  keep_alive_ = false;
  Respond(408, kText, "request head not received in time");
}

void HttpSession::Respond(int status, std::string_view content_type, std::string_view body,
                          std::string_view extra_headers) {
  http::AppendResponse(&conn_.out(), status, content_type, body, keep_alive_, extra_headers);
  conn_.Flush();
  if (!keep_alive_) conn_.CloseAfterFlush();
}

void HttpSession::Route(const http::Request& req, std::string_view body) {
  const std::string_view path = req.path;
  const bool get = req.method == "GET" || req.method == "HEAD";
  if (path == "/ws" || (path == "/echo" && ctx_.config->debug.echo_endpoint)) {
    if (req.method != "GET") {
      Respond(405, kText, "WebSocket upgrades use GET", "Allow: GET\r\n");
      return;
    }
    if (path == "/ws") {
      Upgrade(req, routes_.protocol_endpoint(ctx_));
    } else {
      Upgrade(req, std::make_unique<EchoEndpoint>());
    }
    return;
  }
  if (path == "/healthz") {
    if (!get) return Respond(405, kText, "use GET", "Allow: GET, HEAD\r\n");
    return Respond(200, kJson, R"({"status":"ok"})");
  }
  if (path == "/metrics") {
    if (!get) return Respond(405, kText, "use GET", "Allow: GET, HEAD\r\n");
    return Respond(200, "text/plain; version=0.0.4; charset=utf-8", routes_.metrics());
  }
  if (const WebAsset* asset = FindWebAsset(path)) {
    if (!get) return Respond(405, kText, "use GET", "Allow: GET, HEAD\r\n");
    return Respond(200, asset->content_type, asset->body, "Cache-Control: no-cache\r\n");
  }
  Respond(404, kText, "not found");
}

void HttpSession::Upgrade(const http::Request& req, std::unique_ptr<WsEndpoint> endpoint) {
  ws::UpgradeDecision decision = ws::CheckUpgrade(req);
  if (decision.http_status == 426) {
    keep_alive_ = false;
    ws::AppendVersionRequired(&conn_.out());
    conn_.Flush();
    conn_.CloseAfterFlush();
    return;
  }
  if (decision.http_status != 101) {
    keep_alive_ = false;
    Respond(decision.http_status, kText, decision.error_reason);
    return;
  }
  ws::AppendUpgradeResponse(&conn_.out(), req.Find("Sec-WebSocket-Key"),
                            decision.select_subprotocol);
  conn_.Flush();
  conn_.SetDeadline(0);
  conn_.SetHandler(std::make_unique<WsSession>(ctx_, conn_, std::move(endpoint)));
}

}  // namespace parley::server

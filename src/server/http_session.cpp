#include "parley/server/http_session.h"

#include <openssl/crypto.h>
#include <simdjson.h>

#include "absl/strings/match.h"
#include "parley/chat/errors.h"
#include "parley/http/response.h"
#include "parley/proto/frames.h"
#include "parley/proto/request.h"
#include "parley/server/echo_endpoint.h"
#include "parley/server/web_assets.h"
#include "parley/util/ids.h"
#include "parley/util/json_writer.h"
#include "parley/util/strings.h"
#include "parley/ws/handshake.h"

namespace parley::server {

namespace {
// Request bodies are only used by the admin API; anything larger is refused.
constexpr uint64_t kMaxRequestBody = 1 << 20;
constexpr std::string_view kJson = "application/json";
constexpr std::string_view kText = "text/plain; charset=utf-8";
}  // namespace

HttpSession::HttpSession(CoreContext& ctx, const HttpRoutes& routes, net::Connection& conn)
    : ctx_(ctx), routes_(routes), conn_(conn), parser_(ctx.config->limits.max_header_bytes) {
  ctx_.metrics->Add(ctx_.metrics->connections, 1);
  conn_.SetDeadline(ctx_.reactor->now_ms() + ctx_.config->limits.handshake_timeout_ms);
}

HttpSession::~HttpSession() {
  *alive_ = false;
  ctx_.metrics->Add(ctx_.metrics->connections, -1);
}

size_t HttpSession::OnData(net::Connection& conn, std::span<char> data) {
  size_t used = 0;
  while (used < data.size() && !conn_.closing() && conn_.handler() == this && !awaiting_) {
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

void HttpSession::OnDeadline(net::Connection&, int64_t) {
  if (awaiting_) return;  // the server is working on the answer
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
  if (path == "/api/v1/send") {
    if (req.method != "POST") return Respond(405, kText, "use POST", "Allow: POST\r\n");
    return AdminSend(req, body);
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

namespace {
int HttpStatusFor(const absl::Status& st) {
  switch (st.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAlreadyExists:
      return 409;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
      return 503;
    default:
      return 500;
  }
}

std::string ErrorBody(std::string_view code, std::string_view message) {
  std::string out;
  JsonObjectWriter(&out).Str("code", code).Str("message", message).Close();
  return out;
}

}  // namespace

void HttpSession::AdminSend(const http::Request& req, std::string_view body) {
  // One request per connection for the admin API: the answer is asynchronous.
  keep_alive_ = false;
  const std::string& token = ctx_.config->auth.admin_token;
  std::string_view auth = req.Find("Authorization");
  constexpr std::string_view kBearer = "Bearer ";
  const bool authorized =
      !token.empty() && auth.starts_with(kBearer) && auth.size() - kBearer.size() == token.size() &&
      CRYPTO_memcmp(auth.data() + kBearer.size(), token.data(), token.size()) == 0;
  if (!authorized) {
    return Respond(401, kJson,
                   ErrorBody("unauthenticated", "a valid admin bearer token is required"),
                   "WWW-Authenticate: Bearer\r\n");
  }
  // The body is a send request plus "from", its "op" optional: the protocol's own decoder
  // reads it, with the protocol's rules and limits.
  simdjson::padded_string padded(body);
  proto::Request send;
  proto::DecodeError err;
  proto::DecodeLimits limits;
  limits.max_body_bytes = ctx_.config->limits.max_body_bytes;
  limits.max_meta_bytes = ctx_.config->limits.max_meta_bytes;
  if (!proto::DecodeAdminSend(ctx_.json_parser, padded, limits, &send, &err)) {
    return Respond(400, kJson, ErrorBody(err.code, err.message));
  }
  chat::SendArgs args;
  args.to = send.to;
  args.group = send.group;
  args.cmid = send.cmid;
  args.body = send.body;
  args.meta_json = send.meta_json;
  args.admin = true;
  args.from = send.from;
  awaiting_ = true;
  ctx_.engine->Send(std::move(args), ctx_.core, [alive = alive_, this](chat::SendResult r) {
    if (!*alive) return;  // the client went away
    awaiting_ = false;
    if (!r.status.ok()) {
      return Respond(HttpStatusFor(r.status), kJson,
                     ErrorBody(chat::ProtocolCode(r.status), ToStd(r.status.message())));
    }
    std::string out;
    JsonObjectWriter(&out)
        .Str("op", "ok")
        .Str("conv", r.conv)
        .Int("seq", r.seq)
        .Int("ts", r.ts)
        .Bool("dup", r.dup)
        .Close();
    Respond(200, kJson, out);
  });
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

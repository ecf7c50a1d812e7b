// The HTTP/1.1 side of a connection: health, metrics, the built-in page, and the WebSocket
// upgrade at /ws (and /echo when debug.echo_endpoint is on).
//
// A client must complete its request head within limits.handshake_timeout_ms (slowloris
// defence); after a response on a keep-alive connection the timer starts again.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "parley/http/request_parser.h"
#include "parley/net/reactor.h"
#include "parley/server/core_context.h"
#include "parley/server/ws_session.h"

namespace parley::server {

// What the HTTP layer needs from the rest of the server.
struct HttpRoutes {
  // Creates the endpoint behind /ws (the JSON protocol).
  std::function<std::unique_ptr<WsEndpoint>(CoreContext&)> protocol_endpoint;
  // Renders /metrics.
  std::function<std::string()> metrics;
};

class HttpSession final : public net::ConnectionHandler {
 public:
  HttpSession(CoreContext& ctx, const HttpRoutes& routes, net::Connection& conn);
  ~HttpSession() override;

 private:
  size_t OnData(net::Connection& conn, std::span<char> data) override;
  void OnDeadline(net::Connection& conn, int64_t now_ms) override;

  // Answers one request; returns false when the connection must not read further.
  void Route(const http::Request& req, std::string_view body);
  void Respond(int status, std::string_view content_type, std::string_view body,
               std::string_view extra_headers = {});
  void Upgrade(const http::Request& req, std::unique_ptr<WsEndpoint> endpoint);
  // POST /api/v1/send: an integrator's back end posts a message as any user.
  void AdminSend(const http::Request& req, std::string_view body);

  CoreContext& ctx_;
  const HttpRoutes& routes_;
  net::Connection& conn_;
  http::RequestParser parser_;
  bool keep_alive_ = true;
  bool awaiting_ = false;  // an asynchronous answer is pending
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace parley::server

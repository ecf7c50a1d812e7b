// /echo: a plain RFC 6455 echo endpoint for conformance testing (debug.echo_endpoint).
#pragma once

#include "parley/server/ws_session.h"

namespace parley::server {

class EchoEndpoint final : public WsEndpoint {
 public:
  void OnText(WsSession& ws, std::string_view text) override { ws.SendText(text); }
  void OnBinary(WsSession& ws, std::string_view data) override { ws.SendBinary(data); }
};

}  // namespace parley::server

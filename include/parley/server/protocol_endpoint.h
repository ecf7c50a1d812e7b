// /ws: the Parley JSON protocol on a WebSocket (PROTOCOL.md). This foundation stage serves
// the session basics: `hello` in dev auth mode and `ping`; the messaging ops arrive with the
// chat layer.
#pragma once

#include <memory>
#include <string>

#include "parley/server/core_context.h"
#include "parley/server/ws_session.h"

namespace parley::server {

std::unique_ptr<WsEndpoint> MakeProtocolEndpoint(CoreContext& ctx);

}  // namespace parley::server

// /ws: the Parley JSON protocol on a WebSocket (PROTOCOL.md sections 3-7).
//
// One ChatEndpoint per connection. Before `hello` it lives on whichever core accepted the
// socket; `hello` authenticates (dev mode or an HS256 JWT), and the socket then moves to the
// core that owns the user (WsSession::MigrateTo), where the endpoint registers as one of the
// user's devices. Every later request runs on that core; steps that belong to other owners go
// through the engine's router.
#pragma once

#include <memory>

#include "parley/server/core_context.h"
#include "parley/server/ws_session.h"

namespace parley::server {

std::unique_ptr<WsEndpoint> MakeChatEndpoint(CoreContext& ctx);

}  // namespace parley::server

#include "parley/server/ws_session.h"

#include "parley/util/clock.h"

namespace parley::server {

void WsEndpoint::OnBinary(WsSession& ws, std::string_view) {
  ws.Close(ws::close_code::kUnsupportedData, "binary messages are not supported");
}

WsSession::WsSession(CoreContext& ctx, net::Connection& conn,
                     std::unique_ptr<WsEndpoint> endpoint)
    : ctx_(ctx),
      conn_(conn),
      endpoint_(std::move(endpoint)),
      decoder_(ctx.config->limits.max_message_bytes) {
  last_rx_ms_ = last_ping_ms_ = ctx_.reactor->now_ms();
  ctx_.metrics->Add(ctx_.metrics->websockets, 1);
  ArmHeartbeat();
}

WsSession::~WsSession() = default;

size_t WsSession::OnData(net::Connection& conn, std::span<char> data) {
  last_rx_ms_ = ctx_.reactor->now_ms();
  ws::DecodeResult result = decoder_.Decode(data, *this);
  if (result.fail_code != 0) {
    ctx_.metrics->Add(ctx_.metrics->ws_protocol_errors);
    Close(result.fail_code, result.fail_reason);
    return data.size();
  }
  if (conn_.closing()) return data.size();
  return result.consumed;
}

bool WsSession::OnMessage(ws::Opcode opcode, std::string_view payload) {
  ctx_.metrics->Add(ctx_.metrics->ws_messages_in);
  if (opcode == ws::Opcode::kText) {
    endpoint_->OnText(*this, payload);
  } else {
    endpoint_->OnBinary(*this, payload);
  }
  return !closing();
}

bool WsSession::OnPing(std::string_view payload) {
  SendFrame(ws::Opcode::kPong, payload);
  return !closing();
}

bool WsSession::OnPong(std::string_view) { return !closing(); }

void WsSession::OnClose(uint16_t code, std::string_view) {
  if (!close_sent_) {
    // Echo the peer's code (RFC 6455 5.5.1); a close without a code is answered without one.
    close_sent_ = true;
    if (code == ws::close_code::kNoStatus) {
      ws::AppendFrame(&conn_.out(), ws::Opcode::kClose, {});
    } else {
      ws::AppendClose(&conn_.out(), code);
    }
  }
  conn_.CloseAfterFlush();
}

bool WsSession::SendFrame(ws::Opcode opcode, std::string_view payload) {
  if (close_sent_ || conn_.closing()) return false;
  std::string& out = conn_.out();
  char header[ws::kMaxServerHeader];
  size_t n = ws::EncodeHeader(header, opcode, true, payload.size());
  out.append(header, n);
  out.append(payload);
  conn_.Flush();
  if (conn_.PendingOutput() > ctx_.config->limits.max_outbound_bytes) {
    // Slow consumer: drop what it could not take and tell it why. Its events stay in the
    // inbox for the next sync.
    ctx_.metrics->Add(ctx_.metrics->slow_consumer_closes);
    out.clear();
    Close(4008, "slow consumer: too much unsent data");
    return false;
  }
  return true;
}

bool WsSession::SendText(std::string_view text) {
  ctx_.metrics->Add(ctx_.metrics->ws_messages_out);
  return SendFrame(ws::Opcode::kText, text);
}

bool WsSession::SendBinary(std::string_view data) {
  ctx_.metrics->Add(ctx_.metrics->ws_messages_out);
  return SendFrame(ws::Opcode::kBinary, data);
}

void WsSession::Close(uint16_t code, std::string_view reason) {
  if (close_sent_ || conn_.closing()) return;
  close_sent_ = true;
  ws::AppendClose(&conn_.out(), code, reason);
  conn_.CloseAfterFlush();
}

void WsSession::ArmHeartbeat() {
  const int64_t hb = ctx_.config->limits.heartbeat_ms;
  const int64_t next_ping = last_ping_ms_ + hb;
  const int64_t idle_limit = last_rx_ms_ + 2 * hb;
  conn_.SetDeadline(std::min(next_ping, idle_limit));
}

void WsSession::OnDeadline(net::Connection&, int64_t now_ms) {
  const int64_t hb = ctx_.config->limits.heartbeat_ms;
  if (now_ms - last_rx_ms_ >= 2 * hb) {
    Close(ws::close_code::kPolicyViolation, "heartbeat timeout");
    return;
  }
  if (now_ms - last_ping_ms_ >= hb) {
    last_ping_ms_ = now_ms;
    SendFrame(ws::Opcode::kPing, {});
  }
  ArmHeartbeat();
}

void WsSession::OnShutdown(net::Connection&) { Close(ws::close_code::kGoingAway, "server shutting down"); }

void WsSession::OnClosed(net::Connection&) {
  ctx_.metrics->Add(ctx_.metrics->websockets, -1);
  ctx_.metrics->Add(ctx_.metrics->connections, -1);  // counted when the HTTP session began
  endpoint_->OnClosed(*this);
}

}  // namespace parley::server

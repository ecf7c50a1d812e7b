#include "parley/server/ws_session.h"

#include <algorithm>

#include "parley/util/clock.h"

namespace parley::server {

void WsEndpoint::OnBinary(WsSession& ws, std::string_view) {
  ws.Close(ws::close_code::kUnsupportedData, "binary messages are not supported");
}

WsSession::WsSession(CoreContext& ctx, net::Connection& conn, std::unique_ptr<WsEndpoint> endpoint)
    : WsSession(ctx, conn, std::move(endpoint),
                ws::FrameDecoder(ctx.config->limits.max_message_bytes)) {}

WsSession::WsSession(CoreContext& ctx, net::Connection& conn, std::unique_ptr<WsEndpoint> endpoint,
                     ws::FrameDecoder decoder)
    : ctx_(ctx), conn_(conn), endpoint_(std::move(endpoint)), decoder_(std::move(decoder)) {
  last_rx_ms_ = last_ping_ms_ = ctx_.reactor->now_ms();
  ctx_.metrics->Add(ctx_.metrics->websockets, 1);
  ctx_.metrics->Add(ctx_.metrics->connections, 1);
  ArmHeartbeat();
}

WsSession::~WsSession() {
  ctx_.metrics->Add(ctx_.metrics->websockets, -1);
  ctx_.metrics->Add(ctx_.metrics->connections, -1);
}

void WsSession::SetExpiry(int64_t mono_ms) {
  expiry_ms_ = mono_ms;
  ArmHeartbeat();
}

void WsSession::MigrateTo(int target, AdoptFn adopt) {
  migrate_to_ = target;
  migrate_adopt_ = std::move(adopt);
}

void WsSession::StartMigration() {
  CoreContext* target = (*ctx_.all)[migrate_to_];
  net::CoreMesh* mesh = ctx_.mesh;
  const int from = ctx_.core;
  auto carry = [target, mesh, from, decoder = std::move(decoder_),
                adopt = std::move(migrate_adopt_)](net::DetachedSocket socket) mutable {
    // The explicit hop: the socket and its session state move to the owner core.
    mesh->SubmitTo(from, target->core,
                   [target, socket = std::move(socket), decoder = std::move(decoder),
                    adopt = std::move(adopt)]() mutable {
                     target->reactor->Adopt(std::move(socket), [&](net::Connection& conn) {
                       auto ws =
                           std::make_unique<WsSession>(*target, conn, nullptr, std::move(decoder));
                       ws->endpoint_ = adopt(*target, *ws);
                       // `adopt` may have closed the session already (a refused hello) while
                       // it had no endpoint to tell: tell it now.
                       if (ws->close_sent_) ws->NotifyClosing();
                       return ws;
                     });
                   });
  };
  ctx_.reactor->Detach(&conn_, std::move(carry));
}

size_t WsSession::OnData(net::Connection& conn, std::span<char> data) {
  last_rx_ms_ = ctx_.reactor->now_ms();
  ws::DecodeResult result = decoder_.Decode(data, *this);
  if (migrate_to_ >= 0 && result.fail_code == 0) {
    StartMigration();  // after Decode returned: the decoder's state is settled
    return result.consumed;
  }
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
  return !closing() && migrate_to_ < 0;
}

bool WsSession::OnPing(std::string_view payload) {
  SendFrame(ws::Opcode::kPong, payload);
  return !closing();
}

bool WsSession::OnPong(std::string_view) {
  return !closing();
}

void WsSession::NotifyClosing() {
  if (closing_notified_ || endpoint_ == nullptr) return;  // no endpoint yet: during adoption
  closing_notified_ = true;
  endpoint_->OnClosing(*this);
}

void WsSession::OnClose(uint16_t code, std::string_view) {
  NotifyClosing();
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
  NotifyClosing();
}

void WsSession::ArmHeartbeat() {
  const int64_t hb = ctx_.config->limits.heartbeat_ms;
  const int64_t next_ping = last_ping_ms_ + hb;
  const int64_t idle_limit = last_rx_ms_ + 2 * hb;
  int64_t due = std::min(next_ping, idle_limit);
  if (expiry_ms_ != 0) due = std::min(due, expiry_ms_);
  conn_.SetDeadline(due);
}

void WsSession::OnDeadline(net::Connection&, int64_t now_ms) {
  const int64_t hb = ctx_.config->limits.heartbeat_ms;
  if (expiry_ms_ != 0 && now_ms >= expiry_ms_) {
    Close(4003, "token expired");
    return;
  }
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

void WsSession::OnShutdown(net::Connection&) {
  Close(ws::close_code::kGoingAway, "server shutting down");
}

void WsSession::OnOutputBudget(net::Connection&) {
  // The core's connections hold more unsent data than its share of the process-wide budget,
  // and this one the most: as for a slow consumer, drop its output and close. Its events stay
  // in the inbox for the next sync.
  conn_.out().clear();
  Close(4008, "slow consumer: server outbound budget exceeded");
}

void WsSession::OnClosed(net::Connection&) {
  NotifyClosing();
  if (endpoint_ != nullptr) endpoint_->OnClosed(*this);
}

}  // namespace parley::server

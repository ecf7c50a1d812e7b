// A WebSocket connection after the upgrade: frames in, frames out, heartbeats, close handshake.
//
// The session owns the RFC 6455 mechanics; what the text messages mean is the endpoint's
// business (the JSON protocol, or the conformance echo). Guarantees:
// - A protocol violation closes with the code the decoder names (1002/1003/1007/1009).
// - The peer's close code is echoed, then the TCP connection is closed by the server.
// - The server pings every heartbeat_ms and closes a connection silent for 2 x heartbeat_ms.
// - Output beyond limits.max_outbound_bytes closes the connection with 4008 (slow consumer);
//   nothing that matters is lost, because events are also in the user's inbox. So does holding
//   the most unsent output on a core past its share of limits.max_outbound_total_bytes.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "parley/net/reactor.h"
#include "parley/server/core_context.h"
#include "parley/ws/frame_codec.h"

namespace parley::server {

class WsSession;

// The application behind a WebSocket.
class WsEndpoint {
 public:
  virtual ~WsEndpoint() = default;
  // A complete, UTF-8 valid text message (valid only during the call).
  virtual void OnText(WsSession& ws, std::string_view text) = 0;
  // A complete binary message. The JSON protocol refuses them with 1003.
  virtual void OnBinary(WsSession& ws, std::string_view data);
  // The close handshake started (either side) or the connection failed: no more messages will
  // be read. The socket may linger briefly to deliver the last frames.
  virtual void OnClosing(WsSession& ws) {}
  // The connection is gone; the session is about to be destroyed.
  virtual void OnClosed(WsSession& ws) {}
};

class WsSession final : public net::ConnectionHandler, private ws::MessageSink {
 public:
  WsSession(CoreContext& ctx, net::Connection& conn, std::unique_ptr<WsEndpoint> endpoint);
  // A session arriving from another core: carries on with the decoder state it had there.
  WsSession(CoreContext& ctx, net::Connection& conn, std::unique_ptr<WsEndpoint> endpoint,
            ws::FrameDecoder decoder);
  ~WsSession() override;

  // Sends one text / binary message. Returns false if the session is closing (or has just been
  // closed for exceeding max_outbound_bytes).
  bool SendText(std::string_view text);
  bool SendBinary(std::string_view data);
  // Starts the close handshake with `code` (1000-4999) and an optional reason.
  void Close(uint16_t code, std::string_view reason = {});
  bool closing() const { return close_sent_ || conn_.closing(); }

  // Closes with 4003 once the monotonic time `mono_ms` passes (token expiry); 0 = never.
  void SetExpiry(int64_t mono_ms);

  // Hands the socket to core `target`, where `adopt` (run on that core's thread) creates the
  // new endpoint. Decoding stops after the current message; unconsumed input, unsent output
  // and a fragmented message in progress all travel with the socket.
  using AdoptFn = absl::AnyInvocable<std::unique_ptr<WsEndpoint>(CoreContext&, WsSession&)>;
  void MigrateTo(int target, AdoptFn adopt);

  net::Connection& connection() { return conn_; }
  CoreContext& context() { return ctx_; }
  WsEndpoint& endpoint() { return *endpoint_; }

 private:
  // net::ConnectionHandler
  size_t OnData(net::Connection& conn, std::span<char> data) override;
  void OnDeadline(net::Connection& conn, int64_t now_ms) override;
  void OnShutdown(net::Connection& conn) override;
  void OnOutputBudget(net::Connection& conn) override;
  void OnClosed(net::Connection& conn) override;
  // ws::MessageSink
  bool OnMessage(ws::Opcode opcode, std::string_view payload) override;
  bool OnPing(std::string_view payload) override;
  bool OnPong(std::string_view payload) override;
  void OnClose(uint16_t code, std::string_view reason) override;

  bool SendFrame(ws::Opcode opcode, std::string_view payload);
  void ArmHeartbeat();
  void StartMigration();

  CoreContext& ctx_;
  net::Connection& conn_;
  int64_t expiry_ms_ = 0;
  int migrate_to_ = -1;
  AdoptFn migrate_adopt_;
  std::unique_ptr<WsEndpoint> endpoint_;
  ws::FrameDecoder decoder_;
  int64_t last_rx_ms_ = 0;
  int64_t last_ping_ms_ = 0;
  bool close_sent_ = false;
  bool closing_notified_ = false;
  void NotifyClosing();
};

}  // namespace parley::server

#include "parley/server/chat_endpoint.h"

#include <simdjson.h>

#include <algorithm>
#include <array>

#include "absl/strings/str_cat.h"
#include "parley/auth/jwt.h"
#include "parley/chat/errors.h"
#include "parley/proto/frames.h"
#include "parley/proto/request.h"
#include "parley/util/clock.h"
#include "parley/util/ids.h"
#include "parley/util/json_writer.h"
#include "parley/util/strings.h"

namespace parley::server {

namespace {

// Who the connection is, once `hello` succeeded (travels with a migrating socket).
struct Identity {
  std::string user;
  std::string device;
  int64_t hello_id = -1;
  int64_t expires_wall_ms = 0;  // token expiry, 0 = none
};

class ChatEndpoint final : public WsEndpoint, public chat::Device {
 public:
  explicit ChatEndpoint(CoreContext& ctx)
      : ctx_(ctx), self_(std::make_shared<ChatEndpoint*>(this)) {}
  ~ChatEndpoint() override { *self_ = nullptr; }

  // ---- chat::Device ----
  uint64_t device_session_id() const override { return session_id_; }
  const std::string& user() const override { return id_.user; }
  const std::string& device() const override { return id_.device; }

  void DeliverMessage(int64_t inbox, const chat::Message& m) override {
    if (inbox <= delivered_upto_ || ws_ == nullptr) return;  // already sent (sync or live)
    delivered_upto_ = inbox;
    Scratch().clear();
    proto::AppendMsg(&Scratch(), {m.conv, m.seq, m.from, m.cmid, m.ts, m.body, m.meta_json}, inbox);
    ws_->SendText(Scratch());
  }
  void DeliverStoredEvent(int64_t inbox, std::string_view event_json) override {
    if (inbox <= delivered_upto_ || ws_ == nullptr) return;
    delivered_upto_ = inbox;
    Scratch().clear();
    StrAppend(&Scratch(), "{\"op\":\"group\",\"inbox\":", inbox, ",", event_json.substr(1));
    ws_->SendText(Scratch());
  }
  void DeliverEphemeral(std::string_view frame) override {
    if (ws_ != nullptr) ws_->SendText(frame);
  }

  // ---- WsEndpoint ----
  void OnText(WsSession& ws, std::string_view text) override {
    ws_ = &ws;
    simdjson::padded_string padded(text);
    proto::Request req;
    proto::DecodeError err;
    proto::DecodeLimits limits;
    limits.max_body_bytes = ctx_.config->limits.max_body_bytes;
    limits.max_meta_bytes = ctx_.config->limits.max_meta_bytes;
    limits.max_users_per_request =
        std::max<uint32_t>(ctx_.config->limits.max_watch, ctx_.config->limits.max_group_size);
    if (!proto::DecodeRequest(ctx_.json_parser, padded, limits, &req, &err)) {
      // An undecodable request still costs a parse and an answer: it draws on the same bucket
      // as the other requests, so a flood of junk meets rate_limited and then 4029 too.
      if (!AllowRequest(ws)) {
        if (!ws.closing()) SendError(err.id, "rate_limited", "too many requests; slow down");
        return;
      }
      SendError(err.id, err.code, err.message);
      // A request with a known op before authentication (a hello with invalid fields, or any
      // other op) ends the connection; text that is not a request at all leaves it open.
      if (!attached_ && err.op_known) ws.Close(4001, "not authenticated");
      return;
    }
    if (!attached_) {
      if (req.op != proto::Op::kHello) {
        SendError(req.id, "unauthenticated", "the first request must be hello");
        ws.Close(4001, "not authenticated");
        return;
      }
      return Hello(ws, req);
    }
    Dispatch(ws, req);
  }

  // The user goes offline as soon as the connection starts closing, not when the socket is
  // finally released.
  // Deferred: this may be called from inside the engine's delivery loop over the user's
  // devices (a slow consumer closing with 4008), which must not change under it.
  void OnClosing(WsSession&) override {
    ctx_.reactor->Defer([self = self_] {
      ChatEndpoint* ep = *self;
      if (ep == nullptr || !ep->attached_) return;
      ep->ctx_.engine->DetachDevice(ep);
      ep->attached_ = false;
    });
  }

  void OnClosed(WsSession&) override {
    if (attached_) ctx_.engine->DetachDevice(this);
    attached_ = false;
    ws_ = nullptr;
  }

  // Registers this device with the owner core's engine and answers `hello`.
  void Attach(WsSession& ws, Identity id) {
    ws_ = &ws;
    id_ = std::move(id);
    session_id_ = ws.connection().id();
    auto inbox_seq = ctx_.engine->AttachDevice(this);
    if (!inbox_seq.ok()) {
      if (absl::IsResourceExhausted(inbox_seq.status())) {
        SendError(id_.hello_id, "rate_limited", ToStd(inbox_seq.status().message()));
        ws.Close(1008, "too many connections for this user");
        return;
      }
      SendError(id_.hello_id, "unavailable", "storage is unavailable");
      ws.Close(1011, "storage unavailable");
      return;
    }
    attached_ = true;
    if (id_.expires_wall_ms != 0) {
      ws.SetExpiry(ctx_.reactor->now_ms() +
                   std::max<int64_t>(0, id_.expires_wall_ms - WallMillis()));
    }
    if (id_.hello_id < 0) return;
    std::string out;
    const std::string session = StrCat(session_id_);
    proto::AppendHelloOk(&out, id_.hello_id,
                         {id_.user, id_.device, session, ctx_.node_name, *inbox_seq,
                          ctx_.config->limits.heartbeat_ms});
    ws.SendText(out);
  }

 private:
  // Frames are built in the core's scratch buffer, then copied into the connection's output:
  // an idle connection keeps no buffer of its own.
  std::string& Scratch() { return ctx_.scratch; }

  void SendError(int64_t id, std::string_view code, std::string_view message) {
    if (ws_ == nullptr) return;
    Scratch().clear();
    proto::AppendError(&Scratch(), id, code, message);
    ws_->SendText(Scratch());
  }
  void SendStatus(int64_t id, const absl::Status& st) {
    if (!st.ok()) return SendError(id, chat::ProtocolCode(st), ToStd(st.message()));
    if (id < 0 || ws_ == nullptr) return;
    Scratch().clear();
    proto::AppendOk(&Scratch(), id);
    ws_->SendText(Scratch());
  }

  void Hello(WsSession& ws, const proto::Request& req) {
    const auto& auth = ctx_.config->auth;
    Identity id;
    id.hello_id = req.id;
    id.device = req.device.empty() ? "default" : std::string(req.device);
    if (!req.token.empty() && !auth.jwt_secret.empty()) {
      auth::VerifyResult v = auth::VerifyHs256(req.token, auth.jwt_secret, WallMillis() / 1000);
      if (!v.ok) {
        const bool expired = v.error == auth::TokenError::kExpired;
        SendError(req.id,
                  v.error == auth::TokenError::kMalformed ? "bad_request" : "unauthenticated",
                  v.message);
        ws.Close(expired ? 4003 : 4001, expired ? "token expired" : "not authenticated");
        return;
      }
      id.user = v.claims.subject;
      id.expires_wall_ms = v.claims.expires_at * 1000;
    } else if (auth.mode == "dev" && !req.user.empty()) {
      id.user = std::string(req.user);
    } else {
      SendError(req.id, auth.mode == "dev" ? "bad_request" : "unauthenticated",
                auth.mode == "dev" ? "hello needs a user (auth mode dev) or a token"
                                   : "hello needs a valid token");
      ws.Close(4001, "not authenticated");
      return;
    }
    const int owner = ctx_.router->CoreOfUser(id.user);
    if (owner == ctx_.core) {
      Attach(ws, std::move(id));
      return;
    }
    // The user's data lives on another core: move the socket there, then register.
    ws.MigrateTo(owner, [id = std::move(id)](CoreContext& target, WsSession& moved) mutable {
      auto endpoint = std::make_unique<ChatEndpoint>(target);
      endpoint->Attach(moved, std::move(id));
      return endpoint;
    });
  }

  // A token bucket of `rate` per second and `burst` tokens, plus the abuse check: more than
  // 10 x the rate within one second closes the connection with 4029. Attempts are counted in
  // ten 100 ms slots, the current one and the nine before it, so the sum covers at least the
  // last 900 ms and never more than the last second: a burst is caught wherever it falls (a
  // window fixed to the first request missed one split across its boundary), and a client
  // that stayed within 10 x the rate over every second is never closed.
  static constexpr int kAbuseSlots = 10;
  static constexpr int64_t kAbuseSlotMs = 1000 / kAbuseSlots;
  struct RateBucket {
    double tokens = 0;
    int64_t time = 0;     // last refill and attempt; 0 = not used yet
    uint32_t recent = 0;  // sum of attempts, kept as slots are cleared
    // Attempts per slot; the newest is [time / kAbuseSlotMs % kAbuseSlots]. Counts saturate.
    std::array<uint16_t, kAbuseSlots> attempts{};
  };

  bool AllowRate(WsSession& ws, RateBucket& b, double rate, double burst) {
    const int64_t now = ctx_.reactor->now_ms();
    if (b.time == 0) {
      b.tokens = burst;
      b.time = now;
    }
    const int64_t last_slot = b.time / kAbuseSlotMs;
    const int64_t slot = now / kAbuseSlotMs;
    b.tokens = std::min(burst, b.tokens + (now - b.time) * rate / 1000.0);
    b.time = now;
    // The slots between the last attempt's and this one's have left the window.
    if (slot - last_slot >= kAbuseSlots) {
      b.attempts.fill(0);
      b.recent = 0;
    } else {
      for (int64_t s = last_slot + 1; s <= slot; ++s) {
        uint16_t& old = b.attempts[s % kAbuseSlots];
        b.recent -= old;
        old = 0;
      }
    }
    uint16_t& current = b.attempts[slot % kAbuseSlots];
    if (current != UINT16_MAX) {
      ++current;
      ++b.recent;
    }
    if (b.recent > 10 * rate) {
      ws.Close(4029, "rate limit abused");
      return false;
    }
    if (b.tokens < 1.0) return false;
    b.tokens -= 1.0;
    return true;
  }
  // send + typing: the requests that reach other users.
  bool AllowMessage(WsSession& ws) {
    return AllowRate(ws, message_bucket_, ctx_.config->limits.rate_per_sec,
                     ctx_.config->limits.rate_burst);
  }
  // Every other request but ping: each costs a store read or engine work.
  bool AllowRequest(WsSession& ws) {
    return AllowRate(ws, request_bucket_, ctx_.config->limits.request_rate_per_sec,
                     ctx_.config->limits.request_rate_burst);
  }

  void Dispatch(WsSession& ws, const proto::Request& req) {
    chat::EngineShard& engine = *ctx_.engine;
    if (req.op != proto::Op::kPing && req.op != proto::Op::kSend && req.op != proto::Op::kTyping &&
        !AllowRequest(ws)) {
      if (!ws.closing()) SendError(req.id, "rate_limited", "too many requests; slow down");
      return;
    }
    switch (req.op) {
      case proto::Op::kPing:
        if (req.id >= 0) {
          Scratch().clear();
          proto::AppendPingOk(&Scratch(), req.id, WallMillis());
          ws.SendText(Scratch());
        }
        return;
      case proto::Op::kHello:
        return SendError(req.id, "bad_request", "already authenticated");
      case proto::Op::kSend: {
        if (!AllowMessage(ws)) {
          if (!ws.closing()) SendError(req.id, "rate_limited", "too many messages; slow down");
          return;
        }
        chat::SendArgs args;
        args.from = id_.user;
        args.to = req.to;
        args.group = req.group;
        args.cmid = req.cmid;
        args.body = req.body;
        args.meta_json = req.meta_json;
        engine.Send(std::move(args), ctx_.core, [self = self_, id = req.id](chat::SendResult r) {
          ChatEndpoint* ep = *self;
          if (ep == nullptr) return;
          if (!r.status.ok()) {
            return ep->SendError(id, chat::ProtocolCode(r.status), ToStd(r.status.message()));
          }
          if (id < 0 || ep->ws_ == nullptr) return;
          ep->Scratch().clear();
          proto::AppendSendOk(&ep->Scratch(), id, r.conv, r.seq, r.ts, r.dup);
          ep->ws_->SendText(ep->Scratch());
        });
        return;
      }
      case proto::Op::kAck: {
        absl::Status st = engine.Ack(*this, req.inbox, [self = self_, id = req.id](absl::Status s) {
          if (ChatEndpoint* ep = *self) ep->SendStatus(id, s);
        });
        if (!st.ok()) SendStatus(req.id, st);
        return;
      }
      case proto::Op::kSync: {
        std::string out;
        int64_t last = 0;
        absl::Status st = engine.Sync(*this, req.id, req.since, req.limit, &out, &last);
        if (!st.ok()) return SendStatus(req.id, st);
        delivered_upto_ = std::max(delivered_upto_, last);
        if (req.id >= 0) ws.SendText(out);
        return;
      }
      case proto::Op::kHistory: {
        std::string out;
        absl::Status st = engine.History(id_.user, req.id, req.conv, req.before, req.limit, &out);
        if (!st.ok()) return SendStatus(req.id, st);
        if (req.id >= 0) ws.SendText(out);
        return;
      }
      case proto::Op::kRead:
        engine.Read(*this, req.conv, req.seq, [self = self_, id = req.id](absl::Status s) {
          if (ChatEndpoint* ep = *self) ep->SendStatus(id, s);
        });
        return;
      case proto::Op::kConvs: {
        std::string out;
        absl::Status st = engine.Convs(id_.user, req.id, req.limit, &out);
        if (!st.ok()) return SendStatus(req.id, st);
        if (req.id >= 0) ws.SendText(out);
        return;
      }
      case proto::Op::kTyping:
        if (!AllowMessage(ws)) {
          if (!ws.closing()) SendError(req.id, "rate_limited", "too many requests; slow down");
          return;
        }
        return SendStatus(req.id, engine.Typing(*this, req.to, req.group));
      case proto::Op::kPresence:
        return SendStatus(req.id, engine.SetStatus(*this, req.status));
      case proto::Op::kWatch: {
        std::vector<std::string> users(req.users.begin(), req.users.end());
        engine.Watch(*this, std::move(users),
                     [self = self_,
                      id = req.id](absl::StatusOr<std::vector<chat::EngineShard::PresenceInfo>> r) {
                       ChatEndpoint* ep = *self;
                       if (ep == nullptr) return;
                       if (!r.ok()) return ep->SendStatus(id, r.status());
                       if (id < 0 || ep->ws_ == nullptr) return;
                       std::string& out = ep->Scratch();
                       out.clear();
                       proto::ListOkWriter w(&out, id, "presence");
                       for (const auto& p : *r) {
                         std::string* o = w.Item();
                         o->append("{\"user\":");
                         AppendJsonString(o, p.user);
                         o->append(",\"status\":\"");
                         o->append(p.status);
                         StrAppend(o, "\",\"last_seen\":", p.last_seen, "}");
                       }
                       w.Finish({}, false, false);
                       ep->ws_->SendText(out);
                     });
        return;
      }
      case proto::Op::kUnwatch: {
        std::vector<std::string> users(req.users.begin(), req.users.end());
        engine.Unwatch(*this, users);
        return SendStatus(req.id, absl::OkStatus());
      }
      case proto::Op::kGroupCreate:
      case proto::Op::kGroupAdd:
      case proto::Op::kGroupRemove:
      case proto::Op::kGroupLeave:
      case proto::Op::kGroupInfo: {
        chat::EngineShard::GroupOp op;
        using K = chat::EngineShard::GroupOp;
        op.kind = req.op == proto::Op::kGroupCreate   ? K::kCreate
                  : req.op == proto::Op::kGroupAdd    ? K::kAdd
                  : req.op == proto::Op::kGroupRemove ? K::kRemove
                  : req.op == proto::Op::kGroupLeave  ? K::kLeave
                                                      : K::kInfo;
        op.by = id_.user;
        op.group = req.group;
        op.name = req.name;
        op.users.assign(req.users.begin(), req.users.end());
        const bool create = op.kind == K::kCreate;
        const bool info = op.kind == K::kInfo;
        engine.Group(std::move(op), ctx_.core,
                     [self = self_, id = req.id, create, info](chat::EngineShard::GroupResult r) {
                       ChatEndpoint* ep = *self;
                       if (ep == nullptr) return;
                       if (!r.status.ok()) return ep->SendStatus(id, r.status);
                       if (id < 0 || ep->ws_ == nullptr) return;
                       std::string& out = ep->Scratch();
                       out.clear();
                       JsonObjectWriter w(&out);
                       w.Str("op", "ok").Int("id", id);
                       if (create) w.Str("group", r.group).Str("conv", proto::GroupConvId(r.group));
                       if (info) {
                         std::string members = "[";
                         for (size_t i = 0; i < r.members.size(); ++i) {
                           if (i) members.push_back(',');
                           AppendJsonString(&members, r.members[i]);
                         }
                         members.push_back(']');
                         w.Str("group", r.group)
                             .Str("name", r.name)
                             .Str("owner", r.owner)
                             .Raw("members", members);
                       }
                       w.Close();
                       ep->ws_->SendText(out);
                     });
        return;
      }
      case proto::Op::kGroups: {
        std::string out;
        absl::Status st = engine.Groups(id_.user, req.id, &out);
        if (!st.ok()) return SendStatus(req.id, st);
        if (req.id >= 0) ws.SendText(out);
        return;
      }
    }
  }

  CoreContext& ctx_;
  std::shared_ptr<ChatEndpoint*> self_;  // replies arriving later find us (or nullptr)
  WsSession* ws_ = nullptr;
  Identity id_;
  uint64_t session_id_ = 0;
  bool attached_ = false;
  int64_t delivered_upto_ = 0;  // newest inbox number this connection has been sent
  RateBucket message_bucket_;   // send + typing
  RateBucket request_bucket_;   // every other request but ping
};

}  // namespace

std::unique_ptr<WsEndpoint> MakeChatEndpoint(CoreContext& ctx) {
  return std::make_unique<ChatEndpoint>(ctx);
}

}  // namespace parley::server

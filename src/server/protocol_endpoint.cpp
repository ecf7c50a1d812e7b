#include "parley/server/protocol_endpoint.h"

#include <simdjson.h>

#include "absl/strings/str_cat.h"
#include "parley/util/clock.h"
#include "parley/util/ids.h"
#include "parley/util/json_writer.h"

namespace parley::server {

namespace {

class ProtocolEndpoint final : public WsEndpoint {
 public:
  explicit ProtocolEndpoint(CoreContext& ctx) : ctx_(ctx) {}

  void OnText(WsSession& ws, std::string_view text) override {
    // simdjson reads up to SIMDJSON_PADDING bytes past the end: parse a padded copy.
    simdjson::padded_string padded(text);
    simdjson::ondemand::document doc;
    simdjson::ondemand::object obj;
    if (ctx_.json_parser.iterate(padded).get(doc) || doc.get_object().get(obj)) {
      return Error(ws, -1, "bad_request", "request is not a JSON object");
    }
    int64_t id = -1;
    std::string_view op;
    bool has_op = false;
    for (auto field : obj) {
      std::string_view key;
      if (field.unescaped_key().get(key)) return Error(ws, id, "bad_request", "invalid JSON");
      if (key == "id") {
        uint64_t v;
        if (field.value().get_uint64().get(v) || v >= (1ull << 53)) {
          return Error(ws, -1, "bad_request", "id must be an integer in [0, 2^53)");
        }
        id = static_cast<int64_t>(v);
      } else if (key == "op") {
        if (field.value().get_string().get(op)) {
          return Error(ws, id, "bad_request", "op must be a string");
        }
        op_.assign(op);
        has_op = true;
      } else if (key == "user" || key == "device" || key == "token") {
        std::string_view v;
        if (field.value().get_string().get(v)) {
          return Error(ws, id, "bad_request", absl::StrCat(key, " must be a string"));
        }
        (key == "user" ? user_arg_ : key == "device" ? device_arg_ : token_arg_).assign(v);
      }
    }
    if (!doc.at_end()) return Error(ws, id, "bad_request", "trailing data after the JSON object");
    if (!has_op) return Error(ws, id, "bad_request", "missing op");
    if (user_.empty()) {
      if (op_ != "hello") {
        Error(ws, id, "unauthenticated", "the first request must be hello");
        ws.Close(4001, "not authenticated");
        return;
      }
      return Hello(ws, id);
    }
    if (op_ == "ping") {
      if (id < 0) return;
      std::string out;
      JsonObjectWriter(&out).Str("op", "ok").Int("id", id).Int("ts", WallMillis()).Close();
      ws.SendText(out);
      return;
    }
    if (op_ == "hello") return Error(ws, id, "bad_request", "already authenticated");
    Error(ws, id, "bad_request", absl::StrCat("unknown op '", op_, "'"));
  }

 private:
  void Hello(WsSession& ws, int64_t id) {
    if (ctx_.config->auth.mode != "dev") {
      Error(ws, id, "unauthenticated", "token authentication is not available yet");
      ws.Close(4001, "not authenticated");
      return;
    }
    if (!IsValidId(user_arg_)) {
      Error(ws, id, "bad_request", "user must be 1-64 bytes of [A-Za-z0-9_.@-]");
      ws.Close(4001, "not authenticated");
      return;
    }
    const std::string device = device_arg_.empty() ? "default" : device_arg_;
    if (!IsValidId(device)) {
      Error(ws, id, "bad_request", "device must be 1-64 bytes of [A-Za-z0-9_.@-]");
      ws.Close(4001, "not authenticated");
      return;
    }
    user_ = user_arg_;
    std::string out;
    JsonObjectWriter w(&out);
    w.Str("op", "ok");
    if (id >= 0) w.Int("id", id);
    w.Str("user", user_)
        .Str("device", device)
        .Str("session", absl::StrCat(ws.connection().id()))
        .Int("inbox_seq", 0)
        .Int("heartbeat_ms", ctx_.config->limits.heartbeat_ms)
        .Str("node", ctx_.node_name)
        .Int("protocol", 1)
        .Close();
    ws.SendText(out);
  }

  void Error(WsSession& ws, int64_t id, std::string_view code, std::string_view message) {
    std::string out;
    JsonObjectWriter w(&out);
    w.Str("op", "error");
    if (id >= 0) w.Int("id", id);
    w.Str("code", code).Str("message", message).Close();
    ws.SendText(out);
  }

  CoreContext& ctx_;
  std::string op_, user_arg_, device_arg_, token_arg_;
  std::string user_;
};

}  // namespace

std::unique_ptr<WsEndpoint> MakeProtocolEndpoint(CoreContext& ctx) {
  return std::make_unique<ProtocolEndpoint>(ctx);
}

}  // namespace parley::server

#include "parley/proto/frames.h"

#include "parley/util/json_writer.h"

namespace parley::proto {
namespace {

// Starts an ok answer: {"op":"ok" and, when the request had one, its id.
JsonObjectWriter StartOk(std::string* out, int64_t id) {
  JsonObjectWriter w(out);
  w.Raw("op", R"("ok")");
  if (id >= 0) w.Int("id", id);
  return w;
}

void AppendInt(std::string* out, int64_t value) {
  // Wire integers are below 2^53, so 20 bytes always suffice.
  char buf[24];
  char* end = buf + sizeof(buf);
  char* p = end;
  const bool negative = value < 0;
  uint64_t v = negative ? 0 - static_cast<uint64_t>(value) : static_cast<uint64_t>(value);
  do {
    *--p = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  if (negative) *--p = '-';
  out->append(p, static_cast<size_t>(end - p));
}

}  // namespace

void AppendError(std::string* out, int64_t id, std::string_view code, std::string_view message) {
  JsonObjectWriter w(out);
  w.Raw("op", R"("error")");
  if (id >= 0) w.Int("id", id);
  w.Str("code", code).Str("message", message).Close();
}

void AppendOk(std::string* out, int64_t id) {
  StartOk(out, id).Close();
}

void AppendPingOk(std::string* out, int64_t id, int64_t ts) {
  StartOk(out, id).Int("ts", ts).Close();
}

void AppendHelloOk(std::string* out, int64_t id, const HelloOk& hello) {
  StartOk(out, id)
      .Str("user", hello.user)
      .Str("device", hello.device)
      .Str("session", hello.session)
      .Int("inbox_seq", hello.inbox_seq)
      .Int("heartbeat_ms", hello.heartbeat_ms)
      .Str("node", hello.node)
      .Int("protocol", 1)
      .Close();
}

void AppendSendOk(std::string* out, int64_t id, std::string_view conv, int64_t seq, int64_t ts,
                  bool dup) {
  StartOk(out, id).Str("conv", conv).Int("seq", seq).Int("ts", ts).Bool("dup", dup).Close();
}

void AppendMsg(std::string* out, const MessageView& msg, int64_t inbox) {
  JsonObjectWriter w(out);
  w.Raw("op", R"("msg")");
  if (inbox >= 0) w.Int("inbox", inbox);
  w.Str("conv", msg.conv)
      .Int("seq", msg.seq)
      .Str("from", msg.from)
      .Str("cmid", msg.cmid)
      .Int("ts", msg.ts)
      .Str("body", msg.body);
  if (!msg.meta_json.empty()) w.Raw("meta", msg.meta_json);
  w.Close();
}

void AppendReceipt(std::string* out, std::string_view conv, std::string_view user, int64_t seq,
                   int64_t ts) {
  JsonObjectWriter w(out);
  w.Raw("op", R"("receipt")").Str("conv", conv).Str("user", user).Int("seq", seq).Int("ts", ts);
  w.Close();
}

void AppendTyping(std::string* out, std::string_view conv, std::string_view from) {
  JsonObjectWriter w(out);
  w.Raw("op", R"("typing")").Str("conv", conv).Str("from", from).Close();
}

void AppendPresence(std::string* out, std::string_view user, std::string_view status,
                    int64_t last_seen) {
  JsonObjectWriter w(out);
  w.Raw("op", R"("presence")")
      .Str("user", user)
      .Str("status", status)
      .Int("last_seen", last_seen)
      .Close();
}

void AppendGroupEvent(std::string* out, int64_t inbox, std::string_view group,
                      std::string_view change, std::span<const std::string> users,
                      std::string_view by, int64_t ts) {
  JsonObjectWriter w(out);
  w.Raw("op", R"("group")");
  if (inbox >= 0) w.Int("inbox", inbox);
  w.Str("group", group).Str("change", change).Raw("users", "[");
  for (size_t i = 0; i < users.size(); ++i) {
    if (i != 0) out->push_back(',');
    AppendJsonString(out, users[i]);
  }
  out->push_back(']');
  w.Str("by", by).Int("ts", ts).Close();
}

ListOkWriter::ListOkWriter(std::string* out, int64_t id, std::string_view list_key) : out_(out) {
  out_->append(R"({"op":"ok")");
  if (id >= 0) {
    out_->append(R"(,"id":)");
    AppendInt(out_, id);
  }
  out_->append(",\"");
  out_->append(list_key);
  out_->append("\":[");
}

std::string* ListOkWriter::Item() {
  if (!first_) out_->push_back(',');
  first_ = false;
  return out_;
}

void ListOkWriter::Finish(std::span<const std::pair<std::string_view, int64_t>> ints,
                          bool with_more, bool more) {
  out_->push_back(']');
  for (const auto& [key, value] : ints) {
    out_->append(",\"");
    out_->append(key);
    out_->append("\":");
    AppendInt(out_, value);
  }
  if (with_more) out_->append(more ? R"(,"more":true)" : R"(,"more":false)");
  out_->push_back('}');
}

}  // namespace parley::proto

// Encoding of server frames (PROTOCOL.md): ok answers, errors and events, appended to a
// caller-owned string (a connection's output or a reused scratch buffer). Field order is
// fixed; keys are snake_case; strings are escaped; stored `meta` JSON is inserted verbatim.
// Every encoder that takes a request id omits "id" when it is negative.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace parley::proto {

// A message as it is delivered (msg event, history and sync entries).
struct MessageView {
  std::string_view conv;
  int64_t seq = 0;
  std::string_view from;
  std::string_view cmid;
  int64_t ts = 0;
  std::string_view body;
  std::string_view meta_json;  // empty = no meta
};

// {"op":"error","id":N,"code":..,"message":..}; id < 0 omits it.
void AppendError(std::string* out, int64_t id, std::string_view code, std::string_view message);

// {"op":"ok","id":N}; for requests whose answer carries nothing else.
void AppendOk(std::string* out, int64_t id);

// {"op":"ok","id":N,"ts":T}
void AppendPingOk(std::string* out, int64_t id, int64_t ts);

struct HelloOk {
  std::string_view user, device, session, node;
  int64_t inbox_seq = 0;
  int64_t heartbeat_ms = 0;
};
void AppendHelloOk(std::string* out, int64_t id, const HelloOk& hello);

// {"op":"ok","id":N,"conv":..,"seq":..,"ts":..,"dup":..}
void AppendSendOk(std::string* out, int64_t id, std::string_view conv, int64_t seq, int64_t ts,
                  bool dup);

// {"op":"msg","inbox":N,...}; inbox < 0 omits it (history entries).
void AppendMsg(std::string* out, const MessageView& msg, int64_t inbox);

// {"op":"receipt","conv":..,"user":..,"seq":..,"ts":..}
void AppendReceipt(std::string* out, std::string_view conv, std::string_view user, int64_t seq,
                   int64_t ts);

// {"op":"typing","conv":..,"from":..}
void AppendTyping(std::string* out, std::string_view conv, std::string_view from);

// {"op":"presence","user":..,"status":..,"last_seen":..}
void AppendPresence(std::string* out, std::string_view user, std::string_view status,
                    int64_t last_seen);

// {"op":"group","inbox":N,"group":..,"change":..,"users":[..],"by":..,"ts":..}; inbox < 0
// omits it. `users` is a list of ids.
void AppendGroupEvent(std::string* out, int64_t inbox, std::string_view group,
                      std::string_view change, std::span<const std::string> users,
                      std::string_view by, int64_t ts);

// Incremental writer for answers that carry a list:
//   ListOkWriter w(out, id, "events");  w.Item() << ...;  w.Finish({{"inbox_seq", 58}}, more)
// produces {"op":"ok","id":N,"events":[item,item],"inbox_seq":58,"more":false}.
class ListOkWriter {
 public:
  ListOkWriter(std::string* out, int64_t id, std::string_view list_key);
  // Call before appending each item's JSON to out().
  std::string* Item();
  std::string* out() { return out_; }
  // Closes the list, then appends `"key":value` integer fields and, if with_more, "more".
  void Finish(std::span<const std::pair<std::string_view, int64_t>> ints, bool with_more,
              bool more);

 private:
  std::string* out_;
  bool first_ = true;
};

}  // namespace parley::proto

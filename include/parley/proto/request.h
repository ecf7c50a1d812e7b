// Decoding of client requests (PROTOCOL.md sections 3-7) into validated Request values.
//
// DecodeRequest parses one text message with simdjson On Demand and checks everything the
// protocol says about its shape before the chat layer sees it: known op, field types, id
// alphabet and lengths, integer ranges (< 2^53), size limits (too_large), limits clamped to
// their maximum, canonical conversation ids, exactly one of to/group. The chat layer only
// checks what needs state (membership, existence, rate).
//
// Choices where PROTOCOL.md is silent:
// - Every value is validated as JSON, including those of keys the op does not use (which are
//   otherwise ignored, whatever their type). Object/array nesting is limited to 64 levels in
//   total; deeper input is bad_request. Numbers must be finite doubles.
// - A repeated key is bad_request, the id echoed unless "id" itself was repeated or invalid.
// - meta_json is the object's text exactly as sent (inner whitespace kept, escapes not
//   decoded); max_meta_bytes applies to that text. body is measured after unescaping.
// - send without meta needs a non-empty body; meta must be an object (null is bad_request).
// - hello: an empty token is bad_request.
// - users/members longer than max_users_per_request is too_large; group_create's name longer
//   than 128 bytes is bad_request.
// - group_create takes its list from "members", the other ops from "users"; Request::users
//   holds either.
//
// Lifetime: string_views in Request point into the parser's buffers and the padded input;
// they are valid until the next DecodeRequest on the same parser. Copy what must outlive it
// (e.g. before a cross-core hop).
#pragma once

#include <simdjson.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/container/inlined_vector.h"

namespace parley::proto {

enum class Op : uint8_t {
  kHello,
  kPing,
  kSend,
  kAck,
  kSync,
  kHistory,
  kRead,
  kConvs,
  kTyping,
  kPresence,
  kWatch,
  kUnwatch,
  kGroupCreate,
  kGroupAdd,
  kGroupRemove,
  kGroupLeave,
  kGroupInfo,
  kGroups,
};

std::string_view OpName(Op op);

// Limits the decoder enforces (from Config::Limits).
struct DecodeLimits {
  uint64_t max_body_bytes = 16384;
  uint64_t max_meta_bytes = 4096;
  uint32_t max_users_per_request = 1000;  // watch/unwatch/group member lists
};

struct Request {
  Op op = Op::kPing;
  int64_t id = -1;  // -1: no id (no ok is sent; errors are sent without id)

  // hello
  std::string_view token;   // empty if absent
  std::string_view user;    // dev mode
  std::string_view device;  // empty if absent (the server uses "default")

  // send, typing: exactly one of `to` / `group` is set (validated ids)
  std::string_view to;
  std::string_view group;
  std::string_view cmid;       // send: required
  std::string_view body;       // send: required unless meta is present (then may be empty)
  std::string_view meta_json;  // send: the raw JSON object text of "meta", or empty

  // ack: inbox; sync: since/limit; history: conv/before/limit; read: conv/seq; convs: limit
  int64_t inbox = -1;     // ack
  int64_t since = -1;     // sync; -1 = from the device's last ack
  int64_t limit = -1;     // already clamped to the op's maximum; -1 = op default
  int64_t before = -1;    // history; -1 = newest
  int64_t seq = -1;       // read
  std::string_view conv;  // history, read: canonical "d:a:b" (a <= b) or "g:group"

  // presence
  std::string_view status;  // "online" | "busy"

  // watch, unwatch, group_create (members), group_add, group_remove (users)
  absl::InlinedVector<std::string_view, 4> users;
  std::string_view name;  // group_create: optional display name (<= 128 bytes)

  // The admin API's send only: the sender (validated id). A client request may carry the key;
  // it is read and ignored.
  std::string_view from;
};

// A request that cannot be served as written: `code` is the protocol error code
// ("bad_request" or "too_large"), `id` what could be read of the request's id (-1 if none).
struct DecodeError {
  std::string_view code;
  std::string message;
  int64_t id = -1;
  // The request named a known op (its fields were invalid), as opposed to invalid JSON, a
  // missing or an unknown op.
  bool op_known = false;
  Op op = Op::kPing;
};

// Decodes `json` (which must have SIMDJSON_PADDING readable bytes after its end).
// Returns true and fills *out, or returns false and fills *error.
bool DecodeRequest(simdjson::ondemand::parser& parser, simdjson::padded_string_view json,
                   const DecodeLimits& limits, Request* out, DecodeError* error);

// Decodes the body of the admin API's send (POST /api/v1/send): the fields of a client's
// send plus a required "from", with "op" optional (if given it must be "send"). Same
// padding, limits and errors as DecodeRequest; fills out->from.
bool DecodeAdminSend(simdjson::ondemand::parser& parser, simdjson::padded_string_view json,
                     const DecodeLimits& limits, Request* out, DecodeError* error);

// Conversation ids.
std::string DirectConvId(std::string_view a, std::string_view b);  // orders a, b bytewise
std::string GroupConvId(std::string_view group);
// Parses a conversation id; false if not canonical or ids invalid.
struct ConvRef {
  bool is_group = false;
  std::string_view a, b;   // direct: the two users, a <= b
  std::string_view group;  // group
};
bool ParseConvId(std::string_view conv, ConvRef* out);

}  // namespace parley::proto

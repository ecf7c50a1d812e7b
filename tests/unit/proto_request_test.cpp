#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "parley/proto/request.h"

using namespace parley::proto;

namespace {

// Owns the parser and the padded input, which the decoded views point into.
class Decoder {
 public:
  bool Run(std::string_view json, const DecodeLimits& limits = {}) {
    input_ = simdjson::padded_string(json);
    error = DecodeError{};
    return DecodeRequest(parser_, input_, limits, &req, &error);
  }
  Request req;
  DecodeError error;

 private:
  simdjson::ondemand::parser parser_;
  simdjson::padded_string input_;
};

std::string Repeat(std::string_view s, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) out.append(s);
  return out;
}

struct ErrorCase {
  std::string json;
  std::string_view code;
  int64_t id;                     // the id the error must echo (-1: none)
  std::string_view message_part;  // must appear in the message
};

void CheckErrors(const std::vector<ErrorCase>& cases, const DecodeLimits& limits = {}) {
  Decoder d;
  for (const ErrorCase& c : cases) {
    INFO("request: " << c.json);
    REQUIRE_FALSE(d.Run(c.json, limits));
    CHECK(d.error.code == c.code);
    CHECK(d.error.id == c.id);
    INFO("message: " << d.error.message);
    CHECK(d.error.message.find(c.message_part) != std::string::npos);
  }
}

constexpr std::string_view kNotCanonical = "not a canonical conversation id";

}  // namespace

TEST_CASE("ping decodes with and without id", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"ping"})"));
  CHECK(d.req.op == Op::kPing);
  CHECK(d.req.id == -1);
  REQUIRE(d.Run(R"({"op":"ping","id":42})"));
  CHECK(d.req.id == 42);
  REQUIRE(d.Run(" \n\t{ \"id\" : 0 , \"op\" : \"ping\" } \r\n"));
  CHECK(d.req.id == 0);
}

TEST_CASE("op_known tells a request with bad fields from text that is no request",
          "[proto][request]") {
  Decoder d;
  struct Case {
    std::string json;
    bool op_known;
  };
  const std::vector<Case> cases = {
      {R"({"op":"hello","id":1,"user":"alice","user":"bob"})", true},  // duplicate key
      {R"({"op":"hello","id":"x","user":"alice"})", true},             // bad id
      {R"({"op":"hello","id":1,"user":"no spaces"})", true},           // bad field
      {R"({"id":1,"op":"send","op":"send"})", true},                   // duplicate op
      {R"({"op":"nope","id":3})", false},
      {R"({"op":"HELLO","id":3})", false},
      {R"({"op":7,"id":3})", false},
      {R"({"id":3})", false},
      {R"([])", false},
      {R"({"op":"hello","id":1,"user":"alice")", false},  // not JSON at all
  };
  for (const Case& c : cases) {
    INFO(c.json);
    REQUIRE_FALSE(d.Run(c.json));
    CHECK(d.error.code == "bad_request");
    CHECK(d.error.op_known == c.op_known);
    if (c.op_known)
      CHECK(d.error.op == (c.json.find("send") != std::string::npos ? Op::kSend : Op::kHello));
  }
}

TEST_CASE("every op name decodes to its Op and back", "[proto][request]") {
  struct OpCase {
    Op op;
    std::string_view name;
    std::string_view extra;  // the op's required fields
  };
  const std::vector<OpCase> ops = {
      {Op::kHello, "hello", R"("user":"alice")"},
      {Op::kPing, "ping", ""},
      {Op::kSend, "send", R"("to":"bob","cmid":"c1","body":"hi")"},
      {Op::kAck, "ack", R"("inbox":3)"},
      {Op::kSync, "sync", ""},
      {Op::kHistory, "history", R"("conv":"g:team")"},
      {Op::kRead, "read", R"("conv":"g:team","seq":1)"},
      {Op::kConvs, "convs", ""},
      {Op::kTyping, "typing", R"("to":"bob")"},
      {Op::kPresence, "presence", R"("status":"busy")"},
      {Op::kWatch, "watch", R"("users":["bob"])"},
      {Op::kUnwatch, "unwatch", R"("users":["bob"])"},
      {Op::kGroupCreate, "group_create", ""},
      {Op::kGroupAdd, "group_add", R"("group":"team","users":["bob"])"},
      {Op::kGroupRemove, "group_remove", R"("group":"team","users":["bob"])"},
      {Op::kGroupLeave, "group_leave", R"("group":"team")"},
      {Op::kGroupInfo, "group_info", R"("group":"team")"},
      {Op::kGroups, "groups", ""},
  };
  REQUIRE(ops.size() == 18);
  Decoder d;
  for (const OpCase& c : ops) {
    std::string json = "{\"op\":\"" + std::string(c.name) + "\",\"id\":5";
    if (!c.extra.empty()) json += "," + std::string(c.extra);
    json += "}";
    INFO(json);
    REQUIRE(d.Run(json));
    CHECK(d.req.op == c.op);
    CHECK(d.req.id == 5);
    CHECK(OpName(c.op) == c.name);
  }
}

TEST_CASE("input that is not one JSON object is bad_request without id", "[proto][request]") {
  CheckErrors({
      {"", "bad_request", -1, "invalid JSON"},
      {"   ", "bad_request", -1, "invalid JSON"},
      {"[]", "bad_request", -1, "must be a JSON object"},
      {R"([{"op":"ping","id":1}])", "bad_request", -1, "must be a JSON object"},
      {"5", "bad_request", -1, "must be a JSON object"},
      {R"("ping")", "bad_request", -1, "must be a JSON object"},
      {"null", "bad_request", -1, "must be a JSON object"},
      {"true", "bad_request", -1, "must be a JSON object"},
      {"{", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping")", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","id":1} x)", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping"} {"op":"ping"})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping"}})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping"}])", "bad_request", -1, "invalid JSON"},
  });
}

TEST_CASE("trailing content after an object echoes the id read before it", "[proto][request]") {
  CheckErrors({
      {R"({"id":4,"op":"ping"}})", "bad_request", 4, "content after the request object"},
      {R"({"id":4,"op":"ping"} {"id":5})", "bad_request", 4, "content after the request object"},
  });
}

TEST_CASE("malformed JSON anywhere is bad_request", "[proto][request]") {
  CheckErrors({
      {R"({"op":"ping",})", "bad_request", -1, "invalid JSON"},
      {R"({"op" "ping"})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping" "id":1})", "bad_request", -1, "invalid JSON"},
      {R"({op:"ping"})", "bad_request", -1, "invalid JSON"},
      {R"({"op":'ping'})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":tru})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":nul})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":nulll})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":[1,2,]})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":[1 2]})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":{"a":}})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":{"a" 1}})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":{1:2}})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":01})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":1.})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":-})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":1e})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":"\x"})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","x":"\ud800"})", "bad_request", -1, "invalid JSON"},
      {"{\"op\":\"ping\",\"x\":\"a\x01b\"}", "bad_request", -1, "invalid JSON"},
      {"{\"op\":\"ping\",\"x\":\"\xff\"}", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","\q":1})", "bad_request", -1, "invalid JSON"},
      {"{\"op\":\"ping\",\"a\x01\":1}", "bad_request", -1, "invalid JSON"},
      {"{\"op\":\"ping\",\"a\xc3\":1}", "bad_request", -1, "invalid JSON"},
      // Malformed values of known keys, whatever their expected type.
      {R"({"op":"ping","to":[1,}})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","limit":1.2.3})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","limit":"\x"})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","users":["a",tru]})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","users":{"a":}})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","meta":[}})", "bad_request", -1, "invalid JSON"},
      // The id is echoed when it was read before the error.
      {R"({"id":9,"op":"ping","x":tru})", "bad_request", 9, "invalid JSON"},
      {R"({"op":"ping","x":tru,"id":9})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","id":j9})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","id":9x})", "bad_request", -1, "invalid JSON"},
      {R"({"op":"ping","id":"\x"})", "bad_request", -1, "invalid JSON"},
      {R"({"id":j99999e3,})", "bad_request", -1, "invalid JSON"},
  });
}

TEST_CASE("unknown keys are ignored but validated", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"future":{"a":[1,{"b":null}],"c":"d\u00e9"},"op":"ping",)"
                R"("y":[true,false,null,1.5e3,-2,"s",[],{}],"z":123456789012345678901234567890,)"
                R"("id":3})"));
  CHECK(d.req.op == Op::kPing);
  CHECK(d.req.id == 3);
  REQUIRE(d.Run(R"({"op":"ping","x":1e308,"y":-1.5e-320})"));
  // Numbers that no double holds are refused rather than silently turned into infinity.
  REQUIRE_FALSE(d.Run(R"({"op":"ping","x":1e400})"));
  CHECK(d.error.code == "bad_request");
  // Keys of other ops are ignored whatever their type.
  REQUIRE(d.Run(R"({"op":"ping","to":5,"limit":"x","users":7,"meta":[],"conv":"bad"})"));
  CHECK(d.req.to.empty());
  CHECK(d.req.limit == -1);
  CHECK(d.req.users.empty());
  CHECK(d.req.meta_json.empty());
  CHECK(d.req.conv.empty());
}

TEST_CASE("fields of other ops are not copied into the request", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"ack","inbox":1,"to":"bob","users":["a"],"body":"x","conv":"g:t"})"));
  CHECK(d.req.inbox == 1);
  CHECK(d.req.to.empty());
  CHECK(d.req.users.empty());
  CHECK(d.req.body.empty());
  CHECK(d.req.conv.empty());
}

TEST_CASE("nesting is bounded at 64 levels", "[proto][request]") {
  Decoder d;
  auto nested = [](size_t levels) {
    // The root object is level 1; the value holds `levels - 1` nested arrays.
    return R"({"op":"ping","x":)" + Repeat("[", levels - 1) + Repeat("]", levels - 1) + "}";
  };
  CHECK(d.Run(nested(64)));
  REQUIRE_FALSE(d.Run(nested(65)));
  CHECK(d.error.code == "bad_request");
  CHECK(d.error.message.find("nested deeper than 64") != std::string::npos);

  // Very deep and unbalanced input is rejected without recursing through it.
  REQUIRE_FALSE(d.Run(R"({"op":"ping","x":)" + Repeat("[", 200000) + Repeat("]", 200000) + "}"));
  CHECK(d.error.code == "bad_request");
  REQUIRE_FALSE(
      d.Run(R"({"op":"ping","x":)" + Repeat("{\"a\":", 100000) + "1" + Repeat("}", 100000) + "}"));
  CHECK(d.error.code == "bad_request");
  REQUIRE_FALSE(d.Run(R"({"op":"ping","x":)" + Repeat("[", 100000) + "}"));
  CHECK(d.error.code == "bad_request");
  // Deep meta is treated the same way.
  REQUIRE_FALSE(d.Run(R"({"op":"send","to":"b","cmid":"c","meta":)" + Repeat("[", 1000) +
                      Repeat("]", 1000) + "}"));
  CHECK(d.error.code == "bad_request");
}

TEST_CASE("duplicate keys are bad_request", "[proto][request]") {
  std::string many_unique = R"({"op":"ping")";
  for (int i = 0; i < 40; ++i)
    many_unique += ",\"k" + std::to_string(i) + "\":" + std::to_string(i);
  const std::string many_dup = many_unique + R"(,"k17":0})";
  many_unique += "}";
  CheckErrors({
      {R"({"op":"ping","op":"ping"})", "bad_request", -1, "duplicate key \"op\""},
      {R"({"id":1,"op":"ping","x":1,"x":2})", "bad_request", 1, "duplicate key \"x\""},
      {R"({"op":"ping","x":1,"id":1,"x":2})", "bad_request", 1, "duplicate key \"x\""},
      {R"({"id":1,"id":1,"op":"ping"})", "bad_request", -1, "duplicate key \"id\""},
      {R"({"to":"a","id":1,"to":"b","id":1,"op":"ping"})", "bad_request", -1,
       "duplicate key \"to\""},
      {R"({"":1,"op":"ping","":2})", "bad_request", -1, "duplicate key \"\""},
      {R"({"id":1,"op":"send","to":"a","to":"b","cmid":"c","body":"x"})", "bad_request", 1,
       "duplicate key \"to\""},
      {R"({"op":"ping","\u006fp":"ping"})", "bad_request", -1, "duplicate key \"op\""},
      {many_dup, "bad_request", -1, "duplicate key \"k17\""},
  });
  Decoder d;
  CHECK(d.Run(many_unique));
}

TEST_CASE("id must be an integer in [0, 2^53)", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"ping","id":9007199254740991})"));
  CHECK(d.req.id == 9007199254740991);
  REQUIRE(d.Run(R"({"id":-0,"op":"ping"})"));
  CHECK(d.req.id == 0);
  const std::string_view msg = "id must be an integer";
  CheckErrors({
      {R"({"op":"ping","id":9007199254740992})", "bad_request", -1, msg},
      {R"({"op":"ping","id":9223372036854775807})", "bad_request", -1, msg},
      {R"({"op":"ping","id":18446744073709551615})", "bad_request", -1, msg},
      {R"({"op":"ping","id":1844674407370955161500})", "bad_request", -1, msg},
      {R"({"op":"ping","id":1.0})", "bad_request", -1, msg},
      {R"({"op":"ping","id":1e2})", "bad_request", -1, msg},
      {R"({"op":"ping","id":-1})", "bad_request", -1, msg},
      {R"({"op":"ping","id":"1"})", "bad_request", -1, msg},
      {R"({"op":"ping","id":null})", "bad_request", -1, msg},
      {R"({"op":"ping","id":[1]})", "bad_request", -1, msg},
      // An invalid id makes every other error id-less too.
      {R"({"op":"nope","id":1.5})", "bad_request", -1, msg},
  });
}

TEST_CASE("op must be present, a string and known; the id is echoed", "[proto][request]") {
  CheckErrors({
      {"{}", "bad_request", -1, "missing op"},
      {R"({"id":3})", "bad_request", 3, "missing op"},
      {R"({"op":"nope","id":7})", "bad_request", 7, "unknown op \"nope\""},
      {R"({"id":7,"op":"nope"})", "bad_request", 7, "unknown op \"nope\""},
      {R"({"op":"PING","id":7})", "bad_request", 7, "unknown op"},
      {R"({"op":"","id":7})", "bad_request", 7, "unknown op"},
      {R"({"op":5,"id":7})", "bad_request", 7, "op must be a string"},
      {R"({"op":null})", "bad_request", -1, "op must be a string"},
      {R"({"op":["ping"],"id":2})", "bad_request", 2, "op must be a string"},
  });
  // Long names are cut for the message, never inside a UTF-8 sequence.
  {
    Decoder d;
    std::string long_op;
    for (int i = 0; i < 40; ++i) long_op += "\xc3\xa9";  // 80 bytes
    REQUIRE_FALSE(d.Run(R"({"id":1,"op":"x)" + long_op + "\"}"));
    CHECK(d.error.id == 1);
    CHECK(simdjson::validate_utf8(d.error.message.data(), d.error.message.size()));
    CHECK(d.error.message == "unknown op \"x" + long_op.substr(0, 62) + "\"");
  }
  // Escapes in the op name are decoded before lookup.
  Decoder d;
  REQUIRE(d.Run(R"({"op":"p\u0069ng"})"));
  CHECK(d.req.op == Op::kPing);
}

TEST_CASE("hello", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"hello","id":1,"token":"a.b.c","device":"phone"})"));
  CHECK(d.req.op == Op::kHello);
  CHECK(d.req.token == "a.b.c");
  CHECK(d.req.user.empty());
  CHECK(d.req.device == "phone");
  REQUIRE(d.Run(R"({"op":"hello","user":"alice"})"));
  CHECK(d.req.user == "alice");
  CHECK(d.req.token.empty());
  CHECK(d.req.device.empty());
  REQUIRE(d.Run(R"({"op":"hello","user":"alice","token":"t"})"));
  CHECK(d.req.user == "alice");
  CHECK(d.req.token == "t");
  const std::string id64(64, 'a');
  REQUIRE(d.Run(R"({"op":"hello","user":")" + id64 + "\"}"));
  CHECK(d.req.user == id64);
  REQUIRE(d.Run(R"({"op":"hello","user":"A-z_0.9@x"})"));

  CheckErrors({
      {R"({"op":"hello","id":1})", "bad_request", 1, "hello needs token or user"},
      {R"({"op":"hello","id":1,"device":"d"})", "bad_request", 1, "hello needs token or user"},
      {R"({"op":"hello","id":1,"user":"al ice"})", "bad_request", 1, "user must be 1-64 bytes"},
      {R"({"op":"hello","id":1,"user":""})", "bad_request", 1, "user must be 1-64 bytes"},
      {R"({"op":"hello","id":1,"user":")" + std::string(65, 'a') + "\"}", "bad_request", 1,
       "user must be 1-64 bytes"},
      {R"({"op":"hello","id":1,"user":"a:b"})", "bad_request", 1, "user must be"},
      {R"({"op":"hello","id":1,"user":"caf\u00e9"})", "bad_request", 1, "user must be"},
      {R"({"op":"hello","id":1,"user":5})", "bad_request", 1, "user must be"},
      {R"({"op":"hello","id":1,"user":"a","device":"x y"})", "bad_request", 1,
       "device must be 1-64 bytes"},
      {R"({"op":"hello","id":1,"user":"a","device":7})", "bad_request", 1, "device must be"},
      {R"({"op":"hello","id":1,"token":""})", "bad_request", 1, "token must be a non-empty"},
      {R"({"op":"hello","id":1,"token":5})", "bad_request", 1, "token must be a non-empty"},
      {R"({"op":"hello","token":null})", "bad_request", -1, "token must be a non-empty"},
  });
}

TEST_CASE("send: happy paths", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"send","id":2,"to":"bob","cmid":"c-81","body":"hi"})"));
  CHECK(d.req.op == Op::kSend);
  CHECK(d.req.id == 2);
  CHECK(d.req.to == "bob");
  CHECK(d.req.group.empty());
  CHECK(d.req.cmid == "c-81");
  CHECK(d.req.body == "hi");
  CHECK(d.req.meta_json.empty());

  REQUIRE(d.Run(R"({"op":"send","group":"team","cmid":"c-82","body":"hello all"})"));
  CHECK(d.req.group == "team");
  CHECK(d.req.to.empty());
  CHECK(d.req.id == -1);

  // Meta is captured as its raw text; body may be empty with meta, but not absent.
  REQUIRE(d.Run(R"({"op":"send","to":"bob","cmid":"c","body":"hi","meta":{"reply_to":16}})"));
  CHECK(d.req.meta_json == R"({"reply_to":16})");
  REQUIRE_FALSE(d.Run(R"({"op":"send","to":"bob","cmid":"c","meta":{"k":1}})"));
  CHECK(d.error.code == "bad_request");
  CHECK(d.error.message.find("missing body") != std::string::npos);
  REQUIRE(d.Run(R"({"op":"send","to":"bob","cmid":"c","body":"","meta":{"k":1}})"));
  CHECK(d.req.body.empty());
  CHECK(d.req.meta_json == R"({"k":1})");
  REQUIRE(d.Run(R"({"op":"send","to":"bob","cmid":"c","body":"","meta":{}})"));
  CHECK(d.req.meta_json == "{}");
}

TEST_CASE("send: strings are unescaped", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"send","to":"bob","cmid":"c","body":"caf\u00e9"})"));
  CHECK(d.req.body == "caf\xc3\xa9");
  REQUIRE(d.Run(R"({"op":"send","to":"bob","cmid":"c","body":"q\"b\\s\/n\nt\tr\r\b\f"})"));
  CHECK(d.req.body == "q\"b\\s/n\nt\tr\r\b\f");
  REQUIRE(d.Run(R"({"op":"send","to":"bob","cmid":"c","body":"\ud83d\ude00 \u0000x"})"));
  CHECK(d.req.body == std::string("\xf0\x9f\x98\x80 \0x", 7));
  REQUIRE(d.Run("{\"op\":\"send\",\"to\":\"bob\",\"cmid\":\"c\",\"body\":\"\xe2\x82\xac raw\"}"));
  CHECK(d.req.body == "\xe2\x82\xac raw");
  // Escaped ids are decoded before they are checked.
  REQUIRE(d.Run(R"({"op":"send","to":"b\u006fb","cmid":"c","body":"x"})"));
  CHECK(d.req.to == "bob");
}

TEST_CASE("send: meta raw capture", "[proto][request]") {
  Decoder d;
  // Whitespace inside the object is kept verbatim; whitespace around it is not part of it.
  REQUIRE(d.Run(R"({"op":"send","to":"b","cmid":"c","meta":  { "a" : [1, 2] } ,"body":"x"})"));
  CHECK(d.req.meta_json == R"({ "a" : [1, 2] })");
  REQUIRE(
      d.Run("{\"op\":\"send\",\"to\":\"b\",\"cmid\":\"c\",\"body\":\"\",\"meta\":{\"a\":1}\n\t }"));
  CHECK(d.req.meta_json == R"({"a":1})");
  // Braces and quotes inside strings do not end it.
  REQUIRE(
      d.Run(R"({"op":"send","to":"b","cmid":"c","body":"","meta":{"s":"}\"{","t":[{"u":{}}]}})"));
  CHECK(d.req.meta_json == R"({"s":"}\"{","t":[{"u":{}}]})");
  // Escapes stay escaped (delivered verbatim).
  REQUIRE(d.Run(R"({"op":"send","to":"b","cmid":"c","meta":{"e":"caf\u00e9"},"body":""})"));
  CHECK(d.req.meta_json == R"({"e":"caf\u00e9"})");
}

TEST_CASE("send: errors", "[proto][request]") {
  CheckErrors({
      {R"({"op":"send","id":2,"cmid":"c","body":"x"})", "bad_request", 2,
       "exactly one of to/group"},
      {R"({"op":"send","id":2,"to":"a","group":"g","cmid":"c","body":"x"})", "bad_request", 2,
       "exactly one of to/group"},
      {R"({"op":"send","id":2,"to":"a b","cmid":"c","body":"x"})", "bad_request", 2,
       "to must be 1-64 bytes of [A-Za-z0-9_.@-]"},
      {R"({"op":"send","id":2,"to":5,"cmid":"c","body":"x"})", "bad_request", 2, "to must be"},
      {R"({"op":"send","id":2,"group":"","cmid":"c","body":"x"})", "bad_request", 2,
       "group must be"},
      {R"({"op":"send","id":2,"to":"a","body":"x"})", "bad_request", 2, "missing cmid"},
      {R"({"op":"send","id":2,"to":"a","cmid":"c 1","body":"x"})", "bad_request", 2,
       "cmid must be 1-64 bytes of [A-Za-z0-9_.@-]"},
      {R"({"op":"send","id":2,"to":"a","cmid":")" + std::string(65, 'c') + R"(","body":"x"})",
       "bad_request", 2, "cmid must be"},
      {R"({"op":"send","id":2,"to":"a","cmid":""})", "bad_request", 2, "cmid must be"},
      {R"({"op":"send","id":2,"to":"a","cmid":"c"})", "bad_request", 2, "missing body"},
      {R"({"op":"send","id":2,"to":"a","cmid":"c","body":""})", "bad_request", 2,
       "body must be a non-empty string unless meta is present"},
      {R"({"op":"send","id":2,"to":"a","cmid":"c","body":5})", "bad_request", 2,
       "body must be a string"},
      {R"({"op":"send","id":2,"to":"a","cmid":"c","body":null,"meta":{}})", "bad_request", 2,
       "body must be a string"},
      {R"({"op":"send","id":2,"to":"a","cmid":"c","body":"x","meta":[1]})", "bad_request", 2,
       "meta must be a JSON object"},
      {R"({"op":"send","id":2,"to":"a","cmid":"c","body":"x","meta":"{}"})", "bad_request", 2,
       "meta must be a JSON object"},
      {R"({"op":"send","id":2,"to":"a","cmid":"c","body":"x","meta":null})", "bad_request", 2,
       "meta must be a JSON object"},
      {R"({"op":"send","id":2,"to":"a","cmid":"c","body":"x","meta":7})", "bad_request", 2,
       "meta must be a JSON object"},
      {R"({"op":"send","id":2,"to":"a","cmid":"c","body":"x","meta":{"a":tru}})", "bad_request", 2,
       "invalid JSON"},
  });
}

TEST_CASE("send: body and meta size limits", "[proto][request]") {
  DecodeLimits limits;
  limits.max_body_bytes = 10;
  limits.max_meta_bytes = 12;
  Decoder d;
  auto send = [](std::string_view body_json, std::string_view meta_json) {
    std::string s = R"({"op":"send","id":6,"to":"bob","cmid":"c","body":)";
    s.append(body_json);
    if (!meta_json.empty()) s.append(",\"meta\":").append(meta_json);
    return s + "}";
  };
  REQUIRE(d.Run(send("\"0123456789\"", ""), limits));
  CHECK(d.req.body.size() == 10);
  // The limit applies to the unescaped bytes: 5 x "\u00e9" is 30 bytes escaped, 10 decoded.
  REQUIRE(d.Run(send(R"("\u00e9\u00e9\u00e9\u00e9\u00e9")", ""), limits));
  CHECK(d.req.body.size() == 10);
  REQUIRE(d.Run(send("\"\"", R"({"ab":12345})"), limits));  // 12 bytes
  CHECK(d.req.meta_json.size() == 12);
  CheckErrors(
      {
          {send("\"0123456789a\"", ""), "too_large", 6, "body exceeds 10 bytes"},
          {send(R"("\u00e9\u00e9\u00e9\u00e9\u00e9a")", ""), "too_large", 6, "body exceeds"},
          {send("\"\"", R"({"abc":12345})"), "too_large", 6, "meta exceeds 12 bytes"},
          {send("\"x\"", R"({ "ab":12345})"), "too_large", 6, "meta exceeds"},
      },
      limits);
  // Defaults: 16384 / 4096.
  REQUIRE(d.Run(send("\"" + std::string(16384, 'x') + "\"", "")));
  REQUIRE_FALSE(d.Run(send("\"" + std::string(16385, 'x') + "\"", "")));
  CHECK(d.error.code == "too_large");
  const std::string meta4096 = R"({"k":")" + std::string(4096 - 8, 'm') + "\"}";
  REQUIRE(meta4096.size() == 4096);
  REQUIRE(d.Run(send("\"\"", meta4096)));
  REQUIRE_FALSE(d.Run(send("\"\"", R"({"k":")" + std::string(4096 - 7, 'm') + "\"}")));
  CHECK(d.error.code == "too_large");
}

TEST_CASE("key order does not matter", "[proto][request]") {
  std::vector<std::string> fields = {R"("op":"send")", R"("id":11)",      R"("to":"bob")",
                                     R"("cmid":"c9")", R"("body":"hey")", R"("meta":{"x":[1,2]})"};
  std::sort(fields.begin(), fields.end());
  Decoder d;
  int permutations = 0;
  do {
    std::string json = "{";
    for (size_t i = 0; i < fields.size(); ++i) json += (i ? "," : "") + fields[i];
    json += "}";
    INFO(json);
    REQUIRE(d.Run(json));
    CHECK(d.req.op == Op::kSend);
    CHECK(d.req.id == 11);
    CHECK(d.req.to == "bob");
    CHECK(d.req.cmid == "c9");
    CHECK(d.req.body == "hey");
    CHECK(d.req.meta_json == R"({"x":[1,2]})");
    ++permutations;
  } while (std::next_permutation(fields.begin(), fields.end()));
  CHECK(permutations == 720);
}

TEST_CASE("ack", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"ack","inbox":58})"));
  CHECK(d.req.op == Op::kAck);
  CHECK(d.req.inbox == 58);
  REQUIRE(d.Run(R"({"op":"ack","inbox":0})"));
  CHECK(d.req.inbox == 0);
  REQUIRE(d.Run(R"({"op":"ack","inbox":9007199254740991})"));
  CHECK(d.req.inbox == 9007199254740991);
  const std::string_view msg = "inbox must be an integer >= 0 and below 2^53";
  CheckErrors({
      {R"({"op":"ack","id":1})", "bad_request", 1, "missing inbox"},
      {R"({"op":"ack","id":1,"inbox":-1})", "bad_request", 1, msg},
      {R"({"op":"ack","id":1,"inbox":1.5})", "bad_request", 1, msg},
      {R"({"op":"ack","id":1,"inbox":2.0})", "bad_request", 1, msg},
      {R"({"op":"ack","id":1,"inbox":"5"})", "bad_request", 1, msg},
      {R"({"op":"ack","id":1,"inbox":9007199254740992})", "bad_request", 1, msg},
      {R"({"op":"ack","id":1,"inbox":-9007199254740992})", "bad_request", 1, msg},
      {R"({"op":"ack","id":1,"inbox":true})", "bad_request", 1, msg},
  });
}

TEST_CASE("sync: defaults, bounds and clamping", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"sync","id":3})"));
  CHECK(d.req.op == Op::kSync);
  CHECK(d.req.since == -1);
  CHECK(d.req.limit == -1);
  REQUIRE(d.Run(R"({"op":"sync","id":3,"since":50,"limit":500})"));
  CHECK(d.req.since == 50);
  CHECK(d.req.limit == 500);
  REQUIRE(d.Run(R"({"op":"sync","since":0,"limit":1})"));
  CHECK(d.req.since == 0);
  CHECK(d.req.limit == 1);
  REQUIRE(d.Run(R"({"op":"sync","limit":1000})"));
  CHECK(d.req.limit == 1000);
  REQUIRE(d.Run(R"({"op":"sync","limit":1001})"));
  CHECK(d.req.limit == 1000);
  REQUIRE(d.Run(R"({"op":"sync","limit":9007199254740991})"));
  CHECK(d.req.limit == 1000);
  CheckErrors({
      {R"({"op":"sync","id":3,"since":-1})", "bad_request", 3, "since must be an integer >= 0"},
      {R"({"op":"sync","id":3,"since":"1"})", "bad_request", 3, "since must be"},
      {R"({"op":"sync","id":3,"limit":0})", "bad_request", 3, "limit must be an integer >= 1"},
      {R"({"op":"sync","id":3,"limit":-5})", "bad_request", 3, "limit must be"},
      {R"({"op":"sync","id":3,"limit":10.5})", "bad_request", 3, "limit must be"},
      {R"({"op":"sync","id":3,"limit":9007199254740992})", "bad_request", 3, "limit must be"},
  });
}

TEST_CASE("history", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"history","id":4,"conv":"g:team","before":100,"limit":50})"));
  CHECK(d.req.op == Op::kHistory);
  CHECK(d.req.conv == "g:team");
  CHECK(d.req.before == 100);
  CHECK(d.req.limit == 50);
  REQUIRE(d.Run(R"({"op":"history","conv":"d:alice:bob"})"));
  CHECK(d.req.conv == "d:alice:bob");
  CHECK(d.req.before == -1);
  CHECK(d.req.limit == -1);
  REQUIRE(d.Run(R"({"op":"history","conv":"d:alice:alice","before":1,"limit":201})"));
  CHECK(d.req.limit == 200);
  CHECK(d.req.before == 1);
  REQUIRE(d.Run(R"({"op":"history","conv":"d:Bob:alice"})"));  // 'B' < 'a' bytewise
  CheckErrors({
      {R"({"op":"history","id":4})", "bad_request", 4, "missing conv"},
      {R"({"op":"history","id":4,"conv":"d:bob:alice"})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":"d:alice:Bob"})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":"d:alice"})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":"d:a:b:c"})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":"d::b"})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":"d:a:"})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":"g:"})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":"g:te am"})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":"g:a:b"})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":"x:team"})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":"team"})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":""})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":7})", "bad_request", 4, kNotCanonical},
      {R"({"op":"history","id":4,"conv":"g:t","before":0})", "bad_request", 4,
       "before must be an integer >= 1"},
      {R"({"op":"history","id":4,"conv":"g:t","limit":0})", "bad_request", 4,
       "limit must be an integer >= 1"},
  });
}

TEST_CASE("read", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"read","conv":"d:alice:bob","seq":17})"));
  CHECK(d.req.op == Op::kRead);
  CHECK(d.req.conv == "d:alice:bob");
  CHECK(d.req.seq == 17);
  REQUIRE(d.Run(R"({"op":"read","conv":"g:t","seq":0})"));
  CHECK(d.req.seq == 0);
  CheckErrors({
      {R"({"op":"read","id":1,"seq":1})", "bad_request", 1, "missing conv"},
      {R"({"op":"read","id":1,"conv":"d:b:a","seq":1})", "bad_request", 1, kNotCanonical},
      {R"({"op":"read","id":1,"conv":"g:t"})", "bad_request", 1, "missing seq"},
      {R"({"op":"read","id":1,"conv":"g:t","seq":-1})", "bad_request", 1,
       "seq must be an integer >= 0"},
      {R"({"op":"read","id":1,"conv":"g:t","seq":1e3})", "bad_request", 1, "seq must be"},
  });
}

TEST_CASE("convs", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"convs","id":7,"limit":100})"));
  CHECK(d.req.op == Op::kConvs);
  CHECK(d.req.limit == 100);
  REQUIRE(d.Run(R"({"op":"convs"})"));
  CHECK(d.req.limit == -1);
  REQUIRE(d.Run(R"({"op":"convs","limit":5000})"));
  CHECK(d.req.limit == 1000);
  CheckErrors({
      {R"({"op":"convs","id":7,"limit":0})", "bad_request", 7, "limit must be"},
      {R"({"op":"convs","id":7,"limit":"10"})", "bad_request", 7, "limit must be"},
  });
}

TEST_CASE("typing", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"typing","to":"bob"})"));
  CHECK(d.req.op == Op::kTyping);
  CHECK(d.req.to == "bob");
  REQUIRE(d.Run(R"({"op":"typing","group":"team"})"));
  CHECK(d.req.group == "team");
  CheckErrors({
      {R"({"op":"typing"})", "bad_request", -1, "exactly one of to/group"},
      {R"({"op":"typing","id":2,"to":"a","group":"b"})", "bad_request", 2, "exactly one"},
      {R"({"op":"typing","id":2,"group":"t!"})", "bad_request", 2, "group must be"},
  });
}

TEST_CASE("presence", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"presence","id":5,"status":"busy"})"));
  CHECK(d.req.op == Op::kPresence);
  CHECK(d.req.status == "busy");
  REQUIRE(d.Run(R"({"op":"presence","status":"online"})"));
  CHECK(d.req.status == "online");
  const std::string_view msg = "status must be \"online\" or \"busy\"";
  CheckErrors({
      {R"({"op":"presence","id":5})", "bad_request", 5, msg},
      {R"({"op":"presence","id":5,"status":"offline"})", "bad_request", 5, msg},
      {R"({"op":"presence","id":5,"status":"Busy"})", "bad_request", 5, msg},
      {R"({"op":"presence","id":5,"status":1})", "bad_request", 5, msg},
  });
}

TEST_CASE("watch and unwatch", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"watch","id":6,"users":["bob","carol"]})"));
  CHECK(d.req.op == Op::kWatch);
  REQUIRE(d.req.users.size() == 2);
  CHECK(d.req.users[0] == "bob");
  CHECK(d.req.users[1] == "carol");
  REQUIRE(d.Run(R"({"op":"unwatch","users":["carol"]})"));
  CHECK(d.req.op == Op::kUnwatch);
  REQUIRE(d.req.users.size() == 1);
  CHECK(d.req.users[0] == "carol");
  // More than the inline capacity, in order, escapes decoded.
  REQUIRE(d.Run(R"({"op":"watch","users":["u0","u1","u2","u3","u4","u5","u\u0036"]})"));
  REQUIRE(d.req.users.size() == 7);
  for (size_t i = 0; i < 7; ++i) CHECK(d.req.users[i] == "u" + std::to_string(i));

  DecodeLimits limits;
  limits.max_users_per_request = 3;
  REQUIRE(d.Run(R"({"op":"watch","users":["a","b","c"]})", limits));
  CHECK(d.req.users.size() == 3);
  CheckErrors({
      {R"({"op":"watch","id":6})", "bad_request", 6, "missing users"},
      {R"({"op":"watch","id":6,"users":[]})", "bad_request", 6, "users must not be empty"},
      {R"({"op":"watch","id":6,"users":"bob"})", "bad_request", 6, "users must be an array"},
      {R"({"op":"watch","id":6,"users":{"a":"bob"}})", "bad_request", 6, "users must be an array"},
      {R"({"op":"watch","id":6,"users":["a","b c"]})", "bad_request", 6,
       "users[1] must be 1-64 bytes of [A-Za-z0-9_.@-]"},
      {R"({"op":"watch","id":6,"users":["a",7,"c"]})", "bad_request", 6, "users[1] must be"},
      {R"({"op":"watch","id":6,"users":[["a"]]})", "bad_request", 6, "users[0] must be"},
      {R"({"op":"unwatch","id":6,"users":[""]})", "bad_request", 6, "users[0] must be"},
  });
  CheckErrors({{R"({"op":"watch","id":6,"users":["a","b","c","d"]})", "too_large", 6,
                "users has more than 3 entries"},
               {R"({"op":"unwatch","users":["a","b","c","d","e","f"]})", "too_large", -1,
                "users has more than 3"}},
              limits);
}

TEST_CASE("group_create", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(
      R"({"op":"group_create","id":8,"group":"team","name":"Team","members":["bob","carol"]})"));
  CHECK(d.req.op == Op::kGroupCreate);
  CHECK(d.req.group == "team");
  CHECK(d.req.name == "Team");
  REQUIRE(d.req.users.size() == 2);
  CHECK(d.req.users[0] == "bob");
  CHECK(d.req.users[1] == "carol");
  REQUIRE(d.Run(R"({"op":"group_create"})"));
  CHECK(d.req.group.empty());
  CHECK(d.req.name.empty());
  CHECK(d.req.users.empty());
  REQUIRE(d.Run(R"({"op":"group_create","members":[],"name":""})"));
  CHECK(d.req.users.empty());
  // "users" is not group_create's list.
  REQUIRE(d.Run(R"({"op":"group_create","users":["x"]})"));
  CHECK(d.req.users.empty());
  const std::string name128(128, 'n');
  REQUIRE(d.Run(R"({"op":"group_create","name":")" + name128 + "\"}"));
  CHECK(d.req.name == name128);
  REQUIRE(d.Run(R"({"op":"group_create","name":"Caf\u00e9 \"Team\""})"));
  CHECK(d.req.name == "Caf\xc3\xa9 \"Team\"");

  DecodeLimits limits;
  limits.max_users_per_request = 2;
  CheckErrors({
      {R"({"op":"group_create","id":8,"group":"te am"})", "bad_request", 8, "group must be"},
      {R"({"op":"group_create","id":8,"name":")" + std::string(129, 'n') + "\"}", "bad_request", 8,
       "name must be a string of at most 128 bytes"},
      {R"({"op":"group_create","id":8,"name":5})", "bad_request", 8, "name must be a string"},
      {R"({"op":"group_create","id":8,"members":"bob"})", "bad_request", 8,
       "members must be an array of ids"},
      {R"({"op":"group_create","id":8,"members":["bob",""]})", "bad_request", 8,
       "members[1] must be"},
  });
  CheckErrors({{R"({"op":"group_create","id":8,"members":["a","b","c"]})", "too_large", 8,
                "members has more than 2 entries"}},
              limits);
}

TEST_CASE("group_add, group_remove, group_leave, group_info, groups", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"group_add","id":9,"group":"team","users":["dave"]})"));
  CHECK(d.req.op == Op::kGroupAdd);
  CHECK(d.req.group == "team");
  REQUIRE(d.req.users.size() == 1);
  CHECK(d.req.users[0] == "dave");
  REQUIRE(d.Run(R"({"op":"group_remove","id":10,"group":"team","users":["carol","x"]})"));
  CHECK(d.req.op == Op::kGroupRemove);
  CHECK(d.req.users.size() == 2);
  REQUIRE(d.Run(R"({"op":"group_leave","id":11,"group":"team"})"));
  CHECK(d.req.op == Op::kGroupLeave);
  CHECK(d.req.group == "team");
  REQUIRE(d.Run(R"({"op":"group_info","id":12,"group":"team"})"));
  CHECK(d.req.op == Op::kGroupInfo);
  CHECK(d.req.group == "team");
  REQUIRE(d.Run(R"({"op":"groups","id":13})"));
  CHECK(d.req.op == Op::kGroups);
  CHECK(d.req.id == 13);
  CheckErrors({
      {R"({"op":"group_add","id":9,"users":["a"]})", "bad_request", 9, "missing group"},
      {R"({"op":"group_add","id":9,"group":"t"})", "bad_request", 9, "missing users"},
      {R"({"op":"group_add","id":9,"group":"t","users":[]})", "bad_request", 9,
       "must not be empty"},
      {R"({"op":"group_add","id":9,"group":"t","members":["a"]})", "bad_request", 9,
       "missing users"},
      {R"({"op":"group_remove","id":10,"group":"t","users":["a b"]})", "bad_request", 10,
       "users[0] must be"},
      {R"({"op":"group_remove","id":10,"group":5,"users":["a"]})", "bad_request", 10,
       "group must be"},
      {R"({"op":"group_leave","id":11})", "bad_request", 11, "missing group"},
      {R"({"op":"group_info","id":12,"group":"g:team"})", "bad_request", 12, "group must be"},
  });
}

TEST_CASE("a parser is reused across requests and after errors", "[proto][request]") {
  simdjson::ondemand::parser parser;
  Request req;
  DecodeError error;
  simdjson::padded_string a(std::string_view(R"({"op":"watch","users":["a","b","c","d","e"]})"));
  REQUIRE(DecodeRequest(parser, a, {}, &req, &error));
  CHECK(req.users.size() == 5);
  simdjson::padded_string bad(std::string_view(R"({"op":"send","to":)"));
  REQUIRE_FALSE(DecodeRequest(parser, bad, {}, &req, &error));
  simdjson::padded_string b(std::string_view(R"({"op":"send","to":"x","cmid":"y","body":"z"})"));
  REQUIRE(DecodeRequest(parser, b, {}, &req, &error));
  CHECK(req.users.empty());  // nothing left over from the first request
  CHECK(req.to == "x");
  CHECK(req.body == "z");
  // A larger document after a small one.
  const std::string big =
      R"({"op":"send","to":"x","cmid":"y","body":")" + std::string(10000, 'b') + "\"}";
  simdjson::padded_string c(big);
  REQUIRE(DecodeRequest(parser, c, {}, &req, &error));
  CHECK(req.body.size() == 10000);
}

TEST_CASE("conversation ids", "[proto][request]") {
  CHECK(DirectConvId("bob", "alice") == "d:alice:bob");
  CHECK(DirectConvId("alice", "bob") == "d:alice:bob");
  CHECK(DirectConvId("alice", "alice") == "d:alice:alice");
  CHECK(DirectConvId("a", "B") == "d:B:a");  // bytewise: uppercase sorts first
  CHECK(DirectConvId("ab", "a") == "d:a:ab");
  CHECK(GroupConvId("team") == "g:team");

  ConvRef ref;
  REQUIRE(ParseConvId("d:alice:bob", &ref));
  CHECK_FALSE(ref.is_group);
  CHECK(ref.a == "alice");
  CHECK(ref.b == "bob");
  REQUIRE(ParseConvId("d:x:x", &ref));
  CHECK(ref.a == "x");
  CHECK(ref.b == "x");
  REQUIRE(ParseConvId("g:team", &ref));
  CHECK(ref.is_group);
  CHECK(ref.group == "team");
  CHECK(ref.a.empty());
  const std::string zed = DirectConvId("zed", "Zed");
  REQUIRE(ParseConvId(zed, &ref));
  CHECK(ref.a == "Zed");

  const std::string id65(65, 'a');
  for (std::string bad : {"", "d", "d:", "d:a", "d:a:", "d::a", "d:b:a", "d:a:b:c", "D:a:b",
                          "g:", "g", "g:a:b", "g:a b", "x:a", "da:b", "d-a:b", "gteam"}) {
    INFO(bad);
    CHECK_FALSE(ParseConvId(bad, &ref));
  }
  CHECK_FALSE(ParseConvId("g:" + id65, &ref));
  CHECK_FALSE(ParseConvId("d:a:" + id65, &ref));
  CHECK(ParseConvId("g:" + std::string(64, 'a'), &ref));
}

TEST_CASE("the admin API's send: op optional, from required", "[proto][request]") {
  simdjson::ondemand::parser parser;
  Request req;
  DecodeError error;
  auto decode = [&](std::string_view json) {
    simdjson::padded_string input(json);
    error = DecodeError{};
    const bool ok = DecodeAdminSend(parser, input, {}, &req, &error);
    // Copy what the views point at before the input goes away.
    return std::make_pair(ok, ok ? std::string(req.from) + "|" + std::string(req.to) + "|" +
                                       std::string(req.cmid) + "|" + std::string(req.body)
                                 : std::string(error.code) + ":" + error.message);
  };
  CHECK(decode(R"({"from":"system","to":"bob","cmid":"c1","body":"hi"})") ==
        std::make_pair(true, std::string("system|bob|c1|hi")));
  CHECK(decode(R"({"op":"send","from":"system","to":"bob","cmid":"c1","body":"hi"})") ==
        std::make_pair(true, std::string("system|bob|c1|hi")));
  CHECK(req.op == Op::kSend);
  // A group target and meta, as for a client.
  REQUIRE(decode(R"({"from":"s","group":"g1","cmid":"c2","body":"","meta":{"k":[1]}})").first);
  CHECK(req.group == "g1");
  CHECK(req.meta_json == R"({"k":[1]})");

  struct Case {
    std::string_view json, code, message_part;
  };
  for (const Case& c : std::vector<Case>{
           {R"({"to":"bob","cmid":"c","body":"x"})", "bad_request", "missing from"},
           {R"({"from":"a b","to":"bob","cmid":"c","body":"x"})", "bad_request", "from must be"},
           {R"({"from":7,"to":"bob","cmid":"c","body":"x"})", "bad_request", "from must be"},
           {R"({"op":"ping","from":"s","to":"bob","cmid":"c","body":"x"})", "bad_request",
            "op must be \"send\" (or left out)"},
           {R"({"op":"nope","from":"s","to":"bob","cmid":"c","body":"x"})", "bad_request",
            "op must be \"send\""},
           {R"({"op":1,"from":"s","to":"bob","cmid":"c","body":"x"})", "bad_request",
            "op must be \"send\""},
           {R"({"op":"send","op":"send","from":"s","to":"bob","cmid":"c","body":"x"})",
            "bad_request", "duplicate key \"op\""},
           {R"({"from":"s","from":"t","to":"bob","cmid":"c","body":"x"})", "bad_request",
            "duplicate key \"from\""},
           {R"({"from":"s","to":"bob","cmid":"c"})", "bad_request", "missing body"},
           {R"({"from":"s","to":"bob","group":"g","cmid":"c","body":"x"})", "bad_request",
            "exactly one of to/group"},
           {R"([1,2])", "bad_request", "must be a JSON object"},
           {R"({not json)", "bad_request", "invalid JSON"},
           {"", "bad_request", "invalid JSON"},
       }) {
    INFO("body: " << c.json);
    auto [ok, what] = decode(c.json);
    REQUIRE_FALSE(ok);
    INFO("error: " << what);
    CHECK(error.code == c.code);
    CHECK(what.find(c.message_part) != std::string::npos);
  }
  // The body limit applies as for a client.
  DecodeLimits small;
  small.max_body_bytes = 4;
  simdjson::padded_string big(
      std::string_view(R"({"from":"s","to":"bob","cmid":"c","body":"12345"})"));
  REQUIRE_FALSE(DecodeAdminSend(parser, big, small, &req, &error));
  CHECK(error.code == "too_large");
}

TEST_CASE("a client request may carry from; it is read and ignored", "[proto][request]") {
  Decoder d;
  REQUIRE(d.Run(R"({"op":"send","from":"mallory","to":"bob","cmid":"c","body":"x"})"));
  CHECK(d.req.op == Op::kSend);
  REQUIRE(d.Run(R"({"op":"ping","from":{"any":["thing"]}})"));
  CHECK(d.req.op == Op::kPing);
  REQUIRE_FALSE(d.Run(R"({"op":"ping","from":"a","from":"b"})"));
  CHECK(d.error.message.find("duplicate key") != std::string::npos);
}

#include <catch2/catch.hpp>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "parley/proto/frames.h"
#include "parley/proto/request.h"
#include "parley/util/json_writer.h"

using namespace parley::proto;

TEST_CASE("AppendError", "[proto][frames]") {
  std::string out;
  AppendError(&out, 7, "not_found", "no such group");
  CHECK(out == R"({"op":"error","id":7,"code":"not_found","message":"no such group"})");
  out.clear();
  AppendError(&out, -1, "bad_request", "x");
  CHECK(out == R"({"op":"error","code":"bad_request","message":"x"})");
  out.clear();
  AppendError(&out, 0, "bad_request", "x");
  CHECK(out == R"({"op":"error","id":0,"code":"bad_request","message":"x"})");
}

TEST_CASE("strings are escaped", "[proto][frames]") {
  std::string out;
  // Built with sv so the embedded NUL is part of the message.
  using namespace std::string_view_literals;
  AppendError(&out, 1, "bad_request",
              "say \"hi\"\\ /\n\r\t\b\f\x01\x1f\x7f caf\xc3\xa9 \xf0\x9f\x98\x80 \0end"sv);
  CHECK(out ==
        "{\"op\":\"error\",\"id\":1,\"code\":\"bad_request\",\"message\":\"say \\\"hi\\\"\\\\ "
        "/\\n\\r\\t\\b\\f\\u0001\\u001f\x7f caf\xc3\xa9 \xf0\x9f\x98\x80 \\u0000end\"}");
}

TEST_CASE("ok answers", "[proto][frames]") {
  std::string out;
  AppendOk(&out, 5);
  CHECK(out == R"({"op":"ok","id":5})");
  out.clear();
  AppendOk(&out, -1);
  CHECK(out == R"({"op":"ok"})");
  out.clear();
  AppendPingOk(&out, 3, 1764380000123);
  CHECK(out == R"({"op":"ok","id":3,"ts":1764380000123})");
  out.clear();

  HelloOk hello{.user = "alice",
                .device = "phone",
                .session = "s-1",
                .node = "n1",
                .inbox_seq = 57,
                .heartbeat_ms = 25000};
  AppendHelloOk(&out, 1, hello);
  CHECK(out == R"({"op":"ok","id":1,"user":"alice","device":"phone","session":"s-1",)"
               R"("inbox_seq":57,"heartbeat_ms":25000,"node":"n1","protocol":1})");
  out.clear();

  AppendSendOk(&out, 2, "d:alice:bob", 17, 1764380000123, false);
  CHECK(out ==
        R"({"op":"ok","id":2,"conv":"d:alice:bob","seq":17,"ts":1764380000123,"dup":false})");
  out.clear();
  AppendSendOk(&out, 2, "g:team", 1, 5, true);
  CHECK(out == R"({"op":"ok","id":2,"conv":"g:team","seq":1,"ts":5,"dup":true})");
}

TEST_CASE("encoders append to what is already there", "[proto][frames]") {
  std::string out = "prefix|";
  AppendOk(&out, 1);
  AppendTyping(&out, "g:t", "a");
  CHECK(out == R"(prefix|{"op":"ok","id":1}{"op":"typing","conv":"g:t","from":"a"})");
}

TEST_CASE("AppendMsg", "[proto][frames]") {
  MessageView m{.conv = "d:alice:bob",
                .seq = 17,
                .from = "alice",
                .cmid = "c-81",
                .ts = 1764380000123,
                .body = "hi",
                .meta_json = R"({"reply_to":16})"};
  std::string out;
  AppendMsg(&out, m, 58);
  CHECK(out == R"({"op":"msg","inbox":58,"conv":"d:alice:bob","seq":17,"from":"alice",)"
               R"("cmid":"c-81","ts":1764380000123,"body":"hi","meta":{"reply_to":16}})");
  out.clear();
  // History entries carry no inbox; no meta, no key.
  m.meta_json = {};
  m.body = "a \"quoted\"\nline";
  AppendMsg(&out, m, -1);
  CHECK(out == R"({"op":"msg","conv":"d:alice:bob","seq":17,"from":"alice","cmid":"c-81",)"
               R"("ts":1764380000123,"body":"a \"quoted\"\nline"})");
  out.clear();
  m.body = {};
  AppendMsg(&out, m, 0);
  CHECK(out == R"({"op":"msg","inbox":0,"conv":"d:alice:bob","seq":17,"from":"alice",)"
               R"("cmid":"c-81","ts":1764380000123,"body":""})");
}

TEST_CASE("events", "[proto][frames]") {
  std::string out;
  AppendReceipt(&out, "d:alice:bob", "bob", 17, 99);
  CHECK(out == R"({"op":"receipt","conv":"d:alice:bob","user":"bob","seq":17,"ts":99})");
  out.clear();
  AppendTyping(&out, "d:alice:bob", "alice");
  CHECK(out == R"({"op":"typing","conv":"d:alice:bob","from":"alice"})");
  out.clear();
  AppendPresence(&out, "bob", "offline", 0);
  CHECK(out == R"({"op":"presence","user":"bob","status":"offline","last_seen":0})");
  out.clear();

  const std::vector<std::string> users = {"alice", "bob", "carol"};
  AppendGroupEvent(&out, 59, "team", "created", users, "alice", 123);
  CHECK(out == R"({"op":"group","inbox":59,"group":"team","change":"created",)"
               R"("users":["alice","bob","carol"],"by":"alice","ts":123})");
  out.clear();
  AppendGroupEvent(&out, -1, "team", "left", std::span<const std::string>(users.data(), 1), "alice",
                   5);
  CHECK(out == R"({"op":"group","group":"team","change":"left","users":["alice"],"by":"alice",)"
               R"("ts":5})");
  out.clear();
  AppendGroupEvent(&out, 1, "t", "owner", {}, "x", 5);
  CHECK(out == R"({"op":"group","inbox":1,"group":"t","change":"owner","users":[],"by":"x",)"
               R"("ts":5})");
}

TEST_CASE("ListOkWriter", "[proto][frames]") {
  const std::pair<std::string_view, int64_t> inbox_seq[] = {{"inbox_seq", 58}};
  SECTION("no items") {
    std::string out;
    ListOkWriter w(&out, 3, "events");
    w.Finish(inbox_seq, true, false);
    CHECK(out == R"({"op":"ok","id":3,"events":[],"inbox_seq":58,"more":false})");
  }
  SECTION("one item") {
    std::string out;
    ListOkWriter w(&out, 4, "msgs");
    w.Item()->append(R"({"a":1})");
    w.Finish({}, true, true);
    CHECK(out == R"({"op":"ok","id":4,"msgs":[{"a":1}],"more":true})");
  }
  SECTION("three items from encoders, two ints, no more") {
    std::string out;
    ListOkWriter w(&out, 7, "events");
    MessageView m{
        .conv = "g:t", .seq = 1, .from = "a", .cmid = "c", .ts = 2, .body = "b", .meta_json = {}};
    AppendMsg(w.Item(), m, 10);
    AppendMsg(w.Item(), m, 11);
    AppendPresence(w.Item(), "u", "busy", 3);
    const std::pair<std::string_view, int64_t> ints[] = {{"inbox_seq", 11}, {"x", -2}};
    w.Finish(ints, false, true);
    CHECK(out ==
          R"({"op":"ok","id":7,"events":[)"
          R"({"op":"msg","inbox":10,"conv":"g:t","seq":1,"from":"a","cmid":"c","ts":2,"body":"b"},)"
          R"({"op":"msg","inbox":11,"conv":"g:t","seq":1,"from":"a","cmid":"c","ts":2,"body":"b"},)"
          R"({"op":"presence","user":"u","status":"busy","last_seen":3}],"inbox_seq":11,"x":-2})");
  }
  SECTION("no id") {
    std::string out = "[";
    ListOkWriter w(&out, -1, "groups");
    *w.Item() += R"({"group":"team","name":"Team"})";
    CHECK(w.out() == &out);
    w.Finish({}, false, false);
    CHECK(out == R"([{"op":"ok","groups":[{"group":"team","name":"Team"}]})");
  }
  SECTION("large integers") {
    std::string out;
    ListOkWriter w(&out, 9007199254740991, "l");
    const std::pair<std::string_view, int64_t> ints[] = {{"a", 0}, {"b", 9007199254740991}};
    w.Finish(ints, false, false);
    CHECK(out == R"({"op":"ok","id":9007199254740991,"l":[],"a":0,"b":9007199254740991})");
  }
}

namespace {

// Random valid UTF-8 weighted towards what needs escaping.
std::string RandomText(std::mt19937_64& rng) {
  std::string s;
  const size_t n = rng() % 40;
  for (size_t i = 0; i < n; ++i) {
    uint32_t cp;
    switch (rng() % 6) {
      case 0:
        cp = static_cast<uint32_t>(rng() % 0x20);
        break;  // control characters
      case 1:
        cp = "\"\\/{}[]:,"[rng() % 9];
        break;
      case 2:
        cp = 0x20 + static_cast<uint32_t>(rng() % 0x60);
        break;
      case 3:
        cp = 0x80 + static_cast<uint32_t>(rng() % 0x780);
        break;  // 2 bytes
      case 4:
        do cp = 0x800 + static_cast<uint32_t>(rng() % 0xF800);
        while (cp >= 0xD800 && cp <= 0xDFFF);  // 3 bytes, no surrogates
        break;
      default:
        cp = 0x10000 + static_cast<uint32_t>(rng() % 0x100000);
        break;  // 4 bytes
    }
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  return s;
}

std::string_view Str(simdjson::dom::element e) {
  return std::string_view(e.get_string());
}

}  // namespace

TEST_CASE("AppendMsg round-trips arbitrary strings through a JSON parser", "[proto][frames]") {
  std::mt19937_64 rng(20240601);
  simdjson::dom::parser dom;
  for (int iteration = 0; iteration < 2000; ++iteration) {
    const std::string conv = RandomText(rng), from = RandomText(rng), cmid = RandomText(rng),
                      body = RandomText(rng), meta_text = RandomText(rng);
    // The stored meta is JSON produced by some client; build it with the same escaper.
    std::string meta = R"({"s":)";
    parley::AppendJsonString(&meta, meta_text);
    meta += "}";
    const int64_t seq = static_cast<int64_t>(rng() % (uint64_t{1} << 53));
    const int64_t ts = static_cast<int64_t>(rng() % (uint64_t{1} << 53));
    const int64_t inbox = static_cast<int64_t>(rng() % 3) - 1;  // -1, 0 or 1
    MessageView m{.conv = conv,
                  .seq = seq,
                  .from = from,
                  .cmid = cmid,
                  .ts = ts,
                  .body = body,
                  .meta_json = iteration % 2 ? std::string_view(meta) : std::string_view()};
    std::string out;
    AppendMsg(&out, m, inbox);
    INFO(out);
    simdjson::dom::element doc;
    REQUIRE(dom.parse(out).get(doc) == simdjson::SUCCESS);
    CHECK(Str(doc["op"]) == "msg");
    CHECK(Str(doc["conv"]) == conv);
    CHECK(Str(doc["from"]) == from);
    CHECK(Str(doc["cmid"]) == cmid);
    CHECK(Str(doc["body"]) == body);
    CHECK(int64_t(doc["seq"]) == seq);
    CHECK(int64_t(doc["ts"]) == ts);
    if (inbox >= 0) {
      CHECK(int64_t(doc["inbox"]) == inbox);
    } else {
      CHECK(doc["inbox"].error() == simdjson::NO_SUCH_FIELD);
    }
    if (m.meta_json.empty()) {
      CHECK(doc["meta"].error() == simdjson::NO_SUCH_FIELD);
    } else {
      CHECK(Str(doc["meta"]["s"]) == meta_text);
    }
  }
}

TEST_CASE("a decoded send re-encodes as the same message", "[proto][frames]") {
  simdjson::ondemand::parser parser;
  simdjson::dom::parser dom;
  simdjson::padded_string in(std::string_view(
      R"({"op":"send","to":"bob","cmid":"c1","body":"caf\u00e9 \"x\"\n\ud83d\ude00",)"
      R"("meta":{ "reply_to" : 16, "t":"\u00e9" }})"));
  Request req;
  DecodeError error;
  REQUIRE(DecodeRequest(parser, in, {}, &req, &error));
  MessageView m{.conv = "d:alice:bob",
                .seq = 1,
                .from = "alice",
                .cmid = req.cmid,
                .ts = 2,
                .body = req.body,
                .meta_json = req.meta_json};
  std::string out;
  AppendMsg(&out, m, 3);
  simdjson::dom::element doc;
  REQUIRE(dom.parse(out).get(doc) == simdjson::SUCCESS);
  CHECK(Str(doc["body"]) == "caf\xc3\xa9 \"x\"\n\xf0\x9f\x98\x80");
  CHECK(Str(doc["cmid"]) == "c1");
  CHECK(int64_t(doc["meta"]["reply_to"]) == 16);
  CHECK(Str(doc["meta"]["t"]) == "\xc3\xa9");
}

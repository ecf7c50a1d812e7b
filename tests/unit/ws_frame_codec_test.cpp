#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "parley/ws/frame_codec.h"

using namespace parley::ws;

namespace {

constexpr uint8_t kFin = 0x80;
constexpr uint8_t kText = 0x1, kBinary = 0x2, kCont = 0x0, kClose = 0x8, kPing = 0x9, kPong = 0xA;

// Test-side client encoder, written from RFC 6455 section 5.2 without the library's helpers.
// len_form forces the length encoding: 0 = minimal, 7 / 16 / 64 = that form.
std::string ClientFrame(uint8_t b0, std::string_view payload, bool masked = true,
                        int len_form = 0) {
  std::string f;
  f += static_cast<char>(b0);
  const uint64_t n = payload.size();
  if (len_form == 0) len_form = n < 126 ? 7 : n <= 0xFFFF ? 16 : 64;
  const char mask_bit = masked ? static_cast<char>(0x80) : 0;
  if (len_form == 7) {
    f += static_cast<char>(mask_bit | static_cast<char>(n));
  } else if (len_form == 16) {
    f += static_cast<char>(mask_bit | 126);
    f += static_cast<char>(n >> 8);
    f += static_cast<char>(n & 0xFF);
  } else {
    f += static_cast<char>(mask_bit | 127);
    for (int i = 7; i >= 0; --i) f += static_cast<char>((n >> (8 * i)) & 0xFF);
  }
  if (!masked) return f + std::string(payload);
  // A key that varies with the payload so that phases differ between frames.
  const uint8_t key[4] = {0x37, static_cast<uint8_t>(0xFA ^ n), 0x21,
                          static_cast<uint8_t>(0x3D + n)};
  f.append(reinterpret_cast<const char*>(key), 4);
  for (size_t i = 0; i < payload.size(); ++i) f += static_cast<char>(payload[i] ^ key[i % 4]);
  return f;
}

std::string ClosePayload(uint16_t code, std::string_view reason = {}) {
  std::string p;
  p += static_cast<char>(code >> 8);
  p += static_cast<char>(code & 0xFF);
  return p + std::string(reason);
}

// Test-side parser of an unmasked server frame.
struct ServerFrame {
  bool fin = false;
  uint8_t opcode = 0;
  size_t header_len = 0;
  std::string payload;
};

ServerFrame ParseServerFrame(std::string_view f) {
  ServerFrame s;
  REQUIRE(f.size() >= 2);
  const auto b0 = static_cast<uint8_t>(f[0]), b1 = static_cast<uint8_t>(f[1]);
  s.fin = b0 & 0x80;
  s.opcode = b0 & 0x0F;
  REQUIRE((b0 & 0x70) == 0);
  REQUIRE((b1 & 0x80) == 0);  // server frames are never masked
  uint64_t n = b1 & 0x7F;
  s.header_len = 2;
  if (n == 126) {
    n = (static_cast<uint8_t>(f[2]) << 8) | static_cast<uint8_t>(f[3]);
    s.header_len = 4;
  } else if (n == 127) {
    n = 0;
    for (int i = 0; i < 8; ++i) n = (n << 8) | static_cast<uint8_t>(f[2 + i]);
    s.header_len = 10;
  }
  REQUIRE(f.size() == s.header_len + n);
  s.payload = std::string(f.substr(s.header_len));
  return s;
}

struct Recorder : MessageSink {
  std::vector<std::string> events;
  int stop_on = -1;  // index of the event after which the sink returns false
  const char* lo = nullptr;
  const char* hi = nullptr;
  int views_into_input = 0;

  bool Record(std::string e, std::string_view payload) {
    if (lo != nullptr && payload.data() >= lo && payload.data() + payload.size() <= hi) {
      ++views_into_input;
    }
    events.push_back(std::move(e));
    return static_cast<int>(events.size()) - 1 != stop_on;
  }
  bool OnMessage(Opcode op, std::string_view p) override {
    return Record((op == Opcode::kText     ? "text:"
                   : op == Opcode::kBinary ? "binary:"
                                           : "?:") +
                      std::string(p),
                  p);
  }
  bool OnPing(std::string_view p) override { return Record("ping:" + std::string(p), p); }
  bool OnPong(std::string_view p) override { return Record("pong:" + std::string(p), p); }
  void OnClose(uint16_t code, std::string_view reason) override {
    Record("close:" + std::to_string(code) + ":" + std::string(reason), reason);
  }
};

// Feeds `stream` like a connection would: the pieces (cut at `cuts`) are appended to a read
// buffer, Decode runs after each, and the consumed prefix is dropped. Stops at a failure or a
// close. The last event is "fail:<code>" on failure; "rest:<n>" reports unconsumed bytes.
std::vector<std::string> Run(std::string_view stream, const std::vector<size_t>& cuts,
                             size_t max_message = 65536) {
  FrameDecoder dec(max_message);
  Recorder sink;
  std::string buf;
  size_t from = 0;
  std::vector<size_t> ends = cuts;
  ends.push_back(stream.size());
  for (size_t end : ends) {
    buf.append(stream.substr(from, end - from));
    from = end;
    const size_t before = sink.events.size();
    const DecodeResult r = dec.Decode(std::span<char>(buf.data(), buf.size()), sink);
    REQUIRE(r.consumed <= buf.size());
    buf.erase(0, r.consumed);
    if (r.fail_code != 0) {
      sink.events.push_back("fail:" + std::to_string(r.fail_code));
      return sink.events;
    }
    if (sink.events.size() > before && sink.events.back().rfind("close:", 0) == 0) break;
  }
  sink.events.push_back("rest:" + std::to_string(buf.size() + (stream.size() - from)));
  return sink.events;
}

std::vector<std::string> RunWhole(std::string_view stream, size_t max_message = 65536) {
  return Run(stream, {}, max_message);
}

// Checks that every two-piece split and byte-at-a-time feeding give the whole-buffer events.
void CheckAllSplits(std::string_view stream, const std::vector<std::string>& expected,
                    size_t max_message = 65536) {
  REQUIRE(RunWhole(stream, max_message) == expected);
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    INFO("split at " << cut);
    REQUIRE(Run(stream, {cut}, max_message) == expected);
  }
  std::vector<size_t> every;
  for (size_t i = 1; i < stream.size(); ++i) every.push_back(i);
  REQUIRE(Run(stream, every, max_message) == expected);
}

DecodeResult DecodeOnce(std::string stream, Recorder& sink, size_t max_message = 65536) {
  FrameDecoder dec(max_message);
  return dec.Decode(std::span<char>(stream.data(), stream.size()), sink);
}

}  // namespace

TEST_CASE("ApplyMask matches the bytewise definition at any length, offset and phase",
          "[ws][codec]") {
  std::mt19937 rng(7);
  const uint8_t key[4] = {0xA1, 0x5B, 0x03, 0xFE};
  std::vector<char> original(300 + 16);
  for (char& c : original) c = static_cast<char>(rng());
  for (size_t len : {0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 63, 64, 65, 127, 128, 129, 300}) {
    for (size_t offset = 0; offset < 8; ++offset) {
      for (size_t phase = 0; phase < 6; ++phase) {
        std::vector<char> buf = original;
        ApplyMask(buf.data() + offset, len, key, phase);
        for (size_t i = 0; i < buf.size(); ++i) {
          const bool inside = i >= offset && i < offset + len;
          const char want =
              inside ? static_cast<char>(original[i] ^ key[(i - offset + phase) % 4]) : original[i];
          REQUIRE(buf[i] == want);
        }
      }
    }
  }
  // Unmasking in two pieces with the right phase equals unmasking at once.
  std::vector<char> a = original, b = original;
  ApplyMask(a.data(), 250, key);
  ApplyMask(b.data(), 101, key);
  ApplyMask(b.data() + 101, 149, key, 101);
  CHECK(a == b);
}

TEST_CASE("single-frame messages are delivered zero-copy from the read buffer", "[ws][codec]") {
  std::string stream = ClientFrame(kFin | kText, "{\"op\":\"ping\"}") +
                       ClientFrame(kFin | kBinary, std::string("\x00\xff\x80", 3));
  FrameDecoder dec;
  Recorder sink;
  sink.lo = stream.data();
  sink.hi = stream.data() + stream.size();
  const DecodeResult r = dec.Decode(std::span<char>(stream.data(), stream.size()), sink);
  CHECK(r.fail_code == 0);
  CHECK(r.consumed == stream.size());
  REQUIRE(sink.events.size() == 2);
  CHECK(sink.events[0] == "text:{\"op\":\"ping\"}");
  CHECK(sink.events[1] == std::string("binary:\x00\xff\x80", 10));
  CHECK(sink.views_into_input == 2);
}

TEST_CASE("fragmented messages in 1..N fragments, with control frames interleaved", "[ws][codec]") {
  const std::string text = "h\xc3\xa9llo w\xc3\xb6rld \xe2\x82\xac\xf0\x9f\x98\x80!";
  for (uint8_t op : {kText, kBinary}) {
    for (size_t parts = 1; parts <= 6; ++parts) {
      for (bool interleave : {false, true}) {
        // Cut into `parts` fragments at byte positions that split multibyte characters.
        std::string stream;
        std::vector<std::string> expected;
        size_t pos = 0;
        for (size_t i = 0; i < parts; ++i) {
          const size_t end = i + 1 == parts ? text.size() : (text.size() * (i + 1)) / parts;
          const uint8_t b0 =
              static_cast<uint8_t>((i == 0 ? op : kCont) | (i + 1 == parts ? kFin : 0));
          stream += ClientFrame(b0, text.substr(pos, end - pos));
          pos = end;
          if (interleave && i + 1 < parts) {
            stream += ClientFrame(kFin | kPing, "p" + std::to_string(i));
            stream += ClientFrame(kFin | kPong, "");
            expected.push_back("ping:p" + std::to_string(i));
            expected.push_back("pong:");
          }
        }
        expected.push_back((op == kText ? "text:" : "binary:") + text);
        expected.push_back("rest:0");
        INFO("opcode " << int(op) << " parts " << parts << " interleave " << interleave);
        CHECK(RunWhole(stream) == expected);
      }
    }
  }
}

TEST_CASE("empty fragments and an empty message are accepted", "[ws][codec]") {
  const std::string stream = ClientFrame(kText, "") + ClientFrame(kCont, "ab") +
                             ClientFrame(kCont, "") + ClientFrame(kFin | kCont, "") +
                             ClientFrame(kFin | kText, "");
  CHECK(RunWhole(stream) == std::vector<std::string>{"text:ab", "text:", "rest:0"});
}

TEST_CASE("fragmentation protocol errors fail with 1002", "[ws][codec]") {
  CHECK(RunWhole(ClientFrame(kFin | kCont, "x")) == std::vector<std::string>{"fail:1002"});
  CHECK(RunWhole(ClientFrame(kCont, "x")) == std::vector<std::string>{"fail:1002"});
  CHECK(RunWhole(ClientFrame(kText, "a") + ClientFrame(kFin | kText, "b")) ==
        std::vector<std::string>{"fail:1002"});
  CHECK(RunWhole(ClientFrame(kBinary, "a") + ClientFrame(kText, "b")) ==
        std::vector<std::string>{"fail:1002"});
  CHECK(RunWhole(ClientFrame(kText, "a") + ClientFrame(kFin | kBinary, "b")) ==
        std::vector<std::string>{"fail:1002"});
  // A completed fragmented message allows a new one; a continuation after it does not.
  CHECK(RunWhole(ClientFrame(kText, "a") + ClientFrame(kFin | kCont, "b") +
                 ClientFrame(kFin | kCont, "c")) ==
        std::vector<std::string>{"text:ab", "fail:1002"});
}

TEST_CASE("frame header protocol errors fail with 1002 from the first two bytes", "[ws][codec]") {
  auto fails_from_header = [](std::string frame) {
    Recorder sink;
    const DecodeResult r = DecodeOnce(frame.substr(0, 2), sink);
    return r.fail_code == 1002 && r.consumed == 0 && sink.events.empty();
  };
  for (uint8_t rsv : {0x40, 0x20, 0x10}) {
    CHECK(fails_from_header(ClientFrame(static_cast<uint8_t>(kFin | rsv | kText), "hello")));
  }
  for (uint8_t op : {0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF}) {
    CHECK(fails_from_header(ClientFrame(static_cast<uint8_t>(kFin | op), "hello")));
  }
  CHECK(fails_from_header(ClientFrame(kFin | kText, "hello", /*masked=*/false)));
  CHECK(fails_from_header(ClientFrame(kPing, "x")));                           // fragmented control
  CHECK(fails_from_header(ClientFrame(kFin | kPing, std::string(126, 'x'))));  // too long
  CHECK(fails_from_header(ClientFrame(kFin | kClose, std::string(126, 'x'))));
  // 125 bytes is the largest control payload.
  CHECK(RunWhole(ClientFrame(kFin | kPing, std::string(125, 'x'))) ==
        std::vector<std::string>{"ping:" + std::string(125, 'x'), "rest:0"});
}

TEST_CASE("a 64-bit length with the top bit set fails with 1002", "[ws][codec]") {
  std::string f = {static_cast<char>(kFin | kBinary), static_cast<char>(0x80 | 127)};
  f += std::string("\x80\x00\x00\x00\x00\x00\x00\x01", 8);
  Recorder sink;
  const DecodeResult r = DecodeOnce(f, sink);
  CHECK(r.fail_code == 1002);
}

TEST_CASE("close frames: codes, reasons and the decoder stopping after them", "[ws][codec]") {
  CHECK(RunWhole(ClientFrame(kFin | kClose, "")) ==
        std::vector<std::string>{"close:1005:", "rest:0"});
  CHECK(RunWhole(ClientFrame(kFin | kClose, "\x03")) == std::vector<std::string>{"fail:1002"});
  for (uint16_t code :
       {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999}) {
    INFO("code " << code);
    CHECK(
        RunWhole(ClientFrame(kFin | kClose, ClosePayload(code, "bye \xe2\x9c\x93"))) ==
        std::vector<std::string>{"close:" + std::to_string(code) + ":bye \xe2\x9c\x93", "rest:0"});
  }
  for (uint16_t code :
       {0, 999, 1004, 1005, 1006, 1012, 1015, 1016, 1100, 2000, 2999, 5000, 65535}) {
    INFO("code " << code);
    CHECK(RunWhole(ClientFrame(kFin | kClose, ClosePayload(code))) ==
          std::vector<std::string>{"fail:1002"});
  }
  CHECK(RunWhole(ClientFrame(kFin | kClose, ClosePayload(1000, "bad \xed\xa0\x80"))) ==
        std::vector<std::string>{"fail:1007"});
  CHECK(RunWhole(ClientFrame(kFin | kClose, ClosePayload(1000, "cut \xe2\x9c"))) ==
        std::vector<std::string>{"fail:1007"});

  // Bytes after the close frame are not consumed; a close may interrupt a fragmented message.
  const std::string close = ClientFrame(kFin | kClose, ClosePayload(1001));
  const std::string after = ClientFrame(kFin | kText, "late");
  std::string stream = ClientFrame(kText, "partial") + close + after;
  Recorder sink;
  FrameDecoder dec;
  const DecodeResult r = dec.Decode(std::span<char>(stream.data(), stream.size()), sink);
  CHECK(r.fail_code == 0);
  CHECK(r.consumed == stream.size() - after.size());
  CHECK(sink.events == std::vector<std::string>{"close:1001:"});
  CHECK(dec.InMessage());
}

TEST_CASE("invalid UTF-8 in text fails with 1007, fail-fast per fragment", "[ws][codec]") {
  CHECK(RunWhole(ClientFrame(kFin | kText, "a\xff")) == std::vector<std::string>{"fail:1007"});
  CHECK(RunWhole(ClientFrame(kFin | kText, "a\xe2\x82")) == std::vector<std::string>{"fail:1007"});
  // Binary is not checked.
  CHECK(RunWhole(ClientFrame(kFin | kBinary, "a\xff")) ==
        std::vector<std::string>{"binary:a\xff", "rest:0"});
  // A character split over fragments is fine ...
  CHECK(RunWhole(ClientFrame(kText, "\xe2") + ClientFrame(kCont, "\x82") +
                 ClientFrame(kFin | kCont, "\xac")) ==
        std::vector<std::string>{"text:\xe2\x82\xac", "rest:0"});
  // ... a message that ends inside one is not.
  CHECK(RunWhole(ClientFrame(kText, "ok") + ClientFrame(kFin | kCont, "\xe2\x82")) ==
        std::vector<std::string>{"fail:1007"});

  // Fail-fast: the bad fragment is rejected before the message's final frame arrives, and so
  // is an impossible prefix left dangling at the end of a fragment.
  for (std::string bad : {"\xff", "\xed\xa0", "\xf4\x90", "\xc0", "\xe0\x80"}) {
    const std::string first = ClientFrame(kText, "valid start ");
    const std::string stream = first + ClientFrame(kCont, "more " + bad);
    Recorder sink;
    const DecodeResult r = DecodeOnce(stream, sink);
    CHECK(r.fail_code == 1007);
    CHECK(r.consumed == first.size());
  }
  // A carried partial character that the next fragment cannot complete.
  CHECK(RunWhole(ClientFrame(kText, "x\xf0\x9f") + ClientFrame(kCont, "A")) ==
        std::vector<std::string>{"fail:1007"});
}

TEST_CASE("1009 is decided from the frame header before the payload arrives", "[ws][codec]") {
  const size_t max = 1000;
  // Exactly at the limit is fine.
  CHECK(RunWhole(ClientFrame(kFin | kBinary, std::string(max, 'b')), max) ==
        std::vector<std::string>{"binary:" + std::string(max, 'b'), "rest:0"});

  // One byte over: only the 4 header bytes (no key, no payload) are needed to fail.
  const std::string over = ClientFrame(kFin | kText, std::string(max + 1, 'a'));
  Recorder sink;
  DecodeResult r = DecodeOnce(over.substr(0, 4), sink, max);
  CHECK(r.fail_code == 1009);
  CHECK(r.consumed == 0);

  // The reassembled size counts: 600 buffered + a header announcing 401 more.
  const std::string first = ClientFrame(kText, std::string(600, 'a'));
  const std::string second = ClientFrame(kFin | kCont, std::string(401, 'a'));
  Recorder sink2;
  FrameDecoder dec(max);
  std::string buf = first + second.substr(0, 4);
  r = dec.Decode(std::span<char>(buf.data(), buf.size()), sink2);
  CHECK(r.fail_code == 1009);
  CHECK(r.consumed == first.size());
  CHECK(sink2.events.empty());
  // 600 + 400 is exactly the limit.
  CHECK(RunWhole(first + ClientFrame(kFin | kCont, std::string(400, 'a')), max) ==
        std::vector<std::string>{"text:" + std::string(1000, 'a'), "rest:0"});

  // A 64-bit length far beyond the limit fails from its 10 header bytes.
  std::string huge = {static_cast<char>(kFin | kBinary), static_cast<char>(0x80 | 127)};
  huge += std::string("\x00\x00\x00\x01\x00\x00\x00\x00", 8);
  Recorder sink3;
  r = DecodeOnce(huge, sink3);
  CHECK(r.fail_code == 1009);
}

TEST_CASE("the sink stops decoding after the frame it returned false for", "[ws][codec]") {
  const std::string f1 = ClientFrame(kFin | kText, "one");
  const std::string f2 = ClientFrame(kFin | kPing, "two");
  const std::string f3 = ClientFrame(kFin | kText, "three");
  for (int stop = 0; stop < 3; ++stop) {
    std::string stream = f1 + f2 + f3;
    FrameDecoder dec;
    Recorder sink;
    sink.stop_on = stop;
    DecodeResult r = dec.Decode(std::span<char>(stream.data(), stream.size()), sink);
    const size_t sizes[] = {f1.size(), f1.size() + f2.size(), stream.size()};
    CHECK(r.fail_code == 0);
    CHECK(r.consumed == sizes[stop]);
    CHECK(sink.events.size() == static_cast<size_t>(stop + 1));
    // Decoding resumes with the rest.
    sink.stop_on = -1;
    r = dec.Decode(std::span<char>(stream.data() + r.consumed, stream.size() - r.consumed), sink);
    CHECK(sink.events == std::vector<std::string>{"text:one", "ping:two", "text:three"});
  }
}

TEST_CASE("frames split at every byte boundary give the same events", "[ws][codec]") {
  std::string binary(300, '\0');
  for (size_t i = 0; i < binary.size(); ++i) binary[i] = static_cast<char>(i * 7);
  const std::string stream =
      ClientFrame(kFin | kPing, "hi") + ClientFrame(kText, "h\xc3\xa9ll") +
      ClientFrame(kFin | kPong, "") + ClientFrame(kCont, "\xc3\xb6 w\xe2\x82") +
      ClientFrame(kFin | kPing, "") + ClientFrame(kFin | kCont, "\xac!") +
      ClientFrame(kFin | kBinary, binary) +                       // 16-bit length
      ClientFrame(kFin | kText, "{\"op\":\"send\"}", true, 64) +  // non-minimal 64-bit form
      ClientFrame(kFin | kText, "short", true, 16) +              // non-minimal 16-bit form
      ClientFrame(kFin | kClose, ClosePayload(1000, "done")) + ClientFrame(kFin | kText, "x");
  const std::vector<std::string> expected = {
      "ping:hi",
      "pong:",
      "ping:",
      "text:h\xc3\xa9ll\xc3\xb6 w\xe2\x82\xac!",
      "binary:" + binary,
      "text:{\"op\":\"send\"}",
      "text:short",
      "close:1000:done",
      "rest:" + std::to_string(ClientFrame(kFin | kText, "x").size())};
  CheckAllSplits(stream, expected);
}

TEST_CASE("failing streams fail identically at every split", "[ws][codec]") {
  const std::string good = ClientFrame(kText, "abc") + ClientFrame(kFin | kPing, "p");
  const std::vector<std::pair<std::string, std::string>> tails = {
      {ClientFrame(kCont, "d\xed\xa0\x80"), "fail:1007"},
      {ClientFrame(kFin | kText, "new"), "fail:1002"},
      {ClientFrame(kFin | kCont, std::string(200, 'z')), "fail:1009"},
      {ClientFrame(kFin | kClose, "\x03"), "fail:1002"},
      {ClientFrame(kFin | kClose, ClosePayload(1005)), "fail:1002"},
  };
  for (const auto& [tail, fail] : tails) {
    INFO(fail);
    CheckAllSplits(good + tail, {"ping:p", fail}, /*max_message=*/150);
  }
}

TEST_CASE("large messages with 64-bit lengths survive byte-at-a-time reads", "[ws][codec]") {
  std::string big(70000, 'q');
  for (size_t i = 0; i < big.size(); i += 97) big[i] = 'A' + static_cast<char>(i % 26);
  const std::string stream = ClientFrame(kFin | kText, big) + ClientFrame(kFin | kPing, "end");
  const std::vector<std::string> expected = {"text:" + big, "ping:end", "rest:0"};
  CHECK(RunWhole(stream, 1 << 20) == expected);
  std::vector<size_t> every;
  for (size_t i = 1; i < stream.size(); ++i) every.push_back(i);
  CHECK(Run(stream, every, 1 << 20) == expected);
  for (size_t cut : {1, 2, 9, 10, 13, 14, 15, 1000, 70013, 70014, 70015}) {
    CHECK(Run(stream, {cut}, 1 << 20) == expected);
  }
}

TEST_CASE("length encodings: 7, 16 and 64 bits, encoder and decoder", "[ws][codec]") {
  for (size_t n : {0, 1, 125, 126, 127, 1000, 65535, 65536, 70000}) {
    INFO("length " << n);
    std::string payload(n, 'x');
    for (size_t i = 0; i < n; ++i) payload[i] = static_cast<char>('a' + i % 26);

    // Server encoder -> test-side parser.
    std::string out;
    AppendFrame(&out, Opcode::kBinary, payload);
    const ServerFrame s = ParseServerFrame(out);
    CHECK(s.fin);
    CHECK(s.opcode == kBinary);
    CHECK(s.header_len == (n < 126 ? 2u : n <= 65535 ? 4u : 10u));
    CHECK(s.payload == payload);

    // Test-side masked encoder -> decoder.
    CHECK(RunWhole(ClientFrame(kFin | kText, payload), 1 << 20) ==
          std::vector<std::string>{"text:" + payload, "rest:0"});
  }
  char h[kMaxServerHeader];
  REQUIRE(EncodeHeader(h, Opcode::kText, true, 126) == 4);
  CHECK(std::string(h, 4) == std::string("\x81\x7e\x00\x7e", 4));
  REQUIRE(EncodeHeader(h, Opcode::kContinuation, false, 0x123456789A) == 10);
  CHECK(std::string(h, 10) == std::string("\x00\x7f\x00\x00\x00\x12\x34\x56\x78\x9a", 10));
  REQUIRE(EncodeHeader(h, Opcode::kPong, true, 125) == 2);
  CHECK(std::string(h, 2) == "\x8a\x7d");
}

TEST_CASE("client side: AppendMaskedFrame is what the server decoder reads back", "[ws][codec]") {
  for (size_t n : {0, 1, 125, 126, 65535, 65536, 70000}) {
    INFO("length " << n);
    std::string payload(n, 'x');
    for (size_t i = 0; i < n; ++i) payload[i] = static_cast<char>('a' + i % 26);
    std::string out;
    AppendMaskedFrame(&out, Opcode::kText, payload, 0x9E3779B9u + static_cast<uint32_t>(n));
    // The library's masked frame is byte for byte a test-side frame with the same key...
    const size_t header = n < 126 ? 2 : n <= 65535 ? 4 : 10;
    REQUIRE(out.size() == header + 4 + n);
    CHECK((static_cast<uint8_t>(out[1]) & 0x80) != 0);
    if (n > 0) CHECK(out.substr(header + 4) != payload);  // masked on the wire
    // ...and the server's decoder, which insists on masking, gets the payload back.
    CHECK(RunWhole(out, 1 << 20) == std::vector<std::string>{"text:" + payload, "rest:0"});
  }
  std::string ping;
  AppendMaskedFrame(&ping, Opcode::kPing, "hi", 0);  // key 0: the payload goes out as is
  CHECK(ping == std::string("\x89\x82\x00\x00\x00\x00hi", 8));
}

TEST_CASE("client side: ParseFrameHeader reads every length form and waits for the rest",
          "[ws][codec]") {
  for (size_t n : {0, 125, 126, 65535, 65536}) {
    INFO("length " << n);
    std::string server;
    AppendFrame(&server, Opcode::kBinary, std::string(n, 'y'), /*fin=*/false);
    const size_t header = n < 126 ? 2 : n <= 65535 ? 4 : 10;
    FrameHeader h;
    for (size_t cut = 0; cut < header; ++cut) {
      CHECK_FALSE(ParseFrameHeader(std::string_view(server).substr(0, cut), &h));
    }
    REQUIRE(ParseFrameHeader(std::string_view(server).substr(0, header), &h));
    CHECK_FALSE(h.fin);
    CHECK(h.opcode == kBinary);
    CHECK_FALSE(h.masked);
    CHECK(h.rsv == 0);
    CHECK(h.payload_len == n);
    CHECK(h.header_len == header);

    std::string client;
    AppendMaskedFrame(&client, Opcode::kText, std::string(n, 'z'), 7);
    CHECK_FALSE(ParseFrameHeader(std::string_view(client).substr(0, header + 3), &h));
    REQUIRE(ParseFrameHeader(client, &h));
    CHECK(h.fin);
    CHECK(h.masked);
    CHECK(h.header_len == header + 4);
    CHECK(h.payload_len == n);
  }
  FrameHeader h;
  REQUIRE(ParseFrameHeader(std::string("\xF1\x7F\xFF\xFF\xFF\xFF\xFF\xFF\xFF\xFF", 10), &h));
  CHECK(h.rsv == 7);  // reported, not judged
  CHECK(h.payload_len == UINT64_MAX);
}

TEST_CASE("AppendClose encodes the code and a reason cut at a character boundary", "[ws][codec]") {
  std::string out;
  AppendClose(&out, 1001, "going away");
  ServerFrame s = ParseServerFrame(out);
  CHECK(s.opcode == kClose);
  CHECK(s.payload == ClosePayload(1001, "going away"));

  // 61 two-byte characters = 122 bytes, then a 3-byte one that would end at byte 125.
  std::string reason;
  for (int i = 0; i < 61; ++i) reason += "\xc3\xa9";
  reason += "\xe2\x82\xac";
  out.clear();
  AppendClose(&out, 4008, reason);
  s = ParseServerFrame(out);
  CHECK(s.payload.size() == 2 + 122);
  CHECK(s.payload.substr(2) == reason.substr(0, 122));
  CHECK(IsValidUtf8(s.payload.substr(2)));

  out.clear();
  AppendClose(&out, 1000, std::string(200, 'r'));
  CHECK(ParseServerFrame(out).payload.size() == 125);

  // Codes that may not be sent become an empty close payload.
  for (uint16_t code : {0, 1005, 1006, 1015}) {
    out.clear();
    AppendClose(&out, code, "ignored");
    CHECK(out == std::string("\x88\x00", 2));
  }
}

TEST_CASE("IsValidWireCloseCode follows the RFC 6455 ranges", "[ws][codec]") {
  for (uint32_t c = 0; c <= 65535; ++c) {
    const bool want =
        (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1011) || (c >= 3000 && c <= 4999);
    REQUIRE(IsValidWireCloseCode(static_cast<uint16_t>(c)) == want);
  }
}

TEST_CASE("the assembly buffer is released after a large fragmented message", "[ws][codec]") {
  FrameDecoder dec(1 << 20);
  Recorder sink;
  std::string stream = ClientFrame(kBinary, std::string(50000, 'a'));
  DecodeResult r = dec.Decode(std::span<char>(stream.data(), stream.size()), sink);
  CHECK(r.consumed == stream.size());
  CHECK(dec.InMessage());
  CHECK(dec.AssemblyBytes() == 50000);
  stream = ClientFrame(kFin | kCont, "b");
  r = dec.Decode(std::span<char>(stream.data(), stream.size()), sink);
  CHECK_FALSE(dec.InMessage());
  CHECK(dec.AssemblyBytes() == 0);
  REQUIRE(sink.events.size() == 1);
  CHECK(sink.events[0].size() == 7 + 50001);
}

// The load tool's own pieces: the histogram its percentiles come from, the scanner that reads
// the server's frames, option checks, and the WebSocket client against a scripted server.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "client.h"
#include "parley/proto/frames.h"
#include "parley/ws/frame_codec.h"
#include "parley/ws/handshake.h"
#include "scenario.h"
#include "util.h"

using namespace parley::load;

TEST_CASE("histogram quantiles are within the bucket precision", "[load]") {
  Histogram h;
  for (uint64_t v = 1; v <= 100000; ++v) h.Record(v);
  CHECK(h.count() == 100000);
  CHECK(h.min() == 1);
  CHECK(h.max() == 100000);
  for (double q : {0.5, 0.9, 0.99, 0.999}) {
    const double exact = q * 100000;
    const double got = static_cast<double>(h.Quantile(q));
    CHECK(got >= exact * 0.98);
    CHECK(got <= exact * 1.02);
  }
  CHECK(h.Quantile(1.0) == 100000);
  CHECK(h.mean() == Approx(50000.5));
  // Small values are exact.
  Histogram s;
  for (int i = 0; i < 10; ++i) s.Record(42);
  s.Record(7);
  CHECK(s.Quantile(0.5) == 42);
  CHECK(s.Quantile(0.0) == 7);
  CHECK(s.min() == 7);
}

TEST_CASE("merged histograms equal one fed with both inputs", "[load]") {
  Histogram a, b, both;
  for (uint64_t v = 0; v < 5000; ++v) {
    a.Record(v * 37);
    both.Record(v * 37);
    b.Record(v * 1001 + 5);
    both.Record(v * 1001 + 5);
  }
  a.Merge(b);
  CHECK(a.count() == both.count());
  CHECK(a.max() == both.max());
  CHECK(a.min() == both.min());
  for (double q : {0.1, 0.5, 0.9, 0.99}) CHECK(a.Quantile(q) == both.Quantile(q));
  CHECK(a.JsonMicros() == both.JsonMicros());
}

TEST_CASE("the frame scanner reads what the server's encoders write", "[load]") {
  std::string out;
  parley::proto::AppendMsg(&out,
                           {.conv = "d:alice:bob",
                            .seq = 17,
                            .from = "alice",
                            .cmid = "c-81",
                            .ts = 1764380000123,
                            .body = "say \"}\\ ,",
                            .meta_json = R"({"reply_to":16,"x":[1,{"y":"]}"}]})"},
                           58);
  Frame f;
  REQUIRE(ParseFrame(out, &f));
  CHECK(f.op == "msg");
  CHECK(f.inbox == 58);
  CHECK(f.conv == "d:alice:bob");
  CHECK(f.seq == 17);
  CHECK(f.from == "alice");
  CHECK(f.cmid == "c-81");
  CHECK(f.ts == 1764380000123);
  CHECK(f.body == "say \\\"}\\\\ ,");  // raw: escapes stay
  CHECK(f.id == -1);

  out.clear();
  parley::proto::AppendSendOk(&out, 9, "g:team", 3, 5, true);
  REQUIRE(ParseFrame(out, &f));
  CHECK(f.op == "ok");
  CHECK(f.id == 9);
  CHECK(f.seq == 3);
  CHECK(f.dup);

  out.clear();
  parley::proto::AppendError(&out, 4, "rate_limited", "slow down, \"please\"");
  REQUIRE(ParseFrame(out, &f));
  CHECK(f.op == "error");
  CHECK(f.code == "rate_limited");
  CHECK(f.id == 4);
}

TEST_CASE("sync pages are walked element by element", "[load]") {
  std::string out;
  const std::pair<std::string_view, int64_t> ints[] = {{"inbox_seq", 3}};
  parley::proto::ListOkWriter w(&out, 7, "events");
  parley::proto::AppendMsg(
      w.Item(),
      {.conv = "g:t", .seq = 1, .from = "a", .cmid = "m1", .ts = 2, .body = "[,]", .meta_json = {}},
      2);
  parley::proto::AppendMsg(
      w.Item(),
      {.conv = "g:t", .seq = 2, .from = "b", .cmid = "m9", .ts = 3, .body = "{", .meta_json = {}},
      3);
  w.Finish(ints, true, true);
  Frame f;
  REQUIRE(ParseFrame(out, &f));
  CHECK(f.inbox_seq == 3);
  CHECK(f.more);
  std::vector<int64_t> inboxes;
  std::vector<std::string> cmids;
  REQUIRE(ForEachElement(f.list, [&](std::string_view ev) {
    Frame e;
    REQUIRE(ParseFrame(ev, &e));
    inboxes.push_back(e.inbox);
    cmids.emplace_back(e.cmid);
  }));
  CHECK(inboxes == std::vector<int64_t>{2, 3});
  CHECK(cmids == std::vector<std::string>{"m1", "m9"});
  CHECK(ForEachElement("[]", [](std::string_view) { FAIL("no elements"); }));
}

TEST_CASE("malformed objects are rejected", "[load]") {
  auto ok = [](std::string_view t) {
    return ForEachMember(t, [](std::string_view, std::string_view) {});
  };
  CHECK(ok("{}"));
  CHECK(ok(R"( {"a" : 1 , "b":"x"} )"));
  CHECK_FALSE(ok(""));
  CHECK_FALSE(ok("[1]"));
  CHECK_FALSE(ok(R"({"a":1)"));
  CHECK_FALSE(ok(R"({"a" 1})"));
  CHECK_FALSE(ok(R"({"a":"unterminated})"));
  CHECK_FALSE(ok(R"({"a":{"b":1})"));
  Frame f;
  CHECK_FALSE(ParseFrame(R"({"id":1})", &f));  // no op
}

TEST_CASE("options: loopback only, defaults, errors", "[load]") {
  auto parse = [](std::vector<std::string> args, Options* o) {
    std::vector<char*> argv = {const_cast<char*>("parley-load")};
    for (auto& a : args) argv.push_back(a.data());
    return ParseOptions(static_cast<int>(argv.size()), argv.data(), o);
  };
  Options o;
  CHECK(parse({"--scenario", "latency", "--server=127.0.0.2:9000", "--rate", "250"}, &o).empty());
  CHECK(o.server_ip == 0x7F000002u);
  CHECK(o.port == 9000);
  CHECK(o.rate == 250);
  CHECK(o.run_id.size() > 1);
  Options p;
  CHECK_FALSE(parse({"--scenario", "idle", "--server", "10.0.0.1:8080"}, &p).empty());
  Options q;
  CHECK_FALSE(parse({"--scenario", "idle", "--bogus", "1"}, &q).empty());
  Options r;
  CHECK_FALSE(parse({"--pairs", "3"}, &r).empty());  // no scenario
  Options s;
  CHECK_FALSE(parse({"--scenario", "idle", "--duration", "-1"}, &s).empty());
  CHECK(o.random_cmids);  // like the UUIDs clients send, unless asked otherwise
  Options t;
  CHECK(parse({"--scenario", "throughput", "--cmids", "counter"}, &t).empty());
  CHECK_FALSE(t.random_cmids);
  Options u;
  CHECK_FALSE(parse({"--scenario", "throughput", "--cmids", "uuid"}, &u).empty());
}

TEST_CASE("random cmids are 32 hex digits and never repeat for one sender", "[load]") {
  std::vector<std::string> cmids;
  for (uint64_t n = 0; n < 100000; ++n) {
    std::string c;
    AppendCmid(&c, n, /*random=*/true);
    REQUIRE(c.size() == 32);
    REQUIRE(c.find_first_not_of("0123456789abcdef") == std::string::npos);
    cmids.push_back(std::move(c));
  }
  // Consecutive messages land far apart in key order (what a server's index sees from UUIDs).
  CHECK(cmids[1].substr(0, 4) != cmids[2].substr(0, 4));
  std::sort(cmids.begin(), cmids.end());
  CHECK(std::adjacent_find(cmids.begin(), cmids.end()) == cmids.end());
  std::string counter;
  AppendCmid(&counter, 7, /*random=*/false);
  CHECK(counter == "c7");
}

namespace {

// Records what the client side saw.
class RecordingHandler : public Handler {
 public:
  void OnOpen(Conn& c) override {
    ++opened;
    c.SendText("hello server");
  }
  void OnText(Conn& c, std::string_view text) override {
    texts.emplace_back(text);
    if (text == "bye") c.Close(1000);
  }
  void OnClosed(Conn&, const CloseInfo& info) override {
    closed = true;
    close_code = info.code;
    clean = info.what == "closed";
  }
  int opened = 0;
  std::vector<std::string> texts;
  bool closed = false, clean = false;
  int close_code = 0;
};

// Reads one client frame (blocking); checks it is masked and unmasks it.
bool ReadClientFrame(int fd, std::string* buf, uint8_t* opcode, std::string* payload) {
  auto fill = [&](size_t n) {
    while (buf->size() < n) {
      char tmp[4096];
      ssize_t r = ::read(fd, tmp, sizeof tmp);
      if (r <= 0) return false;
      buf->append(tmp, static_cast<size_t>(r));
    }
    return true;
  };
  if (!fill(2)) return false;
  const uint8_t b0 = static_cast<uint8_t>((*buf)[0]), b1 = static_cast<uint8_t>((*buf)[1]);
  if (!(b1 & 0x80)) return false;  // clients must mask
  uint64_t len = b1 & 0x7F;
  size_t hdr = 2;
  if (len == 126) {
    if (!fill(4)) return false;
    len = (static_cast<uint8_t>((*buf)[2]) << 8) | static_cast<uint8_t>((*buf)[3]);
    hdr = 4;
  } else if (len == 127) {
    return false;  // not used here
  }
  if (!fill(hdr + 4 + len)) return false;
  uint8_t key[4];
  std::memcpy(key, buf->data() + hdr, 4);
  payload->assign(buf->data() + hdr + 4, len);
  parley::ws::ApplyMask(payload->data(), payload->size(), key, 0);
  *opcode = b0 & 0x0F;
  buf->erase(0, hdr + 4 + len);
  return true;
}

}  // namespace

TEST_CASE("the client handshakes, masks, answers pings, reassembles and closes", "[load]") {
  int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(lfd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(0x7F000001);
  REQUIRE(::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  REQUIRE(::listen(lfd, 4) == 0);

  std::vector<std::string> server_got;  // "op:payload" of each client frame
  std::string head;
  std::thread server([&] {
    int fd = ::accept(lfd, nullptr, nullptr);
    if (fd < 0) return;
    std::string buf;
    while (buf.find("\r\n\r\n") == std::string::npos) {
      char tmp[4096];
      ssize_t r = ::read(fd, tmp, sizeof tmp);
      if (r <= 0) break;
      buf.append(tmp, static_cast<size_t>(r));
    }
    size_t end = buf.find("\r\n\r\n");
    if (end == std::string::npos) return;
    head = buf.substr(0, end + 4);
    buf.erase(0, end + 4);
    size_t k = head.find("Sec-WebSocket-Key: ");
    std::string key = head.substr(k + 19, 24);
    std::string resp;
    parley::ws::AppendUpgradeResponse(&resp, key, true);
    // Then, in one write: a text frame, a ping, a message in two fragments, "bye".
    parley::ws::AppendFrame(&resp, parley::ws::Opcode::kText, "first");
    parley::ws::AppendFrame(&resp, parley::ws::Opcode::kPing, "p1");
    parley::ws::AppendFrame(&resp, parley::ws::Opcode::kText, "frag", false);
    parley::ws::AppendFrame(&resp, parley::ws::Opcode::kContinuation, "mented", true);
    parley::ws::AppendFrame(&resp, parley::ws::Opcode::kText, std::string(300, 'z'));
    parley::ws::AppendFrame(&resp, parley::ws::Opcode::kText, "bye");
    (void)!::write(fd, resp.data(), resp.size());
    for (int i = 0; i < 3; ++i) {  // hello, pong, close
      uint8_t op;
      std::string payload;
      if (!ReadClientFrame(fd, &buf, &op, &payload)) break;
      server_got.push_back(std::to_string(op) + ":" + payload);
      if (op == 0x8) {
        std::string echo;
        parley::ws::AppendClose(&echo, 1000);
        (void)!::write(fd, echo.data(), echo.size());
        break;
      }
    }
    ::close(fd);
  });

  ClientConfig cfg;
  cfg.port = ntohs(addr.sin_port);
  cfg.src_addrs = 2;
  Worker w(cfg, 0, 1);
  RecordingHandler h;
  w.set_handler(&h);
  w.Connect(7);
  for (int i = 0; i < 2000 && !h.closed; ++i) w.RunOnce(5'000'000);
  server.join();
  ::close(lfd);

  CHECK(head.rfind("GET /ws HTTP/1.1\r\n", 0) == 0);
  CHECK(head.find("Sec-WebSocket-Protocol: parley.v1\r\n") != std::string::npos);
  CHECK(h.opened == 1);
  REQUIRE(h.texts.size() == 4);
  CHECK(h.texts[0] == "first");
  CHECK(h.texts[1] == "fragmented");
  CHECK(h.texts[2] == std::string(300, 'z'));
  CHECK(h.texts[3] == "bye");
  REQUIRE(server_got.size() == 3);
  CHECK(server_got[0] == "1:hello server");
  CHECK(server_got[1] == "10:p1");                              // pong with the ping's payload
  CHECK(server_got[2] == std::string("8:") + '\x03' + '\xe8');  // close 1000
  CHECK(h.closed);
  CHECK(h.clean);
  CHECK(h.close_code == 1000);
  CHECK(w.stats().frames_in == 7);  // six frames, then the close echo
  CHECK(w.stats().upgrade_errors == 0);
}

TEST_CASE("a wrong Sec-WebSocket-Accept fails the upgrade", "[load]") {
  int lfd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(lfd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(0x7F000001);
  REQUIRE(::bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  REQUIRE(::listen(lfd, 4) == 0);
  std::thread server([&] {
    int fd = ::accept(lfd, nullptr, nullptr);
    if (fd < 0) return;
    char tmp[4096];
    (void)!::read(fd, tmp, sizeof tmp);
    std::string resp;
    parley::ws::AppendUpgradeResponse(&resp, "dGhlIHNhbXBsZSBub25jZQ==", false);  // not its key
    (void)!::write(fd, resp.data(), resp.size());
    (void)!::read(fd, tmp, sizeof tmp);  // until the client drops it
    ::close(fd);
  });
  ClientConfig cfg;
  cfg.port = ntohs(addr.sin_port);
  Worker w(cfg, 0, 1);
  RecordingHandler h;
  w.set_handler(&h);
  w.Connect(1);
  for (int i = 0; i < 2000 && !h.closed; ++i) w.RunOnce(5'000'000);
  server.join();
  ::close(lfd);
  CHECK(h.opened == 0);
  CHECK(h.closed);
  CHECK(w.stats().upgrade_errors == 1);
}

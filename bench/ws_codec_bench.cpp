// WebSocket codec and HTTP head parser throughput.
//
// BM_DecodeText decodes one masked single-frame text message per iteration: header parse,
// in-place unmask, UTF-8 validation, delivery to a sink. Decoding unmasks the buffer in place,
// so each iteration first copies the pristine masked frame into the read buffer (inside the
// timed region: it stands in for the read that fills the buffer, and PauseTiming would cost
// more than the work at 100 B). BM_CopyOnly measures that copy alone so it can be subtracted.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <string>

#include "parley/http/request_parser.h"
#include "parley/ws/frame_codec.h"
#include "parley/ws/utf8.h"

using namespace parley;

namespace {

// Chat-protocol-like JSON: mostly ASCII with a sprinkling of 2-, 3- and 4-byte characters.
std::string JsonText(size_t size) {
  static const char* const kWords[] = {"hello",
                                       "caf\xc3\xa9",
                                       "meeting",
                                       "na\xc3\xafve",
                                       "\xe2\x82\xac"
                                       "42",
                                       "tomorrow",
                                       "ok",
                                       "\xf0\x9f\x98\x80",
                                       "group",
                                       "\xe6\x97\xa5\xe6\x9c\xac"};
  std::mt19937 rng(42);
  std::string s = "{\"op\":\"send\",\"id\":17,\"to\":\"d:alice:bob\",\"cmid\":\"n-1\",\"body\":\"";
  while (s.size() + 2 < size) {
    s += kWords[rng() % (sizeof(kWords) / sizeof(kWords[0]))];
    s += ' ';
  }
  // Trim to the exact size on a character boundary, then close the JSON string.
  s.resize(size - 2);
  while ((static_cast<uint8_t>(s.back()) & 0xC0) == 0x80 ||
         static_cast<uint8_t>(s.back()) >= 0xC0) {
    s.back() = 'x';
  }
  s += "\"}";
  return s;
}

std::string MaskedFrame(std::string_view payload) {
  std::string f(ws::kMaxServerHeader + 4 + payload.size(), '\0');
  size_t n = ws::EncodeHeader(f.data(), ws::Opcode::kText, true, payload.size());
  f[1] = static_cast<char>(f[1] | 0x80);  // client frames are masked
  const uint8_t key[4] = {0x8c, 0x31, 0x5e, 0xa7};
  std::memcpy(f.data() + n, key, 4);
  n += 4;
  std::memcpy(f.data() + n, payload.data(), payload.size());
  ws::ApplyMask(f.data() + n, payload.size(), key);
  f.resize(n + payload.size());
  return f;
}

struct CountingSink : ws::MessageSink {
  size_t bytes = 0;
  bool OnMessage(ws::Opcode, std::string_view p) override {
    bytes += p.size();
    benchmark::DoNotOptimize(p.data());
    return true;
  }
  bool OnPing(std::string_view) override { return true; }
  bool OnPong(std::string_view) override { return true; }
  void OnClose(uint16_t, std::string_view) override {}
};

void BM_DecodeText(benchmark::State& state) {
  const std::string text = JsonText(static_cast<size_t>(state.range(0)));
  if (!ws::IsValidUtf8(text)) state.SkipWithError("generator produced invalid UTF-8");
  const std::string frame = MaskedFrame(text);
  std::string buf(frame.size(), '\0');
  ws::FrameDecoder dec(1 << 20);
  CountingSink sink;
  for (auto _ : state) {
    std::memcpy(buf.data(), frame.data(), frame.size());
    const ws::DecodeResult r = dec.Decode(std::span<char>(buf.data(), buf.size()), sink);
    if (r.consumed != frame.size() || r.fail_code != 0) state.SkipWithError("decode failed");
    benchmark::ClobberMemory();
  }
  if (sink.bytes != text.size() * state.iterations()) state.SkipWithError("lost messages");
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}
BENCHMARK(BM_DecodeText)->Arg(100)->Arg(1024)->Arg(16384);

void BM_CopyOnly(benchmark::State& state) {
  const std::string frame = MaskedFrame(JsonText(static_cast<size_t>(state.range(0))));
  std::string buf(frame.size(), '\0');
  for (auto _ : state) {
    std::memcpy(buf.data(), frame.data(), frame.size());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * state.range(0)));
}
BENCHMARK(BM_CopyOnly)->Arg(100)->Arg(1024)->Arg(16384);

void BM_Unmask(benchmark::State& state) {
  std::string buf = JsonText(static_cast<size_t>(state.range(0)));
  const uint8_t key[4] = {0x8c, 0x31, 0x5e, 0xa7};
  for (auto _ : state) {
    ws::ApplyMask(buf.data(), buf.size(), key);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * buf.size()));
}
BENCHMARK(BM_Unmask)->Arg(100)->Arg(1024)->Arg(16384);

void BM_Utf8Validate(benchmark::State& state) {
  const std::string text = JsonText(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    bool ok = ws::IsValidUtf8(text);
    benchmark::DoNotOptimize(ok);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}
BENCHMARK(BM_Utf8Validate)->Arg(100)->Arg(1024)->Arg(16384);

void BM_ParseUpgradeRequest(benchmark::State& state) {
  const std::string head =
      "GET /ws HTTP/1.1\r\n"
      "Host: chat.example.org\r\n"
      "Connection: Upgrade\r\n"
      "Pragma: no-cache\r\n"
      "Cache-Control: no-cache\r\n"
      "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/120.0.0.0 Safari/537.36\r\n"
      "Upgrade: websocket\r\n"
      "Origin: https://chat.example.org\r\n"
      "Sec-WebSocket-Version: 13\r\n"
      "Accept-Encoding: gzip, deflate, br\r\n"
      "Accept-Language: en-US,en;q=0.9\r\n"
      "Cookie: session=8f14e45fceea167a5a36dedd4bea2543\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
      "Sec-WebSocket-Protocol: parley.v1\r\n"
      "\r\n";
  const http::RequestParser parser;
  http::Request req;
  for (auto _ : state) {
    const http::ParseOutcome o = parser.Parse(head, &req);
    if (o.status != http::ParseStatus::kComplete) state.SkipWithError("parse failed");
    benchmark::DoNotOptimize(req.headers.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * head.size()));
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_ParseUpgradeRequest);

}  // namespace

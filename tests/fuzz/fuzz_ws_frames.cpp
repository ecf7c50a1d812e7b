// Fuzzes the WebSocket frame decoder. Input: 2 bytes of max_message_bytes, 1 byte of split
// seed, then the client byte stream. The stream is decoded as a connection would (appending
// reads, dropping consumed bytes) once whole and once in pieces of input-derived sizes; both
// runs must produce the same events, and every event must respect the protocol limits. The
// same bytes also go through ParseFrameHeader, the header reader of Parley's own clients.
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "parley/ws/frame_codec.h"

using namespace parley::ws;

namespace {

void Check(bool cond) {
  if (!cond) std::abort();
}

// Straightforward scalar validator, independent of the library's SIMD one.
bool ScalarUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<uint8_t>(s[i]);
    size_t len;
    uint32_t cp;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      len = 2, cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      len = 3, cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      len = 4, cp = b & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto c = static_cast<uint8_t>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    const uint32_t min = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

struct CheckingSink : MessageSink {
  size_t max_message = 0;
  unsigned stop_every = 0;  // return false on every n-th event (0: never)
  const FrameDecoder* decoder = nullptr;
  std::vector<std::string> events;

  bool Next(std::string e) {
    events.push_back(std::move(e));
    Check(decoder->AssemblyBytes() <= max_message);
    return stop_every == 0 || events.size() % stop_every != 0;
  }
  bool OnMessage(Opcode op, std::string_view p) override {
    Check(op == Opcode::kText || op == Opcode::kBinary);
    Check(p.size() <= max_message);
    if (op == Opcode::kText) Check(ScalarUtf8(p) && IsValidUtf8(p));
    return Next(std::string(op == Opcode::kText ? "t" : "b") + std::string(p));
  }
  bool OnPing(std::string_view p) override {
    Check(p.size() <= 125);
    return Next("i" + std::string(p));
  }
  bool OnPong(std::string_view p) override {
    Check(p.size() <= 125);
    return Next("o" + std::string(p));
  }
  void OnClose(uint16_t code, std::string_view reason) override {
    Check(code == close_code::kNoStatus || IsValidWireCloseCode(code));
    Check(reason.size() <= 123 && ScalarUtf8(reason));
    if (code == close_code::kNoStatus) Check(reason.empty());
    Next("c" + std::to_string(code) + ":" + std::string(reason));
  }
};

struct RunResult {
  std::vector<std::string> events;
  uint16_t fail_code = 0;
  size_t leftover = 0;
  bool operator==(const RunResult&) const = default;
};

RunResult Run(std::string_view stream, size_t max_message, unsigned stop_every, uint8_t seed,
              bool whole) {
  FrameDecoder dec(max_message);
  CheckingSink sink;
  sink.max_message = max_message;
  sink.stop_every = stop_every;
  sink.decoder = &dec;
  RunResult out;
  std::string buf;
  size_t from = 0;
  uint32_t rng = seed * 2654435761u + 1;
  bool closed = false;
  while (from < stream.size() && !closed && out.fail_code == 0) {
    size_t n = stream.size() - from;
    if (!whole) {
      rng = rng * 1664525u + 1013904223u;
      n = std::min<size_t>(n, 1 + (rng >> 16) % (seed % 4 == 0 ? 3 : 97));
    }
    buf.append(stream.substr(from, n));
    from += n;
    // Decode until no progress, as a connection does after each read.
    while (true) {
      const size_t before = sink.events.size();
      const DecodeResult r = dec.Decode(std::span<char>(buf.data(), buf.size()), sink);
      Check(r.consumed <= buf.size());
      buf.erase(0, r.consumed);
      if (r.fail_code != 0) {
        Check(r.fail_code == 1002 || r.fail_code == 1007 || r.fail_code == 1009);
        Check(!r.fail_reason.empty());
        out.fail_code = r.fail_code;
        break;
      }
      if (sink.events.size() > before && sink.events.back()[0] == 'c') {
        closed = true;
        break;
      }
      if (r.consumed == 0) break;
    }
  }
  out.events = std::move(sink.events);
  out.leftover = buf.size() + (stream.size() - from);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const size_t max_message = 1 + (size_t{data[0]} | (size_t{data[1]} << 8));
  const uint8_t seed = data[2];
  const unsigned stop_every = seed % 5;
  const std::string_view stream(reinterpret_cast<const char*>(data + 3), size - 3);
  const RunResult whole = Run(stream, max_message, stop_every, seed, true);
  const RunResult pieces = Run(stream, max_message, stop_every, seed, false);
  Check(whole == pieces);

  // The clients' header reader: a header is complete exactly at header_len, never earlier.
  FrameHeader h;
  if (ParseFrameHeader(stream, &h)) {
    Check(h.header_len <= stream.size());
    const auto len7 = static_cast<uint8_t>(stream[1] & 0x7F);
    Check(h.header_len - (h.masked ? 4u : 0u) == (len7 == 126 ? 4u : len7 == 127 ? 10u : 2u));
    if (len7 < 126) Check(h.payload_len == len7);
    Check(h.masked == ((static_cast<uint8_t>(stream[1]) & 0x80) != 0));
    for (size_t cut = 0; cut < h.header_len; ++cut) {
      FrameHeader partial;
      Check(!ParseFrameHeader(stream.substr(0, cut), &partial));
    }
  }
  return 0;
}

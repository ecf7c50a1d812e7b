#include "parley/ws/frame_codec.h"

#include <bit>
#include <cstring>

namespace parley::ws {
namespace {

// Fragmented messages are rare (browsers never fragment), so a connection keeps only a small
// assembly buffer between them; a large one is freed so that idle connections stay cheap.
constexpr size_t kRetainedAssemblyBytes = 4096;

constexpr size_t kMaxControlPayload = 125;

inline uint16_t LoadBe16(const char* p) {
  const auto* u = reinterpret_cast<const uint8_t*>(p);
  return static_cast<uint16_t>((u[0] << 8) | u[1]);
}

inline uint64_t LoadBe64(const char* p) {
  const auto* u = reinterpret_cast<const uint8_t*>(p);
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | u[i];
  return v;
}

inline bool IsKnownOpcode(uint8_t op) {
  return op <= 0x2 || (op >= 0x8 && op <= 0xA);
}

}  // namespace

bool IsValidWireCloseCode(uint16_t code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) ||
         (code >= 3000 && code <= 4999);
}

void ApplyMask(char* data, size_t len, const uint8_t key[4], size_t phase) {
  // Build the rotated key in a register: assembling it bytewise in memory and reloading it as a
  // word stalls store forwarding, which costs more than unmasking a short message.
  uint32_t k32;
  std::memcpy(&k32, key, 4);
  const int shift = static_cast<int>(8 * (phase & 3));
  k32 = std::endian::native == std::endian::little ? std::rotr(k32, shift) : std::rotl(k32, shift);
  const uint64_t k64 = (uint64_t{k32} << 32) | k32;
  // A portable 16-byte vector: SSE2/NEON registers; memcpy makes the loads alignment-free,
  // so no prologue is needed for unaligned starts. The key period (4) divides 16, so the same
  // key vector applies to every block.
  using V = uint64_t __attribute__((vector_size(16)));
  const V kv = {k64, k64};
  size_t i = 0;
  for (; i + 64 <= len; i += 64) {
    V a, b, c, d;
    std::memcpy(&a, data + i, 16);
    std::memcpy(&b, data + i + 16, 16);
    std::memcpy(&c, data + i + 32, 16);
    std::memcpy(&d, data + i + 48, 16);
    a ^= kv;
    b ^= kv;
    c ^= kv;
    d ^= kv;
    std::memcpy(data + i, &a, 16);
    std::memcpy(data + i + 16, &b, 16);
    std::memcpy(data + i + 32, &c, 16);
    std::memcpy(data + i + 48, &d, 16);
  }
  for (; i + 16 <= len; i += 16) {
    V a;
    std::memcpy(&a, data + i, 16);
    a ^= kv;
    std::memcpy(data + i, &a, 16);
  }
  // i is a multiple of 4 from here on, so the tail starts at key byte 0.
  if (i + 8 <= len) {
    uint64_t a;
    std::memcpy(&a, data + i, 8);
    a ^= k64;
    std::memcpy(data + i, &a, 8);
    i += 8;
  }
  if (i + 4 <= len) {
    uint32_t a;
    std::memcpy(&a, data + i, 4);
    a ^= k32;
    std::memcpy(data + i, &a, 4);
    i += 4;
  }
  for (size_t j = 0; i < len; ++i, ++j) {
    const int bits = std::endian::native == std::endian::little ? static_cast<int>(8 * j)
                                                                : static_cast<int>(24 - 8 * j);
    data[i] = static_cast<char>(data[i] ^ static_cast<char>(k32 >> bits));
  }
}

DecodeResult FrameDecoder::Decode(std::span<char> data, MessageSink& sink) {
  char* const base = data.data();
  const size_t size = data.size();
  size_t pos = 0;  // start of the first frame not yet consumed
  DecodeResult r;
  auto fail = [&](uint16_t code, std::string_view why) {
    r.consumed = pos;
    r.fail_code = code;
    r.fail_reason = why;
    return r;
  };

  while (size - pos >= 2) {
    const auto b0 = static_cast<uint8_t>(base[pos]);
    const auto b1 = static_cast<uint8_t>(base[pos + 1]);
    const bool fin = b0 & 0x80;
    const uint8_t op = b0 & 0x0F;
    const bool control = op & 0x08;

    // Everything decidable from the first two bytes fails before the rest arrives.
    if (b0 & 0x70) return fail(close_code::kProtocolError, "reserved bits set");
    if (!IsKnownOpcode(op)) return fail(close_code::kProtocolError, "reserved opcode");
    if (!(b1 & 0x80)) return fail(close_code::kProtocolError, "unmasked client frame");
    if (control) {
      if (!fin) return fail(close_code::kProtocolError, "fragmented control frame");
      if ((b1 & 0x7F) > kMaxControlPayload) {
        return fail(close_code::kProtocolError, "control frame payload over 125 bytes");
      }
    } else if (op == 0 && !in_message_) {
      return fail(close_code::kProtocolError, "continuation without a message");
    } else if (op != 0 && in_message_) {
      return fail(close_code::kProtocolError, "new message inside a fragmented one");
    }

    const size_t avail = size - pos;
    size_t header = 2;
    uint64_t len = b1 & 0x7F;
    if (len == 126) {
      if (avail < 4) break;
      len = LoadBe16(base + pos + 2);
      header = 4;
    } else if (len == 127) {
      if (avail < 10) break;
      len = LoadBe64(base + pos + 2);
      if (len >> 63) return fail(close_code::kProtocolError, "64-bit length with top bit set");
      header = 10;
    }
    if (!control) {
      // assembly_.size() <= max_message_bytes_ always holds, so this cannot underflow.
      const size_t prior = op == 0 ? assembly_.size() : 0;
      if (len > max_message_bytes_ - prior) {
        return fail(close_code::kMessageTooBig, "message too big");
      }
    }
    header += 4;  // masking key
    if (avail < header || avail - header < len) break;

    const auto* key = reinterpret_cast<const uint8_t*>(base + pos + header - 4);
    char* const payload = base + pos + header;
    ApplyMask(payload, len, key, 0);
    const std::string_view view(payload, len);
    const size_t next = pos + header + len;

    bool go = true;
    switch (static_cast<Opcode>(op)) {
      case Opcode::kClose: {
        uint16_t code = close_code::kNoStatus;
        std::string_view reason;
        if (len == 1) return fail(close_code::kProtocolError, "close payload of 1 byte");
        if (len >= 2) {
          code = LoadBe16(payload);
          if (!IsValidWireCloseCode(code)) {
            return fail(close_code::kProtocolError, "invalid close code");
          }
          reason = view.substr(2);
          if (!IsValidUtf8(reason)) {
            return fail(close_code::kInvalidPayload, "close reason is not UTF-8");
          }
        }
        r.consumed = next;
        sink.OnClose(code, reason);
        return r;
      }
      case Opcode::kPing:
        go = sink.OnPing(view);
        break;
      case Opcode::kPong:
        go = sink.OnPong(view);
        break;
      case Opcode::kContinuation:
        if (message_opcode_ == Opcode::kText && !utf8_.Feed(view)) {
          return fail(close_code::kInvalidPayload, "invalid UTF-8 in text message");
        }
        assembly_.append(view);
        if (fin) {
          if (message_opcode_ == Opcode::kText && !utf8_.Finish()) {
            return fail(close_code::kInvalidPayload, "text message ends inside a character");
          }
          in_message_ = false;
          go = sink.OnMessage(message_opcode_, assembly_);
          assembly_.clear();
          if (assembly_.capacity() > kRetainedAssemblyBytes) std::string().swap(assembly_);
        }
        break;
      case Opcode::kText:
      case Opcode::kBinary:
        if (fin) {
          // The common case: one frame, delivered straight from the read buffer.
          if (op == 0x1 && !IsValidUtf8(view)) {
            return fail(close_code::kInvalidPayload, "invalid UTF-8 in text message");
          }
          go = sink.OnMessage(static_cast<Opcode>(op), view);
        } else {
          message_opcode_ = static_cast<Opcode>(op);
          if (op == 0x1) {
            utf8_.Reset();
            if (!utf8_.Feed(view)) {
              return fail(close_code::kInvalidPayload, "invalid UTF-8 in text message");
            }
          }
          in_message_ = true;
          assembly_.assign(view);
        }
        break;
    }
    pos = next;
    if (!go) break;
  }
  r.consumed = pos;
  return r;
}

size_t EncodeHeader(char* dst, Opcode opcode, bool fin, uint64_t payload_len) {
  auto* d = reinterpret_cast<uint8_t*>(dst);
  d[0] = static_cast<uint8_t>((fin ? 0x80 : 0x00) | static_cast<uint8_t>(opcode));
  if (payload_len < 126) {
    d[1] = static_cast<uint8_t>(payload_len);
    return 2;
  }
  if (payload_len <= 0xFFFF) {
    d[1] = 126;
    d[2] = static_cast<uint8_t>(payload_len >> 8);
    d[3] = static_cast<uint8_t>(payload_len);
    return 4;
  }
  d[1] = 127;
  for (int i = 0; i < 8; ++i) d[2 + i] = static_cast<uint8_t>(payload_len >> (56 - 8 * i));
  return 10;
}

void AppendFrame(std::string* out, Opcode opcode, std::string_view payload, bool fin) {
  char header[kMaxServerHeader];
  const size_t n = EncodeHeader(header, opcode, fin, payload.size());
  out->reserve(out->size() + n + payload.size());
  out->append(header, n);
  out->append(payload);
}

void AppendMaskedFrame(std::string* out, Opcode opcode, std::string_view payload,
                       uint32_t mask_key) {
  char header[kMaxServerHeader + 4];
  size_t n = EncodeHeader(header, opcode, /*fin=*/true, payload.size());
  header[1] = static_cast<char>(static_cast<uint8_t>(header[1]) | 0x80);
  uint8_t key[4];
  std::memcpy(key, &mask_key, 4);
  std::memcpy(header + n, key, 4);
  n += 4;
  out->reserve(out->size() + n + payload.size());
  out->append(header, n);
  const size_t start = out->size();
  out->append(payload);
  ApplyMask(out->data() + start, payload.size(), key, 0);
}

bool ParseFrameHeader(std::string_view data, FrameHeader* out) {
  if (data.size() < 2) return false;
  const auto b0 = static_cast<uint8_t>(data[0]);
  const auto b1 = static_cast<uint8_t>(data[1]);
  FrameHeader h;
  h.fin = b0 & 0x80;
  h.rsv = static_cast<uint8_t>((b0 >> 4) & 0x07);
  h.opcode = b0 & 0x0F;
  h.masked = b1 & 0x80;
  h.payload_len = b1 & 0x7F;
  h.header_len = 2;
  if (h.payload_len == 126) {
    if (data.size() < 4) return false;
    h.payload_len = LoadBe16(data.data() + 2);
    h.header_len = 4;
  } else if (h.payload_len == 127) {
    if (data.size() < 10) return false;
    h.payload_len = LoadBe64(data.data() + 2);
    h.header_len = 10;
  }
  if (h.masked) h.header_len += 4;
  if (data.size() < h.header_len) return false;
  *out = h;
  return true;
}

void AppendClose(std::string* out, uint16_t code, std::string_view reason) {
  if (code == 0 || code == close_code::kNoStatus || code == 1006 || code == 1015) {
    AppendFrame(out, Opcode::kClose, {});
    return;
  }
  constexpr size_t kMaxReason = kMaxControlPayload - 2;
  if (reason.size() > kMaxReason) {
    // Cut before the character that straddles the limit so the reason stays valid UTF-8.
    size_t cut = kMaxReason;
    while (cut > 0 && (static_cast<uint8_t>(reason[cut]) & 0xC0) == 0x80) --cut;
    reason = reason.substr(0, cut);
  }
  char payload[kMaxControlPayload];
  payload[0] = static_cast<char>(code >> 8);
  payload[1] = static_cast<char>(code & 0xFF);
  if (!reason.empty()) std::memcpy(payload + 2, reason.data(), reason.size());
  AppendFrame(out, Opcode::kClose, std::string_view(payload, 2 + reason.size()));
}

}  // namespace parley::ws

// RFC 6455 frame decoding (client -> server) and encoding (server -> client).
//
// The decoder works on spans of the connection's read buffer: complete frames are unmasked in
// place and handed to the sink without copying when a message is a single frame; only
// fragmented messages are assembled in an internal buffer. It enforces the whole RFC 6455
// server rule set, reporting the close code to fail the connection with:
//   1002: RSV bits set (no extension is negotiated), reserved opcode, unmasked client frame,
//         control frame with payload > 125 or FIN=0, continuation with no message in progress,
//         new data message while one is in progress, 64-bit length with the top bit set,
//         close payload of 1 byte or with a code that may not be sent on the wire;
//   1007: invalid UTF-8 in a text message (checked per frame, fail-fast) or close reason;
//   1009: a message (reassembled) larger than max_message_bytes, detected from the frame
//         header before its payload is buffered.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "parley/ws/utf8.h"

namespace parley::ws {

enum class Opcode : uint8_t {
  kContinuation = 0x0,
  kText = 0x1,
  kBinary = 0x2,
  kClose = 0x8,
  kPing = 0x9,
  kPong = 0xA,
};

namespace close_code {
inline constexpr uint16_t kNormal = 1000;
inline constexpr uint16_t kGoingAway = 1001;
inline constexpr uint16_t kProtocolError = 1002;
inline constexpr uint16_t kUnsupportedData = 1003;
inline constexpr uint16_t kNoStatus = 1005;  // never sent on the wire
inline constexpr uint16_t kInvalidPayload = 1007;
inline constexpr uint16_t kPolicyViolation = 1008;
inline constexpr uint16_t kMessageTooBig = 1009;
inline constexpr uint16_t kInternalError = 1011;
}  // namespace close_code

// True for codes a peer may put in a close frame (1000-1003, 1007-1011, 3000-4999).
bool IsValidWireCloseCode(uint16_t code);

// Receives decoded events. Every method returns true to keep decoding, false to stop after
// this frame (e.g. the connection is being closed or handed to another core).
class MessageSink {
 public:
  virtual ~MessageSink() = default;
  // A complete data message; text is already UTF-8 validated. `payload` is valid only for
  // the duration of the call.
  virtual bool OnMessage(Opcode opcode, std::string_view payload) = 0;
  virtual bool OnPing(std::string_view payload) = 0;
  virtual bool OnPong(std::string_view payload) = 0;
  // The peer's close frame; code is 1005 when it carried no payload. Decoding stops after it.
  virtual void OnClose(uint16_t code, std::string_view reason) = 0;
};

struct DecodeResult {
  size_t consumed = 0;     // bytes of complete frames consumed from the input
  uint16_t fail_code = 0;  // non-zero: fail the connection with this close code
  std::string_view fail_reason;
};

class FrameDecoder {
 public:
  explicit FrameDecoder(size_t max_message_bytes = 65536) : max_message_bytes_(max_message_bytes) {}

  // Decodes as many complete frames as `data` holds (unmasking them in place). Stops at the
  // end of the complete frames, after a close frame, when the sink returns false, or on an
  // error. Unconsumed bytes (a partial frame) must be passed again, followed by new bytes.
  DecodeResult Decode(std::span<char> data, MessageSink& sink);

  // True while a fragmented message is being assembled.
  bool InMessage() const { return in_message_; }
  // Bytes held for a fragmented message in progress (for memory accounting).
  size_t AssemblyBytes() const { return assembly_.size(); }

 private:
  size_t max_message_bytes_;
  bool in_message_ = false;
  Opcode message_opcode_ = Opcode::kText;
  std::string assembly_;
  Utf8Stream utf8_;
};

// XORs data[0..len) with the 4-byte masking key, where data[0] is byte number `phase` of the
// frame payload (the key is rotated accordingly, so a payload may be unmasked in pieces).
// Any alignment; works 16 bytes at a time. Masking is an involution: applying it twice is a no-op.
void ApplyMask(char* data, size_t len, const uint8_t key[4], size_t phase = 0);

// Largest frame header the server writes (2 + 8 bytes; server frames are unmasked).
inline constexpr size_t kMaxServerHeader = 10;

// Writes a server frame header into dst (>= kMaxServerHeader bytes); returns its length.
size_t EncodeHeader(char* dst, Opcode opcode, bool fin, uint64_t payload_len);

// Appends a whole unmasked frame.
void AppendFrame(std::string* out, Opcode opcode, std::string_view payload, bool fin = true);

// Appends a close frame with a code and a reason (truncated to fit 125 bytes, at a UTF-8
// character boundary). Codes that may not appear on the wire (0, 1005, 1006, 1015) produce an
// empty close payload, which is how a close that carried no code is echoed.
void AppendClose(std::string* out, uint16_t code, std::string_view reason = {});

// ---- The client side, for Parley's own clients (the load tool, the crash test) ----

// Appends a whole masked client frame (FIN set) with the given masking key.
void AppendMaskedFrame(std::string* out, Opcode opcode, std::string_view payload,
                       uint32_t mask_key);

// A frame header as read off the wire, before any rule is applied to it.
struct FrameHeader {
  bool fin = false;
  uint8_t rsv = 0;  // the RSV1-3 bits, shifted down (0 unless an extension is negotiated)
  uint8_t opcode = 0;
  bool masked = false;
  uint64_t payload_len = 0;
  size_t header_len = 0;  // bytes before the payload, masking key included
};

// Reads the header at the start of `data`. False when `data` does not hold all of it yet.
// Checks nothing: the caller decides which frames its side of the connection accepts.
bool ParseFrameHeader(std::string_view data, FrameHeader* out);

}  // namespace parley::ws

// HTTP/1.1 request-head parser.
//
// Parses the request line and headers from one contiguous buffer (the connection's read
// buffer) without copying: every string_view in Request points into that buffer and stays
// valid only while the buffer is unchanged. Stateless: call Parse again with the grown buffer
// when it returns kIncomplete. Request bodies are not parsed here (Content-Length is reported).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/container/inlined_vector.h"

namespace parley::http {

// ASCII case-insensitive equality (header names and tokens).
bool EqualsIgnoreCase(std::string_view a, std::string_view b);

struct Header {
  std::string_view name;   // as sent; compare case-insensitively
  std::string_view value;  // leading/trailing spaces and tabs trimmed
};

struct Request {
  std::string_view method;  // e.g. "GET"
  std::string_view target;  // request-target as sent, e.g. "/ws?x=1"
  std::string_view path;    // target up to '?'
  int version_minor = 1;    // HTTP/1.<minor>; only 1.0 and 1.1 are accepted
  absl::InlinedVector<Header, 16> headers;
  uint64_t content_length = 0;  // 0 when absent
  bool keep_alive = true;       // from version and Connection header

  // First header with this name (case-insensitive), or empty view if absent.
  std::string_view Find(std::string_view name) const;
  // True if the comma-separated header `name` contains `token` (case-insensitive),
  // e.g. HasToken("Connection", "upgrade").
  bool HasToken(std::string_view name, std::string_view token) const;
};

enum class ParseStatus {
  kComplete,    // *out filled, *consumed = bytes of the head including the final CRLFCRLF
  kIncomplete,  // need more bytes; buffer is still within max_head_bytes
  kError,       // *error_status says which HTTP status to answer with (400, 431, 505, 501)
};

struct ParseOutcome {
  ParseStatus status = ParseStatus::kIncomplete;
  size_t consumed = 0;
  int error_status = 0;
  std::string_view error_reason;  // short human text for the error body
};

class RequestParser {
 public:
  // max_head_bytes bounds request line + headers: a head not complete within it is 431.
  explicit RequestParser(size_t max_head_bytes = 8192, size_t max_headers = 64)
      : max_head_bytes_(max_head_bytes), max_headers_(max_headers) {}

  // Parses buf. Rejects (400): malformed request line, bad method/target token characters,
  // missing/invalid Host for HTTP/1.1, header names with illegal characters, obs-fold
  // continuation lines, bare CR/LF misuse, duplicate or invalid Content-Length,
  // Transfer-Encoding (not supported). Too many headers or too big a head: 431.
  // Unsupported HTTP version: 505.
  ParseOutcome Parse(std::string_view buf, Request* out) const;

 private:
  size_t max_head_bytes_;
  size_t max_headers_;
};

}  // namespace parley::http

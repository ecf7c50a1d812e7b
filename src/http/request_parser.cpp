#include "parley/http/request_parser.h"

#include <algorithm>
#include <array>
#include <cstring>

namespace parley::http {
namespace {

// RFC 9110 tchar: the characters of methods and header names.
constexpr std::array<bool, 256> MakeTcharTable() {
  std::array<bool, 256> t{};
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (int c = 'a'; c <= 'z'; ++c) t[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] = true;
  for (char c : std::string_view("!#$%&'*+-.^_`|~")) t[static_cast<uint8_t>(c)] = true;
  return t;
}
constexpr std::array<bool, 256> kTchar = MakeTcharTable();

bool IsToken(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!kTchar[static_cast<uint8_t>(c)]) return false;
  }
  return true;
}

// Field values: VCHAR, obs-text, SP and HTAB. Rejects every other control byte, which also
// catches a CR that is not part of a CRLF.
bool IsFieldValue(std::string_view s) {
  for (char ch : s) {
    const auto c = static_cast<uint8_t>(ch);
    if ((c < 0x20 && c != '\t') || c == 0x7F) return false;
  }
  return true;
}

// Host: reg-name, IPv4 or [IP-literal], optional :port (RFC 3986 characters).
bool IsHostValue(std::string_view s) {
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    std::string_view("-._~!$&'()*+,;=:[]%").find(c) != std::string_view::npos;
    if (!ok) return false;
  }
  return true;
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool ParseContentLength(std::string_view s, uint64_t* out) {
  if (s.empty()) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

// The path of an origin-form target, or of an absolute-form one ("http://host/p?q" -> "/p").
std::string_view PathOf(std::string_view target) {
  std::string_view rest = target;
  for (std::string_view scheme : {"http://", "https://"}) {
    if (rest.size() >= scheme.size() && EqualsIgnoreCase(rest.substr(0, scheme.size()), scheme)) {
      rest.remove_prefix(scheme.size());
      const size_t slash = rest.find_first_of("/?");
      if (slash == std::string_view::npos || rest[slash] == '?') return "/";
      rest.remove_prefix(slash);
      break;
    }
  }
  return rest.substr(0, rest.find('?'));
}

}  // namespace

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    const char x = a[i] >= 'A' && a[i] <= 'Z' ? static_cast<char>(a[i] + 32) : a[i];
    const char y = b[i] >= 'A' && b[i] <= 'Z' ? static_cast<char>(b[i] + 32) : b[i];
    if (x != y) return false;
  }
  return true;
}

std::string_view Request::Find(std::string_view name) const {
  for (const Header& h : headers) {
    if (EqualsIgnoreCase(h.name, name)) return h.value;
  }
  return {};
}

bool Request::HasToken(std::string_view name, std::string_view token) const {
  // Every header line with this name counts: a list may be split over several lines.
  for (const Header& h : headers) {
    if (!EqualsIgnoreCase(h.name, name)) continue;
    std::string_view rest = h.value;
    while (true) {
      const size_t comma = rest.find(',');
      if (EqualsIgnoreCase(TrimOws(rest.substr(0, comma)), token)) return true;
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return false;
}

ParseOutcome RequestParser::Parse(std::string_view buf, Request* out) const {
  ParseOutcome o;
  auto error = [&o](int status, std::string_view reason) {
    o.status = ParseStatus::kError;
    o.error_status = status;
    o.error_reason = reason;
    return o;
  };
  out->headers.clear();
  out->content_length = 0;
  out->keep_alive = true;

  // Only the first max_head_bytes can belong to an acceptable head.
  const size_t limit = std::min(buf.size(), max_head_bytes_);
  size_t pos = 0;
  // Next CRLF-terminated line; 1 = got one, 0 = not yet terminated, -1 = bare LF.
  auto next_line = [&](std::string_view* line) -> int {
    const void* lf = pos < limit ? std::memchr(buf.data() + pos, '\n', limit - pos) : nullptr;
    if (lf == nullptr) return 0;
    const size_t i = static_cast<const char*>(lf) - buf.data();
    if (i == pos || buf[i - 1] != '\r') return -1;
    *line = buf.substr(pos, i - 1 - pos);
    pos = i + 1;
    return 1;
  };
  auto not_terminated = [&]() {
    if (buf.size() >= max_head_bytes_) return error(431, "request header too large");
    return o;  // kIncomplete
  };

  // A client may send stray CRLFs between pipelined requests; they are skipped.
  while (pos + 1 < limit && buf[pos] == '\r' && buf[pos + 1] == '\n') pos += 2;

  std::string_view line;
  int got = next_line(&line);
  if (got == 0) return not_terminated();
  if (got < 0) return error(400, "bare LF");

  // request-line = method SP request-target SP HTTP-version
  const size_t sp1 = line.find(' ');
  const size_t sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos) return error(400, "malformed request line");
  out->method = line.substr(0, sp1);
  out->target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (!IsToken(out->method)) return error(400, "bad method");
  if (out->target.empty()) return error(400, "empty request target");
  for (char c : out->target) {
    if (c < 0x21 || c > 0x7E) return error(400, "bad character in request target");
  }
  if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[5] < '0' ||
      version[5] > '9' || version[6] != '.' || version[7] < '0' || version[7] > '9') {
    return error(400, "malformed HTTP version");
  }
  if (version[5] != '1' || version[7] > '1') return error(505, "HTTP version not supported");
  out->version_minor = version[7] - '0';
  out->path = PathOf(out->target);

  bool seen_host = false;
  bool seen_length = false;
  while (true) {
    got = next_line(&line);
    if (got == 0) return not_terminated();
    if (got < 0) return error(400, "bare LF");
    if (line.empty()) break;
    if (line[0] == ' ' || line[0] == '\t') return error(400, "obsolete line folding");
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) return error(400, "header line without colon");
    const std::string_view name = line.substr(0, colon);
    if (!IsToken(name)) return error(400, "bad header name");
    const std::string_view raw = line.substr(colon + 1);
    if (!IsFieldValue(raw)) return error(400, "bad character in header value");
    if (out->headers.size() == max_headers_) return error(431, "too many headers");
    const std::string_view value = TrimOws(raw);
    out->headers.push_back(Header{name, value});

    if (EqualsIgnoreCase(name, "content-length")) {
      if (seen_length) return error(400, "duplicate Content-Length");
      if (!ParseContentLength(value, &out->content_length)) {
        return error(400, "invalid Content-Length");
      }
      seen_length = true;
    } else if (EqualsIgnoreCase(name, "transfer-encoding")) {
      return error(400, "Transfer-Encoding is not supported");
    } else if (EqualsIgnoreCase(name, "host")) {
      if (seen_host) return error(400, "duplicate Host");
      if (!IsHostValue(value)) return error(400, "invalid Host");
      seen_host = true;
    }
  }
  if (out->version_minor == 1 && !seen_host) return error(400, "missing Host");

  out->keep_alive = out->version_minor == 1 ? !out->HasToken("Connection", "close")
                                            : out->HasToken("Connection", "keep-alive");
  o.status = ParseStatus::kComplete;
  o.consumed = pos;
  return o;
}

}  // namespace parley::http

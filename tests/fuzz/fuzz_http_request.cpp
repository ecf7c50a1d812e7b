// Fuzzes the HTTP request-head parser: invariants of each outcome, and consistency between a
// buffer and its prefixes (a connection parses the head again as bytes arrive).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "parley/http/request_parser.h"

using namespace parley::http;

namespace {

void Check(bool cond) {
  if (!cond) std::abort();
}

bool Within(std::string_view inner, std::string_view outer) {
  return inner.empty() || (inner.data() >= outer.data() &&
                           inner.data() + inner.size() <= outer.data() + outer.size());
}

void CheckOutcome(const ParseOutcome& o, const Request& req, std::string_view buf, size_t max_head,
                  size_t max_headers) {
  switch (o.status) {
    case ParseStatus::kComplete: {
      Check(o.consumed >= 4 && o.consumed <= buf.size() && o.consumed <= max_head);
      Check(buf.substr(o.consumed - 4, 4) == "\r\n\r\n");
      const std::string_view head = buf.substr(0, o.consumed);
      Check(req.headers.size() <= max_headers);
      Check(req.version_minor == 0 || req.version_minor == 1);
      Check(!req.method.empty() && Within(req.method, head));
      Check(!req.target.empty() && Within(req.target, head));
      Check(req.path.size() <= req.target.size());
      for (const Header& h : req.headers) {
        Check(!h.name.empty() && Within(h.name, head) && Within(h.value, head));
        for (char c : h.value) Check(c != '\r' && c != '\n' && c != '\0');
        if (!h.value.empty()) Check(h.value.front() != ' ' && h.value.back() != ' ');
        Check(req.Find(h.name).data() != nullptr);
      }
      if (req.version_minor == 1) Check(req.Find("Host").data() != nullptr);
      break;
    }
    case ParseStatus::kIncomplete:
      Check(buf.size() < max_head);
      break;
    case ParseStatus::kError:
      Check(o.error_status == 400 || o.error_status == 431 || o.error_status == 505);
      Check(!o.error_reason.empty());
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const size_t max_head = 32 + size_t{data[0]} * 16;
  const size_t max_headers = 1 + data[0] % 24;
  const std::string_view buf(reinterpret_cast<const char*>(data + 1), size - 1);
  const RequestParser parser(max_head, max_headers);

  Request req;
  const ParseOutcome full = parser.Parse(buf, &req);
  CheckOutcome(full, req, buf, max_head, max_headers);

  // Every prefix (or a sample of them for long inputs) must be incomplete or agree.
  uint32_t rng = 0x9E3779B9u ^ static_cast<uint32_t>(size);
  const size_t tries = buf.size() <= 300 ? buf.size() : 48;
  for (size_t t = 0; t < tries; ++t) {
    size_t n = t;
    if (buf.size() > 300) {
      rng = rng * 1664525u + 1013904223u;
      n = rng % buf.size();
    }
    Request r;
    const ParseOutcome o = parser.Parse(buf.substr(0, n), &r);
    CheckOutcome(o, r, buf.substr(0, n), max_head, max_headers);
    if (o.status == ParseStatus::kIncomplete) continue;
    Check(o.status == full.status);
    if (o.status == ParseStatus::kError) Check(o.error_status == full.error_status);
    if (o.status == ParseStatus::kComplete) {
      Check(o.consumed == full.consumed);
      Check(r.headers.size() == req.headers.size());
    }
  }
  return 0;
}

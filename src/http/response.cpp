#include "parley/http/response.h"

#include <charconv>

namespace parley::http {

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 101:
      return "Switching Protocols";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 415:
      return "Unsupported Media Type";
    case 426:
      return "Upgrade Required";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 503:
      return "Service Unavailable";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Unknown";
  }
}

void AppendResponse(std::string* out, int status, std::string_view content_type,
                    std::string_view body, bool keep_alive, std::string_view extra_headers) {
  char num[24];
  auto append_number = [&](uint64_t v) {
    out->append(num, static_cast<size_t>(std::to_chars(num, num + sizeof(num), v).ptr - num));
  };
  out->append("HTTP/1.1 ");
  append_number(static_cast<uint64_t>(status));
  out->append(" ").append(ReasonPhrase(status)).append("\r\n");
  if (!content_type.empty()) out->append("Content-Type: ").append(content_type).append("\r\n");
  // 1xx and 204 responses never carry a body, and RFC 9110 forbids Content-Length on them.
  const bool has_body = status >= 200 && status != 204;
  if (has_body) {
    out->append("Content-Length: ");
    append_number(body.size());
    out->append("\r\n");
  }
  if (!keep_alive) out->append("Connection: close\r\n");
  out->append(extra_headers).append("\r\n");
  if (has_body) out->append(body);
}

}  // namespace parley::http

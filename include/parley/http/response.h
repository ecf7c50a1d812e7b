// Building HTTP/1.1 responses into an output buffer.
#pragma once

#include <string>
#include <string_view>

namespace parley::http {

// Standard reason phrase for a status code ("OK", "Not Found", ...).
std::string_view ReasonPhrase(int status);

// Appends a complete response with Content-Length. `extra_headers` is zero or more
// "Name: value\r\n" lines, inserted verbatim. When keep_alive is false, adds
// "Connection: close".
void AppendResponse(std::string* out, int status, std::string_view content_type,
                    std::string_view body, bool keep_alive, std::string_view extra_headers = {});

}  // namespace parley::http

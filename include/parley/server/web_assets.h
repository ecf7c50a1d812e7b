// Files of the built-in web client, compiled into the binary (no files needed at run time).
#pragma once

#include <string_view>

namespace parley::server {

struct WebAsset {
  std::string_view path;  // e.g. "/" or "/app.js"
  std::string_view content_type;
  std::string_view body;
};

// The asset served at `path`, or nullptr.
const WebAsset* FindWebAsset(std::string_view path);

}  // namespace parley::server

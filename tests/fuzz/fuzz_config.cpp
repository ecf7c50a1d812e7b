// Fuzzes the TOML configuration parser with arbitrary text: no crash, no escaping exception, and
// any configuration it accepts renders to TOML that parses back to the same values.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "parley/config/config.h"

namespace {

bool Same(const parley::Config& a, const parley::Config& b) {
  auto same_double = [](double x, double y) { return x == y || (std::isnan(x) && std::isnan(y)); };
  return a.server.listen == b.server.listen && a.server.threads == b.server.threads &&
         a.server.node_name == b.server.node_name && a.storage.data_dir == b.storage.data_dir &&
         a.storage.sync == b.storage.sync && a.auth.mode == b.auth.mode &&
         a.auth.jwt_secret == b.auth.jwt_secret && a.auth.admin_token == b.auth.admin_token &&
         a.auth.allow_dev_on_public == b.auth.allow_dev_on_public &&
         a.limits.max_message_bytes == b.limits.max_message_bytes &&
         a.limits.max_body_bytes == b.limits.max_body_bytes &&
         a.limits.max_meta_bytes == b.limits.max_meta_bytes &&
         a.limits.max_outbound_bytes == b.limits.max_outbound_bytes &&
         a.limits.max_outbound_total_bytes == b.limits.max_outbound_total_bytes &&
         a.limits.max_header_bytes == b.limits.max_header_bytes &&
         a.limits.handshake_timeout_ms == b.limits.handshake_timeout_ms &&
         a.limits.heartbeat_ms == b.limits.heartbeat_ms &&
         same_double(a.limits.rate_per_sec, b.limits.rate_per_sec) &&
         same_double(a.limits.rate_burst, b.limits.rate_burst) &&
         same_double(a.limits.request_rate_per_sec, b.limits.request_rate_per_sec) &&
         same_double(a.limits.request_rate_burst, b.limits.request_rate_burst) &&
         a.limits.max_watch == b.limits.max_watch &&
         a.limits.max_group_size == b.limits.max_group_size &&
         a.limits.max_connections == b.limits.max_connections &&
         a.debug.echo_endpoint == b.debug.echo_endpoint;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<parley::Config> parsed = parley::ParseConfigToml(text, "fuzz.toml");
  if (!parsed.ok()) {
    if (parsed.status().message().empty()) std::abort();
    return 0;
  }
  (void)parley::ValidateConfig(*parsed);  // exercises the listen-address parser
  std::string rendered = parley::RenderConfigToml(*parsed);
  absl::StatusOr<parley::Config> back = parley::ParseConfigToml(rendered, "rendered.toml");
  if (!back.ok() || !Same(*parsed, *back)) std::abort();
  // Also feed the input as a flag value to every kind of option.
  parley::Config c = *parsed;
  for (const char* key :
       {"server.listen", "server.threads", "limits.max_watch", "limits.max_outbound_bytes",
        "limits.rate_per_sec", "debug.echo_endpoint"}) {
    (void)parley::ApplyConfigOverride(&c, key, text.substr(0, 64));
  }
  return 0;
}

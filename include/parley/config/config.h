// Server configuration: embedded defaults, overridden by a TOML file, overridden by flags.
//
// Every key of config/parley.toml is a field here and can also be given on the command line as
// --<section>.<key>=<value> (e.g. --limits.max_message_bytes=131072); --listen, --data and
// --threads are short forms of server.listen, storage.data_dir and server.threads.
// The Config is built once in main() and passed by const reference: there is no global.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace parley {

struct Config {
  struct Server {
    std::string listen = "127.0.0.1:8080";  // HOST:PORT; [v6]:port accepted
    int threads = 0;                        // reactor threads; 0 = one per online CPU
    std::string node_name;                  // empty = the host name
  } server;

  struct Storage {
    std::string data_dir = "./data";
    std::string sync = "fsync";  // "fsync": ack after fsync; "none": ack after the write
    uint64_t min_free_bytes = 256ull << 20;  // sends refused below this much free disk
  } storage;

  struct Auth {
    std::string mode = "dev";          // "dev": hello names the user; "jwt": HS256 token required
    std::string jwt_secret;            // required in "jwt" mode; env PARLEY_JWT_SECRET overrides
    std::string admin_token;           // bearer token for POST /api/v1/send; env PARLEY_ADMIN_TOKEN
    bool allow_dev_on_public = false;  // dev mode on a non-loopback address only if true
  } auth;

  struct Limits {
    uint64_t max_message_bytes = 65536;     // reassembled WebSocket message
    uint64_t max_body_bytes = 16384;        // send.body
    uint64_t max_meta_bytes = 4096;         // send.meta, serialised
    uint64_t max_outbound_bytes = 4 << 20;  // unsent data per connection before 4008
    // Unsent data of all connections, split evenly per core; past a core's share its largest
    // queue is closed with 4008. 0 = no process-wide budget.
    uint64_t max_outbound_total_bytes = 1ull << 30;
    uint64_t max_header_bytes = 8192;      // HTTP request head
    int64_t handshake_timeout_ms = 10000;  // time to complete the HTTP head / upgrade
    int64_t heartbeat_ms = 25000;          // expected client activity interval
    double rate_per_sec = 50;              // send + typing token bucket rate
    double rate_burst = 100;               // token bucket size
    double request_rate_per_sec = 200;     // every other request but ping: bucket rate
    double request_rate_burst = 400;       // and its bucket size
    uint32_t max_watch = 1000;             // presence watch list per connection
    uint32_t max_group_size = 200;
    uint32_t max_connections = 100000;       // per process; beyond, new sockets are refused
    uint32_t max_connections_per_ip = 1000;  // per remote address, 0 = no limit
    uint32_t max_connections_per_user = 32;  // devices online at once per user
  } limits;

  struct Debug {
    bool echo_endpoint = false;  // serve a plain WebSocket echo at /echo (conformance tests)
  } debug;
};

// Parses TOML text (an unknown section or key, or a value of the wrong type, is an error that
// names it). `source` names the text in error messages.
absl::StatusOr<Config> ParseConfigToml(std::string_view toml_text, std::string_view source,
                                       Config base = Config());

// Applies one "section.key" = "value" override given as text (from a flag).
absl::Status ApplyConfigOverride(Config* config, std::string_view dotted_key,
                                 std::string_view value);

// Checks cross-field rules: listen address parses, sync is "fsync"|"none", auth mode is
// "dev"|"jwt", jwt mode has a secret, limits are positive, and dev mode is refused on a
// non-loopback address unless auth.allow_dev_on_public (the error says why).
absl::Status ValidateConfig(const Config& config);

// Renders the effective configuration as TOML (for `parley --print-config`). The output parses
// back with ParseConfigToml to an equal Config (for strings that are valid UTF-8, as every string
// read from TOML is).
std::string RenderConfigToml(const Config& config);

// The same, but auth.jwt_secret and auth.admin_token, when set, are written as comments that give
// only their length, so the text can be shared safely (it then no longer round-trips).
std::string RenderConfigToml(const Config& config, bool hide_secrets);

// A server.listen value split for bind(). `host` is numeric and unbracketed ("localhost" becomes
// "127.0.0.1"; "[::1]:80" gives host "::1" with ipv6 = true).
struct ListenAddress {
  std::string host;
  uint16_t port = 0;
  bool ipv6 = false;
};

// Accepts IPV4:PORT (dotted decimal), localhost:PORT and [IPV6]:PORT, with PORT in 0-65535.
absl::StatusOr<ListenAddress> ParseListenAddress(std::string_view text);

// True for 127.0.0.0/8, ::1 (also IPv4-mapped 127/8, with or without brackets) and "localhost".
bool IsLoopbackHost(std::string_view host);

// Command line: `parley [--config FILE] [--listen HOST:PORT] [--data DIR] [--threads N]
// [--section.key=value ...]`, plus `--help`, `--version`, `--print-config`, and the
// subcommand `token --user U [--ttl S]`.
struct CommandLine {
  enum class Action { kServe, kHelp, kVersion, kPrintConfig, kToken } action = Action::kServe;
  Config config;               // defaults < file < environment < flags, validated for kServe
  std::string token_user;      // for kToken
  int64_t token_ttl_s = 3600;  // for kToken; 0 = a token without "exp"
  std::string config_file;     // the --config path; empty when none was given
};

// Parses argv (argv[0] is the program name), reading the --config file if given. The environment
// supplies PARLEY_JWT_SECRET and PARLEY_ADMIN_TOKEN (an empty variable counts as unset). For
// kToken the result has a usable secret and a valid user id; for kServe it passed ValidateConfig.
absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv);

// The same with the environment supplied by the caller (returns nullopt for an unset variable).
using EnvLookup = std::function<std::optional<std::string>(std::string_view name)>;
absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv,
                                             const EnvLookup& env);

// The --help text.
std::string UsageText();

}  // namespace parley

#include "parley/config/config.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"

using parley::ApplyConfigOverride;
using parley::CommandLine;
using parley::Config;
using parley::IsLoopbackHost;
using parley::ParseCommandLine;
using parley::ParseConfigToml;
using parley::ParseListenAddress;
using parley::RenderConfigToml;
using parley::ValidateConfig;

namespace {

// Compares every field. The structured bindings fail to compile when Config gains a field, so a
// new field cannot be forgotten here (and so in the parley.toml and round-trip checks below).
void CheckSame(const Config& a, const Config& b) {
  [[maybe_unused]] const auto& [s, st, au, li, de] = a;
  [[maybe_unused]] const auto& [s1, s2, s3] = a.server;
  [[maybe_unused]] const auto& [st1, st2, st3] = a.storage;
  [[maybe_unused]] const auto& [a1, a2, a3, a4] = a.auth;
  [[maybe_unused]] const auto& [l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15,
                                l16, l17] = a.limits;
  [[maybe_unused]] const auto& [d1] = a.debug;
  CHECK(a.server.listen == b.server.listen);
  CHECK(a.server.threads == b.server.threads);
  CHECK(a.server.node_name == b.server.node_name);
  CHECK(a.storage.data_dir == b.storage.data_dir);
  CHECK(a.storage.sync == b.storage.sync);
  CHECK(a.storage.min_free_bytes == b.storage.min_free_bytes);
  CHECK(a.auth.mode == b.auth.mode);
  CHECK(a.auth.jwt_secret == b.auth.jwt_secret);
  CHECK(a.auth.admin_token == b.auth.admin_token);
  CHECK(a.auth.allow_dev_on_public == b.auth.allow_dev_on_public);
  CHECK(a.limits.max_message_bytes == b.limits.max_message_bytes);
  CHECK(a.limits.max_body_bytes == b.limits.max_body_bytes);
  CHECK(a.limits.max_meta_bytes == b.limits.max_meta_bytes);
  CHECK(a.limits.max_outbound_bytes == b.limits.max_outbound_bytes);
  CHECK(a.limits.max_outbound_total_bytes == b.limits.max_outbound_total_bytes);
  CHECK(a.limits.max_header_bytes == b.limits.max_header_bytes);
  CHECK(a.limits.handshake_timeout_ms == b.limits.handshake_timeout_ms);
  CHECK(a.limits.heartbeat_ms == b.limits.heartbeat_ms);
  CHECK(a.limits.rate_per_sec == b.limits.rate_per_sec);
  CHECK(a.limits.rate_burst == b.limits.rate_burst);
  CHECK(a.limits.request_rate_per_sec == b.limits.request_rate_per_sec);
  CHECK(a.limits.request_rate_burst == b.limits.request_rate_burst);
  CHECK(a.limits.max_watch == b.limits.max_watch);
  CHECK(a.limits.max_group_size == b.limits.max_group_size);
  CHECK(a.limits.max_connections == b.limits.max_connections);
  CHECK(a.limits.max_connections_per_ip == b.limits.max_connections_per_ip);
  CHECK(a.limits.max_connections_per_user == b.limits.max_connections_per_user);
  CHECK(a.debug.echo_endpoint == b.debug.echo_endpoint);
}

// A config in which every field differs from its default.
Config Sentinel() {
  Config c;
  c.server.listen = "[::1]:9";
  c.server.threads = 7;
  c.server.node_name = "node-\"7\"\\x";
  c.storage.data_dir = "/tmp/p d\tx";
  c.storage.sync = "none";
  c.storage.min_free_bytes = 12345;
  c.auth.mode = "jwt";
  c.auth.jwt_secret = "s3cr3t-#-'quote'-\"dq\"-\x01-caf\xc3\xa9";
  c.auth.admin_token = "adm\nin";
  c.auth.allow_dev_on_public = true;
  c.limits.max_message_bytes = 1;
  c.limits.max_body_bytes = 2;
  c.limits.max_meta_bytes = 3;
  c.limits.max_outbound_bytes = 9223372036854775807ull;
  c.limits.max_outbound_total_bytes = 0;
  c.limits.max_header_bytes = 5;
  c.limits.handshake_timeout_ms = -6;
  c.limits.heartbeat_ms = 7;
  c.limits.rate_per_sec = 0.1;
  c.limits.rate_burst = 1e-300;
  c.limits.request_rate_per_sec = 0.25;
  c.limits.request_rate_burst = 3.5;
  c.limits.max_watch = 4294967295u;
  c.limits.max_group_size = 10;
  c.limits.max_connections = 11;
  c.limits.max_connections_per_ip = 77;
  c.limits.max_connections_per_user = 5;
  c.debug.echo_endpoint = true;
  return c;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A scratch directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "parley-config-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string Write(const std::string& name, const std::string& text) const {
    std::string p = path_ + "/" + name;
    std::ofstream(p) << text;
    return p;
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

using Env = std::map<std::string, std::string, std::less<>>;

absl::StatusOr<CommandLine> Parse(std::vector<std::string> args, const Env& env = {}) {
  std::vector<const char*> argv = {"parley"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data(),
                          [&env](std::string_view name) -> std::optional<std::string> {
                            auto it = env.find(name);
                            if (it == env.end()) return std::nullopt;
                            return it->second;
                          });
}

std::string ErrorOf(const absl::StatusOr<CommandLine>& r) {
  REQUIRE_FALSE(r.ok());
  return std::string(r.status().message());
}

std::string TomlError(std::string_view text, std::string_view source = "t.toml") {
  absl::StatusOr<Config> r = ParseConfigToml(text, source);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  return std::string(r.status().message());
}

std::string ValidationError(const Config& c) {
  absl::Status s = ValidateConfig(c);
  REQUIRE_FALSE(s.ok());
  return std::string(s.message());
}

constexpr char kSecret16[] = "0123456789abcdef";

}  // namespace

TEST_CASE("config: defaults are the documented values and valid", "[config]") {
  Config c;
  CHECK(c.server.listen == "127.0.0.1:8080");
  CHECK(c.server.threads == 0);
  CHECK(c.storage.sync == "fsync");
  CHECK(c.auth.mode == "dev");
  CHECK(c.limits.max_outbound_bytes == 4u * 1024 * 1024);
  CHECK(ValidateConfig(c).ok());
  // An empty file is the defaults.
  absl::StatusOr<Config> empty = ParseConfigToml("", "empty.toml");
  REQUIRE(empty.ok());
  CheckSame(*empty, Config());
}

TEST_CASE("config: config/parley.toml documents every option at its default", "[config]") {
  std::string path = std::string(PARLEY_SOURCE_DIR) + "/config/parley.toml";
  std::string text = ReadFile(path);
  REQUIRE_FALSE(text.empty());
  // Parsed over a base where every field differs from its default, the file must bring every
  // field back to the default: a field missing from the file keeps its sentinel and fails here.
  absl::StatusOr<Config> parsed = ParseConfigToml(text, path, Sentinel());
  INFO(parsed.status().ToString());
  REQUIRE(parsed.ok());
  CheckSame(*parsed, Config());
  // Every key line has a comment above it.
  std::istringstream lines(text);
  std::string line;
  std::string previous;
  int keys = 0;
  while (std::getline(lines, line)) {
    if (!line.empty() && line[0] != '#' && line[0] != '[') {
      INFO(line);
      CHECK(absl::StartsWith(previous, "#"));
      ++keys;
    }
    previous = line;
  }
  CHECK(keys == 28);
}

TEST_CASE("config: the sentinel differs from the defaults in every field", "[config]") {
  // Guards the parley.toml test above: it only proves coverage if this holds.
  Config s = Sentinel();
  Config d;
  CHECK(s.server.listen != d.server.listen);
  CHECK(s.server.threads != d.server.threads);
  CHECK(s.server.node_name != d.server.node_name);
  CHECK(s.storage.data_dir != d.storage.data_dir);
  CHECK(s.storage.sync != d.storage.sync);
  CHECK(s.storage.min_free_bytes != d.storage.min_free_bytes);
  CHECK(s.auth.mode != d.auth.mode);
  CHECK(s.auth.jwt_secret != d.auth.jwt_secret);
  CHECK(s.auth.admin_token != d.auth.admin_token);
  CHECK(s.auth.allow_dev_on_public != d.auth.allow_dev_on_public);
  CHECK(s.limits.max_message_bytes != d.limits.max_message_bytes);
  CHECK(s.limits.max_body_bytes != d.limits.max_body_bytes);
  CHECK(s.limits.max_meta_bytes != d.limits.max_meta_bytes);
  CHECK(s.limits.max_outbound_bytes != d.limits.max_outbound_bytes);
  CHECK(s.limits.max_outbound_total_bytes != d.limits.max_outbound_total_bytes);
  CHECK(s.limits.max_header_bytes != d.limits.max_header_bytes);
  CHECK(s.limits.handshake_timeout_ms != d.limits.handshake_timeout_ms);
  CHECK(s.limits.heartbeat_ms != d.limits.heartbeat_ms);
  CHECK(s.limits.rate_per_sec != d.limits.rate_per_sec);
  CHECK(s.limits.rate_burst != d.limits.rate_burst);
  CHECK(s.limits.request_rate_per_sec != d.limits.request_rate_per_sec);
  CHECK(s.limits.request_rate_burst != d.limits.request_rate_burst);
  CHECK(s.limits.max_watch != d.limits.max_watch);
  CHECK(s.limits.max_group_size != d.limits.max_group_size);
  CHECK(s.limits.max_connections != d.limits.max_connections);
  CHECK(s.limits.max_connections_per_ip != d.limits.max_connections_per_ip);
  CHECK(s.limits.max_connections_per_user != d.limits.max_connections_per_user);
  CHECK(s.debug.echo_endpoint != d.debug.echo_endpoint);
}

TEST_CASE("config: RenderConfigToml round-trips through ParseConfigToml", "[config]") {
  // Each is parsed over the other, so every field must come from the text.
  for (auto [c, base] : {std::pair{Config(), Sentinel()}, std::pair{Sentinel(), Config()}}) {
    std::string text = RenderConfigToml(c);
    INFO(text);
    absl::StatusOr<Config> back = ParseConfigToml(text, "rendered", base);
    REQUIRE(back.ok());
    CheckSame(*back, c);
  }
  // Floats that need every digit, and float values that look like integers.
  Config c;
  for (double v :
       {1.0, 50.0, 0.1, 1.0 / 3.0, 123456789.125, 1e21, 5e-324, 1.7976931348623157e308}) {
    c.limits.rate_per_sec = v;
    absl::StatusOr<Config> back = ParseConfigToml(RenderConfigToml(c), "rendered");
    REQUIRE(back.ok());
    CHECK(back->limits.rate_per_sec == v);
  }
  // Every byte value in a string survives.
  std::string all;
  for (int i = 1; i < 128; ++i) all.push_back(static_cast<char>(i));
  c.server.node_name = all;
  c.auth.admin_token = "\xe2\x82\xac \xf0\x9f\x92\xac";
  absl::StatusOr<Config> back = ParseConfigToml(RenderConfigToml(c), "rendered");
  REQUIRE(back.ok());
  CHECK(back->server.node_name == all);
  CHECK(back->auth.admin_token == c.auth.admin_token);
}

TEST_CASE("config: RenderConfigToml can hide secrets", "[config]") {
  Config c;
  c.auth.jwt_secret = "very-secret-jwt-value";
  c.auth.admin_token = "very-secret-admin";
  std::string shown = RenderConfigToml(c);
  std::string hidden = RenderConfigToml(c, true);
  CHECK(absl::StrContains(shown, "very-secret-jwt-value"));
  CHECK_FALSE(absl::StrContains(hidden, "very-secret"));
  CHECK(absl::StrContains(hidden, "jwt_secret is set (21 bytes, hidden)"));
  // Hidden secrets parse back as unset, so the text never passes for the real configuration.
  absl::StatusOr<Config> back = ParseConfigToml(hidden, "hidden");
  REQUIRE(back.ok());
  CHECK(back->auth.jwt_secret.empty());
  CHECK(back->auth.admin_token.empty());
  // Unset secrets are rendered normally either way.
  CHECK(RenderConfigToml(Config(), true) == RenderConfigToml(Config()));
}

TEST_CASE("config: a file sets only the keys it names", "[config]") {
  absl::StatusOr<Config> c = ParseConfigToml(R"(
# comment
[server]
listen = "0.0.0.0:9000"
threads = 4

[limits]
rate_per_sec = 20        # an integer is accepted for a float option
rate_burst = 2.5
max_outbound_bytes = 8_388_608

[debug]
echo_endpoint = true
)",
                                             "a.toml");
  REQUIRE(c.ok());
  CHECK(c->server.listen == "0.0.0.0:9000");
  CHECK(c->server.threads == 4);
  CHECK(c->limits.rate_per_sec == 20.0);
  CHECK(c->limits.rate_burst == 2.5);
  CHECK(c->limits.max_outbound_bytes == 8388608u);
  CHECK(c->debug.echo_endpoint);
  CHECK(c->storage.data_dir == "./data");  // untouched
  CHECK(c->auth.mode == "dev");

  // Dotted keys and inline tables are the same TOML.
  c = ParseConfigToml("auth.mode = \"jwt\"\nstorage = { sync = \"none\" }\n", "b.toml");
  REQUIRE(c.ok());
  CHECK(c->auth.mode == "jwt");
  CHECK(c->storage.sync == "none");

  // The base is kept where the file is silent.
  Config base;
  base.server.node_name = "from-base";
  c = ParseConfigToml("[server]\nthreads = 2\n", "c.toml", base);
  REQUIRE(c.ok());
  CHECK(c->server.node_name == "from-base");
  CHECK(c->server.threads == 2);
}

TEST_CASE("config: file errors name the key and where it is", "[config]") {
  SECTION("syntax error") {
    std::string e = TomlError("[server]\nlisten = \"unterminated\n", "bad.toml");
    CHECK(absl::StrContains(e, "bad.toml:2:"));
  }
  SECTION("duplicate key") {
    std::string e = TomlError("[server]\nthreads = 1\nthreads = 2\n");
    CHECK(absl::StrContains(e, "t.toml:3:"));
  }
  SECTION("unknown section, with a suggestion") {
    std::string e = TomlError("\n[sever]\nlisten = \"127.0.0.1:1\"\n");
    CHECK(absl::StrContains(e, "t.toml:2:"));
    CHECK(absl::StrContains(e, "unknown section 'sever'"));
    CHECK(absl::StrContains(e, "did you mean [server]"));
  }
  SECTION("unknown key, with a suggestion") {
    std::string e = TomlError("[server]\nlisen = \"127.0.0.1:1\"\n");
    CHECK(absl::StrContains(e, "t.toml:2:"));
    CHECK(absl::StrContains(e, "unknown key 'server.lisen'"));
    CHECK(absl::StrContains(e, "did you mean 'server.listen'"));
  }
  SECTION("a key in the wrong section points at the right one") {
    std::string e = TomlError("[server]\nmax_watch = 5\n");
    CHECK(absl::StrContains(e, "unknown key 'server.max_watch'"));
    CHECK(absl::StrContains(e, "did you mean 'limits.max_watch'"));
  }
  SECTION("a key outside any section") {
    std::string e = TomlError("listen = \"127.0.0.1:1\"\n");
    CHECK(absl::StrContains(e, "t.toml:1:"));
    CHECK(absl::StrContains(e, "'server.listen'"));
  }
  SECTION("unknown key with nothing close") {
    std::string e = TomlError("[limits]\nzzzzzzzzzzzzzzzzzzzz = 1\n");
    CHECK(absl::StrContains(e, "unknown key 'limits.zzzzzzzzzzzzzzzzzzzz'"));
    CHECK_FALSE(absl::StrContains(e, "did you mean"));
  }
  SECTION("a section that is not a table") {
    std::string e = TomlError("server = 5\n");
    CHECK(absl::StrContains(e, "'server' must be a table"));
  }
  SECTION("an array of tables is not a section") {
    std::string e = TomlError("[[server]]\nthreads = 1\n");
    CHECK(absl::StrContains(e, "'server' must be a table"));
  }
  struct Case {
    std::string text;
    std::string key;
    std::string got;
  };
  std::vector<Case> wrong_types = {
      {"[server]\nthreads = \"4\"\n", "server.threads must be an integer", "a string"},
      {"[server]\nthreads = 4.0\n", "server.threads must be an integer", "the float 4"},
      {"[server]\nthreads = 3000000000\n", "server.threads must be an integer",
       "the integer 3000000000"},
      {"[server]\nlisten = 8080\n", "server.listen must be a string", "the integer 8080"},
      {"[server]\nnode_name = [\"a\"]\n", "server.node_name must be a string", "an array"},
      {"[storage]\nsync = true\n", "storage.sync must be a string", "a boolean"},
      {"[auth]\nallow_dev_on_public = \"yes\"\n", "auth.allow_dev_on_public must be a boolean",
       "a string"},
      {"[auth]\nallow_dev_on_public = 1\n", "auth.allow_dev_on_public must be a boolean",
       "the integer 1"},
      {"[limits]\nmax_message_bytes = -1\n", "limits.max_message_bytes must be a non-negative",
       "the integer -1"},
      {"[limits]\nmax_watch = 4294967296\n",
       "limits.max_watch must be a non-negative integer "
       "below 2^32",
       "the integer 4294967296"},
      {"[limits]\nrate_per_sec = \"fast\"\n", "limits.rate_per_sec must be a finite number",
       "a string"},
      {"[limits]\nrate_per_sec = nan\n", "limits.rate_per_sec must be a finite number",
       "the float nan"},
      {"[limits]\nrate_burst = inf\n", "limits.rate_burst must be a finite number",
       "the float inf"},
      {"[limits]\nheartbeat_ms = 1979-05-27\n", "limits.heartbeat_ms must be an integer",
       "a date/time"},
      {"[limits]\nheartbeat_ms = { a = 1 }\n", "limits.heartbeat_ms must be an integer", "a table"},
      {"[debug]\necho_endpoint = 0\n", "debug.echo_endpoint must be a boolean", "the integer 0"},
  };
  for (const Case& c : wrong_types) {
    INFO(c.text);
    std::string e = TomlError(c.text);
    CHECK(absl::StrContains(e, "t.toml:2:"));
    CHECK(absl::StrContains(e, c.key));
    CHECK(absl::StrContains(e, c.got));
  }
  SECTION("oversize text") {
    std::string e = TomlError(std::string(2 << 20, '#'));
    CHECK(absl::StrContains(e, "larger than"));
  }
}

TEST_CASE("config: ApplyConfigOverride parses text for every type", "[config]") {
  Config c;
  REQUIRE(ApplyConfigOverride(&c, "server.listen", "[::]:1").ok());
  CHECK(c.server.listen == "[::]:1");
  REQUIRE(ApplyConfigOverride(&c, "server.threads", "-3").ok());
  CHECK(c.server.threads == -3);
  REQUIRE(ApplyConfigOverride(&c, "server.node_name", "").ok());
  CHECK(c.server.node_name.empty());
  REQUIRE(ApplyConfigOverride(&c, "limits.max_outbound_bytes", "9223372036854775807").ok());
  CHECK(c.limits.max_outbound_bytes == 9223372036854775807ull);
  REQUIRE(ApplyConfigOverride(&c, "limits.max_watch", "4294967295").ok());
  CHECK(c.limits.max_watch == 4294967295u);
  REQUIRE(ApplyConfigOverride(&c, "limits.handshake_timeout_ms", "-9").ok());
  CHECK(c.limits.handshake_timeout_ms == -9);
  REQUIRE(ApplyConfigOverride(&c, "limits.rate_per_sec", "2.5").ok());
  CHECK(c.limits.rate_per_sec == 2.5);
  REQUIRE(ApplyConfigOverride(&c, "limits.rate_burst", "7").ok());
  CHECK(c.limits.rate_burst == 7.0);
  for (auto [text, want] : {std::pair{"true", true}, {"false", false}, {"1", true}, {"0", false}}) {
    REQUIRE(ApplyConfigOverride(&c, "debug.echo_endpoint", text).ok());
    CHECK(c.debug.echo_endpoint == want);
  }

  struct Bad {
    const char* key;
    const char* value;
  };
  for (Bad b : {Bad{"debug.echo_endpoint", "yes"},
                {"debug.echo_endpoint", "TRUE"},
                {"debug.echo_endpoint", ""},
                {"server.threads", "4x"},
                {"server.threads", ""},
                {"server.threads", "+4"},
                {"server.threads", " 4"},
                {"server.threads", "1.5"},
                {"server.threads", "99999999999"},
                {"limits.max_watch", "-1"},
                {"limits.max_watch", "4294967296"},
                {"limits.max_body_bytes", "-1"},
                {"limits.max_body_bytes", "9223372036854775808"},
                {"limits.heartbeat_ms", "9223372036854775808"},
                {"limits.rate_per_sec", "fast"},
                {"limits.rate_per_sec", "inf"},
                {"limits.rate_per_sec", "nan"},
                {"limits.rate_per_sec", "1.5x"}}) {
    INFO(b.key << " = '" << b.value << "'");
    Config before;
    Config after = before;
    absl::Status s = ApplyConfigOverride(&after, b.key, b.value);
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
    CHECK(absl::StrContains(s.message(), b.key));
    CheckSame(after, before);  // a failed override changes nothing
  }
  absl::Status s = ApplyConfigOverride(&c, "limits.max_wach", "1");
  CHECK(absl::StrContains(s.message(), "unknown option 'limits.max_wach'"));
  CHECK(absl::StrContains(s.message(), "did you mean 'limits.max_watch'"));
  s = ApplyConfigOverride(&c, "listen", "127.0.0.1:1");
  CHECK_FALSE(s.ok());
  CHECK(absl::StrContains(s.message(), "did you mean 'server.listen'"));
  CHECK_FALSE(ApplyConfigOverride(&c, "server", "x").ok());
  CHECK_FALSE(ApplyConfigOverride(&c, "", "x").ok());
}

TEST_CASE("config: listen addresses", "[config]") {
  struct Good {
    const char* text;
    const char* host;
    uint16_t port;
    bool ipv6;
  };
  for (Good g : {Good{"127.0.0.1:8080", "127.0.0.1", 8080, false},
                 {"0.0.0.0:0", "0.0.0.0", 0, false},
                 {"255.255.255.255:65535", "255.255.255.255", 65535, false},
                 {"localhost:80", "127.0.0.1", 80, false},
                 {"LocalHost:80", "127.0.0.1", 80, false},
                 {"[::1]:8080", "::1", 8080, true},
                 {"[::]:443", "::", 443, true},
                 {"[2001:db8::1]:1", "2001:db8::1", 1, true},
                 {"[::ffff:10.0.0.1]:5", "::ffff:10.0.0.1", 5, true},
                 {"10.1.2.3:00080", "10.1.2.3", 80, false}}) {
    INFO(g.text);
    absl::StatusOr<parley::ListenAddress> a = ParseListenAddress(g.text);
    REQUIRE(a.ok());
    CHECK(a->host == g.host);
    CHECK(a->port == g.port);
    CHECK(a->ipv6 == g.ipv6);
  }
  for (const char* bad : {"",
                          ":",
                          "8080",
                          ":8080",
                          "127.0.0.1",
                          "127.0.0.1:",
                          "127.0.0.1:65536",
                          "127.0.0.1:-1",
                          "127.0.0.1:http",
                          "127.0.0.1:8080 ",
                          "127.0.0.1:123456",
                          "256.0.0.1:80",
                          "1.2.3:80",
                          "01.2.3.4:80",
                          "example.com:80",
                          "::1:8080",
                          "[::1]",
                          "[::1]8080",
                          "[::1:8080",
                          "[127.0.0.1]:80",
                          "[fe80::1%eth0]:80",
                          "[]:80",
                          "local host:80"}) {
    INFO(bad);
    absl::StatusOr<parley::ListenAddress> a = ParseListenAddress(bad);
    CHECK_FALSE(a.ok());
    if (!a.ok()) CHECK(absl::StrContains(a.status().message(), "server.listen"));
  }
  // An embedded NUL is not the end of the host.
  CHECK_FALSE(ParseListenAddress(std::string("127.0.0.1\0x:80", 15)).ok());
  CHECK_FALSE(ParseListenAddress(std::string("[::1\0x]:80", 11)).ok());
  CHECK_FALSE(IsLoopbackHost(std::string("127.0.0.1\0x", 11)));
  // The bracket hint for a bare IPv6 address.
  CHECK(absl::StrContains(ParseListenAddress("::1:8080").status().message(), "brackets"));
}

TEST_CASE("config: loopback hosts", "[config]") {
  for (const char* h : {"127.0.0.1", "127.255.255.254", "127.1.2.3", "localhost", "LOCALHOST",
                        "::1", "[::1]", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"}) {
    INFO(h);
    CHECK(IsLoopbackHost(h));
  }
  for (const char* h :
       {"0.0.0.0", "::", "[::]", "10.0.0.1", "128.0.0.1", "126.255.255.255", "192.168.1.1", "::2",
        "::ffff:10.0.0.1", "example.com", "", "localhost.", "127.0.0.1.nip.io"}) {
    INFO(h);
    CHECK_FALSE(IsLoopbackHost(h));
  }
}

TEST_CASE("config: validation rules", "[config]") {
  Config ok;
  REQUIRE(ValidateConfig(ok).ok());

  SECTION("dev mode on a public address is refused, and the error says why") {
    for (const char* listen : {"0.0.0.0:8080", "[::]:8080", "192.168.1.10:80"}) {
      INFO(listen);
      Config c;
      c.server.listen = listen;
      std::string e = ValidationError(c);
      CHECK(absl::StrContains(e, listen));
      CHECK(absl::StrContains(e, "anyone"));
      CHECK(absl::StrContains(e, "any user"));
      CHECK(absl::StrContains(e, "auth.mode = \"jwt\""));
      CHECK(absl::StrContains(e, "--auth.allow_dev_on_public=true"));
      c.auth.allow_dev_on_public = true;
      CHECK(ValidateConfig(c).ok());
    }
    for (const char* listen : {"127.0.0.1:8080", "127.9.9.9:1", "localhost:1", "[::1]:1"}) {
      INFO(listen);
      Config c;
      c.server.listen = listen;
      CHECK(ValidateConfig(c).ok());
    }
  }
  SECTION("jwt mode needs a secret of at least 16 bytes, and then serves any address") {
    Config c;
    c.auth.mode = "jwt";
    c.server.listen = "0.0.0.0:8080";
    std::string e = ValidationError(c);
    CHECK(absl::StrContains(e, "auth.jwt_secret"));
    CHECK(absl::StrContains(e, "PARLEY_JWT_SECRET"));
    c.auth.jwt_secret = "0123456789abcde";  // 15 bytes
    CHECK(absl::StrContains(ValidationError(c), "at least 16 bytes"));
    c.auth.jwt_secret = kSecret16;
    CHECK(ValidateConfig(c).ok());
  }
  SECTION("enumerations") {
    Config c;
    c.storage.sync = "always";
    CHECK(absl::StrContains(ValidationError(c), "storage.sync"));
    c = Config();
    c.auth.mode = "JWT";
    CHECK(absl::StrContains(ValidationError(c), "auth.mode"));
    c.storage.sync = "none";
    c.auth.mode = "dev";
    CHECK(ValidateConfig(c).ok());
  }
  SECTION("threads 0..256") {
    Config c;
    c.server.threads = 256;
    CHECK(ValidateConfig(c).ok());
    c.server.threads = 257;
    CHECK(absl::StrContains(ValidationError(c), "server.threads"));
    c.server.threads = -1;
    CHECK(absl::StrContains(ValidationError(c), "server.threads"));
  }
  SECTION("listen must parse") {
    Config c;
    c.server.listen = "nowhere";
    CHECK(absl::StrContains(ValidationError(c), "server.listen 'nowhere'"));
  }
  SECTION("data_dir must not be empty") {
    Config c;
    c.storage.data_dir = "";
    CHECK(absl::StrContains(ValidationError(c), "storage.data_dir"));
  }
  SECTION("every limit must be positive") {
    std::vector<std::pair<std::string, std::function<void(Config&)>>> zeroes = {
        {"max_message_bytes", [](Config& c) { c.limits.max_message_bytes = 0; }},
        {"max_body_bytes", [](Config& c) { c.limits.max_body_bytes = 0; }},
        {"max_meta_bytes", [](Config& c) { c.limits.max_meta_bytes = 0; }},
        {"max_outbound_bytes", [](Config& c) { c.limits.max_outbound_bytes = 0; }},
        {"max_header_bytes", [](Config& c) { c.limits.max_header_bytes = 0; }},
        {"handshake_timeout_ms", [](Config& c) { c.limits.handshake_timeout_ms = -1; }},
        {"heartbeat_ms", [](Config& c) { c.limits.heartbeat_ms = 0; }},
        {"rate_per_sec", [](Config& c) { c.limits.rate_per_sec = 0; }},
        {"rate_per_sec", [](Config& c) { c.limits.rate_per_sec = NAN; }},
        {"rate_burst", [](Config& c) { c.limits.rate_burst = -1; }},
        {"rate_burst", [](Config& c) { c.limits.rate_burst = INFINITY; }},
        {"request_rate_per_sec", [](Config& c) { c.limits.request_rate_per_sec = 0; }},
        {"request_rate_burst", [](Config& c) { c.limits.request_rate_burst = NAN; }},
        {"max_watch", [](Config& c) { c.limits.max_watch = 0; }},
        {"max_group_size", [](Config& c) { c.limits.max_group_size = 0; }},
        {"max_connections", [](Config& c) { c.limits.max_connections = 0; }},
        {"max_connections_per_user", [](Config& c) { c.limits.max_connections_per_user = 0; }},
    };
    for (auto& [name, zero] : zeroes) {
      INFO(name);
      Config c;
      zero(c);
      CHECK(absl::StrContains(ValidationError(c), "limits." + name));
    }
  }
  SECTION("all problems are reported at once") {
    Config c;
    c.storage.sync = "x";
    c.limits.heartbeat_ms = 0;
    c.server.threads = 1000;
    std::string e = ValidationError(c);
    CHECK(absl::StrContains(e, "storage.sync"));
    CHECK(absl::StrContains(e, "limits.heartbeat_ms"));
    CHECK(absl::StrContains(e, "server.threads"));
  }
}

TEST_CASE("command line: actions", "[config]") {
  absl::StatusOr<CommandLine> r = Parse({});
  REQUIRE(r.ok());
  CHECK(r->action == CommandLine::Action::kServe);
  CheckSame(r->config, Config());
  CHECK(r->config_file.empty());

  for (const char* help : {"--help", "-h"}) {
    r = Parse({"--listen", "127.0.0.1:1", help, "--bogus"});
    REQUIRE(r.ok());
    CHECK(r->action == CommandLine::Action::kHelp);
  }
  r = Parse({"--version"});
  REQUIRE(r.ok());
  CHECK(r->action == CommandLine::Action::kVersion);

  // --print-config shows the effective configuration even when it would not validate.
  r = Parse({"--print-config", "--auth.mode=jwt"});
  REQUIRE(r.ok());
  CHECK(r->action == CommandLine::Action::kPrintConfig);
  CHECK(r->config.auth.mode == "jwt");
}

TEST_CASE("command line: flag forms", "[config]") {
  absl::StatusOr<CommandLine> r =
      Parse({"--listen", "localhost:9001", "--data=/srv/p", "--threads", "3",
             "--limits.max_message_bytes=131072", "--limits.rate_per_sec", "12.5",
             "--server.node_name=", "--debug.echo_endpoint", "--storage.sync", "none"});
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->config.server.listen == "localhost:9001");
  CHECK(r->config.storage.data_dir == "/srv/p");
  CHECK(r->config.server.threads == 3);
  CHECK(r->config.limits.max_message_bytes == 131072u);
  CHECK(r->config.limits.rate_per_sec == 12.5);
  CHECK(r->config.server.node_name.empty());
  CHECK(r->config.debug.echo_endpoint);  // a bare boolean flag is true
  CHECK(r->config.storage.sync == "none");

  // Boolean flags: explicit values in both forms, and bare at the end.
  r = Parse({"--debug.echo_endpoint", "false"});
  REQUIRE(r.ok());
  CHECK_FALSE(r->config.debug.echo_endpoint);
  r = Parse({"--debug.echo_endpoint=1"});
  REQUIRE(r.ok());
  CHECK(r->config.debug.echo_endpoint);
  r = Parse({"--debug.echo_endpoint", "0", "--threads", "2"});
  REQUIRE(r.ok());
  CHECK_FALSE(r->config.debug.echo_endpoint);
  CHECK(r->config.server.threads == 2);
  r = Parse({"--threads", "2", "--debug.echo_endpoint"});
  REQUIRE(r.ok());
  CHECK(r->config.debug.echo_endpoint);

  // Later flags win; short and long forms are the same key.
  r = Parse({"--threads=2", "--server.threads=5"});
  REQUIRE(r.ok());
  CHECK(r->config.server.threads == 5);
  r = Parse({"--server.listen=127.0.0.1:1", "--listen=127.0.0.1:2"});
  REQUIRE(r.ok());
  CHECK(r->config.server.listen == "127.0.0.1:2");

  // The value may contain '=' and start with '-' in the --key=value form.
  r = Parse({"--auth.admin_token=--a=b", "--limits.handshake_timeout_ms=5"});
  REQUIRE(r.ok());
  CHECK(r->config.auth.admin_token == "--a=b");
}

TEST_CASE("command line: errors are helpful", "[config]") {
  std::string e = ErrorOf(Parse({"--lisen", "127.0.0.1:1"}));
  CHECK(absl::StrContains(e, "unknown flag '--lisen'"));
  CHECK(absl::StrContains(e, "did you mean '--listen'"));
  CHECK(absl::StrContains(e, "--help"));

  e = ErrorOf(Parse({"--max_message_bytes=5"}));
  CHECK(absl::StrContains(e, "did you mean '--limits.max_message_bytes'"));

  e = ErrorOf(Parse({"--limits.max_mesage_bytes=5"}));
  CHECK(absl::StrContains(e, "did you mean '--limits.max_message_bytes'"));

  e = ErrorOf(Parse({"-x"}));
  CHECK(absl::StrContains(e, "unknown flag '-x'"));
  e = ErrorOf(Parse({"--"}));
  CHECK(absl::StrContains(e, "unknown flag '--'"));
  e = ErrorOf(Parse({"serve"}));
  CHECK(absl::StrContains(e, "unexpected argument 'serve'"));

  e = ErrorOf(Parse({"--listen"}));
  CHECK(absl::StrContains(e, "'--listen' needs a value"));
  e = ErrorOf(Parse({"--listen", "--threads", "2"}));
  CHECK(absl::StrContains(e, "'--listen' needs a value"));
  e = ErrorOf(Parse({"--config"}));
  CHECK(absl::StrContains(e, "needs a value"));

  e = ErrorOf(Parse({"--threads", "many"}));
  CHECK(absl::StrContains(e, "--threads"));
  CHECK(absl::StrContains(e, "server.threads"));
  e = ErrorOf(Parse({"--debug.echo_endpoint=yes"}));
  CHECK(absl::StrContains(e, "debug.echo_endpoint"));

  e = ErrorOf(Parse({"--user", "alice"}));
  CHECK(absl::StrContains(e, "token"));
  e = ErrorOf(Parse({"token", "--user", "a", "--print-config", "--auth.jwt_secret", kSecret16}));
  CHECK(absl::StrContains(e, "cannot be combined"));
  e = ErrorOf(Parse({"token", "token"}));
  CHECK(absl::StrContains(e, "twice"));

  // kServe validates, and says so.
  e = ErrorOf(Parse({"--listen", "0.0.0.0:8080"}));
  CHECK(absl::StrContains(e, "anyone"));
  CHECK(absl::StrContains(e, "--auth.allow_dev_on_public=true"));
  CHECK(Parse({"--listen", "0.0.0.0:8080", "--auth.allow_dev_on_public"}).ok());
  CHECK(Parse({"--listen", "0.0.0.0:8080", "--auth.mode", "jwt", "--auth.jwt_secret", kSecret16})
            .ok());
}

TEST_CASE("command line: precedence defaults < file < environment < flags", "[config]") {
  TempDir dir;
  std::string path = dir.Write("parley.toml", R"(
[server]
listen = "127.0.0.1:7000"
threads = 2
[auth]
mode = "jwt"
jwt_secret = "from-the-file-0123456789"
admin_token = "admin-from-file"
[limits]
heartbeat_ms = 1000
)");
  // File over defaults.
  absl::StatusOr<CommandLine> r = Parse({"--config", path});
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->config_file == path);
  CHECK(r->config.server.listen == "127.0.0.1:7000");
  CHECK(r->config.server.threads == 2);
  CHECK(r->config.auth.jwt_secret == "from-the-file-0123456789");
  CHECK(r->config.auth.admin_token == "admin-from-file");
  CHECK(r->config.limits.heartbeat_ms == 1000);
  CHECK(r->config.limits.max_watch == 1000u);  // default

  // Environment over the file.
  Env env = {{"PARLEY_JWT_SECRET", "from-the-environment-012"},
             {"PARLEY_ADMIN_TOKEN", "admin-from-env"},
             {"PARLEY_LISTEN", "0.0.0.0:1"}};  // not a variable Parley reads
  r = Parse({"--config=" + path}, env);
  REQUIRE(r.ok());
  CHECK(r->config.auth.jwt_secret == "from-the-environment-012");
  CHECK(r->config.auth.admin_token == "admin-from-env");
  CHECK(r->config.server.listen == "127.0.0.1:7000");

  // Flags over the environment, wherever --config appears.
  r = Parse({"--auth.jwt_secret=from-the-flag-0123456789", "--threads", "4", "--config", path},
            env);
  REQUIRE(r.ok());
  CHECK(r->config.auth.jwt_secret == "from-the-flag-0123456789");
  CHECK(r->config.auth.admin_token == "admin-from-env");
  CHECK(r->config.server.threads == 4);

  // An empty variable counts as unset.
  r = Parse({"--config", path}, {{"PARLEY_JWT_SECRET", ""}});
  REQUIRE(r.ok());
  CHECK(r->config.auth.jwt_secret == "from-the-file-0123456789");

  // Environment over defaults without a file.
  r = Parse({"--auth.mode=jwt"}, {{"PARLEY_JWT_SECRET", kSecret16}});
  REQUIRE(r.ok());
  CHECK(r->config.auth.jwt_secret == kSecret16);
}

TEST_CASE("command line: the process environment is read", "[config]") {
  ::setenv("PARLEY_ADMIN_TOKEN", "admin-token-from-process-env", 1);
  std::vector<const char*> argv = {"parley"};
  absl::StatusOr<CommandLine> r = ParseCommandLine(1, argv.data());
  ::unsetenv("PARLEY_ADMIN_TOKEN");
  REQUIRE(r.ok());
  CHECK(r->config.auth.admin_token == "admin-token-from-process-env");
}

TEST_CASE("command line: config file problems", "[config]") {
  TempDir dir;
  std::string e = ErrorOf(Parse({"--config", dir.path() + "/missing.toml"}));
  CHECK(absl::StrContains(e, dir.path() + "/missing.toml"));
  CHECK(absl::StrContains(e, "cannot open"));

  e = ErrorOf(Parse({"--config", dir.path()}));
  CHECK(absl::StrContains(e, "not a regular file"));

  std::string bad = dir.Write("bad.toml", "[limits]\n\nmax_watch = \"lots\"\n");
  e = ErrorOf(Parse({"--config", bad}));
  CHECK(absl::StrContains(e, bad + ":3:"));
  CHECK(absl::StrContains(e, "limits.max_watch"));

  std::string invalid = dir.Write("invalid.toml", "[storage]\nsync = \"sometimes\"\n");
  e = ErrorOf(Parse({"--config", invalid}));
  CHECK(absl::StrContains(e, invalid));
  CHECK(absl::StrContains(e, "storage.sync"));
  // A flag can repair what the file got wrong.
  CHECK(Parse({"--config", invalid, "--storage.sync=fsync"}).ok());

  e = ErrorOf(Parse({"--config", invalid, "--config", invalid}));
  CHECK(absl::StrContains(e, "twice"));
}

TEST_CASE("command line: token subcommand", "[config]") {
  absl::StatusOr<CommandLine> r =
      Parse({"token", "--user", "alice", "--ttl", "60", "--auth.jwt_secret", kSecret16});
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->action == CommandLine::Action::kToken);
  CHECK(r->token_user == "alice");
  CHECK(r->token_ttl_s == 60);
  CHECK(r->config.auth.jwt_secret == kSecret16);

  // Default ttl, secret from the environment, user given with '='.
  r = Parse({"token", "--user=bob"}, {{"PARLEY_JWT_SECRET", kSecret16}});
  REQUIRE(r.ok());
  CHECK(r->token_user == "bob");
  CHECK(r->token_ttl_s == 3600);

  // Secret from the config file; the rest of the file need not make a servable config.
  TempDir dir;
  std::string path = dir.Write(
      "p.toml", "[auth]\njwt_secret = \"secret-from-config-file\"\n[server]\nlisten = \"x\"\n");
  r = Parse({"--config", path, "token", "--user", "carol", "--ttl=0"});
  REQUIRE(r.ok());
  CHECK(r->config.auth.jwt_secret == "secret-from-config-file");
  CHECK(r->token_ttl_s == 0);
  r = Parse({"--config", path, "token", "--user", "carol", "--ttl=3162240000"});
  REQUIRE(r.ok());
  CHECK(r->token_ttl_s == 3162240000);

  std::string e = ErrorOf(Parse({"token", "--auth.jwt_secret", kSecret16}));
  CHECK(absl::StrContains(e, "--user"));
  e = ErrorOf(Parse({"token", "--user", "not valid", "--auth.jwt_secret", kSecret16}));
  CHECK(absl::StrContains(e, "not a valid user id"));
  for (const char* ttl : {"-1", "soon", "", "1.5", "3162240001", "9223372036854775807"}) {
    INFO(ttl);
    e = ErrorOf(Parse(
        {"token", "--user", "a", std::string("--ttl=") + ttl, "--auth.jwt_secret", kSecret16}));
    CHECK(absl::StrContains(e, "--ttl"));
  }
  e = ErrorOf(Parse({"token", "--user", "alice"}));
  CHECK(absl::StrContains(e, "auth.jwt_secret"));
  CHECK(absl::StrContains(e, "PARLEY_JWT_SECRET"));
  e = ErrorOf(Parse({"token", "--user", "alice", "--auth.jwt_secret=short"}));
  CHECK(absl::StrContains(e, "16 bytes"));
}

TEST_CASE("command line: usage lists every flag and option", "[config]") {
  std::string usage = parley::UsageText();
  for (const char* flag : {"--config FILE", "--listen HOST:PORT", "--data DIR", "--threads N",
                           "--print-config", "--version", "--help", "-h", "token --user", "--ttl",
                           "PARLEY_JWT_SECRET", "PARLEY_ADMIN_TOKEN", "config/parley.toml"}) {
    INFO(flag);
    CHECK(absl::StrContains(usage, flag));
  }
  // Every option key is listed, with its default.
  std::string rendered = RenderConfigToml(Config());
  std::istringstream lines(rendered);
  std::string line;
  std::string section;
  int options = 0;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      section = line.substr(1, line.size() - 2);
      continue;
    }
    std::string key = line.substr(0, line.find(' '));
    std::string value = line.substr(line.find(" = ") + 3);
    INFO(section << "." << key);
    CHECK(absl::StrContains(usage, "--" + section + "." + key));
    CHECK(absl::StrContains(usage, "[" + value + "]"));
    ++options;
  }
  CHECK(options == 28);
}

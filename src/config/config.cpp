// Configuration: one table of fields drives TOML parsing, flag overrides, rendering and --help, so
// the four cannot disagree about which keys exist or what type they have.
#include "parley/config/config.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <type_traits>
#include <variant>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "parley/util/ids.h"

namespace parley {
namespace {

// String building that takes std::string_view (this Abseil's StrCat takes only its own
// string_view type).
template <typename T>
void AppendPiece(std::string* out, const T& v) {
  if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    out->append(std::string_view(v));
  } else if constexpr (std::is_same_v<T, absl::string_view>) {
    out->append(v.data(), v.size());
  } else if constexpr (std::is_same_v<T, bool>) {
    out->append(v ? "true" : "false");
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[64];
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
    out->append(buf, ec == std::errc() ? end : buf);
  } else {
    static_assert(std::is_integral_v<T>, "AppendPiece: unsupported type");
    out->append(std::to_string(v));
  }
}

template <typename... Args>
void Append(std::string* out, const Args&... args) {
  (AppendPiece(out, args), ...);
}

template <typename... Args>
std::string Cat(const Args&... args) {
  std::string out;
  Append(&out, args...);
  return out;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i] >= 'A' && a[i] <= 'Z' ? static_cast<char>(a[i] - 'A' + 'a') : a[i];
    char y = b[i] >= 'A' && b[i] <= 'Z' ? static_cast<char>(b[i] - 'A' + 'a') : b[i];
    if (x != y) return false;
  }
  return true;
}

// Config files are a few KiB; the cap keeps a wrong path (a log, a device) from being slurped.
constexpr size_t kMaxConfigBytes = 1 << 20;

using FieldPtr = std::variant<std::string*, bool*, int*, int64_t*, uint32_t*, uint64_t*, double*>;

struct Field {
  std::string_view section;
  std::string_view key;
  std::string_view help;
  FieldPtr (*get)(Config&);
};

// clang-format off
#define PARLEY_FIELD(sec, name, help) \
  Field{#sec, #name, help, [](Config& c) -> FieldPtr { return &c.sec.name; }}
// clang-format on

constexpr Field kFields[] = {
    PARLEY_FIELD(server, listen, "HOST:PORT to listen on; [IPv6]:PORT accepted"),
    PARLEY_FIELD(server, threads, "reactor threads, 0 = one per online CPU (max 256)"),
    PARLEY_FIELD(server, node_name, "name reported in hello, empty = the host name"),
    PARLEY_FIELD(storage, data_dir, "directory of the message store"),
    PARLEY_FIELD(storage, min_free_bytes, "free disk space below which sends are refused"),
    PARLEY_FIELD(storage, sync, "\"fsync\" (ack after fsync) or \"none\""),
    PARLEY_FIELD(auth, mode, "\"dev\" (hello names the user) or \"jwt\""),
    PARLEY_FIELD(auth, jwt_secret, "HS256 secret, >= 16 bytes (env PARLEY_JWT_SECRET)"),
    PARLEY_FIELD(auth, admin_token, "bearer token for POST /api/v1/send (env PARLEY_ADMIN_TOKEN)"),
    PARLEY_FIELD(auth, allow_dev_on_public, "allow dev mode on a non-loopback address"),
    PARLEY_FIELD(limits, max_message_bytes, "largest reassembled WebSocket message"),
    PARLEY_FIELD(limits, max_body_bytes, "largest send.body"),
    PARLEY_FIELD(limits, max_meta_bytes, "largest send.meta, serialised"),
    PARLEY_FIELD(limits, max_outbound_bytes, "unsent bytes per connection before close 4008"),
    PARLEY_FIELD(limits, max_outbound_total_bytes,
                 "unsent bytes of all connections (split per core), 0 = no limit"),
    PARLEY_FIELD(limits, max_header_bytes, "largest HTTP request head"),
    PARLEY_FIELD(limits, handshake_timeout_ms, "time allowed for the HTTP head and upgrade"),
    PARLEY_FIELD(limits, heartbeat_ms, "expected client activity interval"),
    PARLEY_FIELD(limits, rate_per_sec, "send + typing rate per connection"),
    PARLEY_FIELD(limits, rate_burst, "send + typing burst per connection"),
    PARLEY_FIELD(limits, request_rate_per_sec, "rate of other requests (not ping) per connection"),
    PARLEY_FIELD(limits, request_rate_burst, "burst of other requests (not ping) per connection"),
    PARLEY_FIELD(limits, max_watch, "presence watch list size per connection"),
    PARLEY_FIELD(limits, max_group_size, "members per group"),
    PARLEY_FIELD(limits, max_connections, "connections per process"),
    PARLEY_FIELD(limits, max_connections_per_ip, "connections per remote address, 0 = no limit"),
    PARLEY_FIELD(limits, max_connections_per_user, "connections (devices) online per user"),
    PARLEY_FIELD(debug, echo_endpoint, "serve a WebSocket echo at /echo"),
};
#undef PARLEY_FIELD

constexpr std::string_view kSections[] = {"server", "storage", "auth", "limits", "debug"};

// A field added to Config without a row in kFields stops the build here: the structured bindings
// must name every member.
[[maybe_unused]] void CheckFieldTableCoversConfig(Config& c) {
  [[maybe_unused]] auto& [server, storage, auth, limits, debug] = c;
  [[maybe_unused]] auto& [s1, s2, s3] = c.server;
  [[maybe_unused]] auto& [st1, st2, st3] = c.storage;
  [[maybe_unused]] auto& [a1, a2, a3, a4] = c.auth;
  [[maybe_unused]] auto& [l1, l2, l3, l4, l5, l6, l7, l8, l9, l10, l11, l12, l13, l14, l15, l16,
                          l17] = c.limits;
  [[maybe_unused]] auto& [d1] = c.debug;
}
static_assert(std::size(kFields) == 3 + 3 + 4 + 17 + 1);

std::string DottedName(const Field& f) {
  return Cat(f.section, ".", f.key);
}

const Field* FindField(std::string_view section, std::string_view key) {
  for (const Field& f : kFields) {
    if (f.section == section && f.key == key) return &f;
  }
  return nullptr;
}

const Field* FindDotted(std::string_view dotted) {
  size_t dot = dotted.find('.');
  if (dot == std::string_view::npos) return nullptr;
  return FindField(dotted.substr(0, dot), dotted.substr(dot + 1));
}

bool IsSection(std::string_view name) {
  for (std::string_view s : kSections) {
    if (s == name) return true;
  }
  return false;
}

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// The closest candidate within a small edit distance, or "" when nothing is close.
std::string Closest(std::string_view word, const std::vector<std::string>& candidates) {
  if (word.size() > 64) return "";  // not a typo; and keeps the distance computation cheap
  std::string best;
  size_t best_distance = std::max<size_t>(2, word.size() / 3) + 1;
  for (const std::string& c : candidates) {
    size_t d = EditDistance(word, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  return best;
}

std::vector<std::string> AllDottedNames() {
  std::vector<std::string> names;
  for (const Field& f : kFields) names.push_back(DottedName(f));
  return names;
}

// " (did you mean 'limits.max_watch'?)" for a misspelt or unqualified key, else "".
std::string SuggestKey(std::string_view wrong, std::string_view prefix) {
  // A bare key ("max_watch"), or one in the wrong section, names its section-qualified form.
  std::string_view bare =
      wrong.substr(wrong.find('.') == std::string_view::npos ? 0 : wrong.find('.') + 1);
  for (const Field& f : kFields) {
    if (f.key == bare) return Cat(" (did you mean '", prefix, DottedName(f), "'?)");
  }
  std::string best = Closest(wrong, AllDottedNames());
  if (best.empty()) return "";
  return Cat(" (did you mean '", prefix, best, "'?)");
}

std::string Location(std::string_view source, const toml::source_region& region) {
  if (region.begin.line == 0) return std::string(source);
  return Cat(source, ":", region.begin.line, ":", region.begin.column);
}

std::string_view TypeName(toml::node_type t) {
  switch (t) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time:
      return "a date/time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

// The node's type, and for a number its value (which may be the problem: out of range).
std::string Describe(const toml::node& node) {
  if (const auto* v = node.as_integer()) return Cat("the integer ", v->get());
  if (const auto* v = node.as_floating_point()) return Cat("the float ", v->get());
  return std::string(TypeName(node.type()));
}

// What a field expects, for error messages.
std::string_view Expected(const FieldPtr& p) {
  struct V {
    std::string_view operator()(std::string*) const { return "a string"; }
    std::string_view operator()(bool*) const { return "a boolean (true/false)"; }
    std::string_view operator()(int*) const { return "an integer"; }
    std::string_view operator()(int64_t*) const { return "an integer"; }
    std::string_view operator()(uint32_t*) const { return "a non-negative integer below 2^32"; }
    std::string_view operator()(uint64_t*) const { return "a non-negative integer"; }
    std::string_view operator()(double*) const { return "a finite number"; }
  };
  return std::visit(V{}, p);
}

// Stores a signed 64-bit value into an integer field, checking its range. False if it does not
// fit (or the field is not an integer).
bool StoreInteger(const FieldPtr& p, int64_t v) {
  if (auto* q = std::get_if<int*>(&p)) {
    if (v < std::numeric_limits<int>::min() || v > std::numeric_limits<int>::max()) return false;
    **q = static_cast<int>(v);
    return true;
  }
  if (auto* q = std::get_if<int64_t*>(&p)) {
    **q = v;
    return true;
  }
  if (auto* q = std::get_if<uint32_t*>(&p)) {
    if (v < 0 || v > static_cast<int64_t>(std::numeric_limits<uint32_t>::max())) return false;
    **q = static_cast<uint32_t>(v);
    return true;
  }
  if (auto* q = std::get_if<uint64_t*>(&p)) {
    if (v < 0) return false;
    **q = static_cast<uint64_t>(v);
    return true;
  }
  if (auto* q = std::get_if<double*>(&p)) {
    **q = static_cast<double>(v);
    return true;
  }
  return false;
}

// Sets a field from a TOML node; false when the node has the wrong type or range.
bool StoreNode(const FieldPtr& p, const toml::node& node) {
  if (auto* q = std::get_if<std::string*>(&p)) {
    const auto* v = node.as_string();
    if (v == nullptr) return false;
    **q = v->get();
    return true;
  }
  if (auto* q = std::get_if<bool*>(&p)) {
    const auto* v = node.as_boolean();
    if (v == nullptr) return false;
    **q = v->get();
    return true;
  }
  if (auto* q = std::get_if<double*>(&p)) {
    if (const auto* v = node.as_floating_point()) {
      if (!std::isfinite(v->get())) return false;
      **q = v->get();
      return true;
    }
  }
  const auto* v = node.as_integer();
  if (v == nullptr) return false;
  return StoreInteger(p, v->get());
}

bool ParseBool(std::string_view text, bool* out) {
  if (text == "true" || text == "1") {
    *out = true;
    return true;
  }
  if (text == "false" || text == "0") {
    *out = false;
    return true;
  }
  return false;
}

bool ParseInt64(std::string_view text, int64_t* out) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && end == text.data() + text.size();
}

// Sets a field from flag text; false when the text is not a value of the field's type.
bool StoreText(const FieldPtr& p, std::string_view text) {
  if (auto* q = std::get_if<std::string*>(&p)) {
    **q = std::string(text);
    return true;
  }
  if (auto* q = std::get_if<bool*>(&p)) return ParseBool(text, *q);
  if (auto* q = std::get_if<double*>(&p)) {
    double v = 0;
    if (text.empty()) return false;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || end != text.data() + text.size() || !std::isfinite(v)) return false;
    **q = v;
    return true;
  }
  int64_t v = 0;
  if (!ParseInt64(text, &v)) return false;
  return StoreInteger(p, v);
}

// TOML basic string with every character that needs it escaped.
void AppendTomlString(std::string* out, std::string_view s) {
  out->push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\r':
        out->append("\\r");
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          static constexpr char kHex[] = "0123456789ABCDEF";
          out->append("\\u00");
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 15]);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
  }
  out->push_back('"');
}

std::string RenderValue(const FieldPtr& p) {
  struct V {
    std::string operator()(std::string* s) const {
      std::string out;
      AppendTomlString(&out, *s);
      return out;
    }
    std::string operator()(bool* b) const { return *b ? "true" : "false"; }
    std::string operator()(int* v) const { return std::to_string(*v); }
    std::string operator()(int64_t* v) const { return std::to_string(*v); }
    std::string operator()(uint32_t* v) const { return std::to_string(*v); }
    std::string operator()(uint64_t* v) const { return std::to_string(*v); }
    std::string operator()(double* v) const {
      if (std::isnan(*v)) return "nan";
      if (std::isinf(*v)) return *v > 0 ? "inf" : "-inf";
      char buf[64];
      auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), *v);  // shortest exact form
      std::string s(buf, ec == std::errc() ? end : buf);
      // TOML needs a '.' or an exponent to read a float; "50" would be an integer.
      if (s.find_first_of(".e") == std::string::npos) s += ".0";
      return s;
    }
  };
  return std::visit(V{}, p);
}

absl::StatusOr<std::string> ReadConfigFile(const std::string& path) {
  // O_NONBLOCK: a FIFO or device given by mistake must not hang the open.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    int err = errno;
    std::string message = Cat("cannot open config file '", path, "': ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(message) : absl::InvalidArgumentError(message);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(Cat("config file '", path, "' is not a regular file"));
  }
  std::string text;
  char buf[16384];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return absl::InvalidArgumentError(
          Cat("cannot read config file '", path, "': ", std::strerror(err)));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxConfigBytes) {
      ::close(fd);
      return absl::InvalidArgumentError(
          Cat("config file '", path, "' is larger than ", kMaxConfigBytes, " bytes"));
    }
  }
  ::close(fd);
  return text;
}

bool ParseIpv4(std::string_view host, in_addr* out) {
  // inet_pton stops at a NUL: refuse one rather than accept "127.0.0.1<NUL>junk".
  if (host.empty() || host.size() > 15 || host.find('\0') != std::string_view::npos) {
    return false;
  }
  char buf[16];
  std::memcpy(buf, host.data(), host.size());
  buf[host.size()] = '\0';
  return ::inet_pton(AF_INET, buf, out) == 1;  // strict dotted quad, no leading zeros
}

bool ParseIpv6(std::string_view host, in6_addr* out) {
  if (host.empty() || host.size() > 45 || host.find('\0') != std::string_view::npos) {
    return false;
  }
  char buf[46];
  std::memcpy(buf, host.data(), host.size());
  buf[host.size()] = '\0';
  return ::inet_pton(AF_INET6, buf, out) == 1;
}

}  // namespace

absl::StatusOr<Config> ParseConfigToml(std::string_view toml_text, std::string_view source,
                                       Config base) {
  if (toml_text.size() > kMaxConfigBytes) {
    return absl::InvalidArgumentError(Cat(source, ": larger than ", kMaxConfigBytes, " bytes"));
  }
  // The system toml++ is built with exceptions: its parse error is caught here, and so is
  // anything else it might throw, so that nothing escapes the module.
  toml::table root;
  try {
    root = toml::parse(toml_text, source);
  } catch (const toml::parse_error& e) {
    return absl::InvalidArgumentError(Cat(Location(source, e.source()), ": ", e.description()));
  } catch (const std::exception& e) {
    return absl::InternalError(Cat(source, ": cannot parse: ", e.what()));
  }
  for (const auto& [section_key, section_node] : root) {
    std::string_view section = section_key.str();
    if (!IsSection(section)) {
      std::vector<std::string> names(std::begin(kSections), std::end(kSections));
      std::string close = Closest(section, names);
      std::string hint =
          close.empty() ? SuggestKey(section, "") : Cat(" (did you mean [", close, "]?)");
      return absl::InvalidArgumentError(
          Cat(Location(source, section_key.source()), ": unknown section '", section, "'", hint,
              "; the sections are [", "server], [storage], [auth], [limits], [debug", "]"));
    }
    const toml::table* table = section_node.as_table();
    if (table == nullptr) {
      return absl::InvalidArgumentError(Cat(Location(source, section_node.source()), ": '", section,
                                            "' must be a table ([", section, "]), not ",
                                            TypeName(section_node.type())));
    }
    for (const auto& [key, node] : *table) {
      const Field* field = FindField(section, key.str());
      if (field == nullptr) {
        std::string dotted = Cat(section, ".", key.str());
        return absl::InvalidArgumentError(Cat(Location(source, key.source()), ": unknown key '",
                                              dotted, "'", SuggestKey(dotted, "")));
      }
      FieldPtr ptr = field->get(base);
      if (!StoreNode(ptr, node)) {
        return absl::InvalidArgumentError(Cat(Location(source, node.source()), ": ",
                                              DottedName(*field), " must be ", Expected(ptr),
                                              ", not ", Describe(node)));
      }
    }
  }
  return base;
}

absl::Status ApplyConfigOverride(Config* config, std::string_view dotted_key,
                                 std::string_view value) {
  const Field* field = FindDotted(dotted_key);
  if (field == nullptr) {
    return absl::InvalidArgumentError(
        Cat("unknown option '", dotted_key, "'", SuggestKey(dotted_key, "")));
  }
  FieldPtr ptr = field->get(*config);
  if (!StoreText(ptr, value)) {
    return absl::InvalidArgumentError(
        Cat("invalid value '", value, "' for ", dotted_key, ": expected ", Expected(ptr)));
  }
  return absl::OkStatus();
}

absl::StatusOr<ListenAddress> ParseListenAddress(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        Cat("server.listen '", text, "': ", why,
            " (expected IPV4:PORT, localhost:PORT or [IPV6]:PORT, e.g. 127.0.0.1:8080)"));
  };
  ListenAddress out;
  std::string_view host;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) return bad("missing ']'");
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') return bad("missing ':PORT' after ']'");
    port = rest.substr(1);
    in6_addr a6;
    if (!ParseIpv6(host, &a6)) return bad("not an IPv6 address inside [ ]");
    out.host = std::string(host);
    out.ipv6 = true;
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return bad("missing ':PORT'");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return bad("an IPv6 address needs brackets, e.g. [::1]:8080");
    }
    in_addr a4;
    if (EqualsIgnoreCase(host, "localhost")) {
      out.host = "127.0.0.1";
    } else if (ParseIpv4(host, &a4)) {
      out.host = std::string(host);
    } else if (host.empty()) {
      return bad("missing host (use 0.0.0.0 for every IPv4 address)");
    } else {
      return bad("host must be a dotted IPv4 address, localhost or a bracketed IPv6 address");
    }
  }
  if (port.empty() || port.size() > 5) return bad("port must be a number 0-65535");
  uint32_t p = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return bad("port must be a number 0-65535");
    p = p * 10 + static_cast<uint32_t>(c - '0');
  }
  if (p > 65535) return bad("port must be a number 0-65535");
  out.port = static_cast<uint16_t>(p);
  return out;
}

bool IsLoopbackHost(std::string_view host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (EqualsIgnoreCase(host, "localhost")) return true;
  in_addr a4;
  if (ParseIpv4(host, &a4)) return (ntohl(a4.s_addr) >> 24) == 127;
  in6_addr a6;
  if (ParseIpv6(host, &a6)) {
    if (IN6_IS_ADDR_LOOPBACK(&a6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
  }
  return false;
}

absl::Status ValidateConfig(const Config& c) {
  std::vector<std::string> problems;
  absl::StatusOr<ListenAddress> listen = ParseListenAddress(c.server.listen);
  if (!listen.ok()) problems.emplace_back(listen.status().message());
  if (c.server.threads < 0 || c.server.threads > 256) {
    problems.push_back(
        Cat("server.threads = ", c.server.threads, ": must be 0 (one per CPU) to 256"));
  }
  if (c.storage.data_dir.empty()) problems.push_back("storage.data_dir must not be empty");
  if (c.storage.sync != "fsync" && c.storage.sync != "none") {
    problems.push_back(
        Cat("storage.sync = \"", c.storage.sync, "\": must be \"fsync\" or \"none\""));
  }
  if (c.auth.mode != "dev" && c.auth.mode != "jwt") {
    problems.push_back(Cat("auth.mode = \"", c.auth.mode, "\": must be \"dev\" or \"jwt\""));
  }
  if (c.auth.mode == "jwt") {
    if (c.auth.jwt_secret.empty()) {
      problems.push_back(
          "auth.mode = \"jwt\" needs auth.jwt_secret (or the environment variable "
          "PARLEY_JWT_SECRET): a random string of at least 16 bytes");
    } else if (c.auth.jwt_secret.size() < 16) {
      problems.push_back(Cat("auth.jwt_secret is ", c.auth.jwt_secret.size(),
                             " bytes: it must be at least 16 bytes; use a long random "
                             "string, e.g. from `openssl rand -hex 32`"));
    }
  }
  auto positive = [&](std::string_view name, auto v) {
    if (!(v > 0)) problems.push_back(Cat("limits.", name, " = ", v, ": must be > 0"));
  };
  positive("max_message_bytes", c.limits.max_message_bytes);
  positive("max_body_bytes", c.limits.max_body_bytes);
  positive("max_meta_bytes", c.limits.max_meta_bytes);
  positive("max_outbound_bytes", c.limits.max_outbound_bytes);
  positive("max_header_bytes", c.limits.max_header_bytes);
  positive("handshake_timeout_ms", c.limits.handshake_timeout_ms);
  positive("heartbeat_ms", c.limits.heartbeat_ms);
  positive("max_watch", c.limits.max_watch);
  positive("max_group_size", c.limits.max_group_size);
  positive("max_connections", c.limits.max_connections);
  positive("max_connections_per_user", c.limits.max_connections_per_user);
  for (auto [name, v] : {std::pair<std::string_view, double>{"rate_per_sec", c.limits.rate_per_sec},
                         {"rate_burst", c.limits.rate_burst},
                         {"request_rate_per_sec", c.limits.request_rate_per_sec},
                         {"request_rate_burst", c.limits.request_rate_burst}}) {
    if (!std::isfinite(v) || !(v > 0)) {
      problems.push_back(Cat("limits.", name, " = ", v, ": must be a finite number > 0"));
    }
  }
  if (c.auth.mode == "dev" && listen.ok() && !IsLoopbackHost(listen->host) &&
      !c.auth.allow_dev_on_public) {
    problems.push_back(
        Cat("refusing auth.mode = \"dev\" on the non-loopback address ", c.server.listen,
            ": in dev mode anyone who can reach the server can sign in as any user just by naming "
            "it. Set auth.mode = \"jwt\" with auth.jwt_secret (or PARLEY_JWT_SECRET), listen on "
            "127.0.0.1, or if you really mean it force it with --auth.allow_dev_on_public=true"));
  }
  if (problems.empty()) return absl::OkStatus();
  std::string joined;
  for (const std::string& p : problems) Append(&joined, joined.empty() ? "" : "\n", p);
  return absl::InvalidArgumentError(joined);
}

std::string RenderConfigToml(const Config& config) {
  return RenderConfigToml(config, false);
}

std::string RenderConfigToml(const Config& config, bool hide_secrets) {
  Config copy = config;  // the field table hands out mutable pointers
  std::string out = "# Parley configuration (every option; see config/parley.toml)\n";
  std::string_view section;
  for (const Field& f : kFields) {
    if (f.section != section) {
      section = f.section;
      Append(&out, "\n[", section, "]\n");
    }
    FieldPtr ptr = f.get(copy);
    if (hide_secrets && f.section == "auth" && (f.key == "jwt_secret" || f.key == "admin_token")) {
      const std::string& secret = *std::get<std::string*>(ptr);
      if (!secret.empty()) {
        Append(&out, "# ", f.key, " is set (", secret.size(), " bytes, hidden)\n");
        continue;
      }
    }
    Append(&out, f.key, " = ", RenderValue(ptr), "\n");
  }
  return out;
}

namespace {

std::vector<std::string> FlagNames() {
  std::vector<std::string> names = {"config",       "listen",  "data", "threads", "help",
                                    "print-config", "version", "user", "ttl"};
  for (const Field& f : kFields) names.push_back(DottedName(f));
  return names;
}

std::string UnknownFlag(std::string_view arg, std::string_view name) {
  std::string hint;
  for (const Field& f : kFields) {
    if (f.key == name) hint = Cat(" (did you mean '--", DottedName(f), "'?)");
  }
  if (hint.empty()) {
    std::string close = Closest(name, FlagNames());
    if (!close.empty()) hint = Cat(" (did you mean '--", close, "'?)");
  }
  return Cat("unknown flag '", arg, "'", hint, "; run 'parley --help' for the flags");
}

}  // namespace

absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv) {
  return ParseCommandLine(argc, argv, [](std::string_view name) -> std::optional<std::string> {
    const char* v = std::getenv(std::string(name).c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  });
}

absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const* argv,
                                             const EnvLookup& env) {
  CommandLine cl;
  struct Override {
    std::string key;
    std::string value;
    std::string flag;
  };
  std::vector<Override> overrides;
  bool have_config = false;
  bool print_config = false;
  bool token = false;
  bool have_user = false;
  bool have_ttl = false;
  std::string ttl_text;

  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i] == nullptr ? std::string_view() : std::string_view(argv[i]);
    if (arg == "--help" || arg == "-h") {
      CommandLine help;
      help.action = CommandLine::Action::kHelp;
      return help;
    }
    if (arg == "--version") {
      CommandLine version;
      version.action = CommandLine::Action::kVersion;
      return version;
    }
    if (arg == "--print-config") {
      print_config = true;
      continue;
    }
    if (arg == "token") {
      if (token) return absl::InvalidArgumentError("'token' given twice");
      token = true;
      continue;
    }
    if (!arg.starts_with("--") || arg.size() == 2) {
      if (arg.starts_with("-")) return absl::InvalidArgumentError(UnknownFlag(arg, arg));
      return absl::InvalidArgumentError(
          Cat("unexpected argument '", arg,
              "': the only subcommand is 'token'; run 'parley --help' for the flags"));
    }
    std::string_view body = arg.substr(2);
    std::string_view name = body;
    std::optional<std::string_view> value;
    if (size_t eq = body.find('='); eq != std::string_view::npos) {
      name = body.substr(0, eq);
      value = body.substr(eq + 1);
    }
    const Field* field = nullptr;
    std::string key;
    if (name == "config" || name == "user" || name == "ttl") {
      key = std::string(name);
    } else if (name == "listen") {
      key = "server.listen";
    } else if (name == "data") {
      key = "storage.data_dir";
    } else if (name == "threads") {
      key = "server.threads";
    } else if ((field = FindDotted(name)) != nullptr) {
      key = std::string(name);
    } else {
      return absl::InvalidArgumentError(UnknownFlag(arg, name));
    }
    if (!value) {
      bool is_bool = field != nullptr && std::holds_alternative<bool*>(field->get(cl.config));
      bool next_is_value = i + 1 < argc && argv[i + 1] != nullptr;
      if (is_bool) {
        // A bare boolean flag means true; a following true/false/1/0 is its value.
        bool ignored;
        if (next_is_value && ParseBool(argv[i + 1], &ignored)) {
          value = argv[++i];
        } else {
          value = "true";
        }
      } else if (next_is_value && !std::string_view(argv[i + 1]).starts_with("--")) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(Cat("flag '--", name, "' needs a value (use --", name,
                                              "=VALUE for a value that starts with --)"));
      }
    }
    if (key == "config") {
      if (have_config) return absl::InvalidArgumentError("--config given twice");
      if (value->empty()) return absl::InvalidArgumentError("--config needs a file name");
      have_config = true;
      cl.config_file = std::string(*value);
    } else if (key == "user") {
      have_user = true;
      cl.token_user = std::string(*value);
    } else if (key == "ttl") {
      have_ttl = true;
      ttl_text = std::string(*value);
    } else {
      overrides.push_back({key, std::string(*value), std::string(arg)});
    }
  }

  if (token && print_config) {
    return absl::InvalidArgumentError("'token' and --print-config cannot be combined");
  }
  if (!token && (have_user || have_ttl)) {
    return absl::InvalidArgumentError(
        "--user and --ttl belong to the token subcommand: parley token --user U [--ttl S]");
  }

  if (have_config) {
    absl::StatusOr<std::string> text = ReadConfigFile(cl.config_file);
    if (!text.ok()) return text.status();
    absl::StatusOr<Config> parsed = ParseConfigToml(*text, cl.config_file, cl.config);
    if (!parsed.ok()) return parsed.status();
    cl.config = *std::move(parsed);
  }
  if (env) {
    if (std::optional<std::string> v = env("PARLEY_JWT_SECRET"); v && !v->empty()) {
      cl.config.auth.jwt_secret = *v;
    }
    if (std::optional<std::string> v = env("PARLEY_ADMIN_TOKEN"); v && !v->empty()) {
      cl.config.auth.admin_token = *v;
    }
  }
  for (const Override& o : overrides) {
    absl::Status s = ApplyConfigOverride(&cl.config, o.key, o.value);
    if (!s.ok()) {
      return absl::InvalidArgumentError(Cat("flag '", o.flag, "': ", s.message()));
    }
  }

  if (print_config) {
    cl.action = CommandLine::Action::kPrintConfig;
    return cl;
  }
  if (token) {
    cl.action = CommandLine::Action::kToken;
    if (!have_user) {
      return absl::InvalidArgumentError("token needs --user U: parley token --user U [--ttl S]");
    }
    if (!IsValidId(cl.token_user)) {
      return absl::InvalidArgumentError(
          Cat("--user '", cl.token_user,
              "' is not a valid user id (1-64 bytes of A-Z a-z 0-9 _ . @ -)"));
    }
    // Capped at 100 years so that now + ttl cannot overflow.
    constexpr int64_t kMaxTtl = int64_t{100} * 366 * 24 * 3600;
    if (have_ttl && (!ParseInt64(ttl_text, &cl.token_ttl_s) || cl.token_ttl_s < 0 ||
                     cl.token_ttl_s > kMaxTtl)) {
      return absl::InvalidArgumentError(
          Cat("--ttl '", ttl_text,
              "': expected seconds, an integer from 0 (no expiry) to 3162240000 (100 years)"));
    }
    if (cl.config.auth.jwt_secret.size() < 16) {
      return absl::InvalidArgumentError(
          "token needs auth.jwt_secret of at least 16 bytes: set it in the config file "
          "(--config FILE), in PARLEY_JWT_SECRET, or with --auth.jwt_secret=...");
    }
    return cl;
  }
  cl.action = CommandLine::Action::kServe;
  if (absl::Status s = ValidateConfig(cl.config); !s.ok()) {
    return absl::InvalidArgumentError(Cat(cl.config_file.empty()
                                              ? std::string("configuration")
                                              : Cat("configuration (", cl.config_file, ")"),
                                          " is invalid:\n", s.message()));
  }
  return cl;
}

std::string UsageText() {
  Config defaults;
  std::string out =
      "Usage: parley [--config FILE] [--listen HOST:PORT] [--data DIR] [--threads N]\n"
      "              [--SECTION.KEY=VALUE ...]\n"
      "       parley token --user USER [--ttl SECONDS] [--config FILE] [--SECTION.KEY=VALUE ...]\n"
      "       parley --print-config [--config FILE] [--SECTION.KEY=VALUE ...]\n"
      "       parley --help | --version\n"
      "\n"
      "Parley chat server. Settings come from built-in defaults, then the --config file, then\n"
      "the environment (PARLEY_JWT_SECRET, PARLEY_ADMIN_TOKEN), then flags; later wins.\n"
      "Every option is documented in config/parley.toml (installed as /etc/parley/parley.toml).\n"
      "\n"
      "Flags:\n"
      "  --config FILE          read settings from a TOML file\n"
      "  --listen HOST:PORT     same as --server.listen\n"
      "  --data DIR             same as --storage.data_dir\n"
      "  --threads N            same as --server.threads\n"
      "  --print-config         print the effective configuration as TOML and exit\n"
      "  --version              print the version and exit\n"
      "  -h, --help             print this text and exit\n"
      "\n"
      "Subcommand:\n"
      "  token --user USER      print an HS256 token for USER signed with auth.jwt_secret\n"
      "        --ttl SECONDS    lifetime of the token (default 3600; 0 = no expiry)\n"
      "\n"
      "Options (--SECTION.KEY=VALUE or --SECTION.KEY VALUE; booleans take true/false/1/0,\n"
      "and a bare boolean flag means true):\n";
  for (const Field& f : kFields) {
    std::string flag = Cat("  --", DottedName(f));
    std::string def = RenderValue(f.get(defaults));
    if (flag.size() < 34) flag.resize(34, ' ');
    Append(&out, flag, " ", f.help, " [", def, "]\n");
  }
  return out;
}

}  // namespace parley

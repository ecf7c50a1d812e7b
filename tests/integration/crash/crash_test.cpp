// Crash safety of the real server binary: concurrent senders, SIGKILL at random moments,
// restart on the same data directory, and a full audit of what survived.
//
// Usage: parley_crash_test <path to parley> [Catch2 options]   (or PARLEY_BIN in the
// environment). PARLEY_CRASH_CYCLES (default 20) sets the number of kill/restart cycles,
// PARLEY_CRASH_SEED makes a run reproducible.
//
// Four users (ann, ben, cat, dan) and one group "crash" owned by ann. Each cycle: start the
// server (--storage.sync=fsync) and audit the store; then either
//   - a membership cycle that is killed on purpose: ann sends one group change (the creation,
//     then alternately removing a random member and adding it back) and the server is SIGKILLed
//     right after the request or within 1.5 x the usual latency of a change (skewed early: the
//     group record is written within a fraction of that, the inbox events at its end), with
//     no other traffic; or
//   - a sending cycle: a group change first on some cycles (creation until it has taken
//     effect, then the same remove/add-back alternation), answered `ok` before anything else
//     happens; then 8 connections (2 devices of each user) pipeline sends, retrying first (same
//     cmid) every send that had no `ok`, and mixing 1:1 sends with sends to the group (members
//     only; a removed member keeps its unanswered group sends until it is back), and now and
//     then `read` a conversation up to a seq they got live or `ack` the last inbox number they
//     got live; SIGKILL after a random 50-500 ms.
// Membership therefore only changes while no group message is in flight and after the audit saw
// every fan-out complete, so the audit knows exactly which group messages each user must hold.
// A change without an answer (killed first) may have taken effect or not: the next audit
// accepts either, reads which one from group_info, and from then on holds the store to it.
//
// The audit checks the contract of PROTOCOL.md sections 5 and 7:
//   - every send answered `ok` (1:1 or group) is in its conversation's history exactly once,
//     with the conv, seq and ts of its `ok`, and in the inbox of every user it belongs to
//     exactly once;
//   - a send without `ok` is stored at most once; retrying it returns dup:true with the stored
//     seq/ts if (and only if) the audit found it stored;
//   - per conversation (d:x:y and g:crash), seq is gapless 1..N; per user, the inbox is gapless
//     1..M, follows each conversation's seq order, and what an earlier audit saw in it is still
//     there under the same numbers (nothing lost or renumbered across restarts);
//   - group: group_info shows the membership of the last change that took effect (every
//     answered change did); every member's inbox holds, in seq order, exactly the group
//     messages sequenced while it was a member, and each membership event (created, removed,
//     added) that concerns it exactly once, in its place between those messages; every group
//     message came from a member of its time;
//   - convs lists exactly the user's conversations (g:crash only while a member) with last_seq
//     equal to the history's length; read_seq never falls below a `read` answered `ok` nor
//     below what an earlier audit saw (a member removed from the group loses its read position
//     there: rejoining starts a new conversation record);
//   - each device's cursor (where a `sync` without `since` starts) never falls below an `ack`
//     answered ok nor below what an earlier audit saw;
//   - live msg/group events on one connection arrive with consecutive inbox numbers.
// At the end, a removed member is added back and every send still without `ok` is retried;
// the final audit then finds every send stored exactly once.
// Not covered: membership changes racing with group sends (their interleaving is the server's
// choice and not observable to the audit), group_leave and ownership hand-over.
#define CATCH_CONFIG_RUNNER
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <simdjson.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "parley/ws/frame_codec.h"
#include "parley/ws/handshake.h"

namespace {

using Clock = std::chrono::steady_clock;

std::string& ParleyBinary() {
  static std::string path;
  return path;
}

int64_t EnvInt(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::strtoll(v, nullptr, 10);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& s, size_t n) {
  return s.size() <= n ? s : s.substr(s.size() - n);
}

// ---- The server process ----

class ServerProcess {
 public:
  explicit ServerProcess(std::string dir) : dir_(std::move(dir)) {}
  ~ServerProcess() { Kill(); }

  // Starts parley and waits for its "listening" line and GET /healthz. Returns "" or an error.
  std::string Start() {
    ++starts_;
    stdout_path_ = dir_ + "/stdout." + std::to_string(starts_) + ".log";
    stderr_path_ = dir_ + "/stderr." + std::to_string(starts_) + ".log";
    const std::string data = dir_ + "/data";
    std::vector<std::string> args = {ParleyBinary(),
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--data",
                                     data,
                                     "--threads",
                                     "2",
                                     "--storage.sync=fsync",
                                     "--limits.rate_per_sec=1000000",
                                     "--limits.rate_burst=1000000",
                                     "--limits.request_rate_per_sec=1000000",
                                     "--limits.request_rate_burst=1000000"};
    pid_ = fork();
    if (pid_ < 0) return "fork failed";
    if (pid_ == 0) {
      int out = open(stdout_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int err = open(stderr_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int in = open("/dev/null", O_RDONLY);
      if (out < 0 || err < 0 || in < 0) _exit(126);
      dup2(in, 0);
      dup2(out, 1);
      dup2(err, 2);
      unsetenv("PARLEY_JWT_SECRET");
      unsetenv("PARLEY_ADMIN_TOKEN");
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    static const std::regex kReady(R"(listening on http://127\.0\.0\.1:(\d+)/)");
    port_ = 0;
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return "parley exited during start (status " + std::to_string(status) + ")\n" + Logs();
      }
      if (port_ == 0) {
        std::smatch m;
        const std::string out = ReadFile(stdout_path_);
        if (std::regex_search(out, m, kReady)) port_ = static_cast<uint16_t>(std::stoi(m[1]));
      }
      if (port_ != 0 && Healthy()) return "";
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Kill();
    return "parley did not become ready within 30 s\n" + Logs();
  }

  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  // SIGTERM; returns "" when the process exited with status 0 within 5 s.
  std::string Terminate() {
    if (pid_ <= 0) return "not running";
    kill(pid_, SIGTERM);
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
        return "parley ended with status " + std::to_string(status) + " after SIGTERM\n" + Logs();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    Kill();
    return "parley did not exit within 5 s of SIGTERM\n" + Logs();
  }

  uint16_t port() const { return port_; }
  bool running() const { return pid_ > 0; }

  std::string Logs() const {
    return "--- stdout ---\n" + Tail(ReadFile(stdout_path_), 2000) + "\n--- stderr ---\n" +
           Tail(ReadFile(stderr_path_), 4000);
  }

 private:
  bool Healthy() const;

  std::string dir_;
  std::string stdout_path_, stderr_path_;
  pid_t pid_ = -1;
  uint16_t port_ = 0;
  int starts_ = 0;
};

int ConnectTcp(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
}

bool SendAll(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

bool ServerProcess::Healthy() const {
  int fd = ConnectTcp(port_);
  if (fd < 0) return false;
  std::string req = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  std::string resp;
  if (SendAll(fd, req)) {
    char buf[1024];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf, 0)) > 0) resp.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return resp.rfind("HTTP/1.1 200", 0) == 0;
}

// ---- A minimal RFC 6455 client: masked frames out, server frames in ----

class WsClient {
 public:
  ~WsClient() { Close(); }

  bool Connect(uint16_t port) {
    fd_ = ConnectTcp(port);
    if (fd_ < 0) return false;
    const std::string req =
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) +
        "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: parley.v1\r\n\r\n";
    if (!SendAll(fd_, req)) return false;
    std::string head;
    char c;
    while (head.size() < 8192) {
      ssize_t n = recv(fd_, &c, 1, 0);
      if (n <= 0) return false;
      head.push_back(c);
      if (head.size() >= 4 && head.compare(head.size() - 4, 4, "\r\n\r\n") == 0) break;
    }
    return head.rfind("HTTP/1.1 101", 0) == 0 &&
           head.find(parley::ws::AcceptKey("dGhlIHNhbXBsZSBub25jZQ==")) != std::string::npos;
  }

  bool SendText(std::string_view payload) { return SendFrame(0x1, payload); }

  // Waits up to timeout_ms for data and appends every complete text message to `out`.
  // Returns false once the connection has ended (closed, reset, or a protocol error).
  bool Poll(int timeout_ms, std::vector<std::string>* out) {
    if (fd_ < 0) return false;
    pollfd p{fd_, POLLIN, 0};
    int r = poll(&p, 1, timeout_ms);
    if (r < 0) return false;
    if (r == 0) return true;
    char buf[65536];
    ssize_t n = recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) {
      Close();
      return false;
    }
    in_.append(buf, static_cast<size_t>(n));
    return ParseFrames(out);
  }

  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  bool open() const { return fd_ >= 0; }
  std::string protocol_error;

 private:
  bool SendFrame(uint8_t opcode, std::string_view payload) {
    if (fd_ < 0) return false;
    std::string f;
    parley::ws::AppendMaskedFrame(&f, static_cast<parley::ws::Opcode>(opcode), payload,
                                  static_cast<uint32_t>(rng_()));
    if (!SendAll(fd_, f)) {
      Close();
      return false;
    }
    return true;
  }

  bool ParseFrames(std::vector<std::string>* out) {
    size_t pos = 0;
    while (true) {
      parley::ws::FrameHeader h;
      if (!parley::ws::ParseFrameHeader(std::string_view(in_).substr(pos), &h)) break;
      const bool fin = h.fin;
      const uint8_t opcode = h.opcode;
      if (h.masked) {
        protocol_error = "server frame is masked";
        Close();
        return false;
      }
      if (in_.size() - pos - h.header_len < h.payload_len) break;
      std::string_view payload(in_.data() + pos + h.header_len, static_cast<size_t>(h.payload_len));
      pos += h.header_len + static_cast<size_t>(h.payload_len);
      switch (opcode) {
        case 0x1:
          if (fin) {
            out->emplace_back(payload);
          } else {
            assembly_.assign(payload);
            assembling_ = true;
          }
          break;
        case 0x0:
          if (!assembling_) {
            protocol_error = "continuation without a message";
            Close();
            return false;
          }
          assembly_.append(payload);
          if (fin) {
            out->push_back(std::move(assembly_));
            assembly_.clear();
            assembling_ = false;
          }
          break;
        case 0x8:
          if (payload.size() >= 2) {
            close_code = static_cast<uint16_t>((static_cast<uint8_t>(payload[0]) << 8) |
                                               static_cast<uint8_t>(payload[1]));
          }
          SendFrame(0x8, payload.substr(0, std::min<size_t>(payload.size(), 2)));
          Close();
          in_.clear();
          return false;
        case 0x9:
          SendFrame(0xA, payload);
          break;
        case 0xA:
          break;
        default:
          protocol_error = "unexpected opcode " + std::to_string(opcode);
          Close();
          return false;
      }
    }
    in_.erase(0, pos);
    return fd_ >= 0;
  }

 public:
  uint16_t close_code = 0;

 private:
  int fd_ = -1;
  std::string in_;
  std::string assembly_;
  bool assembling_ = false;
  std::mt19937 rng_{std::random_device{}()};
};

// ---- Protocol helpers ----

constexpr const char* kGroup = "crash";
constexpr const char* kGroupConv = "g:crash";

std::string DirectConv(const std::string& a, const std::string& b) {
  return a <= b ? "d:" + a + ":" + b : "d:" + b + ":" + a;
}

std::string JoinUsers(std::vector<std::string> users) {
  std::sort(users.begin(), users.end());
  std::string out;
  for (const auto& u : users) out += (out.empty() ? "" : ",") + u;
  return "[" + out + "]";
}

struct Msg {
  std::string conv;
  int64_t seq = 0;
  int64_t ts = 0;
  std::string from;
  std::string cmid;
  std::string body;
};

std::string Describe(const Msg& m) {
  return m.conv + "#" + std::to_string(m.seq) + " from " + m.from + " cmid " + m.cmid + " ts " +
         std::to_string(m.ts);
}

bool ReadMsg(simdjson::dom::element e, Msg* m) {
  std::string_view conv, from, cmid, body;
  if (e["conv"].get(conv) || e["seq"].get(m->seq) || e["ts"].get(m->ts) || e["from"].get(from) ||
      e["cmid"].get(cmid) || e["body"].get(body)) {
    return false;
  }
  m->conv = conv;
  m->from = from;
  m->cmid = cmid;
  m->body = body;
  return true;
}

// One inbox entry: a message or a group membership event.
struct InboxEntry {
  bool event = false;
  Msg msg;  // when !event
  std::string group, change, by;
  std::vector<std::string> users;
  int64_t ts = 0;
};

// A description that identifies the entry (used to compare inboxes across audits).
std::string Describe(const InboxEntry& e) {
  if (!e.event) return "msg " + Describe(e.msg);
  return "group event " + e.group + " " + e.change + " " + JoinUsers(e.users) + " by " + e.by +
         " ts " + std::to_string(e.ts);
}

bool ReadGroupEvent(simdjson::dom::element e, InboxEntry* out) {
  std::string_view group, change, by;
  simdjson::dom::array users;
  if (e["group"].get(group) || e["change"].get(change) || e["by"].get(by) ||
      e["users"].get(users) || e["ts"].get(out->ts)) {
    return false;
  }
  out->event = true;
  out->group = group;
  out->change = change;
  out->by = by;
  for (simdjson::dom::element u : users) {
    std::string_view s;
    if (u.get(s)) return false;
    out->users.emplace_back(s);
  }
  return true;
}

// A synchronous request/response connection for the audit and the group owner's changes.
class AuditClient {
 public:
  // Connects and says hello; returns "" or an error.
  std::string Open(uint16_t port, const std::string& user, const std::string& device = "audit") {
    if (!ws_.Connect(port)) return "audit connect failed";
    std::string err;
    auto ok =
        Request(R"({"op":"hello","user":")" + user + R"(","device":")" + device + R"("})", &err);
    return ok ? "" : "hello: " + err;
  }

  // Sends the request (the id is added) and returns its answer's text if it is an ok.
  std::optional<std::string> Request(const std::string& body_without_id, std::string* err) {
    auto text = RequestAny(body_without_id, err);
    if (!text) return std::nullopt;
    simdjson::dom::element doc;
    std::string_view op;
    if (parser_.parse(*text).get(doc) || doc["op"].get(op) || op != "ok") {
      *err = "answer " + *text + " to " + body_without_id;
      return std::nullopt;
    }
    return text;
  }

  // As Request, but returns any answer (ok or error).
  std::optional<std::string> RequestAny(const std::string& body_without_id, std::string* err) {
    const int64_t id = Send(body_without_id);
    if (id < 0) {
      *err = "send failed";
      return std::nullopt;
    }
    auto text = Await(id, std::chrono::seconds(10));
    if (!text) *err = "no answer (" + await_error_ + ") to " + body_without_id;
    return text;
  }

  // Sends the request with a fresh id; returns the id, or -1.
  int64_t Send(const std::string& body_without_id) {
    const int64_t id = next_id_++;
    std::string req = body_without_id;
    req.insert(1, "\"id\":" + std::to_string(id) + ",");
    return ws_.SendText(req) ? id : -1;
  }

  // The answer to request `id`; nullopt if the connection ends (frames that arrived before
  // its end count) or nothing came within `timeout`.
  std::optional<std::string> Await(int64_t id, Clock::duration timeout) {
    const auto deadline = Clock::now() + timeout;
    std::vector<std::string> msgs;
    while (Clock::now() < deadline) {
      msgs.clear();
      const bool alive = ws_.Poll(100, &msgs);
      for (auto& text : msgs) {
        simdjson::dom::element doc;
        if (parser_.parse(text).get(doc)) continue;
        int64_t got = -1;
        if (doc["id"].get(got) || got != id) continue;
        return text;
      }
      if (!alive) {
        await_error_ = "connection ended, close " + std::to_string(ws_.close_code);
        return std::nullopt;
      }
    }
    await_error_ = "none within the time limit";
    return std::nullopt;
  }

  simdjson::dom::parser& parser() { return parser_; }

 private:
  WsClient ws_;
  simdjson::dom::parser parser_;
  int64_t next_id_ = 1;
  std::string await_error_;
};

// ---- Bookkeeping of every send ----

struct Outgoing {
  std::string from, device, to, group, cmid;  // exactly one of to / group
  bool acked = false;                         // an ok was received
  Msg ok;                                     // conv/seq/ts of the ok
  int attempts = 0;
  // Set by the audit before a retry: whether the store held it, and where.
  bool audited = false;
  std::optional<Msg> stored;
};

std::string ConvOf(const Outgoing& o) {
  return o.group.empty() ? DirectConv(o.from, o.to) : "g:" + o.group;
}

std::string SendRequest(const Outgoing& o) {
  const std::string target =
      o.group.empty() ? R"("to":")" + o.to + "\"" : R"("group":")" + o.group + "\"";
  return R"({"op":"send",)" + target + R"(,"cmid":")" + o.cmid + R"(","body":")" + o.cmid + R"("})";
}

struct SendResult {
  std::string cmid;
  bool retry = false;
  std::string op;  // "ok" / "error"
  std::string code;
  std::string conv;
  int64_t seq = 0, ts = 0;
  bool dup = false;
  std::string raw;
};

struct ConnectionReport {
  std::vector<Outgoing> new_sends;  // sent for the first time (in order)
  std::vector<std::string> sent_retries;
  std::vector<SendResult> results;
  std::vector<std::pair<std::string, int64_t>> acked_reads;  // conv, seq
  int64_t reads_sent = 0;
  int64_t acked_cursor = 0;  // highest `ack` answered ok
  int64_t acks_sent = 0, acks_acked = 0;
  std::vector<std::string> violations;
  int64_t live_msgs = 0, live_group_events = 0, receipts = 0;
};

struct SenderPlan {
  std::string user, device;
  std::vector<std::string> others;
  std::string group;  // non-empty: the user is a member and may also send to this group
  std::vector<Outgoing> retries;
  int64_t* counter = nullptr;
  uint32_t seed = 0;
};

// One sender connection for one cycle: hello, retry `retries`, then send new messages (and
// now and then a read or an ack) with up to `window` requests in flight until the connection dies
// (the server is killed).
void RunSender(uint16_t port, SenderPlan plan, std::atomic<bool>* stop, ConnectionReport* report) {
  const std::string& user = plan.user;
  const std::string& device = plan.device;
  const std::string who = user + "/" + device;
  WsClient ws;
  if (!ws.Connect(port)) return;
  simdjson::dom::parser parser;
  std::mt19937 rng(plan.seed);
  constexpr int kWindow = 8;
  struct InFlight {
    bool read = false;
    bool ack = false;  // seq: the acked inbox number
    std::string cmid;  // send
    bool retry = false;
    std::string conv;  // read
    int64_t seq = 0;
  };
  std::map<int64_t, InFlight> in_flight;
  std::map<std::string, int64_t> live_seq;  // conv -> newest seq seen live on this connection
  int64_t next_id = 2;
  if (!ws.SendText(R"({"op":"hello","id":1,"user":")" + user + R"(","device":")" + device +
                   R"("})")) {
    return;
  }
  bool ready = false;
  int64_t last_live_inbox = -1;
  size_t next_retry = 0;
  std::vector<std::string> msgs;
  const auto give_up = Clock::now() + std::chrono::seconds(20);
  while (!stop->load() && Clock::now() < give_up) {
    while (ready && static_cast<int>(in_flight.size()) < kWindow) {
      const int64_t id = next_id++;
      InFlight f;
      std::string req;
      const uint32_t dice = rng() % 12;
      if (next_retry >= plan.retries.size() && last_live_inbox > 0 && dice == 1) {
        // Acknowledge what this connection got live (its cursor must never fall below it).
        f.ack = true;
        f.seq = last_live_inbox;
        req = R"({"op":"ack","id":)" + std::to_string(id) + R"(,"inbox":)" + std::to_string(f.seq) +
              "}";
        ++report->acks_sent;
      } else if (next_retry >= plan.retries.size() && !live_seq.empty() && dice == 0) {
        // Mark a conversation read up to a seq this user's inbox is known to hold.
        auto it = live_seq.begin();
        std::advance(it, static_cast<long>(rng() % live_seq.size()));
        f.read = true;
        f.conv = it->first;
        f.seq = it->second;
        req = R"({"op":"read","id":)" + std::to_string(id) + R"(,"conv":")" + f.conv +
              R"(","seq":)" + std::to_string(f.seq) + "}";
        ++report->reads_sent;
      } else {
        Outgoing o;
        if (next_retry < plan.retries.size()) {
          o = plan.retries[next_retry++];
          f.retry = true;
          // Record the attempt before writing it: the server may store it even if we die now.
          report->sent_retries.push_back(o.cmid);
        } else {
          o.from = user;
          o.device = device;
          o.cmid = user + "-" + device + "-" + std::to_string((*plan.counter)++);
          const size_t targets = plan.others.size() + (plan.group.empty() ? 0 : 1);
          const size_t pick = rng() % targets;
          if (pick < plan.others.size()) {
            o.to = plan.others[pick];
          } else {
            o.group = plan.group;
          }
          report->new_sends.push_back(o);
        }
        f.cmid = o.cmid;
        std::string body = SendRequest(o);
        body.insert(1, "\"id\":" + std::to_string(id) + ",");
        req = std::move(body);
      }
      in_flight[id] = f;
      if (!ws.SendText(req)) return;
    }
    msgs.clear();
    // Frames that arrived before the connection ended are still processed.
    const bool alive = ws.Poll(50, &msgs);
    for (auto& text : msgs) {
      simdjson::dom::element doc;
      if (parser.parse(text).get(doc)) {
        report->violations.push_back(who + ": unparsable frame " + text);
        continue;
      }
      std::string_view op;
      if (doc["op"].get(op)) {
        report->violations.push_back(who + ": frame without op " + text);
        continue;
      }
      int64_t id = -1;
      const bool has_id = !doc["id"].get(id);
      if (has_id && id == 1) {
        if (op != "ok") {
          report->violations.push_back(who + ": hello answered " + text);
          return;
        }
        ready = true;
        continue;
      }
      if (!has_id && (op == "msg" || op == "group")) {
        int64_t inbox = 0;
        if (doc["inbox"].get(inbox)) {
          report->violations.push_back(std::string(op) + " without inbox: " + text);
        } else {
          if (last_live_inbox >= 0 && inbox != last_live_inbox + 1) {
            report->violations.push_back(who + ": live event inbox " + std::to_string(inbox) +
                                         " after " + std::to_string(last_live_inbox) +
                                         " on one connection (gap or reorder)");
          }
          last_live_inbox = inbox;
        }
        if (op == "group") {
          ++report->live_group_events;
          continue;
        }
        std::string_view conv;
        int64_t seq = 0;
        if (doc["conv"].get(conv) || doc["seq"].get(seq)) {
          report->violations.push_back("malformed msg event: " + text);
        } else {
          int64_t& newest = live_seq[std::string(conv)];
          newest = std::max(newest, seq);
        }
        ++report->live_msgs;
        continue;
      }
      if (!has_id && op == "receipt") {
        ++report->receipts;
        continue;
      }
      if (!has_id) {
        report->violations.push_back(who + ": unexpected frame " + text);
        continue;
      }
      auto it = in_flight.find(id);
      if (it == in_flight.end()) {
        report->violations.push_back(who + ": answer to unknown id " + text);
        continue;
      }
      const InFlight f = it->second;
      in_flight.erase(it);
      if (f.ack) {
        if (op == "ok") {
          report->acked_cursor = std::max(report->acked_cursor, f.seq);
          ++report->acks_acked;
        } else {
          report->violations.push_back(who + ": ack of inbox " + std::to_string(f.seq) +
                                       " answered " + text);
        }
        continue;
      }
      if (f.read) {
        if (op == "ok") {
          report->acked_reads.emplace_back(f.conv, f.seq);
        } else {
          report->violations.push_back(who + ": read of " + f.conv + " up to " +
                                       std::to_string(f.seq) + " answered " + text);
        }
        continue;
      }
      SendResult r;
      r.cmid = f.cmid;
      r.retry = f.retry;
      r.op = std::string(op);
      r.raw = text;
      if (op == "ok") {
        std::string_view conv;
        if (doc["conv"].get(conv) || doc["seq"].get(r.seq) || doc["ts"].get(r.ts) ||
            doc["dup"].get(r.dup)) {
          report->violations.push_back("malformed send ok: " + text);
          continue;
        }
        r.conv = conv;
      } else {
        std::string_view code;
        if (doc["code"].get(code)) code = "<no code>";
        r.code = code;
      }
      report->results.push_back(std::move(r));
    }
    if (!alive) break;
  }
}

// ---- The group's membership timeline ----

// One membership change of the group, by its owner.
struct GroupChange {
  std::string change;              // "created", "removed", "added" (as in the event)
  std::vector<std::string> users;  // as in the event ("created": every initial member)
  std::set<std::string> before, after;
  int64_t boundary = 0;  // group messages sequenced before the change (none during it)
  bool acked = false;

  std::set<std::string> Concerned() const {
    std::set<std::string> c = after;
    c.insert(users.begin(), users.end());
    return c;
  }
};

struct GroupModel {
  std::vector<GroupChange> applied;    // every change known to have taken effect, in order
  std::optional<GroupChange> pending;  // sent but never answered: may or may not have

  bool exists() const { return !applied.empty(); }
  std::set<std::string> members() const {
    return applied.empty() ? std::set<std::string>{} : applied.back().after;
  }
};

// ---- The audit ----

struct ConvInfo {
  int64_t last_seq = 0, read_seq = 0;
};

struct Audit {
  std::map<std::string, std::vector<Msg>> history;  // conv -> messages by seq
  std::map<std::string, Msg> by_cmid;
  std::map<std::string, std::vector<InboxEntry>> inbox;            // user -> entries in inbox order
  std::map<std::string, std::map<std::string, ConvInfo>> convs;    // user -> conv -> convs entry
  std::map<std::pair<std::string, std::string>, int64_t> cursors;  // (user, device) -> cursor
  bool group_exists = false;
  std::string group_owner;
  std::set<std::string> group_members;
  // The group timeline this audit holds the store to (model.applied, plus model.pending if
  // group_info shows that it took effect).
  std::vector<GroupChange> timeline;
  bool pending_applied = false;
};

// Reads one conversation's whole history into *out. Returns "" or an error.
std::string ReadHistory(AuditClient& c, const std::string& conv, std::vector<Msg>* out,
                        std::vector<std::string>* violations) {
  std::vector<Msg> newest_first;
  int64_t before = -1;
  while (true) {
    std::string req = R"({"op":"history","conv":")" + conv + R"(","limit":200)";
    if (before >= 0) req += R"(,"before":)" + std::to_string(before);
    req += "}";
    std::string err;
    auto text = c.Request(req, &err);
    if (!text) return conv + " history: " + err;
    simdjson::dom::element doc;
    if (c.parser().parse(*text).get(doc)) return "unparsable history answer";
    simdjson::dom::array arr;
    bool more = false;
    if (doc["msgs"].get(arr) || doc["more"].get(more)) return "malformed history answer";
    std::vector<Msg> page;
    for (simdjson::dom::element e : arr) {
      Msg m;
      if (!ReadMsg(e, &m)) return "malformed history msg in " + text->substr(0, 300);
      page.push_back(m);
    }
    for (size_t i = 1; i < page.size(); ++i) {
      if (page[i].seq <= page[i - 1].seq) {
        violations->push_back(conv + ": history page not ascending at seq " +
                              std::to_string(page[i].seq));
      }
    }
    for (auto it = page.rbegin(); it != page.rend(); ++it) newest_first.push_back(*it);
    if (!more) break;
    if (page.empty()) return conv + ": history said more but returned nothing";
    before = page.front().seq;
  }
  out->assign(newest_first.rbegin(), newest_first.rend());
  return "";
}

// Reads every conversation's history, every user's inbox and convs, and the group's info (as
// its owner, users[0], who never leaves). Returns "" or an error.
std::string ReadStore(uint16_t port, const std::vector<std::string>& users,
                      const std::vector<std::string>& devices, Audit* audit,
                      std::vector<std::string>* violations) {
  for (const auto& user : users) {
    // Each device's cursor: a sync without `since` starts right after it.
    for (const auto& device : devices) {
      AuditClient d;
      if (auto err = d.Open(port, user, device); !err.empty()) {
        return user + "/" + device + ": " + err;
      }
      std::string err;
      auto text = d.Request(R"({"op":"sync","limit":1})", &err);
      if (!text) return user + "/" + device + " sync: " + err;
      simdjson::dom::element doc;
      simdjson::dom::array events;
      int64_t inbox_seq = 0;
      if (d.parser().parse(*text).get(doc) || doc["events"].get(events) ||
          doc["inbox_seq"].get(inbox_seq)) {
        return "malformed sync answer " + text->substr(0, 300);
      }
      int64_t cursor = inbox_seq;
      for (simdjson::dom::element e : events) {
        int64_t first = 0;
        if (e["inbox"].get(first)) return "malformed sync event " + text->substr(0, 300);
        cursor = first - 1;
        break;
      }
      audit->cursors[{user, device}] = cursor;
    }
    AuditClient c;
    if (auto err = c.Open(port, user); !err.empty()) return user + ": " + err;
    // Inbox: sync from 0 until more is false.
    std::vector<InboxEntry>& inbox = audit->inbox[user];
    inbox.clear();
    int64_t since = 0;
    int64_t inbox_seq = -1;
    while (true) {
      std::string err;
      auto text =
          c.Request(R"({"op":"sync","since":)" + std::to_string(since) + R"(,"limit":1000})", &err);
      if (!text) return user + " sync: " + err;
      simdjson::dom::element doc;
      if (c.parser().parse(*text).get(doc)) return "unparsable sync answer";
      simdjson::dom::array events;
      bool more = false;
      if (doc["events"].get(events) || doc["more"].get(more) || doc["inbox_seq"].get(inbox_seq)) {
        return "malformed sync answer " + text->substr(0, 300);
      }
      size_t n = 0;
      for (simdjson::dom::element e : events) {
        ++n;
        int64_t number = 0;
        std::string_view op;
        InboxEntry entry;
        if (e["inbox"].get(number) || e["op"].get(op)) {
          return "malformed sync event in " + text->substr(0, 300);
        }
        const bool good = op == "msg"     ? ReadMsg(e, &entry.msg)
                          : op == "group" ? ReadGroupEvent(e, &entry)
                                          : false;
        if (!good) return "malformed sync event in " + text->substr(0, 300);
        if (number != static_cast<int64_t>(inbox.size()) + 1) {
          violations->push_back(user + ": inbox entry " + std::to_string(number) +
                                " follows entry " + std::to_string(inbox.size()) +
                                " (inbox not gapless)");
        }
        inbox.push_back(std::move(entry));
        since = number;
      }
      if (!more) break;
      if (n == 0) return user + ": sync said more but returned nothing";
    }
    if (inbox_seq != static_cast<int64_t>(inbox.size())) {
      violations->push_back(user + ": sync inbox_seq " + std::to_string(inbox_seq) + " but " +
                            std::to_string(inbox.size()) + " entries");
    }
    // Conversations and read positions.
    {
      std::string err;
      auto text = c.Request(R"({"op":"convs","limit":1000})", &err);
      if (!text) return user + " convs: " + err;
      simdjson::dom::element doc;
      simdjson::dom::array arr;
      if (c.parser().parse(*text).get(doc) || doc["convs"].get(arr)) {
        return "malformed convs answer " + text->substr(0, 300);
      }
      auto& mine = audit->convs[user];
      mine.clear();
      for (simdjson::dom::element e : arr) {
        std::string_view conv;
        ConvInfo info;
        if (e["conv"].get(conv) || e["last_seq"].get(info.last_seq) ||
            e["read_seq"].get(info.read_seq)) {
          return "malformed convs entry in " + text->substr(0, 300);
        }
        if (!mine.emplace(std::string(conv), info).second) {
          violations->push_back(user + ": convs lists " + std::string(conv) + " twice");
        }
      }
    }
    // History of the conversations this user is the first member of (each read once).
    for (const auto& other : users) {
      if (!(user < other)) continue;
      const std::string conv = DirectConv(user, other);
      if (auto err = ReadHistory(c, conv, &audit->history[conv], violations); !err.empty()) {
        return err;
      }
    }
    if (user != users[0]) continue;
    // The group, as its owner sees it.
    std::string err;
    auto text =
        c.RequestAny(R"({"op":"group_info","group":")" + std::string(kGroup) + R"("})", &err);
    if (!text) return "group_info: " + err;
    simdjson::dom::element doc;
    std::string_view op;
    if (c.parser().parse(*text).get(doc) || doc["op"].get(op)) return "malformed " + *text;
    audit->group_members.clear();
    audit->group_exists = op == "ok";
    if (op != "ok") {
      std::string_view code;
      if (doc["code"].get(code) || code != "not_found") return "group_info answered " + *text;
      continue;
    }
    std::string_view owner;
    simdjson::dom::array members;
    if (doc["owner"].get(owner) || doc["members"].get(members)) return "malformed " + *text;
    audit->group_owner = owner;
    for (simdjson::dom::element m : members) {
      std::string_view s;
      if (m.get(s)) return "malformed " + *text;
      if (!audit->group_members.emplace(s).second) {
        violations->push_back("group_info lists " + std::string(s) + " twice: " + *text);
      }
    }
    if (auto e = ReadHistory(c, kGroupConv, &audit->history[kGroupConv], violations); !e.empty()) {
      return e;
    }
  }
  return "";
}

std::string DescribeMembers(const std::set<std::string>& s) {
  return JoinUsers(std::vector<std::string>(s.begin(), s.end()));
}

// Decides the group timeline this audit holds the store to: the model's changes, plus the
// unanswered one if group_info shows that it took effect (either outcome is acceptable).
void ResolveGroup(Audit* audit, const GroupModel& model, std::vector<std::string>* violations) {
  audit->timeline = model.applied;
  audit->pending_applied = false;
  if (model.pending.has_value()) {
    const GroupChange& p = *model.pending;
    const bool before_state = p.before.empty()
                                  ? !audit->group_exists
                                  : audit->group_exists && audit->group_members == p.before;
    const bool after_state = audit->group_exists && audit->group_members == p.after;
    if (after_state) {
      audit->timeline.push_back(p);
      audit->pending_applied = true;
    } else if (!before_state) {
      violations->push_back(
          "unanswered group change '" + p.change + " " + JoinUsers(p.users) +
          "' left the group neither before (" + DescribeMembers(p.before) + ") nor after it (" +
          DescribeMembers(p.after) + "): group_info has " +
          (audit->group_exists ? DescribeMembers(audit->group_members) : "no group"));
    }
  }
  if (audit->timeline.empty()) {
    if (audit->group_exists) violations->push_back("the group exists but was never created");
    return;
  }
  const GroupChange& last = audit->timeline.back();
  if (!audit->group_exists) {
    violations->push_back("LOST: the group vanished; last change '" + last.change + " " +
                          JoinUsers(last.users) + "'" + (last.acked ? " was answered ok" : ""));
    return;
  }
  if (audit->group_owner != "ann") {
    violations->push_back("group owner is " + audit->group_owner + ", expected ann");
  }
  if (audit->group_members != last.after) {
    violations->push_back("group_info members " + DescribeMembers(audit->group_members) +
                          ", but the last change '" + last.change + " " + JoinUsers(last.users) +
                          "'" + (last.acked ? " (answered ok)" : "") + " left " +
                          DescribeMembers(last.after));
  }
}

// The group part of `user`'s inbox as the timeline says it must be, one description per entry.
std::vector<std::string> ExpectedGroupItems(const std::string& user,
                                            const std::vector<GroupChange>& timeline,
                                            const std::vector<Msg>& history) {
  std::vector<std::string> out;
  std::set<std::string> members;
  int64_t from = 0;  // group messages up to here are placed
  auto messages_until = [&](int64_t until) {
    for (int64_t s = from + 1; s <= until && s <= static_cast<int64_t>(history.size()); ++s) {
      if (members.count(user))
        out.push_back("msg " + Describe(history[static_cast<size_t>(s - 1)]));
    }
    from = std::max(from, until);
  };
  for (const GroupChange& c : timeline) {
    messages_until(c.boundary);
    if (c.Concerned().count(user)) {
      out.push_back("group event " + std::string(kGroup) + " " + c.change + " " +
                    JoinUsers(c.users) + " by ann");
    }
    members = c.after;
  }
  messages_until(static_cast<int64_t>(history.size()));
  return out;
}

// Checks the store's invariants and what the senders were told. Fills audit->by_cmid.
void CheckStore(Audit* audit, const std::vector<std::string>& users,
                const std::map<std::string, Outgoing>& outgoing,
                const std::map<std::string, Msg>& seen_before,
                const std::map<std::string, std::vector<std::string>>& seen_inbox,
                const std::map<std::pair<std::string, std::string>, int64_t>& read_floor,
                const std::map<std::pair<std::string, std::string>, int64_t>& seen_reads,
                const std::map<std::pair<std::string, std::string>, int64_t>& ack_floor,
                const std::map<std::pair<std::string, std::string>, int64_t>& seen_cursors,
                const GroupModel& model, std::vector<std::string>* violations) {
  ResolveGroup(audit, model, violations);
  // Device cursors: never below an ack answered ok, nor below an earlier audit.
  for (const auto& [key, cursor] : audit->cursors) {
    const std::string who = key.first + "/" + key.second;
    if (auto f = ack_floor.find(key); f != ack_floor.end() && cursor < f->second) {
      violations->push_back("LOST ACK: " + who + " acked inbox " + std::to_string(f->second) +
                            " (answered ok), its cursor is " + std::to_string(cursor));
    }
    if (auto s = seen_cursors.find(key); s != seen_cursors.end() && cursor < s->second) {
      violations->push_back(who + ": cursor went back from " + std::to_string(s->second) +
                            " (earlier audit) to " + std::to_string(cursor));
    }
  }
  audit->by_cmid.clear();
  for (auto& [conv, hist] : audit->history) {
    for (size_t i = 0; i < hist.size(); ++i) {
      const Msg& m = hist[i];
      if (m.seq != static_cast<int64_t>(i) + 1) {
        violations->push_back(conv + ": history position " + std::to_string(i + 1) + " holds seq " +
                              std::to_string(m.seq) + " (not gapless 1..N)");
      }
      if (m.conv != conv) violations->push_back(conv + ": history holds " + Describe(m));
      if (m.body != m.cmid) violations->push_back("body differs from cmid: " + Describe(m));
      if (m.cmid.rfind(m.from + "-", 0) != 0) {
        violations->push_back("cmid not of its sender: " + Describe(m));
      }
      auto [it, fresh] = audit->by_cmid.emplace(m.cmid, m);
      if (!fresh) {
        violations->push_back("cmid stored twice: " + Describe(it->second) + " and " + Describe(m));
      }
      if (outgoing.count(m.cmid) == 0) {
        violations->push_back("stored message nobody sent: " + Describe(m));
      }
    }
  }
  // Every group message came from a member of its time.
  if (auto h = audit->history.find(kGroupConv); h != audit->history.end()) {
    for (const Msg& m : h->second) {
      const GroupChange* epoch = nullptr;
      for (const GroupChange& c : audit->timeline) {
        if (c.boundary < m.seq) epoch = &c;
      }
      if (epoch == nullptr || epoch->after.count(m.from) == 0) {
        violations->push_back("group message from a non-member of its time: " + Describe(m));
      }
    }
  }
  // Every ok'd send is stored where its ok said.
  for (const auto& [cmid, o] : outgoing) {
    auto it = audit->by_cmid.find(cmid);
    if (o.acked) {
      if (it == audit->by_cmid.end()) {
        violations->push_back("LOST: " + cmid + " was answered ok (" + Describe(o.ok) +
                              ") but is not in the history");
      } else if (it->second.conv != o.ok.conv || it->second.seq != o.ok.seq ||
                 it->second.ts != o.ok.ts) {
        violations->push_back("ok said " + Describe(o.ok) + ", history has " +
                              Describe(it->second));
      }
    }
    if (it != audit->by_cmid.end() && it->second.conv != ConvOf(o)) {
      violations->push_back(cmid + " stored in the wrong conversation: " + Describe(it->second));
    }
  }
  // Nothing seen by an earlier audit was lost or renumbered.
  for (const auto& [cmid, old] : seen_before) {
    auto it = audit->by_cmid.find(cmid);
    if (it == audit->by_cmid.end()) {
      violations->push_back("a message seen by an earlier audit vanished: " + Describe(old));
    } else if (it->second.conv != old.conv || it->second.seq != old.seq ||
               it->second.ts != old.ts) {
      violations->push_back("renumbered across a restart: " + Describe(old) + " is now " +
                            Describe(it->second));
    }
  }
  // Inboxes: exactly the user's conversations' messages, once each, in conversation order.
  for (const auto& user : users) {
    const auto& inbox = audit->inbox[user];
    // What an earlier audit saw is still there, under the same numbers.
    if (auto old = seen_inbox.find(user); old != seen_inbox.end()) {
      for (size_t i = 0; i < old->second.size(); ++i) {
        const std::string now = i < inbox.size() ? Describe(inbox[i]) : "nothing";
        if (now != old->second[i]) {
          violations->push_back(user + " inbox " + std::to_string(i + 1) + " was " +
                                old->second[i] + " at an earlier audit, now " + now);
          break;
        }
      }
    }
    std::map<std::string, int64_t> last_seq;
    std::set<std::string> seen;
    std::vector<std::string> group_items;
    for (size_t i = 0; i < inbox.size(); ++i) {
      const std::string where = user + " inbox " + std::to_string(i + 1) + ": ";
      if (inbox[i].event) {
        const InboxEntry& ev = inbox[i];
        if (ev.group != kGroup) {
          violations->push_back(where + "event of an unknown group: " + Describe(ev));
        } else {
          group_items.push_back("group event " + ev.group + " " + ev.change + " " +
                                JoinUsers(ev.users) + " by " + ev.by);
        }
        continue;
      }
      const Msg& e = inbox[i].msg;
      if (e.conv == kGroupConv) group_items.push_back("msg " + Describe(e));
      auto it = audit->by_cmid.find(e.cmid);
      if (it == audit->by_cmid.end()) {
        violations->push_back(where + "event not in any history: " + Describe(e));
        continue;
      }
      if (it->second.conv != e.conv || it->second.seq != e.seq || it->second.ts != e.ts ||
          it->second.from != e.from) {
        violations->push_back(where + Describe(e) + " but history has " + Describe(it->second));
      }
      if (!seen.insert(e.cmid).second) violations->push_back(where + "twice: " + Describe(e));
      if (e.seq <= last_seq[e.conv]) {
        violations->push_back(where + Describe(e) + " after seq " +
                              std::to_string(last_seq[e.conv]) + " (conversation order)");
      }
      last_seq[e.conv] = e.seq;
    }
    for (const auto& [conv, hist] : audit->history) {
      if (conv.rfind("d:", 0) != 0) continue;
      const size_t colon = conv.find(':', 2);
      const bool member = conv.substr(2, colon - 2) == user || conv.substr(colon + 1) == user;
      if (!member) continue;
      for (const Msg& m : hist) {
        if (seen.count(m.cmid) == 0) {
          violations->push_back(user + ": inbox lacks " + Describe(m));
        }
      }
    }
    // The group's messages and membership events, exactly as the timeline says.
    static const std::vector<Msg> kNoHistory;
    auto gh = audit->history.find(kGroupConv);
    const std::vector<std::string> expected = ExpectedGroupItems(
        user, audit->timeline, gh == audit->history.end() ? kNoHistory : gh->second);
    for (size_t i = 0; i < std::max(expected.size(), group_items.size()); ++i) {
      const std::string want = i < expected.size() ? expected[i] : "nothing";
      const std::string got = i < group_items.size() ? group_items[i] : "nothing";
      if (want != got) {
        violations->push_back(user + ": group entry " + std::to_string(i + 1) + " of " +
                              std::to_string(group_items.size()) + " in the inbox is " + got +
                              ", expected " + want + " (" + std::to_string(expected.size()) +
                              " expected)");
        break;
      }
    }
    // convs: exactly the user's conversations, up to date, read positions kept.
    const std::set<std::string> members =
        audit->timeline.empty() ? std::set<std::string>{} : audit->timeline.back().after;
    std::map<std::string, int64_t> expected_convs;  // conv -> last_seq
    for (const auto& [conv, hist] : audit->history) {
      if (conv == kGroupConv) continue;
      const size_t colon = conv.find(':', 2);
      const bool member = conv.substr(2, colon - 2) == user || conv.substr(colon + 1) == user;
      if (member && !hist.empty()) expected_convs[conv] = static_cast<int64_t>(hist.size());
    }
    if (members.count(user)) {
      expected_convs[kGroupConv] = gh == audit->history.end() ? 0 : gh->second.size();
    }
    const auto& listed = audit->convs[user];
    for (const auto& [conv, info] : listed) {
      auto want = expected_convs.find(conv);
      if (want == expected_convs.end()) {
        violations->push_back(user + ": convs lists " + conv + ", not one of its conversations");
        continue;
      }
      if (info.last_seq != want->second) {
        violations->push_back(user + ": convs says " + conv + " last_seq " +
                              std::to_string(info.last_seq) + ", history has " +
                              std::to_string(want->second));
      }
      if (info.read_seq < 0 || info.read_seq > info.last_seq) {
        violations->push_back(user + ": convs " + conv + " read_seq " +
                              std::to_string(info.read_seq) + " outside 0..last_seq");
      }
      if (auto f = read_floor.find({user, conv});
          f != read_floor.end() && info.read_seq < f->second) {
        violations->push_back("LOST READ: " + user + " read " + conv + " up to " +
                              std::to_string(f->second) + " (answered ok), convs says read_seq " +
                              std::to_string(info.read_seq));
      }
      if (auto s = seen_reads.find({user, conv});
          s != seen_reads.end() && info.read_seq < s->second) {
        violations->push_back(user + ": read_seq of " + conv + " went back from " +
                              std::to_string(s->second) + " (earlier audit) to " +
                              std::to_string(info.read_seq));
      }
    }
    for (const auto& [conv, last] : expected_convs) {
      if (listed.count(conv) == 0) {
        violations->push_back(user + ": convs lacks " + conv + " (last_seq " +
                              std::to_string(last) + ")");
      }
    }
  }
}

struct Totals {
  int64_t sent = 0, acked = 0, retries = 0, retry_dup = 0, retry_new = 0, live_msgs = 0,
          group_sent = 0, group_acked = 0, reads_sent = 0, reads_acked = 0, receipts = 0,
          live_group_events = 0, acks_sent = 0, acks_acked = 0;
  // Group changes: answered ok; killed before an answer and found applied / not applied.
  int changes_acked = 0, changes_unanswered_applied = 0, changes_unanswered_lost = 0;
  int killed_changes = 0;  // changes in the cycles killed on purpose during the change
};

enum class ChangeOutcome { kOk, kError, kNoAnswer };

// Sends `change` as the group's owner. kill_after_us >= 0: SIGKILLs the server that long after
// the request went out and takes whatever answer arrived before. *latency_us: time to the ok.
ChangeOutcome RunGroupChange(ServerProcess& server, const std::string& owner,
                             const GroupChange& change, int64_t kill_after_us, std::string* raw,
                             int64_t* latency_us) {
  AuditClient c;
  if (auto err = c.Open(server.port(), owner); !err.empty()) {
    *raw = err;
    return ChangeOutcome::kError;
  }
  std::string req;
  if (change.change == "created") {
    std::string members;
    for (const auto& u : change.users) {
      if (u != owner) members += std::string(members.empty() ? "" : ",") + "\"" + u + "\"";
    }
    req = R"({"op":"group_create","group":")" + std::string(kGroup) +
          R"(","name":"Crash","members":[)" + members + "]}";
  } else {
    req = std::string(R"({"op":")") + (change.change == "added" ? "group_add" : "group_remove") +
          R"(","group":")" + kGroup + R"(","users":[")" + change.users.at(0) + R"("]})";
  }
  const auto start = Clock::now();
  const int64_t id = c.Send(req);
  if (id < 0) {
    *raw = "send failed";
    return ChangeOutcome::kError;
  }
  if (kill_after_us >= 0) {
    std::this_thread::sleep_until(start + std::chrono::microseconds(kill_after_us));
    server.Kill();
  }
  auto text = c.Await(id, std::chrono::seconds(10));
  *latency_us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start).count();
  if (!text) return ChangeOutcome::kNoAnswer;
  *raw = *text;
  simdjson::dom::element doc;
  std::string_view op;
  if (c.parser().parse(*text).get(doc) || doc["op"].get(op) || op != "ok") {
    return ChangeOutcome::kError;
  }
  if (change.change == "created") {
    std::string_view group, conv;
    if (doc["group"].get(group) || group != kGroup || doc["conv"].get(conv) || conv != kGroupConv) {
      return ChangeOutcome::kError;
    }
  }
  return ChangeOutcome::kOk;
}

}  // namespace

TEST_CASE("SIGKILL at random moments: every ok'd message survives exactly once", "[crash]") {
  REQUIRE_FALSE(ParleyBinary().empty());
  REQUIRE(access(ParleyBinary().c_str(), X_OK) == 0);
  const int cycles = static_cast<int>(EnvInt("PARLEY_CRASH_CYCLES", 20));
  const uint32_t seed = static_cast<uint32_t>(EnvInt("PARLEY_CRASH_SEED", std::random_device{}()));
  std::printf("parley_crash_test: %d cycles, seed %u (PARLEY_CRASH_SEED)\n", cycles, seed);
  std::mt19937 rng(seed);

  char tmpl[] = "/tmp/parley-crash-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  ServerProcess server(dir);

  const std::vector<std::string> users = {"ann", "ben", "cat", "dan"};
  const std::string owner = users[0];
  const std::vector<std::string> devices = {"d0", "d1"};
  std::map<std::string, Outgoing> outgoing;  // by cmid
  std::map<std::string, int64_t> counters;   // user/device -> next cmid number
  std::map<std::string, Msg> seen_before;
  std::map<std::string, std::vector<std::string>> seen_inbox;         // user -> entry descriptions
  std::map<std::pair<std::string, std::string>, int64_t> read_floor;  // highest ok'd read
  std::map<std::pair<std::string, std::string>, int64_t> seen_reads;  // read_seq at last audit
  std::map<std::pair<std::string, std::string>, int64_t> ack_floor;   // (user, device): ok'd ack
  std::map<std::pair<std::string, std::string>, int64_t> seen_cursors;  // at the last audit
  GroupModel group;
  int64_t change_latency_us = 8000;  // of the last answered change; sets the kill moments
  std::vector<std::string> violations;
  Totals totals;
  const auto started = Clock::now();

  auto report_violations = [&](const std::string& what) {
    std::string all;
    for (size_t i = 0; i < violations.size() && i < 30; ++i) all += violations[i] + "\n";
    INFO(what << ", seed " << seed << ", " << violations.size() << " violations (first 30):\n"
              << all << server.Logs());
    CHECK(violations.empty());
  };

  // A removal made the member's read position of the group go with its conversation record.
  auto forget_group_reads = [&](const GroupChange& c) {
    if (c.change != "removed") return;
    for (const auto& u : c.users) read_floor.erase({u, kGroupConv});
  };

  // Inboxes may trail the history briefly after a restart (fan-outs are recovered); the audit
  // is repeated for up to 5 s before its findings count as violations.
  int converge_waits = 0;
  auto audit_now = [&](Audit* audit) {
    for (int attempt = 0;; ++attempt) {
      std::vector<std::string> found;
      Audit fresh;
      const std::string err = ReadStore(server.port(), users, devices, &fresh, &found);
      INFO(server.Logs());
      REQUIRE(err == "");
      CheckStore(&fresh, users, outgoing, seen_before, seen_inbox, read_floor, seen_reads,
                 ack_floor, seen_cursors, group, &found);
      if (found.empty() || attempt == 50) {
        if (attempt > 0 && found.empty()) ++converge_waits;
        violations.insert(violations.end(), found.begin(), found.end());
        *audit = std::move(fresh);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  };

  // Remembers what an audit saw, for the next one to compare with.
  auto remember = [&](const Audit& audit) {
    seen_before = audit.by_cmid;
    seen_inbox.clear();
    for (const auto& [user, inbox] : audit.inbox) {
      auto& v = seen_inbox[user];
      for (const auto& e : inbox) v.push_back(Describe(e));
    }
    seen_cursors = audit.cursors;
    seen_reads.clear();
    for (const auto& [user, convs] : audit.convs) {
      for (const auto& [conv, info] : convs) seen_reads[{user, conv}] = info.read_seq;
    }
    if (group.pending.has_value()) {
      if (audit.pending_applied) {
        ++totals.changes_unanswered_applied;
        group.applied.push_back(*group.pending);
        forget_group_reads(*group.pending);
      } else {
        ++totals.changes_unanswered_lost;
      }
      group.pending.reset();
    }
  };

  // The next membership change: create the group until it exists, then remove a random member
  // other than the owner, then add it back.
  auto next_change = [&](const Audit& audit) {
    GroupChange c;
    c.boundary = static_cast<int64_t>(
        audit.history.count(kGroupConv) ? audit.history.at(kGroupConv).size() : 0);
    c.before = group.members();
    if (!group.exists()) {
      c.change = "created";
      c.users = users;
      c.after = std::set<std::string>(users.begin(), users.end());
      return c;
    }
    std::string removed;
    for (const auto& u : users) {
      if (c.before.count(u) == 0) removed = u;
    }
    c.after = c.before;
    if (!removed.empty()) {
      c.change = "added";
      c.users = {removed};
      c.after.insert(removed);
    } else {
      c.change = "removed";
      c.users = {users[1 + rng() % (users.size() - 1)]};
      c.after.erase(c.users[0]);
    }
    return c;
  };

  // Runs a change that must be answered ok (no kill). Returns false on a violation.
  auto change_acknowledged = [&](GroupChange c) {
    std::string raw;
    int64_t latency = 0;
    const ChangeOutcome out = RunGroupChange(server, owner, c, -1, &raw, &latency);
    if (out != ChangeOutcome::kOk) {
      violations.push_back("group change '" + c.change + " " + JoinUsers(c.users) + "' answered " +
                           (raw.empty() ? "nothing" : raw));
      return false;
    }
    change_latency_us = latency;
    c.acked = true;
    ++totals.changes_acked;
    forget_group_reads(c);
    group.applied.push_back(std::move(c));
    return true;
  };

  for (int cycle = 0; cycle <= cycles; ++cycle) {
    {
      std::string err = server.Start();
      INFO("cycle " << cycle);
      REQUIRE(err == "");
    }
    Audit audit;
    violations.clear();
    audit_now(&audit);
    // Judge every unanswered send: stored at most once (checked above); record where.
    for (auto& [cmid, o] : outgoing) {
      if (o.acked) continue;
      auto it = audit.by_cmid.find(cmid);
      o.audited = true;
      o.stored = it == audit.by_cmid.end() ? std::nullopt : std::optional<Msg>(it->second);
    }
    if (!violations.empty()) {
      report_violations("cycle " + std::to_string(cycle));
      break;
    }
    remember(audit);
    if (cycle == cycles) break;

    // A membership change: always while the group does not exist, else on 45% of the cycles.
    // Two thirds of them are killed on purpose during the change; that cycle sends nothing.
    const bool change = !group.exists() || rng() % 20 < 9;
    if (change && rng() % 3 != 0) {
      GroupChange c = next_change(audit);
      // A quarter at once (the change is usually lost), the others 0 to 1.5 x the last answered
      // change's latency, skewed early: the group record is written within a fraction of a
      // millisecond (what the process wrote survives SIGKILL), its inbox events only after the
      // group record's fsync.
      const double u = std::uniform_real_distribution<double>(0, 1)(rng);
      const auto kill_after =
          rng() % 4 == 0 ? 0 : static_cast<int64_t>(1.5 * u * u * change_latency_us);
      std::string raw;
      int64_t latency = 0;
      ++totals.killed_changes;
      const ChangeOutcome out = RunGroupChange(server, owner, c, kill_after, &raw, &latency);
      if (out == ChangeOutcome::kOk) {
        c.acked = true;
        ++totals.changes_acked;
        forget_group_reads(c);
        group.applied.push_back(std::move(c));
      } else if (out == ChangeOutcome::kNoAnswer) {
        group.pending = std::move(c);
      } else {
        violations.push_back("group change '" + c.change + "' answered " + raw);
        report_violations("cycle " + std::to_string(cycle));
        break;
      }
      continue;
    }
    if (change && !change_acknowledged(next_change(audit))) {
      report_violations("cycle " + std::to_string(cycle));
      break;
    }

    // Senders: retries first, then new messages, until the kill.
    const std::set<std::string> members = group.members();
    std::atomic<bool> stop{false};
    std::vector<ConnectionReport> reports(users.size() * devices.size());
    std::vector<std::thread> threads;
    size_t k = 0;
    for (const auto& user : users) {
      for (const auto& device : devices) {
        SenderPlan plan;
        plan.user = user;
        plan.device = device;
        for (const auto& u : users) {
          if (u != user) plan.others.push_back(u);
        }
        const bool member = members.count(user) > 0;
        if (member) plan.group = kGroup;
        for (const auto& [cmid, o] : outgoing) {
          // A removed member keeps its unanswered group sends until it is back.
          if (o.acked || o.from != user || o.device != device) continue;
          if (!o.group.empty() && !member) continue;
          plan.retries.push_back(o);
        }
        plan.counter = &counters[user + "/" + device];
        plan.seed = static_cast<uint32_t>(rng());
        threads.emplace_back(RunSender, server.port(), std::move(plan), &stop, &reports[k++]);
      }
    }
    std::uniform_int_distribution<int> delay(50, 500);
    std::this_thread::sleep_for(std::chrono::milliseconds(delay(rng)));
    server.Kill();
    stop = true;
    for (auto& t : threads) t.join();

    // Merge what the senders learnt.
    for (size_t i = 0; i < reports.size(); ++i) {
      const auto& rep = reports[i];
      const std::string& user = users[i / devices.size()];
      violations.insert(violations.end(), rep.violations.begin(), rep.violations.end());
      totals.live_msgs += rep.live_msgs;
      totals.live_group_events += rep.live_group_events;
      totals.receipts += rep.receipts;
      totals.reads_sent += rep.reads_sent;
      totals.acks_sent += rep.acks_sent;
      totals.acks_acked += rep.acks_acked;
      if (rep.acks_acked > 0) {
        int64_t& floor = ack_floor[{user, devices[i % devices.size()]}];
        floor = std::max(floor, rep.acked_cursor);
      }
      for (const auto& sent : rep.new_sends) {
        Outgoing o = sent;
        o.attempts = 1;
        outgoing[o.cmid] = o;
        ++totals.sent;
        if (!o.group.empty()) ++totals.group_sent;
      }
      for (const auto& cmid : rep.sent_retries) {
        ++outgoing[cmid].attempts;
        ++totals.retries;
      }
      for (const auto& [conv, seq] : rep.acked_reads) {
        int64_t& floor = read_floor[{user, conv}];
        floor = std::max(floor, seq);
        ++totals.reads_acked;
      }
      for (const auto& r : rep.results) {
        Outgoing& o = outgoing[r.cmid];
        if (r.op != "ok") {
          violations.push_back("send " + r.cmid + " answered " + r.raw);
          continue;
        }
        Msg got{r.conv, r.seq, r.ts, o.from, o.cmid, o.cmid};
        if (r.conv != ConvOf(o)) {
          violations.push_back("send " + r.cmid + " to " + ConvOf(o) + " answered conv " + r.conv);
        }
        if (r.retry) {
          // The audit knew whether the first attempt was stored: dup must say the same.
          if (o.audited && o.stored.has_value()) {
            ++totals.retry_dup;
            if (!r.dup || r.seq != o.stored->seq || r.ts != o.stored->ts ||
                r.conv != o.stored->conv) {
              violations.push_back("retry of stored " + Describe(*o.stored) + " answered " + r.raw +
                                   " (expected dup:true with the stored seq/ts)");
            }
          } else if (o.audited) {
            ++totals.retry_new;
            if (r.dup) {
              violations.push_back("retry of " + r.cmid +
                                   " (not in the store at the audit) "
                                   "answered dup:true: " +
                                   r.raw);
            }
          }
        } else if (r.dup) {
          violations.push_back("first send of " + r.cmid + " answered dup:true: " + r.raw);
        }
        o.acked = true;
        o.ok = got;
        ++totals.acked;
        if (!o.group.empty()) ++totals.group_acked;
      }
    }
    if (!violations.empty()) {
      report_violations("cycle " + std::to_string(cycle) + " (senders)");
      break;
    }
  }

  // Final round: the server is up (the last audit passed). A removed member is added back,
  // then every send still without an ok is retried; each must be dup:true exactly when the
  // audit found it stored. Then audit again: everything is now acknowledged and must be there
  // exactly once.
  if (violations.empty() && group.exists() && group.members().size() != users.size()) {
    Audit before;
    audit_now(&before);
    if (violations.empty()) change_acknowledged(next_change(before));
    if (!violations.empty()) report_violations("final add-back");
  }
  if (violations.empty()) {
    for (const auto& user : users) {
      AuditClient c;
      REQUIRE(c.Open(server.port(), user) == "");
      for (auto& [cmid, o] : outgoing) {
        if (o.acked || o.from != user) continue;
        std::string err;
        auto text = c.Request(SendRequest(o), &err);
        INFO("final retry of " << cmid << ": " << err);
        REQUIRE(text.has_value());
        simdjson::dom::element doc;
        REQUIRE_FALSE(c.parser().parse(*text).get(doc));
        int64_t seq = 0, ts = 0;
        bool dup = false;
        std::string_view conv;
        REQUIRE_FALSE(doc["seq"].get(seq));
        REQUIRE_FALSE(doc["ts"].get(ts));
        REQUIRE_FALSE(doc["dup"].get(dup));
        REQUIRE_FALSE(doc["conv"].get(conv));
        ++totals.retries;
        if (o.stored.has_value()) {
          ++totals.retry_dup;
          if (!dup || seq != o.stored->seq || ts != o.stored->ts) {
            violations.push_back("final retry of stored " + Describe(*o.stored) + " answered " +
                                 *text);
          }
        } else {
          ++totals.retry_new;
          if (dup) violations.push_back("final retry of unstored " + cmid + " answered " + *text);
        }
        if (conv != ConvOf(o))
          violations.push_back("final retry of " + cmid + " answered " + *text);
        o.acked = true;
        o.ok = Msg{std::string(conv), seq, ts, o.from, cmid, cmid};
        ++totals.acked;
        if (!o.group.empty()) ++totals.group_acked;
      }
    }
    Audit audit;
    audit_now(&audit);
    for (const auto& [cmid, o] : outgoing) {
      if (audit.by_cmid.count(cmid) == 0) violations.push_back("final: missing " + cmid);
    }
    if (audit.by_cmid.size() != outgoing.size()) {
      violations.push_back("final: " + std::to_string(audit.by_cmid.size()) +
                           " stored messages for " + std::to_string(outgoing.size()) +
                           " distinct cmids");
    }
    report_violations("final audit");
    size_t max_conv = 0, max_inbox = 0;
    for (auto& [conv, h] : audit.history) max_conv = std::max(max_conv, h.size());
    for (auto& [user, in] : audit.inbox) max_inbox = std::max(max_inbox, in.size());
    const size_t group_msgs =
        audit.history.count(kGroupConv) ? audit.history.at(kGroupConv).size() : 0;
    std::printf(
        "parley_crash_test: %d kills; %lld sends (%lld to the group), %lld ok'd (%lld group; "
        "%lld retries: %lld were stored -> dup, %lld were not), %zu messages stored (%zu in "
        "the group), longest conversation %zu, largest inbox %zu; group changes: %d answered "
        "ok, %d unanswered and applied, %d unanswered and not applied (%d cycles killed during "
        "a change); %lld reads (%lld ok'd), %lld receipts, %lld acks (%lld ok'd); %lld live msg "
        "and %lld live group events; %d audits waited for inboxes to converge; %.1f s\n",
        cycles, static_cast<long long>(totals.sent), static_cast<long long>(totals.group_sent),
        static_cast<long long>(totals.acked), static_cast<long long>(totals.group_acked),
        static_cast<long long>(totals.retries), static_cast<long long>(totals.retry_dup),
        static_cast<long long>(totals.retry_new), audit.by_cmid.size(), group_msgs, max_conv,
        max_inbox, totals.changes_acked, totals.changes_unanswered_applied,
        totals.changes_unanswered_lost, totals.killed_changes,
        static_cast<long long>(totals.reads_sent), static_cast<long long>(totals.reads_acked),
        static_cast<long long>(totals.receipts), static_cast<long long>(totals.acks_sent),
        static_cast<long long>(totals.acks_acked), static_cast<long long>(totals.live_msgs),
        static_cast<long long>(totals.live_group_events), converge_waits,
        std::chrono::duration<double>(Clock::now() - started).count());
    // Sanity: the run did exercise the server.
    CHECK(totals.acked > 0);
    CHECK(totals.sent > static_cast<int64_t>(cycles));
    if (cycles >= 10) {
      CHECK(group.exists());
      CHECK(totals.group_acked > 0);
      CHECK(totals.reads_acked > 0);
      CHECK(totals.acks_acked > 0);
    }
  }

  std::string term;
  if (server.running()) {
    term = server.Terminate();
    INFO(term);
    CHECK(term == "");
  }
  if (violations.empty() && term.empty()) {
    std::filesystem::remove_all(dir);
  } else {
    std::printf("parley_crash_test: data and logs kept in %s\n", dir.c_str());
  }
}

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (ParleyBinary().empty() && argv[i][0] != '-') {
      ParleyBinary() = argv[i];
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (ParleyBinary().empty()) {
    if (const char* env = std::getenv("PARLEY_BIN")) ParleyBinary() = env;
  }
  if (ParleyBinary().empty()) {
    std::fprintf(stderr, "usage: parley_crash_test <path to parley> [Catch2 options]\n");
    return 2;
  }
  return Catch::Session().run(static_cast<int>(rest.size()), rest.data());
}

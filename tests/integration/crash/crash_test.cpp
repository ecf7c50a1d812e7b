// Crash safety of the real server binary: concurrent senders, SIGKILL at random moments,
// restart on the same data directory, and a full audit of what survived.
//
// Usage: parley_crash_test <path to parley> [Catch2 options]   (or PARLEY_BIN in the
// environment). PARLEY_CRASH_CYCLES (default 20) sets the number of kill/restart cycles,
// PARLEY_CRASH_SEED makes a run reproducible.
//
// Each cycle: start the server (--storage.sync=fsync), audit the store through history and sync,
// let 8 connections (2 devices of each of 4 users) pipeline sends to the other users (first
// retrying, with the same cmid, every send that had no `ok`), and SIGKILL the server after a
// random 50-500 ms. The audit checks the contract of PROTOCOL.md section 5:
//   - every send answered `ok` is in the conversation's history exactly once, with the conv,
//     seq and ts of its `ok`, and in both members' inboxes exactly once;
//   - a send without `ok` is stored at most once; retrying it returns dup:true with the stored
//     seq/ts if (and only if) the audit found it stored;
//   - per conversation, seq is gapless 1..N; per user, the inbox is gapless 1..M, holds exactly
//     the user's conversations' messages, and follows each conversation's seq order;
//   - what an earlier audit saw is never renumbered or lost (sequences continue after restarts);
//   - live msg events on one connection arrive with consecutive inbox numbers.
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
                                     "--limits.rate_burst=1000000"};
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
    return head.rfind("HTTP/1.1 101", 0) == 0;
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
    f.push_back(static_cast<char>(0x80 | opcode));
    const uint64_t len = payload.size();
    if (len < 126) {
      f.push_back(static_cast<char>(0x80 | len));
    } else if (len < 65536) {
      f.push_back(static_cast<char>(0x80 | 126));
      f.push_back(static_cast<char>(len >> 8));
      f.push_back(static_cast<char>(len & 0xff));
    } else {
      f.push_back(static_cast<char>(0x80 | 127));
      for (int i = 7; i >= 0; --i) f.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
    }
    const uint32_t key = static_cast<uint32_t>(rng_());
    char mask[4];
    std::memcpy(mask, &key, 4);
    f.append(mask, 4);
    const size_t start = f.size();
    f.append(payload);
    for (size_t i = 0; i < payload.size(); ++i) f[start + i] ^= mask[i % 4];
    if (!SendAll(fd_, f)) {
      Close();
      return false;
    }
    return true;
  }

  bool ParseFrames(std::vector<std::string>* out) {
    size_t pos = 0;
    while (true) {
      if (in_.size() - pos < 2) break;
      const auto b0 = static_cast<uint8_t>(in_[pos]);
      const auto b1 = static_cast<uint8_t>(in_[pos + 1]);
      const bool fin = (b0 & 0x80) != 0;
      const uint8_t opcode = b0 & 0x0f;
      if ((b1 & 0x80) != 0) {
        protocol_error = "server frame is masked";
        Close();
        return false;
      }
      uint64_t len = b1 & 0x7f;
      size_t hdr = 2;
      if (len == 126) {
        if (in_.size() - pos < 4) break;
        len = (static_cast<uint64_t>(static_cast<uint8_t>(in_[pos + 2])) << 8) |
              static_cast<uint8_t>(in_[pos + 3]);
        hdr = 4;
      } else if (len == 127) {
        if (in_.size() - pos < 10) break;
        len = 0;
        for (int i = 0; i < 8; ++i) len = (len << 8) | static_cast<uint8_t>(in_[pos + 2 + i]);
        hdr = 10;
      }
      if (in_.size() - pos < hdr + len) break;
      std::string_view payload(in_.data() + pos + hdr, static_cast<size_t>(len));
      pos += hdr + static_cast<size_t>(len);
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

std::string DirectConv(const std::string& a, const std::string& b) {
  return a <= b ? "d:" + a + ":" + b : "d:" + b + ":" + a;
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

// A synchronous request/response connection for the audit.
class AuditClient {
 public:
  // Connects and says hello; returns "" or an error.
  std::string Open(uint16_t port, const std::string& user) {
    if (!ws_.Connect(port)) return "audit connect failed";
    std::string err;
    auto ok = Request(R"({"op":"hello","user":")" + user + R"(","device":"audit"})", &err);
    return ok ? "" : "hello: " + err;
  }

  // Sends the request (the id is added) and returns its answer's text if it is an ok.
  std::optional<std::string> Request(const std::string& body_without_id, std::string* err) {
    const int64_t id = next_id_++;
    std::string req = body_without_id;
    req.insert(1, "\"id\":" + std::to_string(id) + ",");
    if (!ws_.SendText(req)) {
      *err = "send failed";
      return std::nullopt;
    }
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    std::vector<std::string> msgs;
    while (Clock::now() < deadline) {
      if (!ws_.Poll(100, &msgs)) {
        *err = "connection ended (close " + std::to_string(ws_.close_code) + ")";
        return std::nullopt;
      }
      for (auto& text : msgs) {
        simdjson::dom::element doc;
        if (parser_.parse(text).get(doc)) continue;
        int64_t got = -1;
        if (doc["id"].get(got) || got != id) continue;
        std::string_view op;
        if (doc["op"].get(op) || op != "ok") {
          *err = "answer " + text + " to " + req;
          return std::nullopt;
        }
        return text;
      }
      msgs.clear();
    }
    *err = "no answer within 10 s to " + req;
    return std::nullopt;
  }

  simdjson::dom::parser& parser() { return parser_; }

 private:
  WsClient ws_;
  simdjson::dom::parser parser_;
  int64_t next_id_ = 1;
};

// ---- Bookkeeping of every send ----

struct Outgoing {
  std::string from, device, to, cmid;
  bool acked = false;  // an ok was received
  Msg ok;              // conv/seq/ts of the ok
  int attempts = 0;
  // Set by the audit before a retry: whether the store held it, and where.
  bool audited = false;
  std::optional<Msg> stored;
};

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
  std::vector<std::string> new_cmids;  // sent for the first time (in order)
  std::vector<std::string> sent_retries;
  std::vector<SendResult> results;
  std::vector<std::string> violations;
  int64_t live_msgs = 0;
};

// One sender connection for one cycle: hello, retry `retries`, then send new messages with up
// to `window` in flight until the connection dies (the server is killed).
void RunSender(uint16_t port, const std::string& user, const std::string& device,
               const std::vector<std::string>& others, std::vector<Outgoing> retries,
               int64_t* counter, uint32_t seed, std::atomic<bool>* stop, ConnectionReport* report) {
  WsClient ws;
  if (!ws.Connect(port)) return;
  simdjson::dom::parser parser;
  std::mt19937 rng(seed);
  constexpr int kWindow = 8;
  std::map<int64_t, std::pair<std::string, bool>> in_flight;  // id -> (cmid, is_retry)
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
      std::string cmid, to;
      bool retry = false;
      if (next_retry < retries.size()) {
        cmid = retries[next_retry].cmid;
        to = retries[next_retry].to;
        retry = true;
        ++next_retry;
      } else {
        cmid = user + "-" + device + "-" + std::to_string((*counter)++);
        to = others[rng() % others.size()];
      }
      const int64_t id = next_id++;
      std::string req = R"({"op":"send","id":)" + std::to_string(id) + R"(,"to":")" + to +
                        R"(","cmid":")" + cmid + R"(","body":")" + cmid + R"("})";
      // Record the attempt before writing it: the server may store it even if we die now.
      if (retry) {
        report->sent_retries.push_back(cmid);
      } else {
        report->new_cmids.push_back(cmid + "\n" + to);
      }
      in_flight[id] = {cmid, retry};
      if (!ws.SendText(req)) return;
    }
    msgs.clear();
    // Frames that arrived before the connection ended are still processed.
    const bool alive = ws.Poll(50, &msgs);
    for (auto& text : msgs) {
      simdjson::dom::element doc;
      if (parser.parse(text).get(doc)) {
        report->violations.push_back(user + "/" + device + ": unparsable frame " + text);
        continue;
      }
      std::string_view op;
      if (doc["op"].get(op)) {
        report->violations.push_back(user + "/" + device + ": frame without op " + text);
        continue;
      }
      int64_t id = -1;
      const bool has_id = !doc["id"].get(id);
      if (has_id && id == 1) {
        if (op != "ok") {
          report->violations.push_back(user + "/" + device + ": hello answered " + text);
          return;
        }
        ready = true;
        continue;
      }
      if (op == "msg") {
        int64_t inbox = 0;
        if (doc["inbox"].get(inbox)) {
          report->violations.push_back("msg without inbox: " + text);
        } else {
          if (last_live_inbox >= 0 && inbox != last_live_inbox + 1) {
            report->violations.push_back(
                user + "/" + device + ": live msg inbox " + std::to_string(inbox) + " after " +
                std::to_string(last_live_inbox) + " on one connection (gap or reorder)");
          }
          last_live_inbox = inbox;
        }
        ++report->live_msgs;
        continue;
      }
      if (!has_id) {
        report->violations.push_back(user + "/" + device + ": unexpected frame " + text);
        continue;
      }
      auto it = in_flight.find(id);
      if (it == in_flight.end()) {
        report->violations.push_back(user + "/" + device + ": answer to unknown id " + text);
        continue;
      }
      SendResult r;
      r.cmid = it->second.first;
      r.retry = it->second.second;
      r.op = std::string(op);
      r.raw = text;
      in_flight.erase(it);
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

// ---- The audit ----

struct Audit {
  std::map<std::string, std::vector<Msg>> history;  // conv -> messages by seq
  std::map<std::string, Msg> by_cmid;
  std::map<std::string, std::vector<Msg>> inbox;  // user -> events in inbox order
};

// Reads every conversation's history and every user's inbox. Returns "" or an error.
std::string ReadStore(uint16_t port, const std::vector<std::string>& users, Audit* audit,
                      std::vector<std::string>* violations) {
  for (const auto& user : users) {
    AuditClient c;
    if (auto err = c.Open(port, user); !err.empty()) return user + ": " + err;
    // Inbox: sync from 0 until more is false.
    std::vector<Msg>& inbox = audit->inbox[user];
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
        Msg m;
        if (e["inbox"].get(number) || !ReadMsg(e, &m)) {
          return "malformed sync event in " + text->substr(0, 300);
        }
        if (number != static_cast<int64_t>(inbox.size()) + 1) {
          violations->push_back(user + ": inbox entry " + std::to_string(number) +
                                " follows entry " + std::to_string(inbox.size()) +
                                " (inbox not gapless)");
        }
        inbox.push_back(m);
        since = number;
      }
      if (!more) break;
      if (n == 0) return user + ": sync said more but returned nothing";
    }
    if (inbox_seq != static_cast<int64_t>(inbox.size())) {
      violations->push_back(user + ": sync inbox_seq " + std::to_string(inbox_seq) + " but " +
                            std::to_string(inbox.size()) + " entries");
    }
    // History of the conversations this user is the first member of (each read once).
    for (const auto& other : users) {
      if (!(user < other)) continue;
      const std::string conv = DirectConv(user, other);
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
      std::vector<Msg>& hist = audit->history[conv];
      hist.assign(newest_first.rbegin(), newest_first.rend());
    }
  }
  return "";
}

// Checks the store's invariants and what the senders were told. Fills audit->by_cmid.
void CheckStore(Audit* audit, const std::vector<std::string>& users,
                const std::map<std::string, Outgoing>& outgoing,
                const std::map<std::string, Msg>& seen_before,
                std::vector<std::string>* violations) {
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
    if (it != audit->by_cmid.end() && it->second.conv != DirectConv(o.from, o.to)) {
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
    std::map<std::string, int64_t> last_seq;
    std::set<std::string> seen;
    for (size_t i = 0; i < inbox.size(); ++i) {
      const Msg& e = inbox[i];
      const std::string where = user + " inbox " + std::to_string(i + 1) + ": ";
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
      const size_t colon = conv.find(':', 2);
      const bool member = conv.substr(2, colon - 2) == user || conv.substr(colon + 1) == user;
      if (!member) continue;
      for (const Msg& m : hist) {
        if (seen.count(m.cmid) == 0) {
          violations->push_back(user + ": inbox lacks " + Describe(m));
        }
      }
    }
  }
}

struct Totals {
  int64_t sent = 0, acked = 0, killed_in_flight = 0, retries = 0, retry_dup = 0, retry_new = 0,
          live_msgs = 0;
};

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
  const std::vector<std::string> devices = {"d0", "d1"};
  std::map<std::string, Outgoing> outgoing;  // by cmid
  std::map<std::string, int64_t> counters;   // user/device -> next cmid number
  std::map<std::string, Msg> seen_before;
  std::vector<std::string> violations;
  Totals totals;
  const auto started = Clock::now();

  // Inboxes may trail the history briefly after a restart (fan-outs are recovered); the audit
  // is repeated for up to 5 s before its findings count as violations.
  int converge_waits = 0;
  auto audit_now = [&](Audit* audit) {
    for (int attempt = 0;; ++attempt) {
      std::vector<std::string> found;
      Audit fresh;
      const std::string err = ReadStore(server.port(), users, &fresh, &found);
      INFO(server.Logs());
      REQUIRE(err == "");
      CheckStore(&fresh, users, outgoing, seen_before, &found);
      if (found.empty() || attempt == 50) {
        if (attempt > 0 && found.empty()) ++converge_waits;
        violations.insert(violations.end(), found.begin(), found.end());
        *audit = std::move(fresh);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
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
      std::string all;
      for (size_t i = 0; i < violations.size() && i < 30; ++i) all += violations[i] + "\n";
      INFO("cycle " << cycle << ", seed " << seed << ", " << violations.size()
                    << " violations (first 30):\n"
                    << all << server.Logs());
      CHECK(violations.empty());
      break;
    }
    seen_before = audit.by_cmid;
    if (cycle == cycles) break;

    // Senders: retries first, then new messages, until the kill.
    std::atomic<bool> stop{false};
    std::vector<ConnectionReport> reports(users.size() * devices.size());
    std::vector<std::thread> threads;
    size_t k = 0;
    for (const auto& user : users) {
      std::vector<std::string> others;
      for (const auto& u : users) {
        if (u != user) others.push_back(u);
      }
      for (const auto& device : devices) {
        std::vector<Outgoing> retries;
        for (const auto& [cmid, o] : outgoing) {
          if (!o.acked && o.from == user && o.device == device) retries.push_back(o);
        }
        int64_t* counter = &counters[user + "/" + device];
        threads.emplace_back(RunSender, server.port(), user, device, others, retries, counter,
                             static_cast<uint32_t>(rng()), &stop, &reports[k++]);
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
      const std::string& device = devices[i % devices.size()];
      violations.insert(violations.end(), rep.violations.begin(), rep.violations.end());
      totals.live_msgs += rep.live_msgs;
      for (const auto& entry : rep.new_cmids) {
        const auto nl = entry.find('\n');
        Outgoing o;
        o.from = user;
        o.device = device;
        o.cmid = entry.substr(0, nl);
        o.to = entry.substr(nl + 1);
        o.attempts = 1;
        outgoing[o.cmid] = o;
        ++totals.sent;
      }
      for (const auto& cmid : rep.sent_retries) {
        ++outgoing[cmid].attempts;
        ++totals.retries;
      }
      for (const auto& r : rep.results) {
        Outgoing& o = outgoing[r.cmid];
        if (r.op != "ok") {
          violations.push_back("send " + r.cmid + " answered " + r.raw);
          continue;
        }
        Msg got{r.conv, r.seq, r.ts, o.from, o.cmid, o.cmid};
        if (r.conv != DirectConv(o.from, o.to)) {
          violations.push_back("send " + r.cmid + " to " + o.to + " answered conv " + r.conv);
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
      }
    }
    if (!violations.empty()) {
      std::string all;
      for (size_t i = 0; i < violations.size() && i < 30; ++i) all += violations[i] + "\n";
      INFO("cycle " << cycle << ", seed " << seed << ", " << violations.size()
                    << " sender violations (first 30):\n"
                    << all);
      CHECK(violations.empty());
      break;
    }
  }

  // Final round: the server is up (the last audit passed). Retry every send still without an
  // ok; each must be dup:true exactly when the audit found it stored. Then audit again:
  // everything is now acknowledged and must be there exactly once.
  if (violations.empty()) {
    for (const auto& user : users) {
      AuditClient c;
      REQUIRE(c.Open(server.port(), user) == "");
      for (auto& [cmid, o] : outgoing) {
        if (o.acked || o.from != user) continue;
        std::string err;
        auto text = c.Request(R"({"op":"send","to":")" + o.to + R"(","cmid":")" + cmid +
                                  R"(","body":")" + cmid + R"("})",
                              &err);
        INFO("final retry of " << cmid);
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
        o.acked = true;
        o.ok = Msg{std::string(conv), seq, ts, o.from, cmid, cmid};
        ++totals.acked;
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
    std::string all;
    for (size_t i = 0; i < violations.size() && i < 30; ++i) all += violations[i] + "\n";
    INFO("final audit, seed " << seed << ", " << violations.size() << " violations:\n" << all);
    CHECK(violations.empty());
    size_t max_conv = 0, max_inbox = 0;
    for (auto& [conv, h] : audit.history) max_conv = std::max(max_conv, h.size());
    for (auto& [user, in] : audit.inbox) max_inbox = std::max(max_inbox, in.size());
    std::printf(
        "parley_crash_test: %d kills; %lld sends, %lld ok'd (%lld retries: %lld were stored -> "
        "dup, %lld were not), %zu messages stored, longest conversation %zu, largest inbox "
        "%zu, %lld live msg events, %d audits waited for inboxes to converge, %.1f s\n",
        cycles, static_cast<long long>(totals.sent), static_cast<long long>(totals.acked),
        static_cast<long long>(totals.retries), static_cast<long long>(totals.retry_dup),
        static_cast<long long>(totals.retry_new), audit.by_cmid.size(), max_conv, max_inbox,
        static_cast<long long>(totals.live_msgs), converge_waits,
        std::chrono::duration<double>(Clock::now() - started).count());
    // Sanity: the run did exercise the server.
    CHECK(totals.acked > 0);
    CHECK(totals.sent > static_cast<int64_t>(cycles));
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

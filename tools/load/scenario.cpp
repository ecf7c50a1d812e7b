#include "scenario.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>

namespace parley::load {

bool ParseFrame(std::string_view text, Frame* f) {
  *f = Frame{};
  bool good = ForEachMember(text, [f](std::string_view k, std::string_view v) {
    switch (k.size()) {
      case 2:
        if (k == "op")
          f->op = Unquote(v);
        else if (k == "id")
          ParseInt(v, &f->id);
        else if (k == "ts")
          ParseInt(v, &f->ts);
        break;
      case 3:
        if (k == "seq")
          ParseInt(v, &f->seq);
        else if (k == "dup")
          f->dup = v == "true";
        break;
      case 4:
        if (k == "conv")
          f->conv = Unquote(v);
        else if (k == "from")
          f->from = Unquote(v);
        else if (k == "cmid")
          f->cmid = Unquote(v);
        else if (k == "body")
          f->body = Unquote(v);
        else if (k == "code")
          f->code = Unquote(v);
        else if (k == "user")
          f->user = Unquote(v);
        else if (k == "more")
          f->more = v == "true";
        break;
      case 5:
        if (k == "inbox")
          ParseInt(v, &f->inbox);
        else if (k == "group")
          f->group = Unquote(v);
        break;
      case 6:
        if (k == "status")
          f->status = Unquote(v);
        else if (k == "change")
          f->change = Unquote(v);
        else if (k == "events")
          f->list = v;
        break;
      case 8:
        if (k == "presence") f->list = v;
        break;
      case 9:
        if (k == "inbox_seq") ParseInt(v, &f->inbox_seq);
        break;
      default:
        break;
    }
  });
  return good && !f->op.empty();
}

bool ForEachElement(std::string_view t, const std::function<void(std::string_view)>& f) {
  if (t.size() < 2 || t.front() != '[') return false;
  size_t i = 1;
  auto blank = [&] {
    while (i < t.size() && (t[i] == ' ' || t[i] == '\n' || t[i] == '\r' || t[i] == '\t')) ++i;
  };
  blank();
  if (i < t.size() && t[i] == ']') return true;
  while (i < t.size()) {
    blank();
    size_t e = SkipValue(t, i);
    if (e == std::string_view::npos) return false;
    f(t.substr(i, e - i));
    i = e;
    blank();
    if (i >= t.size()) return false;
    if (t[i] == ']') return true;
    if (t[i] != ',') return false;
    ++i;
  }
  return false;
}

void DriverBase::CountClose(const CloseInfo& info) {
  if (info.what == "connect" || info.what == "bind" || info.what == "socket")
    connect_failures.Add();
  if (info.by_us && (info.what == "closed" || info.what == "eof" || info.what == "aborted")) return;
  std::string key(info.what);
  if (info.code) key += Format(" %d", info.code);
  if (info.sys_errno) key += Format(" %s", strerror(info.sys_errno));
  ++closes[key];
}

void DriverBase::AppendHello(std::string* out, int64_t id, std::string_view user,
                             std::string_view device) {
  out->append("{\"op\":\"hello\",\"id\":").append(std::to_string(id)).append(",\"user\":\"");
  out->append(user).append("\",\"device\":\"").append(device).append("\"}");
}

// ---------------------------------------------------------------- Pool

Pool::Pool(const Options& o, Factory make) {
  ClientConfig cfg;
  cfg.server_ip = o.server_ip;
  cfg.port = o.port;
  cfg.src_addrs = o.src_addrs;
  for (int i = 0; i < o.threads; ++i) {
    workers_.push_back(std::make_unique<Worker>(cfg, i, o.threads));
    drivers_.push_back(make(*workers_.back()));
    workers_.back()->set_handler(drivers_.back().get());
  }
}

Pool::~Pool() {
  Stop();
}

void Pool::Start() {
  for (size_t i = 0; i < workers_.size(); ++i) {
    threads_.emplace_back([this, i] {
      Worker& w = *workers_[i];
      while (!stop_.load(std::memory_order_relaxed)) w.RunOnce();
    });
  }
}

void Pool::Stop() {
  stop_.store(true);
  for (auto& t : threads_) t.join();
  threads_.clear();
}

uint64_t Pool::Sum(const std::function<uint64_t(DriverBase&)>& f) {
  uint64_t s = 0;
  for (auto& d : drivers_) s += f(*d);
  return s;
}

WorkerStats Pool::TotalStats() {
  WorkerStats t;
  for (auto& w : workers_) {
    const WorkerStats& s = w->stats();
    t.connects += s.connects;
    t.connect_errors += s.connect_errors;
    t.upgrade_errors += s.upgrade_errors;
    t.frames_in += s.frames_in;
    t.frames_out += s.frames_out;
    t.bytes_in += s.bytes_in;
    t.bytes_out += s.bytes_out;
    t.closed_by_server += s.closed_by_server;
    t.resets += s.resets;
    t.protocol_errors += s.protocol_errors;
  }
  return t;
}

std::map<std::string, uint64_t> Pool::TotalErrors() {
  std::map<std::string, uint64_t> m;
  for (auto& d : drivers_) {
    for (auto& [k, v] : d->errors) m[k] += v;
  }
  return m;
}

std::map<std::string, uint64_t> Pool::TotalCloses() {
  std::map<std::string, uint64_t> m;
  for (auto& d : drivers_) {
    for (auto& [k, v] : d->closes) m[k] += v;
  }
  return m;
}

// ---------------------------------------------------------------- Probe

void Probe::Begin() {
  begin_ = SampleProcess(pid_);
  sys_begin_ = SampleSystem();
  self_begin_ = SelfCpuUs();
  begin_ns_ = NowNs();
}

void Probe::End() {
  end_ns_ = NowNs();
  end_ = SampleProcess(pid_);
  sys_end_ = SampleSystem();
  self_end_ = SelfCpuUs();
}

double Probe::machine_busy_pct() const {
  int64_t total = sys_end_.cpu_total_ticks - sys_begin_.cpu_total_ticks;
  if (total <= 0) return 0;
  return 100.0 * static_cast<double>(sys_end_.cpu_busy_ticks - sys_begin_.cpu_busy_ticks) /
         static_cast<double>(total);
}

void Probe::Report(JsonLine* j, std::string* text, uint64_t per, std::string_view per_name) const {
  const double secs = seconds();
  j->Num("window_s", secs);
  j->Int("tool_cpu_us", tool_cpu_us());
  j->Num("tool_cpu_cores", secs > 0 ? static_cast<double>(tool_cpu_us()) / 1e6 / secs : 0);
  j->Num("machine_busy_pct", machine_busy_pct());
  *text += Format(
      "  window %.2f s; load tool CPU %.2f cores; machine busy %.0f%% (all CPUs, all processes)\n",
      secs, secs > 0 ? static_cast<double>(tool_cpu_us()) / 1e6 / secs : 0.0, machine_busy_pct());
  if (!has_server()) {
    if (pid_ > 0) *text += Format("  (could not read /proc/%d)\n", pid_);
    return;
  }
  const double cpu = static_cast<double>(server_cpu_us());
  j->Int("server_cpu_us", server_cpu_us());
  j->Num("server_cpu_cores", secs > 0 ? cpu / 1e6 / secs : 0);
  j->Int("server_rss_kb_before", begin_.rss_kb);
  j->Int("server_rss_kb_after", end_.rss_kb);
  j->Int("server_threads", end_.threads);
  if (per > 0) {
    j->Num(Format("server_cpu_us_per_%.*s", static_cast<int>(per_name.size()), per_name.data()),
           cpu / static_cast<double>(per));
  }
  *text +=
      Format("  server: CPU %.2f cores (%.0f ms)", secs > 0 ? cpu / 1e6 / secs : 0.0, cpu / 1000);
  if (per > 0) {
    *text += Format(", %.2f µs per %.*s", cpu / static_cast<double>(per),
                    static_cast<int>(per_name.size()), per_name.data());
  }
  *text += Format("; RSS %lld -> %lld KiB\n", static_cast<long long>(begin_.rss_kb),
                  static_cast<long long>(end_.rss_kb));
}

bool WaitFor(double timeout_s, const std::function<bool()>& pred) {
  const int64_t end = NowNs() + static_cast<int64_t>(timeout_s * 1e9);
  while (!pred()) {
    if (NowNs() >= end) return false;
    usleep(10'000);
  }
  return true;
}

void SleepSeconds(double s) {
  if (s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

bool AwaitSetup(Pool& pool, Shared& shared, const Options& o, JsonLine* j, std::string* text,
                int64_t setup_start_ns, uint64_t want, const char* what,
                const std::function<uint64_t()>& ready, const std::function<uint64_t()>& failures) {
  bool ok = WaitFor(o.setup_timeout_s, [&] { return ready() >= want || failures() > 0; });
  ok = ok && failures() == 0;
  const double setup_s = static_cast<double>(NowNs() - setup_start_ns) / 1e9;
  *text += Format("  setup: %llu/%llu %s in %.2f s\n", static_cast<unsigned long long>(ready()),
                  static_cast<unsigned long long>(want), what, setup_s);
  j->Num("setup_s", setup_s);
  if (ok) return true;
  *text += "  SETUP FAILED (timeout, or connections refused)\n";
  shared.phase = kStop;
  pool.Stop();
  ReportCommon(pool, j, text);
  j->Bool("ok", false);
  return false;
}

std::vector<uint64_t> MeasureWindow(Shared& shared, const Options& o, Probe& probe,
                                    const std::vector<std::function<uint64_t()>>& counters) {
  shared.phase = kRun;
  SleepSeconds(o.warmup_s);
  shared.window_start_ns = NowNs();
  std::vector<uint64_t> before;
  for (const auto& c : counters) before.push_back(c());
  probe.Begin();
  SleepSeconds(o.duration_s);
  std::vector<uint64_t> delta;
  for (size_t i = 0; i < counters.size(); ++i) delta.push_back(counters[i]() - before[i]);
  probe.End();
  shared.window_end_ns = NowNs();
  shared.phase = kDrain;
  return delta;
}

void ReportCommon(Pool& pool, JsonLine* j, std::string* text) {
  WorkerStats s = pool.TotalStats();
  j->Int("connects", static_cast<int64_t>(s.connects));
  j->Int("connect_errors", static_cast<int64_t>(s.connect_errors));
  j->Int("upgrade_errors", static_cast<int64_t>(s.upgrade_errors));
  j->Int("closed_by_server", static_cast<int64_t>(s.closed_by_server));
  j->Int("resets", static_cast<int64_t>(s.resets));
  j->Int("frames_in", static_cast<int64_t>(s.frames_in));
  j->Int("frames_out", static_cast<int64_t>(s.frames_out));
  auto errors = pool.TotalErrors();
  std::string ej = "{";
  std::string et;
  for (auto& [k, v] : errors) {
    if (ej.size() > 1) ej += ",";
    AppendQuoted(&ej, k);
    ej += ":" + std::to_string(v);
    et += Format(" %s=%llu", k.c_str(), static_cast<unsigned long long>(v));
  }
  ej += "}";
  j->Raw("errors", ej);
  auto closes = pool.TotalCloses();
  std::string cj = "{";
  std::string ct;
  for (auto& [k, v] : closes) {
    if (cj.size() > 1) cj += ",";
    AppendQuoted(&cj, k);
    cj += ":" + std::to_string(v);
    ct += Format(" [%s]=%llu", k.c_str(), static_cast<unsigned long long>(v));
  }
  cj += "}";
  j->Raw("unexpected_closes", cj);
  *text += Format(
      "  connections: %llu opened, %llu connect errors, %llu upgrade errors, %llu closed by "
      "server, %llu resets\n",
      static_cast<unsigned long long>(s.connects),
      static_cast<unsigned long long>(s.connect_errors),
      static_cast<unsigned long long>(s.upgrade_errors),
      static_cast<unsigned long long>(s.closed_by_server),
      static_cast<unsigned long long>(s.resets));
  if (!et.empty()) *text += "  error answers:" + et + "\n";
  if (!ct.empty()) *text += "  unexpected closes:" + ct + "\n";
  if (errors.count("rate_limited")) {
    *text +=
        "  REMINDER: the server rate-limited requests. Benchmark runs must raise the\n"
        "  per-connection limits: parley --limits.rate_per_sec=1000000\n"
        "  --limits.rate_burst=1000000 --limits.request_rate_per_sec=1000000\n"
        "  --limits.request_rate_burst=1000000\n";
  }
}

// ---------------------------------------------------------------- options

std::string Usage() {
  return R"(Usage: parley-load --scenario NAME [options]

Scenarios:
  throughput  P sender->receiver pairs, W sends in flight per sender; delivered msg/s
  latency     P pairs at a fixed aggregate --rate; send->receive percentiles, lost/dup/reordered
  idle        --conns authenticated idle connections held for --duration; server RSS per conn
  connect     rounds of --conns connections (connect + upgrade + hello) ; connections/s
  fanout      --groups groups of --group-size members, all online, one sender each (window W)
  mixed       --users users: presence churn, 1:1 and group messages at --rate, offline users
              syncing on reconnect, typing, read receipts; exactly-once check at the end

Common options:
  --server HOST:PORT     127.0.0.1:8080 (loopback only)
  --threads N            worker threads, each one epoll loop (1)
  --duration S           measured seconds (10); idle: how long the connections are held
  --warmup S             seconds of load before measuring (2)
  --grace S              seconds to wait for in-flight messages after the end (3)
  --setup-timeout S      time allowed to connect and prepare (90)
  --src-addrs N          source addresses 127.0.0.1..N to spread connections over (8)
  --server-pid PID       read the server's CPU time and RSS from /proc/PID
  --run-id ID            prefix of user and group ids (default: derived from the clock)
  --json-out FILE        also append the JSON line to FILE
  --label TEXT           copied into the JSON line ("label"), to tell runs apart
Scenario options:
  --pairs P (100)  --window W (16)  --rate R msg/s (5000)  --body-bytes B (100)
  --ack-every K (50, 0 = never)  --max-messages N (0 = no count bound)
  --cmids random|counter (random: 32 hex digits like the UUIDs clients send; counter: c1, c2..)
  --conns N (9000)  --concurrency C (256)  --rounds R (5)
  --groups G (20)  --group-size M (200)
  --users U (2000)  --mixed-group-size M (20)  --watch N (20)  --churn R/s (users/20)

Benchmark runs must raise the server's per-connection rate limits, and lift the
per-address connection limit (all load comes from a few loopback addresses):
  parley --limits.rate_per_sec=1000000 --limits.rate_burst=1000000 \
         --limits.request_rate_per_sec=1000000 --limits.request_rate_burst=1000000 \
         --limits.max_connections_per_ip=0
Output: a human summary, then one line "JSON {...}".
)";
}

std::string ParseOptions(int argc, char** argv, Options* o) {
  auto num = [](const std::string& v, double lo, double hi, double* out) -> bool {
    char* end = nullptr;
    double d = std::strtod(v.c_str(), &end);
    if (end == v.c_str() || *end != '\0' || !(d >= lo && d <= hi)) return false;
    *out = d;
    return true;
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") return "help";
    if (a.rfind("--", 0) != 0) return "unexpected argument " + a;
    std::string key = a.substr(2), val;
    size_t eq = key.find('=');
    if (eq != std::string::npos) {
      val = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else {
      if (i + 1 >= argc) return "--" + key + " needs a value";
      val = argv[++i];
    }
    double d = 0;
    auto want = [&](double lo, double hi) -> bool { return num(val, lo, hi, &d); };
    auto bad = [&] { return "bad value for --" + key + ": " + val; };
    if (key == "scenario") {
      o->scenario = val;
    } else if (key == "server") {
      size_t colon = val.rfind(':');
      if (colon == std::string::npos) return bad();
      std::string host = val.substr(0, colon);
      if (host == "localhost") host = "127.0.0.1";
      unsigned a1, a2, a3, a4;
      char extra;
      if (std::sscanf(host.c_str(), "%u.%u.%u.%u%c", &a1, &a2, &a3, &a4, &extra) != 4 ||
          a1 != 127 || a2 > 255 || a3 > 255 || a4 > 255) {
        return "--server must be a loopback IPv4 address (127.x.x.x:PORT)";
      }
      if (!num(val.substr(colon + 1), 1, 65535, &d)) return bad();
      o->server = val;
      o->server_ip = (a1 << 24) | (a2 << 16) | (a3 << 8) | a4;
      o->port = static_cast<uint16_t>(d);
    } else if (key == "threads") {
      if (!want(1, 64)) return bad();
      o->threads = static_cast<int>(d);
    } else if (key == "duration") {
      if (!want(0.1, 3600)) return bad();
      o->duration_s = d;
    } else if (key == "warmup") {
      if (!want(0, 600)) return bad();
      o->warmup_s = d;
    } else if (key == "grace") {
      if (!want(0, 600)) return bad();
      o->grace_s = d;
    } else if (key == "setup-timeout") {
      if (!want(1, 3600)) return bad();
      o->setup_timeout_s = d;
    } else if (key == "src-addrs") {
      if (!want(1, 254)) return bad();
      o->src_addrs = static_cast<int>(d);
    } else if (key == "server-pid") {
      if (!want(1, 1 << 30)) return bad();
      o->server_pid = static_cast<int>(d);
    } else if (key == "pairs") {
      if (!want(1, 100000)) return bad();
      o->pairs = static_cast<int>(d);
    } else if (key == "window") {
      if (!want(1, 4096)) return bad();
      o->window = static_cast<int>(d);
    } else if (key == "rate") {
      if (!want(1, 1e7)) return bad();
      o->rate = d;
    } else if (key == "body-bytes") {
      if (!want(24, 16384)) return bad();
      o->body_bytes = static_cast<int>(d);
    } else if (key == "ack-every") {
      if (!want(0, 1e6)) return bad();
      o->ack_every = static_cast<int>(d);
    } else if (key == "max-messages") {
      if (!want(0, 1e12)) return bad();
      o->max_messages = static_cast<int64_t>(d);
    } else if (key == "conns") {
      if (!want(1, 1e7)) return bad();
      o->conns = static_cast<int>(d);
    } else if (key == "concurrency") {
      if (!want(1, 100000)) return bad();
      o->concurrency = static_cast<int>(d);
    } else if (key == "rounds") {
      if (!want(1, 1000)) return bad();
      o->rounds = static_cast<int>(d);
    } else if (key == "groups") {
      if (!want(1, 100000)) return bad();
      o->groups = static_cast<int>(d);
    } else if (key == "group-size") {
      if (!want(2, 100000)) return bad();
      o->group_size = static_cast<int>(d);
    } else if (key == "users") {
      if (!want(2, 1e7)) return bad();
      o->users = static_cast<int>(d);
    } else if (key == "mixed-group-size") {
      if (!want(2, 100000)) return bad();
      o->mixed_group_size = static_cast<int>(d);
    } else if (key == "watch") {
      if (!want(0, 1000)) return bad();
      o->watch = static_cast<int>(d);
    } else if (key == "churn") {
      if (!want(0, 1e6)) return bad();
      o->churn = d;
    } else if (key == "run-id") {
      for (char c : val) {
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))) {
          return "--run-id must be alphanumeric";
        }
      }
      if (val.empty() || val.size() > 16) return "--run-id must be 1-16 characters";
      o->run_id = val;
    } else if (key == "json-out") {
      o->json_out = val;
    } else if (key == "cmids") {
      if (val != "random" && val != "counter") return bad();
      o->random_cmids = val == "random";
    } else if (key == "label") {
      o->label = val;
    } else {
      return "unknown option --" + key;
    }
  }
  if (o->scenario.empty()) return "--scenario is required";
  if (o->run_id.empty()) {
    static constexpr char kDigits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    uint64_t t =
        static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count() / 1000) ^
        (static_cast<uint64_t>(getpid()) << 40);
    std::string id;
    while (t && id.size() < 10) {
      id.push_back(kDigits[t % 36]);
      t /= 36;
    }
    o->run_id = "L" + id;
  }
  return "";
}

}  // namespace parley::load

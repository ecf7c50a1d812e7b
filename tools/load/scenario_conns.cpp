// idle and connect: many connections that only authenticate.
//   idle:    opens --conns connections (10% first, then the rest), each with hello as its own
//            user, holds them for --duration, and reports the server's RSS per connection
//            (total and marginal between the 10% and 100% points) and the kernel's socket
//            memory (both ends of every connection live on this machine).
//   connect: --rounds rounds; each opens --conns connections as fast as it can with at most
//            --concurrency in progress (TCP connect + WebSocket upgrade + hello -> ok), then
//            closes them all with the close handshake. Connections per second per round.
#include <algorithm>

#include "scenario.h"

namespace parley::load {

namespace {

class ConnsDriver final : public DriverBase {
 public:
  ConnsDriver(Worker& w, Shared& sh, const Options& o) : DriverBase(w, sh, o) {
    connect_limit_ = std::max(1, o.concurrency / o.threads);
  }

  // ---- steering, written by the main thread ----
  std::atomic<int64_t> target{0};  // connections to open in the current round
  std::atomic<int> round{0};
  std::atomic<bool> close_all{false};
  // ---- progress, read by the main thread ----
  Counter helloed;  // this round
  Counter live;     // connections open (any state)
  Counter dropped;  // authenticated connections the server closed or reset
  Counter failed;   // connections that failed before hello's ok
  std::atomic<int64_t> first_start_ns{0}, last_ok_ns{0};
  // ---- results (after stop) ----
  Histogram hello_latency;  // connect() -> hello ok, all rounds

  void OnOpen(Conn& c) override {
    std::string s;
    AppendHello(&s, 1, Format("%su%llu", o_.run_id.c_str(), static_cast<unsigned long long>(c.tag)),
                o_.device);
    c.SendText(s);
  }

  void OnText(Conn& c, std::string_view text) override {
    Frame f;
    if (!ParseFrame(text, &f)) return;
    if (f.op == "ok" && f.id == 1) {
      const int64_t now = NowNs();
      hello_latency.Record(static_cast<uint64_t>(now - c.started_ns));
      last_ok_ns.store(now, std::memory_order_relaxed);
      --connecting_;
      open_.push_back(&c);
      c.tag |= kHelloBit;
      helloed.Add();
    } else if (f.op == "error") {
      CountError(f);
    }
  }

  void OnClosed(Conn& c, const CloseInfo& info) override {
    live.Add(static_cast<uint64_t>(-1));
    if (!(c.tag & kHelloBit)) {
      --connecting_;
      failed.Add();
      CountClose(info);
      return;
    }
    auto it = std::find(open_.begin(), open_.end(), &c);
    if (it != open_.end()) {
      *it = open_.back();
      open_.pop_back();
    }
    if (!info.by_us) {
      dropped.Add();
      CountClose(info);
    }
  }

  void OnTick(int64_t now) override {
    const int r = round.load(std::memory_order_acquire);
    if (r != my_round_) {
      my_round_ = r;
      opened_ = 0;
      closed_round_ = false;
      helloed.v.store(0);
      first_start_ns.store(0);
      last_ok_ns.store(0);
    }
    if (close_all.load(std::memory_order_acquire)) {
      if (!closed_round_) {
        closed_round_ = true;
        std::vector<Conn*> all = open_;
        for (Conn* c : all) c->Close(1000);
      }
      return;
    }
    const int64_t want = target.load(std::memory_order_relaxed);
    while (opened_ < want && connecting_ < connect_limit_) {
      if (first_start_ns.load(std::memory_order_relaxed) == 0) first_start_ns.store(now);
      const uint64_t global =
          next_index_++ * static_cast<uint64_t>(o_.threads) + static_cast<uint64_t>(w_.index());
      w_.Connect(global);
      live.Add();
      ++opened_;
      ++connecting_;
    }
  }

 private:
  static constexpr uint64_t kHelloBit = 1ull << 63;
  int connect_limit_ = 1;
  int connecting_ = 0;
  int64_t opened_ = 0;
  int my_round_ = 0;
  bool closed_round_ = false;
  uint64_t next_index_ = 0;
  std::vector<Conn*> open_;
};

struct Sums {
  uint64_t helloed = 0, live = 0, dropped = 0, failed = 0;
  int64_t first = INT64_MAX, last = 0;
};

Sums Collect(Pool& pool) {
  Sums s;
  for (size_t i = 0; i < pool.size(); ++i) {
    ConnsDriver& d = pool.driver_as<ConnsDriver>(i);
    s.helloed += d.helloed.Get();
    s.live += d.live.Get();
    s.dropped += d.dropped.Get();
    s.failed += d.failed.Get();
    int64_t f = d.first_start_ns.load();
    if (f) s.first = std::min(s.first, f);
    s.last = std::max(s.last, d.last_ok_ns.load());
  }
  return s;
}

// Splits n connections over the workers.
void SetTargets(Pool& pool, int64_t n) {
  const int64_t w = static_cast<int64_t>(pool.size());
  for (int64_t i = 0; i < w; ++i) {
    pool.driver_as<ConnsDriver>(static_cast<size_t>(i)).target.store(n / w + (i < n % w ? 1 : 0));
  }
}

void NextRound(Pool& pool, int round) {
  for (size_t i = 0; i < pool.size(); ++i) {
    ConnsDriver& d = pool.driver_as<ConnsDriver>(i);
    d.close_all.store(false);
    d.target.store(0);
    d.round.store(round, std::memory_order_release);
  }
}

void CloseAll(Pool& pool) {
  for (size_t i = 0; i < pool.size(); ++i) pool.driver_as<ConnsDriver>(i).close_all.store(true);
}

Histogram MergedHello(Pool& pool) {
  Histogram h;
  for (size_t i = 0; i < pool.size(); ++i) h.Merge(pool.driver_as<ConnsDriver>(i).hello_latency);
  return h;
}

}  // namespace

int RunIdle(const Options& o, JsonLine* j, std::string* text) {
  Shared shared;
  Pool pool(o, [&](Worker& w) { return std::make_unique<ConnsDriver>(w, shared, o); });
  const int64_t n = o.conns;
  const int64_t n1 = std::max<int64_t>(1, n / 10);
  *text += Format(
      "idle: %lld authenticated idle connections (one user each) held %.0f s, %d worker thread(s), "
      "%d source addresses\n",
      static_cast<long long>(n), o.duration_s, o.threads, o.src_addrs);
  ProcSample m0 = SampleProcess(o.server_pid);
  SystemSample s0 = SampleSystem();
  pool.Start();
  NextRound(pool, 1);
  SetTargets(pool, n1);
  const int64_t t0 = NowNs();
  bool ok = WaitFor(o.setup_timeout_s, [&] {
    Sums s = Collect(pool);
    return s.helloed >= static_cast<uint64_t>(n1) || s.failed > 0;
  });
  SleepSeconds(1);
  ProcSample m1 = SampleProcess(o.server_pid);
  SetTargets(pool, n);
  ok = ok && WaitFor(o.setup_timeout_s, [&] {
         Sums s = Collect(pool);
         return s.helloed >= static_cast<uint64_t>(n) || s.failed > 0;
       });
  const double open_s = static_cast<double>(NowNs() - t0) / 1e9;
  Sums after_open = Collect(pool);
  SleepSeconds(2);  // let the server settle (migrations, deferred frees)
  ProcSample m2 = SampleProcess(o.server_pid);
  SystemSample s2 = SampleSystem();
  Probe probe(o.server_pid);
  probe.Begin();
  SleepSeconds(o.duration_s);
  probe.End();
  ProcSample m3 = SampleProcess(o.server_pid, /*count_fds=*/true);  // after the kernel samples
  Sums held = Collect(pool);
  CloseAll(pool);
  WaitFor(30, [&] { return Collect(pool).live == 0; });
  shared.phase = kStop;
  pool.Stop();

  const uint64_t got = after_open.helloed;
  const bool complete = ok && got >= static_cast<uint64_t>(n);
  j->Int("conns", n).Int("conns_authenticated", static_cast<int64_t>(got));
  j->Int("dropped_while_held", static_cast<int64_t>(held.dropped));
  j->Int("failed", static_cast<int64_t>(held.failed));
  j->Num("open_s", open_s);
  *text += Format(
      "  opened %llu/%lld connections in %.2f s (%llu failed); %llu dropped by the server while "
      "held\n",
      static_cast<unsigned long long>(got), static_cast<long long>(n), open_s,
      static_cast<unsigned long long>(held.failed), static_cast<unsigned long long>(held.dropped));
  if (m0.ok && m2.ok && got > 0) {
    const double per =
        static_cast<double>(m2.rss_kb - m0.rss_kb) * 1024.0 / static_cast<double>(got);
    const double per_held =
        static_cast<double>(m3.rss_kb - m0.rss_kb) * 1024.0 / static_cast<double>(got);
    const double marginal = got > static_cast<uint64_t>(n1)
                                ? static_cast<double>(m2.rss_kb - m1.rss_kb) * 1024.0 /
                                      static_cast<double>(got - static_cast<uint64_t>(n1))
                                : 0;
    j->Int("server_rss_kb_empty", m0.rss_kb)
        .Int("server_rss_kb_at_10pct", m1.rss_kb)
        .Int("server_rss_kb_open", m2.rss_kb)
        .Int("server_rss_kb_after_hold", m3.rss_kb)
        .Int("server_fds_open", m3.fds)
        .Num("server_rss_bytes_per_conn", per)
        .Num("server_rss_bytes_per_conn_marginal", marginal)
        .Num("server_rss_bytes_per_conn_after_hold", per_held);
    *text += Format(
        "  server RSS: %lld KiB empty, %lld KiB at 10%%, %lld KiB with all open, %lld KiB after "
        "the hold; %lld fds\n",
        static_cast<long long>(m0.rss_kb), static_cast<long long>(m1.rss_kb),
        static_cast<long long>(m2.rss_kb), static_cast<long long>(m3.rss_kb),
        static_cast<long long>(m3.fds));
    *text += Format(
        "  server RSS per idle connection: %.0f bytes (total / N), %.0f bytes marginal (10%% -> "
        "100%%), %.0f bytes after the hold\n",
        per, marginal, per_held);
  }
  if (got > 0) {
    const double slab =
        static_cast<double>(s2.slab_kb - s0.slab_kb) * 1024.0 / static_cast<double>(got);
    const double tcp = static_cast<double>(s2.tcp_mem_pages - s0.tcp_mem_pages) * 4096.0 /
                       static_cast<double>(got);
    j->Num("kernel_slab_bytes_per_conn_both_ends", slab)
        .Num("kernel_tcp_mem_bytes_per_conn_both_ends", tcp)
        .Int("tcp_sockets_in_use", s2.tcp_inuse);
    *text += Format(
        "  kernel (both ends of each connection are on this machine): slab +%.0f bytes/conn, TCP "
        "buffer memory +%.0f bytes/conn; %lld TCP sockets in use\n",
        slab, tcp, static_cast<long long>(s2.tcp_inuse));
  }
  probe.Report(j, text, 0, "");  // the hold: the server's CPU use with idle connections
  Histogram h = MergedHello(pool);
  j->Raw("hello_latency", h.JsonMicros());
  *text += "  connect -> hello ok: " + h.TextMicros() + "\n";
  ReportCommon(pool, j, text);
  const bool clean = complete && held.dropped == 0;
  j->Bool("ok", clean);
  return clean ? 0 : 2;
}

int RunConnect(const Options& o, JsonLine* j, std::string* text) {
  Shared shared;
  Pool pool(o, [&](Worker& w) { return std::make_unique<ConnsDriver>(w, shared, o); });
  *text += Format(
      "connect: %d round(s) of %d connections (TCP connect + upgrade + hello -> ok), at most %d in "
      "progress, %d worker thread(s), %d source addresses\n",
      o.rounds, o.conns, o.concurrency, o.threads, o.src_addrs);
  pool.Start();
  Probe probe(o.server_pid);
  probe.Begin();
  const int64_t deadline = NowNs() + static_cast<int64_t>(o.duration_s * 1e9);
  std::vector<double> rates;
  uint64_t total = 0, failed = 0;
  double connect_time = 0;
  bool ok = true;
  for (int r = 1; r <= o.rounds && NowNs() < deadline; ++r) {
    NextRound(pool, r);
    SleepSeconds(0.05);
    SetTargets(pool, o.conns);
    ok = WaitFor(o.setup_timeout_s, [&] {
      Sums s = Collect(pool);
      return s.helloed + (s.failed - failed) >= static_cast<uint64_t>(o.conns);
    });
    Sums s = Collect(pool);
    const double secs = static_cast<double>(s.last - s.first) / 1e9;
    const double rate = secs > 0 ? static_cast<double>(s.helloed) / secs : 0;
    rates.push_back(rate);
    total += s.helloed;
    connect_time += secs;
    *text +=
        Format("  round %d: %llu connections with hello in %.3f s = %.0f conn/s (%llu failed)\n", r,
               static_cast<unsigned long long>(s.helloed), secs, rate,
               static_cast<unsigned long long>(s.failed - failed));
    failed = s.failed;
    const int64_t close_start = NowNs();
    CloseAll(pool);
    WaitFor(60, [&] { return Collect(pool).live == 0; });
    *text += Format("           closed them (close handshake) in %.3f s\n",
                    static_cast<double>(NowNs() - close_start) / 1e9);
    if (!ok) break;
  }
  probe.End();
  shared.phase = kStop;
  pool.Stop();
  std::vector<double> sorted = rates;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted.empty() ? 0 : sorted[sorted.size() / 2];
  const double best = sorted.empty() ? 0 : sorted.back();
  const double overall = connect_time > 0 ? static_cast<double>(total) / connect_time : 0;
  std::string rj = "[";
  for (size_t i = 0; i < rates.size(); ++i) rj += (i ? "," : "") + Format("%.0f", rates[i]);
  rj += "]";
  j->Int("conns_per_round", o.conns)
      .Int("concurrency", o.concurrency)
      .Int("rounds", static_cast<int64_t>(rates.size()));
  j->Num("conn_per_s", overall)
      .Num("conn_per_s_median", median)
      .Num("conn_per_s_best", best)
      .Raw("round_rates", rj);
  j->Int("connections", static_cast<int64_t>(total)).Int("failed", static_cast<int64_t>(failed));
  *text += Format("  %llu connections: %.0f conn/s overall (median round %.0f, best %.0f)\n",
                  static_cast<unsigned long long>(total), overall, median, best);
  Histogram h = MergedHello(pool);
  j->Raw("hello_latency", h.JsonMicros());
  *text += "  connect -> hello ok: " + h.TextMicros() + "\n";
  probe.Report(j, text, total, "connection");
  *text += "  (server CPU covers the whole run: connects, hellos and the closes)\n";
  ReportCommon(pool, j, text);
  const bool clean = ok && failed == 0;
  j->Bool("ok", clean);
  return clean ? 0 : 2;
}

}  // namespace parley::load

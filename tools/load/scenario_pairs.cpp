// throughput and latency: P sender -> receiver pairs, each pair its own direct conversation.
// throughput keeps W sends in flight per sender (a send is in flight until its ok); latency
// sends at a fixed aggregate rate. The sender writes its monotonic send time into the body, so
// the receiver measures send -> receive on the same clock. Per pair the tool records which
// conversation seqs were acknowledged (ok) and which arrived, to count lost, duplicated and
// reordered messages; inbox numbers are checked for gaps at both ends.
#include <algorithm>
#include <cstring>

#include "scenario.h"

namespace parley::load {

namespace {

constexpr uint32_t kLatencyMaxInflight = 4096;

struct Pair {
  std::string sender, receiver;
  Conn* s = nullptr;
  Conn* r = nullptr;
  bool s_hello = false, r_hello = false, broken = false;
  int64_t next_id = 2;
  uint32_t inflight = 0;
  std::vector<int64_t> sent_at;  // by request id & mask
  std::vector<uint8_t> seqs;     // bit 0: acknowledged by ok, bit 1: received
  int64_t max_seq = 0;
  int64_t r_inbox = 0, s_inbox = 0;
  int64_t unacked = 0;
};

class PairsDriver final : public DriverBase {
 public:
  PairsDriver(Worker& w, Shared& sh, const Options& o, bool latency_mode)
      : DriverBase(w, sh, o), latency_(latency_mode) {
    for (int i = w.index(); i < o.pairs; i += o.threads) {
      Pair p;
      p.sender = Format("%ss%d", o.run_id.c_str(), i);
      p.receiver = Format("%sr%d", o.run_id.c_str(), i);
      uint32_t cap = latency_ ? kLatencyMaxInflight : static_cast<uint32_t>(o.window);
      uint32_t ring = 1;
      while (ring < cap) ring <<= 1;
      p.sent_at.assign(ring, 0);
      pairs_.push_back(std::move(p));
    }
    mask_ = static_cast<uint32_t>(pairs_.empty() ? 0 : pairs_[0].sent_at.size() - 1);
    max_inflight_ = latency_ ? kLatencyMaxInflight : static_cast<uint32_t>(o.window);
    body_.assign(static_cast<size_t>(o.body_bytes), 'x');
    connect_limit_ = std::max(1, o.concurrency / o.threads);
    if (o.max_messages > 0) {
      send_budget_ = o.max_messages / o.threads + (w.index() < o.max_messages % o.threads ? 1 : 0);
    }
    double share = static_cast<double>(pairs_.size()) / static_cast<double>(o.pairs);
    interval_ns_ = share > 0 ? 1e9 / (o.rate * share) : 1e18;
  }

  // ---- live counters, read by the main thread ----
  Counter delivered, oked;
  // ---- results, read after the threads stopped ----
  Histogram latency, ack_latency, lag;
  uint64_t sent = 0, send_errors = 0, echoes = 0, dup_oks = 0, stalled = 0;
  uint64_t lost = 0, duplicated = 0, reordered = 0, inbox_gaps = 0, delivered_unacked = 0;
  uint64_t broken_pairs = 0;

  uint64_t Inflight() const { return inflight_total_.Get(); }

  void Finish() {
    for (Pair& p : pairs_) {
      if (p.broken) ++broken_pairs;
      for (uint8_t st : p.seqs) {
        if (st == 1) ++lost;
        if (st == 2) ++delivered_unacked;
      }
    }
  }

  void OnOpen(Conn& c) override {
    Pair& p = pairs_[c.tag >> 1];
    scratch_.clear();
    AppendHello(&scratch_, 1, (c.tag & 1) ? p.receiver : p.sender, o_.device);
    c.SendText(scratch_);
  }

  void OnClosed(Conn& c, const CloseInfo& info) override {
    Pair& p = pairs_[c.tag >> 1];
    if (!((c.tag & 1) ? p.r_hello : p.s_hello)) --connecting_;
    if (shared_.phase.load(std::memory_order_relaxed) < kStop) CountClose(info);
    if (c.tag & 1) {
      p.r = nullptr;
    } else {
      p.s = nullptr;
      inflight_total_.Add(-static_cast<uint64_t>(p.inflight));
      p.inflight = 0;
    }
    p.broken = true;
  }

  void OnText(Conn& c, std::string_view text) override {
    Frame f;
    if (!ParseFrame(text, &f)) {
      ++errors["unparsable_frame"];
      return;
    }
    Pair& p = pairs_[c.tag >> 1];
    const bool is_receiver = c.tag & 1;
    if (f.op == "msg") {
      int64_t& last = is_receiver ? p.r_inbox : p.s_inbox;
      if (f.inbox != last + 1) ++inbox_gaps;
      last = f.inbox;
      if (!is_receiver) {
        ++echoes;
        return;
      }
      const int64_t now = NowNs();
      delivered.Add();
      int64_t sent_ns = 0;
      if (f.body.size() >= 16 && ParseHex(f.body.substr(0, 16), &sent_ns)) {
        if (shared_.InWindow(sent_ns))
          latency.Record(static_cast<uint64_t>(std::max<int64_t>(0, now - sent_ns)));
      }
      if (f.seq > 0) {
        if (static_cast<size_t>(f.seq) >= p.seqs.size())
          p.seqs.resize(static_cast<size_t>(f.seq) * 2 + 64, 0);
        uint8_t& st = p.seqs[static_cast<size_t>(f.seq)];
        if (st & 2) {
          ++duplicated;
        } else {
          if (f.seq < p.max_seq) ++reordered;
          st |= 2;
        }
        p.max_seq = std::max(p.max_seq, f.seq);
      }
      if (o_.ack_every > 0 && ++p.unacked >= o_.ack_every) {
        p.unacked = 0;
        scratch_.clear();
        scratch_.append("{\"op\":\"ack\",\"inbox\":").append(std::to_string(f.inbox)).append("}");
        c.SendText(scratch_);
      }
      return;
    }
    if (f.op == "ok") {
      if (f.id == 1) {
        (is_receiver ? p.r_hello : p.s_hello) = true;
        (is_receiver ? p.r_inbox : p.s_inbox) = std::max<int64_t>(0, f.inbox_seq);
        --connecting_;
        if (p.r_hello && p.s_hello) ready.Add();
        return;
      }
      if (is_receiver) return;
      const int64_t now = NowNs();
      if (p.inflight > 0) {
        --p.inflight;
        inflight_total_.Add(-1);
      }
      oked.Add();
      if (f.dup) ++dup_oks;
      int64_t t0 = p.sent_at[static_cast<size_t>(f.id) & mask_];
      if (shared_.InWindow(t0)) ack_latency.Record(static_cast<uint64_t>(now - t0));
      if (f.seq > 0) {
        if (static_cast<size_t>(f.seq) >= p.seqs.size())
          p.seqs.resize(static_cast<size_t>(f.seq) * 2 + 64, 0);
        p.seqs[static_cast<size_t>(f.seq)] |= 1;
      }
      if (!latency_ && shared_.phase.load(std::memory_order_relaxed) == kRun) Refill(p);
      return;
    }
    if (f.op == "error") {
      CountError(f);
      if (!is_receiver && f.id >= 2 && p.inflight > 0) {
        --p.inflight;
        inflight_total_.Add(-1);
        ++send_errors;
      }
      return;
    }
  }

  void OnTick(int64_t now) override {
    const int phase = shared_.phase.load(std::memory_order_relaxed);
    if (phase == kSetup) {
      while (connecting_ < connect_limit_ && next_connect_ < pairs_.size() * 2) {
        size_t k = next_connect_++;
        Pair& p = pairs_[k >> 1];
        Conn* c = w_.Connect(k);
        (k & 1 ? p.r : p.s) = c;
        ++connecting_;
      }
      return;
    }
    if (phase != kRun) return;
    if (!latency_) {
      // Windows are refilled on every ok; this also restarts pairs after an error answer.
      if (now - last_refill_ns_ > 10'000'000) {
        last_refill_ns_ = now;
        for (Pair& p : pairs_) Refill(p);
      }
      return;
    }
    if (pairs_.empty()) return;
    if (next_send_ns_ == 0) next_send_ns_ = now;
    if (now - next_send_ns_ > 1'000'000'000) {
      // More than a second behind (the tool is starved of CPU): skip, and say so.
      stalled += static_cast<uint64_t>((now - next_send_ns_) / interval_ns_);
      next_send_ns_ = now;
    }
    while (next_send_ns_ <= now) {
      Pair& p = pairs_[rr_++ % pairs_.size()];
      lag.Record(static_cast<uint64_t>(now - next_send_ns_));
      next_send_ns_ += static_cast<int64_t>(interval_ns_);
      if (p.inflight >= max_inflight_ || p.s == nullptr || !p.s_hello) {
        ++stalled;
        continue;
      }
      SendOne(p, NowNs());
    }
  }

  int64_t NextDueNs() override {
    if (latency_ && shared_.phase.load(std::memory_order_relaxed) == kRun && next_send_ns_ != 0) {
      return next_send_ns_;
    }
    return INT64_MAX;
  }

 private:
  void Refill(Pair& p) {
    if (p.s == nullptr || !p.s_hello) return;
    const int64_t now = NowNs();
    while (p.inflight < max_inflight_) {
      if (!SendOne(p, now)) return;
    }
  }

  bool SendOne(Pair& p, int64_t now) {
    if (send_budget_ == 0) return false;
    if (send_budget_ > 0) --send_budget_;
    static constexpr char kHex[] = "0123456789abcdef";
    uint64_t t = static_cast<uint64_t>(now);
    for (int i = 15; i >= 0; --i) {
      body_[static_cast<size_t>(i)] = kHex[t & 15];
      t >>= 4;
    }
    const int64_t id = p.next_id++;
    const std::string ids = std::to_string(id);
    scratch_.clear();
    scratch_.append("{\"op\":\"send\",\"id\":").append(ids).append(",\"to\":\"").append(p.receiver);
    scratch_.append("\",\"cmid\":\"");
    AppendCmid(&scratch_, static_cast<uint64_t>(id), o_.random_cmids);
    scratch_.append("\",\"body\":\"").append(body_).append("\"}");
    p.sent_at[static_cast<size_t>(id) & mask_] = now;
    ++p.inflight;
    inflight_total_.Add();
    ++sent;
    p.s->SendText(scratch_);
    return true;
  }

  bool latency_;
  std::vector<Pair> pairs_;
  uint32_t mask_ = 0;
  uint32_t max_inflight_ = 1;
  std::string body_, scratch_;
  int connect_limit_ = 1;
  int connecting_ = 0;
  size_t next_connect_ = 0;
  int64_t send_budget_ = -1;  // -1: unbounded
  double interval_ns_ = 1e18;
  int64_t next_send_ns_ = 0;
  int64_t last_refill_ns_ = 0;
  size_t rr_ = 0;
  Counter inflight_total_;
};

}  // namespace

int RunPairs(const Options& o, JsonLine* j, std::string* text) {
  const bool latency_mode = o.scenario == "latency";
  Shared shared;
  Pool pool(o,
            [&](Worker& w) { return std::make_unique<PairsDriver>(w, shared, o, latency_mode); });
  auto sum = [&](auto fn) {
    uint64_t s = 0;
    for (size_t i = 0; i < pool.size(); ++i) s += fn(pool.driver_as<PairsDriver>(i));
    return s;
  };
  *text += Format("%s: %d pairs (%d connections), %s, %d-byte bodies, %d worker thread(s)\n",
                  o.scenario.c_str(), o.pairs, 2 * o.pairs,
                  latency_mode ? Format("aggregate rate %.0f msg/s", o.rate).c_str()
                               : Format("window %d per sender", o.window).c_str(),
                  o.body_bytes, o.threads);
  pool.Start();
  if (!AwaitSetup(
          pool, shared, o, j, text, NowNs(), static_cast<uint64_t>(o.pairs),
          "pairs connected and authenticated",
          [&] { return sum([](PairsDriver& d) { return d.ready.Get(); }); },
          [&] { return sum([](PairsDriver& d) { return d.connect_failures.Get(); }); })) {
    return 1;
  }
  Probe probe(o.server_pid);
  const std::vector<uint64_t> grew =
      MeasureWindow(shared, o, probe,
                    {[&] { return sum([](PairsDriver& d) { return d.delivered.Get(); }); },
                     [&] { return sum([](PairsDriver& d) { return d.oked.Get(); }); }});
  // Grace: in-flight sends get their ok and every acknowledged message its delivery.
  WaitFor(o.grace_s, [&] {
    return sum([](PairsDriver& d) { return d.Inflight(); }) == 0 &&
           sum([](PairsDriver& d) { return d.delivered.Get(); }) >=
               sum([](PairsDriver& d) { return d.oked.Get(); });
  });
  SleepSeconds(std::min(0.2, o.grace_s));  // a late duplicate would show up here
  shared.phase = kStop;
  pool.Stop();

  Histogram lat, ack, lag;
  uint64_t sent = 0, send_errors = 0, echoes = 0, dup_oks = 0, stalled = 0, lost = 0, dup = 0,
           reord = 0, gaps = 0, unacked = 0, broken = 0, delivered = 0, oked = 0;
  for (size_t i = 0; i < pool.size(); ++i) {
    PairsDriver& d = pool.driver_as<PairsDriver>(i);
    d.Finish();
    lat.Merge(d.latency);
    ack.Merge(d.ack_latency);
    lag.Merge(d.lag);
    sent += d.sent;
    send_errors += d.send_errors;
    echoes += d.echoes;
    dup_oks += d.dup_oks;
    stalled += d.stalled;
    lost += d.lost;
    dup += d.duplicated;
    reord += d.reordered;
    gaps += d.inbox_gaps;
    unacked += d.delivered_unacked;
    broken += d.broken_pairs;
    delivered += d.delivered.Get();
    oked += d.oked.Get();
  }
  const double secs = probe.seconds();
  const uint64_t win_delivered = grew[0];
  const double rate = secs > 0 ? static_cast<double>(win_delivered) / secs : 0;
  const double ok_rate = secs > 0 ? static_cast<double>(grew[1]) / secs : 0;
  j->Int("pairs", o.pairs)
      .Int("window", latency_mode ? 0 : o.window)
      .Num("target_rate", latency_mode ? o.rate : 0)
      .Int("body_bytes", o.body_bytes)
      .Int("threads", o.threads)
      .Num("delivered_per_s", rate)
      .Num("acked_sends_per_s", ok_rate)
      .Int("delivered_in_window", static_cast<int64_t>(win_delivered))
      .Int("sent", static_cast<int64_t>(sent))
      .Int("acked", static_cast<int64_t>(oked))
      .Int("delivered", static_cast<int64_t>(delivered))
      .Int("sender_echoes", static_cast<int64_t>(echoes))
      .Int("send_errors", static_cast<int64_t>(send_errors))
      .Int("lost", static_cast<int64_t>(lost))
      .Int("duplicated", static_cast<int64_t>(dup))
      .Int("reordered", static_cast<int64_t>(reord))
      .Int("inbox_gaps", static_cast<int64_t>(gaps))
      .Int("delivered_without_ok", static_cast<int64_t>(unacked))
      .Int("dup_oks", static_cast<int64_t>(dup_oks))
      .Int("broken_pairs", static_cast<int64_t>(broken))
      .Raw("latency", lat.JsonMicros())
      .Raw("ack_latency", ack.JsonMicros());
  if (latency_mode)
    j->Raw("send_lag", lag.JsonMicros()).Int("stalled_sends", static_cast<int64_t>(stalled));
  *text +=
      Format("  delivered %.0f msg/s at receivers (%llu in %.2f s); sends acknowledged %.0f/s\n",
             rate, static_cast<unsigned long long>(win_delivered), secs, ok_rate);
  *text += "  send -> receive: " + lat.TextMicros() + "\n";
  *text += "  send -> ok:      " + ack.TextMicros() + "\n";
  if (latency_mode) {
    *text += "  send lag (actual - scheduled send time): " + lag.TextMicros() + "\n";
    if (stalled)
      *text +=
          Format("  %llu scheduled sends skipped (tool behind, or a sender's 4096 in flight)\n",
                 static_cast<unsigned long long>(stalled));
  }
  *text += Format(
      "  totals: sent %llu, ok %llu, delivered %llu (+%llu echoes to senders), send errors %llu\n",
      static_cast<unsigned long long>(sent), static_cast<unsigned long long>(oked),
      static_cast<unsigned long long>(delivered), static_cast<unsigned long long>(echoes),
      static_cast<unsigned long long>(send_errors));
  *text += Format(
      "  lost %llu, duplicated %llu, reordered %llu, inbox gaps %llu, delivered without ok %llu, "
      "dup oks %llu, broken pairs %llu\n",
      static_cast<unsigned long long>(lost), static_cast<unsigned long long>(dup),
      static_cast<unsigned long long>(reord), static_cast<unsigned long long>(gaps),
      static_cast<unsigned long long>(unacked), static_cast<unsigned long long>(dup_oks),
      static_cast<unsigned long long>(broken));
  probe.Report(j, text, win_delivered, "delivered");
  if (probe.has_server() && win_delivered > 0) {
    // Every message is also echoed to the sender's device: per WebSocket message written.
    const double frames = static_cast<double>(win_delivered) * 2.0;
    j->Num("server_cpu_us_per_event_written", static_cast<double>(probe.server_cpu_us()) / frames);
  }
  ReportCommon(pool, j, text);
  const bool clean = lost == 0 && dup == 0 && reord == 0 && gaps == 0 && broken == 0;
  j->Bool("ok", clean);
  return clean ? 0 : 2;
}

}  // namespace parley::load

// fanout: G groups of M members, every member online on its own connection. The owner of each
// group (member 0) sends to the group with W sends in flight; every other member counts its
// deliveries. Per message the tool counts the members reached and, when the last one has it,
// records the time from send to last member. All members of one group live on one worker, so
// the per-message counts need no synchronisation.
#include <algorithm>

#include "scenario.h"

namespace parley::load {

namespace {

struct Group {
  std::string id;
  std::vector<std::string> users;  // users[0] is the owner and sender
  std::vector<Conn*> conns;
  std::vector<int64_t> last_seq;    // per member: last group seq received
  std::vector<int64_t> last_inbox;  // per member
  std::vector<int64_t> unacked;
  std::vector<uint8_t> hello_done;
  std::vector<uint16_t> reached;  // per seq: members (other than the sender) that got it
  std::vector<uint8_t> acked;     // per seq: the send's ok arrived
  std::vector<int64_t> sent_at;   // ring by request id
  int helloed = 0, created_events = 0;
  bool create_sent = false, ready = false, broken = false;
  int64_t next_id = 3;
  int inflight = 0;
};

class FanoutDriver final : public DriverBase {
 public:
  FanoutDriver(Worker& w, Shared& sh, const Options& o) : DriverBase(w, sh, o) {
    for (int g = w.index(); g < o.groups; g += o.threads) {
      Group gr;
      gr.id = Format("%sG%d", o.run_id.c_str(), g);
      for (int m = 0; m < o.group_size; ++m)
        gr.users.push_back(Format("%sg%dm%d", o.run_id.c_str(), g, m));
      const size_t n = static_cast<size_t>(o.group_size);
      gr.conns.assign(n, nullptr);
      gr.last_seq.assign(n, 0);
      gr.last_inbox.assign(n, 0);
      gr.unacked.assign(n, 0);
      gr.hello_done.assign(n, 0);
      uint32_t ring = 1;
      while (ring < static_cast<uint32_t>(o.window)) ring <<= 1;
      gr.sent_at.assign(ring, 0);
      groups_.push_back(std::move(gr));
    }
    mask_ = groups_.empty() ? 0 : groups_[0].sent_at.size() - 1;
    body_.assign(static_cast<size_t>(o.body_bytes), 'x');
    connect_limit_ = std::max(1, o.concurrency / o.threads);
    total_conns_ = groups_.size() * static_cast<size_t>(o.group_size);
  }

  Counter delivered, oked;
  Histogram latency, last_member, ack_latency;
  uint64_t sent = 0, echoes = 0, out_of_order = 0, skipped = 0, inbox_gaps = 0, send_errors = 0;
  uint64_t lost_deliveries = 0, broken_groups = 0;

  void Finish() {
    const uint16_t others = static_cast<uint16_t>(o_.group_size - 1);
    for (Group& g : groups_) {
      if (g.broken) ++broken_groups;
      for (size_t s = 1; s < g.acked.size(); ++s) {
        if (g.acked[s] && g.reached.size() > s && g.reached[s] < others) {
          lost_deliveries += others - g.reached[s];
        } else if (g.acked[s] && g.reached.size() <= s) {
          lost_deliveries += others;
        }
      }
    }
  }

  void OnOpen(Conn& c) override {
    Group& g = groups_[c.tag / static_cast<uint64_t>(o_.group_size)];
    scratch_.clear();
    AppendHello(&scratch_, 1, g.users[c.tag % static_cast<uint64_t>(o_.group_size)], o_.device);
    c.SendText(scratch_);
  }

  void OnClosed(Conn& c, const CloseInfo& info) override {
    Group& g = groups_[c.tag / static_cast<uint64_t>(o_.group_size)];
    const size_t m = c.tag % static_cast<uint64_t>(o_.group_size);
    if (g.conns[m] == &c) g.conns[m] = nullptr;
    if (!g.hello_done[m]) --connecting_;
    if (shared_.phase.load(std::memory_order_relaxed) < kStop) CountClose(info);
    g.broken = true;
  }

  void OnText(Conn& c, std::string_view text) override {
    Frame f;
    if (!ParseFrame(text, &f)) {
      ++errors["unparsable_frame"];
      return;
    }
    Group& g = groups_[c.tag / static_cast<uint64_t>(o_.group_size)];
    const size_t m = c.tag % static_cast<uint64_t>(o_.group_size);
    if (f.op == "msg") {
      if (f.inbox != g.last_inbox[m] + 1) ++inbox_gaps;
      g.last_inbox[m] = f.inbox;
      MaybeAck(g, m, c, f.inbox);
      if (m == 0) {
        ++echoes;
        return;
      }
      const int64_t now = NowNs();
      delivered.Add();
      if (f.seq != g.last_seq[m] + 1) {
        if (f.seq <= g.last_seq[m])
          ++out_of_order;
        else
          skipped += static_cast<uint64_t>(f.seq - g.last_seq[m] - 1);
      }
      g.last_seq[m] = std::max(g.last_seq[m], f.seq);
      int64_t sent_ns = 0;
      const bool stamped = f.body.size() >= 16 && ParseHex(f.body.substr(0, 16), &sent_ns);
      const bool in_window = stamped && shared_.InWindow(sent_ns);
      if (in_window) latency.Record(static_cast<uint64_t>(std::max<int64_t>(0, now - sent_ns)));
      if (f.seq > 0) {
        if (static_cast<size_t>(f.seq) >= g.reached.size())
          g.reached.resize(static_cast<size_t>(f.seq) * 2 + 64, 0);
        if (++g.reached[static_cast<size_t>(f.seq)] == o_.group_size - 1 && in_window) {
          last_member.Record(static_cast<uint64_t>(std::max<int64_t>(0, now - sent_ns)));
        }
      }
      return;
    }
    if (f.op == "group") {
      if (f.inbox != g.last_inbox[m] + 1) ++inbox_gaps;
      g.last_inbox[m] = f.inbox;
      if (f.change == "created" && ++g.created_events == o_.group_size) {
        g.ready = true;
        ready.Add();
      }
      return;
    }
    if (f.op == "ok") {
      if (f.id == 1) {
        --connecting_;
        g.hello_done[m] = 1;
        g.last_inbox[m] = std::max<int64_t>(0, f.inbox_seq);
        if (++g.helloed == o_.group_size && !g.create_sent) SendCreate(g);
        return;
      }
      if (f.id == 2 || m != 0) return;  // group_create's ok; the events say more
      const int64_t now = NowNs();
      if (g.inflight > 0) --g.inflight;
      oked.Add();
      const int64_t t0 = g.sent_at[static_cast<size_t>(f.id) & mask_];
      if (shared_.InWindow(t0)) ack_latency.Record(static_cast<uint64_t>(now - t0));
      if (f.seq > 0) {
        if (static_cast<size_t>(f.seq) >= g.acked.size())
          g.acked.resize(static_cast<size_t>(f.seq) * 2 + 64, 0);
        g.acked[static_cast<size_t>(f.seq)] = 1;
      }
      if (shared_.phase.load(std::memory_order_relaxed) == kRun) Refill(g);
      return;
    }
    if (f.op == "error") {
      CountError(f);
      if (m == 0 && f.id >= 3 && g.inflight > 0) {
        --g.inflight;
        ++send_errors;
      }
    }
  }

  void OnTick(int64_t now) override {
    const int phase = shared_.phase.load(std::memory_order_relaxed);
    if (phase == kSetup) {
      while (connecting_ < connect_limit_ && next_connect_ < total_conns_) {
        const size_t k = next_connect_++;
        Group& g = groups_[k / static_cast<size_t>(o_.group_size)];
        Conn* c = w_.Connect(k);
        g.conns[k % static_cast<size_t>(o_.group_size)] = c;
        ++connecting_;
      }
      return;
    }
    if (phase == kRun && now - last_refill_ns_ > 10'000'000) {
      last_refill_ns_ = now;
      for (Group& g : groups_) Refill(g);
    }
  }

  int Inflight() const {
    int n = 0;
    for (const Group& g : groups_) n += g.inflight;
    return n;
  }

 private:
  void MaybeAck(Group& g, size_t m, Conn& c, int64_t inbox) {
    if (o_.ack_every <= 0 || ++g.unacked[m] < o_.ack_every) return;
    g.unacked[m] = 0;
    scratch_.clear();
    scratch_.append("{\"op\":\"ack\",\"inbox\":").append(std::to_string(inbox)).append("}");
    c.SendText(scratch_);
  }

  void SendCreate(Group& g) {
    g.create_sent = true;
    scratch_.clear();
    scratch_.append("{\"op\":\"group_create\",\"id\":2,\"group\":\"").append(g.id);
    scratch_.append("\",\"name\":\"bench\",\"members\":[");
    for (size_t i = 1; i < g.users.size(); ++i) {
      if (i > 1) scratch_.push_back(',');
      scratch_.append("\"").append(g.users[i]).append("\"");
    }
    scratch_.append("]}");
    if (g.conns[0]) g.conns[0]->SendText(scratch_);
  }

  void Refill(Group& g) {
    if (!g.ready || g.conns[0] == nullptr) return;
    const int64_t now = NowNs();
    static constexpr char kHex[] = "0123456789abcdef";
    while (g.inflight < o_.window) {
      if (o_.max_messages > 0 && static_cast<int64_t>(total_sent_) >= o_.max_messages / o_.threads)
        return;
      uint64_t t = static_cast<uint64_t>(now);
      for (int i = 15; i >= 0; --i) {
        body_[static_cast<size_t>(i)] = kHex[t & 15];
        t >>= 4;
      }
      const int64_t id = g.next_id++;
      const std::string ids = std::to_string(id);
      scratch_.clear();
      scratch_.append("{\"op\":\"send\",\"id\":").append(ids).append(",\"group\":\"").append(g.id);
      scratch_.append("\",\"cmid\":\"");
      AppendCmid(&scratch_, static_cast<uint64_t>(id), o_.random_cmids);
      scratch_.append("\",\"body\":\"").append(body_).append("\"}");
      g.sent_at[static_cast<size_t>(id) & mask_] = now;
      ++g.inflight;
      ++sent;
      ++total_sent_;
      g.conns[0]->SendText(scratch_);
    }
  }

  std::vector<Group> groups_;
  size_t mask_ = 0;
  std::string body_, scratch_;
  int connect_limit_ = 1;
  int connecting_ = 0;
  size_t next_connect_ = 0, total_conns_ = 0;
  uint64_t total_sent_ = 0;
  int64_t last_refill_ns_ = 0;
};

}  // namespace

int RunFanout(const Options& o, JsonLine* j, std::string* text) {
  Shared shared;
  Pool pool(o, [&](Worker& w) { return std::make_unique<FanoutDriver>(w, shared, o); });
  auto sum = [&](auto fn) {
    uint64_t s = 0;
    for (size_t i = 0; i < pool.size(); ++i) s += fn(pool.driver_as<FanoutDriver>(i));
    return s;
  };
  const int64_t conns = static_cast<int64_t>(o.groups) * o.group_size;
  *text += Format(
      "fanout: %d groups of %d members (%lld connections, all online), one sender per group, "
      "window %d, %d-byte bodies, %d worker thread(s)\n",
      o.groups, o.group_size, static_cast<long long>(conns), o.window, o.body_bytes, o.threads);
  pool.Start();
  if (!AwaitSetup(
          pool, shared, o, j, text, NowNs(), static_cast<uint64_t>(o.groups),
          "groups created with every member online",
          [&] { return sum([](FanoutDriver& d) { return d.ready.Get(); }); },
          [&] { return sum([](FanoutDriver& d) { return d.connect_failures.Get(); }); })) {
    return 1;
  }
  Probe probe(o.server_pid);
  const std::vector<uint64_t> grew =
      MeasureWindow(shared, o, probe,
                    {[&] { return sum([](FanoutDriver& d) { return d.delivered.Get(); }); },
                     [&] { return sum([](FanoutDriver& d) { return d.oked.Get(); }); }});
  const uint64_t others = static_cast<uint64_t>(o.group_size - 1);
  WaitFor(o.grace_s, [&] {
    return sum([](FanoutDriver& d) { return static_cast<uint64_t>(d.Inflight()); }) == 0 &&
           sum([](FanoutDriver& d) { return d.delivered.Get(); }) >=
               sum([](FanoutDriver& d) { return d.oked.Get(); }) * others;
  });
  SleepSeconds(std::min(0.2, o.grace_s));
  shared.phase = kStop;
  pool.Stop();

  Histogram lat, last, ack;
  uint64_t sent = 0, echoes = 0, ooo = 0, skipped = 0, gaps = 0, errs = 0, lost = 0, broken = 0,
           delivered = 0, oked = 0;
  for (size_t i = 0; i < pool.size(); ++i) {
    FanoutDriver& d = pool.driver_as<FanoutDriver>(i);
    d.Finish();
    lat.Merge(d.latency);
    last.Merge(d.last_member);
    ack.Merge(d.ack_latency);
    sent += d.sent;
    echoes += d.echoes;
    ooo += d.out_of_order;
    skipped += d.skipped;
    gaps += d.inbox_gaps;
    errs += d.send_errors;
    lost += d.lost_deliveries;
    broken += d.broken_groups;
    delivered += d.delivered.Get();
    oked += d.oked.Get();
  }
  const double secs = probe.seconds();
  const uint64_t win = grew[0];
  const double rate = secs > 0 ? static_cast<double>(win) / secs : 0;
  const double msg_rate = secs > 0 ? static_cast<double>(grew[1]) / secs : 0;
  j->Int("groups", o.groups)
      .Int("group_size", o.group_size)
      .Int("window", o.window)
      .Int("body_bytes", o.body_bytes)
      .Int("threads", o.threads)
      .Int("connections", conns)
      .Num("deliveries_per_s", rate)
      .Num("group_msgs_per_s", msg_rate)
      .Int("deliveries_in_window", static_cast<int64_t>(win))
      .Int("sent", static_cast<int64_t>(sent))
      .Int("acked", static_cast<int64_t>(oked))
      .Int("delivered", static_cast<int64_t>(delivered))
      .Int("sender_echoes", static_cast<int64_t>(echoes))
      .Int("lost_deliveries", static_cast<int64_t>(lost))
      .Int("out_of_order", static_cast<int64_t>(ooo))
      .Int("skipped_seqs", static_cast<int64_t>(skipped))
      .Int("inbox_gaps", static_cast<int64_t>(gaps))
      .Int("send_errors", static_cast<int64_t>(errs))
      .Int("broken_groups", static_cast<int64_t>(broken))
      .Raw("delivery_latency", lat.JsonMicros())
      .Raw("time_to_last_member", last.JsonMicros())
      .Raw("ack_latency", ack.JsonMicros());
  *text += Format("  %.0f deliveries/s (%llu in %.2f s) = %.0f group messages/s acknowledged\n",
                  rate, static_cast<unsigned long long>(win), secs, msg_rate);
  *text += "  send -> each member:  " + lat.TextMicros() + "\n";
  *text += "  send -> last member:  " + last.TextMicros() + "\n";
  *text += "  send -> ok:           " + ack.TextMicros() + "\n";
  *text += Format(
      "  totals: sent %llu, ok %llu, delivered %llu (+%llu echoes to senders); lost deliveries "
      "%llu, out of order %llu, skipped seqs %llu, inbox gaps %llu, send errors %llu, broken "
      "groups %llu\n",
      static_cast<unsigned long long>(sent), static_cast<unsigned long long>(oked),
      static_cast<unsigned long long>(delivered), static_cast<unsigned long long>(echoes),
      static_cast<unsigned long long>(lost), static_cast<unsigned long long>(ooo),
      static_cast<unsigned long long>(skipped), static_cast<unsigned long long>(gaps),
      static_cast<unsigned long long>(errs), static_cast<unsigned long long>(broken));
  probe.Report(j, text, win, "delivery");
  ReportCommon(pool, j, text);
  const bool clean = lost == 0 && ooo == 0 && gaps == 0 && broken == 0;
  j->Bool("ok", clean);
  return clean ? 0 : 2;
}

}  // namespace parley::load

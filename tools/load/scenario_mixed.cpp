// mixed: a small day in the life of U users, each with one device.
//   - Groups of --mixed-group-size consecutive users, created at start by their first member.
//   - Every user watches --watch friends (the next users by index) for presence.
//   - Messages at --rate per second in total: 70% direct to a random user (online or not),
//     30% to the sender's group; 10% preceded by typing; 5% of live messages get a read receipt.
//   - Presence churn at --churn per second: online users leave (close handshake) and offline
//     users come back, keeping about 70% online. A returning user syncs from its last applied
//     inbox entry (in pages of 500), acks, lists its conversations, and watches again.
//   - Clients follow PROTOCOL.md: apply an event only if its inbox number is last + 1, sync on a
//     gap, ignore what was already applied.
// At the end every user comes online and syncs, and the tool checks that each acknowledged send
// was applied exactly once by each recipient (the sender's own inbox included).
#include <algorithm>
#include <unordered_map>

#include "scenario.h"

namespace parley::load {

namespace {

constexpr int kMaxInflightPerUser = 8;
constexpr double kOnlineShare = 0.7;

struct Accepted {
  uint64_t key;    // sender << 32 | message number
  int32_t target;  // >= 0: user; < 0: -(group + 1)
};

struct PendingSend {
  int64_t id;
  int64_t t;
  uint64_t key;
  int32_t target;
};

enum class St : uint8_t { kOffline, kConnecting, kSyncing, kOnline, kLeaving };

struct MUser {
  int idx = 0;
  std::string name;
  Conn* c = nullptr;
  St st = St::kOffline;
  int64_t applied = 0, max_seen = 0;
  int64_t next_id = 2;
  int64_t sync_id = -1;
  int64_t sync_started = 0;
  uint32_t next_msg = 1;
  bool member_known = false;  // applied its group's "created" event
  bool want_final = false, final_done = false;
  int64_t unacked = 0;
  std::vector<PendingSend> pending;
  std::vector<uint64_t> applied_keys;
};

struct MixedShared {
  std::vector<std::atomic<int64_t>> change_ns;  // when a user's presence last changed
  std::vector<std::atomic<int8_t>> change_online;
  explicit MixedShared(size_t n) : change_ns(n), change_online(n) {}
};

class MixedDriver final : public DriverBase {
 public:
  MixedDriver(Worker& w, Shared& sh, const Options& o, MixedShared& ms)
      : DriverBase(w, sh, o), ms_(ms) {
    for (int i = w.index(); i < o.users; i += o.threads) {
      MUser u;
      u.idx = i;
      u.name = UserName(i);
      users_.push_back(std::move(u));
    }
    connect_limit_ = std::max(1, o.concurrency / o.threads);
    const double share = static_cast<double>(users_.size()) / static_cast<double>(o.users);
    msg_interval_ns_ = 1e9 / std::max(1e-3, o.rate * share);
    const double churn = o.churn > 0 ? o.churn : o.users / 20.0;
    churn_interval_ns_ = 1e9 / std::max(1e-3, churn * share);
    prefix_ = o.run_id + "u";
    attempts_left_ = users_.size() * 50 + 100;
    groups_ = std::max(1, o.users / o.mixed_group_size);
  }

  // ---- progress (main thread) ----
  Counter online, pending_total, final_done, delivered_live, acked_sends;
  std::atomic<bool> final_round{false};
  // ---- results ----
  Histogram live_latency, send_ok, sync_latency, presence_latency, hello_latency;
  std::vector<Accepted> accepted;
  uint64_t sent = 0, send_errors = 0, applied_from_sync = 0, redelivered = 0, gaps = 0, syncs = 0,
           sync_pages = 0, reconnects = 0, disconnects = 0, typing_sent = 0, typing_recv = 0,
           receipts_sent = 0, receipts_recv = 0, presence_recv = 0, group_events = 0, other_oks = 0,
           watch_ok = 0, dropped = 0, unknown_events = 0;

  const std::vector<MUser>& users() const { return users_; }

  void OnOpen(Conn& c) override {
    MUser& u = users_[c.tag];
    scratch_.clear();
    AppendHello(&scratch_, 1, u.name, o_.device);
    c.SendText(scratch_);
  }

  void OnClosed(Conn& c, const CloseInfo& info) override {
    MUser& u = users_[c.tag];
    if (u.c != &c) return;
    if (u.st == St::kConnecting) --connecting_;
    if (!info.by_us) {
      ++dropped;
      CountClose(info);
    }
    if (u.st == St::kOnline || u.st == St::kSyncing || u.st == St::kLeaving) {
      online.Add(static_cast<uint64_t>(-1));
      if (!info.by_us) SetPresence(u.idx, false);
    }
    pending_total.Add(static_cast<uint64_t>(-static_cast<int64_t>(u.pending.size())));
    u.pending.clear();  // their fate is unknown: not counted as accepted
    u.c = nullptr;
    u.st = St::kOffline;
    u.sync_id = -1;
    // The final sync needs everyone; retry after a pause (the attempt budget bounds this).
    if (u.want_final && !u.final_done) to_connect_.push_back({NowNs() + 200'000'000, c.tag});
  }

  void OnText(Conn& c, std::string_view text) override {
    MUser& u = users_[c.tag];
    Frame f;
    if (!ParseFrame(text, &f)) {
      ++errors["unparsable_frame"];
      return;
    }
    const int64_t now = NowNs();
    if (f.op == "msg" || f.op == "group") {
      LiveEvent(u, f, text, now);
      return;
    }
    if (f.op == "ok") {
      OnOk(u, f, now);
      return;
    }
    if (f.op == "error") {
      CountError(f);
      auto it = std::find_if(u.pending.begin(), u.pending.end(),
                             [&](const PendingSend& p) { return p.id == f.id; });
      if (it != u.pending.end()) {
        ++send_errors;
        u.pending.erase(it);
        pending_total.Add(static_cast<uint64_t>(-1));
      }
      if (f.id == u.sync_id) u.sync_id = -1;
      return;
    }
    if (f.op == "presence") {
      ++presence_recv;
      int64_t idx = UserIndex(f.user);
      if (idx >= 0 && idx < o_.users) {
        const bool is_online = f.status != "offline";
        const int64_t t = ms_.change_ns[static_cast<size_t>(idx)].load(std::memory_order_relaxed);
        if (t > 0 &&
            (ms_.change_online[static_cast<size_t>(idx)].load(std::memory_order_relaxed) != 0) ==
                is_online &&
            now >= t && now - t < 10'000'000'000) {
          presence_latency.Record(static_cast<uint64_t>(now - t));
        }
      }
      return;
    }
    if (f.op == "typing") {
      ++typing_recv;
      return;
    }
    if (f.op == "receipt") {
      ++receipts_recv;
      return;
    }
    ++unknown_events;
  }

  void OnTick(int64_t now) override {
    const int phase = shared_.phase.load(std::memory_order_relaxed);
    // Users that should be connected and are not yet (each no earlier than its time).
    for (size_t i = 0; i < to_connect_.size() && connecting_ < connect_limit_;) {
      if (to_connect_[i].first > now) {
        ++i;
        continue;
      }
      const size_t k = to_connect_[i].second;
      to_connect_[i] = to_connect_.back();
      to_connect_.pop_back();
      if (attempts_left_ == 0) continue;  // bounded: the server is probably gone
      --attempts_left_;
      Connect(users_[k]);
    }
    if (phase == kSetup) {
      if (!setup_started_) {
        setup_started_ = true;
        for (size_t k = users_.size(); k-- > 0;) to_connect_.push_back({0, k});
      }
      return;
    }
    // Users leaving close once their sends are answered.
    for (size_t k : leaving_) {
      MUser& u = users_[k];
      if (u.st == St::kLeaving && u.pending.empty() && u.c) {
        SetPresence(u.idx, false);
        u.c->Close(1000);
        ++disconnects;
      }
    }
    leaving_.erase(
        std::remove_if(
            leaving_.begin(), leaving_.end(),
            [&](size_t k) { return users_[k].st != St::kLeaving || users_[k].pending.empty(); }),
        leaving_.end());
    if (phase == kRun) {
      if (!run_started_) {
        run_started_ = true;
        next_msg_ns_ = next_churn_ns_ = now;
        // Start the day with about 30% of the users away.
        for (size_t k = 0; k < users_.size(); ++k) {
          if (w_.rng().Chance(1 - kOnlineShare)) Leave(k);
        }
      }
      if (now - next_msg_ns_ > 1'000'000'000) next_msg_ns_ = now;  // starved: do not burst
      while (next_msg_ns_ <= now) {
        next_msg_ns_ += static_cast<int64_t>(msg_interval_ns_);
        SendRandom(now);
      }
      if (now - next_churn_ns_ > 1'000'000'000) next_churn_ns_ = now;
      while (next_churn_ns_ <= now) {
        next_churn_ns_ += static_cast<int64_t>(churn_interval_ns_);
        Churn();
      }
      return;
    }
    if (final_round.load(std::memory_order_acquire) && !final_started_) {
      final_started_ = true;
      for (size_t k = 0; k < users_.size(); ++k) {
        MUser& u = users_[k];
        u.want_final = true;
        if (u.st == St::kOnline) {
          StartSync(u);
        } else if (u.st == St::kOffline) {
          to_connect_.push_back({0, k});
        }  // connecting/syncing users finish their sync and count then
      }
    }
  }

  int64_t NextDueNs() override {
    if (shared_.phase.load(std::memory_order_relaxed) == kRun)
      return std::min(next_msg_ns_, next_churn_ns_);
    return INT64_MAX;
  }

 private:
  std::string UserName(int i) const { return Format("%su%d", o_.run_id.c_str(), i); }
  std::string GroupName(int g) const { return Format("%smg%d", o_.run_id.c_str(), g); }
  int GroupOf(int idx) const { return std::min(groups_ - 1, idx / o_.mixed_group_size); }

  int64_t UserIndex(std::string_view name) const {
    if (name.size() <= prefix_.size() || name.substr(0, prefix_.size()) != prefix_) return -1;
    int64_t v = -1;
    if (!ParseInt(name.substr(prefix_.size()), &v)) return -1;
    return v;
  }

  void SetPresence(int idx, bool is_online) {
    ms_.change_online[static_cast<size_t>(idx)].store(is_online ? 1 : 0, std::memory_order_relaxed);
    ms_.change_ns[static_cast<size_t>(idx)].store(NowNs(), std::memory_order_relaxed);
  }

  void Connect(MUser& u) {
    if (u.st != St::kOffline) return;
    u.st = St::kConnecting;
    ++connecting_;
    u.c = w_.Connect(static_cast<uint64_t>(&u - users_.data()));
  }

  void Leave(size_t k) {
    MUser& u = users_[k];
    if (u.st != St::kOnline) return;
    u.st = St::kLeaving;
    leaving_.push_back(k);
  }

  void Churn() {
    if (users_.empty()) return;
    const double share = static_cast<double>(online.Get()) / static_cast<double>(users_.size());
    // A handful of tries to find a user in the right state.
    for (int tries = 0; tries < 8; ++tries) {
      size_t k = w_.rng().Below(users_.size());
      MUser& u = users_[k];
      if (share > kOnlineShare && u.st == St::kOnline) {
        Leave(k);
        return;
      }
      if (share <= kOnlineShare && u.st == St::kOffline) {
        ++reconnects;
        to_connect_.push_back({0, k});
        return;
      }
    }
  }

  void SendRandom(int64_t now) {
    if (users_.empty()) return;
    for (int tries = 0; tries < 8; ++tries) {
      MUser& u = users_[w_.rng().Below(users_.size())];
      if (u.st != St::kOnline || static_cast<int>(u.pending.size()) >= kMaxInflightPerUser)
        continue;
      const bool to_group = u.member_known && w_.rng().Chance(0.3);
      int32_t target;
      std::string to;
      if (to_group) {
        const int g = GroupOf(u.idx);
        target = -(g + 1);
        to = GroupName(g);
      } else {
        int t = static_cast<int>(w_.rng().Below(static_cast<uint64_t>(o_.users)));
        if (t == u.idx) t = (t + 1) % o_.users;
        target = t;
        to = UserName(t);
      }
      const char* field = to_group ? "group" : "to";
      if (w_.rng().Chance(0.1)) {
        scratch_.clear();
        scratch_.append("{\"op\":\"typing\",\"")
            .append(field)
            .append("\":\"")
            .append(to)
            .append("\"}");
        u.c->SendText(scratch_);
        ++typing_sent;
      }
      const int64_t id = u.next_id++;
      const uint32_t n = u.next_msg++;
      static constexpr char kHex[] = "0123456789abcdef";
      std::string body(static_cast<size_t>(o_.body_bytes), 'x');
      uint64_t t = static_cast<uint64_t>(now);
      for (int i = 15; i >= 0; --i) {
        body[static_cast<size_t>(i)] = kHex[t & 15];
        t >>= 4;
      }
      scratch_.clear();
      scratch_.append("{\"op\":\"send\",\"id\":").append(std::to_string(id)).append(",\"");
      scratch_.append(field).append("\":\"").append(to).append("\",\"cmid\":\"m");
      scratch_.append(std::to_string(n)).append("\",\"body\":\"").append(body).append("\"}");
      u.c->SendText(scratch_);
      u.pending.push_back({id, now, (static_cast<uint64_t>(u.idx) << 32) | n, target});
      pending_total.Add();
      ++sent;
      return;
    }
  }

  void StartSync(MUser& u) {
    if (u.sync_id >= 0 || u.c == nullptr) return;
    u.sync_id = u.next_id++;
    u.sync_started = NowNs();
    ++sync_pages;
    scratch_.clear();
    scratch_.append("{\"op\":\"sync\",\"id\":").append(std::to_string(u.sync_id));
    scratch_.append(",\"since\":").append(std::to_string(u.applied)).append(",\"limit\":500}");
    u.c->SendText(scratch_);
  }

  void Ack(MUser& u) {
    u.unacked = 0;
    if (u.c == nullptr || u.applied == 0) return;
    scratch_.clear();
    scratch_.append("{\"op\":\"ack\",\"inbox\":").append(std::to_string(u.applied)).append("}");
    u.c->SendText(scratch_);
  }

  // Applies one inbox event in order; returns false if it is not the next one.
  bool Apply(MUser& u, const Frame& f, bool live, int64_t now) {
    if (f.inbox <= u.applied) {
      ++redelivered;
      return true;
    }
    if (f.inbox != u.applied + 1) return false;
    u.applied = f.inbox;
    if (f.op == "msg") {
      int64_t from = UserIndex(f.from);
      int64_t n = -1;
      if (from >= 0 && f.cmid.size() > 1 && f.cmid[0] == 'm' && ParseInt(f.cmid.substr(1), &n)) {
        u.applied_keys.push_back((static_cast<uint64_t>(from) << 32) | static_cast<uint64_t>(n));
      } else {
        ++unknown_events;
      }
      if (live) {
        delivered_live.Add();
        int64_t sent_ns = 0;
        uint64_t v = 0;
        bool okhex = f.body.size() >= 16;
        for (size_t i = 0; okhex && i < 16; ++i) {
          char ch = f.body[i];
          int d = (ch >= '0' && ch <= '9')   ? ch - '0'
                  : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
                                             : -1;
          if (d < 0) okhex = false;
          v = (v << 4) | static_cast<uint64_t>(d < 0 ? 0 : d);
        }
        sent_ns = static_cast<int64_t>(v);
        if (okhex && shared_.InWindow(sent_ns))
          live_latency.Record(static_cast<uint64_t>(std::max<int64_t>(0, now - sent_ns)));
        if (u.c && w_.rng().Chance(0.05)) {
          scratch_.clear();
          scratch_.append("{\"op\":\"read\",\"conv\":\"").append(f.conv).append("\",\"seq\":");
          scratch_.append(std::to_string(f.seq)).append("}");
          u.c->SendText(scratch_);
          ++receipts_sent;
        }
      } else {
        ++applied_from_sync;
      }
    } else {
      ++group_events;
      if (f.change == "created" || f.change == "added") u.member_known = true;
    }
    if (++u.unacked >= std::max(1, o_.ack_every) && live) Ack(u);
    return true;
  }

  void LiveEvent(MUser& u, const Frame& f, std::string_view, int64_t now) {
    u.max_seen = std::max(u.max_seen, f.inbox);
    if (u.st == St::kSyncing || u.st == St::kConnecting) return;  // the sync brings it
    if (!Apply(u, f, true, now)) {
      ++gaps;
      StartSync(u);
    }
  }

  void OnOk(MUser& u, const Frame& f, int64_t now) {
    if (f.id == 1) {  // hello
      --connecting_;
      hello_latency.Record(static_cast<uint64_t>(now - u.c->started_ns));
      u.st = St::kSyncing;
      u.max_seen = std::max(u.max_seen, f.inbox_seq);
      online.Add();
      SetPresence(u.idx, true);
      ++syncs;
      StartSync(u);
      return;
    }
    if (f.id == u.sync_id) {
      sync_latency.Record(static_cast<uint64_t>(now - u.sync_started));
      u.sync_id = -1;
      bool stuck = false;
      ForEachElement(f.list, [&](std::string_view ev) {
        Frame e;
        if (!ParseFrame(ev, &e)) return;
        if (!Apply(u, e, false, now)) stuck = true;
      });
      u.max_seen = std::max(u.max_seen, f.inbox_seq);
      if (stuck) ++gaps;  // a page that does not continue the inbox
      if (f.more || (!stuck && u.max_seen > u.applied)) {
        StartSync(u);
        return;
      }
      Ack(u);
      if (u.st == St::kSyncing) {
        u.st = St::kOnline;
        AfterSync(u);
      }
      if (u.want_final && !u.final_done) {
        u.final_done = true;
        final_done.Add();
      }
      return;
    }
    auto it = std::find_if(u.pending.begin(), u.pending.end(),
                           [&](const PendingSend& p) { return p.id == f.id; });
    if (it != u.pending.end()) {
      if (shared_.InWindow(it->t)) send_ok.Record(static_cast<uint64_t>(now - it->t));
      accepted.push_back({it->key, it->target});
      acked_sends.Add();
      u.pending.erase(it);
      pending_total.Add(static_cast<uint64_t>(-1));
      return;
    }
    if (f.list.data() != nullptr && f.list.size() > 0 && f.op == "ok") {
      ++watch_ok;
      return;
    }
    ++other_oks;  // convs and group_create answers
  }

  // Once a connection is current: list conversations, watch the friends, and (group owners,
  // first time) create the group.
  void AfterSync(MUser& u) {
    scratch_.clear();
    scratch_.append("{\"op\":\"convs\",\"id\":")
        .append(std::to_string(u.next_id++))
        .append(",\"limit\":20}");
    u.c->SendText(scratch_);
    if (o_.watch > 0) {
      scratch_.clear();
      scratch_.append("{\"op\":\"watch\",\"id\":")
          .append(std::to_string(u.next_id++))
          .append(",\"users\":[");
      for (int k = 1; k <= std::min(o_.watch, o_.users - 1); ++k) {
        if (k > 1) scratch_.push_back(',');
        scratch_.append("\"").append(UserName((u.idx + k) % o_.users)).append("\"");
      }
      scratch_.append("]}");
      u.c->SendText(scratch_);
    }
    const int g = GroupOf(u.idx);
    if (u.idx == g * o_.mixed_group_size && !u.member_known && !created_.count(g)) {
      created_[g] = true;
      scratch_.clear();
      scratch_.append("{\"op\":\"group_create\",\"id\":").append(std::to_string(u.next_id++));
      scratch_.append(",\"group\":\"")
          .append(GroupName(g))
          .append("\",\"name\":\"team\",\"members\":[");
      const int last = (g == groups_ - 1) ? o_.users : (g + 1) * o_.mixed_group_size;
      for (int m = u.idx + 1; m < last; ++m) {
        if (m > u.idx + 1) scratch_.push_back(',');
        scratch_.append("\"").append(UserName(m)).append("\"");
      }
      scratch_.append("]}");
      u.c->SendText(scratch_);
    }
    if (shared_.phase.load(std::memory_order_relaxed) == kSetup) ready.Add();
  }

  MixedShared& ms_;
  std::vector<MUser> users_;
  std::vector<std::pair<int64_t, size_t>> to_connect_;  // (not before, user)
  std::vector<size_t> leaving_;
  uint64_t attempts_left_ = 0;
  std::unordered_map<int, bool> created_;
  std::string scratch_, prefix_;
  int connect_limit_ = 1, connecting_ = 0, groups_ = 1;
  double msg_interval_ns_ = 1e9, churn_interval_ns_ = 1e9;
  int64_t next_msg_ns_ = INT64_MAX, next_churn_ns_ = INT64_MAX;
  bool setup_started_ = false, run_started_ = false, final_started_ = false;
};

}  // namespace

int RunMixed(const Options& o, JsonLine* j, std::string* text) {
  Shared shared;
  MixedShared ms(static_cast<size_t>(o.users));
  Pool pool(o, [&](Worker& w) { return std::make_unique<MixedDriver>(w, shared, o, ms); });
  auto sum = [&](auto fn) {
    uint64_t s = 0;
    for (size_t i = 0; i < pool.size(); ++i) s += fn(pool.driver_as<MixedDriver>(i));
    return s;
  };
  const double churn = o.churn > 0 ? o.churn : o.users / 20.0;
  const int groups = std::max(1, o.users / o.mixed_group_size);
  *text += Format(
      "mixed: %d users (one device each), %d groups of ~%d, watch %d friends each, %.0f msg/s, "
      "%.0f presence changes/s, ~70%% online, %d worker thread(s)\n",
      o.users, groups, o.mixed_group_size, o.watch, o.rate, churn, o.threads);
  pool.Start();
  auto refused = [&] { return sum([](MixedDriver& d) { return d.connect_failures.Get(); }); };
  if (!AwaitSetup(
          pool, shared, o, j, text, NowNs(), static_cast<uint64_t>(o.users),
          "users online and synced",
          [&] { return sum([](MixedDriver& d) { return d.ready.Get(); }); }, refused)) {
    return 1;
  }
  SleepSeconds(0.5);  // group creations land
  Probe probe(o.server_pid);
  const std::vector<uint64_t> grew =
      MeasureWindow(shared, o, probe,
                    {[&] { return sum([](MixedDriver& d) { return d.acked_sends.Get(); }); },
                     [&] { return sum([](MixedDriver& d) { return d.delivered_live.Get(); }); }});
  const uint64_t acked_in_window = grew[0];
  // Every send answered, then fan-out finishes, then everyone comes online and syncs.
  WaitFor(o.grace_s + 5,
          [&] { return sum([](MixedDriver& d) { return d.pending_total.Get(); }) == 0; });
  SleepSeconds(1.0);
  const int64_t final_start = NowNs();
  for (size_t i = 0; i < pool.size(); ++i) pool.driver_as<MixedDriver>(i).final_round.store(true);
  const uint64_t refused_before_final = refused();
  bool final_ok = WaitFor(o.setup_timeout_s, [&] {
    return sum([](MixedDriver& d) { return d.final_done.Get(); }) >=
               static_cast<uint64_t>(o.users) ||
           refused() > refused_before_final + 100;
  });
  final_ok = final_ok && sum([](MixedDriver& d) { return d.final_done.Get(); }) >=
                             static_cast<uint64_t>(o.users);
  const double final_s = static_cast<double>(NowNs() - final_start) / 1e9;
  shared.phase = kStop;
  pool.Stop();

  // ---- exactly-once check ----
  std::vector<std::vector<uint64_t>> expected(static_cast<size_t>(o.users));
  std::vector<const std::vector<uint64_t>*> applied(static_cast<size_t>(o.users), nullptr);
  Histogram live, sendok, syncl, pres, hello;
  uint64_t accepted = 0;
  std::map<std::string, uint64_t> counts;
  for (size_t i = 0; i < pool.size(); ++i) {
    MixedDriver& d = pool.driver_as<MixedDriver>(i);
    live.Merge(d.live_latency);
    sendok.Merge(d.send_ok);
    syncl.Merge(d.sync_latency);
    pres.Merge(d.presence_latency);
    hello.Merge(d.hello_latency);
    for (const MUser& u : d.users()) applied[static_cast<size_t>(u.idx)] = &u.applied_keys;
    for (const Accepted& a : d.accepted) {
      ++accepted;
      const int sender = static_cast<int>(a.key >> 32);
      expected[static_cast<size_t>(sender)].push_back(a.key);
      if (a.target >= 0) {
        expected[static_cast<size_t>(a.target)].push_back(a.key);
      } else {
        const int g = -a.target - 1;
        const int first = g * o.mixed_group_size;
        const int last = (g == groups - 1) ? o.users : (g + 1) * o.mixed_group_size;
        for (int m = first; m < last; ++m) {
          if (m != sender) expected[static_cast<size_t>(m)].push_back(a.key);
        }
      }
    }
    counts["sent"] += d.sent;
    counts["send_errors"] += d.send_errors;
    counts["applied_from_sync"] += d.applied_from_sync;
    counts["redelivered_ignored"] += d.redelivered;
    counts["gaps_synced"] += d.gaps;
    counts["syncs"] += d.syncs;
    counts["sync_pages"] += d.sync_pages;
    counts["reconnects"] += d.reconnects;
    counts["disconnects"] += d.disconnects;
    counts["typing_sent"] += d.typing_sent;
    counts["typing_recv"] += d.typing_recv;
    counts["receipts_sent"] += d.receipts_sent;
    counts["receipts_recv"] += d.receipts_recv;
    counts["presence_events"] += d.presence_recv;
    counts["group_events"] += d.group_events;
    counts["dropped_by_server"] += d.dropped;
    counts["unknown_events"] += d.unknown_events;
    counts["delivered_live"] += d.delivered_live.Get();
  }
  uint64_t lost = 0, dup = 0, unexpected = 0, expected_total = 0;
  for (int u = 0; u < o.users; ++u) {
    std::vector<uint64_t>& e = expected[static_cast<size_t>(u)];
    std::vector<uint64_t> a = applied[static_cast<size_t>(u)] ? *applied[static_cast<size_t>(u)]
                                                              : std::vector<uint64_t>{};
    std::sort(e.begin(), e.end());
    std::sort(a.begin(), a.end());
    expected_total += e.size();
    for (size_t k = 1; k < a.size(); ++k) {
      if (a[k] == a[k - 1]) ++dup;
    }
    a.erase(std::unique(a.begin(), a.end()), a.end());
    std::vector<uint64_t> missing, extra;
    std::set_difference(e.begin(), e.end(), a.begin(), a.end(), std::back_inserter(missing));
    std::set_difference(a.begin(), a.end(), e.begin(), e.end(), std::back_inserter(extra));
    lost += missing.size();
    unexpected += extra.size();
  }
  const double secs = probe.seconds();
  const double send_rate = secs > 0 ? static_cast<double>(acked_in_window) / secs : 0;
  const double live_rate = secs > 0 ? static_cast<double>(grew[1]) / secs : 0;
  j->Int("users", o.users)
      .Int("groups", groups)
      .Int("group_size", o.mixed_group_size)
      .Int("watch", o.watch)
      .Num("target_rate", o.rate)
      .Num("churn_per_s", churn)
      .Int("threads", o.threads)
      .Num("acked_sends_per_s", send_rate)
      .Num("live_deliveries_per_s", live_rate)
      .Int("accepted_sends", static_cast<int64_t>(accepted))
      .Int("expected_deliveries", static_cast<int64_t>(expected_total))
      .Int("lost", static_cast<int64_t>(lost))
      .Int("duplicated", static_cast<int64_t>(dup))
      .Int("applied_without_ok", static_cast<int64_t>(unexpected))
      .Bool("final_sync_complete", final_ok)
      .Num("final_sync_s", final_s);
  std::string cj = "{";
  for (auto& [k, v] : counts) {
    if (cj.size() > 1) cj += ",";
    AppendQuoted(&cj, k);
    cj += ":" + std::to_string(v);
  }
  cj += "}";
  j->Raw("counts", cj);
  j->Raw("live_latency", live.JsonMicros())
      .Raw("send_ok_latency", sendok.JsonMicros())
      .Raw("sync_latency", syncl.JsonMicros())
      .Raw("presence_latency", pres.JsonMicros())
      .Raw("hello_latency", hello.JsonMicros());
  *text += Format("  %.0f sends/s acknowledged, %.0f live deliveries/s (measured window %.2f s)\n",
                  send_rate, live_rate, secs);
  *text += "  send -> live delivery: " + live.TextMicros() + "\n";
  *text += "  send -> ok:            " + sendok.TextMicros() + "\n";
  *text += "  sync request -> ok:    " + syncl.TextMicros() + "\n";
  *text += "  presence change -> watcher event: " + pres.TextMicros() + "\n";
  *text += "  connect -> hello ok:   " + hello.TextMicros() + "\n";
  std::string ct;
  for (auto& [k, v] : counts)
    ct += Format(" %s=%llu", k.c_str(), static_cast<unsigned long long>(v));
  *text += "  counts:" + ct + "\n";
  *text += Format(
      "  exactly-once check after a final sync of every user (%.2f s%s): %llu accepted sends, %llu "
      "expected inbox deliveries; lost %llu, duplicated %llu, applied without ok %llu\n",
      final_s, final_ok ? "" : ", INCOMPLETE", static_cast<unsigned long long>(accepted),
      static_cast<unsigned long long>(expected_total), static_cast<unsigned long long>(lost),
      static_cast<unsigned long long>(dup), static_cast<unsigned long long>(unexpected));
  probe.Report(j, text, acked_in_window, "acked_send");
  ReportCommon(pool, j, text);
  const bool clean = final_ok && lost == 0 && dup == 0;
  j->Bool("ok", clean);
  return clean ? 0 : 2;
}

}  // namespace parley::load

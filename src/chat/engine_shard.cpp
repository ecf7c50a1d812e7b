#include "parley/chat/engine_shard.h"

#include <algorithm>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "parley/proto/frames.h"
#include "parley/proto/request.h"
#include "parley/util/clock.h"
#include "parley/util/json_writer.h"
#include "parley/util/strings.h"

namespace parley::chat {

namespace {

std::string CmidKey(std::string_view from, std::string_view cmid) {
  return StrCat(from, std::string_view("\0", 1), cmid);
}

SendResult Failed(absl::Status status) {
  SendResult r;
  r.status = std::move(status);
  return r;
}

// A commit that failed is retried after this long (disk full, I/O error).
constexpr int64_t kRetryMs = 250;

}  // namespace

EngineShard::EngineShard(Deps deps) : deps_(deps) {
  // The writer is destroyed before the engine (Server::~Server), so the hook never outlives it.
  deps_.writer->BeforeSeal([this](store::Batch& batch) { WriteChangedUserConvs(batch); });
}
EngineShard::~EngineShard() = default;

// ---------------------------------------------------------------- state loading

absl::StatusOr<EngineShard::UserState*> EngineShard::LoadUser(const std::string& user) {
  auto it = users_.find(user);
  if (it != users_.end()) return it->second.get();
  auto last = deps_.store->LastInboxSeq(user);
  if (!last.ok()) return last.status();
  auto state = std::make_unique<UserState>();
  state->id = user;
  state->inbox_assigned = state->inbox_durable = *last;
  UserState* raw = state.get();
  users_.emplace(user, std::move(state));
  return raw;
}

absl::StatusOr<EngineShard::ConvState*> EngineShard::LoadConv(const std::string& conv) {
  auto it = convs_.find(conv);
  if (it != convs_.end()) return it->second.get();
  auto last = deps_.store->LastConvSeq(conv);
  if (!last.ok()) return last.status();
  auto state = std::make_unique<ConvState>();
  state->last_seq = state->durable_seq = state->fanned_out = *last;
  if (*last > 0) {
    auto msg = deps_.store->GetMessage(conv, *last);
    if (msg.ok() && msg->has_value()) state->last_ts = (*msg)->ts;
  }
  ConvState* raw = state.get();
  convs_.emplace(conv, std::move(state));
  return raw;
}

absl::StatusOr<store::UserConvRecord*> EngineShard::LoadUserConv(UserState& u,
                                                                 const std::string& conv,
                                                                 bool create) {
  auto it = u.convs.find(conv);
  if (it != u.convs.end()) return &it->second;
  auto rec = deps_.store->GetUserConv(u.id, conv);
  if (!rec.ok()) return rec.status();
  if (!rec->has_value() && !create) return nullptr;
  auto [pos, inserted] = u.convs.emplace(conv, rec->value_or(store::UserConvRecord{}));
  return &pos->second;
}

void EngineShard::NoteUserConvChanged(const UserState& u, const std::string& conv) {
  if (!user_convs_changed_.contains(UserConvView(u.id, conv)))
    user_convs_changed_.emplace(u.id, conv);
}

void EngineShard::WriteChangedUserConvs(store::Batch& batch) {
  for (const auto& [user, conv] : user_convs_changed_) {
    // Gone from memory only after a failed commit cleared the user's records (this batch then
    // fails too) or after a leave deleted the record (which must stay deleted).
    auto u = users_.find(user);
    if (u == users_.end()) continue;
    auto rec = u->second->convs.find(conv);
    if (rec == u->second->convs.end()) continue;
    batch.PutUserConv(user, conv, rec->second);
  }
  user_convs_changed_.clear();
}

void EngineShard::MaybeEvict(const std::string& user) {
  auto it = users_.find(user);
  if (it == users_.end()) return;
  UserState& u = *it->second;
  if (u.devices.empty() && u.pending == 0) users_.erase(it);
}

// ---------------------------------------------------------------- devices

absl::StatusOr<int64_t> EngineShard::AttachDevice(Device* device) {
  auto u = LoadUser(device->user());
  if (!u.ok()) return u.status();
  if ((*u)->devices.size() >= deps_.config->limits.max_connections_per_user) {
    return absl::ResourceExhaustedError(
        StrCat("user has ", (*u)->devices.size(),
               " connections online (limits.max_connections_per_user)"));
  }
  if ((*u)->devices.empty()) stats_.online_users.fetch_add(1, std::memory_order_relaxed);
  (*u)->devices.push_back(device);
  devices_by_session_[device->device_session_id()] = device;
  stats_.online_devices.fetch_add(1, std::memory_order_relaxed);
  // Offline -> online; a further device's hello does not reset a "busy".
  const int64_t now = WallMillis();
  if (presence_.Connect(device->user(), now)) {
    // Stored too, so that after a crash (when no disconnect was written) last_seen is at
    // least the time the user came online.
    NoteLastSeen(device->user(), now);
    PresenceChanged(device->user());
  }
  return (*u)->inbox_durable;
}

void EngineShard::DetachDevice(Device* device) {
  const uint64_t session = device->device_session_id();
  devices_by_session_.erase(session);
  std::vector<std::string> unwatched;
  presence_.UnwatchAll(session, &unwatched);
  Unsubscribe(unwatched);
  auto it = users_.find(device->user());
  if (it == users_.end()) return;
  auto& devices = it->second->devices;
  auto pos = std::find(devices.begin(), devices.end(), device);
  if (pos == devices.end()) return;
  devices.erase(pos);
  stats_.online_devices.fetch_sub(1, std::memory_order_relaxed);
  if (devices.empty()) stats_.online_users.fetch_sub(1, std::memory_order_relaxed);
  const int64_t now = WallMillis();
  if (presence_.Disconnect(device->user(), now)) {
    // The user's last device went: last_seen must outlive a restart.
    NoteLastSeen(device->user(), now);
    PresenceChanged(device->user());
  }
  MaybeEvict(device->user());
}

// ---------------------------------------------------------------- presence

void EngineShard::Poll() {
  if (!last_seen_unstored_.empty() && MonoMillis() >= last_seen_flush_due_ms_) FlushLastSeen();
  deps_.writer->Poll();
}

void EngineShard::NoteLastSeen(const std::string& user, int64_t wall_ms) {
  constexpr int64_t kLastSeenFlushMs = 1000;
  if (last_seen_unstored_.empty()) last_seen_flush_due_ms_ = MonoMillis() + kLastSeenFlushMs;
  last_seen_unstored_[user] = wall_ms;
}

bool EngineShard::FlushLastSeen() {
  if (last_seen_unstored_.empty()) return false;
  store::Batch& batch = deps_.writer->current();
  for (const auto& [user, wall_ms] : last_seen_unstored_) batch.PutLastSeen(user, wall_ms);
  last_seen_unstored_.clear();
  return true;
}

EngineShard::PresenceInfo EngineShard::Snapshot(const std::string& user) {
  const PresenceTable::View view = presence_.Get(user, WallMillis());
  PresenceInfo info;
  info.user = user;
  info.status = PresenceStatusName(view.status);
  info.last_seen = view.last_seen;
  if (view.last_seen == 0) {
    // Not connected since this process started: when the user was last seen before, if ever.
    // (A storage error reads as "never": presence is best effort, not worth failing a watch.)
    auto stored = deps_.store->GetLastSeen(user);
    if (stored.ok()) info.last_seen = *stored;
  }
  return info;
}

absl::Status EngineShard::SetStatus(Device& device, std::string_view status) {
  const PresenceStatus wanted = status == "busy" ? PresenceStatus::kBusy : PresenceStatus::kOnline;
  if (presence_.SetStatus(device.user(), wanted)) PresenceChanged(device.user());
  return absl::OkStatus();
}

void EngineShard::PresenceChanged(const std::string& user) {
  const uint64_t cores = presence_.Subscribers(user);
  if (cores == 0) return;
  const PresenceInfo info = Snapshot(user);
  const std::string status(info.status);
  for (int core = 0; core < deps_.router->cores(); ++core) {
    if (!(cores & (uint64_t{1} << core))) continue;
    if (core == deps_.core) {
      DeliverPresence(user, status, info.last_seen);
      continue;
    }
    deps_.router->SubmitToCore(deps_.core, core,
                               [&target = on(core), user, status, last_seen = info.last_seen] {
                                 target.DeliverPresence(user, status, last_seen);
                               });
  }
}

void EngineShard::DeliverPresence(const std::string& user, std::string_view status,
                                  int64_t last_seen) {
  // Collected first: a delivery may close a connection, whose edges then go.
  absl::InlinedVector<uint64_t, 8> sessions;
  presence_.ForEachWatcher(user, [&](uint64_t session) { sessions.push_back(session); });
  if (sessions.empty()) return;
  std::string frame;
  proto::AppendPresence(&frame, user, status, last_seen);
  for (uint64_t session : sessions) {
    // A watch still collecting its snapshot takes the newer state instead of an event.
    bool pending = false;
    for (auto& [id, pw] : pending_watches_) {
      if (pw->session != session) continue;
      if (auto g = pw->got.find(user); g != pw->got.end()) {
        g->second.status = status == "online" ? "online" : status == "busy" ? "busy" : "offline";
        g->second.last_seen = last_seen;
        pending = true;
      }
    }
    if (pending) continue;
    if (auto d = devices_by_session_.find(session); d != devices_by_session_.end()) {
      d->second->DeliverEphemeral(frame);
    }
  }
}

void EngineShard::Subscribe(int core, const std::vector<std::string>& users, bool on) {
  for (const std::string& u : users) {
    if (on) {
      presence_.Subscribe(core, u);
    } else {
      presence_.Unsubscribe(core, u);
    }
  }
}

void EngineShard::Watch(Device& device, std::vector<std::string> users,
                        Reply<absl::StatusOr<std::vector<PresenceInfo>>> done) {
  const uint64_t session = device.device_session_id();
  // Duplicates within the request, and users already watched, count once.
  absl::flat_hash_set<std::string> distinct(users.begin(), users.end());
  size_t fresh = 0;
  for (const auto& u : distinct) fresh += presence_.IsWatching(session, u) ? 0 : 1;
  if (presence_.WatchCount(session) + fresh > deps_.config->limits.max_watch) {
    return done(absl::OutOfRangeError(
        StrCat("a connection may watch at most ", deps_.config->limits.max_watch, " users")));
  }
  // Group the users by owner core: one hop per owner, which subscribes this core and answers
  // with a snapshot. Changes after the snapshot follow it on the same FIFO channel.
  absl::flat_hash_map<int, std::vector<std::string>> by_owner;
  for (const auto& u : distinct) {
    presence_.Watch(session, u);
    by_owner[deps_.router->CoreOfUser(u)].push_back(u);
  }
  const uint64_t id = next_watch_++;
  auto pw = std::make_unique<PendingWatch>();
  pw->session = session;
  pw->users = std::move(users);
  pw->outstanding = static_cast<int>(by_owner.size());
  pw->done = std::move(done);
  pending_watches_.emplace(id, std::move(pw));
  auto finish_part = [this, id](std::vector<PresenceInfo> part) {
    auto it = pending_watches_.find(id);
    if (it == pending_watches_.end()) return;
    PendingWatch& p = *it->second;
    for (auto& info : part) p.got[info.user] = std::move(info);
    if (--p.outstanding > 0) return;
    std::vector<PresenceInfo> snapshot;
    for (const auto& u : p.users) snapshot.push_back(p.got[u]);
    auto done = std::move(p.done);
    pending_watches_.erase(it);
    done(std::move(snapshot));
  };
  for (auto& [owner, list] : by_owner) {
    const int me = deps_.core;
    if (owner == me) {
      Subscribe(me, list, true);
      std::vector<PresenceInfo> part;
      for (const auto& u : list) part.push_back(Snapshot(u));
      finish_part(std::move(part));
      continue;
    }
    deps_.router->SubmitToCore(
        me, owner, [&target = on(owner), me, list = list, finish_part]() mutable {
          target.Subscribe(me, list, true);
          std::vector<PresenceInfo> part;
          for (const auto& u : list) part.push_back(target.Snapshot(u));
          target.deps_.router->SubmitToCore(
              target.core(), me,
              [part = std::move(part), finish_part]() mutable { finish_part(std::move(part)); });
        });
  }
}

void EngineShard::Unwatch(Device& device, const std::vector<std::string>& users) {
  const uint64_t session = device.device_session_id();
  std::vector<std::string> unwatched;  // users nobody here watches any more
  for (const auto& u : users) {
    if (presence_.Unwatch(session, u)) unwatched.push_back(u);
  }
  Unsubscribe(unwatched);
}

void EngineShard::Unsubscribe(const std::vector<std::string>& users) {
  absl::flat_hash_map<int, std::vector<std::string>> gone;  // owner -> users
  for (const auto& u : users) gone[deps_.router->CoreOfUser(u)].push_back(u);
  for (auto& [owner, list] : gone) {
    if (owner == deps_.core) {
      Subscribe(owner, list, false);
      continue;
    }
    deps_.router->SubmitToCore(deps_.core, owner,
                               [&target = on(owner), me = deps_.core, list = std::move(list)] {
                                 target.Subscribe(me, list, false);
                               });
  }
}

// ---------------------------------------------------------------- send pipeline

void EngineShard::ReplyTo(int core, Reply<SendResult> reply, SendResult result) {
  if (core == deps_.core) {
    reply(std::move(result));
    return;
  }
  deps_.router->SubmitToCore(deps_.core, core,
                             [reply = std::move(reply), result = std::move(result)]() mutable {
                               reply(std::move(result));
                             });
}

void EngineShard::Send(SendArgs args, int reply_core, Reply<SendResult> reply) {
  // Dedupe state lives with the sender: hop to the sender's owner first.
  const int shard = store::ShardOf(args.from);
  if (deps_.router->CoreOfShard(shard) == deps_.core) {
    SendOnSenderCore(std::move(args), reply_core, std::move(reply));
    return;
  }
  deps_.router->SubmitToShard(
      deps_.core, shard,
      [&target = on(deps_.router->CoreOfShard(shard)), args = std::move(args), reply_core,
       reply = std::move(reply)]() mutable {
        target.SendOnSenderCore(std::move(args), reply_core, std::move(reply));
      });
}

void EngineShard::SendOnSenderCore(SendArgs args, int reply_core, Reply<SendResult> reply) {
  const std::string key = CmidKey(args.from, args.cmid);
  // A send with this cmid is still in flight: answer this one as its duplicate.
  if (auto it = pending_cmids_.find(key); it != pending_cmids_.end()) {
    it->second.waiters.emplace_back(reply_core, std::move(reply));
    return;
  }
  auto existing = deps_.store->GetDedupe(args.from, args.cmid);
  if (!existing.ok()) {
    ReplyTo(reply_core, std::move(reply), Failed(absl::UnavailableError("storage is unavailable")));
    return;
  }
  if (existing->has_value()) {
    const store::DedupeRecord& rec = **existing;
    ReplyTo(reply_core, std::move(reply), {absl::OkStatus(), rec.conv, rec.seq, rec.ts, true});
    return;
  }
  std::string conv;
  std::vector<std::string> members;
  if (!args.to.empty()) {
    conv = proto::DirectConvId(args.from, args.to);
    members.push_back(std::min(args.from, args.to));
    if (args.from != args.to) members.push_back(std::max(args.from, args.to));
  } else {
    conv = proto::GroupConvId(args.group);  // members are known by the group's owner
  }
  PendingCmid& pending = pending_cmids_[key];
  pending.waiters.emplace_back(reply_core, std::move(reply));
  const int shard = store::ShardOf(conv);
  auto shared = std::make_shared<SendArgs>(std::move(args));
  const int origin = deps_.core;
  deps_.router->SubmitToShard(
      deps_.core, shard,
      [&target = on(deps_.router->CoreOfShard(shard)), shared, conv = std::move(conv),
       members = std::move(members), origin]() mutable {
        target.Sequence(std::move(shared), std::move(conv), std::move(members), origin);
      });
}

void EngineShard::SequenceDone(const std::string& from, const std::string& cmid,
                               SendResult result) {
  auto it = pending_cmids_.find(CmidKey(from, cmid));
  if (it == pending_cmids_.end()) return;
  auto waiters = std::move(it->second.waiters);
  pending_cmids_.erase(it);
  bool first = true;
  for (auto& [core, reply] : waiters) {
    SendResult r = result;
    r.dup = !first && result.status.ok();
    first = false;
    ReplyTo(core, std::move(reply), std::move(r));
  }
}

void EngineShard::Sequence(std::shared_ptr<SendArgs> args, std::string conv,
                           std::vector<std::string> members, int origin_core) {
  const int64_t start_us = MonoMicros();
  auto answer = [this, args, origin_core](SendResult result) {
    deps_.router->SubmitToCore(deps_.core, origin_core,
                               [&origin = on(origin_core), args, result]() mutable {
                                 origin.SequenceDone(args->from, args->cmid, std::move(result));
                               });
  };
  if (!args->group.empty()) {
    // The group's owner is this core (a group and its conversation share a shard).
    auto group = LoadGroup(args->group);
    if (!group.ok()) return answer(Failed(absl::UnavailableError("storage is unavailable")));
    if (*group == nullptr) {
      return answer(
          Failed(absl::NotFoundError(StrCat("group '", args->group, "' does not exist"))));
    }
    members = (*group)->members;
    if (!args->admin && std::find(members.begin(), members.end(), args->from) == members.end()) {
      return answer(Failed(absl::PermissionDeniedError("only members may write to a group")));
    }
  }
  auto loaded = LoadConv(conv);
  if (!loaded.ok()) return answer(Failed(absl::UnavailableError("storage is unavailable")));
  ConvState& cs = **loaded;

  auto msg = std::make_shared<Message>();
  msg->conv = conv;
  msg->seq = ++cs.last_seq;
  msg->from = args->from;
  msg->cmid = args->cmid;
  msg->ts = std::max(WallMillis(), cs.last_ts);
  msg->body = std::move(args->body);
  msg->meta_json = std::move(args->meta_json);
  cs.last_ts = msg->ts;

  store::Batch& batch = deps_.writer->current();
  batch.PutMessage(conv, msg->seq,
                   store::MessageRecord{msg->from, msg->cmid, msg->ts, msg->body, msg->meta_json});
  batch.PutDedupe(msg->from, msg->cmid, store::DedupeRecord{conv, msg->seq, msg->ts}, WallMillis());
  if (!cs.marker) {
    batch.PutPendingFanout(conv);
    cs.marker = true;
  }
  stats_.messages_accepted.fetch_add(1, std::memory_order_relaxed);
  // Fan-out starts once the message is written, before it is durable: every inbox append is
  // written after it in the node's single log, so the append's own sync makes both durable
  // (the recipient sees the message after one sync, not two). The sender's ok waits for this
  // batch's sync.
  deps_.writer->OnWritten(
      [this, msg = MessagePtr(msg), members = std::move(members)](const absl::Status& status) {
        if (!status.ok()) return;  // the OnCommit below reports the failure
        auto it = convs_.find(msg->conv);
        if (it != convs_.end()) {
          for (const std::string& m : members) it->second->confirmed.try_emplace(m, msg->seq - 1);
        }
        // One hop per owner, not per member: a 200-member group costs a task per core.
        absl::flat_hash_map<int, std::vector<std::string>> by_owner;
        for (const std::string& member : members) {
          by_owner[deps_.router->CoreOfUser(member)].push_back(member);
        }
        for (auto& [owner, list] : by_owner) {
          deps_.router->SubmitToCore(deps_.core, owner,
                                     [&target = on(owner), list = std::move(list), msg]() mutable {
                                       target.AppendInbox(std::move(list), msg);
                                     });
        }
      });
  deps_.writer->OnCommit(
      [this, msg = MessagePtr(msg), answer, start_us](const absl::Status& status) mutable {
        auto it = convs_.find(msg->conv);
        if (!status.ok()) {
          // Nothing of this conversation that was not durable survives a failed commit: reload
          // its sequence from the store next time. (If the write succeeded and only the sync
          // failed, the message may still become durable; a retry with its cmid then finds it.)
          if (it != convs_.end()) convs_.erase(it);
          answer(Failed(absl::UnavailableError("the message could not be stored; try again")));
          return;
        }
        stats_.send_latency.RecordSince(start_us);
        answer({absl::OkStatus(), msg->conv, msg->seq, msg->ts, false});
        if (it != convs_.end()) {
          ConvState& cs = *it->second;
          cs.durable_seq = std::max(cs.durable_seq, msg->seq);
          // Members may have confirmed their appends before this sync was reported.
          MaybeClearFanoutMarker(msg->conv, cs);
        }
      });
}

void EngineShard::AppendInbox(std::vector<std::string> users, MessagePtr msg) {
  // This core's members of one message: one commit callback and one confirmation hop for all
  // of them (a 200-member group would otherwise cost 200 of each).
  struct Appended {
    std::string user;
    std::vector<std::pair<int64_t, MessagePtr>> entries;  // inbox number, message
  };
  std::vector<Appended> appended_all;
  std::vector<std::string> confirmed_now;  // not a member (any more), or already appended
  auto retry = [this, msg](std::string user) {
    deps_.reactor->RunAfter(kRetryMs, [this, user = std::move(user), msg]() mutable {
      AppendInbox({std::move(user)}, std::move(msg));
    });
  };
  const bool is_group = msg->conv.size() > 2 && msg->conv[0] == 'g';
  store::Batch& batch = deps_.writer->current();
  for (std::string& user : users) {
    auto loaded = LoadUser(user);
    if (!loaded.ok()) {
      retry(std::move(user));
      continue;
    }
    UserState& u = **loaded;
    auto rec_or = LoadUserConv(u, msg->conv, /*create=*/!is_group);
    if (!rec_or.ok()) {
      retry(std::move(user));
      continue;
    }
    store::UserConvRecord* rec = *rec_or;
    if (rec == nullptr || msg->seq <= rec->last_seq) {
      // Not a member (any more), or already appended (a retry or recovery got there first).
      MaybeEvict(user);
      confirmed_now.push_back(std::move(user));
      continue;
    }
    // Append every seq this user has not got yet, in conversation order. Reads of earlier
    // messages happen before anything of this user is added to the batch, so a failed read
    // leaves nothing half-appended.
    std::vector<std::pair<int64_t, MessagePtr>> entries;
    bool read_failed = false;
    for (int64_t s = rec->last_seq + 1; s <= msg->seq; ++s) {
      MessagePtr m = msg;
      if (s != msg->seq) {
        auto stored = deps_.store->GetMessage(msg->conv, s);
        if (!stored.ok()) {
          read_failed = true;
          break;
        }
        if (!stored->has_value()) continue;  // never committed (cannot happen after a commit)
        auto copy = std::make_shared<Message>();
        copy->conv = msg->conv;
        copy->seq = s;
        copy->from = (*stored)->from;
        copy->cmid = (*stored)->cmid;
        copy->ts = (*stored)->ts;
        copy->body = (*stored)->body;
        copy->meta_json = (*stored)->meta_json;
        m = std::move(copy);
      }
      entries.emplace_back(0, std::move(m));
    }
    if (read_failed) {
      retry(std::move(user));
      continue;
    }
    for (auto& [inbox, m] : entries) {
      inbox = ++u.inbox_assigned;
      batch.PutInbox(user, inbox, store::InboxRecord{msg->conv, m->seq, {}});
      rec->last_seq = m->seq;
      rec->last_ts = m->ts;
    }
    NoteUserConvChanged(u, msg->conv);
    ++u.pending;
    stats_.inbox_appends.fetch_add(entries.size(), std::memory_order_relaxed);
    appended_all.push_back(Appended{std::move(user), std::move(entries)});
  }
  if (!confirmed_now.empty()) ConfirmFanout(msg->conv, std::move(confirmed_now), msg->seq);
  if (appended_all.empty()) return;
  deps_.writer->OnCommit([this, appended_all = std::move(appended_all), msg,
                          retry](const absl::Status& status) mutable {
    std::vector<std::string> confirmed;
    confirmed.reserve(appended_all.size());
    for (Appended& a : appended_all) {
      auto it = users_.find(a.user);
      if (it == users_.end()) continue;  // cannot happen: pending keeps it loaded
      UserState& u = *it->second;
      --u.pending;
      if (!status.ok()) {
        // Everything not yet durable failed with this commit: start again from the store.
        u.inbox_assigned = u.inbox_durable;
        u.convs.clear();
        retry(std::move(a.user));
        continue;
      }
      for (auto& [inbox, m] : a.entries) {
        u.inbox_durable = std::max(u.inbox_durable, inbox);
        for (Device* d : u.devices) {
          d->DeliverMessage(inbox, *m);
          stats_.messages_delivered.fetch_add(1, std::memory_order_relaxed);
        }
      }
      MaybeEvict(a.user);
      confirmed.push_back(std::move(a.user));
    }
    if (!confirmed.empty()) ConfirmFanout(msg->conv, std::move(confirmed), msg->seq);
  });
}

void EngineShard::ConfirmFanout(const std::string& conv, std::vector<std::string> members,
                                int64_t seq) {
  const int shard = store::ShardOf(conv);
  deps_.router->SubmitToShard(
      deps_.core, shard,
      [&target = on(deps_.router->CoreOfShard(shard)), conv, members = std::move(members), seq] {
        target.FanoutConfirmed(conv, members, seq);
      });
}

void EngineShard::FanoutConfirmed(const std::string& conv, const std::vector<std::string>& members,
                                  int64_t seq) {
  auto it = convs_.find(conv);
  if (it == convs_.end()) return;  // reloaded after a failure; recovery handles the marker
  ConvState& cs = *it->second;
  for (const std::string& member : members) {
    auto& confirmed = cs.confirmed[member];
    confirmed = std::max(confirmed, seq);
  }
  MaybeClearFanoutMarker(conv, cs);
}

void EngineShard::MaybeClearFanoutMarker(const std::string& conv, ConvState& cs) {
  // The marker can go once every member known to this fan-out has everything durable.
  for (const auto& [m, s] : cs.confirmed) {
    if (s < cs.durable_seq) return;
  }
  if (cs.last_seq != cs.durable_seq || !cs.marker) return;
  cs.marker = false;
  deps_.writer->current().DeletePendingFanout(conv);
}

// ---------------------------------------------------------------- per-user requests

absl::Status EngineShard::Ack(Device& device, int64_t inbox,
                              absl::AnyInvocable<void(absl::Status)> done) {
  auto loaded = LoadUser(device.user());
  if (!loaded.ok()) return absl::UnavailableError("storage is unavailable");
  UserState& u = **loaded;
  if (inbox > u.inbox_durable) {
    return absl::InvalidArgumentError(
        StrCat("ack ", inbox, " is above the inbox_seq ", u.inbox_durable));
  }
  auto it = u.cursors.find(device.device());
  if (it == u.cursors.end()) {
    auto cursor = deps_.store->GetDeviceCursor(u.id, device.device());
    if (!cursor.ok()) return absl::UnavailableError("storage is unavailable");
    it = u.cursors.emplace(device.device(), *cursor).first;
  }
  if (inbox <= it->second) {
    // Lower acks are ignored; but the cursor they are compared with may come from an ack
    // whose commit is still in flight: answer once everything submitted so far is durable.
    deps_.writer->OnCommit([done = std::move(done)](const absl::Status& status) mutable {
      done(status.ok() ? absl::OkStatus() : absl::UnavailableError("the ack could not be stored"));
    });
    return absl::OkStatus();
  }
  it->second = inbox;
  deps_.writer->current().PutDeviceCursor(u.id, device.device(), inbox);
  ++u.pending;
  deps_.writer->OnCommit([this, user = u.id, device_id = device.device(),
                          done = std::move(done)](const absl::Status& status) mutable {
    if (auto it = users_.find(user); it != users_.end()) {
      --it->second->pending;
      if (!status.ok()) it->second->cursors.erase(device_id);
    }
    done(status.ok() ? absl::OkStatus() : absl::UnavailableError("the ack could not be stored"));
    MaybeEvict(user);
  });
  return absl::OkStatus();
}

absl::Status EngineShard::Sync(Device& device, int64_t id, int64_t since, int64_t limit,
                               std::string* out, int64_t* last_returned) {
  auto loaded = LoadUser(device.user());
  if (!loaded.ok()) return absl::UnavailableError("storage is unavailable");
  UserState& u = **loaded;
  if (since < 0) {
    auto it = u.cursors.find(device.device());
    if (it != u.cursors.end()) {
      since = it->second;
    } else {
      auto cursor = deps_.store->GetDeviceCursor(u.id, device.device());
      if (!cursor.ok()) return absl::UnavailableError("storage is unavailable");
      since = *cursor;
      u.cursors.emplace(device.device(), since);
    }
  }
  if (limit < 0) limit = 500;
  std::vector<std::pair<int64_t, store::InboxRecord>> entries;
  bool more = false;
  // Only durable entries are served. Newer ones (in the store, their commit not yet reported
  // to this core) reach this device live once it is, so they do not make "more" true.
  absl::Status st = deps_.store->ReadInbox(u.id, since, static_cast<int>(limit), &entries, &more);
  if (!st.ok()) return absl::UnavailableError("storage is unavailable");
  while (!entries.empty() && entries.back().first > u.inbox_durable) {
    entries.pop_back();
    more = false;
  }
  proto::ListOkWriter w(out, id, "events");
  // What this device has from now on: what it said it had, but nothing past the inbox (a
  // `since` beyond it would otherwise hide the next live events from this connection).
  *last_returned = std::min(since, u.inbox_durable);
  // One answer stays well under limits.max_outbound_bytes, or the answer itself would close
  // the connection as a slow consumer: past the budget, stop early and say "more".
  const size_t budget = ReplyBudget();
  const int64_t first_returned = *last_returned;
  for (const auto& [inbox, rec] : entries) {
    if (*last_returned != first_returned && out->size() >= budget) {
      more = true;
      break;
    }
    *last_returned = inbox;
    if (!rec.event_json.empty()) {
      // Stored events are JSON objects without "inbox": insert it after the opening brace.
      std::string* o = w.Item();
      StrAppend(o, "{\"op\":\"group\",\"inbox\":", inbox, ",",
                std::string_view(rec.event_json).substr(1));
      continue;
    }
    auto msg = deps_.store->GetMessage(rec.conv, rec.seq);
    if (!msg.ok()) return absl::UnavailableError("storage is unavailable");
    if (!msg->has_value()) continue;
    const store::MessageRecord& m = **msg;
    proto::AppendMsg(w.Item(), {rec.conv, rec.seq, m.from, m.cmid, m.ts, m.body, m.meta_json},
                     inbox);
  }
  const std::pair<std::string_view, int64_t> ints[] = {{"inbox_seq", u.inbox_durable}};
  w.Finish(ints, true, more);
  return absl::OkStatus();
}

size_t EngineShard::ReplyBudget() const {
  size_t budget = deps_.config->limits.max_outbound_bytes / 2;
  // Nor may it take more than a quarter of the core's share of the process-wide budget, or a
  // catching-up client would itself be shed as the core's largest queue.
  const uint64_t total = deps_.config->limits.max_outbound_total_bytes;
  const size_t cores = deps_.all != nullptr && !deps_.all->empty() ? deps_.all->size() : 1;
  if (total != 0) budget = std::min<size_t>(budget, total / cores / 4);
  return std::max<size_t>(budget, 1);
}

absl::Status EngineShard::History(const std::string& user, int64_t id, std::string_view conv,
                                  int64_t before, int64_t limit, std::string* out) {
  proto::ConvRef ref;
  if (!proto::ParseConvId(conv, &ref)) {
    return absl::InvalidArgumentError("conv is not a canonical conversation id");
  }
  int64_t first_seq = 0;  // messages up to this one belong to a deleted group of this id
  if (ref.is_group) {
    auto group = deps_.store->GetGroup(ref.group);
    if (!group.ok()) return absl::UnavailableError("storage is unavailable");
    if (!group->has_value()) return absl::NotFoundError("no such group");
    const auto& members = (*group)->members;
    if (std::find(members.begin(), members.end(), user) == members.end()) {
      return absl::PermissionDeniedError("only members may read a group's history");
    }
    first_seq = (*group)->first_seq;
  } else if (ref.a != user && ref.b != user) {
    return absl::PermissionDeniedError("only its two users may read a direct conversation");
  }
  if (limit < 0) limit = 50;
  std::vector<std::pair<int64_t, store::MessageRecord>> msgs;
  bool more = false;
  // Node-local read of the conversation log (any core may read the store), which stops at a
  // deleted group's messages.
  if (!deps_.store->ReadHistory(conv, first_seq, before, static_cast<int>(limit), &msgs, &more)
           .ok()) {
    return absl::UnavailableError("storage is unavailable");
  }
  // As in Sync, the answer stays within a budget of bytes; history pages backwards, so what
  // does not fit are the oldest messages, and "more" sends the client to them.
  const size_t budget = ReplyBudget();
  size_t first = msgs.size();
  size_t bytes = 0;
  while (first > 0) {
    const store::MessageRecord& m = msgs[first - 1].second;
    const size_t size =
        128 + conv.size() + m.from.size() + m.cmid.size() + m.body.size() * 2 + m.meta_json.size();
    if (first != msgs.size() && bytes + size > budget) {
      more = true;
      break;
    }
    bytes += size;
    --first;
  }
  msgs.erase(msgs.begin(), msgs.begin() + static_cast<std::ptrdiff_t>(first));
  proto::ListOkWriter w(out, id, "msgs");
  for (const auto& [seq, m] : msgs) {
    proto::AppendMsg(w.Item(), {conv, seq, m.from, m.cmid, m.ts, m.body, m.meta_json}, -1);
  }
  w.Finish({}, true, more);
  return absl::OkStatus();
}

void EngineShard::Read(Device& device, std::string_view conv_view, int64_t seq,
                       absl::AnyInvocable<void(absl::Status)> done) {
  const std::string conv(conv_view);
  proto::ConvRef ref;
  if (!proto::ParseConvId(conv, &ref)) {
    return done(absl::InvalidArgumentError("conv is not a canonical conversation id"));
  }
  const std::string& user = device.user();
  if (!ref.is_group && ref.a != user && ref.b != user) {
    return done(absl::PermissionDeniedError("not a member of this conversation"));
  }
  auto loaded = LoadUser(user);
  if (!loaded.ok()) return done(absl::UnavailableError("storage is unavailable"));
  UserState& u = **loaded;
  auto rec_or = LoadUserConv(u, conv, /*create=*/!ref.is_group);
  if (!rec_or.ok()) return done(absl::UnavailableError("storage is unavailable"));
  store::UserConvRecord* rec = *rec_or;
  if (rec == nullptr) {
    auto group = deps_.store->GetGroup(ref.group);
    if (group.ok() && !group->has_value()) return done(absl::NotFoundError("no such group"));
    return done(absl::PermissionDeniedError("not a member of this conversation"));
  }
  const int64_t clamped = std::min(seq, rec->last_seq);
  if (clamped <= rec->read_seq) {
    // The position only moves forward, so nothing to write; but the position it is compared
    // with may come from a read whose commit is still in flight, and an `ok` promises
    // durability: answer once everything submitted so far is durable.
    deps_.writer->OnCommit([done = std::move(done)](const absl::Status& status) mutable {
      done(status.ok() ? absl::OkStatus()
                       : absl::UnavailableError("the read position could not be stored"));
    });
    return;
  }
  rec->read_seq = clamped;
  NoteUserConvChanged(u, conv);
  ++u.pending;
  std::vector<std::string> others;
  if (!ref.is_group) {
    const std::string other(ref.a == user ? ref.b : ref.a);
    if (other != user) others.push_back(other);
  } else {
    auto group = deps_.store->GetGroup(ref.group);
    if (group.ok() && group->has_value()) {
      for (const auto& m : (*group)->members) {
        if (m != user) others.push_back(m);
      }
    }
  }
  deps_.writer->OnCommit([this, user, conv, clamped, others = std::move(others),
                          reader = device.device_session_id(),
                          done = std::move(done)](const absl::Status& status) mutable {
    auto it = users_.find(user);
    if (it != users_.end()) --it->second->pending;
    if (!status.ok()) {
      if (it != users_.end()) it->second->convs.erase(conv);
      done(absl::UnavailableError("the read position could not be stored"));
      MaybeEvict(user);
      return;
    }
    auto frame = std::make_shared<std::string>();
    proto::AppendReceipt(frame.get(), conv, user, clamped, WallMillis());
    if (it != users_.end()) {
      for (Device* d : it->second->devices) {
        if (d->device_session_id() != reader) d->DeliverEphemeral(*frame);
      }
    }
    for (const std::string& other : others) {
      const int shard = store::ShardOf(other);
      deps_.router->SubmitToShard(deps_.core, shard,
                                  [&target = on(deps_.router->CoreOfShard(shard)), other, frame] {
                                    auto it = target.users_.find(other);
                                    if (it == target.users_.end()) return;
                                    for (Device* d : it->second->devices) {
                                      d->DeliverEphemeral(*frame);
                                    }
                                  });
    }
    done(absl::OkStatus());
    MaybeEvict(user);
  });
}

absl::Status EngineShard::Convs(const std::string& user, int64_t id, int64_t limit,
                                std::string* out) {
  std::vector<std::pair<std::string, store::UserConvRecord>> convs;
  if (!deps_.store->ReadUserConvs(user, &convs).ok()) {
    return absl::UnavailableError("storage is unavailable");
  }
  // Records changed in memory but not yet committed are newer than the store's.
  if (auto it = users_.find(user); it != users_.end()) {
    for (auto& [conv, rec] : convs) {
      if (auto c = it->second->convs.find(conv); c != it->second->convs.end()) rec = c->second;
    }
  }
  std::sort(convs.begin(), convs.end(), [](const auto& x, const auto& y) {
    if (x.second.last_ts != y.second.last_ts) return x.second.last_ts > y.second.last_ts;
    return x.first < y.first;
  });
  if (limit < 0) limit = 100;
  if (convs.size() > static_cast<size_t>(limit)) convs.resize(static_cast<size_t>(limit));
  proto::ListOkWriter w(out, id, "convs");
  for (const auto& [conv, rec] : convs) {
    std::string* o = w.Item();
    StrAppend(o, "{\"conv\":");
    AppendJsonString(o, conv);
    StrAppend(o, ",\"last_seq\":", rec.last_seq, ",\"last_ts\":", rec.last_ts,
              ",\"read_seq\":", rec.read_seq, "}");
  }
  w.Finish({}, false, false);
  return absl::OkStatus();
}

absl::Status EngineShard::Typing(Device& device, std::string_view to, std::string_view group) {
  const std::string& user = device.user();
  if (!group.empty()) {
    auto rec = deps_.store->GetGroup(group);
    if (!rec.ok()) return absl::UnavailableError("storage is unavailable");
    if (!rec->has_value()) return absl::NotFoundError("no such group");
    const auto& members = (*rec)->members;
    if (std::find(members.begin(), members.end(), user) == members.end()) {
      return absl::PermissionDeniedError("only members may type in a group");
    }
    auto frame = std::make_shared<std::string>();
    proto::AppendTyping(frame.get(), proto::GroupConvId(group), user);
    for (const auto& m : members) {
      if (m == user) continue;
      const int shard = store::ShardOf(m);
      deps_.router->SubmitToShard(deps_.core, shard,
                                  [&target = on(deps_.router->CoreOfShard(shard)), m, frame] {
                                    auto it = target.users_.find(m);
                                    if (it == target.users_.end()) return;
                                    for (Device* d : it->second->devices) {
                                      d->DeliverEphemeral(*frame);
                                    }
                                  });
    }
    return absl::OkStatus();
  }
  if (to == user) return absl::OkStatus();  // never echoed to the typist's own devices
  auto frame = std::make_shared<std::string>();
  proto::AppendTyping(frame.get(), proto::DirectConvId(user, to), user);
  const std::string target_user(to);
  const int shard = store::ShardOf(target_user);
  deps_.router->SubmitToShard(deps_.core, shard,
                              [&target = on(deps_.router->CoreOfShard(shard)), target_user, frame] {
                                auto it = target.users_.find(target_user);
                                if (it == target.users_.end()) return;
                                for (Device* d : it->second->devices) d->DeliverEphemeral(*frame);
                              });
  return absl::OkStatus();
}

// ---------------------------------------------------------------- recovery

absl::Status EngineShard::RecoverGroupEvents(store::Store& store) {
  std::vector<store::PendingGroupEvent> pending;
  if (auto st = store.ListGroupEvents(&pending); !st.ok()) return st;
  // One batch per event: each appends after what the previous one wrote.
  for (const store::PendingGroupEvent& p : pending) {
    const store::GroupEventRecord& e = p.rec;
    auto inbox = store.LastInboxSeq(p.user);
    if (!inbox.ok()) return inbox.status();
    int64_t next = *inbox;
    store::Batch batch = store.NewBatch();
    if (e.leave) {
      // As on the live path, where they are queued ahead of the event: the messages sequenced
      // while the user was a member come first (the fan-out recovery skips non-members).
      auto rec = store.GetUserConv(p.user, e.conv);
      if (!rec.ok()) return rec.status();
      for (int64_t s = rec->has_value() ? (*rec)->last_seq + 1 : e.boundary + 1; s <= e.boundary;
           ++s) {
        auto msg = store.GetMessage(e.conv, s);
        if (!msg.ok()) return msg.status();
        if (!msg->has_value()) continue;
        batch.PutInbox(p.user, ++next, store::InboxRecord{e.conv, s, {}});
      }
    }
    batch.PutInbox(p.user, ++next, store::InboxRecord{e.conv, 0, e.event_json});
    if (e.join) {
      store::UserConvRecord r;
      r.last_seq = e.boundary;
      r.last_ts = e.ts;
      r.joined_seq = e.boundary;
      batch.PutUserConv(p.user, e.conv, r);
    }
    if (e.leave) batch.DeleteUserConv(p.user, e.conv);
    batch.DeleteGroupEvent(p.user, p.order);
    if (auto st = store.Write(batch); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status EngineShard::RecoverFanouts(store::Store& store) {
  std::vector<std::string> convs;
  if (auto st = store.ListPendingFanout(&convs); !st.ok()) return st;
  for (const std::string& conv : convs) {
    proto::ConvRef ref;
    if (!proto::ParseConvId(conv, &ref)) continue;
    auto last = store.LastConvSeq(conv);
    if (!last.ok()) return last.status();
    std::vector<std::string> members;
    if (ref.is_group) {
      auto group = store.GetGroup(ref.group);
      if (!group.ok()) return group.status();
      if (group->has_value()) members = (*group)->members;
    } else {
      members.emplace_back(ref.a);
      if (ref.b != ref.a) members.emplace_back(ref.b);
    }
    store::Batch batch = store.NewBatch();
    for (const std::string& member : members) {
      auto rec = store.GetUserConv(member, conv);
      if (!rec.ok()) return rec.status();
      if (!rec->has_value() && ref.is_group) continue;  // not a member any more
      store::UserConvRecord r = rec->value_or(store::UserConvRecord{});
      auto inbox = store.LastInboxSeq(member);
      if (!inbox.ok()) return inbox.status();
      int64_t next = *inbox;
      for (int64_t s = r.last_seq + 1; s <= *last; ++s) {
        auto msg = store.GetMessage(conv, s);
        if (!msg.ok()) return msg.status();
        if (!msg->has_value()) continue;
        batch.PutInbox(member, ++next, store::InboxRecord{conv, s, {}});
        r.last_seq = s;
        r.last_ts = (*msg)->ts;
      }
      batch.PutUserConv(member, conv, r);
    }
    batch.DeletePendingFanout(conv);
    if (auto st = store.Write(batch); !st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace parley::chat

namespace parley::chat {

// ---------------------------------------------------------------- groups

absl::StatusOr<store::GroupRecord*> EngineShard::LoadGroup(const std::string& group) {
  auto it = groups_.find(group);
  if (it == groups_.end()) {
    auto rec = deps_.store->GetGroup(group);
    if (!rec.ok()) return rec.status();
    it = groups_.emplace(group, std::move(*rec)).first;
  }
  return it->second.has_value() ? &*it->second : nullptr;
}

void EngineShard::Group(GroupOp op, int reply_core, Reply<GroupResult> reply) {
  if (op.kind == GroupOp::kCreate && op.group.empty()) {
    // A server-chosen id: 64 random-looking bits (splitmix64 over time, core and a counter).
    uint64_t x = (group_id_state_ += 0x9E3779B97F4A7C15ull) ^
                 (static_cast<uint64_t>(WallMillis()) << 8) ^ static_cast<uint64_t>(deps_.core);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    x ^= x >> 31;
    static constexpr char kHex[] = "0123456789abcdef";
    op.group = "grp-";
    for (int i = 60; i >= 0; i -= 4) op.group.push_back(kHex[(x >> i) & 0xF]);
  }
  const int shard = store::ShardOf(proto::GroupConvId(op.group));
  const int owner = deps_.router->CoreOfShard(shard);
  if (owner == deps_.core) return GroupOnOwner(std::move(op), reply_core, std::move(reply));
  deps_.router->SubmitToShard(
      deps_.core, shard,
      [&target = on(owner), op = std::move(op), reply_core, reply = std::move(reply)]() mutable {
        target.GroupOnOwner(std::move(op), reply_core, std::move(reply));
      });
}

namespace {
std::string GroupEventJson(std::string_view group, std::string_view change,
                           const std::vector<std::string>& users, std::string_view by, int64_t ts) {
  // Stored without "op" and "inbox"; delivery puts those in front.
  std::string out = "{\"group\":";
  AppendJsonString(&out, group);
  out.append(",\"change\":");
  AppendJsonString(&out, change);
  out.append(",\"users\":[");
  for (size_t i = 0; i < users.size(); ++i) {
    if (i) out.push_back(',');
    AppendJsonString(&out, users[i]);
  }
  out.append("],\"by\":");
  AppendJsonString(&out, by);
  StrAppend(&out, ",\"ts\":", ts, "}");
  return out;
}
}  // namespace

void EngineShard::GroupOnOwner(GroupOp op, int reply_core, Reply<GroupResult> reply) {
  auto answer = [this, reply_core](Reply<GroupResult> reply, GroupResult r) {
    if (reply_core == deps_.core) return reply(std::move(r));
    deps_.router->SubmitToCore(
        deps_.core, reply_core,
        [reply = std::move(reply), r = std::move(r)]() mutable { reply(std::move(r)); });
  };
  auto fail = [&](absl::Status st) {
    GroupResult r;
    r.status = std::move(st);
    answer(std::move(reply), std::move(r));
  };
  const std::string conv = proto::GroupConvId(op.group);
  auto loaded = LoadGroup(op.group);
  if (!loaded.ok()) return fail(absl::UnavailableError("storage is unavailable"));
  store::GroupRecord* rec = *loaded;
  const uint32_t max_size = deps_.config->limits.max_group_size;
  auto is_member = [](const store::GroupRecord& g, const std::string& u) {
    return std::find(g.members.begin(), g.members.end(), u) != g.members.end();
  };
  if (op.kind != GroupOp::kCreate && rec == nullptr) {
    return fail(absl::NotFoundError(StrCat("group '", op.group, "' does not exist")));
  }
  if (op.kind == GroupOp::kInfo) {
    if (!is_member(*rec, op.by)) return fail(absl::PermissionDeniedError("not a member"));
    GroupResult r;
    r.group = op.group;
    r.name = rec->name;
    r.owner = rec->owner;
    r.members = rec->members;
    return answer(std::move(reply), std::move(r));
  }
  auto conv_state = LoadConv(conv);
  if (!conv_state.ok()) return fail(absl::UnavailableError("storage is unavailable"));
  const int64_t join_seq = (*conv_state)->last_seq;
  const int64_t now = WallMillis();

  // The events this change produces, in order, each with the users it concerns.
  struct Event {
    std::shared_ptr<const std::string> json;
    std::vector<std::string> concerned;
    std::vector<std::string> joining;
    std::vector<std::string> leaving;
  };
  std::vector<Event> events;
  store::Batch& batch = deps_.writer->current();
  bool deleted = false;

  auto leave = [&](store::GroupRecord& g, const std::string& who) {
    g.members.erase(std::find(g.members.begin(), g.members.end(), who));
    std::vector<std::string> concerned = g.members;
    concerned.push_back(who);
    events.push_back(
        {std::make_shared<std::string>(GroupEventJson(op.group, "left", {who}, op.by, now)),
         concerned,
         {},
         {who}});
    if (g.members.empty()) {
      deleted = true;
      return;
    }
    if (g.owner == who) {
      g.owner = g.members.front();  // the longest-standing member
      events.push_back(
          {std::make_shared<std::string>(GroupEventJson(op.group, "owner", {g.owner}, op.by, now)),
           g.members,
           {},
           {}});
    }
  };

  switch (op.kind) {
    case GroupOp::kCreate: {
      if (rec != nullptr) {
        return fail(absl::AlreadyExistsError(StrCat("group '", op.group, "' already exists")));
      }
      store::GroupRecord g;
      g.name = op.name;
      g.owner = op.by;
      g.created_ts = now;
      g.first_seq = join_seq;  // after a deleted group's messages, if it had this id
      g.members.push_back(op.by);
      for (const auto& u : op.users) {
        if (std::find(g.members.begin(), g.members.end(), u) == g.members.end()) {
          g.members.push_back(u);
        }
      }
      if (g.members.size() > max_size) {
        return fail(absl::OutOfRangeError(StrCat("a group holds at most ", max_size, " members")));
      }
      events.push_back({std::make_shared<std::string>(
                            GroupEventJson(op.group, "created", g.members, op.by, now)),
                        g.members,
                        g.members,
                        {}});
      groups_[op.group] = std::move(g);
      rec = &*groups_[op.group];
      break;
    }
    case GroupOp::kAdd: {
      if (rec->owner != op.by)
        return fail(absl::PermissionDeniedError("only the owner adds members"));
      std::vector<std::string> added;
      for (const auto& u : op.users) {
        if (!is_member(*rec, u) && std::find(added.begin(), added.end(), u) == added.end()) {
          added.push_back(u);
        }
      }
      if (rec->members.size() + added.size() > max_size) {
        return fail(absl::OutOfRangeError(StrCat("a group holds at most ", max_size, " members")));
      }
      if (added.empty()) break;
      rec->members.insert(rec->members.end(), added.begin(), added.end());
      events.push_back(
          {std::make_shared<std::string>(GroupEventJson(op.group, "added", added, op.by, now)),
           rec->members,
           added,
           {}});
      break;
    }
    case GroupOp::kRemove: {
      if (rec->owner != op.by) {
        return fail(absl::PermissionDeniedError("only the owner removes members"));
      }
      std::vector<std::string> removed;
      bool self = false;
      for (const auto& u : op.users) {
        if (u == op.by) {
          self = true;
        } else if (is_member(*rec, u) &&
                   std::find(removed.begin(), removed.end(), u) == removed.end()) {
          removed.push_back(u);
        }
      }
      if (!removed.empty()) {
        for (const auto& u : removed) {
          rec->members.erase(std::find(rec->members.begin(), rec->members.end(), u));
        }
        std::vector<std::string> concerned = rec->members;
        concerned.insert(concerned.end(), removed.begin(), removed.end());
        events.push_back({std::make_shared<std::string>(
                              GroupEventJson(op.group, "removed", removed, op.by, now)),
                          concerned,
                          {},
                          removed});
      }
      if (self) leave(*rec, op.by);  // the owner removing itself is a leave
      break;
    }
    case GroupOp::kLeave:
      if (!is_member(*rec, op.by)) return fail(absl::PermissionDeniedError("not a member"));
      leave(*rec, op.by);
      break;
    case GroupOp::kInfo:
      break;
  }

  GroupResult result;
  result.group = op.group;
  result.name = rec->name;
  result.owner = rec->owner;
  result.members = rec->members;
  if (deleted) {
    // The conversation's messages stay, and so does its seq: its earlier members' inbox
    // entries point at them (sync must still find them, gapless), and a group created later
    // under this id must neither reuse those seqs nor show those messages (GroupRecord::
    // first_seq).
    batch.DeleteGroup(op.group);
    groups_[op.group] = std::nullopt;
  } else {
    batch.PutGroup(op.group, *rec);
  }
  // Every event is owed to its users' inboxes from the moment the change commits.
  std::vector<std::vector<int64_t>> orders(events.size());  // per event and concerned user
  for (size_t k = 0; k < events.size(); ++k) {
    const Event& e = events[k];
    for (const std::string& user : e.concerned) {
      store::GroupEventRecord pending;
      pending.conv = conv;
      pending.event_json = *e.json;
      pending.boundary = join_seq;
      pending.join = std::find(e.joining.begin(), e.joining.end(), user) != e.joining.end();
      pending.leave = std::find(e.leaving.begin(), e.leaving.end(), user) != e.leaving.end();
      pending.ts = now;
      orders[k].push_back(NextEventOrder());
      batch.PutGroupEvent(user, orders[k].back(), pending);
    }
  }
  // The answer waits for the change to be durable and for every concerned inbox to have its
  // events (nothing acknowledged is lost), and goes out once, failure or success.
  size_t total = 0;
  for (const auto& e : events) total += e.concerned.size();
  struct Pending {
    size_t remaining;  // the commit, then one per concerned user's event
    bool answered = false;
    Reply<GroupResult> reply;
    GroupResult result;
  };
  auto pending =
      std::make_shared<Pending>(Pending{total + 1, false, std::move(reply), std::move(result)});
  auto done_one = [pending, answer]() mutable {
    if (--pending->remaining == 0 && !pending->answered) {
      pending->answered = true;
      answer(std::move(pending->reply), std::move(pending->result));
    }
  };
  // The events start when the change is written, not when it is durable, like a message's
  // inbox appends: each append is written after the change in the node's single log, so its
  // own sync covers both. Starting them here also keeps them ahead of the appends of every
  // message sequenced after the change (those start at their own, later, OnWritten, and
  // travel on the same queue to each user's core): no member's inbox shows a message from a
  // new member before the event that added them.
  deps_.writer->OnWritten([this, conv, events = std::move(events), orders = std::move(orders),
                           join_seq, now, done_one](const absl::Status& status) mutable {
    if (!status.ok()) return;  // nothing was written; OnCommit below answers the failure
    for (size_t k = 0; k < events.size(); ++k) {
      const Event& e = events[k];
      for (size_t i = 0; i < e.concerned.size(); ++i) {
        const std::string& user = e.concerned[i];
        const int64_t order = orders[k][i];
        const bool joining = std::find(e.joining.begin(), e.joining.end(), user) != e.joining.end();
        const bool leaving = std::find(e.leaving.begin(), e.leaving.end(), user) != e.leaving.end();
        const int me = deps_.core;
        const int shard = store::ShardOf(user);
        const int owner = deps_.router->CoreOfShard(shard);
        deps_.router->SubmitToShard(
            me, shard,
            [&target = on(owner), user, conv, json = e.json, js = joining ? join_seq : -1, leaving,
             now, order, me, done_one]() mutable {
              auto confirm = [&target, me, done_one]() mutable {
                target.deps_.router->SubmitToCore(target.core(), me,
                                                  [done_one]() mutable { done_one(); });
              };
              target.AppendGroupEvent(std::move(user), conv, std::move(json), js, leaving, now,
                                      order, std::move(confirm));
            });
      }
    }
  });
  deps_.writer->OnCommit(
      [this, group = op.group, pending, answer, done_one](const absl::Status& status) mutable {
        if (status.ok()) return done_one();
        groups_.erase(group);  // reload the durable state next time
        if (pending->answered) return;
        pending->answered = true;
        GroupResult failed;
        failed.status = absl::UnavailableError("the group change could not be stored");
        answer(std::move(pending->reply), std::move(failed));
      });
}

void EngineShard::AppendGroupEvent(std::string user, std::string conv,
                                   std::shared_ptr<const std::string> event, int64_t join_seq,
                                   bool leave, int64_t ts, int64_t order,
                                   absl::AnyInvocable<void()> confirm) {
  auto shared_confirm = std::make_shared<absl::AnyInvocable<void()>>(std::move(confirm));
  auto retry = [this, user, conv, event, join_seq, leave, ts, order, shared_confirm] {
    deps_.reactor->RunAfter(
        kRetryMs, [this, user, conv, event, join_seq, leave, ts, order, shared_confirm]() mutable {
          AppendGroupEvent(std::move(user), std::move(conv), std::move(event), join_seq, leave, ts,
                           order, [shared_confirm] { (*shared_confirm)(); });
        });
  };
  auto loaded = LoadUser(user);
  if (!loaded.ok()) return retry();
  UserState& u = **loaded;
  store::Batch& batch = deps_.writer->current();
  const int64_t inbox = ++u.inbox_assigned;
  batch.PutInbox(user, inbox, store::InboxRecord{conv, 0, *event});
  batch.DeleteGroupEvent(user, order);
  if (join_seq >= 0) {
    store::UserConvRecord rec;
    rec.last_seq = join_seq;
    rec.last_ts = ts;
    rec.joined_seq = join_seq;
    u.convs[conv] = rec;
    batch.PutUserConv(user, conv, rec);
  }
  if (leave) {
    u.convs.erase(conv);
    batch.DeleteUserConv(user, conv);
  }
  ++u.pending;
  deps_.writer->OnCommit(
      [this, user, inbox, event, shared_confirm, retry](const absl::Status& status) mutable {
        auto it = users_.find(user);
        if (it == users_.end()) return;
        UserState& u = *it->second;
        --u.pending;
        if (!status.ok()) {
          u.inbox_assigned = u.inbox_durable;
          u.convs.clear();
          retry();
          return;
        }
        u.inbox_durable = std::max(u.inbox_durable, inbox);
        for (Device* d : u.devices) d->DeliverStoredEvent(inbox, *event);
        (*shared_confirm)();
        MaybeEvict(user);
      });
}

absl::Status EngineShard::Groups(const std::string& user, int64_t id, std::string* out) {
  std::vector<std::pair<std::string, store::UserConvRecord>> convs;
  if (!deps_.store->ReadUserConvs(user, &convs).ok()) {
    return absl::UnavailableError("storage is unavailable");
  }
  proto::ListOkWriter w(out, id, "groups");
  for (const auto& [conv, rec] : convs) {
    if (conv.size() < 3 || conv[0] != 'g' || conv[1] != ':') continue;
    const std::string group = conv.substr(2);
    auto g = deps_.store->GetGroup(group);  // node-local read of the group's record
    if (!g.ok()) return absl::UnavailableError("storage is unavailable");
    if (!g->has_value()) continue;
    std::string* o = w.Item();
    o->append("{\"group\":");
    AppendJsonString(o, group);
    o->append(",\"name\":");
    AppendJsonString(o, (*g)->name);
    o->push_back('}');
  }
  w.Finish({}, false, false);
  return absl::OkStatus();
}

}  // namespace parley::chat

// The chat engine of one core: the users, conversations and groups whose logical shards this
// core owns, and the steps of every operation that must run on their owner.
//
// Ownership (see Router): a user's inbox, device cursors, read positions and connected devices
// live on the user's owner core; a conversation's sequence lives on the conversation's owner.
// A step that needs another owner is an explicit hop through the Router, with owned data.
//
// Send pipeline (1:1 and group):
//   sender's core   Send: rate/dedupe check (pending cmids in memory, then the store)
//     -> conv owner Sequence: seq = last + 1; one batch = message + dedupe entry + fan-out
//                   marker; after commit: answer the sender, then Fanout to each member
//     -> member     AppendInbox: inbox = last + 1, appending every conversation seq the user
//                   has not got yet (read from the log), so the inbox always follows the
//                   conversation order, even after a failed commit or a crash; after commit:
//                   push live to the member's devices, confirm to the conv owner
//     -> conv owner FanoutConfirmed: once every member has everything, the marker goes.
// A crash between the steps leaves the marker; start-up recovery (RecoverFanouts) finishes
// the fan-out before the node serves.
//
// Group changes (on the group's owner): one batch = the group record + one pending event entry
// per concerned user (store::GroupEventRecord); after commit, each member's owner appends the
// event to the inbox (joining or leaving the conversation) in one batch with the deletion of
// its pending entry; the `ok` waits for all of them. A crash in between leaves the entries;
// start-up recovery (RecoverGroupEvents, before RecoverFanouts) appends them, so a change that
// committed reaches every inbox it concerns even if it was never answered.
//
// Guarantees: per conversation, seqs are gapless and increasing; per user, inbox numbers are
// gapless and increasing and respect each conversation's order; a device sees its live events
// in inbox order; nothing is answered `ok` before it is durable (ShardWriter).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "parley/chat/presence_table.h"
#include "parley/chat/router.h"
#include "parley/config/config.h"
#include "parley/net/reactor.h"
#include "parley/store/shard_writer.h"
#include "parley/store/store.h"
#include "parley/util/latency_histogram.h"

namespace parley::chat {

// A message as sequenced; shared (immutable) between the members' cores.
struct Message {
  std::string conv;
  int64_t seq = 0;
  std::string from;
  std::string cmid;
  int64_t ts = 0;
  std::string body;
  std::string meta_json;
};
using MessagePtr = std::shared_ptr<const Message>;

// A connected device, as the engine sees it (implemented by the WebSocket session).
class Device {
 public:
  virtual ~Device() = default;
  virtual uint64_t device_session_id() const = 0;
  virtual const std::string& user() const = 0;
  virtual const std::string& device() const = 0;
  // An inbox event (msg or group), encoded without its "inbox" field's value decided yet.
  virtual void DeliverMessage(int64_t inbox, const Message& msg) = 0;
  virtual void DeliverStoredEvent(int64_t inbox, std::string_view event_json) = 0;
  // A frame that is not an inbox event (receipt, typing, presence).
  virtual void DeliverEphemeral(std::string_view frame) = 0;
};

struct SendArgs {
  std::string from;
  std::string to;  // exactly one of to / group
  std::string group;
  std::string cmid;
  std::string body;
  std::string meta_json;
  bool admin = false;  // admin API: may post into any group
};

struct SendResult {
  absl::Status status;
  std::string conv;
  int64_t seq = 0;
  int64_t ts = 0;
  bool dup = false;
};

// Runs on the requester's core.
template <typename T>
using Reply = absl::AnyInvocable<void(T)>;

class EngineShard {
 public:
  struct Deps {
    int core = 0;
    const Config* config = nullptr;
    store::Store* store = nullptr;
    store::ShardWriter* writer = nullptr;
    Router* router = nullptr;
    net::Reactor* reactor = nullptr;
    const std::vector<EngineShard*>* all = nullptr;  // every core's engine, by core
  };
  explicit EngineShard(Deps deps);
  ~EngineShard();

  int core() const { return deps_.core; }
  EngineShard& on(int core) { return *(*deps_.all)[core]; }

  // ---- Devices (on the user's core) ----
  // Registers a connected device; returns the user's durable inbox_seq.
  absl::StatusOr<int64_t> AttachDevice(Device* device);
  void DetachDevice(Device* device);

  // ---- Requests (on the requesting user's core, except Send which any core may call) ----
  // Sends a message from args.from; `reply` runs on core `reply_core`.
  void Send(SendArgs args, int reply_core, Reply<SendResult> reply);
  // Cumulative ack of a device; an ack below the cursor is ignored.
  absl::Status Ack(Device& device, int64_t inbox, absl::AnyInvocable<void(absl::Status)> done);
  // Appends the `sync` answer for `device` (since < 0: from its cursor) to *out. Sync and
  // History answer fewer entries than `limit` (with "more") rather than exceed ReplyBudget().
  absl::Status Sync(Device& device, int64_t id, int64_t since, int64_t limit, std::string* out,
                    int64_t* last_returned);
  absl::Status History(const std::string& user, int64_t id, std::string_view conv, int64_t before,
                       int64_t limit, std::string* out);
  void Read(Device& device, std::string_view conv, int64_t seq,
            absl::AnyInvocable<void(absl::Status)> done);
  absl::Status Convs(const std::string& user, int64_t id, int64_t limit, std::string* out);
  absl::Status Typing(Device& device, std::string_view to, std::string_view group);

  // ---- Presence (on the requesting user's core; hops to the watched users' owners) ----
  struct PresenceInfo {
    std::string user;
    std::string_view status;  // "online" | "busy" | "offline"
    int64_t last_seen = 0;    // now, if connected; 0 if never connected (as stored)
  };
  // The `presence` op: "online" or "busy" for all of the user's devices.
  absl::Status SetStatus(Device& device, std::string_view status);
  // Watches `users` for this device; `done` runs on this core with the snapshot in request
  // order. Later changes arrive as presence events until Unwatch or disconnect.
  void Watch(Device& device, std::vector<std::string> users,
             Reply<absl::StatusOr<std::vector<PresenceInfo>>> done);
  void Unwatch(Device& device, const std::vector<std::string>& users);

  // ---- Groups (run on the group's owner; answers come back to `reply_core`) ----
  struct GroupOp {
    enum Kind { kCreate, kAdd, kRemove, kLeave, kInfo } kind = kInfo;
    std::string by;     // the requesting user
    std::string group;  // empty for kCreate: the server picks one
    std::string name;
    std::vector<std::string> users;
  };
  struct GroupResult {
    absl::Status status;
    std::string group;
    std::string name;
    std::string owner;
    std::vector<std::string> members;
  };
  void Group(GroupOp op, int reply_core, Reply<GroupResult> reply);
  // The `groups` op: the user's groups with their names.
  absl::Status Groups(const std::string& user, int64_t id, std::string* out);

  // Called on the engine's core once per reactor loop iteration.
  void Poll();
  // Hands the last-seen times not yet stored to the writer; true if there were any. Poll does
  // this once a second; the server also calls it while draining at shutdown, so a clean stop
  // stores every one.
  bool FlushLastSeen();

  // Start-up, before serving (blocking writes), in this order: appends the group events a
  // crash left owed (joining users' conversation records start where they joined; a leaving
  // user first gets the messages sequenced before it left), then completes every fan-out a
  // crash interrupted.
  static absl::Status RecoverGroupEvents(store::Store& store);
  static absl::Status RecoverFanouts(store::Store& store);

  // Figures for /metrics (relaxed atomics, written by this core only).
  struct Stats {
    std::atomic<uint64_t> messages_accepted{0};
    std::atomic<uint64_t> messages_delivered{0};  // live deliveries to devices
    std::atomic<uint64_t> inbox_appends{0};
    std::atomic<int64_t> online_devices{0};
    std::atomic<int64_t> online_users{0};
    LatencyHistogram send_latency;  // sequencing -> durable commit
  };
  const Stats& stats() const { return stats_; }

 private:
  // Bytes one sync/history answer may take: half of limits.max_outbound_bytes, and at most a
  // quarter of the core's share of limits.max_outbound_total_bytes.
  size_t ReplyBudget() const;
  struct UserState {
    std::string id;
    int64_t inbox_assigned = 0;  // newest inbox number handed out (maybe not durable yet)
    int64_t inbox_durable = 0;   // newest inbox number known durable
    std::vector<Device*> devices;
    // Conversation records touched since the user was loaded (read_seq, last_seq, ...).
    absl::flat_hash_map<std::string, store::UserConvRecord> convs;
    absl::flat_hash_map<std::string, int64_t> cursors;  // device -> acked inbox
    int pending = 0;  // commits in flight that refer to this state
  };
  struct ConvState {
    int64_t last_seq = 0;     // assigned
    int64_t durable_seq = 0;  // committed
    int64_t last_ts = 0;
    bool marker = false;     // fan-out marker present (or being written)
    int64_t fanned_out = 0;  // seq up to which every member has confirmed
    absl::flat_hash_map<std::string, int64_t> confirmed;  // member -> seq confirmed
  };
  struct PendingCmid {
    std::vector<std::pair<int, Reply<SendResult>>> waiters;  // duplicates sent meanwhile
  };

  // Steps of the send pipeline, each on its owner core.
  void SendOnSenderCore(SendArgs args, int reply_core, Reply<SendResult> reply);
  void Sequence(std::shared_ptr<SendArgs> args, std::string conv, std::vector<std::string> members,
                int origin_core);
  void SequenceDone(const std::string& from, const std::string& cmid, SendResult result);
  void AppendInbox(std::vector<std::string> users, MessagePtr msg);
  void ConfirmFanout(const std::string& conv, std::vector<std::string> members, int64_t seq);
  void FanoutConfirmed(const std::string& conv, const std::vector<std::string>& members,
                       int64_t seq);
  void MaybeClearFanoutMarker(const std::string& conv, ConvState& cs);

  absl::StatusOr<UserState*> LoadUser(const std::string& user);
  absl::StatusOr<ConvState*> LoadConv(const std::string& conv);
  absl::StatusOr<store::UserConvRecord*> LoadUserConv(UserState& u, const std::string& conv,
                                                      bool create);
  void MaybeEvict(const std::string& user);
  // The user's record of `conv` (in u.convs) changed and goes into the current batch when the
  // writer seals it: a record rewritten by several messages of one commit is written once.
  void NoteUserConvChanged(const UserState& u, const std::string& conv);
  // The writer's BeforeSeal hook: the latest value of every noted record still held.
  void WriteChangedUserConvs(store::Batch& batch);
  void ReplyTo(int core, Reply<SendResult> reply, SendResult result);

  PresenceInfo Snapshot(const std::string& user);
  void PresenceChanged(const std::string& user);  // owner core: tell the watching cores
  void DeliverPresence(const std::string& user, std::string_view status, int64_t last_seen);
  // Queues a last-seen time for the next FlushLastSeen.
  void NoteLastSeen(const std::string& user, int64_t wall_ms);
  void Subscribe(int core, const std::vector<std::string>& users, bool on);
  // Watcher core: tells the owners that no session here watches `users` any more.
  void Unsubscribe(const std::vector<std::string>& users);

  // A watch request waiting for its snapshots from the owners.
  struct PendingWatch {
    uint64_t session = 0;
    std::vector<std::string> users;
    absl::flat_hash_map<std::string, PresenceInfo> got;
    int outstanding = 0;
    Reply<absl::StatusOr<std::vector<PresenceInfo>>> done;
  };

  // Group state cached on the group's owner; nullopt = known not to exist.
  absl::StatusOr<store::GroupRecord*> LoadGroup(const std::string& group);
  void GroupOnOwner(GroupOp op, int reply_core, Reply<GroupResult> reply);
  // Member's owner: one group event into the user's inbox, joining (join_seq >= 0: the
  // conversation record starts there) or leaving (the record goes) the group's conversation;
  // the same batch deletes the event's pending entry `order`.
  void AppendGroupEvent(std::string user, std::string conv,
                        std::shared_ptr<const std::string> event, int64_t join_seq, bool leave,
                        int64_t ts, int64_t order, absl::AnyInvocable<void()> confirm);
  // A key for a pending group event entry: unique among the entries that can exist at once
  // (this process's; start-up recovery has drained the previous one's) on every core.
  int64_t NextEventOrder() { return (++event_orders_ << 9) | deps_.core; }
  absl::flat_hash_map<std::string, std::optional<store::GroupRecord>> groups_;
  uint64_t group_id_state_ = 0;
  int64_t event_orders_ = 0;

  Deps deps_;
  // Presence of the users this core owns and the watch edges of this core's sessions.
  PresenceTable presence_;
  // Users who came online or went offline since the last FlushLastSeen, with the time. Kept
  // and written once a second: a store write per connect and disconnect would cost a commit
  // and a log sync each when the node is otherwise idle (22 us of CPU per connection).
  absl::flat_hash_map<std::string, int64_t> last_seen_unstored_;
  int64_t last_seen_flush_due_ms_ = 0;  // monotonic
  absl::flat_hash_map<uint64_t, Device*> devices_by_session_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<PendingWatch>> pending_watches_;
  uint64_t next_watch_ = 1;
  absl::flat_hash_map<std::string, std::unique_ptr<UserState>> users_;
  // (user, conv) records changed since the current batch began; see NoteUserConvChanged. A
  // noted user stays loaded until the batch is sealed (its `pending` covers the batch).
  // Looked up by views, so noting a pair already noted (most appends of a busy batch) copies
  // nothing.
  using UserConvView = std::pair<std::string_view, std::string_view>;
  struct UserConvHash {
    using is_transparent = void;
    size_t operator()(UserConvView k) const { return absl::Hash<UserConvView>{}(k); }
  };
  struct UserConvEq {
    using is_transparent = void;
    bool operator()(UserConvView a, UserConvView b) const { return a == b; }
  };
  absl::flat_hash_set<std::pair<std::string, std::string>, UserConvHash, UserConvEq>
      user_convs_changed_;
  absl::flat_hash_map<std::string, std::unique_ptr<ConvState>> convs_;
  absl::flat_hash_map<std::string, PendingCmid> pending_cmids_;  // key: from + '\0' + cmid
  Stats stats_;
};

}  // namespace parley::chat

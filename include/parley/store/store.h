// Durable state of one node: a single RocksDB instance with one column family per logical
// shard.
//
// Placement: every key belongs to the logical shard of the entity that owns it (a user, or a
// conversation; a group's metadata lives with its conversation "g:<group>"), chosen by
// ShardOf(): StableHash(id) % kLogicalShards. The shard count and the hash never change, so
// any core count (and, later, any node) finds the data. Keys are laid out for range scans:
//   'L' conv 0x00 seq(be64)     -> MessageRecord      conversation log
//   'I' user 0x00 inbox(be64)   -> InboxRecord        a user's inbox
//   'X' user 0x00 cmid          -> DedupeRecord       sender's client-message ids
//   'U' user 0x00 conv          -> UserConvRecord     the user's conversations
//   'D' user 0x00 device        -> be64 cursor        per-device acknowledged inbox seq
//   'P' conv                    -> (empty)            fan-out of this conversation in progress
//   'G' group                   -> GroupRecord        group metadata and members
//   'E' user 0x00 order(be64)   -> GroupEventRecord   a group event owed to the user's inbox
//   'S' user                    -> be64 ms            when the user was last connected
// Values are compact binary records (varint lengths), versioned by a leading byte.
//
// Thread-safety: all reads may run on any thread. Writes go through a Batch; a Batch spans
// column families, so a message, its dedupe entry and the fan-out marker commit atomically,
// and so do a group change and the 'E' entries of the events it owes its users' inboxes.
// Compression: LZ4 for upper levels, ZSTD for the bottommost. Dedupe entries older than
// StoreOptions::dedupe_ttl_ms are dropped by a compaction filter.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rocksdb {
class DB;
class Snapshot;
class WriteBatch;
class ColumnFamilyHandle;
}  // namespace rocksdb

namespace parley::store {

inline constexpr int kLogicalShards = 64;

// The logical shard of a user id, conversation id ("d:a:b", "g:x") or group ("g:" + group).
int ShardOf(std::string_view id);

struct StoreOptions {
  std::string data_dir = "./data";
  bool sync = true;  // fsync each commit (storage.sync = "fsync")
  // Write refuses (Unavailable) while the data volume has less free space than this (0 = off).
  uint64_t min_free_bytes = 0;
  uint64_t block_cache_bytes = 128ull << 20;
  uint64_t write_buffer_bytes_total = 256ull << 20;  // all memtables together
  int64_t dedupe_ttl_ms = 48ll * 3600 * 1000;        // protocol promises >= 24 h
};

struct MessageRecord {
  std::string from;
  std::string cmid;
  int64_t ts = 0;
  std::string body;
  std::string meta_json;  // empty = none
};

// An inbox entry either points at a conversation message (conv, seq) or carries a whole
// event (group membership changes), stored as JSON without its "inbox" field.
struct InboxRecord {
  std::string conv;
  int64_t seq = 0;
  std::string event_json;  // non-empty for stored events
};

struct DedupeRecord {
  std::string conv;
  int64_t seq = 0;
  int64_t ts = 0;
};

struct UserConvRecord {
  int64_t last_seq = 0;    // newest conversation seq appended to this user's inbox
  int64_t last_ts = 0;     // its timestamp (conversation activity)
  int64_t read_seq = 0;    // the user's read position
  int64_t joined_seq = 0;  // for groups: the seq when the user joined (history is full anyway)
};

struct GroupRecord {
  std::string name;
  std::string owner;
  std::vector<std::string> members;  // in order of standing (longest-standing first)
  int64_t created_ts = 0;
  // The conversation's last seq when this group was created: 0, unless a deleted group had the
  // same id. A conversation's seq is never reused and its messages are never deleted with the
  // group (earlier members' inbox entries point at them), so a group created again starts
  // after them and does not show them. Absent in records written before it existed (= 0).
  int64_t first_seq = 0;
};

// A group membership event owed to a user's inbox. It is written in the same batch as the
// group change (in the user's shard) and deleted in the same batch as the inbox entry it
// becomes, so a change that committed always reaches every inbox it concerns: what a crash
// leaves behind is appended at start-up (EngineShard::RecoverGroupEvents).
struct GroupEventRecord {
  std::string conv;        // "g:<group>"
  std::string event_json;  // the inbox event (InboxRecord::event_json)
  int64_t boundary = 0;    // the conversation's last seq when the change was made
  bool join = false;       // the user's conversation record starts at `boundary`
  bool leave = false;      // the user gets the messages up to `boundary`, then its record goes
  int64_t ts = 0;          // time of the change (a joining record's last_ts)
};

// A GroupEventRecord with its key: events of one user list in ascending `order`.
struct PendingGroupEvent {
  std::string user;
  int64_t order = 0;
  GroupEventRecord rec;
};

class Store;

// Operations to commit atomically. Not thread-safe; one per writer.
// A Batch must come from Store::NewBatch (operations on an unbound Batch abort: they could not
// be placed). A moved-from Batch stays bound to its Store and is empty (raw() is null until
// its next operation).
class Batch {
 public:
  Batch();
  ~Batch();
  Batch(Batch&&) noexcept;
  Batch& operator=(Batch&&) noexcept;

  void PutMessage(std::string_view conv, int64_t seq, const MessageRecord& msg);
  void PutDedupe(std::string_view sender, std::string_view cmid, const DedupeRecord& rec,
                 int64_t now_ms);
  void PutInbox(std::string_view user, int64_t inbox_seq, const InboxRecord& rec);
  void PutUserConv(std::string_view user, std::string_view conv, const UserConvRecord& rec);
  void DeleteUserConv(std::string_view user, std::string_view conv);
  void PutDeviceCursor(std::string_view user, std::string_view device, int64_t cursor);
  void PutLastSeen(std::string_view user, int64_t wall_ms);
  void PutPendingFanout(std::string_view conv);
  void DeletePendingFanout(std::string_view conv);
  void PutGroup(std::string_view group, const GroupRecord& rec);
  void PutGroupEvent(std::string_view user, int64_t order, const GroupEventRecord& rec);
  void DeleteGroupEvent(std::string_view user, int64_t order);
  void DeleteGroup(std::string_view group);

  bool empty() const;
  size_t ops() const { return ops_; }
  size_t ByteSize() const;
  void Clear();
  // Appends every operation of `other` (merging queued batches into one commit).
  void Append(const Batch& other);
  rocksdb::WriteBatch* raw() { return batch_.get(); }

 private:
  friend class Store;
  void Bind(Store* store);
  rocksdb::WriteBatch& Writable();  // allocates the WriteBatch of a moved-from Batch
  void Put(int shard, std::string_view key, std::string_view value);
  void Delete(int shard, std::string_view key);
  Store* store_ = nullptr;  // set by Store::NewBatch
  std::unique_ptr<rocksdb::WriteBatch> batch_;
  size_t ops_ = 0;
  std::string key_buf_, value_buf_;  // reused encoding space (no allocation per operation)
};

class Store {
 public:
  static absl::StatusOr<std::unique_ptr<Store>> Open(const StoreOptions& options);
  ~Store();

  const StoreOptions& options() const { return options_; }
  Batch NewBatch();
  // Commits a batch (blocking; with fsync when options().sync). Used by ShardWriter's thread
  // and by start-up recovery; never call it on a reactor thread. After a failed write (disk
  // full, I/O error) RocksDB refuses further writes; the next Write asks it to resume first,
  // at most every 100 ms, so writing recovers by itself once the disk has room again.
  absl::Status Write(Batch& batch);
  // The two halves of a synced Write, for group commit that wants to act between them:
  // WriteUnsynced puts the batch in the write-ahead log and the memtables (readable at once,
  // ordered after everything written before); SyncLog makes everything written so far durable.
  // There is one log, so the sync of a later write also makes every earlier write durable.
  absl::Status WriteUnsynced(Batch& batch);
  absl::Status SyncLog();
  // WriteUnsynced for a thread that must not wait (a reactor): nullopt, with nothing written,
  // whenever the write could wait — while another thread writes (RocksDB would queue this
  // write behind it), while a failed write is being recovered from, when the data volume is
  // below min_free_bytes, or when RocksDB would slow or stop the write (a write stall). The
  // caller then hands the batch to a thread that may wait. Otherwise, WriteUnsynced's result.
  std::optional<absl::Status> WriteUnsyncedIfQuick(Batch& batch);

  // What history reads see. Between WriteUnsynced and the SyncLog after it, a write is
  // readable but a crash could still take it back; a conversation's history must not show
  // it. The log syncer takes a snapshot before each sync and publishes it once the sync has
  // succeeded; ReadHistory reads through the newest published one (or everything, when none
  // was ever published: storage without a separate sync).
  using SnapshotRef = std::shared_ptr<const rocksdb::Snapshot>;
  SnapshotRef TakeSnapshot();
  void PublishDurable(SnapshotRef snapshot);

  // ---- Reads (any thread). Missing entries are nullopt / 0 / empty. ----
  absl::StatusOr<std::optional<DedupeRecord>> GetDedupe(std::string_view sender,
                                                        std::string_view cmid);
  absl::StatusOr<int64_t> LastConvSeq(std::string_view conv);
  absl::StatusOr<int64_t> LastInboxSeq(std::string_view user);
  absl::StatusOr<std::optional<MessageRecord>> GetMessage(std::string_view conv, int64_t seq);
  // Up to `limit` messages with after < seq < before (before <= 0: the newest), ascending by
  // seq; *more says whether older messages (still after `after`) exist.
  absl::Status ReadHistory(std::string_view conv, int64_t after, int64_t before, int limit,
                           std::vector<std::pair<int64_t, MessageRecord>>* out, bool* more);
  // Up to `limit` inbox entries with inbox seq > after, ascending; *more says whether
  // entries after the last returned exist.
  absl::Status ReadInbox(std::string_view user, int64_t after, int limit,
                         std::vector<std::pair<int64_t, InboxRecord>>* out, bool* more);
  absl::StatusOr<int64_t> GetDeviceCursor(std::string_view user, std::string_view device);
  // The last-seen time last written (when the user came online or went offline); 0 if never.
  absl::StatusOr<int64_t> GetLastSeen(std::string_view user);
  absl::StatusOr<std::optional<UserConvRecord>> GetUserConv(std::string_view user,
                                                            std::string_view conv);
  absl::Status ReadUserConvs(std::string_view user,
                             std::vector<std::pair<std::string, UserConvRecord>>* out);
  absl::StatusOr<std::optional<GroupRecord>> GetGroup(std::string_view group);
  // Conversations with a fan-out marker, across all shards (start-up recovery).
  absl::Status ListPendingFanout(std::vector<std::string>* convs);
  // Group events owed to inboxes, across all shards; one user's in ascending order.
  absl::Status ListGroupEvents(std::vector<PendingGroupEvent>* events);

  // Storage figures for /metrics (estimates from RocksDB properties).
  struct Stats {
    uint64_t live_data_bytes = 0;
    uint64_t memtable_bytes = 0;
    uint64_t block_cache_bytes = 0;
    uint64_t pending_compaction_bytes = 0;
    // Free space on the data volume (statvfs, measured at most every 100 ms), and whether
    // Write refuses now: less free space than min_free_bytes, or a failed write not yet
    // recovered from.
    uint64_t disk_free_bytes = 0;
    bool writes_refused = false;
  };
  Stats GetStats();

  rocksdb::DB* db() { return db_.get(); }
  rocksdb::ColumnFamilyHandle* shard(int s) { return shards_[s]; }

 private:
  friend class Batch;
  explicit Store(StoreOptions options);
  absl::Status WriteWith(Batch& batch, bool sync);
  StoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  mutable std::mutex durable_mu_;  // taken per history read and per sync, never per message
  SnapshotRef durable_;            // released before db_ closes (declared after it)
  std::vector<rocksdb::ColumnFamilyHandle*> shards_;
  // Set by a failed write; the writers (one thread per shard) share it.
  std::atomic<bool> write_failed_{false};
  std::atomic<int> writes_in_progress_{0};  // RocksDB writes under way (any thread)
  // Free bytes on the data volume, from statvfs at most every 100 ms.
  std::atomic<uint64_t> free_bytes_{UINT64_MAX};
  // Free bytes on the data volume, measured again if the last figure is 100 ms old.
  uint64_t FreeBytes(int64_t now_ms);
  std::atomic<int64_t> free_checked_ms_{-1000};
  std::atomic<int64_t> last_resume_ms_{0};
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace parley::store

// Presence state and the watch graph held by one core: the presence of the users the core owns,
// which cores watch each of those users, and which of the core's connections (sessions) watch
// which users (owned here or elsewhere). Cross-core routing is the engine's business; the table
// only records what this core knows.
//
// Guarantees:
//  - A user is offline while it has no connected device. Connect of its first device makes it
//    online (a further device keeps a "busy"); Disconnect of its last device makes it offline.
//    Both stamp last_seen. SetStatus changes only a connected user's status.
//  - The state of a user that connected once is kept for the table's lifetime; a user never
//    connected reads as offline with last_seen 0.
//  - Watch edges (session, user) form a set: watching twice is one edge. Unwatch and UnwatchAll
//    report exactly the users whose last edge on this core went.
//  - Subscriptions (owner side) are a set of cores, below 64, per owned user.
//  - Memory: a user is stored once (state, reference count and id in one record of 13 bytes plus
//    the id) however many structures refer to it, and freed when none does (users with presence
//    state stay); a watch edge is two 8-byte keys. docs/performance.md has the figures.
//  - Limits: ids of up to 255 bytes (Parley's are at most 64; longer ones are ignored, as if
//    never connected or watched); last_seen in [0, 2^45) ms, i.e. until the year 3085; 65535
//    devices per user.
//  - Single-threaded: only the owning core uses its table. Callbacks must not change the table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"

namespace parley::chat {

enum class PresenceStatus : uint8_t { kOffline = 0, kOnline = 1, kBusy = 2 };

// "offline" | "online" | "busy".
std::string_view PresenceStatusName(PresenceStatus s);

class PresenceTable {
 public:
  PresenceTable();
  ~PresenceTable();
  PresenceTable(const PresenceTable&) = delete;
  PresenceTable& operator=(const PresenceTable&) = delete;

  struct View {
    PresenceStatus status = PresenceStatus::kOffline;
    int64_t last_seen = 0;  // now_ms while connected; 0 if never connected
  };

  // ---- Owner side: the presence of users this core owns ----
  // A device of `user` connected; true if the user went from offline to online.
  bool Connect(std::string_view user, int64_t now_ms);
  // A device of `user` went; true if it was the last one (the user is now offline).
  bool Disconnect(std::string_view user, int64_t now_ms);
  // The status its devices set (kOnline or kBusy); true if it changed. No-op while offline.
  bool SetStatus(std::string_view user, PresenceStatus status);
  View Get(std::string_view user, int64_t now_ms) const;
  uint32_t Devices(std::string_view user) const;
  size_t users() const { return users_; }  // users with presence state (connected once)

  // Owner side: the cores that have a watcher of `user` (bit c = core c).
  void Subscribe(int core, std::string_view user);
  void Unsubscribe(int core, std::string_view user);
  uint64_t Subscribers(std::string_view user) const;

  // ---- Watcher side: this core's sessions watching users of any core ----
  // Adds the edge; true if it is new.
  bool Watch(uint64_t session, std::string_view user);
  // Removes the edge if present; true if it was the last edge to `user` on this core.
  bool Unwatch(uint64_t session, std::string_view user);
  // Removes every edge of `session`, appending the users that no session here watches any more.
  void UnwatchAll(uint64_t session, std::vector<std::string>* unwatched);
  bool IsWatching(uint64_t session, std::string_view user) const;
  size_t WatchCount(uint64_t session) const;  // edges of `session`
  // Calls fn for each session watching `user`, in no particular order.
  void ForEachWatcher(std::string_view user, absl::FunctionRef<void(uint64_t)> fn) const;
  size_t edges() const { return edges_; }

 private:
  // Every user the table refers to has one record, found by its id and named by a Ref (its
  // position in the arena): 8 bytes of state, 4 of reference count, the id's length, the id.
  using Ref = uint32_t;
  static constexpr Ref kNoRef = UINT32_MAX;
  static constexpr size_t kRecordHeader = 13;
  static uint32_t Units(size_t id_len) {
    return static_cast<uint32_t>((kRecordHeader + id_len + 3) / 4);
  }

  // Records in 64 KiB blocks of 4-byte units, with a free list per record size.
  class Arena {
   public:
    static constexpr uint32_t kMaxUnits = (kRecordHeader + 255 + 3) / 4;
    Arena();
    uint32_t Alloc(uint32_t units);  // -> position (in units); kNoRef when full
    void Free(uint32_t pos, uint32_t units);
    char* At(uint32_t pos) const {
      return blocks_[pos >> kBlockBits].get() + size_t{pos & (kBlockUnits - 1)} * 4;
    }

   private:
    static constexpr uint32_t kBlockBits = 14;  // units per block: 16384 (64 KiB)
    static constexpr uint32_t kBlockUnits = uint32_t{1} << kBlockBits;
    std::vector<std::unique_ptr<char[]>> blocks_;
    uint32_t next_ = 0;                  // the first unit never handed out
    uint32_t free_[kMaxUnits + 1] = {};  // per size, the first free position (+1; 0: none)
  };

  // The hash index over records finds a Ref by its id (heterogeneous lookup by string_view).
  struct IdHash {
    using is_transparent = void;
    const PresenceTable* table;
    size_t operator()(std::string_view id) const {
      return absl::Hash<absl::string_view>{}(absl::string_view(id.data(), id.size()));
    }
    size_t operator()(Ref r) const { return (*this)(table->IdOf(r)); }
  };
  struct IdEq {
    using is_transparent = void;
    const PresenceTable* table;
    bool operator()(Ref a, Ref b) const { return a == b; }
    bool operator()(Ref a, std::string_view b) const { return table->IdOf(a) == b; }
    bool operator()(std::string_view a, Ref b) const { return a == table->IdOf(b); }
  };

  // The record's fields. state: bits 0-1 status, 2 has presence state, 3-18 devices,
  // 19-63 last_seen. refs: presence state (1) + subscriptions (1) + watch edges.
  uint64_t State(Ref r) const;
  void SetState(Ref r, uint64_t state);
  uint32_t Refs(Ref r) const;
  void SetRefs(Ref r, uint32_t refs);
  std::string_view IdOf(Ref r) const;
  Ref Find(std::string_view user) const;
  Ref Intern(std::string_view user);  // finds or adds a record with refs 0 (the caller adds one)
  void Release(Ref r);                // drops one reference; the last frees the record

  // A session watching at least one user has a small slot number, so an edge is 8 bytes.
  struct Session {
    uint64_t id = 0;
    uint32_t edges = 0;
  };
  uint32_t SlotOf(uint64_t session) const;  // kNoRef: none
  // Erases a by_user_ edge; true if it was the last edge to its user.
  bool RemoveEdge(absl::btree_set<uint64_t>::iterator edge);
  void DropSlotIfIdle(uint32_t slot);

  Arena arena_;
  absl::flat_hash_set<Ref, IdHash, IdEq> index_;
  size_t users_ = 0;

  absl::flat_hash_map<Ref, uint64_t> subscribers_;  // owned user -> cores watching it

  absl::flat_hash_map<uint64_t, uint32_t> slots_;  // session -> slot
  std::vector<Session> sessions_;                  // by slot
  std::vector<uint32_t> free_slots_;
  absl::btree_set<uint64_t> by_user_;     // ref << 32 | slot
  absl::btree_set<uint64_t> by_session_;  // slot << 32 | ref
  size_t edges_ = 0;
};

}  // namespace parley::chat

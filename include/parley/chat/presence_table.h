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
//  - Single-threaded: only the owning core uses its table. Callbacks must not change the table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"

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
  size_t users() const;  // users with presence state (connected at least once)

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
  size_t edges() const;

 private:
  struct Presence {
    PresenceStatus status = PresenceStatus::kOffline;
    uint16_t devices = 0;
    int64_t last_seen = 0;
  };
  absl::flat_hash_map<std::string, Presence> presence_;
  absl::flat_hash_map<std::string, uint64_t> subscribers_;  // owned user -> cores watching it
  absl::flat_hash_map<std::string, std::vector<uint64_t>> watchers_;          // user -> sessions
  absl::flat_hash_map<uint64_t, absl::flat_hash_set<std::string>> watching_;  // session -> users
  size_t edges_ = 0;
};

}  // namespace parley::chat

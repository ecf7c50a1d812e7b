#include "parley/chat/presence_table.h"

#include <algorithm>

#include "absl/strings/string_view.h"

namespace parley::chat {

std::string_view PresenceStatusName(PresenceStatus s) {
  switch (s) {
    case PresenceStatus::kOnline:
      return "online";
    case PresenceStatus::kBusy:
      return "busy";
    default:
      return "offline";
  }
}

namespace {
// Abseil's heterogeneous lookup takes its own string_view type.
absl::string_view K(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
}  // namespace

PresenceTable::PresenceTable() = default;
PresenceTable::~PresenceTable() = default;

bool PresenceTable::Connect(std::string_view user, int64_t now_ms) {
  Presence& p = presence_[std::string(user)];
  if (p.devices == UINT16_MAX) return false;
  if (p.devices++ > 0) return false;
  p.status = PresenceStatus::kOnline;
  p.last_seen = now_ms;
  return true;
}

bool PresenceTable::Disconnect(std::string_view user, int64_t now_ms) {
  auto it = presence_.find(K(user));
  if (it == presence_.end() || it->second.devices == 0) return false;
  Presence& p = it->second;
  if (--p.devices > 0) return false;
  p.status = PresenceStatus::kOffline;
  p.last_seen = now_ms;
  return true;
}

bool PresenceTable::SetStatus(std::string_view user, PresenceStatus status) {
  auto it = presence_.find(K(user));
  if (it == presence_.end() || it->second.devices == 0 || status == PresenceStatus::kOffline ||
      it->second.status == status) {
    return false;
  }
  it->second.status = status;
  return true;
}

PresenceTable::View PresenceTable::Get(std::string_view user, int64_t now_ms) const {
  auto it = presence_.find(K(user));
  if (it == presence_.end()) return {};
  return {it->second.status, it->second.devices > 0 ? now_ms : it->second.last_seen};
}

uint32_t PresenceTable::Devices(std::string_view user) const {
  auto it = presence_.find(K(user));
  return it == presence_.end() ? 0 : it->second.devices;
}

size_t PresenceTable::users() const {
  return presence_.size();
}

void PresenceTable::Subscribe(int core, std::string_view user) {
  subscribers_[std::string(user)] |= uint64_t{1} << core;
}

void PresenceTable::Unsubscribe(int core, std::string_view user) {
  auto it = subscribers_.find(K(user));
  if (it == subscribers_.end()) return;
  it->second &= ~(uint64_t{1} << core);
  if (it->second == 0) subscribers_.erase(it);
}

uint64_t PresenceTable::Subscribers(std::string_view user) const {
  auto it = subscribers_.find(K(user));
  return it == subscribers_.end() ? 0 : it->second;
}

bool PresenceTable::Watch(uint64_t session, std::string_view user) {
  if (!watching_[session].insert(std::string(user)).second) return false;
  watchers_[std::string(user)].push_back(session);
  ++edges_;
  return true;
}

bool PresenceTable::Unwatch(uint64_t session, std::string_view user) {
  auto mine = watching_.find(session);
  if (mine == watching_.end()) return false;
  auto u = mine->second.find(K(user));
  if (u == mine->second.end()) return false;
  mine->second.erase(u);
  if (mine->second.empty()) watching_.erase(mine);
  --edges_;
  auto it = watchers_.find(K(user));
  if (it == watchers_.end()) return false;
  auto& v = it->second;
  v.erase(std::remove(v.begin(), v.end(), session), v.end());
  if (!v.empty()) return false;
  watchers_.erase(it);
  return true;
}

void PresenceTable::UnwatchAll(uint64_t session, std::vector<std::string>* unwatched) {
  auto mine = watching_.find(session);
  if (mine == watching_.end()) return;
  const std::vector<std::string> users(mine->second.begin(), mine->second.end());
  for (const std::string& u : users) {
    if (Unwatch(session, u)) unwatched->push_back(u);
  }
}

bool PresenceTable::IsWatching(uint64_t session, std::string_view user) const {
  auto mine = watching_.find(session);
  return mine != watching_.end() && mine->second.contains(K(user));
}

size_t PresenceTable::WatchCount(uint64_t session) const {
  auto mine = watching_.find(session);
  return mine == watching_.end() ? 0 : mine->second.size();
}

void PresenceTable::ForEachWatcher(std::string_view user,
                                   absl::FunctionRef<void(uint64_t)> fn) const {
  auto it = watchers_.find(K(user));
  if (it == watchers_.end()) return;
  for (uint64_t session : it->second) fn(session);
}

size_t PresenceTable::edges() const {
  return edges_;
}

}  // namespace parley::chat

#include "parley/chat/presence_table.h"

#include <algorithm>
#include <cstring>
#include <iterator>

namespace parley::chat {

namespace {

// A record's state: status (2 bits), has-presence-state (1), devices (16), last_seen (45).
constexpr uint64_t kStatusMask = 3;
constexpr uint64_t kKnown = 4;
constexpr int kDevicesShift = 3;
constexpr uint64_t kMaxDevices = 0xFFFF;
constexpr int kLastSeenShift = 19;
constexpr int64_t kMaxLastSeen = (int64_t{1} << (64 - kLastSeenShift)) - 1;

PresenceStatus StatusOf(uint64_t s) {
  return static_cast<PresenceStatus>(s & kStatusMask);
}
uint32_t DevicesOf(uint64_t s) {
  return static_cast<uint32_t>((s >> kDevicesShift) & kMaxDevices);
}
int64_t LastSeenOf(uint64_t s) {
  return static_cast<int64_t>(s >> kLastSeenShift);
}

uint64_t Pack(PresenceStatus status, uint32_t devices, int64_t last_seen) {
  const int64_t t = std::clamp<int64_t>(last_seen, 0, kMaxLastSeen);
  return static_cast<uint64_t>(status) | kKnown | uint64_t{devices} << kDevicesShift |
         static_cast<uint64_t>(t) << kLastSeenShift;
}

uint64_t WithDevices(uint64_t s, uint32_t devices) {
  return (s & ~(kMaxDevices << kDevicesShift)) | uint64_t{devices} << kDevicesShift;
}

constexpr size_t kMaxIdBytes = 255;  // one length byte

}  // namespace

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

// ---------------------------------------------------------------- records

PresenceTable::Arena::Arena() = default;

uint32_t PresenceTable::Arena::Alloc(uint32_t units) {
  if (free_[units] != 0) {
    const uint32_t pos = free_[units] - 1;
    std::memcpy(&free_[units], At(pos), sizeof(uint32_t));
    return pos;
  }
  const uint32_t offset = next_ & (kBlockUnits - 1);
  if (offset != 0 && offset + units > kBlockUnits) {
    // The rest of the block is too small: it serves a record of its size later, if any.
    Free(next_, kBlockUnits - offset);
    next_ += kBlockUnits - offset;
  }
  if (next_ > kNoRef - kBlockUnits) return kNoRef;  // 16 GiB of records
  if ((next_ >> kBlockBits) == blocks_.size()) {
    blocks_.push_back(std::make_unique<char[]>(size_t{kBlockUnits} * 4));
  }
  const uint32_t pos = next_;
  next_ += units;
  return pos;
}

void PresenceTable::Arena::Free(uint32_t pos, uint32_t units) {
  std::memcpy(At(pos), &free_[units], sizeof(uint32_t));
  free_[units] = pos + 1;
}

uint64_t PresenceTable::State(Ref r) const {
  uint64_t s;
  std::memcpy(&s, arena_.At(r), sizeof s);
  return s;
}

void PresenceTable::SetState(Ref r, uint64_t state) {
  std::memcpy(arena_.At(r), &state, sizeof state);
}

uint32_t PresenceTable::Refs(Ref r) const {
  uint32_t n;
  std::memcpy(&n, arena_.At(r) + 8, sizeof n);
  return n;
}

void PresenceTable::SetRefs(Ref r, uint32_t refs) {
  std::memcpy(arena_.At(r) + 8, &refs, sizeof refs);
}

std::string_view PresenceTable::IdOf(Ref r) const {
  const char* p = arena_.At(r);
  return {p + kRecordHeader, static_cast<uint8_t>(p[12])};
}

PresenceTable::PresenceTable() : index_(0, IdHash{this}, IdEq{this}) {}
PresenceTable::~PresenceTable() = default;

PresenceTable::Ref PresenceTable::Find(std::string_view user) const {
  auto it = index_.find(user);
  return it == index_.end() ? kNoRef : *it;
}

PresenceTable::Ref PresenceTable::Intern(std::string_view user) {
  if (user.size() > kMaxIdBytes) return kNoRef;
  if (auto it = index_.find(user); it != index_.end()) return *it;
  const Ref r = arena_.Alloc(Units(user.size()));
  if (r == kNoRef) return kNoRef;
  char* p = arena_.At(r);
  std::memset(p, 0, 12);
  p[12] = static_cast<char>(user.size());
  std::memcpy(p + kRecordHeader, user.data(), user.size());
  index_.insert(r);  // hashes the id just stored
  return r;
}

void PresenceTable::Release(Ref r) {
  const uint32_t refs = Refs(r) - 1;
  if (refs > 0) return SetRefs(r, refs);
  index_.erase(r);  // while the id is still there to hash
  arena_.Free(r, Units(IdOf(r).size()));
}

// ---------------------------------------------------------------- presence

bool PresenceTable::Connect(std::string_view user, int64_t now_ms) {
  const Ref r = Intern(user);
  if (r == kNoRef) return false;
  uint64_t state = State(r);
  if (!(state & kKnown)) {
    state |= kKnown;
    SetState(r, state);
    SetRefs(r, Refs(r) + 1);
    ++users_;
  }
  const uint32_t devices = DevicesOf(state);
  if (devices == kMaxDevices) return false;
  if (devices > 0) {
    SetState(r, WithDevices(state, devices + 1));
    return false;
  }
  SetState(r, Pack(PresenceStatus::kOnline, 1, now_ms));
  return true;
}

bool PresenceTable::Disconnect(std::string_view user, int64_t now_ms) {
  const Ref r = Find(user);
  if (r == kNoRef) return false;
  const uint64_t state = State(r);
  const uint32_t devices = DevicesOf(state);
  if (devices == 0) return false;
  if (devices > 1) {
    SetState(r, WithDevices(state, devices - 1));
    return false;
  }
  SetState(r, Pack(PresenceStatus::kOffline, 0, now_ms));
  return true;
}

bool PresenceTable::SetStatus(std::string_view user, PresenceStatus status) {
  const Ref r = Find(user);
  if (r == kNoRef || status == PresenceStatus::kOffline) return false;
  const uint64_t state = State(r);
  if (DevicesOf(state) == 0 || StatusOf(state) == status) return false;
  SetState(r, (state & ~kStatusMask) | static_cast<uint64_t>(status));
  return true;
}

PresenceTable::View PresenceTable::Get(std::string_view user, int64_t now_ms) const {
  const Ref r = Find(user);
  if (r == kNoRef) return {};
  const uint64_t s = State(r);
  if (!(s & kKnown)) return {};
  return {StatusOf(s), DevicesOf(s) > 0 ? now_ms : LastSeenOf(s)};
}

uint32_t PresenceTable::Devices(std::string_view user) const {
  const Ref r = Find(user);
  return r == kNoRef ? 0 : DevicesOf(State(r));
}

// ---------------------------------------------------------------- subscriptions

void PresenceTable::Subscribe(int core, std::string_view user) {
  const Ref r = Intern(user);
  if (r == kNoRef) return;
  auto [it, inserted] = subscribers_.try_emplace(r, 0);
  if (inserted) SetRefs(r, Refs(r) + 1);
  it->second |= uint64_t{1} << core;
}

void PresenceTable::Unsubscribe(int core, std::string_view user) {
  const Ref r = Find(user);
  if (r == kNoRef) return;
  auto it = subscribers_.find(r);
  if (it == subscribers_.end()) return;
  it->second &= ~(uint64_t{1} << core);
  if (it->second != 0) return;
  subscribers_.erase(it);
  Release(r);
}

uint64_t PresenceTable::Subscribers(std::string_view user) const {
  const Ref r = Find(user);
  if (r == kNoRef) return 0;
  auto it = subscribers_.find(r);
  return it == subscribers_.end() ? 0 : it->second;
}

// ---------------------------------------------------------------- watch edges

uint32_t PresenceTable::SlotOf(uint64_t session) const {
  auto it = slots_.find(session);
  return it == slots_.end() ? kNoRef : it->second;
}

void PresenceTable::DropSlotIfIdle(uint32_t slot) {
  if (sessions_[slot].edges > 0) return;
  slots_.erase(sessions_[slot].id);
  free_slots_.push_back(slot);
}

bool PresenceTable::RemoveEdge(absl::btree_set<uint64_t>::iterator edge) {
  const Ref r = static_cast<Ref>(*edge >> 32);
  auto next = by_user_.erase(edge);
  --edges_;
  // The user's other edges, if any, are next to the one that went.
  if (next != by_user_.end() && (*next >> 32) == r) return false;
  return next == by_user_.begin() || (*std::prev(next) >> 32) != r;
}

bool PresenceTable::Watch(uint64_t session, std::string_view user) {
  const Ref r = Intern(user);
  if (r == kNoRef) return false;
  uint32_t slot = SlotOf(session);
  if (slot == kNoRef) {
    if (!free_slots_.empty()) {
      slot = free_slots_.back();
      free_slots_.pop_back();
    } else {
      slot = static_cast<uint32_t>(sessions_.size());
      sessions_.emplace_back();
    }
    sessions_[slot] = Session{session, 0};
    slots_.emplace(session, slot);
  }
  // An existing edge means r and slot were there already, so nothing new is left unreferenced.
  if (!by_user_.insert(uint64_t{r} << 32 | slot).second) return false;
  by_session_.insert(uint64_t{slot} << 32 | r);
  SetRefs(r, Refs(r) + 1);
  ++sessions_[slot].edges;
  ++edges_;
  return true;
}

bool PresenceTable::Unwatch(uint64_t session, std::string_view user) {
  const Ref r = Find(user);
  const uint32_t slot = SlotOf(session);
  if (r == kNoRef || slot == kNoRef) return false;
  auto edge = by_user_.find(uint64_t{r} << 32 | slot);
  if (edge == by_user_.end()) return false;
  by_session_.erase(uint64_t{slot} << 32 | r);
  const bool last = RemoveEdge(edge);
  --sessions_[slot].edges;
  DropSlotIfIdle(slot);
  Release(r);
  return last;
}

void PresenceTable::UnwatchAll(uint64_t session, std::vector<std::string>* unwatched) {
  const uint32_t slot = SlotOf(session);
  if (slot == kNoRef) return;
  const auto first = by_session_.lower_bound(uint64_t{slot} << 32);
  auto end = first;
  std::vector<Ref> refs;
  refs.reserve(sessions_[slot].edges);
  for (; end != by_session_.end() && (*end >> 32) == slot; ++end) {
    refs.push_back(static_cast<Ref>(*end));
  }
  by_session_.erase(first, end);
  for (Ref r : refs) {
    if (RemoveEdge(by_user_.find(uint64_t{r} << 32 | slot))) unwatched->emplace_back(IdOf(r));
    Release(r);
  }
  sessions_[slot].edges = 0;
  DropSlotIfIdle(slot);
}

bool PresenceTable::IsWatching(uint64_t session, std::string_view user) const {
  const Ref r = Find(user);
  const uint32_t slot = SlotOf(session);
  return r != kNoRef && slot != kNoRef && by_user_.contains(uint64_t{r} << 32 | slot);
}

size_t PresenceTable::WatchCount(uint64_t session) const {
  const uint32_t slot = SlotOf(session);
  return slot == kNoRef ? 0 : sessions_[slot].edges;
}

void PresenceTable::ForEachWatcher(std::string_view user,
                                   absl::FunctionRef<void(uint64_t)> fn) const {
  const Ref r = Find(user);
  if (r == kNoRef) return;
  for (auto it = by_user_.lower_bound(uint64_t{r} << 32); it != by_user_.end() && (*it >> 32) == r;
       ++it) {
    fn(sessions_[static_cast<uint32_t>(*it)].id);
  }
}

}  // namespace parley::chat

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "parley/chat/presence_table.h"

using parley::chat::PresenceStatus;
using parley::chat::PresenceStatusName;
using parley::chat::PresenceTable;

namespace {

constexpr int64_t kT0 = 1764380000123;  // a wall-clock millisecond value of today's magnitude

std::vector<uint64_t> WatchersOf(const PresenceTable& t, std::string_view user) {
  std::vector<uint64_t> out;
  t.ForEachWatcher(user, [&](uint64_t s) { out.push_back(s); });
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> Sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// An id of `len` bytes from the id alphabet, distinct per n.
std::string IdOf(size_t n, size_t len) {
  static constexpr char kAlphabet[] =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.@-";
  std::string s(len, 'x');
  for (size_t i = 0; i < len; ++i) {
    s[len - 1 - i] = kAlphabet[n % 66];
    n /= 66;
  }
  return s;
}

}  // namespace

TEST_CASE("status names", "[chat][presence]") {
  CHECK(PresenceStatusName(PresenceStatus::kOffline) == "offline");
  CHECK(PresenceStatusName(PresenceStatus::kOnline) == "online");
  CHECK(PresenceStatusName(PresenceStatus::kBusy) == "busy");
}

TEST_CASE("a user never connected is offline with last_seen 0", "[chat][presence]") {
  PresenceTable t;
  const auto v = t.Get("bob", kT0);
  CHECK(v.status == PresenceStatus::kOffline);
  CHECK(v.last_seen == 0);
  CHECK(t.Devices("bob") == 0);
  // Neither a status request nor a disconnect of an unknown user creates state.
  CHECK_FALSE(t.SetStatus("bob", PresenceStatus::kBusy));
  CHECK_FALSE(t.Disconnect("bob", kT0));
  CHECK(t.Get("bob", kT0).status == PresenceStatus::kOffline);
  CHECK(t.Get("bob", kT0).last_seen == 0);
  CHECK(t.users() == 0);
}

TEST_CASE("the first device makes a user online; last_seen is now while connected",
          "[chat][presence]") {
  PresenceTable t;
  CHECK(t.Connect("alice", kT0));
  CHECK(t.users() == 1);
  CHECK(t.Devices("alice") == 1);
  auto v = t.Get("alice", kT0 + 5000);
  CHECK(v.status == PresenceStatus::kOnline);
  CHECK(v.last_seen == kT0 + 5000);
  // A second device is no change.
  CHECK_FALSE(t.Connect("alice", kT0 + 10));
  CHECK(t.Devices("alice") == 2);
  CHECK(t.users() == 1);
}

TEST_CASE("only the last device going makes a user offline, stamping last_seen",
          "[chat][presence]") {
  PresenceTable t;
  REQUIRE(t.Connect("alice", kT0));
  REQUIRE_FALSE(t.Connect("alice", kT0 + 1));
  REQUIRE_FALSE(t.Connect("alice", kT0 + 2));
  CHECK_FALSE(t.Disconnect("alice", kT0 + 100));
  CHECK(t.Get("alice", kT0 + 150).status == PresenceStatus::kOnline);
  CHECK_FALSE(t.Disconnect("alice", kT0 + 200));
  CHECK(t.Disconnect("alice", kT0 + 300));
  CHECK(t.Devices("alice") == 0);
  const auto v = t.Get("alice", kT0 + 99999);
  CHECK(v.status == PresenceStatus::kOffline);
  CHECK(v.last_seen == kT0 + 300);
  // A further disconnect (no device left) changes nothing.
  CHECK_FALSE(t.Disconnect("alice", kT0 + 400));
  CHECK(t.Get("alice", kT0 + 500).last_seen == kT0 + 300);
  CHECK(t.users() == 1);  // the state stays for the table's lifetime
}

TEST_CASE("status requests change only a connected user's status", "[chat][presence]") {
  PresenceTable t;
  REQUIRE(t.Connect("alice", kT0));
  CHECK_FALSE(t.SetStatus("alice", PresenceStatus::kOnline));  // already online
  CHECK(t.SetStatus("alice", PresenceStatus::kBusy));
  CHECK(t.Get("alice", kT0).status == PresenceStatus::kBusy);
  CHECK_FALSE(t.SetStatus("alice", PresenceStatus::kBusy));
  CHECK_FALSE(t.SetStatus("alice", PresenceStatus::kOffline));  // only devices make offline
  CHECK(t.Get("alice", kT0).status == PresenceStatus::kBusy);
  // A further device keeps "busy".
  CHECK_FALSE(t.Connect("alice", kT0 + 1));
  CHECK(t.Get("alice", kT0).status == PresenceStatus::kBusy);
  CHECK(t.SetStatus("alice", PresenceStatus::kOnline));
  CHECK(t.SetStatus("alice", PresenceStatus::kBusy));
  REQUIRE_FALSE(t.Disconnect("alice", kT0 + 2));
  REQUIRE(t.Disconnect("alice", kT0 + 3));
  // Offline: a status request is ignored, and a new first device starts online again.
  CHECK_FALSE(t.SetStatus("alice", PresenceStatus::kBusy));
  CHECK(t.Get("alice", kT0 + 4).status == PresenceStatus::kOffline);
  CHECK(t.Connect("alice", kT0 + 5));
  CHECK(t.Get("alice", kT0 + 6).status == PresenceStatus::kOnline);
}

TEST_CASE("users' states are independent, whatever their ids' lengths", "[chat][presence]") {
  PresenceTable t;
  // Ids of 1 to 64 bytes, including ones that are prefixes of one another.
  std::vector<std::string> ids;
  for (size_t len : {1, 7, 8, 15, 16, 17, 23, 24, 31, 32, 63, 64}) {
    const size_t count = len == 1 ? 60 : 300;  // 66 one-byte ids exist
    for (size_t n = 0; n < count; ++n) ids.push_back(IdOf(n, len));
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    REQUIRE(t.Connect(ids[i], kT0 + static_cast<int64_t>(i)));
    if (i % 3 == 1) REQUIRE(t.SetStatus(ids[i], PresenceStatus::kBusy));
    if (i % 3 == 2) REQUIRE(t.Disconnect(ids[i], kT0 + 1000000 + static_cast<int64_t>(i)));
  }
  CHECK(t.users() == ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto v = t.Get(ids[i], 1);
    INFO(ids[i]);
    switch (i % 3) {
      case 0:
        CHECK(v.status == PresenceStatus::kOnline);
        CHECK(v.last_seen == 1);
        CHECK(t.Devices(ids[i]) == 1);
        break;
      case 1:
        CHECK(v.status == PresenceStatus::kBusy);
        break;
      case 2:
        CHECK(v.status == PresenceStatus::kOffline);
        CHECK(v.last_seen == kT0 + 1000000 + static_cast<int64_t>(i));
        CHECK(t.Devices(ids[i]) == 0);
        break;
    }
  }
  CHECK(t.Get(IdOf(301, 16), 1).status == PresenceStatus::kOffline);
  CHECK(t.Get(IdOf(301, 16), 1).last_seen == 0);
}

TEST_CASE("device counts and last_seen keep their full range", "[chat][presence]") {
  PresenceTable t;
  const int64_t far = (int64_t{1} << 44) + 12345;  // the year 2527
  REQUIRE(t.Connect("u", 0));
  for (int i = 1; i < 1000; ++i) REQUIRE_FALSE(t.Connect("u", 0));
  CHECK(t.Devices("u") == 1000);
  for (int i = 1; i < 1000; ++i) REQUIRE_FALSE(t.Disconnect("u", 0));
  CHECK(t.Disconnect("u", far));
  CHECK(t.Get("u", 0).last_seen == far);
}

TEST_CASE("subscriptions are a set of cores per user", "[chat][presence]") {
  PresenceTable t;
  CHECK(t.Subscribers("bob") == 0);
  t.Subscribe(0, "bob");
  t.Subscribe(3, "bob");
  t.Subscribe(3, "bob");
  t.Subscribe(63, "bob");
  t.Subscribe(1, "carol");
  CHECK(t.Subscribers("bob") == ((uint64_t{1} << 0) | (uint64_t{1} << 3) | (uint64_t{1} << 63)));
  CHECK(t.Subscribers("carol") == 2);
  t.Unsubscribe(3, "bob");
  CHECK(t.Subscribers("bob") == ((uint64_t{1} << 0) | (uint64_t{1} << 63)));
  t.Unsubscribe(5, "bob");  // not subscribed: no change
  t.Unsubscribe(5, "dave");
  CHECK(t.Subscribers("dave") == 0);
  t.Unsubscribe(0, "bob");
  t.Unsubscribe(63, "bob");
  CHECK(t.Subscribers("bob") == 0);
  CHECK(t.Subscribers("carol") == 2);
  // Subscriptions are not presence: a subscribed user never connected stays unknown.
  CHECK(t.users() == 0);
  CHECK(t.Get("carol", kT0).last_seen == 0);
}

TEST_CASE("watch edges are a set", "[chat][presence]") {
  PresenceTable t;
  CHECK(t.Watch(1, "bob"));
  CHECK_FALSE(t.Watch(1, "bob"));
  CHECK(t.Watch(1, "carol"));
  CHECK(t.Watch(2, "bob"));
  CHECK(t.edges() == 3);
  CHECK(t.WatchCount(1) == 2);
  CHECK(t.WatchCount(2) == 1);
  CHECK(t.WatchCount(3) == 0);
  CHECK(t.IsWatching(1, "carol"));
  CHECK_FALSE(t.IsWatching(2, "carol"));
  CHECK_FALSE(t.IsWatching(3, "bob"));
  CHECK(WatchersOf(t, "bob") == std::vector<uint64_t>{1, 2});
  CHECK(WatchersOf(t, "carol") == std::vector<uint64_t>{1});
  CHECK(WatchersOf(t, "dave").empty());
  // Edges are not presence.
  CHECK(t.users() == 0);
  CHECK(t.Get("bob", kT0).status == PresenceStatus::kOffline);
}

TEST_CASE("unwatch reports the last edge to a user", "[chat][presence]") {
  PresenceTable t;
  REQUIRE(t.Watch(1, "bob"));
  REQUIRE(t.Watch(2, "bob"));
  REQUIRE(t.Watch(2, "carol"));
  CHECK_FALSE(t.Unwatch(1, "carol"));  // no such edge
  CHECK_FALSE(t.Unwatch(9, "bob"));    // no such session
  CHECK(t.edges() == 3);
  CHECK_FALSE(t.Unwatch(1, "bob"));  // session 2 still watches bob
  CHECK(WatchersOf(t, "bob") == std::vector<uint64_t>{2});
  CHECK_FALSE(t.Unwatch(1, "bob"));  // gone already
  CHECK(t.Unwatch(2, "bob"));
  CHECK(WatchersOf(t, "bob").empty());
  CHECK(t.WatchCount(2) == 1);
  CHECK(t.Unwatch(2, "carol"));
  CHECK(t.WatchCount(2) == 0);
  CHECK(t.edges() == 0);
  // Watching again after everything went works as the first time.
  CHECK(t.Watch(2, "bob"));
  CHECK(WatchersOf(t, "bob") == std::vector<uint64_t>{2});
}

TEST_CASE("unwatch-all ends a session's edges and reports users no one watches",
          "[chat][presence]") {
  PresenceTable t;
  for (const char* u : {"a", "b", "c", "d"}) REQUIRE(t.Watch(7, u));
  REQUIRE(t.Watch(8, "b"));
  REQUIRE(t.Watch(8, "e"));
  std::vector<std::string> gone;
  t.UnwatchAll(7, &gone);
  CHECK(Sorted(gone) == std::vector<std::string>{"a", "c", "d"});
  CHECK(t.WatchCount(7) == 0);
  CHECK(t.edges() == 2);
  CHECK(WatchersOf(t, "b") == std::vector<uint64_t>{8});
  CHECK(WatchersOf(t, "a").empty());
  gone.clear();
  t.UnwatchAll(7, &gone);  // nothing left
  CHECK(gone.empty());
  t.UnwatchAll(8, &gone);
  CHECK(Sorted(gone) == std::vector<std::string>{"b", "e"});
  CHECK(t.edges() == 0);
}

TEST_CASE("presence, subscriptions and edges of one user do not disturb one another",
          "[chat][presence]") {
  PresenceTable t;
  REQUIRE(t.Watch(1, "alice"));
  t.Subscribe(0, "alice");
  REQUIRE(t.Connect("alice", kT0));
  REQUIRE(t.SetStatus("alice", PresenceStatus::kBusy));
  CHECK(t.Unwatch(1, "alice"));
  t.Unsubscribe(0, "alice");
  CHECK(t.Get("alice", kT0 + 1).status == PresenceStatus::kBusy);
  CHECK(t.Devices("alice") == 1);
  REQUIRE(t.Disconnect("alice", kT0 + 2));
  // Watching and subscribing a user that has presence state, then letting go, keeps it.
  REQUIRE(t.Watch(1, "alice"));
  t.Subscribe(1, "alice");
  CHECK(t.Unwatch(1, "alice"));
  t.Unsubscribe(1, "alice");
  CHECK(t.Get("alice", kT0 + 3).last_seen == kT0 + 2);
  CHECK(t.users() == 1);
  // A user only watched, then unwatched, is still unknown and its id can come back.
  REQUIRE(t.Watch(2, "bob"));
  REQUIRE(t.Unwatch(2, "bob"));
  CHECK(t.users() == 1);
  CHECK(t.Get("bob", kT0).last_seen == 0);
  REQUIRE(t.Watch(3, "bob"));
  CHECK(WatchersOf(t, "bob") == std::vector<uint64_t>{3});
}

TEST_CASE("random watch churn matches a reference model", "[chat][presence]") {
  PresenceTable t;
  std::set<std::pair<uint64_t, std::string>> model;  // (session, user)
  std::mt19937_64 rng(20261129);
  std::vector<std::string> users;
  for (size_t n = 0; n < 400; ++n) users.push_back(IdOf(n * 7919, 4 + n % 40));
  auto watched_here = [&](const std::string& u) {
    for (const auto& [s, v] : model) {
      if (v == u) return true;
    }
    return false;
  };
  for (int step = 0; step < 20000; ++step) {
    const uint64_t session = 1000 + rng() % 30;
    const std::string& user = users[rng() % users.size()];
    const int op = static_cast<int>(rng() % 10);
    if (op < 5) {
      const bool fresh = model.emplace(session, user).second;
      REQUIRE(t.Watch(session, user) == fresh);
    } else if (op < 9) {
      const bool had = model.erase({session, user}) > 0;
      const bool last = had && !watched_here(user);
      REQUIRE(t.Unwatch(session, user) == last);
    } else {
      std::vector<std::string> expect;
      for (auto it = model.begin(); it != model.end();) {
        if (it->first == session) {
          const std::string u = it->second;
          it = model.erase(it);
          if (!watched_here(u)) expect.push_back(u);
        } else {
          ++it;
        }
      }
      std::vector<std::string> gone;
      t.UnwatchAll(session, &gone);
      REQUIRE(Sorted(gone) == Sorted(expect));
    }
    if (step % 997 == 0) {
      REQUIRE(t.edges() == model.size());
      for (const auto& u : users) {
        std::vector<uint64_t> expect;
        for (const auto& [s, v] : model) {
          if (v == u) expect.push_back(s);
        }
        REQUIRE(WatchersOf(t, u) == expect);
      }
      for (uint64_t s = 1000; s < 1030; ++s) {
        size_t n = 0;
        for (const auto& e : model) n += e.first == s ? 1 : 0;
        REQUIRE(t.WatchCount(s) == n);
      }
    }
  }
  REQUIRE(t.edges() == model.size());
  for (const auto& [s, u] : model) REQUIRE(t.IsWatching(s, u));
}

TEST_CASE("sessions with large ids", "[chat][presence]") {
  PresenceTable t;
  const uint64_t big = ~uint64_t{0};
  REQUIRE(t.Watch(big, "bob"));
  REQUIRE(t.Watch(big - 1, "bob"));
  CHECK(WatchersOf(t, "bob") == std::vector<uint64_t>{big - 1, big});
  CHECK(t.IsWatching(big, "bob"));
  CHECK_FALSE(t.Unwatch(big, "bob"));
  CHECK(t.Unwatch(big - 1, "bob"));
}

TEST_CASE("space of released users is reused without mixing ids", "[chat][presence]") {
  PresenceTable t;
  for (size_t n = 0; n < 300; ++n) REQUIRE(t.Connect(IdOf(n, 20), kT0 + static_cast<int64_t>(n)));
  for (uint64_t round = 0; round < 4; ++round) {
    // 5000 users of 5 to 64 bytes: more than one 64 KiB block of records.
    std::vector<std::string> ids;
    for (size_t i = 0; i < 5000; ++i) ids.push_back(IdOf(100000 + round * 5000 + i, 5 + i % 60));
    for (const auto& id : ids) REQUIRE(t.Watch(round, id));
    t.Subscribe(1, ids[0]);
    for (size_t i = 0; i < ids.size(); i += 97) {
      REQUIRE(WatchersOf(t, ids[i]) == std::vector<uint64_t>{round});
    }
    std::vector<std::string> gone;
    t.UnwatchAll(round, &gone);
    REQUIRE(Sorted(gone) == Sorted(ids));
    REQUIRE(t.Subscribers(ids[0]) == 2);
    t.Unsubscribe(1, ids[0]);
    REQUIRE(t.edges() == 0);
  }
  // The users with presence state kept theirs throughout.
  for (size_t n = 0; n < 300; ++n) {
    REQUIRE(t.Devices(IdOf(n, 20)) == 1);
    REQUIRE(t.Disconnect(IdOf(n, 20), kT0 + 7));
    REQUIRE(t.Get(IdOf(n, 20), 0).last_seen == kT0 + 7);
  }
  CHECK(t.users() == 300);
}

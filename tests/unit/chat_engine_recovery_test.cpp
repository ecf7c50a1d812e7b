// Start-up recovery of the chat engine: group events and fan-outs a crash left unfinished.
#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <vector>

#include "parley/chat/engine_shard.h"
#include "parley/store/store.h"
#include "store_test_dir.h"

using namespace parley::store;
using parley::chat::EngineShard;
using parley::store::testing::OpenTestStore;
using parley::store::testing::TempDir;

namespace {

// A user's inbox as "msg <seq>" / the stored event text, in inbox order (numbers 1..n checked).
std::vector<std::string> Inbox(Store& store, const std::string& user) {
  std::vector<std::pair<int64_t, InboxRecord>> entries;
  bool more = false;
  REQUIRE(store.ReadInbox(user, 0, 1000, &entries, &more).ok());
  std::vector<std::string> out;
  for (const auto& [number, rec] : entries) {
    CHECK(number == static_cast<int64_t>(out.size()) + 1);
    out.push_back(rec.event_json.empty() ? rec.conv + " msg " + std::to_string(rec.seq)
                                         : rec.event_json);
  }
  return out;
}

}  // namespace

TEST_CASE("recovery appends the group events a crash left owed, then finishes fan-outs", "[chat]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  const std::string conv = "g:team";
  // The state a crash may leave: alice (owner) removed bob and added carol after seq 3, and
  // sent seq 4 to the new membership; both changes and seq 4 committed, but no inbox got the
  // events, bob's inbox lags at seq 1, and seq 4 was fanned out to nobody.
  {
    Batch b = store->NewBatch();
    b.PutGroup("team", GroupRecord{"Team", "alice", {"alice", "carol"}, 1});
    for (int64_t s = 1; s <= 4; ++s) {
      b.PutMessage(conv, s, MessageRecord{"alice", "c-" + std::to_string(s), 100 + s, "hi", ""});
    }
    b.PutPendingFanout(conv);
    for (int64_t i = 1; i <= 3; ++i) b.PutInbox("alice", i, InboxRecord{conv, i, {}});
    b.PutUserConv("alice", conv, UserConvRecord{3, 103, 2, 0});
    b.PutInbox("bob", 1, InboxRecord{conv, 1, {}});
    b.PutUserConv("bob", conv, UserConvRecord{1, 101, 1, 0});
    const std::string removed = R"({"group":"team","change":"removed","users":["bob"]})";
    const std::string added = R"({"group":"team","change":"added","users":["carol"]})";
    b.PutGroupEvent("alice", 512, GroupEventRecord{conv, removed, 3, false, false, 200});
    b.PutGroupEvent("bob", 513, GroupEventRecord{conv, removed, 3, false, true, 200});
    b.PutGroupEvent("alice", 1024, GroupEventRecord{conv, added, 3, false, false, 300});
    b.PutGroupEvent("carol", 1025, GroupEventRecord{conv, added, 3, true, false, 300});
    REQUIRE(store->Write(b).ok());
  }

  for (int round = 0; round < 2; ++round) {  // the second round finds nothing left to do
    INFO("round " << round);
    REQUIRE(EngineShard::RecoverGroupEvents(*store).ok());
    REQUIRE(EngineShard::RecoverFanouts(*store).ok());

    CHECK(Inbox(*store, "alice") ==
          std::vector<std::string>{"g:team msg 1", "g:team msg 2", "g:team msg 3",
                                   R"({"group":"team","change":"removed","users":["bob"]})",
                                   R"({"group":"team","change":"added","users":["carol"]})",
                                   "g:team msg 4"});
    // bob was a member for seq 2 and 3: they come before its removal, and nothing after.
    CHECK(Inbox(*store, "bob") ==
          std::vector<std::string>{"g:team msg 1", "g:team msg 2", "g:team msg 3",
                                   R"({"group":"team","change":"removed","users":["bob"]})"});
    // carol joined after seq 3: her record starts there and she gets seq 4.
    CHECK(Inbox(*store, "carol") ==
          std::vector<std::string>{R"({"group":"team","change":"added","users":["carol"]})",
                                   "g:team msg 4"});

    auto alice = store->GetUserConv("alice", conv).value();
    REQUIRE(alice.has_value());
    CHECK(alice->last_seq == 4);
    CHECK(alice->read_seq == 2);  // kept
    CHECK_FALSE(store->GetUserConv("bob", conv).value().has_value());
    auto carol = store->GetUserConv("carol", conv).value();
    REQUIRE(carol.has_value());
    CHECK(carol->last_seq == 4);
    CHECK(carol->joined_seq == 3);
    CHECK(carol->read_seq == 0);

    std::vector<PendingGroupEvent> events;
    REQUIRE(store->ListGroupEvents(&events).ok());
    CHECK(events.empty());
    std::vector<std::string> fanouts;
    REQUIRE(store->ListPendingFanout(&fanouts).ok());
    CHECK(fanouts.empty());
  }
}

TEST_CASE("recovery of a creation whose events were lost gives every member the group", "[chat]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  const std::string conv = "g:crew";
  const std::string created = R"({"group":"crew","change":"created","users":["ann","ben"]})";
  {
    Batch b = store->NewBatch();
    b.PutGroup("crew", GroupRecord{"Crew", "ann", {"ann", "ben"}, 1});
    b.PutInbox("ben", 1, InboxRecord{"d:ann:ben", 1, {}});  // ben's inbox is not empty
    b.PutMessage("d:ann:ben", 1, MessageRecord{"ann", "c-0", 50, "x", ""});
    b.PutGroupEvent("ann", 512, GroupEventRecord{conv, created, 0, true, false, 100});
    b.PutGroupEvent("ben", 513, GroupEventRecord{conv, created, 0, true, false, 100});
    // A message sent into the group before the crash, not fanned out yet.
    b.PutMessage(conv, 1, MessageRecord{"ben", "c-1", 120, "hello", ""});
    b.PutPendingFanout(conv);
    REQUIRE(store->Write(b).ok());
  }
  REQUIRE(EngineShard::RecoverGroupEvents(*store).ok());
  REQUIRE(EngineShard::RecoverFanouts(*store).ok());
  CHECK(Inbox(*store, "ann") == std::vector<std::string>{created, "g:crew msg 1"});
  CHECK(Inbox(*store, "ben") ==
        std::vector<std::string>{"d:ann:ben msg 1", created, "g:crew msg 1"});
  for (const std::string user : {"ann", "ben"}) {
    auto rec = store->GetUserConv(user, conv).value();
    REQUIRE(rec.has_value());
    CHECK(rec->last_seq == 1);
    CHECK(rec->last_ts == 120);
  }
}

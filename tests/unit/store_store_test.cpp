#include "parley/store/store.h"

#include <rocksdb/db.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "parley/store/records.h"
#include "parley/util/clock.h"
#include "store_test_dir.h"

using namespace parley::store;
using parley::store::testing::TempDir;

namespace {

std::unique_ptr<Store> OpenStore(const std::string& dir,
                                 int64_t dedupe_ttl_ms = 48ll * 3600 * 1000) {
  StoreOptions o = parley::store::testing::TestStoreOptions(dir);
  o.dedupe_ttl_ms = dedupe_ttl_ms;
  return parley::store::testing::OpenTestStore(o);
}

MessageRecord Msg(const std::string& body) {
  return MessageRecord{"alice", "c-" + body, 1000, body, ""};
}

// An id with prefix `base` that lands on the same shard as `base` (so that a prefix scan of
// `base` really has a neighbour to stay clear of).
std::string SameShardExtension(const std::string& base) {
  for (int i = 0;; ++i) {
    std::string id = base + std::to_string(i);
    if (ShardOf(id) == ShardOf(base)) return id;
  }
}

// Two ids on different shards.
std::pair<std::string, std::string> DifferentShards(const std::string& base) {
  std::string a = base + "a";
  for (int i = 0;; ++i) {
    std::string b = base + std::to_string(i);
    if (ShardOf(b) != ShardOf(a)) return {a, b};
  }
}

}  // namespace

TEST_CASE("ShardOf is stable and in range", "[store]") {
  // Persisted placement depends on these values: they must never change.
  CHECK(ShardOf("alice") == 48);
  CHECK(ShardOf("bob") == 37);
  CHECK(ShardOf("carol") == 36);
  CHECK(ShardOf("d:alice:bob") == 0);
  CHECK(ShardOf("g:team") == 53);
  CHECK(ShardOf("") == 2);
  for (int i = 0; i < 1000; ++i) {
    int s = ShardOf("user" + std::to_string(i));
    CHECK(s >= 0);
    CHECK(s < kLogicalShards);
  }
}

TEST_CASE("a fresh store answers every read with empty results", "[store]") {
  TempDir dir;
  auto store = OpenStore(dir.path());
  CHECK(store->LastConvSeq("d:alice:bob").value() == 0);
  CHECK(store->LastInboxSeq("alice").value() == 0);
  CHECK_FALSE(store->GetMessage("d:alice:bob", 1).value().has_value());
  CHECK_FALSE(store->GetDedupe("alice", "c-1").value().has_value());
  CHECK(store->GetDeviceCursor("alice", "phone").value() == 0);
  CHECK(store->GetLastSeen("alice").value() == 0);
  CHECK_FALSE(store->GetUserConv("alice", "d:alice:bob").value().has_value());
  CHECK_FALSE(store->GetGroup("team").value().has_value());
  std::vector<std::pair<int64_t, MessageRecord>> history = {{1, Msg("stale")}};
  bool more = true;
  REQUIRE(store->ReadHistory("d:alice:bob", 0, 0, 50, &history, &more).ok());
  CHECK(history.empty());
  CHECK_FALSE(more);
  std::vector<std::pair<int64_t, InboxRecord>> inbox = {{1, InboxRecord{}}};
  more = true;
  REQUIRE(store->ReadInbox("alice", 0, 50, &inbox, &more).ok());
  CHECK(inbox.empty());
  CHECK_FALSE(more);
  std::vector<std::pair<std::string, UserConvRecord>> convs = {{"x", UserConvRecord{}}};
  REQUIRE(store->ReadUserConvs("alice", &convs).ok());
  CHECK(convs.empty());
  std::vector<std::string> pending = {"x"};
  REQUIRE(store->ListPendingFanout(&pending).ok());
  CHECK(pending.empty());
  // The directory layout: <data_dir>/db holds the database.
  CHECK(std::filesystem::exists(dir.path() + "/db/CURRENT"));
}

TEST_CASE("batch bookkeeping: empty, ops, size, clear, append, move", "[store]") {
  TempDir dir;
  auto store = OpenStore(dir.path());
  Batch b = store->NewBatch();
  CHECK(b.empty());
  CHECK(b.ops() == 0);
  const size_t empty_size = b.ByteSize();
  b.PutMessage("d:a:b", 1, Msg("one"));
  b.PutPendingFanout("d:a:b");
  CHECK_FALSE(b.empty());
  CHECK(b.ops() == 2);
  CHECK(b.ByteSize() > empty_size);

  Batch other = store->NewBatch();
  other.PutMessage("d:a:b", 2, Msg("two"));
  other.DeletePendingFanout("d:a:b");
  other.PutInbox("a", 1, InboxRecord{"d:a:b", 2, ""});
  b.Append(other);
  CHECK(b.ops() == 5);
  CHECK(other.ops() == 3);  // the source is left alone

  Batch moved = std::move(b);
  CHECK(moved.ops() == 5);
  CHECK(b.empty());  // NOLINT(bugprone-use-after-move): a moved-from Batch is empty and bound
  b.PutMessage("d:a:b", 3, Msg("three"));
  REQUIRE(store->Write(b).ok());
  REQUIRE(store->Write(moved).ok());
  CHECK(store->LastConvSeq("d:a:b").value() == 3);
  CHECK(store->GetMessage("d:a:b", 2).value()->body == "two");
  CHECK(store->LastInboxSeq("a").value() == 1);
  std::vector<std::string> pending;
  REQUIRE(store->ListPendingFanout(&pending).ok());
  CHECK(pending.empty());  // put then deleted within one commit

  moved.Clear();
  CHECK(moved.empty());
  CHECK(moved.ops() == 0);
  CHECK(moved.ByteSize() == empty_size);
  CHECK(store->Write(moved).ok());  // an empty batch is a no-op

  TempDir dir2;
  auto store2 = OpenStore(dir2.path());
  Batch foreign = store2->NewBatch();
  foreign.PutPendingFanout("x");
  CHECK(absl::IsInvalidArgument(store->Write(foreign)));
}

TEST_CASE("message keys land in the conversation's shard and sort by seq", "[store]") {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const std::string conv = "d:alice:bob";
  Batch b = store->NewBatch();
  // Inserted out of order, across byte boundaries of the big-endian seq.
  for (int64_t seq : {65536, 255, 1, 256, 257, 65535}) {
    b.PutMessage(conv, seq, Msg(std::to_string(seq)));
  }
  REQUIRE(store->Write(b).ok());
  CHECK(store->LastConvSeq(conv).value() == 65536);

  std::string raw;
  const std::string key = records::SeqKey('L', conv, 256);
  REQUIRE(store->db()->Get(rocksdb::ReadOptions(), store->shard(ShardOf(conv)), key, &raw).ok());
  const int other_shard = (ShardOf(conv) + 1) % kLogicalShards;
  CHECK(
      store->db()->Get(rocksdb::ReadOptions(), store->shard(other_shard), key, &raw).IsNotFound());

  std::vector<std::pair<int64_t, MessageRecord>> out;
  bool more = false;
  REQUIRE(store->ReadHistory(conv, 0, 0, 10, &out, &more).ok());
  std::vector<int64_t> seqs;
  for (auto& [seq, m] : out) {
    seqs.push_back(seq);
    CHECK(m.body == std::to_string(seq));
  }
  CHECK(seqs == std::vector<int64_t>{1, 255, 256, 257, 65535, 65536});
  CHECK_FALSE(more);
}

TEST_CASE("history pages backwards with the more flag at the boundaries", "[store]") {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const std::string conv = "g:team";
  const std::string neighbour = SameShardExtension(conv);  // "g:team<n>", same shard
  Batch b = store->NewBatch();
  for (int64_t seq = 1; seq <= 10; ++seq) b.PutMessage(conv, seq, Msg("m" + std::to_string(seq)));
  for (int64_t seq = 1; seq <= 30; ++seq) b.PutMessage(neighbour, seq, Msg("n"));
  REQUIRE(store->Write(b).ok());

  auto read = [&](int64_t before, int limit, bool* more, int64_t after = 0) {
    std::vector<std::pair<int64_t, MessageRecord>> out;
    REQUIRE(store->ReadHistory(conv, after, before, limit, &out, more).ok());
    std::vector<int64_t> seqs;
    for (auto& [seq, m] : out) {
      CHECK(m.body == "m" + std::to_string(seq));
      seqs.push_back(seq);
    }
    return seqs;
  };
  using V = std::vector<int64_t>;
  bool more = false;
  CHECK(read(0, 3, &more) == V{8, 9, 10});
  CHECK(more);
  CHECK(read(-5, 3, &more) == V{8, 9, 10});
  CHECK(more);
  CHECK(read(5, 3, &more) == V{2, 3, 4});
  CHECK(more);
  CHECK(read(4, 3, &more) == V{1, 2, 3});
  CHECK_FALSE(more);
  CHECK(read(4, 5, &more) == V{1, 2, 3});
  CHECK_FALSE(more);
  CHECK(read(0, 10, &more) == V{1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  CHECK_FALSE(more);
  CHECK(read(0, 11, &more) == V{1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  CHECK_FALSE(more);
  CHECK(read(0, 9, &more) == V{2, 3, 4, 5, 6, 7, 8, 9, 10});
  CHECK(more);
  CHECK(read(1, 10, &more).empty());
  CHECK_FALSE(more);
  CHECK(read(100, 2, &more) == V{9, 10});
  CHECK(more);
  CHECK(read(0, 0, &more).empty());
  CHECK(more);  // nothing asked for, older ones exist
  // A lower bound (a recreated group's first seq): nothing at or below it, and "more" stops
  // there.
  CHECK(read(0, 3, &more, 6) == V{8, 9, 10});
  CHECK(more);
  CHECK(read(8, 3, &more, 6) == V{7});
  CHECK_FALSE(more);
  CHECK(read(0, 4, &more, 6) == V{7, 8, 9, 10});
  CHECK_FALSE(more);
  CHECK(read(0, 3, &more, 7) == V{8, 9, 10});
  CHECK_FALSE(more);
  CHECK(read(7, 3, &more, 6).empty());
  CHECK_FALSE(more);
  CHECK(read(3, 3, &more, 6).empty());
  CHECK_FALSE(more);
  CHECK(read(0, 3, &more, 10).empty());
  CHECK_FALSE(more);
  CHECK(read(0, 3, &more, 20).empty());
  CHECK_FALSE(more);
  // The neighbour's 30 messages never leak in, and its last seq is its own.
  CHECK(store->LastConvSeq(conv).value() == 10);
  CHECK(store->LastConvSeq(neighbour).value() == 30);
  CHECK(store->LastConvSeq("g:tea").value() == 0);
}

TEST_CASE("inbox reads forwards with the more flag at the boundaries", "[store]") {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const std::string user = "al";
  const std::string neighbour = SameShardExtension(user);
  Batch b = store->NewBatch();
  for (int64_t i = 1; i <= 10; ++i) {
    b.PutInbox(user, i, InboxRecord{"d:al:bob", i * 2, i == 5 ? R"({"op":"group"})" : ""});
  }
  for (int64_t i = 1; i <= 20; ++i) b.PutInbox(neighbour, i, InboxRecord{"x", i, ""});
  REQUIRE(store->Write(b).ok());

  auto read = [&](int64_t after, int limit, bool* more) {
    std::vector<std::pair<int64_t, InboxRecord>> out;
    REQUIRE(store->ReadInbox(user, after, limit, &out, more).ok());
    std::vector<int64_t> seqs;
    for (auto& [seq, r] : out) {
      CHECK(r.seq == seq * 2);
      CHECK(r.conv == "d:al:bob");
      CHECK(r.event_json.empty() == (seq != 5));
      seqs.push_back(seq);
    }
    return seqs;
  };
  using V = std::vector<int64_t>;
  bool more = false;
  CHECK(read(0, 3, &more) == V{1, 2, 3});
  CHECK(more);
  CHECK(read(-7, 2, &more) == V{1, 2});
  CHECK(more);
  CHECK(read(7, 3, &more) == V{8, 9, 10});
  CHECK_FALSE(more);
  CHECK(read(8, 1, &more) == V{9});
  CHECK(more);
  CHECK(read(6, 10, &more) == V{7, 8, 9, 10});
  CHECK_FALSE(more);
  CHECK(read(10, 5, &more).empty());
  CHECK_FALSE(more);
  CHECK(read(0, 0, &more).empty());
  CHECK(more);
  CHECK(store->LastInboxSeq(user).value() == 10);
  CHECK(store->LastInboxSeq(neighbour).value() == 20);
}

TEST_CASE("dedupe, cursors, user conversations and groups", "[store]") {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const std::string user = "alice";
  const std::string neighbour = SameShardExtension(user);
  const int64_t now = parley::WallMillis();
  Batch b = store->NewBatch();
  b.PutDedupe(user, "c-81", DedupeRecord{"d:alice:bob", 17, 1764380000123}, now);
  b.PutDeviceCursor(user, "phone", 58);
  b.PutLastSeen(user, 1764380000456);
  b.PutLastSeen(user, 1764380000789);  // the later write wins
  b.PutUserConv(user, "g:team", UserConvRecord{3, 300, 2, 1});
  b.PutUserConv(user, "d:alice:bob", UserConvRecord{17, 1700, 15, 0});
  b.PutUserConv(neighbour, "d:x:y", UserConvRecord{1, 1, 1, 1});
  b.PutGroup("team", GroupRecord{"Team", "alice", {"alice", "bob", "dave"}, 99});
  REQUIRE(store->Write(b).ok());

  auto dedupe = store->GetDedupe(user, "c-81");
  REQUIRE(dedupe.ok());
  REQUIRE(dedupe->has_value());
  CHECK((*dedupe)->conv == "d:alice:bob");
  CHECK((*dedupe)->seq == 17);
  CHECK((*dedupe)->ts == 1764380000123);
  CHECK_FALSE(store->GetDedupe(user, "c-82").value().has_value());
  CHECK_FALSE(store->GetDedupe("bob", "c-81").value().has_value());

  CHECK(store->GetDeviceCursor(user, "phone").value() == 58);
  CHECK(store->GetDeviceCursor(user, "laptop").value() == 0);
  CHECK(store->GetLastSeen(user).value() == 1764380000789);
  CHECK(store->GetLastSeen(neighbour).value() == 0);

  auto uc = store->GetUserConv(user, "d:alice:bob").value();
  REQUIRE(uc.has_value());
  CHECK(uc->last_seq == 17);
  CHECK(uc->last_ts == 1700);
  CHECK(uc->read_seq == 15);
  std::vector<std::pair<std::string, UserConvRecord>> convs;
  REQUIRE(store->ReadUserConvs(user, &convs).ok());
  REQUIRE(convs.size() == 2);
  CHECK(convs[0].first == "d:alice:bob");
  CHECK(convs[0].second.last_seq == 17);
  CHECK(convs[1].first == "g:team");
  CHECK(convs[1].second.joined_seq == 1);

  auto group = store->GetGroup("team").value();
  REQUIRE(group.has_value());
  CHECK(group->name == "Team");
  CHECK(group->owner == "alice");
  CHECK(group->members == std::vector<std::string>{"alice", "bob", "dave"});
  CHECK(group->created_ts == 99);
  // The group lives on the shard of its conversation "g:team".
  std::string raw;
  CHECK(store->db()
            ->Get(rocksdb::ReadOptions(), store->shard(ShardOf("g:team")), "Gteam", &raw)
            .ok());

  // Overwrites and deletes.
  Batch b2 = store->NewBatch();
  b2.PutDeviceCursor(user, "phone", 60);
  b2.PutUserConv(user, "d:alice:bob", UserConvRecord{18, 1800, 18, 0});
  b2.DeleteGroup("team");
  REQUIRE(store->Write(b2).ok());
  CHECK(store->GetDeviceCursor(user, "phone").value() == 60);
  CHECK(store->GetUserConv(user, "d:alice:bob").value()->last_seq == 18);
  CHECK_FALSE(store->GetGroup("team").value().has_value());
}

TEST_CASE("pending fan-out markers are listed across all shards", "[store]") {
  TempDir dir;
  auto store = OpenStore(dir.path());
  std::set<std::string> expected;
  std::set<int> shards;
  Batch b = store->NewBatch();
  for (int i = 0; i < 40; ++i) {
    const std::string conv = "g:grp" + std::to_string(i);
    b.PutPendingFanout(conv);
    if (i % 4 != 0) {
      expected.insert(conv);
      shards.insert(ShardOf(conv));
    }
  }
  REQUIRE(store->Write(b).ok());
  Batch del = store->NewBatch();
  for (int i = 0; i < 40; i += 4) del.DeletePendingFanout("g:grp" + std::to_string(i));
  // Markers sit beside other keys of the conversation; only 'P' keys are listed.
  del.PutMessage("g:grp1", 1, Msg("x"));
  del.PutGroup("grp2", GroupRecord{"g", "o", {"o"}, 1});
  REQUIRE(store->Write(del).ok());
  std::vector<std::string> pending;
  REQUIRE(store->ListPendingFanout(&pending).ok());
  CHECK(std::set<std::string>(pending.begin(), pending.end()) == expected);
  CHECK(pending.size() == expected.size());
  CHECK(shards.size() > 10);  // the markers really are spread over many shards
}

TEST_CASE("pending group events are listed across all shards, per user in order", "[store]") {
  TempDir dir;
  auto store = OpenStore(dir.path());
  // Users whose ids prefix each other, on one shard, and users on many shards.
  const std::string bob = "bob";
  const std::string bob_ext = SameShardExtension(bob);
  std::vector<std::string> users = {bob, bob_ext};
  for (int i = 0; i < 30; ++i) users.push_back("user" + std::to_string(i));
  Batch b = store->NewBatch();
  std::set<int> shards;
  for (const auto& u : users) {
    shards.insert(ShardOf(u));
    // Written out of order: listing sorts by order (big-endian keys), including past 255.
    for (int64_t order : {int64_t{700}, int64_t{3}, int64_t{256}, int64_t{1} << 40}) {
      GroupEventRecord e;
      e.conv = "g:team";
      e.event_json = u + "/" + std::to_string(order);
      e.boundary = order;
      e.join = order == 3;
      e.leave = order == 700;
      e.ts = 5;
      b.PutGroupEvent(u, order, e);
    }
  }
  // Other keys of the same users are not listed.
  b.PutInbox(bob, 1, InboxRecord{"g:team", 0, "{}"});
  b.PutUserConv(bob, "g:team", UserConvRecord{1, 1, 0, 0});
  REQUIRE(store->Write(b).ok());
  Batch del = store->NewBatch();
  del.DeleteGroupEvent(bob, 256);
  REQUIRE(store->Write(del).ok());

  std::vector<PendingGroupEvent> pending;
  REQUIRE(store->ListGroupEvents(&pending).ok());
  CHECK(pending.size() == users.size() * 4 - 1);
  std::map<std::string, std::vector<int64_t>> orders;
  for (const auto& p : pending) {
    orders[p.user].push_back(p.order);
    CHECK(p.rec.event_json == p.user + "/" + std::to_string(p.order));
    CHECK(p.rec.boundary == p.order);
    CHECK(p.rec.join == (p.order == 3));
    CHECK(p.rec.leave == (p.order == 700));
  }
  CHECK(orders.size() == users.size());
  CHECK(orders[bob] == std::vector<int64_t>{3, 700, int64_t{1} << 40});
  CHECK(orders[bob_ext] == std::vector<int64_t>{3, 256, 700, int64_t{1} << 40});
  CHECK(shards.size() > 10);
}

TEST_CASE("a batch spanning shards commits atomically", "[store]") {
  TempDir dir;
  auto store = OpenStore(dir.path());
  auto [conv_a, conv_b] = DifferentShards("d:x:");
  REQUIRE(ShardOf(conv_a) != ShardOf(conv_b));
  Batch b = store->NewBatch();
  b.PutMessage(conv_a, 1, Msg("a"));
  b.PutMessage(conv_b, 1, Msg("b"));
  b.PutPendingFanout(conv_a);
  // Nothing is visible before Write.
  CHECK_FALSE(store->GetMessage(conv_a, 1).value().has_value());
  CHECK_FALSE(store->GetMessage(conv_b, 1).value().has_value());
  REQUIRE(store->Write(b).ok());
  CHECK(store->GetMessage(conv_a, 1).value()->body == "a");
  CHECK(store->GetMessage(conv_b, 1).value()->body == "b");
  // One WriteBatch carries both shards: RocksDB applies it as one unit.
  CHECK(b.raw()->Count() == 3);
}

TEST_CASE("everything persists across reopen", "[store]") {
  TempDir dir;
  {
    auto store = OpenStore(dir.path());
    Batch b = store->NewBatch();
    for (int64_t seq = 1; seq <= 300; ++seq) b.PutMessage("d:alice:bob", seq, Msg("m"));
    for (int64_t i = 1; i <= 258; ++i) b.PutInbox("bob", i, InboxRecord{"d:alice:bob", i, ""});
    b.PutDedupe("alice", "c-1", DedupeRecord{"d:alice:bob", 300, 5}, parley::WallMillis());
    b.PutDeviceCursor("bob", "phone", 200);
    b.PutUserConv("bob", "d:alice:bob", UserConvRecord{300, 5, 200, 0});
    b.PutGroup("team", GroupRecord{"Team", "alice", {"alice"}, 1});
    b.PutPendingFanout("d:alice:bob");
    REQUIRE(store->Write(b).ok());
  }
  auto store = OpenStore(dir.path());
  CHECK(store->LastConvSeq("d:alice:bob").value() == 300);
  CHECK(store->LastInboxSeq("bob").value() == 258);
  CHECK(store->LastInboxSeq("alice").value() == 0);
  CHECK(store->GetDedupe("alice", "c-1").value()->seq == 300);
  CHECK(store->GetDeviceCursor("bob", "phone").value() == 200);
  CHECK(store->GetUserConv("bob", "d:alice:bob").value()->read_seq == 200);
  CHECK(store->GetGroup("team").value()->name == "Team");
  std::vector<std::string> pending;
  REQUIRE(store->ListPendingFanout(&pending).ok());
  CHECK(pending == std::vector<std::string>{"d:alice:bob"});
  std::vector<std::pair<int64_t, InboxRecord>> inbox;
  bool more = false;
  REQUIRE(store->ReadInbox("bob", 250, 100, &inbox, &more).ok());
  CHECK(inbox.size() == 8);
  CHECK_FALSE(more);

  // A second generation of writes after reopen continues from where the data left off.
  Batch b = store->NewBatch();
  b.PutMessage("d:alice:bob", 301, Msg("after"));
  REQUIRE(store->Write(b).ok());
  store.reset();
  store = OpenStore(dir.path());
  CHECK(store->LastConvSeq("d:alice:bob").value() == 301);
}

TEST_CASE("the dedupe TTL filter drops old entries on compaction and keeps fresh ones", "[store]") {
  TempDir dir;
  const int64_t ttl = 60'000;
  auto store = OpenStore(dir.path(), ttl);
  const int64_t now = parley::WallMillis();
  Batch b = store->NewBatch();
  b.PutDedupe("alice", "old", DedupeRecord{"d:alice:bob", 1, now - 3 * ttl}, now - 2 * ttl);
  b.PutDedupe("alice", "fresh", DedupeRecord{"d:alice:bob", 2, now}, now);
  b.PutDedupe("alice", "edge", DedupeRecord{"d:alice:bob", 3, now}, now - ttl / 2);
  // Other kinds of keys are never touched, however old their contents.
  b.PutMessage("d:alice:bob", 1, MessageRecord{"alice", "old", now - 3 * ttl, "hi", ""});
  b.PutInbox("alice", 1, InboxRecord{"d:alice:bob", 1, ""});
  REQUIRE(store->Write(b).ok());
  // Before compaction the old entry is still readable.
  CHECK(store->GetDedupe("alice", "old").value().has_value());

  for (int s = 0; s < kLogicalShards; ++s) {
    REQUIRE(store->db()
                ->CompactRange(rocksdb::CompactRangeOptions(), store->shard(s), nullptr, nullptr)
                .ok());
  }
  CHECK_FALSE(store->GetDedupe("alice", "old").value().has_value());
  CHECK(store->GetDedupe("alice", "fresh").value()->seq == 2);
  CHECK(store->GetDedupe("alice", "edge").value()->seq == 3);
  CHECK(store->GetMessage("d:alice:bob", 1).value().has_value());
  CHECK(store->LastInboxSeq("alice").value() == 1);
  CHECK(store->GetStats().live_data_bytes > 0);
}

TEST_CASE("corrupt values surface as DataLoss, not crashes", "[store]") {
  TempDir dir;
  auto store = OpenStore(dir.path());
  const std::string conv = "d:alice:bob";
  auto* cf = store->shard(ShardOf(conv));
  REQUIRE(store->db()
              ->Put(rocksdb::WriteOptions(), cf, records::SeqKey('L', conv, 1), "\x01\x09")
              .ok());
  auto msg = store->GetMessage(conv, 1);
  CHECK(absl::IsDataLoss(msg.status()));
  std::vector<std::pair<int64_t, MessageRecord>> out;
  bool more = false;
  CHECK(absl::IsDataLoss(store->ReadHistory(conv, 0, 0, 10, &out, &more)));
  // A malformed key (wrong seq width) in the conversation's range.
  REQUIRE(store->db()
              ->Put(rocksdb::WriteOptions(), cf, records::OwnerPrefix('L', conv) + "xyz", "")
              .ok());
  CHECK(absl::IsDataLoss(store->LastConvSeq(conv).status()));
  // A last-seen time of the wrong width.
  REQUIRE(store->db()
              ->Put(rocksdb::WriteOptions(), store->shard(ShardOf("alice")),
                    records::IdKey(records::kLastSeen, "alice"), "1234")
              .ok());
  CHECK(absl::IsDataLoss(store->GetLastSeen("alice").status()));
}

TEST_CASE("storage stats reflect written data", "[store]") {
  TempDir dir;
  auto store = OpenStore(dir.path());
  Batch b = store->NewBatch();
  for (int i = 0; i < 1000; ++i) b.PutMessage("d:a:b", i + 1, Msg(std::string(100, 'x')));
  REQUIRE(store->Write(b).ok());
  auto stats = store->GetStats();
  CHECK(stats.memtable_bytes > 100 * 1000);
  REQUIRE(store->GetMessage("d:a:b", 5).ok());
}

TEST_CASE("WriteUnsyncedIfQuick writes, or declines without writing when it would wait",
          "[store]") {
  TempDir dir;
  {
    auto store = OpenStore(dir.path() + "/a");
    Batch b = store->NewBatch();
    b.PutMessage("d:a:b", 1, Msg("hi"));
    std::optional<absl::Status> s = store->WriteUnsyncedIfQuick(b);
    REQUIRE(s.has_value());
    CHECK(s->ok());
    CHECK(store->GetMessage("d:a:b", 1).value().has_value());
    Batch empty = store->NewBatch();
    s = store->WriteUnsyncedIfQuick(empty);
    REQUIRE(s.has_value());
    CHECK(s->ok());
  }
  {
    // A data volume below min_free_bytes: declined here, refused with a reason by Write.
    StoreOptions o = parley::store::testing::TestStoreOptions(dir.path() + "/b");
    o.min_free_bytes = UINT64_MAX;
    auto store = parley::store::testing::OpenTestStore(o);
    Batch b = store->NewBatch();
    b.PutMessage("d:a:b", 1, Msg("hi"));
    CHECK_FALSE(store->WriteUnsyncedIfQuick(b).has_value());
    CHECK_FALSE(store->GetMessage("d:a:b", 1).value().has_value());
    absl::Status refused = store->Write(b);
    CHECK(absl::IsUnavailable(refused));
    CHECK(refused.message().find("min_free_bytes") != std::string_view::npos);
  }
}

TEST_CASE("open adopts an existing database, creating missing shards and keeping others",
          "[store]") {
  TempDir dir;
  const std::string path = dir.path() + "/db";
  {
    rocksdb::DBOptions opts;
    opts.create_if_missing = true;
    opts.create_missing_column_families = true;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
        {rocksdb::kDefaultColumnFamilyName, {}}, {"future", {}}, {"shard-00", {}}};
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    REQUIRE(rocksdb::DB::Open(opts, path, cfs, &handles, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    // A conversation on shard 0, written before the other shards existed.
    REQUIRE(ShardOf("d:alice:bob") == 0);
    std::string value;
    records::EncodeMessage(MessageRecord{"alice", "c-1", 1, "early", ""}, &value);
    REQUIRE(
        db->Put(rocksdb::WriteOptions(), handles[2], records::SeqKey('L', "d:alice:bob", 7), value)
            .ok());
    for (auto* h : handles) REQUIRE(db->DestroyColumnFamilyHandle(h).ok());
  }
  auto store = OpenStore(dir.path());
  for (int s = 0; s < kLogicalShards; ++s) REQUIRE(store->shard(s) != nullptr);
  CHECK(store->LastConvSeq("d:alice:bob").value() == 7);
  CHECK(store->GetMessage("d:alice:bob", 7).value()->body == "early");
  Batch b = store->NewBatch();
  b.PutInbox("bob", 1, InboxRecord{"d:alice:bob", 7, ""});
  REQUIRE(store->Write(b).ok());
  store.reset();
  std::vector<std::string> names;
  REQUIRE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), path, &names).ok());
  CHECK(names.size() == kLogicalShards + 2);  // default, future, shard-00..63
  CHECK(std::find(names.begin(), names.end(), "future") != names.end());
  store = OpenStore(dir.path());
  CHECK(store->LastInboxSeq("bob").value() == 1);
}

TEST_CASE("open reports an unusable data directory as an error", "[store]") {
  TempDir dir;
  const std::string file = dir.path() + "/not-a-dir";
  {
    std::FILE* f = std::fopen(file.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fclose(f);
  }
  StoreOptions o;
  o.data_dir = file + "/data";
  auto s = Store::Open(o);
  CHECK_FALSE(s.ok());
}

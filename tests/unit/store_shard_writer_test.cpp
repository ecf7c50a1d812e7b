#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "parley/store/shard_writer.h"
#include "parley/store/store.h"
#include "store_test_dir.h"

using namespace parley::store;
using parley::store::testing::OpenTestStore;
using parley::store::testing::TempDir;
using namespace std::chrono_literals;

namespace {

// A store whose writes are synced: the two-phase (LogSyncer) path.
std::unique_ptr<Store> OpenSyncedStore(const std::string& dir) {
  StoreOptions o = parley::store::testing::TestStoreOptions(dir);
  o.sync = true;
  return OpenTestStore(o);
}

MessageRecord Msg(int64_t n) {
  return MessageRecord{"alice", "c-" + std::to_string(n), n, "x", ""};
}

// Stands in for the reactor: the writer thread's notify bumps a counter; the test thread polls.
struct Driver {
  std::atomic<uint64_t> notified{0};
  std::function<void()> notify() {
    return [this] { notified.fetch_add(1, std::memory_order_release); };
  }
  // Polls until `done` holds (checked after each Poll), waiting for notifications in between.
  template <typename Pred>
  void PollUntil(ShardWriter& w, Pred done) {
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    for (;;) {
      const uint64_t seen = notified.load(std::memory_order_acquire);
      w.Poll();
      if (done()) return;
      while (notified.load(std::memory_order_acquire) == seen) {
        REQUIRE(std::chrono::steady_clock::now() < deadline);
        std::this_thread::sleep_for(20us);
      }
    }
  }
  void Drain(ShardWriter& w) {
    PollUntil(w, [&] { return !w.busy(); });
  }
};

void WaitFor(const std::atomic<bool>& flag) {
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (!flag.load()) {
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    std::this_thread::sleep_for(20us);
  }
}

}  // namespace

TEST_CASE("shard writer runs callbacks in submission order once data is durable", "[store]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  Driver d;
  ShardWriter w(*store, d.notify());
  const std::string conv = "d:alice:bob";
  std::vector<int> order;
  std::vector<absl::Status> statuses;
  bool all_visible = true;
  constexpr int kBatches = 500;
  for (int i = 0; i < kBatches; ++i) {
    w.current().PutMessage(conv, i + 1, Msg(i + 1));
    w.OnCommit([&, i](const absl::Status& s) {
      order.push_back(i);
      statuses.push_back(s);
      // Committed means readable.
      auto m = store->GetMessage(conv, i + 1);
      all_visible = all_visible && m.ok() && m->has_value();
    });
    // Several callbacks per batch keep their order too.
    if (i % 50 == 0) w.OnCommit([&, i](const absl::Status&) { order.push_back(i); });
    w.Poll();
  }
  d.Drain(w);
  std::vector<int> expected;
  for (int i = 0; i < kBatches; ++i) {
    expected.push_back(i);
    if (i % 50 == 0) expected.push_back(i);
  }
  CHECK(order == expected);
  for (const auto& s : statuses) CHECK(s.ok());
  CHECK(all_visible);
  CHECK(store->LastConvSeq(conv).value() == kBatches);
  CHECK(d.notified.load() > 0);

  const auto& st = w.stats();
  // Polls during a commit submit nothing: what they saw joins the next commit.
  CHECK(st.batches.load() >= 1);
  CHECK(st.batches.load() <= kBatches);
  CHECK(st.commits.load() >= 1);
  CHECK(st.commits.load() <= st.batches.load());
  CHECK(st.failures.load() == 0);
  CHECK(st.bytes.load() > kBatches * 20);
  CHECK(st.latency.count() == st.commits.load());  // one latency sample per commit
}

TEST_CASE("shard writer runs callbacks registered without operations after the next commit",
          "[store]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  Driver d;
  ShardWriter w(*store, d.notify());
  std::vector<std::string> log;
  w.current().PutPendingFanout("g:a");
  w.OnCommit([&](const absl::Status& s) { log.push_back(s.ok() ? "first" : "first-err"); });
  w.Poll();
  w.OnCommit([&](const absl::Status& s) { log.push_back(s.ok() ? "empty" : "empty-err"); });
  CHECK(w.busy());
  w.Poll();
  d.Drain(w);
  CHECK(log == std::vector<std::string>{"first", "empty"});
  CHECK_FALSE(w.busy());
  // Polling with nothing to do submits nothing.
  const uint64_t batches = w.stats().batches.load();
  w.Poll();
  w.Poll();
  CHECK_FALSE(w.busy());
  CHECK(w.stats().batches.load() == batches);
}

TEST_CASE("shard writer gathers what arrives during a commit into the next one", "[store]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  bool merged = false;
  // A slow disk: every commit takes a millisecond, so batches submitted meanwhile queue up.
  for (int attempt = 0; attempt < 20 && !merged; ++attempt) {
    Driver d;
    ShardWriter w(*store, d.notify(), [&](Batch& b) {
      std::this_thread::sleep_for(1ms);
      return store->Write(b);
    });
    int done = 0;
    for (int i = 0; i < 100; ++i) {
      w.current().PutInbox("bob", attempt * 100 + i + 1, InboxRecord{"d:alice:bob", i, ""});
      w.OnCommit([&](const absl::Status& s) { done += s.ok() ? 1 : 0; });
      w.Poll();
    }
    d.Drain(w);
    CHECK(done == 100);
    // One submission per commit (nothing is copied from batch to batch), and fewer commits
    // than Polls: operations added while a commit was on its way shared the next one.
    CHECK(w.stats().batches.load() == w.stats().commits.load());
    merged = w.stats().commits.load() < 100;
  }
  CHECK(merged);
  CHECK(store->LastInboxSeq("bob").value() > 0);
}

TEST_CASE("shard writer's BeforeSeal hook adds to each batch once, just before it is written",
          "[store]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  Driver d;
  std::vector<size_t> ops_at_seal, ops_written;
  // The record many operations rewrite: only its latest value goes in, once per batch. (Declared
  // before the writer, whose destructor may still seal a batch.)
  int64_t read_seq = 0;
  // A slow disk, so that several Polls' operations gather in one batch.
  ShardWriter w(*store, d.notify(), [&](Batch& b) {
    ops_written.push_back(b.ops());  // the writer thread; the test reads it after Drain
    std::this_thread::sleep_for(1ms);
    return store->Write(b);
  });
  w.BeforeSeal([&](Batch& b) {
    ops_at_seal.push_back(b.ops());
    b.PutUserConv("bob", "d:alice:bob", UserConvRecord{read_seq, 0, read_seq, 0});
  });
  int done = 0;
  for (int i = 1; i <= 200; ++i) {
    w.current().PutInbox("bob", i, InboxRecord{"d:alice:bob", i, ""});
    read_seq = i;
    w.OnCommit([&](const absl::Status& s) { done += s.ok() ? 1 : 0; });
    w.Poll();
  }
  d.Drain(w);
  CHECK(done == 200);
  REQUIRE(ops_written.size() == ops_at_seal.size());
  CHECK(ops_written.size() == w.stats().batches.load());
  CHECK(ops_written.size() < 200);  // batches did gather several operations
  size_t inbox_ops = 0;
  for (size_t i = 0; i < ops_written.size(); ++i) {
    INFO(i);
    CHECK(ops_written[i] == ops_at_seal[i] + 1);
    inbox_ops += ops_at_seal[i];
  }
  CHECK(inbox_ops == 200);
  auto rec = store->GetUserConv("bob", "d:alice:bob").value();
  REQUIRE(rec.has_value());
  CHECK(rec->read_seq == 200);
}

TEST_CASE("a failed commit fails everything submitted before the failure was reported", "[store]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  Driver d;
  std::atomic<int> writes{0};
  std::atomic<bool> in_first_write{false};
  std::atomic<bool> release{false};
  ShardWriter w(*store, d.notify(), [&](Batch& b) -> absl::Status {
    if (writes.fetch_add(1) == 0) {
      in_first_write = true;
      while (!release.load()) std::this_thread::sleep_for(50us);
      return absl::UnavailableError("disk gone");
    }
    return store->Write(b);
  });
  const std::string conv = "d:alice:bob";
  std::vector<std::pair<std::string, absl::Status>> log;
  auto record = [&](std::string name) {
    return [&log, name](const absl::Status& s) { log.emplace_back(name, s); };
  };

  // A: its commit blocks inside the disk, then fails.
  w.current().PutMessage(conv, 1, Msg(1));
  w.OnCommit([&](const absl::Status& s) {
    log.emplace_back("A", s);
    // Submitted after the failure was reported: attempted normally.
    w.current().PutMessage(conv, 5, Msg(5));
    w.OnCommit(record("F"));
  });
  w.Poll();
  WaitFor(in_first_write);
  // B and C are submitted while A is in flight: they must never be written.
  w.current().PutMessage(conv, 2, Msg(2));
  w.OnCommit(record("B"));
  w.Poll();
  w.current().PutMessage(conv, 3, Msg(3));
  w.OnCommit(record("C"));
  w.Poll();
  // E is in the current batch when A's failure comes back.
  w.current().PutMessage(conv, 4, Msg(4));
  w.OnCommit(record("E"));
  release = true;
  d.PollUntil(w, [&] { return log.size() >= 4; });
  d.Drain(w);

  REQUIRE(log.size() == 5);
  CHECK(log[0].first == "A");
  CHECK(log[1].first == "B");
  CHECK(log[2].first == "C");
  CHECK(log[3].first == "E");
  CHECK(log[4].first == "F");
  for (int i = 0; i < 4; ++i) {
    INFO(log[i].first);
    CHECK(absl::IsUnavailable(log[i].second));
    CHECK(log[i].second.message() == "disk gone");
  }
  CHECK(log[4].second.ok());

  for (int64_t seq = 1; seq <= 4; ++seq) {
    INFO(seq);
    CHECK_FALSE(store->GetMessage(conv, seq).value().has_value());
  }
  CHECK(store->GetMessage(conv, 5).value().has_value());
  CHECK(writes.load() == 2);  // A, then F; B, C and E never reached the disk
  CHECK(w.stats().failures.load() == 1);

  // Later work goes on normally.
  bool ok = false;
  w.current().PutMessage(conv, 6, Msg(6));
  w.OnCommit([&](const absl::Status& s) { ok = s.ok(); });
  w.Poll();
  d.Drain(w);
  CHECK(ok);
  CHECK(store->LastConvSeq(conv).value() == 6);
}

TEST_CASE("shard writer spills past a full queue without losing order", "[store]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  Driver d;
  std::atomic<bool> in_first_write{false};
  std::atomic<bool> release{false};
  std::atomic<int> writes{0};
  ShardWriter w(*store, d.notify(), [&](Batch& b) {
    if (writes.fetch_add(1) == 0) {
      in_first_write = true;
      while (!release.load()) std::this_thread::sleep_for(50us);
    }
    return store->Write(b);
  });
  std::vector<int> order;
  constexpr int kBatches = 3000;  // more than both rings hold
  w.current().PutInbox("carol", 1, InboxRecord{"c", 1, ""});
  w.OnCommit([&](const absl::Status& s) { order.push_back(s.ok() ? 0 : -1); });
  w.Poll();
  WaitFor(in_first_write);
  for (int i = 1; i < kBatches; ++i) {
    w.current().PutInbox("carol", i + 1, InboxRecord{"c", i + 1, ""});
    w.OnCommit([&, i](const absl::Status& s) { order.push_back(s.ok() ? i : -1); });
    w.Poll();
  }
  release = true;
  d.Drain(w);
  REQUIRE(order.size() == kBatches);
  for (int i = 0; i < kBatches; ++i) REQUIRE(order[i] == i);
  CHECK(store->LastInboxSeq("carol").value() == kBatches);
}

TEST_CASE("shard writer destructor commits and completes everything submitted", "[store]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  Driver d;
  std::vector<int> order;
  {
    ShardWriter w(*store, d.notify(), [&](Batch& b) {
      std::this_thread::sleep_for(200us);
      return store->Write(b);
    });
    for (int i = 0; i < 20; ++i) {
      w.current().PutMessage("g:team", i + 1, Msg(i));
      w.OnCommit([&, i](const absl::Status& s) { order.push_back(s.ok() ? i : -1); });
      w.Poll();
    }
    // Never submitted by a Poll: the destructor does it.
    w.current().PutMessage("g:team", 21, Msg(21));
    w.OnCommit([&](const absl::Status& s) { order.push_back(s.ok() ? 20 : -1); });
  }
  std::vector<int> expected;
  for (int i = 0; i <= 20; ++i) expected.push_back(i);
  CHECK(order == expected);
  CHECK(store->LastConvSeq("g:team").value() == 21);
}

TEST_CASE("with synced storage OnWritten runs before OnCommit, each in submission order",
          "[store]") {
  TempDir dir;
  auto store = OpenSyncedStore(dir.path());
  LogSyncer syncer(*store);
  Driver d;
  ShardWriter w(*store, d.notify(), &syncer);
  const bool inline_writes = GENERATE(false, true);
  INFO("inline writes: " << inline_writes);
  if (inline_writes) w.WriteInlineUpTo(16 << 10);
  std::vector<std::string> log;
  bool readable_when_written = true;
  constexpr int kBatches = 60;
  for (int i = 0; i < kBatches; ++i) {
    w.current().PutMessage("d:alice:bob", i + 1, Msg(i + 1));
    w.OnWritten([&, i](const absl::Status& s) {
      log.push_back((s.ok() ? "w" : "w-err") + std::to_string(i));
      // Written means readable (not yet durable).
      auto m = store->GetMessage("d:alice:bob", i + 1);
      readable_when_written = readable_when_written && m.ok() && m->has_value();
    });
    w.OnCommit([&, i](const absl::Status& s) {
      log.push_back((s.ok() ? "c" : "c-err") + std::to_string(i));
    });
    w.Poll();
    if (i % 7 == 0) std::this_thread::sleep_for(300us);
  }
  d.Drain(w);
  CHECK(readable_when_written);
  REQUIRE(log.size() == 2 * kBatches);
  std::vector<std::string> written, committed;
  for (size_t k = 0; k < log.size(); ++k) {
    const std::string& e = log[k];
    if (e[0] == 'w') written.push_back(e);
    if (e[0] == 'c') {
      committed.push_back(e);
      // A batch's OnCommit never precedes its OnWritten.
      const std::string mine = "w" + e.substr(1);
      CHECK(std::find(log.begin(), log.begin() + static_cast<std::ptrdiff_t>(k), mine) !=
            log.begin() + static_cast<std::ptrdiff_t>(k));
    }
  }
  for (int i = 0; i < kBatches; ++i) {
    CHECK(written[static_cast<size_t>(i)] == "w" + std::to_string(i));
    CHECK(committed[static_cast<size_t>(i)] == "c" + std::to_string(i));
  }
  CHECK(store->LastConvSeq("d:alice:bob").value() == kBatches);
  CHECK(w.stats().failures.load() == 0);
}

// Adds bob's inbox entry n to the writer's current batch, logging "w<n>" / "c<n>" (with
// "-err" on failure) when the batch is reported written and durable.
void AddLoggedInbox(ShardWriter& w, std::vector<std::string>& log, int n) {
  const std::string tag = std::to_string(n);
  w.current().PutInbox("bob", n, InboxRecord{"d:alice:bob", n, ""});
  w.OnWritten(
      [&log, tag](const absl::Status& s) { log.push_back("w" + tag + (s.ok() ? "" : "-err")); });
  w.OnCommit(
      [&log, tag](const absl::Status& s) { log.push_back("c" + tag + (s.ok() ? "" : "-err")); });
}

TEST_CASE("a failed sync fails OnCommit, not OnWritten, and later batches commit", "[store]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  Driver d;
  std::atomic<int> syncs{0};
  LogSyncer syncer([&]() -> absl::Status {
    if (syncs.fetch_add(1) == 0) return absl::UnavailableError("injected sync failure");
    return absl::OkStatus();
  });
  ShardWriter w(
      *store, d.notify(), [&](Batch& b) { return store->WriteUnsynced(b); }, &syncer);
  std::vector<std::string> log;
  AddLoggedInbox(w, log, 1);
  w.Poll();
  d.PollUntil(w, [&] { return log.size() == 2; });
  CHECK(log == std::vector<std::string>{"w1", "c1-err"});
  CHECK(w.stats().failures.load() == 1);
  // Submitted after the failure was reported: attempted normally.
  AddLoggedInbox(w, log, 2);
  w.Poll();
  d.Drain(w);
  CHECK(log == std::vector<std::string>{"w1", "c1-err", "w2", "c2"});
  CHECK(syncs.load() == 2);
  CHECK(syncer.failures() == 1);
  CHECK_FALSE(syncer.OutcomeOf(1).ok());
  CHECK(syncer.OutcomeOf(2).ok());
  CHECK(store->LastInboxSeq("bob").value() == 2);
}

TEST_CASE("one log sync serves the writers of every core", "[store]") {
  TempDir dir;
  auto store = OpenSyncedStore(dir.path());
  LogSyncer syncer(*store);
  Driver d0, d1;
  constexpr int kBatches = 200;
  int committed = 0;
  {
    ShardWriter w0(*store, d0.notify(), &syncer);
    ShardWriter w1(*store, d1.notify(), &syncer);
    for (int i = 0; i < kBatches; ++i) {
      w0.current().PutInbox("ann", i + 1, InboxRecord{"d:ann:bo", i + 1, ""});
      w0.OnCommit([&](const absl::Status& s) { committed += s.ok() ? 1 : 0; });
      w1.current().PutInbox("bo", i + 1, InboxRecord{"d:ann:bo", i + 1, ""});
      w1.OnCommit([&](const absl::Status& s) { committed += s.ok() ? 1 : 0; });
      w0.Poll();
      w1.Poll();
    }
    // Both drain (each Drain polls only its own writer; the other keeps its callbacks).
    d0.Drain(w0);
    d1.Drain(w1);
  }
  CHECK(committed == 2 * kBatches);
  CHECK(syncer.completed() == syncer.last_ticket());
  CHECK(syncer.syncs() >= 1);
  CHECK(syncer.syncs() <= syncer.last_ticket());  // never a sync without a write to cover
  CHECK(store->LastInboxSeq("ann").value() == kBatches);
  CHECK(store->LastInboxSeq("bo").value() == kBatches);
}

TEST_CASE("one log sync covers every write noted while the previous one ran, from any thread",
          "[store]") {
  std::atomic<int> calls{0};
  std::atomic<bool> release_first{false};
  LogSyncer syncer([&]() -> absl::Status {
    if (calls.fetch_add(1) == 0) {
      while (!release_first.load()) std::this_thread::yield();
    }
    return absl::OkStatus();
  });
  CHECK(syncer.NoteWritten() == 1);  // starts the first sync, which blocks
  while (calls.load() == 0) std::this_thread::yield();
  // Two "cores" write while that sync runs.
  constexpr int kPerThread = 50;
  auto note = [&] {
    for (int i = 0; i < kPerThread; ++i) syncer.NoteWritten();
  };
  std::thread t0(note), t1(note);
  t0.join();
  t1.join();
  CHECK(syncer.completed() == 0);
  CHECK(syncer.last_ticket() == 1 + 2 * kPerThread);
  release_first.store(true);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (syncer.completed() != syncer.last_ticket() &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  CHECK(syncer.completed() == 1 + 2 * kPerThread);
  // The first sync covered ticket 1 only; a single second one covered all 100 others.
  CHECK(calls.load() == 2);
  CHECK(syncer.syncs() == 2);
  CHECK(syncer.sync_latency().count() == 2);
}

TEST_CASE("history shows only what a log sync has made durable", "[store]") {
  TempDir dir;
  auto store = OpenSyncedStore(dir.path());
  LogSyncer syncer(*store);
  Batch b = store->NewBatch();
  b.PutMessage("d:ann:bo", 1, Msg(1));
  REQUIRE(store->WriteUnsynced(b).ok());
  // Written (point reads see it) but not synced: history does not show it yet.
  auto m = store->GetMessage("d:ann:bo", 1);
  REQUIRE(m.ok());
  CHECK(m->has_value());
  std::vector<std::pair<int64_t, MessageRecord>> out;
  bool more = true;
  REQUIRE(store->ReadHistory("d:ann:bo", 0, 0, 10, &out, &more).ok());
  CHECK(out.empty());
  CHECK_FALSE(more);
  // Once a sync has covered it, it does.
  const uint64_t ticket = syncer.NoteWritten();
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (syncer.completed() < ticket) {
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    std::this_thread::sleep_for(100us);
  }
  REQUIRE(store->ReadHistory("d:ann:bo", 0, 0, 10, &out, &more).ok());
  REQUIRE(out.size() == 1);
  CHECK(out[0].first == 1);
  CHECK(out[0].second.cmid == "c-1");
}

TEST_CASE("after a failed sync, what was added before the failure was seen fails unwritten",
          "[store]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  Driver d;
  std::atomic<bool> release{false};
  std::atomic<int> syncs{0};
  LogSyncer syncer([&]() -> absl::Status {
    if (syncs.fetch_add(1) == 0) {
      while (!release.load()) std::this_thread::sleep_for(100us);
      return absl::UnavailableError("injected sync failure");
    }
    return absl::OkStatus();
  });
  ShardWriter w(
      *store, d.notify(), [&](Batch& b) { return store->WriteUnsynced(b); }, &syncer);
  std::vector<std::string> log;
  AddLoggedInbox(w, log, 1);
  w.Poll();
  d.PollUntil(w, [&] { return log.size() == 1; });  // written; its sync is held
  // Added while the failing sync is under way, before any Poll could see the failure.
  AddLoggedInbox(w, log, 2);
  release.store(true);
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (syncer.completed() < 1) {
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    std::this_thread::sleep_for(100us);
  }
  d.Drain(w);
  CHECK(log == std::vector<std::string>{"w1", "c1-err", "w2-err", "c2-err"});
  // The second batch was never written.
  CHECK(store->LastInboxSeq("bob").value() == 1);
}

// ---- Inline writes (WriteInlineUpTo): Poll writes small batches itself while nothing is in
// flight.

TEST_CASE("with its writer idle, Poll writes a small batch itself", "[store]") {
  TempDir dir;
  const bool synced = GENERATE(false, true);
  INFO("synced storage: " << synced);
  auto store = synced ? OpenSyncedStore(dir.path()) : OpenTestStore(dir.path());
  std::unique_ptr<LogSyncer> syncer;
  if (synced) syncer = std::make_unique<LogSyncer>(*store);
  Driver d;
  ShardWriter w(*store, d.notify(), syncer.get());
  w.WriteInlineUpTo(16 << 10);
  int sealed = 0;
  w.BeforeSeal([&](Batch&) { ++sealed; });
  std::vector<std::string> log;
  bool readable_when_written = false;
  w.current().PutMessage("d:alice:bob", 1, Msg(1));
  w.OnWritten([&](const absl::Status& s) {
    log.push_back(s.ok() ? "w" : "w-err");
    auto m = store->GetMessage("d:alice:bob", 1);
    readable_when_written = m.ok() && m->has_value();
  });
  w.OnCommit([&](const absl::Status& s) { log.push_back(s.ok() ? "c" : "c-err"); });
  w.Poll();
  // Written before Poll returned; durable then too unless a sync must follow.
  CHECK(readable_when_written);
  CHECK(w.stats().inline_commits.load() == 1);
  CHECK(w.stats().commits.load() == 1);
  CHECK(sealed == 1);
  if (synced) {
    CHECK(log == std::vector<std::string>{"w"});
    d.Drain(w);
  }
  CHECK(log == std::vector<std::string>{"w", "c"});
  CHECK(sealed == 1);
  CHECK(w.stats().failures.load() == 0);
}

TEST_CASE("inline writes keep submission order with the writer thread's", "[store]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  Driver d;
  const std::thread::id test_thread = std::this_thread::get_id();
  // Which thread wrote each batch, in order of writing ("inline" / "thread").
  std::vector<std::pair<std::string, size_t>> writes;  // (who, operations)
  ShardWriter w(*store, d.notify(), [&](Batch& b) {
    const bool inline_write = std::this_thread::get_id() == test_thread;
    writes.emplace_back(inline_write ? "inline" : "thread", b.ops());
    if (!inline_write) std::this_thread::sleep_for(2ms);  // a commit stays in flight a while
    return store->Write(b);
  });
  w.WriteInlineUpTo(1024);
  std::vector<std::string> log;
  auto add = [&](int seq, size_t body_bytes) {
    MessageRecord m = Msg(seq);
    m.body.assign(body_bytes, 'x');
    w.current().PutMessage("d:alice:bob", seq, m);
    w.OnWritten([&log, seq](const absl::Status& s) {
      log.push_back("w" + std::to_string(seq) + (s.ok() ? "" : "-err"));
    });
    w.OnCommit([&log, seq](const absl::Status& s) {
      log.push_back("c" + std::to_string(seq) + (s.ok() ? "" : "-err"));
    });
  };
  add(1, 4096);  // over the inline limit: the thread writes it
  w.Poll();
  CHECK(log.empty());
  add(2, 10);  // small, but a commit is in flight: it waits, and goes once that one is written
  w.Poll();
  CHECK(log.empty());
  d.Drain(w);
  add(3, 10);  // small, writer idle: written inline at once
  w.Poll();
  CHECK(log == std::vector<std::string>{"w1", "c1", "w2", "c2", "w3", "c3"});
  REQUIRE(writes.size() == 3);
  CHECK(writes[0].first == "thread");
  CHECK(writes[1].first == "inline");
  CHECK(writes[2].first == "inline");
  CHECK(w.stats().inline_commits.load() == 2);
  CHECK(store->LastConvSeq("d:alice:bob").value() == 3);
}

TEST_CASE("what OnWritten callbacks add is written inline too, a few rounds per Poll", "[store]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  Driver d;
  ShardWriter w(*store, d.notify());
  w.WriteInlineUpTo(16 << 10);
  constexpr int kChain = 10;
  std::vector<int> written;
  // Each entry, once written, adds the next (as a message's inbox appends follow its log write).
  std::function<void(int)> add = [&](int n) {
    w.current().PutInbox("bob", n, InboxRecord{"d:alice:bob", n, ""});
    w.OnWritten([&, n](const absl::Status& s) {
      REQUIRE(s.ok());
      written.push_back(n);
      if (n < kChain) add(n + 1);
    });
  };
  add(1);
  w.Poll();
  // Bounded work per Poll: the rounds after the bound went to the thread.
  const uint64_t inline_after_one_poll = w.stats().inline_commits.load();
  CHECK(inline_after_one_poll >= 2);
  CHECK(inline_after_one_poll < kChain);
  d.PollUntil(w, [&] { return written.size() == kChain; });
  d.Drain(w);
  for (int i = 0; i < kChain; ++i) CHECK(written[static_cast<size_t>(i)] == i + 1);
  CHECK(store->LastInboxSeq("bob").value() == kChain);
}

TEST_CASE("a failed inline write fails its callbacks and later batches are attempted", "[store]") {
  TempDir dir;
  auto store = OpenTestStore(dir.path());
  Driver d;
  int writes = 0;
  ShardWriter w(*store, d.notify(), [&](Batch& b) -> absl::Status {
    if (++writes == 1) return absl::UnavailableError("disk gone");
    return store->Write(b);
  });
  w.WriteInlineUpTo(16 << 10);
  std::vector<std::string> log;
  AddLoggedInbox(w, log, 1);
  w.Poll();
  CHECK(log == std::vector<std::string>{"w1-err", "c1-err"});
  CHECK(w.stats().failures.load() == 1);
  AddLoggedInbox(w, log, 2);
  w.Poll();
  CHECK(log == std::vector<std::string>{"w1-err", "c1-err", "w2", "c2"});
  CHECK(writes == 2);
  CHECK(w.stats().inline_commits.load() == 2);
  CHECK(store->LastInboxSeq("bob").value() == 2);
  CHECK_FALSE(store->GetMessage("d:alice:bob", 1).value().has_value());
}

TEST_CASE("a write the store declines inline goes to the writer thread, sealed once", "[store]") {
  TempDir dir;
  StoreOptions o = parley::store::testing::TestStoreOptions(dir.path());
  o.min_free_bytes = UINT64_MAX;  // "the disk is full": WriteUnsyncedIfQuick declines
  auto store = OpenTestStore(o);
  Driver d;
  ShardWriter w(*store, d.notify());
  w.WriteInlineUpTo(16 << 10);
  int sealed = 0;
  w.BeforeSeal([&](Batch& b) {
    ++sealed;
    b.PutLastSeen("bob", 7);
  });
  std::vector<std::string> log;
  AddLoggedInbox(w, log, 1);
  w.Poll();
  CHECK(log.empty());  // nothing ran inline
  d.Drain(w);
  // The thread's Write gives the full disk's error.
  CHECK(log == std::vector<std::string>{"w1-err", "c1-err"});
  CHECK(sealed == 1);
  CHECK(w.stats().inline_commits.load() == 0);
  CHECK(w.stats().failures.load() == 1);
}

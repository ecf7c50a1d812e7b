#include "parley/store/store.h"

#include <rocksdb/cache.h>
#include <rocksdb/compaction_filter.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/slice_transform.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>
#include <rocksdb/write_buffer_manager.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "parley/store/records.h"
#include "parley/util/clock.h"
#include "parley/util/stable_hash.h"

namespace parley::store {

namespace rec = records;

int ShardOf(std::string_view id) {
  return static_cast<int>(StableHash(id) % static_cast<uint64_t>(kLogicalShards));
}

namespace {

int GroupShard(std::string_view group) {
  std::string conv;
  conv.reserve(group.size() + 2);
  conv.append("g:").append(group);
  return ShardOf(conv);
}

absl::Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat("store: ", what, ": ", s.ToString());
  // A full disk is a storage outage to clients ("unavailable"), not a quota of theirs.
  if (s.IsNoSpace()) return absl::UnavailableError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsNotSupported()) return absl::UnimplementedError(msg);
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain() || s.IsIOError()) {
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

// Drops dedupe entries whose write time is older than the TTL. Stateless apart from the
// immutable TTL, so one instance serves every column family and compaction thread.
class DedupeTtlFilter final : public rocksdb::CompactionFilter {
 public:
  explicit DedupeTtlFilter(int64_t ttl_ms) : ttl_ms_(ttl_ms) {}

  bool Filter(int /*level*/, const rocksdb::Slice& key, const rocksdb::Slice& value,
              std::string* /*new_value*/, bool* /*value_changed*/) const override {
    if (key.empty() || key[0] != rec::kDedupe) return false;
    int64_t written = 0;
    // An unreadable record is kept: the filter never destroys data it cannot judge.
    if (!rec::DedupeWrittenMs(std::string_view(value.data(), value.size()), &written)) {
      return false;
    }
    return WallMillis() - written > ttl_ms_;
  }
  const char* Name() const override { return "parley.DedupeTtl"; }

 private:
  const int64_t ttl_ms_;
};

// Where the memtable keeps an insert hint (the skip-list position of the last insert with the
// same prefix). Parley's write pattern is append-mostly: a conversation's log and a user's
// inbox and group events grow at the end of their owner's key range, and a user's record for
// a conversation is rewritten on every message. Starting the skip-list search at the last
// insert of the same owner replaces a full O(log n) search, whose cache misses were the
// largest single cost of a delivery. Dedupe keys (random cmids, written once) and rare keys
// take no hint: each hint costs ~250 bytes of memtable.
class InsertHintPrefix final : public rocksdb::SliceTransform {
 public:
  const char* Name() const override { return "parley.InsertHintPrefix"; }
  bool InDomain(const rocksdb::Slice& key) const override {
    if (key.empty()) return false;
    switch (key[0]) {
      case rec::kMessage:
      case rec::kInbox:
      case rec::kGroupEvent:
        return key.size() >= 10;  // type, owner, 0x00, seq(be64)
      case rec::kUserConv:
        return true;
      default:
        return false;
    }
  }
  rocksdb::Slice Transform(const rocksdb::Slice& key) const override {
    // The owner (type, id, 0x00) for sequence keys; the whole key for a rewritten record.
    if (key[0] == rec::kUserConv) return key;
    return rocksdb::Slice(key.data(), key.size() - 8);
  }
};

std::string ShardName(int s) {
  return absl::StrFormat("shard-%02d", s);
}

rocksdb::CompressionType BestOf(std::initializer_list<rocksdb::CompressionType> wanted) {
  const std::vector<rocksdb::CompressionType> have = rocksdb::GetSupportedCompressions();
  for (rocksdb::CompressionType c : wanted) {
    if (std::find(have.begin(), have.end(), c) != have.end()) return c;
  }
  return rocksdb::kNoCompression;
}

// The exclusive upper bound of every key starting with `prefix` (which ends in 0x00).
std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  end.back() = '\x01';
  return end;
}

}  // namespace

struct Store::Impl {
  std::shared_ptr<rocksdb::Cache> cache;
  std::unique_ptr<DedupeTtlFilter> ttl_filter;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;  // every handle Open returned
  std::vector<rocksdb::ColumnFamilyHandle*> by_id;    // column family id -> handle
};

// ---------------------------------------------------------------------------------------
// Batch

Batch::Batch() : batch_(std::make_unique<rocksdb::WriteBatch>()) {}
Batch::~Batch() = default;

Batch::Batch(Batch&& other) noexcept
    : store_(other.store_), batch_(std::move(other.batch_)), ops_(other.ops_) {
  other.ops_ = 0;
}

Batch& Batch::operator=(Batch&& other) noexcept {
  if (this != &other) {
    store_ = other.store_;
    batch_ = std::move(other.batch_);
    ops_ = other.ops_;
    other.ops_ = 0;
  }
  return *this;
}

void Batch::Bind(Store* store) {
  store_ = store;
}

rocksdb::WriteBatch& Batch::Writable() {
  if (!batch_) batch_ = std::make_unique<rocksdb::WriteBatch>();
  return *batch_;
}

void Batch::Put(int shard, std::string_view key, std::string_view value) {
  if (store_ == nullptr) {
    std::fputs("parley: store::Batch used without Store::NewBatch\n", stderr);
    std::abort();
  }
  Writable()
      .Put(store_->shard(shard), rocksdb::Slice(key.data(), key.size()),
           rocksdb::Slice(value.data(), value.size()))
      .PermitUncheckedError();
  ++ops_;
}

void Batch::Delete(int shard, std::string_view key) {
  if (store_ == nullptr) {
    std::fputs("parley: store::Batch used without Store::NewBatch\n", stderr);
    std::abort();
  }
  Writable()
      .Delete(store_->shard(shard), rocksdb::Slice(key.data(), key.size()))
      .PermitUncheckedError();
  ++ops_;
}

void Batch::PutMessage(std::string_view conv, int64_t seq, const MessageRecord& msg) {
  key_buf_.clear();
  value_buf_.clear();
  rec::AppendSeqKey(&key_buf_, rec::kMessage, conv, seq);
  rec::EncodeMessage(msg, &value_buf_);
  Put(ShardOf(conv), key_buf_, value_buf_);
}

void Batch::PutDedupe(std::string_view sender, std::string_view cmid, const DedupeRecord& r,
                      int64_t now_ms) {
  key_buf_.clear();
  value_buf_.clear();
  rec::AppendSubKey(&key_buf_, rec::kDedupe, sender, cmid);
  rec::EncodeDedupe(r, now_ms, &value_buf_);
  Put(ShardOf(sender), key_buf_, value_buf_);
}

void Batch::PutInbox(std::string_view user, int64_t inbox_seq, const InboxRecord& r) {
  key_buf_.clear();
  value_buf_.clear();
  rec::AppendSeqKey(&key_buf_, rec::kInbox, user, inbox_seq);
  rec::EncodeInbox(r, &value_buf_);
  Put(ShardOf(user), key_buf_, value_buf_);
}

void Batch::PutUserConv(std::string_view user, std::string_view conv, const UserConvRecord& r) {
  key_buf_.clear();
  value_buf_.clear();
  rec::AppendSubKey(&key_buf_, rec::kUserConv, user, conv);
  rec::EncodeUserConv(r, &value_buf_);
  Put(ShardOf(user), key_buf_, value_buf_);
}

void Batch::DeleteUserConv(std::string_view user, std::string_view conv) {
  key_buf_.clear();
  rec::AppendSubKey(&key_buf_, rec::kUserConv, user, conv);
  Delete(ShardOf(user), key_buf_);
}

void Batch::PutDeviceCursor(std::string_view user, std::string_view device, int64_t cursor) {
  key_buf_.clear();
  value_buf_.clear();
  rec::AppendSubKey(&key_buf_, rec::kDevice, user, device);
  rec::EncodeBe64Value(cursor, &value_buf_);
  Put(ShardOf(user), key_buf_, value_buf_);
}

void Batch::PutLastSeen(std::string_view user, int64_t wall_ms) {
  key_buf_.clear();
  value_buf_.clear();
  rec::AppendIdKey(&key_buf_, rec::kLastSeen, user);
  rec::EncodeBe64Value(wall_ms, &value_buf_);
  Put(ShardOf(user), key_buf_, value_buf_);
}

void Batch::PutPendingFanout(std::string_view conv) {
  key_buf_.clear();
  rec::AppendIdKey(&key_buf_, rec::kPending, conv);
  Put(ShardOf(conv), key_buf_, std::string_view());
}

void Batch::DeletePendingFanout(std::string_view conv) {
  key_buf_.clear();
  rec::AppendIdKey(&key_buf_, rec::kPending, conv);
  Delete(ShardOf(conv), key_buf_);
}

void Batch::PutGroup(std::string_view group, const GroupRecord& r) {
  key_buf_.clear();
  value_buf_.clear();
  rec::AppendIdKey(&key_buf_, rec::kGroup, group);
  rec::EncodeGroup(r, &value_buf_);
  Put(GroupShard(group), key_buf_, value_buf_);
}

void Batch::PutGroupEvent(std::string_view user, int64_t order, const GroupEventRecord& r) {
  key_buf_.clear();
  value_buf_.clear();
  rec::AppendSeqKey(&key_buf_, rec::kGroupEvent, user, order);
  rec::EncodeGroupEvent(r, &value_buf_);
  Put(ShardOf(user), key_buf_, value_buf_);
}

void Batch::DeleteGroupEvent(std::string_view user, int64_t order) {
  key_buf_.clear();
  rec::AppendSeqKey(&key_buf_, rec::kGroupEvent, user, order);
  Delete(ShardOf(user), key_buf_);
}

void Batch::DeleteGroup(std::string_view group) {
  key_buf_.clear();
  rec::AppendIdKey(&key_buf_, rec::kGroup, group);
  Delete(GroupShard(group), key_buf_);
}

bool Batch::empty() const {
  return !batch_ || batch_->Count() == 0;
}

size_t Batch::ByteSize() const {
  return batch_ ? batch_->GetDataSize() : 0;
}

void Batch::Clear() {
  if (batch_) batch_->Clear();
  ops_ = 0;
}

namespace {

// Re-plays the operations of one WriteBatch into another. WriteBatch has no public append in
// RocksDB 7.8, and its byte layout is internal, so merging goes through Iterate.
class AppendHandler final : public rocksdb::WriteBatch::Handler {
 public:
  AppendHandler(rocksdb::WriteBatch* target, const std::vector<rocksdb::ColumnFamilyHandle*>& by_id)
      : target_(target), by_id_(by_id) {}

  rocksdb::Status PutCF(uint32_t cf, const rocksdb::Slice& key,
                        const rocksdb::Slice& value) override {
    auto* h = ById(cf);
    return h ? target_->Put(h, key, value) : Unknown(cf);
  }
  rocksdb::Status DeleteCF(uint32_t cf, const rocksdb::Slice& key) override {
    auto* h = ById(cf);
    return h ? target_->Delete(h, key) : Unknown(cf);
  }
  rocksdb::Status SingleDeleteCF(uint32_t cf, const rocksdb::Slice& key) override {
    auto* h = ById(cf);
    return h ? target_->SingleDelete(h, key) : Unknown(cf);
  }
  rocksdb::Status DeleteRangeCF(uint32_t cf, const rocksdb::Slice& begin,
                                const rocksdb::Slice& end) override {
    auto* h = ById(cf);
    return h ? target_->DeleteRange(h, begin, end) : Unknown(cf);
  }
  rocksdb::Status MergeCF(uint32_t cf, const rocksdb::Slice& key,
                          const rocksdb::Slice& value) override {
    auto* h = ById(cf);
    return h ? target_->Merge(h, key, value) : Unknown(cf);
  }
  void LogData(const rocksdb::Slice& blob) override {
    target_->PutLogData(blob).PermitUncheckedError();
  }

 private:
  static rocksdb::Status Unknown(uint32_t cf) {
    return rocksdb::Status::InvalidArgument("unknown column family " + std::to_string(cf));
  }
  rocksdb::ColumnFamilyHandle* ById(uint32_t cf) const {
    return cf < by_id_.size() ? by_id_[cf] : nullptr;
  }
  rocksdb::WriteBatch* target_;
  const std::vector<rocksdb::ColumnFamilyHandle*>& by_id_;
};

}  // namespace

void Batch::Append(const Batch& other) {
  if (other.empty()) return;
  if (store_ == nullptr) store_ = other.store_;
  if (store_ == nullptr || store_ != other.store_) {
    std::fputs("parley: store::Batch::Append across stores\n", stderr);
    std::abort();
  }
  AppendHandler handler(&Writable(), store_->impl_->by_id);
  const rocksdb::Status s = other.batch_->Iterate(&handler);
  if (!s.ok()) {
    // Only operations on this Store's column families can be in a bound Batch.
    std::fprintf(stderr, "parley: store::Batch::Append: %s\n", s.ToString().c_str());
    std::abort();
  }
  ops_ += other.ops_;
}

// ---------------------------------------------------------------------------------------
// Store

Store::Store(StoreOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>()) {}

Store::~Store() {
  durable_.reset();  // RocksDB refuses to close with a snapshot still held
  if (db_) {
    for (rocksdb::ColumnFamilyHandle* h : impl_->handles) {
      db_->DestroyColumnFamilyHandle(h).PermitUncheckedError();
    }
    db_->Close().PermitUncheckedError();
    db_.reset();
  }
  // impl_ (the compaction filter, the cache) goes after the DB that uses it.
}

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const StoreOptions& options) {
  std::unique_ptr<Store> store(new Store(options));
  Impl& impl = *store->impl_;

  std::error_code ec;
  std::filesystem::create_directories(options.data_dir, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("store: cannot create ", options.data_dir, ": ", ec.message()));
  }
  const std::string path = options.data_dir + "/db";

  rocksdb::DBOptions db_opts;
  db_opts.create_if_missing = true;
  db_opts.create_missing_column_families = true;
  db_opts.max_background_jobs = 2;
  // Memtable insert hints (below) work only when one thread inserts a write group's batches.
  db_opts.allow_concurrent_memtable_write = false;
  db_opts.write_buffer_manager =
      std::make_shared<rocksdb::WriteBufferManager>(options.write_buffer_bytes_total);
  // Idle shards would otherwise pin old WAL files forever; bounding the WAL flushes them.
  db_opts.max_total_wal_size = std::max<uint64_t>(64ull << 20, options.write_buffer_bytes_total);
  db_opts.keep_log_file_num = 4;
  db_opts.max_log_file_size = 8ull << 20;

  impl.cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = impl.cache;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table.cache_index_and_filter_blocks = true;
  table.pin_l0_filter_and_index_blocks_in_cache = true;
  table.optimize_filters_for_memory = true;

  if (options.dedupe_ttl_ms > 0) {
    impl.ttl_filter = std::make_unique<DedupeTtlFilter>(options.dedupe_ttl_ms);
  }

  rocksdb::ColumnFamilyOptions cf_opts;
  cf_opts.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  // Small per-shard memtables: 64 mostly idle shards must cost little; the write buffer
  // manager bounds the total.
  cf_opts.write_buffer_size =
      std::clamp<uint64_t>(options.write_buffer_bytes_total / 32, 1ull << 20, 16ull << 20);
  cf_opts.arena_block_size = 128 << 10;
  // A whole-key Bloom filter per memtable (2% of its size): most point reads on the send path
  // look for keys that do not exist yet (a new cmid's dedupe entry), and the filter answers
  // those without searching each memtable's skip list.
  cf_opts.memtable_prefix_bloom_size_ratio = 0.02;
  cf_opts.memtable_whole_key_filtering = true;
  cf_opts.memtable_insert_with_hint_prefix_extractor = std::make_shared<InsertHintPrefix>();
  cf_opts.compression = BestOf({rocksdb::kLZ4Compression, rocksdb::kSnappyCompression});
  cf_opts.bottommost_compression =
      BestOf({rocksdb::kZSTD, rocksdb::kLZ4Compression, rocksdb::kSnappyCompression});
  cf_opts.level_compaction_dynamic_level_bytes = true;
  cf_opts.compaction_filter = impl.ttl_filter.get();

  // Open whatever column families exist (all must be opened, including any unknown ones a
  // later version added), then create the missing shards in one call: creating them one by
  // one during Open rewrites the options file per family, which takes seconds for 64.
  std::vector<std::string> existing;
  if (!rocksdb::DB::ListColumnFamilies(db_opts, path, &existing).ok() || existing.empty()) {
    existing = {rocksdb::kDefaultColumnFamilyName};  // a new database
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs;
  for (const std::string& name : existing) cfs.emplace_back(name, cf_opts);
  std::vector<std::string> shard_names;
  std::vector<std::string> missing;
  for (int s = 0; s < kLogicalShards; ++s) {
    shard_names.push_back(ShardName(s));
    if (std::find(existing.begin(), existing.end(), shard_names.back()) == existing.end()) {
      missing.push_back(shard_names.back());
    }
  }

  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_opts, path, cfs, &handles, &raw);
  if (!s.ok()) return FromRocks(s, absl::StrCat("open ", path));
  store->db_.reset(raw);
  impl.handles = handles;
  if (!missing.empty()) {
    std::vector<rocksdb::ColumnFamilyHandle*> created;
    s = store->db_->CreateColumnFamilies(cf_opts, missing, &created);
    // On failure `created` holds what was made; the Store's destructor releases it.
    impl.handles.insert(impl.handles.end(), created.begin(), created.end());
    if (!s.ok()) return FromRocks(s, "create column families");
  }
  store->shards_.assign(kLogicalShards, nullptr);
  for (rocksdb::ColumnFamilyHandle* h : impl.handles) {
    if (h->GetID() >= impl.by_id.size()) impl.by_id.resize(h->GetID() + 1, nullptr);
    impl.by_id[h->GetID()] = h;
    auto it = std::find(shard_names.begin(), shard_names.end(), h->GetName());
    if (it != shard_names.end()) store->shards_[it - shard_names.begin()] = h;
  }
  return store;
}

Batch Store::NewBatch() {
  Batch b;
  b.Bind(this);
  return b;
}

uint64_t Store::FreeBytes(int64_t now_ms) {
  if (now_ms - free_checked_ms_.load(std::memory_order_relaxed) >= 100) {
    struct statvfs vfs {};
    if (::statvfs(options_.data_dir.c_str(), &vfs) == 0) {
      free_bytes_.store(static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize,
                        std::memory_order_relaxed);
    }
    free_checked_ms_.store(now_ms, std::memory_order_relaxed);
  }
  return free_bytes_.load(std::memory_order_relaxed);
}

absl::Status Store::Write(Batch& batch) {
  return WriteWith(batch, options_.sync);
}

absl::Status Store::WriteUnsynced(Batch& batch) {
  return WriteWith(batch, false);
}

absl::Status Store::SyncLog() {
  rocksdb::Status s = db_->SyncWAL();
  // As after a failed write: the next write asks RocksDB to resume first.
  if (!s.ok()) write_failed_.store(true, std::memory_order_release);
  return FromRocks(s, "log sync");
}

Store::SnapshotRef Store::TakeSnapshot() {
  rocksdb::DB* db = db_.get();
  return SnapshotRef(db->GetSnapshot(),
                     [db](const rocksdb::Snapshot* s) { db->ReleaseSnapshot(s); });
}

void Store::PublishDurable(SnapshotRef snapshot) {
  SnapshotRef old;
  {
    std::lock_guard<std::mutex> lock(durable_mu_);
    old = std::move(durable_);
    durable_ = std::move(snapshot);
  }
  // `old` is released here, outside the lock (or by the last reader still holding it).
}

namespace {

// Counts a write in progress for as long as it lives.
class WriteInProgress {
 public:
  explicit WriteInProgress(std::atomic<int>& count) : count_(count) {
    count_.fetch_add(1, std::memory_order_acq_rel);
  }
  ~WriteInProgress() { count_.fetch_sub(1, std::memory_order_acq_rel); }
  WriteInProgress(const WriteInProgress&) = delete;
  WriteInProgress& operator=(const WriteInProgress&) = delete;

 private:
  std::atomic<int>& count_;
};

}  // namespace

std::optional<absl::Status> Store::WriteUnsyncedIfQuick(Batch& batch) {
  if (batch.empty()) return absl::OkStatus();
  if (batch.store_ != this) {
    return absl::InvalidArgumentError("store: batch belongs to another store");
  }
  // Declined (nothing written) whenever the write could wait: another thread's write (RocksDB
  // would queue this one behind it), recovery from a failed write, or a disk running full
  // (whose refusal is Write's to give).
  if (writes_in_progress_.load(std::memory_order_acquire) != 0 ||
      write_failed_.load(std::memory_order_acquire)) {
    return std::nullopt;
  }
  if (options_.min_free_bytes != 0 && FreeBytes(MonoMillis()) < options_.min_free_bytes) {
    return std::nullopt;
  }
  WriteInProgress in_progress(writes_in_progress_);
  rocksdb::WriteOptions wo;
  wo.sync = false;
  wo.no_slowdown = true;  // a write stall answers Incomplete at once instead of sleeping
  rocksdb::Status s = db_->Write(wo, batch.raw());
  if (s.IsIncomplete()) return std::nullopt;
  if (!s.ok()) write_failed_.store(true, std::memory_order_release);
  return FromRocks(s, "write");
}

absl::Status Store::WriteWith(Batch& batch, bool sync) {
  if (batch.empty()) return absl::OkStatus();
  if (batch.store_ != this) {
    return absl::InvalidArgumentError("store: batch belongs to another store");
  }
  const int64_t now_ms = MonoMillis();
  if (options_.min_free_bytes != 0) {
    // A full disk is refused here, before RocksDB meets ENOSPC: a failed WAL write leaves
    // RocksDB needing a resume, and some versions abort on the next write to that log.
    const uint64_t free = FreeBytes(now_ms);
    if (free < options_.min_free_bytes) {
      return absl::UnavailableError(absl::StrCat("store: ", free,
                                                 " bytes free on the data volume, below "
                                                 "storage.min_free_bytes (",
                                                 options_.min_free_bytes, ")"));
    }
  }
  if (write_failed_.load(std::memory_order_acquire)) {
    // RocksDB stops writing after a failed write until Resume(). Ask at most every 100 ms: a
    // Resume on a still-full disk fails quickly, but it flushes memtables when it succeeds.
    const int64_t now = now_ms;
    int64_t last = last_resume_ms_.load(std::memory_order_relaxed);
    if (now - last < 100) return absl::UnavailableError("store: recovering from a failed write");
    if (last_resume_ms_.compare_exchange_strong(last, now)) {
      rocksdb::Status resumed = db_->Resume();
      if (!resumed.ok()) return FromRocks(resumed, "resume after failed write");
      write_failed_.store(false, std::memory_order_release);
    }
  }
  WriteInProgress in_progress(writes_in_progress_);
  rocksdb::WriteOptions wo;
  wo.sync = sync;
  rocksdb::Status s = db_->Write(wo, batch.raw());
  if (!s.ok()) write_failed_.store(true, std::memory_order_release);
  return FromRocks(s, "write");
}

namespace {

absl::StatusOr<std::optional<std::string>> GetValue(rocksdb::DB* db,
                                                    rocksdb::ColumnFamilyHandle* cf,
                                                    const std::string& key) {
  rocksdb::PinnableSlice value;
  rocksdb::Status s = db->Get(rocksdb::ReadOptions(), cf, key, &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return FromRocks(s, "get");
  return std::optional<std::string>(value.ToString());
}

// The largest seq stored under `prefix` (type id 0x00), or 0.
absl::StatusOr<int64_t> LastSeq(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                const std::string& prefix) {
  rocksdb::ReadOptions ro;
  rocksdb::Slice lower(prefix);
  ro.iterate_lower_bound = &lower;
  std::string last = prefix;
  last.append(8, '\xff');
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(ro, cf));
  it->SeekForPrev(last);
  if (!it->Valid()) {
    if (!it->status().ok()) return FromRocks(it->status(), "seek");
    return 0;
  }
  const rocksdb::Slice key = it->key();
  if (key.size() != prefix.size() + 8 || !key.starts_with(prefix)) {
    return absl::DataLossError(absl::StrCat("store: malformed '", prefix.substr(0, 1), "' key"));
  }
  return static_cast<int64_t>(rec::ReadBigEndian64(key.data() + prefix.size()));
}

// The seq of a key under `prefix`, checking its length.
absl::StatusOr<int64_t> SeqOf(const rocksdb::Slice& key, size_t prefix_size, char type) {
  if (key.size() != prefix_size + 8) {
    return absl::DataLossError(absl::StrCat("store: malformed '", std::string(1, type), "' key"));
  }
  return static_cast<int64_t>(rec::ReadBigEndian64(key.data() + prefix_size));
}

std::string_view View(const rocksdb::Slice& s) {
  return std::string_view(s.data(), s.size());
}

// Calls `fn(key, value)` for every record of type `type` (the key's first byte) in every shard
// column family, in key order within a shard; stops at the first error.
template <typename Fn>
absl::Status ScanEveryShard(rocksdb::DB& db,
                            const std::vector<rocksdb::ColumnFamilyHandle*>& shards, char type,
                            const char* what, Fn fn) {
  const std::string lower(1, type);
  const std::string upper(1, static_cast<char>(type + 1));
  for (rocksdb::ColumnFamilyHandle* cf : shards) {
    rocksdb::ReadOptions ro;
    rocksdb::Slice upper_s(upper);
    ro.iterate_upper_bound = &upper_s;
    std::unique_ptr<rocksdb::Iterator> it(db.NewIterator(ro, cf));
    for (it->Seek(lower); it->Valid(); it->Next()) {
      if (absl::Status s = fn(View(it->key()), View(it->value())); !s.ok()) return s;
    }
    if (!it->status().ok()) return FromRocks(it->status(), what);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::optional<DedupeRecord>> Store::GetDedupe(std::string_view sender,
                                                             std::string_view cmid) {
  auto v = GetValue(db_.get(), shards_[ShardOf(sender)], rec::SubKey(rec::kDedupe, sender, cmid));
  if (!v.ok()) return v.status();
  if (!v->has_value()) return std::optional<DedupeRecord>();
  DedupeRecord r;
  if (absl::Status s = rec::DecodeDedupe(**v, &r, nullptr); !s.ok()) return s;
  return std::optional<DedupeRecord>(std::move(r));
}

absl::StatusOr<int64_t> Store::LastConvSeq(std::string_view conv) {
  return LastSeq(db_.get(), shards_[ShardOf(conv)], rec::OwnerPrefix(rec::kMessage, conv));
}

absl::StatusOr<int64_t> Store::LastInboxSeq(std::string_view user) {
  return LastSeq(db_.get(), shards_[ShardOf(user)], rec::OwnerPrefix(rec::kInbox, user));
}

absl::StatusOr<std::optional<MessageRecord>> Store::GetMessage(std::string_view conv, int64_t seq) {
  auto v = GetValue(db_.get(), shards_[ShardOf(conv)], rec::SeqKey(rec::kMessage, conv, seq));
  if (!v.ok()) return v.status();
  if (!v->has_value()) return std::optional<MessageRecord>();
  MessageRecord r;
  if (absl::Status s = rec::DecodeMessage(**v, &r); !s.ok()) return s;
  return std::optional<MessageRecord>(std::move(r));
}

absl::Status Store::ReadHistory(std::string_view conv, int64_t after, int64_t before, int limit,
                                std::vector<std::pair<int64_t, MessageRecord>>* out, bool* more) {
  out->clear();
  *more = false;
  if (before > 0 && before <= after + 1) return absl::OkStatus();
  const std::string prefix = rec::OwnerPrefix(rec::kMessage, conv);
  const std::string lower = after > 0 ? rec::SeqKey(rec::kMessage, conv, after + 1) : prefix;
  const std::string upper =
      before > 0 ? rec::SeqKey(rec::kMessage, conv, before) : PrefixEnd(prefix);
  rocksdb::ReadOptions ro;
  rocksdb::Slice lower_s(lower), upper_s(upper);
  ro.iterate_lower_bound = &lower_s;
  ro.iterate_upper_bound = &upper_s;
  SnapshotRef durable;
  {
    std::lock_guard<std::mutex> lock(durable_mu_);
    durable = durable_;
  }
  ro.snapshot = durable.get();  // null: the latest state (everything is durable)
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, shards_[ShardOf(conv)]));
  it->SeekToLast();
  for (; it->Valid() && static_cast<int>(out->size()) < limit; it->Prev()) {
    auto seq = SeqOf(it->key(), prefix.size(), rec::kMessage);
    if (!seq.ok()) return seq.status();
    MessageRecord r;
    if (absl::Status s = rec::DecodeMessage(View(it->value()), &r); !s.ok()) return s;
    out->emplace_back(*seq, std::move(r));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "history");
  *more = it->Valid();
  std::reverse(out->begin(), out->end());
  return absl::OkStatus();
}

absl::Status Store::ReadInbox(std::string_view user, int64_t after, int limit,
                              std::vector<std::pair<int64_t, InboxRecord>>* out, bool* more) {
  out->clear();
  *more = false;
  if (after == std::numeric_limits<int64_t>::max()) return absl::OkStatus();
  const std::string prefix = rec::OwnerPrefix(rec::kInbox, user);
  const std::string start = rec::SeqKey(rec::kInbox, user, std::max<int64_t>(after, 0) + 1);
  const std::string upper = PrefixEnd(prefix);
  rocksdb::ReadOptions ro;
  rocksdb::Slice upper_s(upper);
  ro.iterate_upper_bound = &upper_s;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, shards_[ShardOf(user)]));
  it->Seek(start);
  for (; it->Valid() && static_cast<int>(out->size()) < limit; it->Next()) {
    auto seq = SeqOf(it->key(), prefix.size(), rec::kInbox);
    if (!seq.ok()) return seq.status();
    InboxRecord r;
    if (absl::Status s = rec::DecodeInbox(View(it->value()), &r); !s.ok()) return s;
    out->emplace_back(*seq, std::move(r));
  }
  if (!it->status().ok()) return FromRocks(it->status(), "inbox");
  *more = it->Valid();
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Store::GetDeviceCursor(std::string_view user, std::string_view device) {
  auto v = GetValue(db_.get(), shards_[ShardOf(user)], rec::SubKey(rec::kDevice, user, device));
  if (!v.ok()) return v.status();
  if (!v->has_value()) return 0;
  int64_t cursor = 0;
  if (absl::Status s = rec::DecodeBe64Value(rec::kDevice, **v, &cursor); !s.ok()) return s;
  return cursor;
}

absl::StatusOr<int64_t> Store::GetLastSeen(std::string_view user) {
  auto v = GetValue(db_.get(), shards_[ShardOf(user)], rec::IdKey(rec::kLastSeen, user));
  if (!v.ok()) return v.status();
  if (!v->has_value()) return 0;
  int64_t wall_ms = 0;
  if (absl::Status s = rec::DecodeBe64Value(rec::kLastSeen, **v, &wall_ms); !s.ok()) return s;
  return wall_ms;
}

absl::StatusOr<std::optional<UserConvRecord>> Store::GetUserConv(std::string_view user,
                                                                 std::string_view conv) {
  auto v = GetValue(db_.get(), shards_[ShardOf(user)], rec::SubKey(rec::kUserConv, user, conv));
  if (!v.ok()) return v.status();
  if (!v->has_value()) return std::optional<UserConvRecord>();
  UserConvRecord r;
  if (absl::Status s = rec::DecodeUserConv(**v, &r); !s.ok()) return s;
  return std::optional<UserConvRecord>(r);
}

absl::Status Store::ReadUserConvs(std::string_view user,
                                  std::vector<std::pair<std::string, UserConvRecord>>* out) {
  out->clear();
  const std::string prefix = rec::OwnerPrefix(rec::kUserConv, user);
  const std::string upper = PrefixEnd(prefix);
  rocksdb::ReadOptions ro;
  rocksdb::Slice upper_s(upper);
  ro.iterate_upper_bound = &upper_s;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, shards_[ShardOf(user)]));
  for (it->Seek(prefix); it->Valid(); it->Next()) {
    UserConvRecord r;
    if (absl::Status s = rec::DecodeUserConv(View(it->value()), &r); !s.ok()) return s;
    out->emplace_back(std::string(View(it->key()).substr(prefix.size())), r);
  }
  if (!it->status().ok()) return FromRocks(it->status(), "user convs");
  return absl::OkStatus();
}

absl::StatusOr<std::optional<GroupRecord>> Store::GetGroup(std::string_view group) {
  auto v = GetValue(db_.get(), shards_[GroupShard(group)], rec::IdKey(rec::kGroup, group));
  if (!v.ok()) return v.status();
  if (!v->has_value()) return std::optional<GroupRecord>();
  GroupRecord r;
  if (absl::Status s = rec::DecodeGroup(**v, &r); !s.ok()) return s;
  return std::optional<GroupRecord>(std::move(r));
}

absl::Status Store::ListPendingFanout(std::vector<std::string>* convs) {
  convs->clear();
  return ScanEveryShard(*db_, shards_, rec::kPending, "pending fan-out",
                        [&](std::string_view key, std::string_view) {
                          convs->emplace_back(key.substr(1));
                          return absl::OkStatus();
                        });
}

absl::Status Store::ListGroupEvents(std::vector<PendingGroupEvent>* events) {
  events->clear();
  return ScanEveryShard(
      *db_, shards_, rec::kGroupEvent, "pending group events",
      [&](std::string_view key, std::string_view value) {
        // 'E' user 0x00 order(be64)
        if (key.size() < 10 || key[key.size() - 9] != '\0') {
          return absl::DataLossError("store: malformed 'E' key");
        }
        PendingGroupEvent e;
        e.user = std::string(key.substr(1, key.size() - 10));
        e.order = static_cast<int64_t>(rec::ReadBigEndian64(key.data() + key.size() - 8));
        if (absl::Status st = rec::DecodeGroupEvent(value, &e.rec); !st.ok()) return st;
        events->push_back(std::move(e));
        return absl::OkStatus();
      });
}

Store::Stats Store::GetStats() {
  Stats st;
  uint64_t v = 0;
  if (db_->GetAggregatedIntProperty("rocksdb.estimate-live-data-size", &v)) {
    st.live_data_bytes = v;
  }
  if (db_->GetAggregatedIntProperty("rocksdb.cur-size-all-mem-tables", &v)) {
    st.memtable_bytes = v;
  }
  if (db_->GetAggregatedIntProperty("rocksdb.estimate-pending-compaction-bytes", &v)) {
    st.pending_compaction_bytes = v;
  }
  st.block_cache_bytes = impl_->cache->GetUsage();
  st.disk_free_bytes = FreeBytes(MonoMillis());
  st.writes_refused =
      (options_.min_free_bytes != 0 && st.disk_free_bytes < options_.min_free_bytes) ||
      write_failed_.load(std::memory_order_acquire);
  return st;
}

}  // namespace parley::store

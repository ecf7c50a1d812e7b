#include <catch2/catch.hpp>
#include <cstdint>
#include <limits>
#include <string>

#include "parley/store/records.h"

namespace rec = parley::store::records;
using parley::store::DedupeRecord;
using parley::store::GroupEventRecord;
using parley::store::GroupRecord;
using parley::store::InboxRecord;
using parley::store::MessageRecord;
using parley::store::UserConvRecord;

namespace {

std::string BinaryString(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + 7) & 0xff);
  return s;
}

}  // namespace

TEST_CASE("varints round-trip at every length boundary", "[store]") {
  const uint64_t values[] = {0,
                             1,
                             127,
                             128,
                             16383,
                             16384,
                             (1ull << 32) - 1,
                             1ull << 32,
                             (1ull << 63) - 1,
                             1ull << 63,
                             std::numeric_limits<uint64_t>::max()};
  for (uint64_t v : values) {
    std::string buf = "x";  // appends after what is there
    rec::PutVarint64(&buf, v);
    std::string_view in(buf);
    in.remove_prefix(1);
    uint64_t out = 0;
    REQUIRE(rec::GetVarint64(&in, &out));
    CHECK(out == v);
    CHECK(in.empty());
  }
  std::string one;
  rec::PutVarint64(&one, 127);
  CHECK(one.size() == 1);
  std::string max;
  rec::PutVarint64(&max, std::numeric_limits<uint64_t>::max());
  CHECK(max.size() == 10);
}

TEST_CASE("varint decoding rejects truncated and overlong input", "[store]") {
  std::string buf;
  rec::PutVarint64(&buf, 1ull << 40);
  for (size_t n = 0; n < buf.size(); ++n) {
    std::string_view in(buf.data(), n);
    uint64_t v = 0;
    CHECK_FALSE(rec::GetVarint64(&in, &v));
  }
  std::string overlong(11, '\x80');
  overlong.back() = '\x01';
  std::string_view in(overlong);
  uint64_t v = 0;
  CHECK_FALSE(rec::GetVarint64(&in, &v));
  // Ten bytes whose last one carries more than the top bit overflow 64 bits.
  std::string overflow(9, '\xff');
  overflow.push_back('\x02');
  std::string_view in2(overflow);
  CHECK_FALSE(rec::GetVarint64(&in2, &v));
}

TEST_CASE("zigzag maps signed values both ways", "[store]") {
  const int64_t values[] = {0,
                            -1,
                            1,
                            -2,
                            63,
                            -64,
                            std::numeric_limits<int64_t>::max(),
                            std::numeric_limits<int64_t>::min()};
  for (int64_t v : values) CHECK(rec::UnZigZag(rec::ZigZag(v)) == v);
  CHECK(rec::ZigZag(-1) == 1);
  CHECK(rec::ZigZag(1) == 2);
}

TEST_CASE("sequence keys have the documented bytes and sort numerically", "[store]") {
  CHECK(rec::SeqKey('L', "c", 258) == std::string("Lc\0\0\0\0\0\0\0\x01\x02", 11));
  CHECK(rec::SubKey('X', "alice", "c-1") == std::string("Xalice\0c-1", 10));
  CHECK(rec::IdKey('G', "team") == "Gteam");
  CHECK(rec::OwnerPrefix('I', "bob") == std::string("Ibob\0", 5));

  const int64_t seqs[] = {0,
                          1,
                          2,
                          255,
                          256,
                          257,
                          65535,
                          65536,
                          1ll << 32,
                          1ll << 40,
                          std::numeric_limits<int64_t>::max()};
  for (size_t i = 1; i < std::size(seqs); ++i) {
    INFO(seqs[i - 1] << " < " << seqs[i]);
    CHECK(rec::SeqKey('L', "d:a:b", seqs[i - 1]) < rec::SeqKey('L', "d:a:b", seqs[i]));
  }
  // Every key of an id sorts before every key of a longer id it is a prefix of.
  CHECK(rec::SeqKey('I', "al", std::numeric_limits<int64_t>::max()) < rec::SeqKey('I', "alice", 0));
  CHECK(rec::OwnerPrefix('I', "al") < rec::SeqKey('I', "al", 0));
  CHECK(rec::ReadBigEndian64(rec::SeqKey('L', "c", 65536).data() + 3) == 65536);
}

TEST_CASE("message records round-trip, empty and large", "[store]") {
  MessageRecord empty;
  std::string buf;
  rec::EncodeMessage(empty, &buf);
  CHECK(static_cast<uint8_t>(buf[0]) == rec::kRecordVersion);
  MessageRecord out;
  out.body = "stale";
  REQUIRE(rec::DecodeMessage(buf, &out).ok());
  CHECK(out.from.empty());
  CHECK(out.cmid.empty());
  CHECK(out.ts == 0);
  CHECK(out.body.empty());
  CHECK(out.meta_json.empty());

  MessageRecord big{"alice", "c-81", -1764380000123, BinaryString(1 << 20), R"({"reply_to":16})"};
  buf.clear();
  rec::EncodeMessage(big, &buf);
  MessageRecord back;
  REQUIRE(rec::DecodeMessage(buf, &back).ok());
  CHECK(back.from == big.from);
  CHECK(back.cmid == big.cmid);
  CHECK(back.ts == big.ts);
  CHECK(back.body == big.body);
  CHECK(back.meta_json == big.meta_json);
}

TEST_CASE("inbox, dedupe, user-conv, group and cursor records round-trip", "[store]") {
  std::string buf;
  InboxRecord inbox{"g:team", 17, R"({"op":"group","change":"added"})"};
  rec::EncodeInbox(inbox, &buf);
  InboxRecord inbox_back;
  REQUIRE(rec::DecodeInbox(buf, &inbox_back).ok());
  CHECK(inbox_back.conv == inbox.conv);
  CHECK(inbox_back.seq == 17);
  CHECK(inbox_back.event_json == inbox.event_json);

  buf.clear();
  rec::EncodeInbox(InboxRecord{}, &buf);
  REQUIRE(rec::DecodeInbox(buf, &inbox_back).ok());
  CHECK(inbox_back.conv.empty());
  CHECK(inbox_back.event_json.empty());

  buf.clear();
  DedupeRecord dedupe{"d:alice:bob", 9, 1764380000123};
  rec::EncodeDedupe(dedupe, 1764380000999, &buf);
  DedupeRecord dedupe_back;
  int64_t written = 0;
  REQUIRE(rec::DecodeDedupe(buf, &dedupe_back, &written).ok());
  CHECK(dedupe_back.conv == dedupe.conv);
  CHECK(dedupe_back.seq == 9);
  CHECK(dedupe_back.ts == dedupe.ts);
  CHECK(written == 1764380000999);
  int64_t only_written = 0;
  REQUIRE(rec::DedupeWrittenMs(buf, &only_written));
  CHECK(only_written == 1764380000999);

  buf.clear();
  UserConvRecord uc{5, 1764380000123, 4, -1};
  rec::EncodeUserConv(uc, &buf);
  UserConvRecord uc_back;
  REQUIRE(rec::DecodeUserConv(buf, &uc_back).ok());
  CHECK(uc_back.last_seq == 5);
  CHECK(uc_back.last_ts == 1764380000123);
  CHECK(uc_back.read_seq == 4);
  CHECK(uc_back.joined_seq == -1);

  buf.clear();
  GroupRecord group{"Team", "alice", {}, 42};
  for (int i = 0; i < 200; ++i) group.members.push_back("user" + std::to_string(i));
  group.members.push_back("");
  rec::EncodeGroup(group, &buf);
  GroupRecord group_back;
  group_back.members = {"stale"};
  REQUIRE(rec::DecodeGroup(buf, &group_back).ok());
  CHECK(group_back.name == "Team");
  CHECK(group_back.owner == "alice");
  CHECK(group_back.members == group.members);
  CHECK(group_back.created_ts == 42);
  CHECK(group_back.first_seq == 0);

  // first_seq came later: a record written before it (ending after created_ts) reads as 0.
  buf.clear();
  GroupRecord recreated{"Room", "carol", {"carol"}, 7, 1234};
  rec::EncodeGroup(recreated, &buf);
  REQUIRE(rec::DecodeGroup(buf, &group_back).ok());
  CHECK(group_back.first_seq == 1234);
  CHECK(group_back.members == recreated.members);
  std::string older("\x01", 1);  // version, name, owner, one member, created_ts
  rec::PutVarint64(&older, 4);
  older += "Room";
  rec::PutVarint64(&older, 5);
  older += "carol";
  rec::PutVarint64(&older, 1);
  rec::PutVarint64(&older, 5);
  older += "carol";
  rec::PutVarint64(&older, 14);  // zigzag of 7
  group_back.first_seq = 99;
  REQUIRE(rec::DecodeGroup(older, &group_back).ok());
  CHECK(group_back.created_ts == 7);
  CHECK(group_back.first_seq == 0);
  older.push_back('\x02');  // first_seq 1
  older.push_back('\x00');  // and a byte too many
  CHECK(absl::IsDataLoss(rec::DecodeGroup(older, &group_back)));

  buf.clear();
  rec::EncodeGroup(GroupRecord{}, &buf);
  REQUIRE(rec::DecodeGroup(buf, &group_back).ok());
  CHECK(group_back.members.empty());

  buf.clear();
  rec::EncodeBe64Value(1ll << 40, &buf);
  CHECK(buf.size() == 8);
  int64_t cursor = 0;
  REQUIRE(rec::DecodeBe64Value(rec::kDevice, buf, &cursor).ok());
  CHECK(cursor == 1ll << 40);
}

TEST_CASE("corrupt records are DataLoss errors naming the key type", "[store]") {
  std::string buf;
  rec::EncodeMessage(MessageRecord{"alice", "c-1", 5, "hello", "{}"}, &buf);
  // Every strict prefix is truncated.
  for (size_t n = 0; n < buf.size(); ++n) {
    MessageRecord out;
    absl::Status s = rec::DecodeMessage(std::string_view(buf.data(), n), &out);
    INFO("prefix " << n);
    CHECK(absl::IsDataLoss(s));
    CHECK(s.message().find("'L'") != absl::string_view::npos);
  }
  MessageRecord out;
  CHECK(absl::IsDataLoss(rec::DecodeMessage(buf + "x", &out)));  // trailing bytes
  std::string wrong_version = buf;
  wrong_version[0] = 9;
  CHECK(absl::IsDataLoss(rec::DecodeMessage(wrong_version, &out)));

  InboxRecord inbox;
  absl::Status s = rec::DecodeInbox(
      "\x01\x05"
      "ab",
      &inbox);  // length 5, 2 bytes left
  CHECK(absl::IsDataLoss(s));
  CHECK(s.message().find("'I'") != absl::string_view::npos);

  DedupeRecord dedupe;
  s = rec::DecodeDedupe("", &dedupe, nullptr);
  CHECK(s.message().find("'X'") != absl::string_view::npos);
  int64_t written = 0;
  CHECK_FALSE(rec::DedupeWrittenMs("", &written));

  UserConvRecord uc;
  CHECK(rec::DecodeUserConv("\x01\x02", &uc).message().find("'U'") != absl::string_view::npos);

  GroupRecord group;
  // A member count far beyond the bytes present.
  std::string huge_count("\x01\x00\x00", 3);  // version, empty name, empty owner
  rec::PutVarint64(&huge_count, 1ull << 60);
  s = rec::DecodeGroup(huge_count, &group);
  CHECK(absl::IsDataLoss(s));
  CHECK(s.message().find("'G'") != absl::string_view::npos);

  int64_t cursor = 0;
  s = rec::DecodeBe64Value(rec::kDevice, "1234567", &cursor);
  CHECK(absl::IsDataLoss(s));
  CHECK(s.message().find("'D'") != absl::string_view::npos);
}

TEST_CASE("pending group event records round-trip and reject unknown flags", "[store]") {
  for (int flags = 0; flags < 4; ++flags) {
    GroupEventRecord e;
    e.conv = "g:team";
    e.event_json = R"({"group":"team","change":"removed","users":["bob"],"by":"alice","ts":7})";
    e.boundary = 41 + flags;
    e.join = (flags & 1) != 0;
    e.leave = (flags & 2) != 0;
    e.ts = 1764380000123;
    std::string buf;
    rec::EncodeGroupEvent(e, &buf);
    GroupEventRecord back;
    REQUIRE(rec::DecodeGroupEvent(buf, &back).ok());
    CHECK(back.conv == e.conv);
    CHECK(back.event_json == e.event_json);
    CHECK(back.boundary == e.boundary);
    CHECK(back.join == e.join);
    CHECK(back.leave == e.leave);
    CHECK(back.ts == e.ts);
    for (size_t n = 0; n < buf.size(); ++n) {
      absl::Status s = rec::DecodeGroupEvent(std::string_view(buf.data(), n), &back);
      CHECK(absl::IsDataLoss(s));
      CHECK(s.message().find("'E'") != absl::string_view::npos);
    }
  }
  // Flags beyond join|leave are corrupt, not silently dropped.
  std::string bad(1, '\x01');
  bad += std::string("\x00\x00\x00", 3);  // empty conv, empty event, boundary 0
  rec::PutVarint64(&bad, 4);
  bad.push_back('\0');  // ts
  GroupEventRecord out;
  CHECK(absl::IsDataLoss(rec::DecodeGroupEvent(bad, &out)));
}

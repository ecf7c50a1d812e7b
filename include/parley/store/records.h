// Byte layout of the store: key encodings and the binary value records (see store.h for the
// key table). Exposed so that tests and tools can check the layout; everything else goes
// through Store and Batch.
//
// Guarantees:
// - Keys of one kind and owner sort by their numeric sequence (big-endian seq after a 0x00
//   separator; ids never contain 0x00).
// - Every value record starts with a version byte; decoding checks lengths and rejects
//   truncated, overlong or trailing bytes with absl::DataLossError naming the key type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "parley/store/store.h"

namespace parley::store::records {

// ---- Varints (LEB128, at most 10 bytes) and zigzag for signed values ----
void PutVarint64(std::string* out, uint64_t v);
// Reads a varint from the front of *in and advances it; false if truncated or overlong.
bool GetVarint64(std::string_view* in, uint64_t* v);
inline uint64_t ZigZag(int64_t v) {
  return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
}
inline int64_t UnZigZag(uint64_t v) {
  return static_cast<int64_t>((v >> 1) ^ (~(v & 1) + 1));
}

// ---- Key kinds ----
inline constexpr char kMessage = 'L';
inline constexpr char kInbox = 'I';
inline constexpr char kDedupe = 'X';
inline constexpr char kUserConv = 'U';
inline constexpr char kDevice = 'D';
inline constexpr char kPending = 'P';
inline constexpr char kGroup = 'G';
inline constexpr char kGroupEvent = 'E';
inline constexpr char kLastSeen = 'S';

// type id 0x00 — the common prefix of every key of one kind and owner.
std::string OwnerPrefix(char type, std::string_view id);
// type id 0x00 seq(be64)
std::string SeqKey(char type, std::string_view id, int64_t seq);
// type id 0x00 sub
std::string SubKey(char type, std::string_view id, std::string_view sub);
// type id ('P', 'G' and 'S' keys)
std::string IdKey(char type, std::string_view id);
// The same encodings appended to *out (no allocation once *out has grown).
void AppendSeqKey(std::string* out, char type, std::string_view id, int64_t seq);
void AppendSubKey(std::string* out, char type, std::string_view id, std::string_view sub);
void AppendIdKey(std::string* out, char type, std::string_view id);

void AppendBigEndian64(std::string* out, uint64_t v);
uint64_t ReadBigEndian64(const char* p);

// ---- Value records ----
inline constexpr uint8_t kRecordVersion = 1;

void EncodeMessage(const MessageRecord& rec, std::string* out);
absl::Status DecodeMessage(std::string_view in, MessageRecord* rec);

void EncodeInbox(const InboxRecord& rec, std::string* out);
absl::Status DecodeInbox(std::string_view in, InboxRecord* rec);

// The write time (ms since the epoch) leads the record so the TTL filter reads only it.
void EncodeDedupe(const DedupeRecord& rec, int64_t written_ms, std::string* out);
absl::Status DecodeDedupe(std::string_view in, DedupeRecord* rec, int64_t* written_ms);
// Just the write time; false when the record is not readable.
bool DedupeWrittenMs(std::string_view in, int64_t* written_ms);

void EncodeUserConv(const UserConvRecord& rec, std::string* out);
absl::Status DecodeUserConv(std::string_view in, UserConvRecord* rec);

void EncodeGroup(const GroupRecord& rec, std::string* out);
absl::Status DecodeGroup(std::string_view in, GroupRecord* rec);

void EncodeGroupEvent(const GroupEventRecord& rec, std::string* out);
absl::Status DecodeGroupEvent(std::string_view in, GroupEventRecord* rec);

// Device cursors ('D') and last-seen times ('S') are a bare be64 (no version byte).
void EncodeBe64Value(int64_t v, std::string* out);
absl::Status DecodeBe64Value(char type, std::string_view in, int64_t* v);

}  // namespace parley::store::records

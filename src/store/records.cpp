#include "parley/store/records.h"

#include "absl/strings/str_cat.h"

namespace parley::store::records {

void PutVarint64(std::string* out, uint64_t v) {
  if (v < 0x80) {  // lengths and small numbers: the common case
    out->push_back(static_cast<char>(v));
    return;
  }
  char buf[10];
  size_t n = 0;
  while (v >= 0x80) {
    buf[n++] = static_cast<char>(static_cast<uint8_t>(v) | 0x80);
    v >>= 7;
  }
  buf[n++] = static_cast<char>(v);
  out->append(buf, n);
}

bool GetVarint64(std::string_view* in, uint64_t* v) {
  uint64_t result = 0;
  for (size_t i = 0; i < in->size() && i < 10; ++i) {
    const uint64_t byte = static_cast<uint8_t>((*in)[i]);
    // The tenth byte may carry only the top bit of a 64-bit value.
    if (i == 9 && byte > 1) return false;
    result |= (byte & 0x7f) << (7 * i);
    if ((byte & 0x80) == 0) {
      in->remove_prefix(i + 1);
      *v = result;
      return true;
    }
  }
  return false;
}

void AppendBigEndian64(std::string* out, uint64_t v) {
  char buf[8];
  for (int i = 7; i >= 0; --i) {
    buf[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  out->append(buf, 8);
}

uint64_t ReadBigEndian64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

std::string OwnerPrefix(char type, std::string_view id) {
  std::string k;
  k.reserve(id.size() + 2 + 8);
  k.push_back(type);
  k.append(id);
  k.push_back('\0');
  return k;
}

void AppendSeqKey(std::string* out, char type, std::string_view id, int64_t seq) {
  out->push_back(type);
  out->append(id);
  out->push_back('\0');
  AppendBigEndian64(out, static_cast<uint64_t>(seq));
}

void AppendSubKey(std::string* out, char type, std::string_view id, std::string_view sub) {
  out->push_back(type);
  out->append(id);
  out->push_back('\0');
  out->append(sub);
}

void AppendIdKey(std::string* out, char type, std::string_view id) {
  out->push_back(type);
  out->append(id);
}

std::string SeqKey(char type, std::string_view id, int64_t seq) {
  std::string k;
  k.reserve(id.size() + 10);
  AppendSeqKey(&k, type, id, seq);
  return k;
}

std::string SubKey(char type, std::string_view id, std::string_view sub) {
  std::string k;
  k.reserve(id.size() + sub.size() + 2);
  AppendSubKey(&k, type, id, sub);
  return k;
}

std::string IdKey(char type, std::string_view id) {
  std::string k;
  k.reserve(id.size() + 1);
  AppendIdKey(&k, type, id);
  return k;
}

namespace {

void PutString(std::string* out, std::string_view s) {
  PutVarint64(out, s.size());
  out->append(s);
}

void PutSigned(std::string* out, int64_t v) {
  PutVarint64(out, ZigZag(v));
}

// Reads one record field after another; the first failure sticks.
class Reader {
 public:
  Reader(std::string_view in, char type) : in_(in), type_(type) {}

  void Version() {
    if (!ok_) return;
    if (in_.empty()) {
      Fail("empty value");
      return;
    }
    const uint8_t v = static_cast<uint8_t>(in_[0]);
    in_.remove_prefix(1);
    if (v != kRecordVersion) Fail(absl::StrCat("unsupported record version ", v));
  }
  void Unsigned(uint64_t* v) {
    if (ok_ && !GetVarint64(&in_, v)) Fail("bad varint");
  }
  void Signed(int64_t* v) {
    uint64_t u = 0;
    Unsigned(&u);
    if (ok_) *v = UnZigZag(u);
  }
  void String(std::string* s) {
    uint64_t n = 0;
    Unsigned(&n);
    if (!ok_) return;
    if (n > in_.size()) {
      Fail("string length past the end");
      return;
    }
    s->assign(in_.data(), n);
    in_.remove_prefix(n);
  }
  absl::Status Finish() {
    if (ok_ && !in_.empty()) Fail("trailing bytes");
    return status_;
  }
  bool ok() const { return ok_; }
  bool AtEnd() const { return ok_ && in_.empty(); }

 private:
  void Fail(const std::string& why) {
    ok_ = false;
    status_ = absl::DataLossError(
        absl::StrCat("store: corrupt '", std::string(1, type_), "' record: ", why));
  }
  std::string_view in_;
  char type_;
  bool ok_ = true;
  absl::Status status_;
};

}  // namespace

void EncodeMessage(const MessageRecord& rec, std::string* out) {
  out->reserve(out->size() + 1 + rec.from.size() + rec.cmid.size() + rec.body.size() +
               rec.meta_json.size() + 24);
  out->push_back(static_cast<char>(kRecordVersion));
  PutString(out, rec.from);
  PutString(out, rec.cmid);
  PutSigned(out, rec.ts);
  PutString(out, rec.body);
  PutString(out, rec.meta_json);
}

absl::Status DecodeMessage(std::string_view in, MessageRecord* rec) {
  Reader r(in, kMessage);
  r.Version();
  r.String(&rec->from);
  r.String(&rec->cmid);
  r.Signed(&rec->ts);
  r.String(&rec->body);
  r.String(&rec->meta_json);
  return r.Finish();
}

void EncodeInbox(const InboxRecord& rec, std::string* out) {
  out->push_back(static_cast<char>(kRecordVersion));
  PutString(out, rec.conv);
  PutSigned(out, rec.seq);
  PutString(out, rec.event_json);
}

absl::Status DecodeInbox(std::string_view in, InboxRecord* rec) {
  Reader r(in, kInbox);
  r.Version();
  r.String(&rec->conv);
  r.Signed(&rec->seq);
  r.String(&rec->event_json);
  return r.Finish();
}

void EncodeDedupe(const DedupeRecord& rec, int64_t written_ms, std::string* out) {
  out->push_back(static_cast<char>(kRecordVersion));
  PutSigned(out, written_ms);
  PutString(out, rec.conv);
  PutSigned(out, rec.seq);
  PutSigned(out, rec.ts);
}

absl::Status DecodeDedupe(std::string_view in, DedupeRecord* rec, int64_t* written_ms) {
  Reader r(in, kDedupe);
  r.Version();
  int64_t written = 0;
  r.Signed(&written);
  r.String(&rec->conv);
  r.Signed(&rec->seq);
  r.Signed(&rec->ts);
  if (written_ms != nullptr) *written_ms = written;
  return r.Finish();
}

bool DedupeWrittenMs(std::string_view in, int64_t* written_ms) {
  Reader r(in, kDedupe);
  r.Version();
  r.Signed(written_ms);
  return r.ok();
}

void EncodeUserConv(const UserConvRecord& rec, std::string* out) {
  out->push_back(static_cast<char>(kRecordVersion));
  PutSigned(out, rec.last_seq);
  PutSigned(out, rec.last_ts);
  PutSigned(out, rec.read_seq);
  PutSigned(out, rec.joined_seq);
}

absl::Status DecodeUserConv(std::string_view in, UserConvRecord* rec) {
  Reader r(in, kUserConv);
  r.Version();
  r.Signed(&rec->last_seq);
  r.Signed(&rec->last_ts);
  r.Signed(&rec->read_seq);
  r.Signed(&rec->joined_seq);
  return r.Finish();
}

void EncodeGroup(const GroupRecord& rec, std::string* out) {
  out->push_back(static_cast<char>(kRecordVersion));
  PutString(out, rec.name);
  PutString(out, rec.owner);
  PutVarint64(out, rec.members.size());
  for (const std::string& m : rec.members) PutString(out, m);
  PutSigned(out, rec.created_ts);
  PutSigned(out, rec.first_seq);
}

absl::Status DecodeGroup(std::string_view in, GroupRecord* rec) {
  Reader r(in, kGroup);
  r.Version();
  r.String(&rec->name);
  r.String(&rec->owner);
  uint64_t n = 0;
  r.Unsigned(&n);
  rec->members.clear();
  // Every member takes at least one byte, so a count past the remaining size is corrupt;
  // checking it first keeps a bad count from reserving huge memory.
  if (r.ok() && n > in.size()) return absl::DataLossError("store: corrupt 'G' record: bad count");
  if (r.ok()) rec->members.resize(n);
  for (uint64_t i = 0; i < n && r.ok(); ++i) r.String(&rec->members[i]);
  r.Signed(&rec->created_ts);
  rec->first_seq = 0;
  if (!r.AtEnd()) r.Signed(&rec->first_seq);  // a later field: older records end before it
  return r.Finish();
}

void EncodeGroupEvent(const GroupEventRecord& rec, std::string* out) {
  out->push_back(static_cast<char>(kRecordVersion));
  PutString(out, rec.conv);
  PutString(out, rec.event_json);
  PutSigned(out, rec.boundary);
  PutVarint64(out, (rec.join ? 1u : 0u) | (rec.leave ? 2u : 0u));
  PutSigned(out, rec.ts);
}

absl::Status DecodeGroupEvent(std::string_view in, GroupEventRecord* rec) {
  Reader r(in, kGroupEvent);
  r.Version();
  r.String(&rec->conv);
  r.String(&rec->event_json);
  r.Signed(&rec->boundary);
  uint64_t flags = 0;
  r.Unsigned(&flags);
  if (r.ok() && flags > 3) {
    return absl::DataLossError("store: corrupt 'E' record: unknown flags");
  }
  rec->join = (flags & 1) != 0;
  rec->leave = (flags & 2) != 0;
  r.Signed(&rec->ts);
  return r.Finish();
}

void EncodeBe64Value(int64_t v, std::string* out) {
  AppendBigEndian64(out, static_cast<uint64_t>(v));
}

absl::Status DecodeBe64Value(char type, std::string_view in, int64_t* v) {
  if (in.size() != 8) {
    return absl::DataLossError(absl::StrCat("store: corrupt '", absl::string_view(&type, 1),
                                            "' record: ", in.size(), " bytes, want 8"));
  }
  *v = static_cast<int64_t>(ReadBigEndian64(in.data()));
  return absl::OkStatus();
}

}  // namespace parley::store::records

#include "parley/proto/request.h"

#include <algorithm>
#include <array>
#include <concepts>
#include <utility>

#include "parley/util/ids.h"

namespace parley::proto {
namespace {

namespace od = simdjson::ondemand;
using simdjson::error_code;

// Integers on the wire are JSON integers below 2^53 (so every client can represent them).
constexpr int64_t kMaxWireInt = int64_t{1} << 53;
// Object/array nesting allowed inside one field's value (meta, or a field Parley ignores).
// On Demand itself never recurses; this bounds the validating walk below.
constexpr int kMaxNesting = 64;
constexpr size_t kMaxNameBytes = 128;
constexpr int64_t kMaxSyncLimit = 1000;
constexpr int64_t kMaxHistoryLimit = 200;
constexpr int64_t kMaxConvsLimit = 1000;
// Keys and op names quoted back in error messages are cut to this length.
constexpr size_t kMaxQuotedBytes = 64;

constexpr std::string_view kBadRequest = "bad_request";
constexpr std::string_view kTooLarge = "too_large";
constexpr std::string_view kIdRule = " must be 1-64 bytes of [A-Za-z0-9_.@-]";

constexpr std::array<std::string_view, 18> kOpNames = {
    "hello",        "ping",      "send",         "ack",         "sync",       "history",
    "read",         "convs",     "typing",       "presence",    "watch",      "unwatch",
    "group_create", "group_add", "group_remove", "group_leave", "group_info", "groups",
};
static_assert(static_cast<size_t>(Op::kGroups) + 1 == kOpNames.size());

bool LookupOp(std::string_view name, Op* op) {
  for (size_t i = 0; i < kOpNames.size(); ++i) {
    if (kOpNames[i] == name) {
      *op = static_cast<Op>(i);
      return true;
    }
  }
  return false;
}

// Every key any request uses. A key has one JSON type whatever the op, so a value can be
// decoded as soon as its key is seen, before the op (which may come later) is known.
enum Field : uint8_t {
  kId,
  kOp,
  kToken,
  kUser,
  kDevice,
  kTo,
  kGroup,
  kCmid,
  kBody,
  kMeta,
  kInbox,
  kSince,
  kLimit,
  kBefore,
  kSeq,
  kConv,
  kStatus,
  kUsers,
  kMembers,
  kName,
  kFrom,  // admin send only
  kNumFields,
  kUnknown,
};

constexpr std::array<std::string_view, kNumFields> kFieldNames = {
    "id",   "op",   "token",  "user",  "device",  "to",    "group",
    "cmid", "body", "meta",   "inbox", "since",   "limit", "before",
    "seq",  "conv", "status", "users", "members", "name",  "from",
};

Field LookupField(std::string_view key) {
  // Dispatch on length first, then a few fixed-length comparisons.
  switch (key.size()) {
    case 2:
      if (key == "id") return kId;
      if (key == "op") return kOp;
      if (key == "to") return kTo;
      break;
    case 3:
      if (key == "seq") return kSeq;
      break;
    case 4:
      if (key == "cmid") return kCmid;
      if (key == "body") return kBody;
      if (key == "user") return kUser;
      if (key == "meta") return kMeta;
      if (key == "conv") return kConv;
      if (key == "name") return kName;
      if (key == "from") return kFrom;
      break;
    case 5:
      if (key == "token") return kToken;
      if (key == "group") return kGroup;
      if (key == "inbox") return kInbox;
      if (key == "since") return kSince;
      if (key == "limit") return kLimit;
      if (key == "users") return kUsers;
      break;
    case 6:
      if (key == "device") return kDevice;
      if (key == "before") return kBefore;
      if (key == "status") return kStatus;
      break;
    case 7:
      if (key == "members") return kMembers;
      break;
    default:
      break;
  }
  return kUnknown;
}

constexpr uint32_t Bit(Field f) {
  return uint32_t{1} << f;
}

// Cuts `s` for quoting in a message, never inside a UTF-8 sequence (the message must stay
// valid UTF-8 to go out in a text frame).
std::string_view Clip(std::string_view s) {
  if (s.size() <= kMaxQuotedBytes) return s;
  size_t n = kMaxQuotedBytes;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n);
}

// Message assembly. Debian's Abseil has its own string_view type, so absl::StrCat does not
// take std::string_view.
void AppendPiece(std::string* out, std::string_view s) {
  out->append(s);
}
void AppendPiece(std::string* out, std::integral auto n) {
  out->append(std::to_string(n));
}

template <typename... Args>
std::string Cat(const Args&... args) {
  std::string out;
  (AppendPiece(&out, args), ...);
  return out;
}

// Reads and validates one JSON value completely (On Demand alone would skip over an unread
// value without checking it), bounding nesting at kMaxNesting. `depth` counts the containers
// enclosing `v`.
error_code SkipValue(od::value& v, int depth) {
  od::json_type type;
  if (error_code e = v.type().get(type)) return e;
  switch (type) {
    case od::json_type::object: {
      if (depth >= kMaxNesting) return simdjson::DEPTH_ERROR;
      od::object obj;
      if (error_code e = v.get_object().get(obj)) return e;
      for (auto field_result : obj) {
        od::field field;
        if (error_code e = std::move(field_result).get(field)) return e;
        std::string_view key;
        if (error_code e = field.unescaped_key().get(key)) return e;
        if (error_code e = SkipValue(field.value(), depth + 1)) return e;
      }
      return simdjson::SUCCESS;
    }
    case od::json_type::array: {
      if (depth >= kMaxNesting) return simdjson::DEPTH_ERROR;
      od::array arr;
      if (error_code e = v.get_array().get(arr)) return e;
      for (auto element_result : arr) {
        od::value element;
        if (error_code e = std::move(element_result).get(element)) return e;
        if (error_code e = SkipValue(element, depth + 1)) return e;
      }
      return simdjson::SUCCESS;
    }
    case od::json_type::string: {
      std::string_view s;
      return v.get_string().get(s);
    }
    case od::json_type::number: {
      // get_double accepts every well-formed JSON number, including integers beyond 64 bits.
      double d;
      return v.get_double().get(d);
    }
    case od::json_type::boolean: {
      bool b;
      return v.get_bool().get(b);
    }
    case od::json_type::null: {
      bool is_null;
      if (error_code e = v.is_null().get(is_null)) return e;
      return is_null ? simdjson::SUCCESS : simdjson::N_ATOM_ERROR;
    }
  }
  return simdjson::TAPE_ERROR;
}

// A users/members array as read: the valid ids (up to the limit) and the first problem.
struct IdListState {
  absl::InlinedVector<std::string_view, 4> ids;
  bool wrong_type = false;  // not an array
  int64_t bad_index = -1;   // first element that is not a valid id string
  uint64_t count = 0;       // elements seen
};

// Everything read from the object, before the op decides what matters.
class FieldReader {
 public:
  FieldReader(od::document& doc, const DecodeLimits& limits) : doc_(doc), limits_(limits) {}

  // Reads the value of a known key. Returns a simdjson error only for malformed JSON; a
  // well-formed value of the wrong type or range is recorded in wrong_type_.
  error_code Read(Field f, od::value& v) {
    const error_code e = ReadValue(f, v);
    // A value that failed to parse is never used (e.g. as the id echoed with the error).
    if (e) wrong_type_ |= Bit(f);
    return e;
  }

  bool Has(Field f) const { return (seen_ & Bit(f)) != 0; }
  bool Usable(Field f) const { return ((seen_ & ~wrong_type_) & Bit(f)) != 0; }
  bool WrongType(Field f) const { return (wrong_type_ & Bit(f)) != 0; }
  // The value of a field that was present with the right type; empty / 0 otherwise.
  std::string_view Str(Field f) const {
    return Usable(f) ? std::string_view(slots_[f].str.data, slots_[f].str.size)
                     : std::string_view();
  }
  int64_t Int(Field f) const { return Usable(f) ? slots_[f].num : 0; }
  std::string_view meta() const { return meta_; }
  IdListState& users() { return users_; }
  IdListState& members() { return members_; }

  // Marks `f` as seen; false if it was already.
  bool MarkSeen(Field f) {
    if (Has(f)) return false;
    seen_ |= Bit(f);
    return true;
  }

 private:
  error_code ReadValue(Field f, od::value& v) {
    switch (f) {
      case kId:
      case kInbox:
      case kSince:
      case kLimit:
      case kBefore:
      case kSeq:
        return ReadInt(f, v);
      case kMeta:
        return ReadMeta(v);
      case kUsers:
        return ReadIdList(&users_, v);
      case kMembers:
        return ReadIdList(&members_, v);
      default:
        return ReadString(f, v);
    }
  }

  error_code ReadString(Field f, od::value& v) {
    od::json_type type;
    if (error_code e = v.type().get(type)) return e;
    if (type == od::json_type::string) {
      std::string_view s;
      error_code e = v.get_string().get(s);
      slots_[f].str = {s.data(), s.size()};
      return e;
    }
    wrong_type_ |= Bit(f);
    return SkipValue(v, 1);
  }

  error_code ReadInt(Field f, od::value& v) {
    od::json_type type;
    if (error_code e = v.type().get(type)) return e;
    if (type != od::json_type::number) {
      wrong_type_ |= Bit(f);
      return SkipValue(v, 1);
    }
    int64_t n;
    if (v.get_int64().get(n) == simdjson::SUCCESS) {
      if (n >= kMaxWireInt || n <= -kMaxWireInt) wrong_type_ |= Bit(f);
      slots_[f].num = n;
      return simdjson::SUCCESS;
    }
    // Not an int64 (a fraction, an exponent, or too large): still has to be a valid number.
    wrong_type_ |= Bit(f);
    double d;
    return v.get_double().get(d);
  }

  error_code ReadMeta(od::value& v) {
    od::json_type type;
    if (error_code e = v.type().get(type)) return e;
    if (type != od::json_type::object) {
      wrong_type_ |= Bit(kMeta);
      return SkipValue(v, 1);
    }
    // Validate the whole object, then take its text verbatim from the input: from its '{' to
    // the token after its '}' (the parent's ',' or '}'), minus the whitespace in between.
    const char* begin = v.raw_json_token().data();
    if (error_code e = SkipValue(v, 1)) return e;
    const char* end;
    if (error_code e = doc_.current_location().get(end)) return e;
    std::string_view raw(begin, static_cast<size_t>(end - begin));
    while (!raw.empty() &&
           (raw.back() == ' ' || raw.back() == '\t' || raw.back() == '\n' || raw.back() == '\r')) {
      raw.remove_suffix(1);
    }
    meta_ = raw;
    return simdjson::SUCCESS;
  }

  error_code ReadIdList(IdListState* list, od::value& v) {
    od::json_type type;
    if (error_code e = v.type().get(type)) return e;
    if (type != od::json_type::array) {
      list->wrong_type = true;
      return SkipValue(v, 1);
    }
    od::array arr;
    if (error_code e = v.get_array().get(arr)) return e;
    for (auto element_result : arr) {
      od::value element;
      if (error_code e = std::move(element_result).get(element)) return e;
      const uint64_t index = list->count++;
      od::json_type element_type;
      if (error_code e = element.type().get(element_type)) return e;
      if (element_type != od::json_type::string) {
        if (list->bad_index < 0) list->bad_index = static_cast<int64_t>(index);
        if (error_code e = SkipValue(element, 2)) return e;
        continue;
      }
      std::string_view id;
      if (error_code e = element.get_string().get(id)) return e;
      if (!IsValidId(id)) {
        if (list->bad_index < 0) list->bad_index = static_cast<int64_t>(index);
      } else if (list->ids.size() < limits_.max_users_per_request) {
        // Ids past the limit are only counted: the request fails as too_large anyway.
        list->ids.push_back(id);
      }
    }
    return simdjson::SUCCESS;
  }

  od::document& doc_;
  const DecodeLimits& limits_;
  uint32_t seen_ = 0;
  uint32_t wrong_type_ = 0;
  // Left uninitialised on purpose (zeroing them was a measurable part of a decode); a slot is
  // read only when its field was seen with the right type (Usable).
  union Slot {
    struct {
      const char* data;
      size_t size;
    } str;
    int64_t num;
  };
  Slot slots_[kNumFields];
  std::string_view meta_;
  IdListState users_;
  IdListState members_;
};

// Per-op validation of what FieldReader read; fills the Request or the error.
class Validator {
 public:
  Validator(FieldReader& fields, const DecodeLimits& limits, Request* out, DecodeError* error)
      : f_(fields), limits_(limits), out_(out), error_(error) {}

  bool Fail(std::string_view code, std::string message) {
    error_->code = code;
    error_->message = std::move(message);
    error_->id = out_->id;
    return false;
  }

  // A required id-alphabet string.
  bool RequireId(Field f, std::string_view* dst) {
    if (!f_.Has(f)) return Fail(kBadRequest, Cat("missing ", kFieldNames[f]));
    return OptionalId(f, dst);
  }

  bool OptionalId(Field f, std::string_view* dst) {
    if (!f_.Has(f)) return true;
    if (f_.WrongType(f) || !IsValidId(f_.Str(f))) {
      return Fail(kBadRequest, Cat(kFieldNames[f], kIdRule));
    }
    *dst = f_.Str(f);
    return true;
  }

  bool RequireInt(Field f, int64_t min, int64_t* dst) {
    if (!f_.Has(f)) return Fail(kBadRequest, Cat("missing ", kFieldNames[f]));
    return OptionalInt(f, min, dst);
  }

  bool OptionalInt(Field f, int64_t min, int64_t* dst) {
    if (!f_.Has(f)) return true;
    if (f_.WrongType(f) || f_.Int(f) < min) {
      return Fail(kBadRequest,
                  Cat(kFieldNames[f], " must be an integer >= ", min, " and below 2^53"));
    }
    *dst = f_.Int(f);
    return true;
  }

  // limit: optional, >= 1, clamped to `max`.
  bool Limit(int64_t max) {
    if (!OptionalInt(kLimit, 1, &out_->limit)) return false;
    if (out_->limit > max) out_->limit = max;
    return true;
  }

  // Exactly one of to / group (send, typing).
  bool Target() {
    if (f_.Has(kTo) == f_.Has(kGroup)) {
      return Fail(kBadRequest, "exactly one of to/group is required");
    }
    return OptionalId(kTo, &out_->to) && OptionalId(kGroup, &out_->group);
  }

  bool Conv() {
    if (!f_.Has(kConv)) return Fail(kBadRequest, "missing conv");
    ConvRef ref;
    if (f_.WrongType(kConv) || !ParseConvId(f_.Str(kConv), &ref)) {
      return Fail(kBadRequest,
                  "conv is not a canonical conversation id (d:<a>:<b> with a <= b, or g:<group>)");
    }
    out_->conv = f_.Str(kConv);
    return true;
  }

  // A users/members array; moved into out_->users.
  bool IdList(Field f, IdListState& list, bool required_non_empty) {
    const std::string_view name = kFieldNames[f];
    if (!f_.Has(f)) {
      if (!required_non_empty) return true;
      return Fail(kBadRequest, Cat("missing ", name));
    }
    if (list.wrong_type) return Fail(kBadRequest, Cat(name, " must be an array of ids"));
    if (list.bad_index >= 0) {
      return Fail(kBadRequest, Cat(name, "[", list.bad_index, "]", kIdRule));
    }
    if (required_non_empty && list.count == 0) {
      return Fail(kBadRequest, Cat(name, " must not be empty"));
    }
    if (list.count > limits_.max_users_per_request) {
      return Fail(kTooLarge,
                  Cat(name, " has more than ", limits_.max_users_per_request, " entries"));
    }
    out_->users = std::move(list.ids);
    return true;
  }

  bool Hello() {
    if (!f_.Has(kToken) && !f_.Has(kUser)) return Fail(kBadRequest, "hello needs token or user");
    if (f_.Has(kToken)) {
      if (f_.WrongType(kToken) || f_.Str(kToken).empty()) {
        return Fail(kBadRequest, "token must be a non-empty string");
      }
      out_->token = f_.Str(kToken);
    }
    return OptionalId(kUser, &out_->user) && OptionalId(kDevice, &out_->device);
  }

  bool Send() {
    if (!Target() || !RequireId(kCmid, &out_->cmid)) return false;
    const bool has_meta = f_.Has(kMeta);
    if (!f_.Has(kBody)) {
      // Required even with meta (PROTOCOL.md section 10), where it may be "".
      return Fail(kBadRequest,
                  has_meta ? "missing body (it may be \"\" with meta)" : "missing body");
    } else if (f_.WrongType(kBody)) {
      return Fail(kBadRequest, "body must be a string");
    } else if (!has_meta && f_.Str(kBody).empty()) {
      // A message has to carry something: an empty body only goes with meta.
      return Fail(kBadRequest, "body must be a non-empty string unless meta is present");
    }
    if (has_meta && f_.WrongType(kMeta)) return Fail(kBadRequest, "meta must be a JSON object");
    if (f_.Str(kBody).size() > limits_.max_body_bytes) {
      return Fail(kTooLarge, Cat("body exceeds ", limits_.max_body_bytes, " bytes"));
    }
    if (f_.meta().size() > limits_.max_meta_bytes) {
      return Fail(kTooLarge, Cat("meta exceeds ", limits_.max_meta_bytes, " bytes"));
    }
    out_->body = f_.Str(kBody);
    out_->meta_json = f_.meta();
    return true;
  }

  bool Presence() {
    const std::string_view status = f_.Str(kStatus);
    if (!f_.Has(kStatus) || f_.WrongType(kStatus) || (status != "online" && status != "busy")) {
      return Fail(kBadRequest, "status must be \"online\" or \"busy\"");
    }
    out_->status = status;
    return true;
  }

  bool GroupCreate() {
    if (!OptionalId(kGroup, &out_->group)) return false;
    if (f_.Has(kName)) {
      if (f_.WrongType(kName) || f_.Str(kName).size() > kMaxNameBytes) {
        return Fail(kBadRequest, "name must be a string of at most 128 bytes");
      }
      out_->name = f_.Str(kName);
    }
    return IdList(kMembers, f_.members(), /*required_non_empty=*/false);
  }

  bool Run(Op op) {
    switch (op) {
      case Op::kHello:
        return Hello();
      case Op::kPing:
        return true;
      case Op::kSend:
        return Send();
      case Op::kAck:
        return RequireInt(kInbox, 0, &out_->inbox);
      case Op::kSync:
        return OptionalInt(kSince, 0, &out_->since) && Limit(kMaxSyncLimit);
      case Op::kHistory:
        return Conv() && OptionalInt(kBefore, 1, &out_->before) && Limit(kMaxHistoryLimit);
      case Op::kRead:
        return Conv() && RequireInt(kSeq, 0, &out_->seq);
      case Op::kConvs:
        return Limit(kMaxConvsLimit);
      case Op::kTyping:
        return Target();
      case Op::kPresence:
        return Presence();
      case Op::kWatch:
      case Op::kUnwatch:
        return IdList(kUsers, f_.users(), /*required_non_empty=*/true);
      case Op::kGroupCreate:
        return GroupCreate();
      case Op::kGroupAdd:
      case Op::kGroupRemove:
        return RequireId(kGroup, &out_->group) &&
               IdList(kUsers, f_.users(), /*required_non_empty=*/true);
      case Op::kGroupLeave:
      case Op::kGroupInfo:
        return RequireId(kGroup, &out_->group);
      case Op::kGroups:
        return true;
    }
    return Fail(kBadRequest, "unknown op");
  }

 private:
  FieldReader& f_;
  const DecodeLimits& limits_;
  Request* out_;
  DecodeError* error_;
};

bool Fail(DecodeError* error, std::string_view code, std::string message, int64_t id) {
  error->code = code;
  error->message = std::move(message);
  error->id = id;
  return false;
}

std::string InvalidJson(error_code e) {
  if (e == simdjson::DEPTH_ERROR) {
    return Cat("invalid JSON: nested deeper than ", kMaxNesting, " levels");
  }
  return Cat("invalid JSON: ", simdjson::error_message(e));
}

// True if two of `keys` are equal. Requests carry few unknown keys; a request made of
// thousands of them still costs O(n log n), not O(n^2).
bool HasDuplicate(absl::InlinedVector<std::string_view, 8>& keys, std::string_view* dup) {
  if (keys.size() <= 16) {
    for (size_t i = 0; i < keys.size(); ++i) {
      for (size_t j = i + 1; j < keys.size(); ++j) {
        if (keys[i] == keys[j]) {
          *dup = keys[i];
          return true;
        }
      }
    }
    return false;
  }
  std::sort(keys.begin(), keys.end());
  auto it = std::adjacent_find(keys.begin(), keys.end());
  if (it == keys.end()) return false;
  *dup = *it;
  return true;
}

// Back to the defaults, field by field: assigning a fresh Request trips GCC's -Wuninitialized
// on InlinedVector's storage, and chained assignments (a = b = {}) compile to stores reloaded
// at once, which stalls store forwarding on every decode.
void Reset(Request* r) {
  r->op = Op::kPing;
  r->id = -1;
  for (std::string_view* s : {&r->token, &r->user, &r->device, &r->to, &r->group, &r->cmid,
                              &r->body, &r->meta_json, &r->conv, &r->status, &r->name, &r->from}) {
    *s = {};
  }
  for (int64_t* n : {&r->inbox, &r->since, &r->limit, &r->before, &r->seq}) *n = -1;
  r->users.clear();
}

// What a decode reads: a client's request, or the admin API's send (op optional, "from").
enum class Dialect { kClient, kAdminSend };

bool Decode(simdjson::ondemand::parser& parser, simdjson::padded_string_view json,
            const DecodeLimits& limits, Dialect dialect, Request* out, DecodeError* error) {
  Reset(out);
  od::document doc;
  if (error_code e = parser.iterate(json).get(doc)) {
    return Fail(error, kBadRequest, InvalidJson(e), -1);
  }
  od::object obj;
  if (error_code e = doc.get_object().get(obj)) {
    return Fail(error, kBadRequest,
                e == simdjson::INCORRECT_TYPE ? "request must be a JSON object" : InvalidJson(e),
                -1);
  }

  FieldReader fields(doc, limits);
  bool repeated = false;  // some key appeared twice
  std::string_view duplicate;
  bool id_repeated = false;
  absl::InlinedVector<std::string_view, 8> unknown_keys;
  // The id as far as it could be read, for errors found before the object is complete.
  auto readable_id = [&]() -> int64_t {
    if (!fields.Has(kId) || fields.WrongType(kId) || id_repeated) return -1;
    return fields.Int(kId) >= 0 ? fields.Int(kId) : -1;
  };

  error_code e = simdjson::SUCCESS;
  for (auto field_result : obj) {
    od::field field;
    if ((e = std::move(field_result).get(field))) break;
    std::string_view key;
    if ((e = field.unescaped_key().get(key))) break;
    const Field which = LookupField(key);
    if (which == kUnknown) {
      unknown_keys.push_back(key);
      if ((e = SkipValue(field.value(), 1))) break;
      continue;
    }
    if (!fields.MarkSeen(which)) {
      if (!repeated) duplicate = key;
      repeated = true;
      if (which == kId) id_repeated = true;
    }
    if ((e = fields.Read(which, field.value()))) break;
  }
  if (e) return Fail(error, kBadRequest, InvalidJson(e), readable_id());
  // Anything after the closing brace makes the message invalid JSON.
  const char* trailing;
  if (doc.current_location().get(trailing) != simdjson::OUT_OF_BOUNDS) {
    return Fail(error, kBadRequest, "invalid JSON: content after the request object",
                readable_id());
  }

  // Whether the request names a known op is settled before the other checks, so that a caller
  // can tell a request with bad fields (a duplicate key, a bad id) from text that is no
  // request at all.
  Op op = Op::kPing;
  const bool op_known = fields.Has(kOp) && !fields.WrongType(kOp) && LookupOp(fields.Str(kOp), &op);
  if (op_known) {
    error->op_known = true;
    error->op = op;
  }
  const int64_t id = readable_id();
  if (repeated || HasDuplicate(unknown_keys, &duplicate)) {
    return Fail(error, kBadRequest, Cat("duplicate key \"", Clip(duplicate), "\""), id);
  }
  if (fields.Has(kId) && id < 0) {
    return Fail(error, kBadRequest, "id must be an integer >= 0 and below 2^53", -1);
  }
  Validator validator(fields, limits, out, error);
  if (dialect == Dialect::kAdminSend) {
    if (fields.Has(kOp) && !(op_known && op == Op::kSend)) {
      return Fail(error, kBadRequest, "op must be \"send\" (or left out)", id);
    }
    out->op = Op::kSend;
    out->id = id;
    return validator.Send() && validator.RequireId(kFrom, &out->from);
  }
  if (!fields.Has(kOp)) return Fail(error, kBadRequest, "missing op", id);
  if (fields.WrongType(kOp)) return Fail(error, kBadRequest, "op must be a string", id);
  if (!op_known) {
    return Fail(error, kBadRequest, Cat("unknown op \"", Clip(fields.Str(kOp)), "\""), id);
  }
  out->op = op;
  out->id = id;
  return validator.Run(op);
}

}  // namespace

std::string_view OpName(Op op) {
  const auto index = static_cast<size_t>(op);
  return index < kOpNames.size() ? kOpNames[index] : std::string_view("unknown");
}

bool DecodeRequest(simdjson::ondemand::parser& parser, simdjson::padded_string_view json,
                   const DecodeLimits& limits, Request* out, DecodeError* error) {
  return Decode(parser, json, limits, Dialect::kClient, out, error);
}

bool DecodeAdminSend(simdjson::ondemand::parser& parser, simdjson::padded_string_view json,
                     const DecodeLimits& limits, Request* out, DecodeError* error) {
  return Decode(parser, json, limits, Dialect::kAdminSend, out, error);
}

std::string DirectConvId(std::string_view a, std::string_view b) {
  if (b < a) std::swap(a, b);
  std::string conv;
  conv.reserve(3 + a.size() + b.size());
  conv.append("d:").append(a).push_back(':');
  conv.append(b);
  return conv;
}

std::string GroupConvId(std::string_view group) {
  std::string conv;
  conv.reserve(2 + group.size());
  conv.append("g:").append(group);
  return conv;
}

bool ParseConvId(std::string_view conv, ConvRef* out) {
  if (conv.size() < 3 || conv[1] != ':') return false;
  const std::string_view rest = conv.substr(2);
  if (conv[0] == 'g') {
    if (!IsValidId(rest)) return false;
    *out = ConvRef{.is_group = true, .a = {}, .b = {}, .group = rest};
    return true;
  }
  if (conv[0] != 'd') return false;
  const size_t colon = rest.find(':');
  if (colon == std::string_view::npos) return false;
  const std::string_view a = rest.substr(0, colon);
  const std::string_view b = rest.substr(colon + 1);  // a second ':' fails IsValidId
  if (!IsValidId(a) || !IsValidId(b) || b < a) return false;
  *out = ConvRef{.is_group = false, .a = a, .b = b, .group = {}};
  return true;
}

}  // namespace parley::proto

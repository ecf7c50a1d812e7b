// DecodeRequest and DecodeAdminSend on arbitrary bytes: must never crash, and whatever they
// accept must satisfy the guarantees the chat layer relies on.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "parley/proto/request.h"
#include "parley/util/ids.h"

using namespace parley::proto;

namespace {

void Check(bool condition) {
  if (!condition) std::abort();
}

bool IsWireInt(int64_t v, int64_t min) {
  return v >= min && v < (int64_t{1} << 53);
}

void CheckSend(const Request& req, const DecodeLimits& limits) {
  Check(req.to.empty() != req.group.empty());
  Check(req.to.empty() || parley::IsValidId(req.to));
  Check(req.group.empty() || parley::IsValidId(req.group));
  Check(parley::IsValidId(req.cmid));
  Check(!req.body.empty() || !req.meta_json.empty());
  Check(req.body.size() <= limits.max_body_bytes);
  Check(req.meta_json.size() <= limits.max_meta_bytes);
  if (!req.meta_json.empty()) {
    Check(req.meta_json.front() == '{' && req.meta_json.back() == '}');
    // The captured meta must itself be one valid JSON object.
    simdjson::dom::parser dom;
    simdjson::dom::object obj;
    Check(dom.parse(std::string(req.meta_json)).get(obj) == simdjson::SUCCESS);
  }
}

// The admin API's send: an op, if any, is "send"; "from" is a valid id.
void CheckAdminSend(simdjson::ondemand::parser& parser, const simdjson::padded_string& input,
                    const DecodeLimits& limits) {
  Request req;
  DecodeError error;
  if (!DecodeAdminSend(parser, input, limits, &req, &error)) {
    Check(error.code == "bad_request" || error.code == "too_large");
    Check(!error.message.empty());
    return;
  }
  Check(req.op == Op::kSend);
  Check(parley::IsValidId(req.from));
  CheckSend(req, limits);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static simdjson::ondemand::parser parser;
  // Small limits so that the fuzzer reaches the too_large paths.
  DecodeLimits limits;
  limits.max_body_bytes = 64;
  limits.max_meta_bytes = 48;
  limits.max_users_per_request = 5;

  const simdjson::padded_string input(reinterpret_cast<const char*>(data), size);
  CheckAdminSend(parser, input, limits);
  Request req;
  DecodeError error;
  if (!DecodeRequest(parser, input, limits, &req, &error)) {
    Check(error.code == "bad_request" || error.code == "too_large");
    Check(!error.message.empty());
    Check(error.id == -1 || IsWireInt(error.id, 0));
    return 0;
  }
  Check(req.id == -1 || IsWireInt(req.id, 0));
  Check(!OpName(req.op).empty());
  auto valid_or_empty = [](std::string_view id) { return id.empty() || parley::IsValidId(id); };
  Check(valid_or_empty(req.user) && valid_or_empty(req.device) && valid_or_empty(req.to) &&
        valid_or_empty(req.group));
  for (std::string_view u : req.users) Check(parley::IsValidId(u));
  Check(req.users.size() <= limits.max_users_per_request);
  Check(req.body.size() <= limits.max_body_bytes);
  Check(req.meta_json.size() <= limits.max_meta_bytes);
  switch (req.op) {
    case Op::kHello:
      Check(!req.token.empty() || !req.user.empty());
      break;
    case Op::kSend:
      CheckSend(req, limits);
      break;
    case Op::kTyping:
      Check(req.to.empty() != req.group.empty());
      break;
    case Op::kAck:
      Check(IsWireInt(req.inbox, 0));
      break;
    case Op::kSync:
      Check(req.since == -1 || IsWireInt(req.since, 0));
      Check(req.limit == -1 || (req.limit >= 1 && req.limit <= 1000));
      break;
    case Op::kHistory: {
      ConvRef ref;
      Check(ParseConvId(req.conv, &ref));
      Check(req.before == -1 || IsWireInt(req.before, 1));
      Check(req.limit == -1 || (req.limit >= 1 && req.limit <= 200));
      break;
    }
    case Op::kRead: {
      ConvRef ref;
      Check(ParseConvId(req.conv, &ref));
      Check(IsWireInt(req.seq, 0));
      break;
    }
    case Op::kConvs:
      Check(req.limit == -1 || (req.limit >= 1 && req.limit <= 1000));
      break;
    case Op::kPresence:
      Check(req.status == "online" || req.status == "busy");
      break;
    case Op::kWatch:
    case Op::kUnwatch:
    case Op::kGroupAdd:
    case Op::kGroupRemove:
      Check(!req.users.empty());
      break;
    case Op::kGroupCreate:
      Check(req.name.size() <= 128);
      break;
    case Op::kGroupLeave:
    case Op::kGroupInfo:
      Check(parley::IsValidId(req.group));
      break;
    case Op::kPing:
    case Op::kGroups:
      break;
  }
  return 0;
}

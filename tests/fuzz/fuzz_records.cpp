// The store's value-record decoders on arbitrary bytes (what a corrupted or foreign database
// could hold): each must either fail with DataLoss or succeed, never crash, and whatever it
// accepts must encode to bytes that decode to the same record (re-encoding twice gives the
// same bytes). The first input byte picks the decoder.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "parley/store/records.h"

namespace rec = parley::store::records;
using namespace parley::store;  // the record structs

namespace {

void Check(bool condition) {
  if (!condition) std::abort();
}

// Decodes `in`; if it is accepted, encodes the record, decodes that, encodes again and
// requires both encodings to agree.
template <typename Record, typename Decode, typename Encode>
void RoundTrip(std::string_view in, Decode decode, Encode encode) {
  Record first;
  absl::Status st = decode(in, &first);
  if (!st.ok()) {
    Check(absl::IsDataLoss(st));
    Check(!st.message().empty());
    return;
  }
  std::string once;
  encode(first, &once);
  Record second;
  Check(decode(once, &second).ok());
  std::string twice;
  encode(second, &twice);
  Check(once == twice);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 8) {
    case 0:
      RoundTrip<MessageRecord>(in, rec::DecodeMessage, rec::EncodeMessage);
      break;
    case 1:
      RoundTrip<InboxRecord>(in, rec::DecodeInbox, rec::EncodeInbox);
      break;
    case 2: {
      int64_t written = 0;
      RoundTrip<DedupeRecord>(
          in,
          [&](std::string_view s, DedupeRecord* r) { return rec::DecodeDedupe(s, r, &written); },
          [&](const DedupeRecord& r, std::string* out) { rec::EncodeDedupe(r, written, out); });
      // The TTL filter's shortcut reads the same time as the full decoder.
      DedupeRecord full;
      int64_t full_ms = 0, quick_ms = 0;
      if (rec::DecodeDedupe(in, &full, &full_ms).ok()) {
        Check(rec::DedupeWrittenMs(in, &quick_ms) && quick_ms == full_ms);
      }
      break;
    }
    case 3:
      RoundTrip<UserConvRecord>(in, rec::DecodeUserConv, rec::EncodeUserConv);
      break;
    case 4:
      RoundTrip<GroupRecord>(in, rec::DecodeGroup, rec::EncodeGroup);
      break;
    case 5:
      RoundTrip<GroupEventRecord>(in, rec::DecodeGroupEvent, rec::EncodeGroupEvent);
      break;
    case 6: {
      int64_t v = 0;
      absl::Status st = rec::DecodeBe64Value(rec::kDevice, in, &v);
      if (st.ok()) {
        std::string out;
        rec::EncodeBe64Value(v, &out);
        Check(out == in);  // a bare be64: exactly one encoding
      } else {
        Check(absl::IsDataLoss(st));
      }
      break;
    }
    default: {
      // Varints: whatever is read re-encodes to at most the bytes it was read from.
      std::string_view rest = in;
      uint64_t v = 0;
      while (rec::GetVarint64(&rest, &v)) {
        std::string out;
        rec::PutVarint64(&out, v);
        uint64_t back = 0;
        std::string_view view = out;
        Check(rec::GetVarint64(&view, &back) && back == v && view.empty());
        Check(rec::UnZigZag(rec::ZigZag(static_cast<int64_t>(v))) == static_cast<int64_t>(v));
      }
      break;
    }
  }
  return 0;
}

// Protocol error codes (PROTOCOL.md section 3) carried in absl::Status across the chat layer.
//
// Mapping: InvalidArgument -> bad_request, Unauthenticated -> unauthenticated,
// PermissionDenied -> forbidden, NotFound -> not_found, OutOfRange -> too_large,
// ResourceExhausted -> rate_limited, AlreadyExists -> conflict, Unavailable -> unavailable,
// anything else -> internal.
#pragma once

#include <string_view>

#include "absl/status/status.h"

namespace parley::chat {

std::string_view ProtocolCode(const absl::Status& status);

}  // namespace parley::chat

// The stable hash that places users, conversations and groups on logical shards.
//
// Guarantee: the value depends only on the bytes of the key (XXH3-64, seed 0). It is the same
// on every restart, every core count and every node, so data written under one shard layout is
// found under any other. Never change it: persisted placement depends on it.
#pragma once

#include <cstdint>
#include <string_view>

namespace parley {

uint64_t StableHash(std::string_view key);

}  // namespace parley

#include "parley/util/stable_hash.h"

#include <xxhash.h>

namespace parley {

uint64_t StableHash(std::string_view key) {
  return XXH3_64bits(key.data(), key.size());
}

}  // namespace parley

#include <catch2/catch.hpp>

#include "parley/util/ids.h"
#include "parley/util/stable_hash.h"

TEST_CASE("ids follow the protocol alphabet and length", "[util]") {
  using parley::IsValidId;
  CHECK(IsValidId("alice"));
  CHECK(IsValidId("a.b@c-d_E9"));
  CHECK(IsValidId(std::string(64, 'x')));
  CHECK_FALSE(IsValidId(""));
  CHECK_FALSE(IsValidId(std::string(65, 'x')));
  CHECK_FALSE(IsValidId("a b"));
  CHECK_FALSE(IsValidId("a:b"));
  CHECK_FALSE(IsValidId("caf\xc3\xa9"));
}

TEST_CASE("the stable hash is XXH3-64 with seed 0 and never changes", "[util]") {
  // Pinned values: shard placement of persisted data depends on them.
  CHECK(parley::StableHash("") == 0x2D06800538D394C2ull);
  CHECK(parley::StableHash("alice") != parley::StableHash("bob"));
  CHECK(parley::StableHash("alice") == parley::StableHash(std::string("alice")));
}

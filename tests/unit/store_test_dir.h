// Store test fixtures: a fresh directory under /tmp for one test, removed with everything in
// it afterwards, and a small unsynced store opened in it.
#pragma once

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

#include "parley/store/store.h"

namespace parley::store::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/parley-store-test-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Options for a test store in `dir`: no fsync, small caches.
inline StoreOptions TestStoreOptions(const std::string& dir) {
  StoreOptions o;
  o.data_dir = dir;
  o.sync = false;
  o.block_cache_bytes = 8 << 20;
  o.write_buffer_bytes_total = 32 << 20;
  return o;
}

// Opens a store with `o`; the test fails if it cannot.
inline std::unique_ptr<Store> OpenTestStore(const StoreOptions& o) {
  auto s = Store::Open(o);
  REQUIRE(s.ok());
  return std::move(*s);
}

inline std::unique_ptr<Store> OpenTestStore(const std::string& dir) {
  return OpenTestStore(TestStoreOptions(dir));
}

}  // namespace parley::store::testing

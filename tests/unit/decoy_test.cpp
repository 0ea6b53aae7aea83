// Both bundled stores read a decoy record on every miss of a non-empty store (the
// timing oracle of doc/failure-modes.md), sparse tables and deleted rows included. Observed through
// the library's private per-thread counter (src/decoy_reads.hpp), which only a static build lets a
// test link to.
#include <cstdint>
#include <memory>
#include <string>

#include "apikeys/memory_store.hpp"
#include "apikeys/sqlite_store.hpp"
#include "catch.hpp"
#include "store_contract.hpp"
#include "test_support.hpp"

#if defined(APIKEYS_STATIC_DEFINE)
#include "decoy_probe.hpp"

namespace {

using apikeys_test::account_id;
using apikeys_test::misses_without_decoy;
using apikeys_test::contract::key_id;
using apikeys_test::contract::public_key;
using apikeys_test::contract::record;

}  // namespace

TEST_CASE("MemoryStore reads a decoy on every miss, sparse table included",
          "[store][memory][timing]") {
  const apikeys::Uuid alice = account_id(1);
  apikeys::MemoryStore store;

  // Empty: nothing to read, and nothing read.
  CHECK(misses_without_decoy(store, 10) == 40);

  // 2,000 keys, then all but 3 removed: most slots a miss probes are empty.
  for (std::uint32_t n = 1; n <= 2000; ++n) store.insert(record(n, alice));
  for (std::uint32_t n = 1; n <= 2000; ++n) {
    if (n != 7 && n != 1000 && n != 1999) REQUIRE(store.remove(alice, key_id(n)));
  }
  REQUIRE(store.size() == 3);
  CHECK(misses_without_decoy(store, 500) == 0);

  // A hit reads no decoy and still returns its own record.
  const std::uint64_t before = apikeys::detail::decoy_reads();
  REQUIRE(store.find(public_key(1000)));
  CHECK(store.find(public_key(1000))->info.key_id == key_id(1000));
  CHECK(store.find_for_validation(public_key(1000))->info.key_id == key_id(1000));
  CHECK(apikeys::detail::decoy_reads() == before);

  // One key left.
  REQUIRE(store.remove(alice, key_id(7)));
  REQUIRE(store.remove(alice, key_id(1999)));
  CHECK(misses_without_decoy(store, 100) == 0);
}

TEST_CASE("SqliteStore reads a decoy on every miss, deleted rowids and gaps included",
          "[store][sqlite][timing]") {
  const apikeys::Uuid alice = account_id(1);
  apikeys_test::TempDir dir;
  apikeys::SqliteStoreOptions options;
  options.durable = false;
  apikeys::SqliteStore store(dir.file("decoy.db"), options);

  // Empty: nothing to read, and nothing read.
  CHECK(misses_without_decoy(store, 10) == 40);

  // Rowids 1..200; this thread's reader has seen only misses so far.
  for (std::uint32_t n = 1; n <= 200; ++n) store.insert(record(n, alice));
  CHECK(misses_without_decoy(store, 50) == 0);

  // Rowid 1 and most others deleted, the largest ones too: decoy rowids now fall in
  // gaps, on deleted rows and past the end of the table.
  for (std::uint32_t n = 1; n <= 200; ++n) {
    if (n != 60 && n != 61 && n != 150) REQUIRE(store.remove(alice, key_id(n)));
  }
  CHECK(misses_without_decoy(store, 500) == 0);

  // A hit reads no decoy and still returns its own record.
  const std::uint64_t before = apikeys::detail::decoy_reads();
  const auto hit = store.find(public_key(150));
  REQUIRE(hit);
  CHECK(hit->info.key_id == key_id(150));
  const auto read = store.find_for_validation(public_key(150));
  REQUIRE(read);
  CHECK(read->info.key_id == key_id(150));
  CHECK(apikeys::detail::decoy_reads() == before);

  // A reader opened now (a second store on the file) learns the table as it is.
  apikeys::SqliteStore other(dir.file("decoy.db"), options);
  CHECK(misses_without_decoy(other, 100) == 0);
}

#endif  // APIKEYS_STATIC_DEFINE

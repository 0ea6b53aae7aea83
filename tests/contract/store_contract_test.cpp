// Runs the Store contract (store_contract.hpp) on every bundled backend, plus the
// MemoryStore-only behaviour (its bound, also for rotate; its size; millisecond precision).
#include <chrono>
#include <memory>
#include <random>
#include <set>
#include <string>

#include "apikeys/error.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/sqlite_store.hpp"
#include "catch.hpp"
#include "store_contract.hpp"
#include "test_support.hpp"

using apikeys_test::contract::error_code_of;
using apikeys_test::contract::record;

TEST_CASE("MemoryStore satisfies the Store contract", "[store][memory]") {
  apikeys_test::run_store_contract([] { return std::make_shared<apikeys::MemoryStore>(); });
}

TEST_CASE("SqliteStore satisfies the Store contract", "[store][sqlite]") {
  apikeys_test::TempDir dir;
  int n = 0;
  apikeys_test::run_store_contract([&] {
    apikeys::SqliteStoreOptions options;
    options.durable = false;  // Faster in tests; the contract is the same.
    return std::make_shared<apikeys::SqliteStore>(
        dir.file("contract-" + std::to_string(n++) + ".db"), options);
  });
}

TEST_CASE("SqliteStore keeps a change log of revokes and deletes", "[store][sqlite]") {
  apikeys_test::TempDir dir;
  int n = 0;
  apikeys_test::run_change_log_contract(
      [&] {
        apikeys::SqliteStoreOptions options;
        options.durable = false;
        return std::make_shared<apikeys::SqliteStore>(
            dir.file("log-" + std::to_string(n++) + ".db"), options);
      },
      apikeys::SqliteStore::kChangeLogSize);
}

TEST_CASE("MemoryStore returns any scopes and rate limits it was given, byte for byte",
          "[store][memory]") {
  // It keeps them in the key's own allocation, encoded: text KeyManager would refuse (a
  // space, an empty scope, a NUL, a long name) must come back as it went in, from every
  // read, and a rewrite must replace them whole.
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  apikeys::MemoryStore store;
  apikeys::KeyRecord r = record(1, alice);
  r.info.scopes = {"a b", "", std::string("nul\0byte", 8), std::string(300, 'x'), "\xE6\x97\xA5"};
  r.info.rate_limits = {
      apikeys::RateLimit{"", 1, std::chrono::milliseconds(1), 0},
      apikeys::RateLimit{std::string(70, 'n'), UINT64_MAX, std::chrono::milliseconds(INT64_MAX),
                         UINT64_MAX},
      apikeys::RateLimit{std::string("odd \0 name", 10), 5, std::chrono::milliseconds(-1), 7}};
  r.info.rotated_to = apikeys_test::account_id(9);  // a successor link without a predecessor
  store.insert(r);
  const auto check = [&](const apikeys::KeyInfo& got) {
    CHECK(got.scopes == r.info.scopes);
    CHECK(got.rate_limits == r.info.rate_limits);
    CHECK_FALSE(got.rotated_from);
    CHECK(got.rotated_to == r.info.rotated_to);
    CHECK(got.public_key == r.info.public_key);
    CHECK(got.title == r.info.title);
  };
  check(store.find(r.info.public_key)->info);
  check(*store.get(alice, r.info.key_id));
  check(store.list(alice).at(0));
  const auto read = store.find_for_validation(r.info.public_key);
  REQUIRE(read);
  CHECK(read->info.scopes == r.info.scopes);
  CHECK(read->info.rate_limits == r.info.rate_limits);

  apikeys::KeyInfo next = *store.get(alice, r.info.key_id);
  next.scopes = {"only"};
  next.rate_limits.clear();
  next.rotated_from = apikeys_test::account_id(8);  // not a changeable field: ignored
  next.rotated_to = apikeys_test::account_id(10);
  REQUIRE(store.replace(alice, next, next.version).outcome == apikeys::WriteOutcome::applied);
  const auto after = store.find(r.info.public_key);
  REQUIRE(after);
  CHECK(after->info.scopes == std::vector<std::string>{"only"});
  CHECK(after->info.rate_limits.empty());
  CHECK_FALSE(after->info.rotated_from);
  CHECK(after->info.rotated_to == next.rotated_to);
}

TEST_CASE("MemoryStore refuses inserts beyond max_keys", "[store][memory]") {
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  apikeys::MemoryStore store(2);
  store.insert(record(1, alice));
  store.insert(record(2, alice));
  CHECK(store.size() == 2);
  CHECK(error_code_of([&] { store.insert(record(3, alice)); }) == apikeys::ErrorCode::storage);
  CHECK(store.size() == 2);
  CHECK_FALSE(store.find(apikeys_test::contract::public_key(3)));

  // A duplicate is still reported as a duplicate when full.
  CHECK(error_code_of([&] { store.insert(record(1, alice)); }) ==
        apikeys::ErrorCode::already_exists);

  REQUIRE(store.remove(alice, apikeys_test::contract::key_id(1)));
  CHECK(store.size() == 1);
  store.insert(record(3, alice));
  CHECK(store.size() == 2);
}

TEST_CASE("MemoryStore keeps millisecond precision and revision 0", "[store][memory]") {
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  apikeys::MemoryStore store;
  apikeys::KeyRecord r = record(1, alice);
  const apikeys::TimePoint base = apikeys_test::contract::at(0);
  r.info.created_at = base + std::chrono::microseconds(1999);
  r.info.expires_at = base + std::chrono::microseconds(5500);
  store.insert(r);
  store.record_last_use({{r.info.key_id, base + std::chrono::microseconds(7700)}});

  const auto got = store.find(r.info.public_key);
  REQUIRE(got);
  CHECK(got->info.created_at == base + std::chrono::milliseconds(1));
  CHECK(got->info.expires_at == base + std::chrono::milliseconds(5));
  CHECK(got->info.last_used_at == base + std::chrono::milliseconds(7));

  REQUIRE(store.set_status(alice, r.info.key_id, apikeys::KeyStatus::revoked));
  CHECK(store.revision() == 0);
}

TEST_CASE("MemoryStore finds exactly its keys through growth, removals and shrinking",
          "[store][memory]") {
  // MemoryStore's public-key index is its own open-addressing table (removals shift
  // later slots back, the table halves when 1/8 full): checked against a model over
  // random inserts and removals, every key present and absent looked up along the way.
  using apikeys_test::contract::key_id;
  using apikeys_test::contract::public_key;
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  apikeys::MemoryStore store;
  std::set<std::uint32_t> model;
  std::mt19937 rng(20261125);
  constexpr std::uint32_t kUniverse = 3000;
  auto check_all = [&] {
    REQUIRE(store.size() == model.size());
    std::size_t wrong = 0;
    for (std::uint32_t n = 0; n < kUniverse; ++n) {
      const auto got = store.find(public_key(n));
      const bool present = model.count(n) != 0;
      if (got.has_value() != present || (got && got->info.key_id != key_id(n))) ++wrong;
    }
    CHECK(wrong == 0);
  };
  // Phases: fill to ~2,400 keys, drain to ~30 (the table shrinks), refill, drain to 0.
  for (const double keep : {0.8, 0.01, 0.6, 0.0}) {
    const auto target = static_cast<std::size_t>(keep * kUniverse);
    for (int step = 0; step < 6000; ++step) {
      const std::uint32_t n = rng() % kUniverse;
      const bool grow = model.size() < target;
      if (grow && model.count(n) == 0) {
        store.insert(record(n, alice));
        model.insert(n);
      } else if (!grow && model.count(n) != 0) {
        REQUIRE(store.remove(alice, key_id(n)));
        model.erase(n);
      }
    }
    check_all();
  }
  for (const std::uint32_t n : std::set<std::uint32_t>(model)) {
    REQUIRE(store.remove(alice, key_id(n)));
    model.erase(n);
  }
  check_all();
  // Reusable after being emptied.
  store.insert(record(7, alice));
  model.insert(7);
  check_all();
}

TEST_CASE("MemoryStore's bound holds for rotate's successor", "[store][memory]") {
  using apikeys_test::contract::key_id;
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  apikeys::MemoryStore store(2);
  const apikeys::KeyRecord old_key = record(1, alice);
  store.insert(old_key);
  store.insert(record(2, alice));
  apikeys::KeyRecord successor = record(3, alice, 10);
  successor.info.rotated_from = old_key.info.key_id;
  apikeys::KeyInfo old_next = old_key.info;
  old_next.rotated_to = successor.info.key_id;
  old_next.expires_at = apikeys_test::contract::at(20);

  // Full: storage, and neither key changes.
  CHECK(error_code_of([&] { (void)store.rotate(alice, old_next, 1, successor); }) ==
        apikeys::ErrorCode::storage);
  CHECK(store.size() == 2);
  CHECK_FALSE(store.find(successor.info.public_key));
  const auto unchanged = store.get(alice, old_key.info.key_id);
  REQUIRE(unchanged);
  CHECK(unchanged->version == 1);
  CHECK_FALSE(unchanged->rotated_to);
  CHECK_FALSE(unchanged->expires_at);

  // Room again: it applies.
  REQUIRE(store.remove(alice, key_id(2)));
  CHECK(store.rotate(alice, old_next, 1, successor).outcome == apikeys::WriteOutcome::applied);
  CHECK(store.size() == 2);
  CHECK(store.get(alice, old_key.info.key_id)->rotated_to == successor.info.key_id);
}

TEST_CASE("MemoryStore keeps millisecond precision in the policy fields' times",
          "[store][memory]") {
  using std::chrono::microseconds;
  using std::chrono::milliseconds;
  const apikeys::Uuid alice = apikeys_test::account_id(1);
  apikeys::MemoryStore store;
  const apikeys::TimePoint base = apikeys_test::contract::at(0);
  apikeys::KeyRecord r = record(1, alice);
  r.info.updated_at = base + microseconds(2999);
  store.insert(r);
  CHECK(store.find(r.info.public_key)->info.updated_at == base + milliseconds(2));

  apikeys::KeyInfo next = *store.get(alice, r.info.key_id);
  next.updated_at = base + microseconds(4100);
  next.expires_at = base + microseconds(9999);
  const apikeys::WriteResult written = store.replace(alice, next, next.version);
  REQUIRE(written.outcome == apikeys::WriteOutcome::applied);
  CHECK(written.key.updated_at == base + milliseconds(4));
  CHECK(written.key.expires_at == base + milliseconds(9));
  CHECK(store.find(r.info.public_key)->info.expires_at == base + milliseconds(9));

  const auto revoked = store.revoke_all(alice, base + microseconds(12'345));
  REQUIRE(revoked.size() == 1);
  CHECK(revoked[0].updated_at == base + milliseconds(12));
  CHECK(store.get(alice, r.info.key_id)->updated_at == base + milliseconds(12));
  CHECK(store.revision() == 0);
}

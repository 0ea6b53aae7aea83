// Rehash on use (doc/peppers.md) and equal work on the store path (doc/validate.md):
// keys whose digest was made under the legacy pepper validate, and their first
// validations rewrite the digest under the current pepper, through the writer thread,
// without undoing a racing change; a wrong secret or a cache hit queues nothing; and
// every store-path outcome costs the same number of HMACs.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "apikeys/error.hpp"
#include "apikeys/hasher.hpp"
#include "apikeys/key_generator.hpp"
#include "apikeys/key_manager.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/memory_store.hpp"
#include "apikeys/observer.hpp"
#include "apikeys/sqlite_store.hpp"
#include "apikeys/validator.hpp"
#include "catch.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using namespace apikeys;

namespace {

// The reference service's pepper was an arbitrary configuration string, often short.
constexpr std::string_view kLegacyPepper = "not-a-secret";

std::shared_ptr<HmacSha256Hasher> legacy_hasher() {
  return std::make_shared<HmacSha256Hasher>(
      std::vector<Pepper>{Pepper{1, apikeys_test::kTestPepper}}, 1, kLegacyPepper);
}

std::string random_token(std::string_view prefix) {
  std::string s(prefix);
  append_random_base62(s, 32);
  return s;
}

struct TestKey {
  Uuid account_id;
  Uuid key_id;
  std::string public_key;
  std::string secret;
};

// A key as the reference service stored it: its digest made under the legacy pepper
// (or `pepper_id`), inserted straight into the store as an import would.
TestKey insert_key(Store& store, const Hasher& hasher, std::uint32_t pepper_id = kLegacyPepperId,
                   KeyStatus status = KeyStatus::active,
                   std::optional<TimePoint> expires_at = std::nullopt) {
  TestKey k{apikeys_test::account_id(1), Uuid::random(), random_token("pk_"), random_token("sk_")};
  KeyRecord r;
  r.info.key_id = k.key_id;
  r.info.account_id = k.account_id;
  r.info.public_key = k.public_key;
  r.info.title = "imported";
  r.info.status = status;
  r.info.created_at = apikeys_test::test_start();
  r.info.updated_at = r.info.created_at;
  r.info.expires_at = expires_at;
  r.digest = *hasher.hash_with(k.secret, pepper_id);
  store.insert(r);
  return k;
}

// No cache, no last use, and a writer thread that never wakes during a test: batches
// are written only by flush_last_use(), so they can be counted.
ValidatorOptions quiet_options() {
  ValidatorOptions o;
  o.record_last_use = false;
  o.flush_interval = std::chrono::hours(1);
  o.clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  return o;
}

std::map<std::uint32_t, std::uint64_t> counts_of(Store& store) {
  std::map<std::uint32_t, std::uint64_t> out;
  for (const PepperCount& c : store.pepper_counts()) out[c.pepper_id] = c.keys;
  return out;
}

std::string wrong_secret() { return random_token("sk_"); }

}  // namespace

TEST_CASE("legacy keys validate, and their first use rewrites them under the current pepper",
          "[rehash]") {
  auto store = std::make_shared<apikeys_test::DigestStore>();
  auto hasher = legacy_hasher();
  REQUIRE(hasher->legacy_pepper_is_short());
  std::vector<TestKey> keys;
  for (int i = 0; i < 20; ++i) keys.push_back(insert_key(*store, *hasher));
  keys.push_back(insert_key(*store, *hasher, 1));  // already under the current pepper
  CHECK(counts_of(*store) == std::map<std::uint32_t, std::uint64_t>{{1, 1}, {kLegacyPepperId, 20}});

  Validator v(store, hasher, quiet_options());
  for (const TestKey& k : keys) REQUIRE(v.validate(k.public_key, k.secret).ok());
  v.flush_last_use();
  CHECK(v.rehashed() == 20);
  CHECK(v.rehash_failures() == 0);
  CHECK(store->digest_batches.load() == 1);
  CHECK(store->digest_changes.load() == 20);  // the current-pepper key was not queued
  CHECK(counts_of(*store) == std::map<std::uint32_t, std::uint64_t>{{1, 21}});

  // Rewritten keys take the current-pepper path: nothing more is queued.
  for (const TestKey& k : keys) REQUIRE(v.validate(k.public_key, k.secret).ok());
  v.flush_last_use();
  CHECK(store->digest_batches.load() == 1);

  // The legacy pepper can now be dropped from the configuration.
  Validator without_legacy(store, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper),
                           quiet_options());
  for (const TestKey& k : keys) CHECK(without_legacy.validate(k.public_key, k.secret).ok());
}

TEST_CASE("a wrong secret never validates and is never queued", "[rehash]") {
  auto store = std::make_shared<apikeys_test::DigestStore>();
  auto hasher = legacy_hasher();
  const TestKey k = insert_key(*store, *hasher);
  Validator v(store, hasher, quiet_options());
  for (int i = 0; i < 10; ++i) {
    CHECK(v.validate(k.public_key, wrong_secret()).code == ValidationCode::wrong_secret);
  }
  v.flush_last_use();
  CHECK(store->digest_batches.load() == 0);
  CHECK(v.rehashed() == 0);
  CHECK(store->find(k.public_key)->digest.pepper_id == kLegacyPepperId);
  CHECK(v.validate(k.public_key, k.secret).ok());
}

TEST_CASE("expired, revoked and disabled keys with the right secret are rewritten too",
          "[rehash]") {
  auto store = std::make_shared<apikeys_test::DigestStore>();
  auto hasher = legacy_hasher();
  const TestKey expired = insert_key(*store, *hasher, kLegacyPepperId, KeyStatus::active,
                                     apikeys_test::test_start() - std::chrono::hours(1));
  const TestKey revoked = insert_key(*store, *hasher, kLegacyPepperId, KeyStatus::revoked);
  const TestKey disabled = insert_key(*store, *hasher, kLegacyPepperId, KeyStatus::disabled);
  Validator v(store, hasher, quiet_options());
  CHECK(v.validate(expired.public_key, expired.secret).code == ValidationCode::expired);
  CHECK(v.validate(revoked.public_key, revoked.secret).code == ValidationCode::revoked);
  CHECK(v.validate(disabled.public_key, disabled.secret).code == ValidationCode::disabled);
  v.flush_last_use();
  CHECK(v.rehashed() == 3);
  CHECK(counts_of(*store) == std::map<std::uint32_t, std::uint64_t>{{1, 3}});
  // The digest moved; the state did not.
  CHECK(store->find(revoked.public_key)->info.status == KeyStatus::revoked);
  CHECK(store->find(disabled.public_key)->info.status == KeyStatus::disabled);
  CHECK(v.validate(expired.public_key, expired.secret).code == ValidationCode::expired);
  CHECK(v.validate(revoked.public_key, revoked.secret).code == ValidationCode::revoked);
  CHECK(v.validate(disabled.public_key, disabled.secret).code == ValidationCode::disabled);
}

TEST_CASE("a revoke between queueing and writing a rehash is not undone", "[rehash]") {
  auto store = std::make_shared<apikeys_test::DigestStore>();
  auto hasher = legacy_hasher();
  const TestKey k = insert_key(*store, *hasher);
  KeyManagerOptions mo;
  mo.validation = quiet_options();
  KeyManager manager(store, hasher, mo);
  Validator v(store, hasher, quiet_options());

  REQUIRE(v.validate(k.public_key, k.secret).ok());  // queued
  const KeyInfo revoked = manager.revoke(k.account_id, k.key_id);
  v.flush_last_use();  // written after the revoke
  CHECK(v.rehashed() == 1);

  const auto record = store->find(k.public_key);
  REQUIRE(record);
  CHECK(record->info.status == KeyStatus::revoked);
  CHECK(record->info.version == revoked.version);  // the rewrite changed no version
  CHECK(record->digest.pepper_id == 1);
  CHECK(v.validate(k.public_key, k.secret).code == ValidationCode::revoked);
  Validator fresh(store, hasher, quiet_options());
  CHECK(fresh.validate(k.public_key, k.secret).code == ValidationCode::revoked);
}

TEST_CASE("a rehash whose digest changed meanwhile rewrites nothing", "[rehash]") {
  auto store = std::make_shared<apikeys_test::DigestStore>();
  auto hasher = legacy_hasher();
  const TestKey k = insert_key(*store, *hasher);
  Validator first(store, hasher, quiet_options());
  Validator second(store, hasher, quiet_options());
  REQUIRE(first.validate(k.public_key, k.secret).ok());
  REQUIRE(second.validate(k.public_key, k.secret).ok());
  first.flush_last_use();
  second.flush_last_use();  // its `from` is the legacy digest, gone now
  CHECK(first.rehashed() == 1);
  CHECK(second.rehashed() == 0);
  CHECK(second.rehash_failures() == 0);
  CHECK(first.validate(k.public_key, k.secret).ok());
}

TEST_CASE("a store without replace_digests keeps validating and counts one failure", "[rehash]") {
  // ForwardingStore keeps Store's default replace_digests(): Error(not_supported).
  auto store = std::make_shared<apikeys_test::ForwardingStore>(std::make_shared<MemoryStore>());
  auto hasher = legacy_hasher();
  std::vector<TestKey> keys;
  for (int i = 0; i < 3; ++i) keys.push_back(insert_key(*store, *hasher));
  Validator v(store, hasher, quiet_options());
  for (int round = 0; round < 3; ++round) {
    for (const TestKey& k : keys) REQUIRE(v.validate(k.public_key, k.secret).ok());
    v.flush_last_use();
  }
  CHECK(v.rehash_failures() == 1);
  CHECK(v.rehashed() == 0);
  CHECK(store->find(keys[0].public_key)->digest.pepper_id == kLegacyPepperId);
}

TEST_CASE("a failing digest write is counted, dropped and tried again on the next use",
          "[rehash]") {
  auto store = std::make_shared<apikeys_test::DigestStore>();
  auto hasher = legacy_hasher();
  const TestKey k = insert_key(*store, *hasher);
  Validator v(store, hasher, quiet_options());
  store->fail_digests = true;
  REQUIRE(v.validate(k.public_key, k.secret).ok());
  v.flush_last_use();
  CHECK(v.rehash_failures() == 1);
  v.flush_last_use();  // the failed batch was dropped: nothing to write
  CHECK(store->digest_batches.load() == 1);
  REQUIRE(v.validate(k.public_key, k.secret).ok());
  v.flush_last_use();
  CHECK(v.rehash_failures() == 2);
  store->fail_digests = false;
  REQUIRE(v.validate(k.public_key, k.secret).ok());
  v.flush_last_use();
  CHECK(v.rehashed() == 1);
  CHECK(store->find(k.public_key)->digest.pepper_id == 1);
}

TEST_CASE("the rehash queue is bounded and holds one change per key", "[rehash]") {
  auto store = std::make_shared<apikeys_test::DigestStore>();
  auto hasher = legacy_hasher();
  std::vector<TestKey> keys;
  for (int i = 0; i < 10; ++i) keys.push_back(insert_key(*store, *hasher));
  ValidatorOptions o = quiet_options();
  o.rehash_queue_limit = 3;
  Validator v(store, hasher, o);

  SECTION("bounded") {
    for (const TestKey& k : keys) REQUIRE(v.validate(k.public_key, k.secret).ok());
    v.flush_last_use();
    CHECK(store->digest_changes.load() == 3);
    CHECK(v.rehashed() == 3);
    // The dropped ones are queued again at their next use.
    for (const TestKey& k : keys) REQUIRE(v.validate(k.public_key, k.secret).ok());
    v.flush_last_use();
    CHECK(v.rehashed() == 6);
  }
  SECTION("one entry per key") {
    for (int i = 0; i < 1000; ++i) REQUIRE(v.validate(keys[0].public_key, keys[0].secret).ok());
    REQUIRE(v.validate(keys[1].public_key, keys[1].secret).ok());
    v.flush_last_use();
    CHECK(store->digest_batches.load() == 1);
    CHECK(store->digest_changes.load() == 2);
    CHECK(v.rehashed() == 2);
  }
}

TEST_CASE("rehash_on_use = false queues nothing", "[rehash]") {
  auto store = std::make_shared<apikeys_test::DigestStore>();
  auto hasher = legacy_hasher();
  const TestKey k = insert_key(*store, *hasher);
  ValidatorOptions o = quiet_options();
  o.rehash_on_use = false;
  {
    Validator v(store, hasher, o);
    for (int i = 0; i < 5; ++i) REQUIRE(v.validate(k.public_key, k.secret).ok());
    v.flush_last_use();
    CHECK(v.rehashed() == 0);
  }  // the destructor's final flush writes nothing either
  CHECK(store->digest_batches.load() == 0);
  CHECK(store->find(k.public_key)->digest.pepper_id == kLegacyPepperId);
}

TEST_CASE("the destructor writes pending rehashes", "[rehash]") {
  auto store = std::make_shared<apikeys_test::DigestStore>();
  auto hasher = legacy_hasher();
  const TestKey k = insert_key(*store, *hasher);
  {
    Validator v(store, hasher, quiet_options());
    REQUIRE(v.validate(k.public_key, k.secret).ok());
  }
  CHECK(store->find(k.public_key)->digest.pepper_id == 1);
}

TEST_CASE("the writer thread writes rehashes by itself", "[rehash]") {
  auto store = std::make_shared<apikeys_test::DigestStore>();
  auto hasher = legacy_hasher();
  const TestKey k = insert_key(*store, *hasher);
  ValidatorOptions o = quiet_options();
  o.flush_interval = std::chrono::milliseconds(10);  // record_last_use stays false
  Validator v(store, hasher, o);
  REQUIRE(v.validate(k.public_key, k.secret).ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (v.rehashed() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  CHECK(v.rehashed() == 1);
}

TEST_CASE("a cache hit never queues a rehash, the store path does", "[rehash]") {
  // apply = false: the store takes batches but rewrites nothing, so the key stays
  // under the legacy pepper and every store-path validation would queue it again.
  auto store = std::make_shared<apikeys_test::DigestStore>();
  store->apply = false;
  auto hasher = legacy_hasher();
  const TestKey k = insert_key(*store, *hasher);
  ValidatorOptions o = quiet_options();
  MemoryCacheOptions co;
  co.clock = o.clock;
  o.cache = std::make_shared<MemoryCache>(co);
  o.revision_poll_interval = std::chrono::milliseconds(0);
  Validator v(store, hasher, o);

  REQUIRE(v.validate(k.public_key, k.secret).ok());  // a miss: the store path
  v.flush_last_use();
  CHECK(store->digest_batches.load() == 1);
  CHECK(store->digest_changes.load() == 1);
  for (int i = 0; i < 50; ++i) REQUIRE(v.validate(k.public_key, k.secret).ok());  // hits
  v.flush_last_use();
  CHECK(store->finds.load() == 1);
  CHECK(store->digest_batches.load() == 1);

  v.invalidate(k.public_key);  // the next one reads the store again, and queues
  REQUIRE(v.validate(k.public_key, k.secret).ok());
  v.flush_last_use();
  CHECK(store->digest_batches.load() == 2);
}

TEST_CASE("validate() never waits for a digest write", "[rehash]") {
  auto store = std::make_shared<apikeys_test::DigestStore>();
  auto hasher = legacy_hasher();
  const TestKey a = insert_key(*store, *hasher);
  const TestKey b = insert_key(*store, *hasher);
  Validator v(store, hasher, quiet_options());
  REQUIRE(v.validate(a.public_key, a.secret).ok());
  store->hold_digests();
  std::thread writer([&] { v.flush_last_use(); });
  REQUIRE(store->wait_digests_held(std::chrono::seconds(10)));
  // The write is stuck in the store; validations, and queueing, go on.
  for (int i = 0; i < 100; ++i) REQUIRE(v.validate(b.public_key, b.secret).ok());
  store->release_digests();
  writer.join();
  v.flush_last_use();
  CHECK(v.rehashed() == 2);
  CHECK(store->digest_batches.load() == 2);
}

TEST_CASE("many threads rehash each key exactly once", "[rehash]") {
  auto store = std::make_shared<apikeys_test::DigestStore>();
  auto hasher = legacy_hasher();
  std::vector<TestKey> keys;
  for (int i = 0; i < 50; ++i) keys.push_back(insert_key(*store, *hasher));
  ValidatorOptions o = quiet_options();
  o.flush_interval = std::chrono::milliseconds(1);
  Validator v(store, hasher, o);
  std::atomic<bool> all_ok{true};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int round = 0; round < 20; ++round) {
        for (const TestKey& k : keys) {
          if (!v.validate(k.public_key, k.secret).ok()) all_ok = false;
        }
      }
    });
  }
  threads.emplace_back([&] {
    for (int i = 0; i < 50; ++i) v.flush_last_use();
  });
  for (auto& t : threads) t.join();
  v.flush_last_use();
  CHECK(all_ok.load());
  CHECK(v.rehashed() == keys.size());  // compare-and-set: a key queued twice is written once
  CHECK(counts_of(*store) == std::map<std::uint32_t, std::uint64_t>{{1, 50}});
}

TEST_CASE("KeyManager::pepper_counts asks the store", "[rehash]") {
  auto hasher = legacy_hasher();
  KeyManagerOptions mo;
  mo.validation = quiet_options();
  {
    auto store = std::make_shared<apikeys_test::DigestStore>();
    insert_key(*store, *hasher);
    KeyManager m(store, hasher, mo);
    (void)m.create(apikeys_test::account_id(2), CreateRequest{"t", "", std::nullopt});
    const std::vector<PepperCount> counts = m.pepper_counts();
    REQUIRE(counts.size() == 2);
    CHECK(counts[0].pepper_id == 1);
    CHECK(counts[0].keys == 1);
    CHECK(counts[1].pepper_id == kLegacyPepperId);
    CHECK(counts[1].keys == 1);
  }
  {
    auto store = std::make_shared<apikeys_test::ForwardingStore>(std::make_shared<MemoryStore>());
    KeyManager m(store, hasher, mo);
    try {
      (void)m.pepper_counts();
      FAIL("expected not_supported");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::not_supported);
    }
  }
}

namespace {

// Counts HMACs, whichever call makes them, and the pepper ids they were made under.
struct CountingHasher final : Hasher {
  explicit CountingHasher(std::shared_ptr<HmacSha256Hasher> h) : inner(std::move(h)) {}
  std::shared_ptr<HmacSha256Hasher> inner;
  mutable std::atomic<int> hmacs{0};
  mutable std::atomic<int> under_legacy{0};
  std::uint32_t current_pepper_id() const noexcept override { return inner->current_pepper_id(); }
  Digest hash(std::string_view s) const override {
    ++hmacs;
    return inner->hash(s);
  }
  std::optional<Digest> hash_with(std::string_view s, std::uint32_t id) const override {
    auto d = inner->hash_with(s, id);
    if (d) {
      ++hmacs;
      if (id == kLegacyPepperId) ++under_legacy;
    }
    return d;
  }
  bool verify(std::string_view s, const Digest& stored) const noexcept override {
    if (inner->hash_with(s, stored.pepper_id)) ++hmacs;  // verify() makes one, if it knows the id
    return inner->verify(s, stored);
  }
  std::vector<std::uint32_t> pepper_ids() const override { return inner->pepper_ids(); }
};

}  // namespace

TEST_CASE("every store-path outcome costs two HMACs when the hasher knows two peppers",
          "[rehash][pitfalls]") {
  auto store = std::make_shared<MemoryStore>();
  auto hasher = std::make_shared<CountingHasher>(
      std::make_shared<HmacSha256Hasher>(std::vector<Pepper>{Pepper{1, apikeys_test::kTestPepper},
                                                             Pepper{2, apikeys_test::kTestPepper2}},
                                         1, kLegacyPepper));
  const TestKey current = insert_key(*store, *hasher->inner, 1);
  const TestKey legacy = insert_key(*store, *hasher->inner, kLegacyPepperId);
  const TestKey retired = insert_key(*store, *hasher->inner, 2);
  const TestKey unknown = insert_key(*store, *hasher->inner, 1);
  {
    // The same key, as if its pepper had been dropped from the configuration.
    KeyRecord r = *store->find(unknown.public_key);
    (void)store->remove(r.info.account_id, r.info.key_id);
    r.digest.pepper_id = 7;
    store->insert(r);
  }
  ValidatorOptions o = quiet_options();
  o.rehash_on_use = false;  // keep every key under its pepper between the checks
  Validator v(store, hasher, o);
  const auto cost = [&](const std::string& pk, const std::string& sk, ValidationCode want) {
    hasher->hmacs = 0;
    CHECK(v.validate(pk, sk).code == want);
    return hasher->hmacs.exchange(0);
  };
  CHECK(cost(random_token("pk_"), current.secret, ValidationCode::not_found) == 2);
  CHECK(cost(current.public_key, wrong_secret(), ValidationCode::wrong_secret) == 2);
  CHECK(cost(current.public_key, current.secret, ValidationCode::valid) == 2);
  CHECK(cost(legacy.public_key, wrong_secret(), ValidationCode::wrong_secret) == 2);
  CHECK(cost(legacy.public_key, legacy.secret, ValidationCode::valid) == 2);
  CHECK(cost(retired.public_key, wrong_secret(), ValidationCode::wrong_secret) == 2);
  CHECK(cost(retired.public_key, retired.secret, ValidationCode::valid) == 2);
  CHECK(cost(unknown.public_key, unknown.secret, ValidationCode::wrong_secret) == 2);

  // The decoy HMAC is made under the legacy pepper, the one most keys off the current
  // pepper are under.
  hasher->under_legacy = 0;
  CHECK(v.validate(random_token("pk_"), current.secret).code == ValidationCode::not_found);
  CHECK(hasher->under_legacy.load() == 1);
}

TEST_CASE("without a legacy pepper the decoy HMAC uses the second pepper", "[rehash]") {
  auto store = std::make_shared<MemoryStore>();
  auto hasher = std::make_shared<CountingHasher>(
      std::make_shared<HmacSha256Hasher>(std::vector<Pepper>{Pepper{1, apikeys_test::kTestPepper},
                                                             Pepper{2, apikeys_test::kTestPepper2}},
                                         1));
  const TestKey retired = insert_key(*store, *hasher->inner, 2);
  Validator v(store, hasher, quiet_options());
  hasher->hmacs = 0;
  CHECK(v.validate(random_token("pk_"), retired.secret).code == ValidationCode::not_found);
  CHECK(hasher->hmacs.exchange(0) == 2);
  CHECK(v.validate(retired.public_key, wrong_secret()).code == ValidationCode::wrong_secret);
  CHECK(hasher->hmacs.exchange(0) == 2);
}

TEST_CASE("a hasher with one pepper keeps one HMAC per validation", "[rehash]") {
  auto store = std::make_shared<MemoryStore>();
  auto hasher = std::make_shared<CountingHasher>(
      std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper));
  const TestKey k = insert_key(*store, *hasher->inner, 1);
  Validator v(store, hasher, quiet_options());
  hasher->hmacs = 0;
  CHECK(v.validate(random_token("pk_"), k.secret).code == ValidationCode::not_found);
  CHECK(hasher->hmacs.exchange(0) == 1);
  CHECK(v.validate(k.public_key, wrong_secret()).code == ValidationCode::wrong_secret);
  CHECK(hasher->hmacs.exchange(0) == 1);
}

namespace {

// The whole path over a real store: legacy keys validate, one is revoked between its
// queueing and the write, and after one flush no key is left under the legacy pepper
// and a hasher without it validates every key (the revoked one answers revoked).
void legacy_keys_move_off_the_legacy_pepper(const std::shared_ptr<Store>& store) {
  auto hasher = legacy_hasher();
  std::vector<TestKey> keys;
  for (int i = 0; i < 10; ++i) keys.push_back(insert_key(*store, *hasher));
  KeyManagerOptions mo;
  mo.validation = quiet_options();
  KeyManager manager(store, hasher, mo);
  CHECK(counts_of(*store) == std::map<std::uint32_t, std::uint64_t>{{kLegacyPepperId, 10}});

  Validator v(store, hasher, quiet_options());
  for (const TestKey& k : keys) REQUIRE(v.validate(k.public_key, k.secret).ok());
  const KeyInfo revoked = manager.revoke(keys[0].account_id, keys[0].key_id);
  v.flush_last_use();
  CHECK(v.rehashed() == 10);
  CHECK(v.rehash_failures() == 0);
  const std::vector<PepperCount> counts = manager.pepper_counts();
  REQUIRE(counts.size() == 1);
  CHECK(counts[0].pepper_id == 1);
  CHECK(counts[0].keys == 10);

  const auto record = store->find(keys[0].public_key);
  REQUIRE(record);
  CHECK(record->info.status == KeyStatus::revoked);
  CHECK(record->info.version == revoked.version);

  Validator without_legacy(store, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper),
                           quiet_options());
  CHECK(without_legacy.validate(keys[0].public_key, keys[0].secret).code ==
        ValidationCode::revoked);
  for (std::size_t i = 1; i < keys.size(); ++i) {
    CHECK(without_legacy.validate(keys[i].public_key, keys[i].secret).ok());
  }
}

}  // namespace

TEST_CASE("legacy keys move off the legacy pepper in a MemoryStore", "[rehash][memory]") {
  legacy_keys_move_off_the_legacy_pepper(std::make_shared<MemoryStore>());
}

TEST_CASE("legacy keys move off the legacy pepper in a SqliteStore", "[rehash][sqlite]") {
  apikeys_test::TempDir dir("apikeys-rehash");
  legacy_keys_move_off_the_legacy_pepper(std::make_shared<SqliteStore>(dir.file("keys.db")));
}

TEST_CASE("rehash writes and a store that cannot rehash reach the observers",
          "[rehash][observer]") {
  struct Recorder final : Observer {
    std::mutex mu;
    std::vector<BackgroundWrite> writes;
    std::vector<std::pair<Component, std::string>> errors;
    void on_write(const BackgroundWrite& w) override {
      std::lock_guard<std::mutex> l(mu);
      writes.push_back(w);
    }
    void on_error(const BackgroundError& e) override {
      std::lock_guard<std::mutex> l(mu);
      errors.emplace_back(e.component, std::string(e.operation));
    }
  };
  auto hasher = legacy_hasher();
  {
    auto store = std::make_shared<apikeys_test::DigestStore>();
    std::vector<TestKey> keys;
    for (int i = 0; i < 3; ++i) keys.push_back(insert_key(*store, *hasher));
    auto rec = std::make_shared<Recorder>();
    ValidatorOptions o = quiet_options();
    o.observers = {rec};
    Validator v(store, hasher, o);
    for (const TestKey& k : keys) REQUIRE(v.validate(k.public_key, k.secret).ok());
    v.flush_last_use();
    std::lock_guard<std::mutex> l(rec->mu);
    REQUIRE(rec->writes.size() == 1);
    CHECK(rec->writes[0].component == Component::rehash);
    CHECK(rec->writes[0].rows == 3);
    CHECK(rec->errors.empty());
  }
  {
    // A store of its own without replace_digests(): reported once, then never asked.
    auto store = std::make_shared<apikeys_test::ForwardingStore>(std::make_shared<MemoryStore>());
    const TestKey a = insert_key(*store, *hasher);
    const TestKey b = insert_key(*store, *hasher);
    auto rec = std::make_shared<Recorder>();
    ValidatorOptions o = quiet_options();
    o.observers = {rec};
    Validator v(store, hasher, o);
    REQUIRE(v.validate(a.public_key, a.secret).ok());
    v.flush_last_use();
    REQUIRE(v.validate(b.public_key, b.secret).ok());
    v.flush_last_use();
    std::lock_guard<std::mutex> l(rec->mu);
    REQUIRE(rec->errors.size() == 1);
    CHECK(rec->errors[0].first == Component::rehash);
    CHECK(rec->errors[0].second == "flush");
    CHECK(rec->writes.empty());
    CHECK(v.rehash_failures() == 1);
  }
}

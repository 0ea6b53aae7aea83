// Revocation inside one process: a revoke or delete through any KeyManager reaches
// every Validator over the same store data (the same store object, or another
// SqliteStore on the same file) before it returns, whatever caches they have.
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using namespace apikeys;

namespace {

// A cache whose erase can be made to fail, forwarding everything to a MemoryCache.
class FlakyCache final : public Cache {
 public:
  std::atomic<bool> fail_erase{false};
  std::atomic<int> erases{0};

  std::optional<Verdict> get(std::string_view pk, const Digest& d) override {
    return inner_.get(pk, d);
  }
  std::uint64_t fill_token(std::string_view pk) override { return inner_.fill_token(pk); }
  void put(std::string_view pk, const Digest& d, const Verdict& v, std::chrono::milliseconds ttl,
           std::uint64_t token) override {
    inner_.put(pk, d, v, ttl, token);
  }
  void erase(std::string_view pk) override {
    ++erases;
    if (fail_erase) throw Error(ErrorCode::busy, "FlakyCache erase failed");
    inner_.erase(pk);
  }
  void clear() override { inner_.clear(); }

 private:
  MemoryCache inner_;
};

// A hot-path Validator as a host builds one next to its admin KeyManager: its own
// cache, no revision polling (so only the in-process path can tell it), no last use.
std::unique_ptr<Validator> hot_validator(std::shared_ptr<Store> store,
                                         std::shared_ptr<Cache> cache) {
  ValidatorOptions o;
  o.cache = std::move(cache);
  o.revision_poll_interval = std::chrono::milliseconds(0);
  o.record_last_use = false;
  return std::make_unique<Validator>(
      std::move(store), std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper), o);
}

std::unique_ptr<KeyManager> admin(std::shared_ptr<Store> store) {
  KeyManagerOptions o;
  o.validation.cache = std::make_shared<MemoryCache>();
  o.validation.revision_poll_interval = std::chrono::milliseconds(0);
  o.validation.record_last_use = false;
  return std::make_unique<KeyManager>(
      std::move(store), std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper), o);
}

CreatedKey create_key(KeyManager& m) {
  CreateRequest r;
  r.title = "hot path key";
  return m.create(apikeys_test::account_id(1), r);
}

SqliteStoreOptions quick() {
  SqliteStoreOptions o;
  o.durable = false;
  return o;
}

}  // namespace

TEST_CASE("a revoke or delete reaches every Validator over the same store at once",
          "[revocation]") {
  apikeys_test::TempDir dir;
  const std::string db = dir.file("keys.db");
  std::shared_ptr<Store> admin_store;
  std::shared_ptr<Store> hot_store;
  SECTION("one MemoryStore") { admin_store = hot_store = std::make_shared<MemoryStore>(); }
  SECTION("one SqliteStore object") {
    admin_store = hot_store = std::make_shared<SqliteStore>(db, quick());
  }
  SECTION("two SqliteStore objects on one file") {
    admin_store = std::make_shared<SqliteStore>(db, quick());
    hot_store = std::make_shared<SqliteStore>(db, quick());
  }
  auto manager = admin(admin_store);
  auto hot = hot_validator(hot_store, std::make_shared<MemoryCache>());
  // A second hot path sharing nothing but the store: both must hear it.
  auto hot2 = hot_validator(hot_store, std::make_shared<MemoryCache>());

  const CreatedKey revoked = create_key(*manager);
  const CreatedKey deleted = create_key(*manager);
  const std::string sk1(revoked.secret_key.reveal());
  const std::string sk2(deleted.secret_key.reveal());
  for (int i = 0; i < 3; ++i) {  // warm every cache, the admin's too
    REQUIRE(hot->validate(revoked.info.public_key, sk1).ok());
    REQUIRE(hot2->validate(revoked.info.public_key, sk1).ok());
    REQUIRE(hot->validate(deleted.info.public_key, sk2).ok());
    REQUIRE(hot2->validate(deleted.info.public_key, sk2).ok());
    REQUIRE(manager->validate(revoked.info.public_key, sk1).ok());
  }

  manager->revoke(revoked.info.account_id, revoked.info.key_id);
  CHECK(hot->validate(revoked.info.public_key, sk1).code == ValidationCode::revoked);
  CHECK(hot2->validate(revoked.info.public_key, sk1).code == ValidationCode::revoked);
  CHECK(manager->validate(revoked.info.public_key, sk1).code == ValidationCode::revoked);

  manager->remove(deleted.info.account_id, deleted.info.key_id);
  CHECK(hot->validate(deleted.info.public_key, sk2).code == ValidationCode::not_found);
  CHECK(hot2->validate(deleted.info.public_key, sk2).code == ValidationCode::not_found);
}

TEST_CASE("a Validator sharing the admin's cache object is erased once and rejects at once",
          "[revocation]") {
  auto store = std::make_shared<MemoryStore>();
  auto cache = std::make_shared<FlakyCache>();
  KeyManagerOptions o;
  o.validation.cache = cache;
  o.validation.revision_poll_interval = std::chrono::milliseconds(0);
  o.validation.record_last_use = false;
  KeyManager manager(store, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper), o);
  auto hot = hot_validator(store, cache);
  const CreatedKey k = create_key(manager);
  const std::string sk(k.secret_key.reveal());
  REQUIRE(hot->validate(k.info.public_key, sk).ok());
  const int before = cache->erases.load();
  manager.revoke(k.info.account_id, k.info.key_id);
  CHECK(cache->erases.load() == before + 1);
  CHECK(hot->validate(k.info.public_key, sk).code == ValidationCode::revoked);
}

TEST_CASE("another Validator's fill in flight cannot bring a revoked key back", "[revocation]") {
  // The hot path has read the key as active when the admin revokes: its fill must not
  // land in its cache, or the key would work again until the TTL.
  auto store = std::make_shared<apikeys_test::InstrumentedStore>();
  auto manager = admin(store);
  auto hot = hot_validator(store, std::make_shared<MemoryCache>());
  const CreatedKey k = create_key(*manager);
  const std::string pk = k.info.public_key;
  const std::string sk(k.secret_key.reveal());

  store->arm_pause();
  ValidationResult first;
  std::thread t([&] { first = hot->validate(pk, sk); });
  store->wait_until_paused();  // the hot path has read the record (active)
  manager->revoke(k.info.account_id, k.info.key_id);
  store->release();
  t.join();
  CHECK(first.code == ValidationCode::valid);  // it began before the revoke
  CHECK(hot->validate(pk, sk).code == ValidationCode::revoked);
  CHECK(hot->validate(pk, sk).code == ValidationCode::revoked);
}

TEST_CASE("a revoke that cannot erase some Validator's cache says so", "[revocation]") {
  auto store = std::make_shared<MemoryStore>();
  auto manager = admin(store);
  auto flaky = std::make_shared<FlakyCache>();
  auto hot = hot_validator(store, flaky);
  auto other = hot_validator(store, std::make_shared<MemoryCache>());
  const CreatedKey k = create_key(*manager);
  const std::string sk(k.secret_key.reveal());
  REQUIRE(other->validate(k.info.public_key, sk).ok());
  REQUIRE(manager->validate(k.info.public_key, sk).ok());

  flaky->fail_erase = true;
  try {
    (void)manager->revoke(k.info.account_id, k.info.key_id);
    FAIL("revoke returned although a cache could not be erased");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::busy);
  }
  // The store change committed, and every cache that could be erased was.
  CHECK(store->find(k.info.public_key)->info.status == KeyStatus::revoked);
  CHECK(manager->validate(k.info.public_key, sk).code == ValidationCode::revoked);
  CHECK(other->validate(k.info.public_key, sk).code == ValidationCode::revoked);
  // Retrying is safe and, once the cache works again, succeeds.
  flaky->fail_erase = false;
  CHECK(manager->revoke(k.info.account_id, k.info.key_id).status == KeyStatus::revoked);
  CHECK(hot->validate(k.info.public_key, sk).code == ValidationCode::revoked);
}

TEST_CASE("an update of fields and credits writes both when a cache cannot be erased",
          "[revocation]") {
  // The key's fields and its lineage's credits are two writes. A cache that cannot erase
  // the key after the first must not stop the second: the documented retry, with
  // expected_version, answers `conflict` because the change is made, all of it.
  auto store = std::make_shared<MemoryStore>();
  auto manager = admin(store);
  auto flaky = std::make_shared<FlakyCache>();
  auto hot = hot_validator(store, flaky);
  CreateRequest request;
  request.title = "credited key";
  request.credits = Credits{};
  request.credits->remaining = 10;
  const CreatedKey k = manager->create(apikeys_test::account_id(1), request);
  const Uuid& account = k.info.account_id;
  flaky->fail_erase = true;
  KeyUpdate u;
  u.credits = 500;
  SECTION("fields and credits") {
    u.title = "renamed";
    u.expected_version = k.info.version;
  }
  SECTION("credits alone") {}
  try {
    (void)manager->update(account, k.info.key_id, u);
    FAIL("update returned although a cache could not be erased");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::busy);
  }
  flaky->fail_erase = false;
  const KeyInfo now = manager->get(account, k.info.key_id);
  REQUIRE(now.credits);
  CHECK(now.credits->remaining == 500);
  if (u.expected_version) {
    CHECK(now.title == "renamed");
    try {
      (void)manager->update(account, k.info.key_id, u);
      FAIL("a retry with the old version succeeded");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::conflict);
    }
  }
}

TEST_CASE("Validators come and go while keys are revoked", "[revocation]") {
  // Registration and the revoke's fan-out from several threads at once: no crash, no
  // race (the suite also runs under ThreadSanitizer), and every live Validator hears.
  auto store = std::make_shared<MemoryStore>();
  auto manager = admin(store);
  std::vector<CreatedKey> keys;
  for (int i = 0; i < 40; ++i) keys.push_back(create_key(*manager));
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> revoked{0};  // keys[0, revoked) have had revoke() return
  std::atomic<int> wrong{0};
  std::vector<std::thread> churn;
  for (int t = 0; t < 2; ++t) {
    churn.emplace_back([&] {
      while (!stop) {
        auto v = hot_validator(store, std::make_shared<MemoryCache>());
        for (std::size_t i = 0; i < keys.size(); ++i) {
          const bool gone = i < revoked.load();
          const auto r = v->validate(keys[i].info.public_key, keys[i].secret_key.reveal());
          if (gone && r.ok()) ++wrong;
        }
      }
    });
  }
  auto steady = hot_validator(store, std::make_shared<MemoryCache>());
  for (const auto& k : keys)
    REQUIRE(steady->validate(k.info.public_key, k.secret_key.reveal()).ok());
  for (const auto& k : keys) {
    manager->revoke(k.info.account_id, k.info.key_id);
    revoked.fetch_add(1);
    CHECK(steady->validate(k.info.public_key, k.secret_key.reveal()).code ==
          ValidationCode::revoked);
  }
  stop = true;
  for (auto& t : churn) t.join();
  CHECK(wrong.load() == 0);
}

TEST_CASE("a cache kept across Validators never answers for a key revoked in between",
          "[revocation]") {
  // The cache outlives the Validator that filled it; the key is revoked while no
  // Validator holds the cache (in this process, or in another one: the store alone
  // changes); a new Validator given the cache must not answer from it.
  auto store = std::make_shared<MemoryStore>();
  auto manager = admin(store);
  auto cache = std::make_shared<MemoryCache>();
  const CreatedKey k = create_key(*manager);
  const std::string sk(k.secret_key.reveal());
  {
    auto first = hot_validator(store, cache);
    REQUIRE(first->validate(k.info.public_key, sk).ok());
    REQUIRE(first->validate(k.info.public_key, sk).ok());
  }
  SECTION("revoked through a KeyManager") { manager->revoke(k.info.account_id, k.info.key_id); }
  SECTION("changed in the store behind the library's back") {
    REQUIRE(store->set_status(k.info.account_id, k.info.key_id, KeyStatus::revoked));
  }
  auto second = hot_validator(store, cache);
  CHECK(second->validate(k.info.public_key, sk).code == ValidationCode::revoked);
}

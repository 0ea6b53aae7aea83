#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using namespace apikeys;
using apikeys_test::InstrumentedStore;

namespace {

struct Fixture {
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  std::shared_ptr<InstrumentedStore> store = std::make_shared<InstrumentedStore>();
  std::shared_ptr<HmacSha256Hasher> hasher =
      std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  std::shared_ptr<MemoryCache> cache;
  std::unique_ptr<KeyManager> manager;

  explicit Fixture(bool with_cache = true, bool last_use = false,
                   std::chrono::milliseconds poll = std::chrono::milliseconds(0)) {
    KeyManagerOptions o;
    o.validation.clock = clock;
    if (with_cache) {
      MemoryCacheOptions co;
      co.clock = clock;
      cache = std::make_shared<MemoryCache>(co);
      o.validation.cache = cache;
    }
    o.validation.record_last_use = last_use;
    o.validation.revision_poll_interval = poll;
    manager = std::make_unique<KeyManager>(store, hasher, o);
  }

  CreatedKey create(std::optional<int> days = std::nullopt) {
    CreateRequest r;
    r.title = "test key";
    r.expires_in_days = days;
    return manager->create(apikeys_test::account_id(1), r);
  }
};

std::string token_of(const CreatedKey& k) {
  return k.info.public_key + ":" + std::string(k.secret_key.reveal());
}

// A secret of the right shape that is not the key's.
std::string wrong_secret_for(const CreatedKey& k) {
  std::string s(k.secret_key.reveal());
  s.back() = s.back() == 'A' ? 'B' : 'A';
  return s;
}

// HmacSha256Hasher, counting the HMACs asked of it.
struct CountingHasher final : Hasher {
  HmacSha256Hasher inner{apikeys_test::kTestPepper};
  mutable std::atomic<int> hmacs{0};
  std::uint32_t current_pepper_id() const noexcept override { return inner.current_pepper_id(); }
  Digest hash(std::string_view s) const override {
    ++hmacs;
    return inner.hash(s);
  }
  std::optional<Digest> hash_with(std::string_view s, std::uint32_t id) const override {
    ++hmacs;
    return inner.hash_with(s, id);
  }
};

// A cache of the caller's own: MemoryCache through the Cache interface alone.
struct ForwardingCache final : Cache {
  MemoryCache inner;
  std::optional<Verdict> get(std::string_view pk, const Digest& d) override {
    return inner.get(pk, d);
  }
  std::uint64_t fill_token(std::string_view pk) override { return inner.fill_token(pk); }
  void put(std::string_view pk, const Digest& d, const Verdict& v, std::chrono::milliseconds ttl,
           std::uint64_t token) override {
    inner.put(pk, d, v, ttl, token);
  }
  void erase(std::string_view pk) override { inner.erase(pk); }
  void clear() override { inner.clear(); }
};

}  // namespace

TEST_CASE("validate answers every code", "[validator]") {
  Fixture f;
  auto k = f.create();
  const std::string sk(k.secret_key.reveal());

  auto r = f.manager->validate(k.info.public_key, sk);
  CHECK(r.code == ValidationCode::valid);
  CHECK(r.ok());
  CHECK(r.account_id == apikeys_test::account_id(1));
  CHECK(r.key_id == k.info.key_id);

  CHECK(f.manager->validate(k.info.public_key, wrong_secret_for(k)).code ==
        ValidationCode::wrong_secret);
  CHECK(f.manager->validate("pk_" + std::string(32, 'Z'), sk).code == ValidationCode::not_found);
  CHECK(f.manager->validate("nope", sk).code == ValidationCode::malformed);

  auto e = f.create(1);
  f.clock->advance(std::chrono::hours(24));
  CHECK(f.manager->validate(e.info.public_key, e.secret_key.reveal()).code ==
        ValidationCode::expired);

  f.manager->revoke(k.info.account_id, k.info.key_id);
  CHECK(f.manager->validate(k.info.public_key, sk).code == ValidationCode::revoked);

  f.store->fail_finds = true;
  auto k2 = f.create();  // not yet validated, so not cached
  CHECK(f.manager->validate(k2.info.public_key, k2.secret_key.reveal()).code ==
        ValidationCode::error);
}

TEST_CASE("results carry ids only when valid", "[validator]") {
  Fixture f;
  auto k = f.create();
  auto r = f.manager->validate(k.info.public_key, wrong_secret_for(k));
  CHECK(r.account_id.is_nil());
  CHECK(r.key_id.is_nil());
}

TEST_CASE("a ValidationResult is the Verdict a cache keeps, plus ok()", "[validator]") {
  static_assert(std::is_base_of<Verdict, ValidationResult>::value,
                "the answer and the cached verdict share one definition");
  // The ways user code built and read results before still compile and mean the same.
  const Uuid account = apikeys_test::account_id(1);
  const Uuid key = apikeys_test::account_id(2);
  ValidationResult braced{ValidationCode::valid, account, key};
  CHECK(braced.ok());
  CHECK(braced.account_id == account);
  CHECK(braced.key_id == key);
  CHECK_FALSE(braced.expires_at.has_value());
  ValidationResult assigned;
  CHECK(assigned.code == ValidationCode::error);
  CHECK_FALSE(assigned.ok());
  assigned.code = ValidationCode::revoked;
  const Verdict as_verdict = assigned;  // an answer is a verdict
  CHECK(as_verdict.code == ValidationCode::revoked);
  const ValidationResult back(as_verdict);  // and a verdict becomes an answer whole
  CHECK(back.code == ValidationCode::revoked);

  // The key's expiry reaches the caller, from the store and from a cache hit alike.
  Fixture f;
  auto k = f.create(3);
  REQUIRE(k.info.expires_at.has_value());
  const std::string sk(k.secret_key.reveal());
  const int finds = f.store->finds.load();
  const ValidationResult from_store = f.manager->validate(k.info.public_key, sk);
  CHECK(f.store->finds.load() == finds + 1);
  const ValidationResult from_cache = f.manager->validate(k.info.public_key, sk);
  CHECK(f.store->finds.load() == finds + 1);
  for (const ValidationResult* r : {&from_store, &from_cache}) {
    CHECK(r->ok());
    CHECK(r->key_id == k.info.key_id);
    REQUIRE(r->expires_at.has_value());
    CHECK(to_unix_millis(*r->expires_at) == to_unix_millis(*k.info.expires_at));
  }
  auto forever = f.create();
  const ValidationResult never = f.manager->validate(token_of(forever));
  CHECK(never.ok());
  CHECK_FALSE(never.expires_at.has_value());
  CHECK_FALSE(f.manager->validate(k.info.public_key, wrong_secret_for(k)).expires_at.has_value());
}

TEST_CASE("the combined token form", "[validator]") {
  Fixture f;
  auto k = f.create();
  CHECK(f.manager->validate(token_of(k)).code == ValidationCode::valid);
  CHECK(f.manager->validate(k.info.public_key + std::string(k.secret_key.reveal())).code ==
        ValidationCode::malformed);  // missing colon
  CHECK(f.manager->validate(token_of(k) + ":").code == ValidationCode::malformed);
  CHECK(f.manager->validate(":" + token_of(k)).code == ValidationCode::malformed);
  CHECK(f.manager->validate(std::string(k.secret_key.reveal()) + ":" + k.info.public_key).code ==
        ValidationCode::malformed);  // swapped
  CHECK(f.manager->validate(token_of(k) + " ").code == ValidationCode::malformed);
}

TEST_CASE("malformed input never reaches the store", "[validator]") {
  Fixture f;
  auto k = f.create();
  const std::string pk = k.info.public_key;
  const std::string sk(k.secret_key.reveal());
  const std::string cases[] = {
      "",
      std::string(10 * 1024 * 1024, 'a'),
      "pk_" + std::string(10 * 1024 * 1024, 'a'),
      "tk_" + pk.substr(3),                                     // wrong prefix
      "PK_" + pk.substr(3),                                     // case matters
      pk.substr(0, pk.size() - 1),                              // too short
      pk + "a",                                                 // too long
      pk.substr(0, 10) + std::string(1, '\0') + pk.substr(11),  // embedded NUL
      pk.substr(0, 10) + "\xc3\xa9" + pk.substr(12),            // non-ASCII
      pk.substr(0, 10) + "-" + pk.substr(11),
      " " + pk,
  };
  const int finds_before = f.store->finds.load();
  for (const auto& bad : cases) {
    CHECK(f.manager->validate(bad, sk).code == ValidationCode::malformed);
    CHECK(f.manager->validate(pk, bad).code == ValidationCode::malformed);
    CHECK(f.manager->validate(bad).code == ValidationCode::malformed);
    CHECK(f.manager->validate(bad + ":" + sk).code == ValidationCode::malformed);
  }
  CHECK(f.store->finds.load() == finds_before);
}

TEST_CASE("custom key formats are enforced by the validator", "[validator]") {
  auto clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  KeyManagerOptions o;
  o.validation.clock = clock;
  o.validation.record_last_use = false;
  o.validation.format.public_prefix = "pk_live_";
  o.validation.format.secret_prefix = "sk_live_";
  o.validation.format.length = 40;
  KeyManager m(std::make_shared<MemoryStore>(),
               std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper), o);
  auto k = m.create(apikeys_test::account_id(1), CreateRequest{"live", "", std::nullopt});
  CHECK(k.info.public_key.rfind("pk_live_", 0) == 0);
  CHECK(k.info.public_key.size() == 48);
  CHECK(m.validate(k.info.public_key, k.secret_key.reveal()).ok());
  CHECK(m.validate("pk_" + k.info.public_key.substr(8), k.secret_key.reveal()).code ==
        ValidationCode::malformed);
}

TEST_CASE("a failing store is an error, never valid", "[validator]") {
  for (bool with_cache : {false, true}) {
    Fixture f(with_cache);
    auto k = f.create();
    const std::string sk(k.secret_key.reveal());
    f.store->fail_finds = true;
    CHECK(f.manager->validate(k.info.public_key, sk).code == ValidationCode::error);
    f.store->fail_finds = false;
    f.store->fail_with_non_std = true;
    CHECK(f.manager->validate(k.info.public_key, sk).code == ValidationCode::error);
    f.store->fail_with_non_std = false;
    // Errors are not cached: the store recovers, so does validation.
    CHECK(f.manager->validate(k.info.public_key, sk).code == ValidationCode::valid);
  }
}

TEST_CASE("cache hits skip the store and revoke/delete take effect at once", "[validator]") {
  Fixture f;
  auto k = f.create();
  auto k2 = f.create();
  const std::string sk(k.secret_key.reveal());
  REQUIRE(f.manager->validate(k.info.public_key, sk).ok());
  const int finds = f.store->finds.load();
  REQUIRE(f.manager->validate(k.info.public_key, sk).ok());
  REQUIRE(f.manager->validate(k.info.public_key, sk).ok());
  CHECK(f.store->finds.load() == finds);

  SECTION("revoke") {
    f.manager->revoke(k.info.account_id, k.info.key_id);
    CHECK(f.manager->validate(k.info.public_key, sk).code == ValidationCode::revoked);
  }
  SECTION("delete") {
    f.manager->remove(k.info.account_id, k.info.key_id);
    CHECK(f.manager->validate(k.info.public_key, sk).code == ValidationCode::not_found);
  }
  SECTION("another account cannot revoke or delete it") {
    CHECK_THROWS_AS(f.manager->revoke(apikeys_test::account_id(2), k.info.key_id), Error);
    CHECK_THROWS_AS(f.manager->remove(apikeys_test::account_id(2), k.info.key_id), Error);
    CHECK(f.manager->validate(k.info.public_key, sk).ok());
  }
  // The other key is untouched either way.
  CHECK(f.manager->validate(k2.info.public_key, k2.secret_key.reveal()).ok());
}

TEST_CASE("a wrong-secret verdict never locks the owner out", "[validator][pitfalls]") {
  Fixture f;
  auto k = f.create();
  // An attacker who knows the public key tries secrets first, filling the cache...
  for (int i = 0; i < 5; ++i) {
    CHECK(f.manager->validate(k.info.public_key, wrong_secret_for(k)).code ==
          ValidationCode::wrong_secret);
  }
  // ...and the owner still gets in, and stays in after the attacker tries again.
  CHECK(f.manager->validate(k.info.public_key, k.secret_key.reveal()).ok());
  CHECK(f.manager->validate(k.info.public_key, wrong_secret_for(k)).code ==
        ValidationCode::wrong_secret);
  CHECK(f.manager->validate(k.info.public_key, k.secret_key.reveal()).ok());
}

TEST_CASE("a wrong secret's store reads do not tell an active key from a revoked one",
          "[validator][pitfalls]") {
  Fixture f;
  auto active = f.create();
  auto revoked = f.create();
  f.manager->revoke(apikeys_test::account_id(1), revoked.info.key_id);
  // Both owners have just used their keys: each has a verdict in the cache.
  REQUIRE(f.manager->validate(active.info.public_key, active.secret_key.reveal()).ok());
  REQUIRE(f.manager->validate(revoked.info.public_key, revoked.secret_key.reveal()).code ==
          ValidationCode::revoked);
  // A guesser tries one wrong secret twice on each: the same store reads for both.
  const auto reads_for_two_tries = [&](const CreatedKey& k) {
    const int before = f.store->finds.load();
    for (int i = 0; i < 2; ++i) {
      REQUIRE(f.manager->validate(k.info.public_key, wrong_secret_for(k)).code ==
              ValidationCode::wrong_secret);
    }
    return f.store->finds.load() - before;
  };
  CHECK(reads_for_two_tries(active) == reads_for_two_tries(revoked));
  // Nor later, when the active key's verdict has expired from the cache: a revoked
  // key's verdict lives no longer (the default ttl_revoked is 3600 s, ttl_valid 120 s).
  f.clock->advance(std::chrono::seconds(200));
  CHECK(reads_for_two_tries(active) == reads_for_two_tries(revoked));
  REQUIRE(f.manager->validate(active.info.public_key, active.secret_key.reveal()).ok());
  REQUIRE(f.manager->validate(revoked.info.public_key, revoked.secret_key.reveal()).code ==
          ValidationCode::revoked);
  // And each owner's verdict is still the one cached.
  const int before = f.store->finds.load();
  CHECK(f.manager->validate(active.info.public_key, active.secret_key.reveal()).ok());
  CHECK(f.manager->validate(revoked.info.public_key, revoked.secret_key.reveal()).code ==
        ValidationCode::revoked);
  CHECK(f.store->finds.load() == before);
}

TEST_CASE("a cached valid verdict never answers another secret", "[validator][pitfalls]") {
  Fixture f;
  auto k = f.create();
  REQUIRE(f.manager->validate(k.info.public_key, k.secret_key.reveal()).ok());
  // Every one-character change of the secret is rejected while the verdict is cached.
  std::string sk(k.secret_key.reveal());
  for (std::size_t i = 3; i < sk.size(); ++i) {
    std::string other = sk;
    other[i] = other[i] == 'x' ? 'y' : 'x';
    CHECK(f.manager->validate(k.info.public_key, other).code == ValidationCode::wrong_secret);
  }
}

TEST_CASE("expiry at the boundary, with a warm cache", "[validator]") {
  Fixture f;
  auto k = f.create(1);
  REQUIRE(k.info.expires_at);
  const std::string sk(k.secret_key.reveal());
  REQUIRE(f.manager->validate(k.info.public_key, sk).ok());  // cached for up to 120 s
  f.clock->set(*k.info.expires_at - std::chrono::milliseconds(1));
  CHECK(f.manager->validate(k.info.public_key, sk).ok());
  f.clock->set(*k.info.expires_at);
  CHECK(f.manager->validate(k.info.public_key, sk).code == ValidationCode::expired);
  f.clock->advance(std::chrono::hours(1000));
  CHECK(f.manager->validate(k.info.public_key, sk).code == ValidationCode::expired);
}

namespace {

// A cache put that runs late: the thread was preempted between the validator's clock
// read and the cache's, for `delay` of the shared clock.
class LatePutCache final : public Cache {
 public:
  LatePutCache(std::shared_ptr<ManualClock> clock, std::chrono::milliseconds delay)
      : clock_(clock), delay_(delay), inner_([&] {
          MemoryCacheOptions o;
          o.clock = clock;
          return o;
        }()) {}
  std::optional<Verdict> get(std::string_view pk, const Digest& d) override {
    return inner_.get(pk, d);
  }
  std::uint64_t fill_token(std::string_view pk) override { return inner_.fill_token(pk); }
  void put(std::string_view pk, const Digest& d, const Verdict& v, std::chrono::milliseconds ttl,
           std::uint64_t token) override {
    clock_->advance(delay_);
    inner_.put(pk, d, v, ttl, token);
  }
  void erase(std::string_view pk) override { inner_.erase(pk); }
  void clear() override { inner_.clear(); }

 private:
  std::shared_ptr<ManualClock> clock_;
  std::chrono::milliseconds delay_;
  MemoryCache inner_;
};

// A user's cache that keeps every verdict forever (it ignores the TTL) but keeps the
// Verdict's fields, as a cache is asked to.
class ForeverCache final : public Cache {
 public:
  std::optional<Verdict> get(std::string_view pk, const Digest&) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = kept_.find(std::string(pk));
    if (it == kept_.end()) return std::nullopt;
    return it->second;
  }
  std::uint64_t fill_token(std::string_view) override { return 0; }
  void put(std::string_view pk, const Digest&, const Verdict& v, std::chrono::milliseconds,
           std::uint64_t) override {
    std::lock_guard<std::mutex> l(mu_);
    kept_[std::string(pk)] = v;
  }
  void erase(std::string_view pk) override {
    std::lock_guard<std::mutex> l(mu_);
    kept_.erase(std::string(pk));
  }
  void clear() override {
    std::lock_guard<std::mutex> l(mu_);
    kept_.clear();
  }

 private:
  std::mutex mu_;
  std::map<std::string, Verdict> kept_;
};

}  // namespace

TEST_CASE("a cached valid never outlives the key's expiry", "[validator]") {
  auto clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  auto store = std::make_shared<InstrumentedStore>();
  auto hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  std::shared_ptr<Cache> cache;
  SECTION("a put preempted for 10 s after the validator read its clock") {
    cache = std::make_shared<LatePutCache>(clock, std::chrono::seconds(10));
  }
  SECTION("a cache that ignores TTLs") { cache = std::make_shared<ForeverCache>(); }
  SECTION("a MemoryCache whose clock runs an hour behind the validator's") {
    MemoryCacheOptions co;
    co.clock = std::make_shared<ManualClock>(apikeys_test::test_start() - std::chrono::hours(1));
    cache = std::make_shared<MemoryCache>(co);
  }
  KeyManagerOptions o;
  o.validation.clock = clock;
  o.validation.cache = cache;
  o.validation.record_last_use = false;
  o.validation.revision_poll_interval = std::chrono::milliseconds(0);
  KeyManager manager(store, hasher, o);
  CreateRequest r;
  r.title = "expiring";
  r.expires_in_days = 1;
  const CreatedKey k = manager.create(apikeys_test::account_id(1), r);
  const std::string sk(k.secret_key.reveal());
  // Five seconds before expiry: valid, cached for the 5 s the key has left.
  clock->set(*k.info.expires_at - std::chrono::seconds(5));
  REQUIRE(manager.validate(k.info.public_key, sk).ok());
  for (const auto after : {std::chrono::milliseconds(0), std::chrono::milliseconds(1),
                           std::chrono::milliseconds(4000), std::chrono::milliseconds(3'600'000)}) {
    clock->set(*k.info.expires_at + after);
    CHECK(manager.validate(k.info.public_key, sk).code == ValidationCode::expired);
  }
}

TEST_CASE("order of checks: secret first, then expiry, revoked, disabled", "[validator]") {
  // One key per state: active, expired, revoked, disabled, and expired as well as revoked
  // or disabled. A wrong secret is looked up twice, from the store and then from the
  // cache's wrong_secret verdict; the right secret likewise.
  for (bool with_cache : {false, true}) {
    INFO("with_cache " << with_cache);
    Fixture f(with_cache);
    const Uuid account = apikeys_test::account_id(1);
    auto active = f.create();
    auto expired = f.create(1);
    auto revoked = f.create();
    auto disabled = f.create();
    auto expired_revoked = f.create(1);
    auto expired_disabled = f.create(1);
    f.manager->revoke(account, revoked.info.key_id);
    f.manager->revoke(account, expired_revoked.info.key_id);
    // Disabled as another writer would, then dropped from the cache as disable() does.
    for (const CreatedKey* k : {&disabled, &expired_disabled}) {
      REQUIRE(f.store->inner.set_status(account, k->info.key_id, KeyStatus::disabled));
      f.manager->validator().invalidate(k->info.public_key);
    }
    f.clock->advance(std::chrono::hours(25));
    const std::pair<const CreatedKey*, ValidationCode> states[] = {
        {&active, ValidationCode::valid},
        {&expired, ValidationCode::expired},
        {&revoked, ValidationCode::revoked},
        {&disabled, ValidationCode::disabled},
        {&expired_revoked, ValidationCode::expired},
        {&expired_disabled, ValidationCode::expired},
    };
    const auto check_wrong = [&](const CreatedKey& k) {
      const ValidationResult r = f.manager->validate(k.info.public_key, wrong_secret_for(k));
      CHECK(r.code == ValidationCode::wrong_secret);
      CHECK(r.account_id.is_nil());
      CHECK(r.key_id.is_nil());
      CHECK_FALSE(r.expires_at.has_value());
      CHECK(r.scopes.empty());
    };

    // A wrong secret learns nothing of the key's state: from the store, then the cache.
    for (const auto& [k, code] : states) {
      INFO(k->info.key_id.to_string() << " is " << to_string(code));
      for (int round = 0; round < 2; ++round) {
        const int finds = f.store->finds.load();
        check_wrong(*k);
        CHECK(f.store->finds.load() == finds + (with_cache && round == 1 ? 0 : 1));
      }
    }
    // The right secret: expired beats revoked beats disabled, from the store and the cache.
    for (const auto& [k, code] : states) {
      INFO(k->info.key_id.to_string() << " is " << to_string(code));
      for (int round = 0; round < 2; ++round) {
        const int finds = f.store->finds.load();
        CHECK(f.manager->validate(token_of(*k)).code == code);
        // A cache hit for `valid` needs a cache that keeps the key's policy: see
        // validator_policy_test.cpp.
        if (code != ValidationCode::valid) {
          CHECK(f.store->finds.load() == finds + (with_cache && round == 1 ? 0 : 1));
        }
      }
    }
    // And a wrong secret again, while the cache holds the key's own verdict.
    for (const auto& [k, code] : states) {
      INFO(k->info.key_id.to_string() << " is " << to_string(code));
      check_wrong(*k);
      check_wrong(*k);
    }
  }
}

TEST_CASE("not_found costs a digest, like wrong_secret", "[validator][pitfalls]") {
  // Counting hasher: both paths must hash exactly once (the timing side is measured
  // by the benchmarks; this pins the work).
  // Without a cache, and with a MemoryCache (asked with a proof of the secret first).
  for (const bool with_cache : {false, true}) {
    INFO("with a MemoryCache: " << with_cache);
    auto store = std::make_shared<MemoryStore>();
    auto hasher = std::make_shared<CountingHasher>();
    ValidatorOptions o;
    o.record_last_use = false;
    if (with_cache) o.cache = std::make_shared<MemoryCache>();
    KeyManager m(store, hasher, KeyManagerOptions{o, nullptr});
    auto k = m.create(apikeys_test::account_id(1), CreateRequest{"t", "", std::nullopt});
    hasher->hmacs = 0;
    CHECK(m.validate("pk_" + std::string(32, 'Q'), k.secret_key.reveal()).code ==
          ValidationCode::not_found);
    const int not_found_calls = hasher->hmacs.exchange(0);
    CHECK(m.validate(k.info.public_key, wrong_secret_for(k)).code == ValidationCode::wrong_secret);
    const int wrong_calls = hasher->hmacs.exchange(0);
    CHECK(not_found_calls == 1);
    CHECK(wrong_calls == 1);
  }
}

TEST_CASE("revoke during a cache fill cannot resurrect the key", "[validator][pitfalls]") {
  // The revoke/fill race: validation reads `active`, revoke commits and erases, then the
  // validation's fill must not land.
  Fixture f;
  auto k = f.create();
  const std::string pk = k.info.public_key;
  const std::string sk(k.secret_key.reveal());
  f.store->arm_pause();
  ValidationResult first;
  std::thread t([&] { first = f.manager->validate(pk, sk); });
  f.store->wait_until_paused();  // the validation has read the record (active)
  f.manager->revoke(k.info.account_id, k.info.key_id);
  f.store->release();
  t.join();
  CHECK(first.code ==
        ValidationCode::valid);  // it began before the revoke: either answer is honest
  CHECK(f.manager->validate(pk, sk).code == ValidationCode::revoked);
  CHECK(f.manager->validate(pk, sk).code == ValidationCode::revoked);
}

// validate() never writes last use itself: the note it leaves is written by the
// Validator's writer thread, after the call has returned.
TEST_CASE("last use is written by the writer thread, never inside validate()",
          "[validator][pitfalls]") {
  Fixture f(true, true);
  auto k = f.create();
  const std::string sk(k.secret_key.reveal());
  const auto validator_with = [&](std::chrono::milliseconds flush) {
    ValidatorOptions o;
    o.clock = f.clock;
    o.cache = std::make_shared<MemoryCache>();
    o.record_last_use = true;
    o.flush_interval = flush;
    return std::make_unique<Validator>(f.store, f.hasher, o);
  };
  {
    const auto slow = validator_with(std::chrono::hours(1));
    for (int i = 0; i < 10; ++i) REQUIRE(slow->validate(k.info.public_key, sk).ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    CHECK(f.store->last_use_batches.load() == 0);  // not written by any of the calls
  }
  const int before = f.store->last_use_batches.load();  // the slow one's, flushed as it died
  f.clock->advance(std::chrono::hours(1));              // past the throttle interval
  const auto fast = validator_with(std::chrono::milliseconds(10));
  REQUIRE(fast->validate(k.info.public_key, sk).ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (f.store->last_use_batches.load() == before &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  REQUIRE(f.store->last_use_batches.load() > before);
  CHECK(f.store->last_use_thread.load() != std::this_thread::get_id());
}

TEST_CASE("last use is written once per interval, off the caller, and flushed",
          "[validator][pitfalls]") {
  Fixture f(true, true);
  auto k = f.create();
  const std::string sk(k.secret_key.reveal());
  for (int i = 0; i < 100; ++i) REQUIRE(f.manager->validate(k.info.public_key, sk).ok());
  f.manager->validator().flush_last_use();
  CHECK(f.store->last_use_entries.load() == 1);
  auto info = f.store->inner.find(k.info.public_key);
  REQUIRE(info->info.last_used_at);
  CHECK(*info->info.last_used_at == f.clock->now());

  // Within the interval: no new write. After it: exactly one more.
  f.clock->advance(std::chrono::seconds(899));
  for (int i = 0; i < 10; ++i) REQUIRE(f.manager->validate(k.info.public_key, sk).ok());
  f.manager->validator().flush_last_use();
  CHECK(f.store->last_use_entries.load() == 1);
  f.clock->advance(std::chrono::seconds(1));
  for (int i = 0; i < 10; ++i) REQUIRE(f.manager->validate(k.info.public_key, sk).ok());
  f.manager->validator().flush_last_use();
  CHECK(f.store->last_use_entries.load() == 2);
  CHECK(*f.store->inner.find(k.info.public_key)->info.last_used_at == f.clock->now());

  // Invalid presentations never count as use.
  f.clock->advance(std::chrono::hours(1));
  CHECK(f.manager->validate(k.info.public_key, wrong_secret_for(k)).code ==
        ValidationCode::wrong_secret);
  f.manager->validator().flush_last_use();
  CHECK(f.store->last_use_entries.load() == 2);
}

TEST_CASE("a cache hit records its last use from the coarse reading, never ahead of it",
          "[validator][last_use]") {
  constexpr std::chrono::milliseconds kLag(3);
  auto clock = std::make_shared<apikeys_test::LaggingClock>(apikeys_test::test_start(), kLag);
  clock->set(apikeys_test::test_start(), kLag);
  auto store = std::make_shared<InstrumentedStore>();
  KeyManagerOptions o;
  o.validation.clock = clock;
  MemoryCacheOptions co;
  co.clock = clock;
  o.validation.cache = std::make_shared<MemoryCache>(co);
  o.validation.record_last_use = true;
  o.validation.ttl_valid = std::chrono::hours(2);  // the second validation is a hit
  KeyManager manager(store, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper), o);
  CreateRequest r;
  r.title = "coarse";
  const CreatedKey k = manager.create(apikeys_test::account_id(1), r);
  const std::string sk(k.secret_key.reveal());
  // The first validation reads the store (the full reading); the next, an interval
  // later, is a cache hit and notes the coarse one.
  REQUIRE(manager.validate(k.info.public_key, sk).ok());
  manager.validator().flush_last_use();
  CHECK(*store->inner.find(k.info.public_key)->info.last_used_at == clock->now());
  clock->advance(std::chrono::hours(1));
  REQUIRE(manager.validate(k.info.public_key, sk).ok());
  manager.validator().flush_last_use();
  CHECK(store->last_use_entries.load() == 2);
  CHECK(*store->inner.find(k.info.public_key)->info.last_used_at == clock->now() - kLag);
}

TEST_CASE("pending last use is flushed when the validator dies", "[validator]") {
  auto store = std::make_shared<InstrumentedStore>();
  std::string pk;
  {
    KeyManagerOptions o;
    o.validation.flush_interval = std::chrono::hours(1);  // only the destructor flushes
    KeyManager m(store, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper), o);
    auto k = m.create(apikeys_test::account_id(1), CreateRequest{"t", "", std::nullopt});
    pk = k.info.public_key;
    REQUIRE(m.validate(pk, k.secret_key.reveal()).ok());
    CHECK(store->last_use_entries.load() == 0);
  }
  CHECK(store->last_use_entries.load() == 1);
  CHECK(store->inner.find(pk)->info.last_used_at.has_value());
}

TEST_CASE("the background writer flushes on its own", "[validator]") {
  auto store = std::make_shared<InstrumentedStore>();
  KeyManagerOptions o;
  o.validation.flush_interval = std::chrono::milliseconds(20);
  KeyManager m(store, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper), o);
  auto k = m.create(apikeys_test::account_id(1), CreateRequest{"t", "", std::nullopt});
  REQUIRE(m.validate(k.info.public_key, k.secret_key.reveal()).ok());
  for (int i = 0; i < 500 && store->last_use_entries.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(store->last_use_entries.load() == 1);
}

TEST_CASE("a flush_interval of zero or less is refused while the writer runs", "[validator]") {
  // The writer thread waits flush_interval between flushes: zero would spin it.
  const auto store = std::make_shared<MemoryStore>();
  const auto hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  for (const auto every : {std::chrono::milliseconds(0), std::chrono::milliseconds(-5)}) {
    ValidatorOptions o;
    o.flush_interval = every;
    CHECK_THROWS_MATCHES(Validator(store, hasher, o), Error,
                         Catch::Predicate<Error>([](const Error& e) {
                           return e.code() == ErrorCode::invalid_argument;
                         }));
    o.record_last_use = false;  // no writer thread: nothing to refuse
    o.rehash_on_use = false;
    CHECK_NOTHROW(Validator(store, hasher, o));
    o.rehash_on_use = true;  // the same thread rewrites digests
    CHECK_THROWS_AS(Validator(store, hasher, o), Error);
  }
}

TEST_CASE("a failing last-use write never affects validation", "[validator]") {
  Fixture f(true, true);
  auto k = f.create();
  f.store->fail_last_use = true;
  CHECK(f.manager->validate(k.info.public_key, k.secret_key.reveal()).ok());
  f.manager->validator().flush_last_use();
  CHECK(f.manager->validator().last_use_failures() == 1);
  CHECK(f.manager->validate(k.info.public_key, k.secret_key.reveal()).ok());
}

TEST_CASE("a moved store revision clears cached verdicts", "[validator]") {
  // Another process revoked the key: our cache still says valid until the poll.
  Fixture f(true, false, std::chrono::milliseconds(10));
  auto k = f.create();
  const std::string sk(k.secret_key.reveal());
  REQUIRE(f.manager->validate(k.info.public_key, sk).ok());
  f.store->inner.set_status(k.info.account_id, k.info.key_id,
                            KeyStatus::revoked);           // behind our back
  CHECK(f.manager->validate(k.info.public_key, sk).ok());  // still cached: nobody told us
  f.store->rev += 1;
  ValidationCode code = ValidationCode::valid;
  for (int i = 0; i < 500 && code == ValidationCode::valid; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    code = f.manager->validate(k.info.public_key, sk).code;
  }
  CHECK(code == ValidationCode::revoked);
}

TEST_CASE("a moved revision drops only the keys the store's change log names", "[validator]") {
  // Another process revoked one key: its verdicts go at the next poll, and every other
  // key keeps answering from the cache (a revoke elsewhere is not a cache flush).
  Fixture f(true, false, std::chrono::milliseconds(10));
  f.store->keep_log = true;
  auto revoked = f.create();
  auto kept = f.create();
  const std::string sk1(revoked.secret_key.reveal());
  const std::string sk2(kept.secret_key.reveal());
  REQUIRE(f.manager->validate(revoked.info.public_key, sk1).ok());
  REQUIRE(f.manager->validate(kept.info.public_key, sk2).ok());

  f.store->external_revoke(revoked.info.account_id, revoked.info.key_id);
  ValidationCode code = ValidationCode::valid;
  for (int i = 0; i < 1000 && code == ValidationCode::valid; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    code = f.manager->validate(revoked.info.public_key, sk1).code;
  }
  CHECK(code == ValidationCode::revoked);
  const int finds = f.store->finds.load();
  CHECK(f.manager->validate(kept.info.public_key, sk2).ok());
  CHECK(f.store->finds.load() == finds);  // answered by the cache

  SECTION("without a change log every verdict goes") {
    f.store->keep_log = false;
    auto third = f.create();
    REQUIRE(f.manager->validate(kept.info.public_key, sk2).ok());
    f.store->external_revoke(third.info.account_id, third.info.key_id);
    const int before = f.store->finds.load();
    int after = before;
    for (int i = 0; i < 1000 && after == before; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      CHECK(f.manager->validate(kept.info.public_key, sk2).ok());
      after = f.store->finds.load();
    }
    CHECK(after > before);  // the cache was cleared, so the store was read again
  }
}

TEST_CASE("validator construction rules", "[validator]") {
  auto hasher = std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  CHECK_THROWS_AS(Validator(nullptr, hasher), Error);
  CHECK_THROWS_AS(Validator(std::make_shared<MemoryStore>(), nullptr), Error);
  ValidatorOptions bad;
  bad.format.length = 8;
  CHECK_THROWS_AS(Validator(std::make_shared<MemoryStore>(), hasher, bad), Error);
}

// The current pepper's HMAC failing (OpenSSL out of memory, say) on the store path: an
// error, whatever the key's state and whichever cache, nothing cached, and the key
// valid as soon as the hasher works again.
TEST_CASE("a hasher failing under the current pepper is an error, then valid", "[validator]") {
  struct FailingHasher final : Hasher {
    HmacSha256Hasher inner{apikeys_test::kTestPepper};
    mutable std::atomic<bool> failing{false};
    std::uint32_t current_pepper_id() const noexcept override { return inner.current_pepper_id(); }
    Digest hash(std::string_view s) const override {
      if (failing) throw Error(ErrorCode::crypto, "HMAC-SHA256 failed");
      return inner.hash(s);
    }
    std::optional<Digest> hash_with(std::string_view s, std::uint32_t id) const override {
      if (failing) throw Error(ErrorCode::crypto, "HMAC-SHA256 failed");
      return inner.hash_with(s, id);
    }
  };
  const int cache = GENERATE(0, 1, 2);  // none, a MemoryCache, a cache of one's own
  CAPTURE(cache);
  auto store = std::make_shared<InstrumentedStore>();
  auto hasher = std::make_shared<FailingHasher>();
  ValidatorOptions o;
  o.record_last_use = false;
  if (cache == 1) o.cache = std::make_shared<MemoryCache>();
  if (cache == 2) o.cache = std::make_shared<ForwardingCache>();
  KeyManager m(store, hasher, KeyManagerOptions{o, nullptr});
  const CreatedKey k = m.create(apikeys_test::account_id(1), CreateRequest{"k", "", std::nullopt});
  const std::string pk = k.info.public_key;
  const std::string sk(k.secret_key.reveal());
  hasher->failing = true;
  CHECK(m.validate(pk, sk).code == ValidationCode::error);
  CHECK(m.validate(pk, wrong_secret_for(k)).code == ValidationCode::error);
  CHECK(m.validate("pk_" + std::string(32, 'Z'), sk).code == ValidationCode::error);
  CHECK(m.validate(pk, sk).code == ValidationCode::error);
  hasher->failing = false;
  CHECK(m.validate(pk, sk).code == ValidationCode::valid);
  CHECK(m.validate(pk, wrong_secret_for(k)).code == ValidationCode::wrong_secret);
}

TEST_CASE("a failing hasher is an error, never a cached wrong_secret", "[validator]") {
  // A hasher whose HMAC fails on demand (what HmacSha256Hasher throws when OpenSSL
  // does), over the current pepper and a retired one.
  struct FlakyHasher final : Hasher {
    HmacSha256Hasher inner{std::vector<Pepper>{Pepper{1, apikeys_test::kTestPepper},
                                               Pepper{2, apikeys_test::kTestPepper2}},
                           2};
    mutable std::atomic<bool> failing{false};
    std::uint32_t current_pepper_id() const noexcept override { return inner.current_pepper_id(); }
    std::vector<std::uint32_t> pepper_ids() const override { return inner.pepper_ids(); }
    // The current pepper keeps working: only the retired one's HMAC fails.
    Digest hash(std::string_view s) const override { return inner.hash(s); }
    std::optional<Digest> hash_with(std::string_view s, std::uint32_t id) const override {
      if (failing && id != inner.current_pepper_id()) {
        throw Error(ErrorCode::crypto, "HMAC-SHA256 failed");
      }
      return inner.hash_with(s, id);
    }
  };
  for (bool with_cache : {false, true}) {
    INFO("with a cache: " << with_cache);
    auto store = std::make_shared<MemoryStore>();
    ValidatorOptions o;
    o.record_last_use = false;
    o.rehash_on_use = false;  // the key stays under the retired pepper
    if (with_cache) o.cache = std::make_shared<MemoryCache>();
    std::string pk;
    std::string sk;
    {
      KeyManager old(store, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper),
                     KeyManagerOptions{ValidatorOptions{}, nullptr});
      auto k = old.create(apikeys_test::account_id(1), CreateRequest{"old", "", std::nullopt});
      pk = k.info.public_key;
      sk = std::string(k.secret_key.reveal());
    }
    REQUIRE(store->find(pk)->digest.pepper_id == 1);
    auto hasher = std::make_shared<FlakyHasher>();
    KeyManager m(store, hasher, KeyManagerOptions{o, nullptr});
    hasher->failing = true;
    CHECK(m.validate(pk, sk).code == ValidationCode::error);
    CHECK(m.validate(pk, sk).code == ValidationCode::error);
    hasher->failing = false;
    // Nothing was cached against the owner's secret: it validates at once.
    CHECK(m.validate(pk, sk).code == ValidationCode::valid);
  }
}

TEST_CASE("pepper rotation: old keys validate, new keys use the new pepper", "[validator]") {
  auto store = std::make_shared<MemoryStore>();
  const std::string old_pepper(apikeys_test::kTestPepper);
  const std::string new_pepper(apikeys_test::kTestPepper2);
  ValidatorOptions o;
  o.record_last_use = false;
  std::string pk;
  std::string sk;
  {
    KeyManager m(store, std::make_shared<HmacSha256Hasher>(old_pepper),
                 KeyManagerOptions{o, nullptr});
    auto k = m.create(apikeys_test::account_id(1), CreateRequest{"old", "", std::nullopt});
    pk = k.info.public_key;
    sk = std::string(k.secret_key.reveal());
  }
  auto rotated = std::make_shared<HmacSha256Hasher>(
      std::vector<Pepper>{Pepper{1, old_pepper}, Pepper{2, new_pepper}}, 2);
  KeyManager m(store, rotated, KeyManagerOptions{o, nullptr});
  CHECK(m.validate(pk, sk).ok());
  std::string wrong = sk;
  wrong.back() = wrong.back() == 'A' ? 'B' : 'A';
  CHECK(m.validate(pk, wrong).code == ValidationCode::wrong_secret);
  auto k2 = m.create(apikeys_test::account_id(1), CreateRequest{"new", "", std::nullopt});
  CHECK(store->find(k2.info.public_key)->digest.pepper_id == 2);
  CHECK(m.validate(k2.info.public_key, k2.secret_key.reveal()).ok());
  // Retiring the old pepper retires its keys (they fail closed as wrong_secret).
  KeyManager only_new(
      store, std::make_shared<HmacSha256Hasher>(std::vector<Pepper>{Pepper{2, new_pepper}}, 2),
      KeyManagerOptions{o, nullptr});
  CHECK(only_new.validate(pk, sk).code == ValidationCode::wrong_secret);
}

TEST_CASE("a MemoryCache hit computes no HMAC and a miss computes one", "[validator][cache]") {
  auto store = std::make_shared<InstrumentedStore>();
  auto hasher = std::make_shared<CountingHasher>();
  KeyManagerOptions o;
  o.validation.record_last_use = false;
  o.validation.cache = std::make_shared<MemoryCache>();
  KeyManager m(store, hasher, o);
  const CreatedKey k = m.create(apikeys_test::account_id(1), CreateRequest{"k", "", std::nullopt});
  const std::string pk = k.info.public_key;
  const std::string sk(k.secret_key.reveal());
  const int at_start = hasher->hmacs.load();

  REQUIRE(m.validate(pk, sk).ok());  // a miss: the store's digest is compared
  CHECK(hasher->hmacs.load() == at_start + 1);
  for (int i = 0; i < 5; ++i) REQUIRE(m.validate(pk, sk).ok());
  CHECK(hasher->hmacs.load() == at_start + 1);
  CHECK(store->finds.load() == 1);

  // A wrong secret while the owner's verdict is cached: the guess's verdict is never put
  // over the owner's, so each try reads the store, with its HMAC; the owner still hits.
  std::string other = sk;
  other.back() = other.back() == 'A' ? 'B' : 'A';
  CHECK(m.validate(pk, other).code == ValidationCode::wrong_secret);
  CHECK(hasher->hmacs.load() == at_start + 2);
  CHECK(m.validate(pk, other).code == ValidationCode::wrong_secret);
  CHECK(hasher->hmacs.load() == at_start + 3);
  CHECK(m.validate(pk, sk).ok());
  CHECK(hasher->hmacs.load() == at_start + 3);

  // A wrong secret for a key whose owner has no verdict cached is cached itself: one
  // HMAC on its miss, none after.
  const CreatedKey k2 =
      m.create(apikeys_test::account_id(1), CreateRequest{"k2", "", std::nullopt});
  std::string guess(k2.secret_key.reveal());
  guess.back() = guess.back() == 'A' ? 'B' : 'A';
  const int before_guess = hasher->hmacs.load();
  CHECK(m.validate(k2.info.public_key, guess).code == ValidationCode::wrong_secret);
  CHECK(m.validate(k2.info.public_key, guess).code == ValidationCode::wrong_secret);
  CHECK(m.validate(k2.info.public_key, guess).code == ValidationCode::wrong_secret);
  CHECK(hasher->hmacs.load() == before_guess + 1);

  // After a revoke the entry is gone: the next validation reads the store again.
  m.revoke(apikeys_test::account_id(1), k.info.key_id);
  const int after_revoke = hasher->hmacs.load();
  CHECK(m.validate(pk, sk).code == ValidationCode::revoked);
  CHECK(hasher->hmacs.load() == after_revoke + 1);
}

TEST_CASE("a cache of the caller's own is asked with the digest, one HMAC a call",
          "[validator][cache]") {
  auto store = std::make_shared<InstrumentedStore>();
  auto hasher = std::make_shared<CountingHasher>();
  auto cache = std::make_shared<ForwardingCache>();
  KeyManagerOptions o;
  o.validation.record_last_use = false;
  o.validation.cache = cache;
  KeyManager m(store, hasher, o);
  const CreatedKey k = m.create(apikeys_test::account_id(1), CreateRequest{"k", "", std::nullopt});
  const std::string pk = k.info.public_key;
  const std::string sk(k.secret_key.reveal());
  const int at_start = hasher->hmacs.load();
  for (int i = 0; i < 4; ++i) REQUIRE(m.validate(pk, sk).ok());
  CHECK(hasher->hmacs.load() == at_start + 4);
  CHECK(store->finds.load() == 1);  // the last three were hits
  // What it holds is keyed by the digest, as the Cache interface says.
  const auto v = cache->get(pk, hasher->inner.hash(sk));
  REQUIRE(v.has_value());
  CHECK(v->code == ValidationCode::valid);
}

TEST_CASE("a MemoryCache keeps a Validator's verdicts apart from its interface's",
          "[validator][cache]") {
  Fixture f;
  const CreatedKey k = f.create();
  const std::string pk = k.info.public_key;
  const std::string sk(k.secret_key.reveal());
  const Digest digest = f.hasher->hash(sk);
  // Planted through the interface under the secret's digest: the Validator's lookups
  // present a proof of the secret instead, so they never find it.
  f.cache->put(pk, digest, Verdict{ValidationCode::revoked}, std::chrono::minutes(1),
               f.cache->fill_token(pk));
  REQUIRE(f.cache->get(pk, digest).has_value());
  CHECK(f.manager->validate(pk, sk).ok());
  CHECK(f.store->finds.load() == 1);
  // And the Validator's verdict, now cached, answers no lookup by digest.
  CHECK(f.manager->validate(pk, sk).ok());
  CHECK(f.store->finds.load() == 1);
  CHECK_FALSE(f.cache->get(pk, digest).has_value());
}

namespace {

// A key issued under pepper 1 (kTestPepper) into `store`: its public key and secret.
std::pair<std::string, std::string> issue_under_pepper_1(const std::shared_ptr<Store>& store) {
  KeyManager issuer(store, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper),
                    KeyManagerOptions{});
  const CreatedKey k =
      issuer.create(apikeys_test::account_id(1), CreateRequest{"k", "", std::nullopt});
  return {k.info.public_key, std::string(k.secret_key.reveal())};
}

// Options for validators that share one MemoryCache; no rehash, so a key stays under
// the pepper it was issued with.
ValidatorOptions shared_cache_options() {
  ValidatorOptions o;
  o.record_last_use = false;
  o.rehash_on_use = false;
  o.cache = std::make_shared<MemoryCache>();
  return o;
}

}  // namespace

// A MemoryCache bounds the public keys it holds; that bound covers every format a
// KeyFormat allows, so no format's keys silently skip the cache (and pay an HMAC and a
// store read on every call).
TEST_CASE("Validator: keys of the longest formats are cached like any other",
          "[validator][cache]") {
  KeyFormat longest;
  longest.public_prefix = std::string(KeyFormat::kMaxPrefix - 1, 'p') + "_";
  longest.secret_prefix = std::string(KeyFormat::kMaxPrefix - 1, 's') + "_";
  longest.length = KeyFormat::kMaxLength;
  longest.checksum = true;
  const KeyFormat format = GENERATE_COPY(KeyFormat::branded("abcdefghijklmnop"), longest);
  CAPTURE(format.public_prefix);
  auto store = std::make_shared<InstrumentedStore>();
  KeyManagerOptions o;
  o.validation.format = format;
  o.validation.cache = std::make_shared<MemoryCache>();
  o.validation.record_last_use = false;
  KeyManager manager(store, std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper), o);
  const CreatedKey k =
      manager.create(apikeys_test::account_id(1), CreateRequest{"k", "", std::nullopt});
  if (format.public_prefix == longest.public_prefix) {
    CHECK(k.info.public_key.size() == KeyFormat::kMaxKeySize);
  }
  REQUIRE(manager.validate(k.info.public_key, k.secret_key.reveal()).ok());
  const int reads = store->finds.load();
  CHECK(manager.validate(k.info.public_key, k.secret_key.reveal()).ok());
  CHECK(store->finds.load() == reads);  // answered by the cache
}

TEST_CASE("Validators sharing a MemoryCache answer each other only with the same peppers",
          "[validator][cache]") {
  // A key under pepper 1. `old_peppers` knows it; `new_peppers` has dropped it, so for
  // a validator with it the key's secret no longer checks out.
  auto store = std::make_shared<InstrumentedStore>();
  auto old_peppers =
      std::make_shared<HmacSha256Hasher>(std::vector<Pepper>{Pepper{1, apikeys_test::kTestPepper},
                                                             Pepper{2, apikeys_test::kTestPepper2}},
                                         2);
  auto new_peppers = std::make_shared<HmacSha256Hasher>(
      std::vector<Pepper>{Pepper{2, apikeys_test::kTestPepper2}}, 2);
  const auto [pk, sk] = issue_under_pepper_1(store);
  ValidatorOptions o = shared_cache_options();
  Validator with_old(store, old_peppers, o);
  Validator same_hasher(store, old_peppers, o);
  Validator with_new(store, new_peppers, o);

  REQUIRE(with_old.validate(pk, sk).ok());
  const int reads = store->finds.load();
  // Another validator with the same hasher answers from the shared entry...
  CHECK(same_hasher.validate(pk, sk).ok());
  CHECK(store->finds.load() == reads);
  // ...one whose hasher would judge otherwise never does.
  CHECK(with_new.validate(pk, sk).code == ValidationCode::wrong_secret);
  CHECK(store->finds.load() == reads + 1);
}

TEST_CASE("Validators share a MemoryCache's verdicts by their peppers, not their hashers",
          "[validator][cache]") {
  auto store = std::make_shared<InstrumentedStore>();
  const auto [pk, sk] = issue_under_pepper_1(store);
  ValidatorOptions o = shared_cache_options();

  SECTION("two HmacSha256Hasher objects with the same peppers share, whichever is current") {
    // The same two peppers, listed in another order, and another one current.
    Validator a(store,
                std::make_shared<HmacSha256Hasher>(
                    std::vector<Pepper>{Pepper{1, apikeys_test::kTestPepper},
                                        Pepper{2, apikeys_test::kTestPepper2}},
                    2),
                o);
    Validator b(store,
                std::make_shared<HmacSha256Hasher>(
                    std::vector<Pepper>{Pepper{2, apikeys_test::kTestPepper2},
                                        Pepper{1, apikeys_test::kTestPepper}},
                    1),
                o);
    REQUIRE(a.validate(pk, sk).ok());
    const int reads = store->finds.load();
    CHECK(b.validate(pk, sk).ok());
    CHECK(store->finds.load() == reads);
  }
  SECTION("a hasher of another type shares nothing, even with itself") {
    // Its pepper_ids() need not list every id it checks: its verdicts stay its own.
    auto hasher = std::make_shared<CountingHasher>();
    Validator a(store, hasher, o);
    Validator b(store, hasher, o);
    REQUIRE(a.validate(pk, sk).ok());
    REQUIRE(a.validate(pk, sk).ok());
    const int reads = store->finds.load();
    CHECK(b.validate(pk, sk).ok());
    CHECK(store->finds.load() == reads + 1);
  }
}

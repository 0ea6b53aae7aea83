// The Validator and a key's policy: a valid answer carries the key's scopes and
// metadata (from the store and from a cache hit alike), Requirements turn a key that
// lacks a scope into insufficient_scope with the missing scopes in order (never cached),
// and a cache that drops scopes and metadata, or rate limits and credits, never makes the
// validator answer without them.
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "catch.hpp"
#include "store_doubles.hpp"
#include "test_support.hpp"

using namespace apikeys;
using apikeys_test::InstrumentedStore;

namespace {

constexpr const char* kMetadata = R"({"team":"payments","limits":{"rps":20}})";

// A cache that keeps every Verdict whole, as a cache is asked to: it shows the hit path
// whatever the bundled caches keep.
class KeepingCache final : public Cache {
 public:
  std::optional<Verdict> get(std::string_view pk, const Digest& d) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = kept_.find(key(pk, d));
    if (it == kept_.end()) return std::nullopt;
    ++hits;
    return it->second;
  }
  std::uint64_t fill_token(std::string_view) override { return 0; }
  void put(std::string_view pk, const Digest& d, const Verdict& v, std::chrono::milliseconds,
           std::uint64_t) override {
    std::lock_guard<std::mutex> l(mu_);
    kept_[key(pk, d)] = v;
    puts.push_back(v.code);
  }
  void erase(std::string_view pk) override {
    std::lock_guard<std::mutex> l(mu_);
    for (auto it = kept_.begin(); it != kept_.end();) {
      it = it->first.first == pk ? kept_.erase(it) : std::next(it);
    }
  }
  void clear() override {
    std::lock_guard<std::mutex> l(mu_);
    kept_.clear();
  }
  // Counts the hints; a hint for another key than the lookup's would be a wasted one.
  void prefetch(std::string_view pk) const noexcept override {
    std::lock_guard<std::mutex> l(mu_);
    ++hints;
    last_hint.assign(pk.data(), pk.size());
  }

  int hits = 0;
  std::vector<ValidationCode> puts;
  mutable int hints = 0;
  mutable std::string last_hint;

 private:
  static std::pair<std::string, std::string> key(std::string_view pk, const Digest& d) {
    return {std::string(pk), std::string(d.bytes.begin(), d.bytes.end())};
  }
  mutable std::mutex mu_;
  std::map<std::pair<std::string, std::string>, Verdict> kept_;
};

// A user's cache written before scopes existed: it keeps whole verdicts (in a
// MemoryCache) but rebuilds what it returns from the fields it knew (code, account, key,
// expiry), so has_policy is false.
class FieldsOnlyCache final : public Cache {
 public:
  explicit FieldsOnlyCache(std::shared_ptr<Clock> clock)
      : inner_([&] {
          MemoryCacheOptions o;
          o.clock = std::move(clock);
          return o;
        }()) {}
  std::optional<Verdict> get(std::string_view pk, const Digest& d) override {
    std::optional<Verdict> v = inner_.get(pk, d);
    if (!v) return std::nullopt;
    ++hits;
    return Verdict{v->code, v->account_id, v->key_id, v->expires_at};
  }
  std::uint64_t fill_token(std::string_view pk) override { return inner_.fill_token(pk); }
  void put(std::string_view pk, const Digest& d, const Verdict& v, std::chrono::milliseconds ttl,
           std::uint64_t token) override {
    inner_.put(pk, d, Verdict{v.code, v.account_id, v.key_id, v.expires_at}, ttl, token);
  }
  void erase(std::string_view pk) override { inner_.erase(pk); }
  void clear() override { inner_.clear(); }

  int hits = 0;

 private:
  MemoryCache inner_;
};

// A user's cache written after scopes but before rate limits existed: it keeps the
// key's policy but rebuilds verdicts without the lineage, rate limits and credits, so
// has_admission is false.
class PolicyOnlyCache final : public Cache {
 public:
  explicit PolicyOnlyCache(std::shared_ptr<Clock> clock)
      : inner_([&] {
          MemoryCacheOptions o;
          o.clock = std::move(clock);
          return o;
        }()) {}
  std::optional<Verdict> get(std::string_view pk, const Digest& d) override {
    std::optional<Verdict> v = inner_.get(pk, d);
    if (!v) return std::nullopt;
    ++hits;
    return strip(*v);
  }
  std::uint64_t fill_token(std::string_view pk) override { return inner_.fill_token(pk); }
  void put(std::string_view pk, const Digest& d, const Verdict& v, std::chrono::milliseconds ttl,
           std::uint64_t token) override {
    inner_.put(pk, d, strip(v), ttl, token);
  }
  void erase(std::string_view pk) override { inner_.erase(pk); }
  void clear() override { inner_.clear(); }

  int hits = 0;

 private:
  static Verdict strip(const Verdict& v) {
    Verdict out{v.code, v.account_id, v.key_id, v.expires_at};
    out.scopes = v.scopes;
    out.metadata = v.metadata;
    out.has_policy = v.has_policy;
    return out;
  }
  MemoryCache inner_;
};

// A KeyManager over an InstrumentedStore (which counts find()) and the cache given.
struct Node {
  std::shared_ptr<ManualClock> clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  std::shared_ptr<InstrumentedStore> store = std::make_shared<InstrumentedStore>();
  std::shared_ptr<HmacSha256Hasher> hasher =
      std::make_shared<HmacSha256Hasher>(apikeys_test::kTestPepper);
  std::unique_ptr<KeyManager> manager;

  explicit Node(std::shared_ptr<Cache> cache) {
    KeyManagerOptions o;
    o.validation.clock = clock;
    o.validation.cache = std::move(cache);
    o.validation.record_last_use = false;
    o.validation.revision_poll_interval = std::chrono::milliseconds(0);
    manager = std::make_unique<KeyManager>(store, hasher, o);
  }

  CreatedKey create(std::vector<std::string> scopes, std::string metadata = kMetadata) {
    CreateRequest r;
    r.title = "policy key";
    r.scopes = std::move(scopes);
    r.metadata = std::move(metadata);
    return manager->create(apikeys_test::account_id(1), r);
  }

  // Gives the key new scopes as another writer would, then drops its verdicts as every
  // KeyManager change does.
  void set_scopes(const CreatedKey& k, std::vector<std::string> scopes) {
    std::optional<KeyRecord> record = store->inner.find(k.info.public_key);
    REQUIRE(record);
    REQUIRE(store->inner.remove(k.info.account_id, k.info.key_id));
    record->info.scopes = std::move(scopes);
    store->inner.insert(*record);
    manager->validator().invalidate(k.info.public_key);
  }
};

std::string token_of(const CreatedKey& k) {
  return k.info.public_key + ":" + std::string(k.secret_key.reveal());
}

Requirements needs(std::vector<std::string> scopes) {
  Requirements r;
  r.scopes = std::move(scopes);
  return r;
}

// The caches a test runs with: none, the bundled MemoryCache, one that keeps verdicts
// whole, and one that drops scopes and metadata.
struct CacheCase {
  const char* name;
  std::shared_ptr<Cache> cache;
  // Whether a second validation of a valid key is answered by the cache.
  bool valid_hits;
};

std::vector<CacheCase> cache_cases(const std::shared_ptr<ManualClock>& clock) {
  MemoryCacheOptions mo;
  mo.clock = clock;
  auto memory = std::make_shared<MemoryCache>(mo);
  // MemoryCache answers a hit only when it keeps the policy (has_policy); otherwise the
  // validator reads the store, which is also correct. Find out which it is.
  Verdict probe{ValidationCode::valid};
  probe.scopes = {"a"};
  probe.has_policy = true;
  Digest d;
  d.bytes.fill(7);
  memory->put("pk_probe", d, probe, std::chrono::seconds(10), memory->fill_token("pk_probe"));
  const std::optional<Verdict> back = memory->get("pk_probe", d);
  const bool memory_keeps = back && back->has_policy && back->scopes == probe.scopes;
  memory->clear();
  return {
      {"no cache", nullptr, false},
      {"MemoryCache", memory, memory_keeps},
      {"a cache that keeps verdicts whole", std::make_shared<KeepingCache>(), true},
      {"a cache that drops scopes and metadata", std::make_shared<FieldsOnlyCache>(clock), false}};
}

}  // namespace

TEST_CASE("a valid result carries the key's scopes and metadata", "[validator][policy]") {
  const auto clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  for (const CacheCase& c : cache_cases(clock)) {
    INFO(c.name);
    Node n(c.cache);
    const CreatedKey k = n.create({"orders.read", "billing.*", "admin:**", "orders.read"});
    const std::vector<std::string> stored = {"admin:**", "billing.*", "orders.read"};
    REQUIRE(k.info.scopes == stored);
    const CreatedKey bare = n.create({}, "");
    for (int round = 0; round < 2; ++round) {  // the store, then a hit where there is one
      INFO("round " << round);
      const int finds = n.store->finds.load();
      const ValidationResult r = n.manager->validate(token_of(k));
      CHECK(n.store->finds.load() == finds + (round == 1 && c.valid_hits ? 0 : 1));
      REQUIRE(r.ok());
      CHECK(r.scopes == stored);
      CHECK(r.metadata == kMetadata);
      CHECK(r.has_policy);
      CHECK(r.missing_scopes.empty());
      CHECK(r.key_id == k.info.key_id);
      const ValidationResult b = n.manager->validate(token_of(bare));
      REQUIRE(b.ok());
      CHECK(b.scopes.empty());
      CHECK(b.metadata.empty());
    }
  }
}

TEST_CASE("requirements: insufficient_scope names the missing scopes in order",
          "[validator][policy]") {
  const auto clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  for (const CacheCase& c : cache_cases(clock)) {
    INFO(c.name);
    Node n(c.cache);
    const CreatedKey k = n.create({"orders.read", "billing.*", "admin:**", "*"});
    const std::string pk = k.info.public_key;
    const std::string sk(k.secret_key.reveal());
    const Validator& v = n.manager->validator();
    for (int round = 0; round < 2; ++round) {
      INFO("round " << round);
      // Everything granted: valid, through either overload.
      const Requirements granted =
          needs({"orders.read", "billing.invoices", "admin:users:delete", "anything"});
      for (const ValidationResult& r :
           {v.validate(pk, sk, granted), v.validate(token_of(k), granted),
            n.manager->validate(token_of(k), granted)}) {
        CHECK(r.code == ValidationCode::valid);
        CHECK(r.missing_scopes.empty());
      }
      // Missing scopes, in the order required (duplicates kept), beside granted ones.
      // A wildcard or otherwise invalid required scope is never granted, not even by the
      // same wildcard.
      const Requirements lacking =
          needs({"orders.write", "orders.read", "zeta", "billing.*", "billing.a.b", "**", "*",
                 "Orders.read", "", "orders.write", "admin:**", "billing.invoices"});
      const std::vector<std::string> missing = {
          "orders.write", "billing.*", "billing.a.b",  "**",      "*",
          "Orders.read",  "",          "orders.write", "admin:**"};
      for (const ValidationResult& r :
           {v.validate(pk, sk, lacking), v.validate(token_of(k), lacking),
            n.manager->validate(token_of(k), lacking)}) {
        CHECK(r.code == ValidationCode::insufficient_scope);
        CHECK_FALSE(r.ok());
        CHECK(r.missing_scopes == missing);
        // The caller proved the secret: the key's identity and policy come along.
        CHECK(r.key_id == k.info.key_id);
        CHECK(r.account_id == k.info.account_id);
        CHECK(r.scopes == k.info.scopes);
        CHECK(r.metadata == kMetadata);
      }
      // "zeta" is granted by "*": one segment.
      CHECK(v.validate(pk, sk, needs({"zeta"})).ok());
      CHECK(v.validate(pk, sk, needs({"zeta.x"})).missing_scopes ==
            std::vector<std::string>{"zeta.x"});
    }
    // Requirements never change another answer.
    std::string wrong = sk;
    wrong.back() = wrong.back() == 'A' ? 'B' : 'A';
    const ValidationResult w = v.validate(pk, wrong, needs({"nope"}));
    CHECK(w.code == ValidationCode::wrong_secret);
    CHECK(w.missing_scopes.empty());
    CHECK(v.validate("nonsense", needs({"nope"})).code == ValidationCode::malformed);
    n.manager->revoke(k.info.account_id, k.info.key_id);
    const ValidationResult rv = v.validate(pk, sk, needs({"nope"}));
    CHECK(rv.code == ValidationCode::revoked);
    CHECK(rv.missing_scopes.empty());
  }
}

// Cache::prefetch() is a hint: the Validator gives it the public key of each lookup
// before hashing the secret; a cache that does not implement it (every cache above
// but KeepingCache) is unaffected.
TEST_CASE("The Validator hints the cache with the public key it looks up", "[validator][policy]") {
  auto keeping = std::make_shared<KeepingCache>();
  Node n(keeping);
  const CreatedKey created = n.create({});
  const std::string token = token_of(created);
  CHECK(n.manager->validator().validate(token).ok());  // a miss, then the store
  CHECK(keeping->hints == 1);
  CHECK(keeping->last_hint == created.info.public_key);
  CHECK(n.manager->validator().validate(token).ok());  // a hit
  CHECK(keeping->hits == 1);
  CHECK(keeping->hints == 2);
  CHECK(n.manager->validator().validate("nonsense").code == ValidationCode::malformed);
  CHECK(keeping->hints == 2);  // refused before any lookup
}

TEST_CASE("insufficient_scope is never cached", "[validator][policy]") {
  auto keeping = std::make_shared<KeepingCache>();
  Node n(keeping);
  const CreatedKey k = n.create({"orders.read"});
  const std::string pk = k.info.public_key;
  const std::string sk(k.secret_key.reveal());
  const Validator& v = n.manager->validator();

  CHECK(v.validate(pk, sk, needs({"orders.write"})).code == ValidationCode::insufficient_scope);
  // What was cached is the key's verdict, `valid` with its scopes, not the request's answer.
  REQUIRE(keeping->puts == std::vector<ValidationCode>{ValidationCode::valid});
  std::optional<Verdict> cached = keeping->get(pk, n.hasher->hash(sk));
  REQUIRE(cached);
  CHECK(cached->code == ValidationCode::valid);
  CHECK(cached->has_policy);
  CHECK(cached->scopes == std::vector<std::string>{"orders.read"});
  // So the next request, needing what the key grants, is valid, from the cache.
  const int finds = n.store->finds.load();
  CHECK(v.validate(pk, sk, needs({"orders.read"})).ok());
  CHECK(v.validate(pk, sk).ok());
  CHECK(v.validate(pk, sk, needs({"orders.write"})).code == ValidationCode::insufficient_scope);
  CHECK(n.store->finds.load() == finds);
  CHECK(keeping->puts.size() == 1);

  // The key's scopes change: the next call reflects it, either way round.
  n.set_scopes(k, {"orders.read", "orders.write"});
  CHECK(v.validate(pk, sk, needs({"orders.write"})).ok());
  n.set_scopes(k, {"orders.write"});
  const ValidationResult r = v.validate(pk, sk, needs({"orders.read", "orders.write"}));
  CHECK(r.code == ValidationCode::insufficient_scope);
  CHECK(r.missing_scopes == std::vector<std::string>{"orders.read"});
  CHECK(r.scopes == std::vector<std::string>{"orders.write"});
}

TEST_CASE("insufficient_scope is never cached, with the bundled MemoryCache",
          "[validator][policy]") {
  Node n([] {
    MemoryCacheOptions o;
    return std::make_shared<MemoryCache>(o);
  }());
  const CreatedKey k = n.create({"orders.read"});
  const std::string pk = k.info.public_key;
  const std::string sk(k.secret_key.reveal());
  const Validator& v = n.manager->validator();
  for (int i = 0; i < 3; ++i) {
    CHECK(v.validate(pk, sk, needs({"orders.write"})).code == ValidationCode::insufficient_scope);
  }
  CHECK(v.validate(pk, sk, needs({"orders.read"})).ok());
  CHECK(v.validate(pk, sk).ok());
  n.set_scopes(k, {"orders.write"});
  CHECK(v.validate(pk, sk, needs({"orders.write"})).ok());
  CHECK(v.validate(pk, sk, needs({"orders.read"})).missing_scopes ==
        std::vector<std::string>{"orders.read"});
}

TEST_CASE("a cache that drops scopes and metadata: valid reads the store, the rest hits",
          "[validator][policy]") {
  const auto clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  auto fields_only = std::make_shared<FieldsOnlyCache>(clock);
  Node n(fields_only);
  const CreatedKey k = n.create({"orders.read", "billing.*"});
  const std::string pk = k.info.public_key;
  const std::string sk(k.secret_key.reveal());
  const Validator& v = n.manager->validator();
  for (int i = 0; i < 3; ++i) {
    const int finds = n.store->finds.load();
    const ValidationResult r = v.validate(pk, sk, needs({"billing.x"}));
    CHECK(n.store->finds.load() == finds + 1);  // the cached `valid` lacks the policy: a miss
    REQUIRE(r.ok());
    CHECK(r.scopes == std::vector<std::string>{"billing.*", "orders.read"});
    CHECK(r.metadata == kMetadata);
    const ValidationResult lacking = v.validate(pk, sk, needs({"admin"}));
    CHECK(lacking.code == ValidationCode::insufficient_scope);
    CHECK(lacking.missing_scopes == std::vector<std::string>{"admin"});
  }
  CHECK(fields_only->hits > 0);  // it did answer: with verdicts the validator refused
  // A negative verdict needs no scopes: the cache answers it (another key, whose slot
  // no `valid` verdict holds).
  const CreatedKey other = n.create({"orders.read"});
  std::string wrong(other.secret_key.reveal());
  wrong.back() = wrong.back() == 'A' ? 'B' : 'A';
  CHECK(v.validate(other.info.public_key, wrong).code == ValidationCode::wrong_secret);
  const int finds = n.store->finds.load();
  CHECK(v.validate(other.info.public_key, wrong, needs({"orders.read"})).code ==
        ValidationCode::wrong_secret);
  CHECK(n.store->finds.load() == finds);
  // The key's scopes change behind it: the next call reflects it.
  n.set_scopes(k, {"admin"});
  const ValidationResult after = v.validate(pk, sk, needs({"admin", "billing.x"}));
  CHECK(after.code == ValidationCode::insufficient_scope);
  CHECK(after.missing_scopes == std::vector<std::string>{"billing.x"});
}

TEST_CASE("a cache that drops rate limits and credits: valid reads the store, the rest hits",
          "[validator][policy]") {
  const auto clock = std::make_shared<ManualClock>(apikeys_test::test_start());
  auto policy_only = std::make_shared<PolicyOnlyCache>(clock);
  Node n(policy_only);
  CreateRequest req;
  req.title = "limited key";
  req.scopes = {"orders.read"};
  RateLimit per_minute;
  per_minute.name = "per-minute";
  per_minute.limit = 3;
  per_minute.period = std::chrono::minutes(1);
  req.rate_limits = {per_minute};
  const CreatedKey k = n.manager->create(apikeys_test::account_id(1), req);
  const std::string pk = k.info.public_key;
  const std::string sk(k.secret_key.reveal());
  const Validator& v = n.manager->validator();
  for (int i = 0; i < 3; ++i) {
    const int finds = n.store->finds.load();
    const ValidationResult r = v.validate(pk, sk, needs({"orders.read"}));
    // The cached `valid` lacks the key's rate limits: a miss, and the store's answer
    // carries them, so the limit is spent and reported.
    CHECK(n.store->finds.load() == finds + 1);
    REQUIRE(r.ok());
    CHECK(r.has_admission);
    REQUIRE(r.rate_limits.size() == 1);
    REQUIRE(r.limits.size() == 1);
    CHECK(r.limits[0].remaining == static_cast<std::uint64_t>(2 - i));
  }
  CHECK(policy_only->hits > 0);  // it did answer: with verdicts the validator refused
  // Past the limit: refused, though the cache holds a `valid` for the key.
  const ValidationResult limited = v.validate(pk, sk);
  CHECK(limited.code == ValidationCode::rate_limited);
  CHECK(limited.limited_by == "per-minute");
  // A negative verdict needs no rate limits: the cache answers it (another key, whose
  // slot no `valid` verdict holds).
  const CreatedKey other = n.manager->create(apikeys_test::account_id(1), req);
  std::string wrong(other.secret_key.reveal());
  wrong.back() = wrong.back() == 'A' ? 'B' : 'A';
  CHECK(v.validate(other.info.public_key, wrong).code == ValidationCode::wrong_secret);
  const int finds = n.store->finds.load();
  CHECK(v.validate(other.info.public_key, wrong).code == ValidationCode::wrong_secret);
  CHECK(n.store->finds.load() == finds);
}

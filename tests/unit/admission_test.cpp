// Admission through the Validator and KeyManager with the default MemoryLimiter over a
// MemoryStore: rate limits, credits, their order after every other check, rotation
// lineage, and the limiter failure policy.
#include "catch.hpp"

#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "apikeys/memory_limiter.hpp"
#include "store_doubles.hpp"

namespace {

using apikeys::CreateRequest;
using apikeys::Credits;
using apikeys::KeyManager;
using apikeys::KeyManagerOptions;
using apikeys::RateLimit;
using apikeys::ValidationCode;
using namespace std::chrono_literals;

const apikeys::Uuid kAccount = *apikeys::Uuid::parse("6f1c2b9e-1d3a-4c5b-8e7f-0a1b2c3d4e5f");

struct Fixture {
  std::shared_ptr<apikeys::ManualClock> clock = std::make_shared<apikeys::ManualClock>(
      apikeys::from_unix_millis(1'767'225'600'000));  // 2026-01-01T00:00:00Z
  std::shared_ptr<apikeys::MemoryStore> store = std::make_shared<apikeys::MemoryStore>();
  std::unique_ptr<KeyManager> manager;

  explicit Fixture(KeyManagerOptions options = {},
                   std::shared_ptr<apikeys::MemoryStore> s = nullptr) {
    if (s) store = std::move(s);
    options.validation.clock = clock;
    options.validation.record_last_use = false;
    manager = std::make_unique<KeyManager>(store,
                                           std::make_shared<apikeys::HmacSha256Hasher>(
                                               std::string("0123456789abcdefghijklmnopqrstuv")),
                                           std::move(options));
  }
  std::string token(const apikeys::CreatedKey& k) const {
    return k.info.public_key + ":" + std::string(k.secret_key.reveal());
  }
};

RateLimit limit(const char* name, std::uint64_t n, std::chrono::milliseconds period,
                std::uint64_t burst = 0) {
  RateLimit l;
  l.name = name;
  l.limit = n;
  l.period = period;
  l.burst = burst;
  return l;
}

}  // namespace

TEST_CASE("A rate limit admits its burst, then one request per period/limit", "[admission]") {
  Fixture f;
  CreateRequest req("limited");
  req.rate_limits = {limit("per-second", 3, 1000ms)};
  const auto key = f.manager->create(kAccount, req);
  const std::string t = f.token(key);
  for (int i = 0; i < 3; ++i) {
    const auto r = f.manager->validate(t);
    REQUIRE(r.code == ValidationCode::valid);
    REQUIRE(r.limits.size() == 1);
    CHECK(r.limits[0].remaining == static_cast<std::uint64_t>(2 - i));
  }
  auto r = f.manager->validate(t);
  CHECK(r.code == ValidationCode::rate_limited);
  CHECK(r.limited_by == "per-second");
  CHECK(r.retry_after == 334ms);  // 1000/3 ms, rounded up
  f.clock->advance(333ms);
  CHECK(f.manager->validate(t).code == ValidationCode::rate_limited);
  f.clock->advance(1ms);
  CHECK(f.manager->validate(t).code == ValidationCode::valid);
}

TEST_CASE("Credits admit exactly the balance and are shared across rotation", "[admission]") {
  Fixture f;
  CreateRequest req("metered");
  Credits c;
  c.remaining = 5;
  req.credits = c;
  const auto key = f.manager->create(kAccount, req);
  const std::string t = f.token(key);
  for (int i = 0; i < 3; ++i) {
    const auto r = f.manager->validate(t);
    REQUIRE(r.code == ValidationCode::valid);
    CHECK(r.credits_remaining == std::optional<std::uint64_t>(4 - i));
  }
  apikeys::RotateRequest rot;
  rot.grace = 3600s;
  const auto next = f.manager->rotate(kAccount, key.info.key_id, rot);
  CHECK(next.info.lineage_id == key.info.key_id);
  CHECK(f.manager->validate(f.token(next)).credits_remaining == std::optional<std::uint64_t>(1));
  CHECK(f.manager->validate(t).credits_remaining == std::optional<std::uint64_t>(0));
  const auto r = f.manager->validate(f.token(next));
  CHECK(r.code == ValidationCode::usage_exceeded);
  CHECK(r.credits_remaining == std::optional<std::uint64_t>(0));
  CHECK(f.manager->get(kAccount, next.info.key_id).credits->remaining == 0);
  f.manager->add_credits(kAccount, next.info.key_id, 2);
  CHECK(f.manager->validate(t).code == ValidationCode::valid);
}

TEST_CASE("Every KeyManager call returns credits as get() shows them", "[admission][refill]") {
  // A refill due is applied when credits are shown (types.hpp, Credits): by get() and
  // list(), and by every call that returns the key, not only by those two.
  Fixture f;
  const auto make = [&f] {
    CreateRequest req("refilled daily");
    Credits c;
    c.remaining = 0;
    apikeys::CreditRefill r;
    r.amount = 100;
    r.interval = apikeys::RefillInterval::daily;
    c.refill = r;
    req.credits = c;
    return f.manager->create(kAccount, req);
  };
  const auto key = make();
  f.clock->advance(std::chrono::hours(24));  // a refill due, no validation since
  const auto shown = [&f](const apikeys::KeyInfo& k) {
    REQUIRE(k.credits);
    return k.credits->remaining;
  };
  CHECK(shown(f.manager->get(kAccount, key.info.key_id)) == 100);
  CHECK(shown(f.manager->disable(kAccount, key.info.key_id)) == 100);
  CHECK(shown(f.manager->enable(kAccount, key.info.key_id)) == 100);
  const auto successor = f.manager->rotate(kAccount, key.info.key_id, apikeys::RotateRequest{});
  CHECK(shown(successor.info) == 100);
  CHECK(shown(f.manager->revoke(kAccount, successor.info.key_id)) == 100);
  const auto other = make();
  f.clock->advance(std::chrono::hours(24));
  CHECK(shown(f.manager->remove(kAccount, other.info.key_id)) == 100);
}

TEST_CASE("A rejected request spends nothing", "[admission]") {
  Fixture f;
  CreateRequest req("both");
  req.scopes = {"read"};
  req.rate_limits = {limit("burst", 1, 60'000ms)};
  Credits c;
  c.remaining = 10;
  req.credits = c;
  const auto key = f.manager->create(kAccount, req);
  const std::string t = f.token(key);
  std::string wrong = t;
  wrong.back() = wrong.back() == 'a' ? 'b' : 'a';
  CHECK(f.manager->validate(wrong).code == ValidationCode::wrong_secret);
  apikeys::Requirements needs_write;
  needs_write.scopes = {"write"};
  CHECK(f.manager->validate(t, needs_write).code == ValidationCode::insufficient_scope);
  CHECK(f.manager->get(kAccount, key.info.key_id).credits->remaining == 10);
  CHECK(f.manager->validate(t).code == ValidationCode::valid);
  const auto limited = f.manager->validate(t);
  CHECK(limited.code == ValidationCode::rate_limited);
  CHECK(f.manager->get(kAccount, key.info.key_id).credits->remaining == 9);
}

// All or nothing the other way round: a request refused for want of credits advances
// no rate limit, with the cache on or off and with a lease or without.
TEST_CASE("usage_exceeded spends no rate limit", "[admission]") {
  const bool cached = GENERATE(false, true);
  const std::uint64_t lease = GENERATE(std::uint64_t{0}, std::uint64_t{5});
  CAPTURE(cached, lease);
  auto store = std::make_shared<apikeys::MemoryStore>();
  KeyManagerOptions o;
  if (cached) o.validation.cache = std::make_shared<apikeys::MemoryCache>();
  apikeys::MemoryLimiterOptions lo;
  lo.lease_size = lease;
  o.validation.limiter = std::make_shared<apikeys::MemoryLimiter>(store, lo);
  Fixture f(std::move(o), store);
  CreateRequest req("metered and limited");
  req.rate_limits = {limit("per-day", 2, 86'400'000ms)};  // a burst of 2, then one a day
  Credits c;
  c.remaining = 0;
  req.credits = c;
  const auto key = f.manager->create(kAccount, req);
  const std::string t = f.token(key);
  for (int i = 0; i < 5; ++i) {
    const auto r = f.manager->validate(t);
    CHECK(r.code == ValidationCode::usage_exceeded);
    CHECK(r.credits_remaining == std::optional<std::uint64_t>(0));
  }
  f.manager->add_credits(kAccount, key.info.key_id, 10);
  // The whole burst is still there: two admitted, then the limit refuses.
  CHECK(f.manager->validate(t).code == ValidationCode::valid);
  CHECK(f.manager->validate(t).code == ValidationCode::valid);
  CHECK(f.manager->validate(t).code == ValidationCode::rate_limited);
}

namespace {
struct FailingLimiter final : apikeys::Limiter {
  apikeys::Admission admit(const apikeys::AdmissionRequest&) override {
    throw std::runtime_error("down");
  }
};
}  // namespace

TEST_CASE("A failing limiter denies by default and allows when told to", "[admission]") {
  for (const auto policy :
       {apikeys::LimiterFailurePolicy::deny, apikeys::LimiterFailurePolicy::allow}) {
    KeyManagerOptions o;
    o.validation.limiter = std::make_shared<FailingLimiter>();
    o.validation.limiter_failure = policy;
    Fixture f(o);
    CreateRequest req("x");
    req.rate_limits = {limit("a", 10, 1000ms)};
    const auto key = f.manager->create(kAccount, req);
    const auto r = f.manager->validate(f.token(key));
    CHECK(r.limiter_failed);
    CHECK(r.code == (policy == apikeys::LimiterFailurePolicy::deny ? ValidationCode::error
                                                                   : ValidationCode::valid));
    CHECK(f.manager->validator().limiter_failures() == 1);
  }
}

namespace {

// A key with a rate limit of 2 per day and 10 credits, through a manager with or
// without a MemoryCache.
struct OrderFixture : Fixture {
  apikeys::CreatedKey key;
  std::string t;

  static KeyManagerOptions options(bool cache) {
    KeyManagerOptions o;
    if (cache) o.validation.cache = std::make_shared<apikeys::MemoryCache>();
    return o;
  }
  explicit OrderFixture(bool cache, std::vector<std::string> scopes = {"read"})
      : Fixture(options(cache)) {
    CreateRequest req("ordered");
    req.scopes = std::move(scopes);
    req.rate_limits = {limit("daily", 2, 86'400'000ms)};
    Credits c;
    c.remaining = 10;
    req.credits = c;
    key = manager->create(kAccount, req);
    t = token(key);
  }
  std::uint64_t credits() const {
    return manager->get(kAccount, key.info.key_id).credits->remaining;
  }
  std::string wrong_secret() const {
    std::string w = t;
    w.back() = w.back() == 'a' ? 'b' : 'a';
    return w;
  }
};

}  // namespace

TEST_CASE("Refused before admission: nothing spent, cache on or off", "[admission]") {
  for (const bool cache : {false, true}) {
    INFO("cache " << cache);
    SECTION(cache ? "with a cache" : "without a cache") {
      OrderFixture f(cache);
      // Warm the cache (a hit then answers the next ones) and spend one of the two.
      REQUIRE(f.manager->validate(f.t).code == ValidationCode::valid);
      for (int i = 0; i < 5; ++i) {
        CHECK(f.manager->validate(f.wrong_secret()).code == ValidationCode::wrong_secret);
        apikeys::Requirements write;
        write.scopes = {"write"};
        CHECK(f.manager->validate(f.t, write).code == ValidationCode::insufficient_scope);
      }
      CHECK(f.credits() == 9);
      // The rate limit has one left: neither the wrong secrets nor the scopes spent it.
      const auto r = f.manager->validate(f.t);
      REQUIRE(r.code == ValidationCode::valid);
      CHECK(r.limits.at(0).remaining == 0);
      // Rate-limited requests spend no credit.
      for (int i = 0; i < 3; ++i) {
        CHECK(f.manager->validate(f.t).code == ValidationCode::rate_limited);
      }
      CHECK(f.credits() == 8);
    }
  }
}

TEST_CASE("A disabled, revoked or expired key spends nothing", "[admission]") {
  for (const bool cache : {false, true}) {
    INFO("cache " << cache);
    {
      OrderFixture f(cache);
      f.manager->disable(kAccount, f.key.info.key_id);
      CHECK(f.manager->validate(f.t).code == ValidationCode::disabled);
      f.manager->enable(kAccount, f.key.info.key_id);
      CHECK(f.credits() == 10);
      CHECK(f.manager->validate(f.t).limits.at(0).remaining == 1);
    }
    {
      OrderFixture f(cache);
      f.manager->revoke(kAccount, f.key.info.key_id);
      CHECK(f.manager->validate(f.t).code == ValidationCode::revoked);
      CHECK(f.credits() == 10);
    }
    {
      OrderFixture f(cache);
      apikeys::KeyUpdate u;
      u.expires_in_days = 1;
      f.manager->update(kAccount, f.key.info.key_id, u);
      f.clock->advance(std::chrono::hours(25));
      CHECK(f.manager->validate(f.t).code == ValidationCode::expired);
      CHECK(f.credits() == 10);
    }
  }
}

TEST_CASE("Cost 0 is never refused by a rate limit and spends nothing", "[admission]") {
  OrderFixture f(false);
  apikeys::Requirements free_check;
  free_check.cost = 0;
  REQUIRE(f.manager->validate(f.t).code == ValidationCode::valid);
  REQUIRE(f.manager->validate(f.t).code == ValidationCode::valid);
  CHECK(f.manager->validate(f.t).code == ValidationCode::rate_limited);
  const auto r = f.manager->validate(f.t, free_check);
  CHECK(r.code == ValidationCode::valid);
  CHECK(r.credits_remaining == std::optional<std::uint64_t>(8));
  CHECK(f.credits() == 8);
}

TEST_CASE("Rotation shares the rate-limit state and credits of the lineage", "[admission]") {
  for (const bool cache : {false, true}) {
    INFO("cache " << cache);
    OrderFixture f(cache);
    REQUIRE(f.manager->validate(f.t).code == ValidationCode::valid);
    apikeys::RotateRequest rot;
    rot.grace = 3600s;
    const auto next = f.manager->rotate(kAccount, f.key.info.key_id, rot);
    const std::string nt = f.token(next);
    // The old key spent one of the two: the successor has one left.
    const auto r = f.manager->validate(nt);
    REQUIRE(r.code == ValidationCode::valid);
    CHECK(r.limits.at(0).remaining == 0);
    CHECK(r.credits_remaining == std::optional<std::uint64_t>(8));
    CHECK(f.manager->validate(nt).code == ValidationCode::rate_limited);
    CHECK(f.manager->validate(f.t).code == ValidationCode::rate_limited);
  }
}

TEST_CASE("A balance created for a lineage charges every key of it, links broken or long",
          "[admission]") {
  // The old key's `valid` verdict is cached while its lineage has no credits. Creating
  // a balance must reach that cached verdict although the old key is no longer linked
  // to the one the balance is set on: the key between them was deleted, or the chain of
  // rotations is longer than the walk along its links goes.
  for (const int rotations : {2, 70}) {
    INFO(rotations << " rotations");
    // The cache on the fixture's clock: on its own (the system clock) it would see the
    // old key's grace, a week from the fixture's date, as over, and cache nothing.
    const auto clock = std::make_shared<apikeys::ManualClock>(apikeys::from_unix_millis(0));
    apikeys::MemoryCacheOptions co;
    co.clock = clock;
    KeyManagerOptions o;
    o.validation.cache = std::make_shared<apikeys::MemoryCache>(co);
    Fixture f(o);
    clock->set(f.clock->now());
    const auto first = f.manager->create(kAccount, CreateRequest("first"));
    std::vector<apikeys::Uuid> chain{first.info.key_id};
    apikeys::RotateRequest rot;
    rot.grace = std::chrono::hours(24 * 7);
    apikeys::CreatedKey last;
    for (int i = 0; i < rotations; ++i) {
      last = f.manager->rotate(kAccount, chain.back(), rot);
      chain.push_back(last.info.key_id);
    }
    const std::string old_token = f.token(first);
    const auto before = f.manager->validate(old_token);
    REQUIRE(before.code == ValidationCode::valid);
    REQUIRE_FALSE(before.credits_remaining);
    if (rotations == 2) f.manager->remove(kAccount, chain[1]);  // the middle key
    f.manager->set_credits(kAccount, last.info.key_id, 2);
    const auto r = f.manager->validate(old_token);
    REQUIRE(r.code == ValidationCode::valid);
    CHECK(r.credits_remaining == std::optional<std::uint64_t>(1));
    CHECK(f.manager->validate(f.token(last)).credits_remaining == std::optional<std::uint64_t>(0));
    CHECK(f.manager->validate(old_token).code == ValidationCode::usage_exceeded);
  }
}

TEST_CASE("update() keeps the state of a limit that keeps its name", "[admission]") {
  OrderFixture f(true);
  REQUIRE(f.manager->validate(f.t).code == ValidationCode::valid);
  REQUIRE(f.manager->validate(f.t).code == ValidationCode::valid);
  REQUIRE(f.manager->validate(f.t).code == ValidationCode::rate_limited);
  apikeys::KeyUpdate u;
  // "daily" raised to 3 per day, and a new limit beside it. The state kept is when
  // "daily" is back at rest (a day from now): under 3 per day that is 3 spent, so the
  // next one is due in 8 hours, not at once.
  u.rate_limits =
      std::vector<RateLimit>{limit("daily", 3, 86'400'000ms), limit("hourly", 100, 3'600'000ms)};
  f.manager->update(kAccount, f.key.info.key_id, u);
  const auto limited = f.manager->validate(f.t);
  CHECK(limited.code == ValidationCode::rate_limited);
  CHECK(limited.limited_by == "daily");
  CHECK(limited.retry_after == std::chrono::milliseconds(8 * 3'600'000));
  f.clock->advance(std::chrono::hours(8));
  const auto r = f.manager->validate(f.t);
  REQUIRE(r.code == ValidationCode::valid);
  REQUIRE(r.limits.size() == 2);
  CHECK(r.limits[0].remaining == 0);   // daily
  CHECK(r.limits[1].remaining == 99);  // hourly: a new state
  CHECK(f.manager->validate(f.t).code == ValidationCode::rate_limited);
  // Renamed: a new state.
  apikeys::KeyUpdate rename;
  rename.rate_limits = std::vector<RateLimit>{limit("per-day", 3, 86'400'000ms)};
  f.manager->update(kAccount, f.key.info.key_id, rename);
  CHECK(f.manager->validate(f.t).code == ValidationCode::valid);
}

TEST_CASE("format_rate_limit output reads back, a period in ms included", "[admission]") {
  for (const auto& l : {limit("a", 3, 1000ms), limit("b.c-d_e", 7, 60'000ms, 20),
                        limit("z9", 1'000'000'000, 86'400'000ms, 1), limit("x", 2, 1500ms),
                        limit("y", 5, 86'399'999ms), limit("h", 5, 7'200'000ms)}) {
    const std::string spec = apikeys::format_rate_limit(l);
    INFO(spec);
    const RateLimit back = apikeys::parse_rate_limit(spec);
    CHECK(back.name == l.name);
    CHECK(back.limit == l.limit);
    CHECK(back.period == l.period);
    CHECK(back.burst == l.burst);
  }
  CHECK(apikeys::format_rate_limit(limit("x", 2, 1500ms)) == "x=2/1500ms");
  CHECK(apikeys::parse_rate_limit("x=1/86400000ms").period == 86'400'000ms);
  CHECK(apikeys::parse_rate_limit("x=1/5m").period == 300'000ms);
  for (const char* bad : {"x=1/999ms", "x=1/86400001ms", "x=1/ms", "x=1/1", "x=1/s", "x=1/2d",
                          "x=0/1s", "x=1/1s:0", "_x=1/1s", "X=1/1s", "x=1/1s:", "x=/1s", "x=1/-1s",
                          "=1/1s", "x=1/1000000000000000000000ms"}) {
    INFO(bad);
    CHECK_THROWS_AS(apikeys::parse_rate_limit(bad), apikeys::Error);
  }
}

namespace {

// A MemoryStore that, inside its first credit charge, lets another request of the same
// lineage take the rate limit: the interleaving MemoryLimiter's second decision exists for.
class InterleavingStore final : public apikeys_test::ForwardingStore {
 public:
  InterleavingStore() : apikeys_test::ForwardingStore(std::make_shared<apikeys::MemoryStore>()) {}
  apikeys::MemoryLimiter* limiter = nullptr;
  apikeys::AdmissionRequest other;
  bool fired = false;

  apikeys::CreditTake take_credits(const apikeys::Uuid& lineage_id, std::uint64_t min,
                                   std::uint64_t max, apikeys::TimePoint now) override {
    apikeys::CreditTake t = inner().take_credits(lineage_id, min, max, now);
    if (!fired && limiter != nullptr) {
      fired = true;
      (void)limiter->admit(other);
    }
    return t;
  }
  void return_credits(const apikeys::Uuid& lineage_id, std::uint64_t n,
                      std::int64_t period) override {
    inner().return_credits(lineage_id, n, period);
  }
};

// A store written before rate limits existed that keeps only the fields it knew.
class ForgetfulStore final : public apikeys_test::ForwardingStore {
 public:
  ForgetfulStore() : apikeys_test::ForwardingStore(std::make_shared<apikeys::MemoryStore>()) {}
  void insert(const apikeys::KeyRecord& record) override {
    apikeys::KeyRecord kept = record;
    kept.info.rate_limits.clear();
    kept.info.credits.reset();
    apikeys_test::ForwardingStore::insert(kept);
  }
};

}  // namespace

TEST_CASE("A charge refused by a rate limit after it was taken is given back", "[admission]") {
  auto store = std::make_shared<InterleavingStore>();
  KeyManager manager(store, std::make_shared<apikeys::HmacSha256Hasher>(
                                std::string("0123456789abcdefghijklmnopqrstuv")));
  CreateRequest req("metered");
  Credits c;
  c.remaining = 10;
  req.credits = c;
  const auto key = manager.create(kAccount, req);

  apikeys::MemoryLimiter limiter(store);
  const RateLimit one = limit("one", 1, 60'000ms);
  apikeys::AdmissionRequest r;
  r.lineage_id = key.info.key_id;
  r.key_id = key.info.key_id;
  r.limits = &one;
  r.limit_count = 1;
  r.charge_credits = true;
  r.cost = 1;
  r.now = apikeys::from_unix_millis(1'767'225'600'000);
  store->other = r;
  store->other.charge_credits = false;  // takes the limit's only request, no credit
  store->limiter = &limiter;

  const apikeys::Admission a = limiter.admit(r);
  CHECK(store->fired);
  CHECK(a.outcome == apikeys::AdmissionOutcome::rate_limited);
  CHECK_FALSE(a.credits_remaining.has_value());
  CHECK(manager.get(kAccount, key.info.key_id).credits->remaining == 10);  // given back
}

TEST_CASE("A store that cannot keep or charge limits refuses keys that use them", "[admission]") {
  const auto hasher =
      std::make_shared<apikeys::HmacSha256Hasher>(std::string("0123456789abcdefghijklmnopqrstuv"));
  SECTION("credits kept but not chargeable") {
    // ForwardingStore keeps whole records (in a MemoryStore) but has only the Store
    // defaults for credits: a store written before they existed.
    auto store =
        std::make_shared<apikeys_test::ForwardingStore>(std::make_shared<apikeys::MemoryStore>());
    KeyManager manager(store, hasher);
    CreateRequest req("metered");
    req.credits = Credits{};
    CHECK_THROWS_MATCHES(manager.create(kAccount, req), apikeys::Error,
                         Catch::Predicate<apikeys::Error>([](const apikeys::Error& e) {
                           return e.code() == apikeys::ErrorCode::not_supported;
                         }));
    CHECK(manager.list(kAccount).empty());  // nothing left behind
    CHECK(manager.create(kAccount, CreateRequest("plain")).info.title == "plain");
  }
  SECTION("rate limits and credits dropped") {
    auto store = std::make_shared<ForgetfulStore>();
    KeyManager manager(store, hasher);
    CreateRequest req("limited");
    req.rate_limits = {limit("a", 5, 1000ms)};
    CHECK_THROWS_AS(manager.create(kAccount, req), apikeys::Error);
    CHECK(manager.list(kAccount).empty());
  }
}

namespace {

enum class CacheKind {
  none,
  memory,      // MemoryCache, its own get_into()
  get_only,    // get() only: Cache::get_into()'s default
  leaky_miss,  // get_into() writes the entry into `out`, then finds the digest differs
  forever,     // keeps every verdict past its TTL (and a valid one past the key's expiry)
  throwing,    // every third get_into() throws after writing into `out`
};

// A Cache by public key, for the kinds above other than none and memory.
class TestCache final : public apikeys::Cache {
 public:
  explicit TestCache(CacheKind kind) : kind_(kind) {}

  std::optional<apikeys::Verdict> get(std::string_view pk, const apikeys::Digest& d) override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = kept_.find(std::string(pk));
    if (it == kept_.end() || !apikeys::constant_time_equal(it->second.first, d)) {
      return std::nullopt;
    }
    return it->second.second;
  }
  bool get_into(std::string_view pk, const apikeys::Digest& d, apikeys::Verdict& out) override {
    if (kind_ == CacheKind::get_only) return Cache::get_into(pk, d, out);
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = kept_.find(std::string(pk));
    if (it == kept_.end()) return false;
    out = it->second.second;  // before the digest is compared: allowed, never used
    if (kind_ == CacheKind::throwing && ++calls_ % 3 == 0) throw std::runtime_error("down");
    return apikeys::constant_time_equal(it->second.first, d);
  }
  std::uint64_t fill_token(std::string_view) override { return 0; }
  void put(std::string_view pk, const apikeys::Digest& d, const apikeys::Verdict& v,
           std::chrono::milliseconds, std::uint64_t) override {
    std::lock_guard<std::mutex> lock(mu_);
    kept_[std::string(pk)] = {d, v};
  }
  void erase(std::string_view pk) override {
    std::lock_guard<std::mutex> lock(mu_);
    kept_.erase(std::string(pk));
  }
  void clear() override {
    std::lock_guard<std::mutex> lock(mu_);
    kept_.clear();
  }

 private:
  const CacheKind kind_;
  std::mutex mu_;
  int calls_ = 0;
  std::map<std::string, std::pair<apikeys::Digest, apikeys::Verdict>> kept_;
};

// An answer, and the names (in its run) of the key and lineage ids it holds.
struct Answer {
  apikeys::ValidationResult result;
  std::string key;
  std::string lineage;
};

// One run of requests that leaves a result holding every kind of field, then answers
// that hold none of them: each answer, by value (reuse false) or into one reused
// ValidationResult (a copy of each is kept).
std::vector<Answer> answers(CacheKind cache, bool reuse) {
  KeyManagerOptions o;
  if (cache == CacheKind::memory) o.validation.cache = std::make_shared<apikeys::MemoryCache>();
  if (cache != CacheKind::none && cache != CacheKind::memory) {
    o.validation.cache = std::make_shared<TestCache>(cache);
  }
  Fixture f(o);
  CreateRequest full("full");
  full.scopes = {"read", "write"};
  full.metadata = R"({"plan":"pro"})";
  full.rate_limits = {limit("daily", 3, 86'400'000ms), limit("fast", 100, 1000ms)};
  Credits c;
  c.remaining = 5;
  full.credits = c;
  full.expires_in_days = 30;
  const auto k_full = f.manager->create(kAccount, full);
  CreateRequest one_credit("one credit");
  Credits one;
  one.remaining = 1;
  one_credit.credits = one;
  const auto k_credit = f.manager->create(kAccount, one_credit);
  const auto k_plain = f.manager->create(kAccount, CreateRequest("plain"));
  const auto k_revoked = f.manager->create(kAccount, CreateRequest("revoked"));
  (void)f.manager->revoke(kAccount, k_revoked.info.key_id);
  CreateRequest expiring("expiring", {}, 1);
  expiring.scopes = {"read"};
  expiring.metadata = R"({"short":"lived"})";
  const auto k_expiring = f.manager->create(kAccount, expiring);
  const std::map<apikeys::Uuid, std::string> names = {{k_full.info.key_id, "full"},
                                                      {k_credit.info.key_id, "credit"},
                                                      {k_plain.info.key_id, "plain"},
                                                      {k_revoked.info.key_id, "revoked"},
                                                      {k_expiring.info.key_id, "expiring"}};
  const auto name_of = [&names](const apikeys::Uuid& id) -> std::string {
    if (id.is_nil()) return "nil";
    const auto it = names.find(id);
    return it == names.end() ? "unknown" : it->second;
  };

  const std::string t_full = f.token(k_full);
  std::string wrong = t_full;
  wrong.back() = wrong.back() == 'a' ? 'b' : 'a';
  std::string unknown = t_full;
  unknown[5] = unknown[5] == 'a' ? 'b' : 'a';  // another public key of the same shape
  apikeys::Requirements none;
  apikeys::Requirements admin;
  admin.scopes = {"read", "admin", "billing"};
  apikeys::Requirements heavy;
  heavy.cost = 2;

  std::vector<Answer> got;
  apikeys::ValidationResult out;
  const auto ask = [&](const std::string& token, const apikeys::Requirements& req) {
    if (reuse) {
      f.manager->validator().validate(token, req, out);
    } else {
      out = f.manager->validate(token, req);
    }
    got.push_back({out, name_of(out.key_id), name_of(out.lineage_id)});
  };
  ask(t_full, none);               // valid, from the store
  ask(t_full, none);               // valid, a hit when cached
  ask("no colon here", none);      // malformed
  ask(t_full, admin);              // insufficient_scope
  ask(t_full, heavy);              // rate_limited by "daily" (1 of 3 left)
  ask(wrong, none);                // wrong_secret
  ask(wrong, none);                // wrong_secret, a cached negative verdict
  ask(f.token(k_credit), none);    // valid, credits 0 left
  ask(unknown, none);              // not_found
  ask(f.token(k_credit), none);    // usage_exceeded
  ask(f.token(k_plain), none);     // valid, nothing but ids
  ask(t_full, none);               // valid, full again
  ask(f.token(k_revoked), none);   // revoked
  ask(t_full, none);               // rate_limited by "daily" (none left)
  ask(f.token(k_expiring), none);  // valid, scopes and metadata
  f.clock->advance(std::chrono::hours(48));
  ask(f.token(k_expiring), none);  // expired (the forever cache: from its stale valid)
  ask(f.token(k_plain), heavy);    // valid
  return got;
}

// Every field, the ids by their names in each run.
void check_same(const Answer& a, const Answer& b) {
  CHECK(a.result.code == b.result.code);
  CHECK(a.result.account_id == b.result.account_id);  // kAccount or nil in both
  CHECK(a.key == b.key);
  CHECK(a.lineage == b.lineage);
  CHECK(a.result.expires_at.has_value() == b.result.expires_at.has_value());
  CHECK(a.result.scopes == b.result.scopes);
  CHECK(a.result.metadata == b.result.metadata);
  CHECK(a.result.has_policy == b.result.has_policy);
  CHECK(a.result.rate_limits == b.result.rate_limits);
  CHECK(a.result.has_credits == b.result.has_credits);
  CHECK(a.result.has_admission == b.result.has_admission);
  CHECK(a.result.missing_scopes == b.result.missing_scopes);
  REQUIRE(a.result.limits.size() == b.result.limits.size());
  for (std::size_t i = 0; i < a.result.limits.size(); ++i) {
    CHECK(a.result.limits[i].remaining == b.result.limits[i].remaining);
    CHECK(a.result.limits[i].reset == b.result.limits[i].reset);
  }
  CHECK(a.result.credits_remaining == b.result.credits_remaining);
  CHECK(a.result.limited_by == b.result.limited_by);
  CHECK(a.result.retry_after == b.result.retry_after);
  CHECK(a.result.limiter_failed == b.result.limiter_failed);
}

// Only a valid answer (or one refused after the secret: scopes, admission) carries the
// key's fields; every other answer is its code alone.
void check_bare_unless_proven(const Answer& a) {
  const ValidationCode code = a.result.code;
  if (code == ValidationCode::valid || code == ValidationCode::insufficient_scope ||
      code == ValidationCode::rate_limited || code == ValidationCode::usage_exceeded) {
    return;
  }
  CHECK(a.key == "nil");
  CHECK(a.lineage == "nil");
  CHECK(a.result.account_id.is_nil());
  CHECK_FALSE(a.result.expires_at.has_value());
  CHECK(a.result.scopes.empty());
  CHECK(a.result.metadata.empty());
  CHECK_FALSE(a.result.has_policy);
  CHECK(a.result.rate_limits.empty());
  CHECK_FALSE(a.result.has_credits);
  CHECK_FALSE(a.result.has_admission);
  CHECK(a.result.missing_scopes.empty());
  CHECK(a.result.limits.empty());
  CHECK_FALSE(a.result.credits_remaining.has_value());
  CHECK(a.result.limited_by.empty());
}

}  // namespace

TEST_CASE("A reused result answers as a fresh one, whatever it held before", "[admission]") {
  for (const CacheKind cache : {CacheKind::none, CacheKind::memory, CacheKind::get_only,
                                CacheKind::leaky_miss, CacheKind::forever, CacheKind::throwing}) {
    CAPTURE(static_cast<int>(cache));
    const auto fresh = answers(cache, false);
    const auto reused = answers(cache, true);
    const std::vector<ValidationCode> expected = {
        ValidationCode::valid,        ValidationCode::valid,
        ValidationCode::malformed,    ValidationCode::insufficient_scope,
        ValidationCode::rate_limited, ValidationCode::wrong_secret,
        ValidationCode::wrong_secret, ValidationCode::valid,
        ValidationCode::not_found,    ValidationCode::usage_exceeded,
        ValidationCode::valid,        ValidationCode::valid,
        ValidationCode::revoked,      ValidationCode::rate_limited,
        ValidationCode::valid,        ValidationCode::expired,
        ValidationCode::valid};
    REQUIRE(fresh.size() == expected.size());
    REQUIRE(reused.size() == expected.size());
    for (std::size_t i = 0; i < fresh.size(); ++i) {
      CAPTURE(i);
      // A throwing get_into() is a miss: the store gives the same answers.
      CHECK(fresh[i].result.code == expected[i]);
      check_same(fresh[i], reused[i]);
      check_bare_unless_proven(fresh[i]);
      check_bare_unless_proven(reused[i]);
    }
    // The run did leave every kind of field set at some point.
    CHECK(fresh[0].result.limits.size() == 2);
    CHECK(fresh[3].result.missing_scopes.size() == 2);
    CHECK(fresh[4].result.limited_by == "daily");
    CHECK(fresh[14].result.metadata == R"({"short":"lived"})");
  }
}

TEST_CASE("A reused result after a limiter failure answers as a fresh one", "[admission]") {
  for (const auto policy :
       {apikeys::LimiterFailurePolicy::deny, apikeys::LimiterFailurePolicy::allow}) {
    KeyManagerOptions o;
    o.validation.limiter = std::make_shared<FailingLimiter>();
    o.validation.limiter_failure = policy;
    o.validation.cache = std::make_shared<apikeys::MemoryCache>();
    Fixture f(o);
    CreateRequest req("x");
    req.scopes = {"read"};
    req.rate_limits = {limit("a", 10, 1000ms)};
    const auto key = f.manager->create(kAccount, req);
    apikeys::ValidationResult out;
    out.missing_scopes = {"left over"};
    out.limited_by = "left over";
    out.limits.resize(3);
    f.manager->validator().validate(f.token(key), apikeys::Requirements{}, out);
    const apikeys::ValidationResult fresh = f.manager->validate(f.token(key));
    CHECK(out.key_id == fresh.key_id);
    CHECK(out.lineage_id == fresh.lineage_id);
    check_same({out, "", ""}, {fresh, "", ""});
    CHECK(out.limiter_failed);
    CHECK(out.limits.empty());
  }
}

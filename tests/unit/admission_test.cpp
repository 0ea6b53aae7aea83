// Admission through the Validator and KeyManager with the default MemoryLimiter over a
// MemoryStore: rate limits, credits, their order after every other check, rotation
// lineage, and the limiter failure policy.
#include "catch.hpp"

#include <memory>
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

  explicit Fixture(KeyManagerOptions options = {}) {
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

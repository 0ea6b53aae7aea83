// Admission through the Validator and KeyManager with the default MemoryLimiter over a
// MemoryStore: rate limits, credits, their order after every other check, rotation
// lineage, and the limiter failure policy.
#include "catch.hpp"

#include <memory>
#include <stdexcept>
#include <string>

#include "apikeys/apikeys.hpp"
#include "apikeys/memory_limiter.hpp"

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
    manager = std::make_unique<KeyManager>(
        store, std::make_shared<apikeys::HmacSha256Hasher>(
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
  for (const auto policy : {apikeys::LimiterFailurePolicy::deny, apikeys::LimiterFailurePolicy::allow}) {
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

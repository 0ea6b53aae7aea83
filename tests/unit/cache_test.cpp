// Tests of apikeys/memory_cache.hpp against the Cache contract in apikeys/cache.hpp:
// hits, TTLs on a ManualClock, keying by the full presented digest, the fill-token
// protocol that closes the revoke/fill race, the lock-out rule, the bounds in entries
// and in bytes, and use from several threads.
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "apikeys/cache.hpp"
#include "apikeys/clock.hpp"
#include "apikeys/memory_cache.hpp"
#include "apikeys/types.hpp"
#include "cache_contract.hpp"
#include "catch.hpp"
#include "test_support.hpp"

using apikeys::Digest;
using apikeys::MemoryCache;
using apikeys::MemoryCacheOptions;
using apikeys::ValidationCode;
using apikeys::Verdict;
using std::chrono::milliseconds;

namespace {

Digest digest_of(std::uint32_t seed) {
  Digest d;
  for (std::size_t i = 0; i < d.bytes.size(); ++i) {
    d.bytes[i] = static_cast<std::uint8_t>((seed >> (8 * (i % 4))) + 31 * i);
  }
  d.pepper_id = 1;
  return d;
}

Verdict valid_verdict(std::uint8_t n) {
  Verdict v;
  v.code = ValidationCode::valid;
  v.account_id = apikeys_test::account_id(n);
  std::array<std::uint8_t, 16> key{};
  key[0] = n;
  key[6] = 0x40;
  key[8] = 0x80;
  v.key_id = apikeys::Uuid(key);
  return v;
}

Verdict negative(ValidationCode code) {
  Verdict v;
  v.code = code;
  return v;
}

bool same(const Verdict& a, const Verdict& b) {
  return a.code == b.code && a.account_id == b.account_id && a.key_id == b.key_id;
}

std::string pk(std::size_t n) { return "pk_" + std::to_string(n) + std::string(20, 'k'); }

struct Fixture {
  std::shared_ptr<apikeys::ManualClock> clock =
      std::make_shared<apikeys::ManualClock>(apikeys_test::test_start());
  std::unique_ptr<MemoryCache> cache;

  explicit Fixture(std::size_t capacity = 1'000, std::size_t shards = 64,
                   std::size_t max_bytes = MemoryCacheOptions().max_bytes) {
    MemoryCacheOptions o;
    o.capacity = capacity;
    o.shards = shards;
    o.max_bytes = max_bytes;
    o.clock = clock;
    cache = std::make_unique<MemoryCache>(o);
  }

  // put() with a fresh token, the way the Validator fills.
  void fill(const std::string& key, const Digest& d, const Verdict& v, milliseconds ttl) {
    const std::uint64_t token = cache->fill_token(key);
    cache->put(key, d, v, ttl, token);
  }
};

}  // namespace

TEST_CASE("MemoryCache: get after put", "[cache]") {
  Fixture f;
  const std::string key = pk(1);
  const Digest d = digest_of(1);
  CHECK_FALSE(f.cache->get(key, d).has_value());
  CHECK(f.cache->size() == 0);

  f.fill(key, d, valid_verdict(1), milliseconds(1000));
  const auto got = f.cache->get(key, d);
  REQUIRE(got.has_value());
  CHECK(same(*got, valid_verdict(1)));
  CHECK(f.cache->size() == 1);

  SECTION("other public keys miss") {
    CHECK_FALSE(f.cache->get(pk(2), d).has_value());
    CHECK_FALSE(f.cache->get("", d).has_value());
    CHECK_FALSE(f.cache->get(key + "x", d).has_value());
    CHECK_FALSE(f.cache->get(key.substr(0, key.size() - 1), d).has_value());
  }
  SECTION("every negative code is stored and returned as is") {
    for (ValidationCode code : {ValidationCode::not_found, ValidationCode::wrong_secret,
                                ValidationCode::expired, ValidationCode::revoked}) {
      const std::string other = pk(100 + static_cast<std::size_t>(code));
      const Digest od = digest_of(100u + static_cast<std::uint32_t>(code));
      f.fill(other, od, negative(code), milliseconds(1000));
      const auto v = f.cache->get(other, od);
      REQUIRE(v.has_value());
      CHECK(v->code == code);
    }
  }
  SECTION("a later put for the same secret replaces the verdict") {
    f.fill(key, d, negative(ValidationCode::revoked), milliseconds(1000));
    const auto v = f.cache->get(key, d);
    REQUIRE(v.has_value());
    CHECK(v->code == ValidationCode::revoked);
    CHECK(f.cache->size() == 1);
  }
}

TEST_CASE("MemoryCache: TTL expiry on the injected clock", "[cache]") {
  Fixture f;
  const std::string key = pk(1);
  const Digest d = digest_of(1);
  f.fill(key, d, valid_verdict(1), milliseconds(1000));

  SECTION("just before the TTL: hit") {
    f.clock->advance(milliseconds(999));
    CHECK(f.cache->get(key, d).has_value());
  }
  SECTION("at the TTL: miss") {
    f.clock->advance(milliseconds(1000));
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
  SECTION("after the TTL: miss, and it stays a miss") {
    f.clock->advance(milliseconds(1001));
    CHECK_FALSE(f.cache->get(key, d).has_value());
    f.clock->advance(std::chrono::hours(24 * 365));
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
  SECTION("a huge TTL is honoured, not overflowed into the past") {
    // E.g. a user who sets ttl_revoked to milliseconds::max() to mean "forever".
    f.fill(key, d, negative(ValidationCode::revoked), milliseconds::max());
    const auto v = f.cache->get(key, d);
    REQUIRE(v.has_value());
    CHECK(v->code == ValidationCode::revoked);
    f.clock->advance(std::chrono::hours(24 * 365 * 100));
    CHECK(f.cache->get(key, d).has_value());
  }
  SECTION("a clock before 1970 expires entries too") {
    auto before_epoch = std::make_shared<apikeys::ManualClock>(
        apikeys::from_unix_millis(-86'400'000));  // 1969-12-31
    MemoryCacheOptions o;
    o.clock = before_epoch;
    MemoryCache cache(o);
    cache.put(key, d, valid_verdict(1), milliseconds(1000), cache.fill_token(key));
    before_epoch->advance(milliseconds(999));
    CHECK(cache.get(key, d).has_value());
    before_epoch->advance(milliseconds(1));
    CHECK_FALSE(cache.get(key, d).has_value());
  }
  SECTION("a new put after expiry is served again") {
    f.clock->advance(milliseconds(5000));
    f.fill(key, d, valid_verdict(1), milliseconds(10));
    CHECK(f.cache->get(key, d).has_value());
    f.clock->advance(milliseconds(10));
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
}

TEST_CASE("MemoryCache: a coarse clock never stretches a TTL", "[cache]") {
  const apikeys::TimePoint t0 = apikeys::from_unix_millis(1'700'000'000'000);
  constexpr milliseconds kTick(4);
  auto clock = std::make_shared<apikeys_test::LaggingClock>(t0, kTick);
  MemoryCacheOptions o;
  o.clock = clock;
  MemoryCache cache(o);
  const std::string key = pk(1);
  const Digest d = digest_of(1);
  const std::uint64_t token = cache.fill_token(key);
  cache.put(key, d, valid_verdict(1), milliseconds(1000), token);  // read with no lag
  SECTION("well inside the TTL, a lagging reading still hits") {
    clock->set(t0 + milliseconds(900), kTick);
    CHECK(cache.get(key, d).has_value());
  }
  SECTION("at the TTL by the full clock, a reading a tick behind misses") {
    clock->set(t0 + milliseconds(1000), kTick);
    CHECK_FALSE(cache.get(key, d).has_value());
  }
  SECTION("a put whose coarse reading lags still keeps the TTL, less the resolution") {
    cache.erase(key);
    clock->set(t0, kTick);  // the deadline comes from the full reading, t0 + 1000 ms
    cache.put(key, d, valid_verdict(1), milliseconds(1000), cache.fill_token(key));
    clock->set(t0 + milliseconds(995), milliseconds(0));
    CHECK(cache.get(key, d).has_value());
    clock->set(t0 + milliseconds(996), milliseconds(0));
    CHECK_FALSE(cache.get(key, d).has_value());
  }
  SECTION("a TTL within the resolution is not stored: no get could answer it") {
    cache.erase(key);
    cache.put(key, d, valid_verdict(1), kTick, cache.fill_token(key));
    CHECK(cache.size() == 0);
    cache.put(key, d, valid_verdict(1), kTick + milliseconds(1), cache.fill_token(key));
    CHECK(cache.size() == 1);
    CHECK(cache.get(key, d).has_value());
  }
  SECTION("from the TTL on, it misses at every lag up to the resolution") {
    for (int past = 0; past <= 5; ++past) {
      for (int lag = 0; lag <= 4; ++lag) {
        clock->set(t0, milliseconds(0));
        cache.put(key, d, valid_verdict(1), milliseconds(1000), cache.fill_token(key));
        clock->set(t0 + milliseconds(1000 + past), milliseconds(lag));
        INFO("past " << past << " ms, lag " << lag << " ms");
        CHECK_FALSE(cache.get(key, d).has_value());
      }
    }
  }
}

TEST_CASE("The system clock's coarse reading is never ahead and trails within its resolution",
          "[clock]") {
  const std::shared_ptr<apikeys::Clock> clock = apikeys::system_clock();
  const std::chrono::nanoseconds resolution = clock->coarse_resolution();
#if defined(__linux__)
  // CLOCK_REALTIME_COARSE is used, and its lag is taken as two of its ticks.
  timespec tick{};
  REQUIRE(clock_getres(CLOCK_REALTIME_COARSE, &tick) == 0);
  CHECK(resolution ==
        2 * (std::chrono::seconds(tick.tv_sec) + std::chrono::nanoseconds(tick.tv_nsec)));
#endif
  CHECK(resolution < std::chrono::seconds(1));
  // Spread over half a second, so the samples see many ticks, not one moment.
  constexpr int kSamples = 500;
  int trailing_further = 0;
  for (int i = 0; i < kSamples; ++i) {
    std::this_thread::sleep_for(std::chrono::microseconds(1000));
    const apikeys::TimePoint before = clock->now();
    const apikeys::TimePoint coarse = clock->coarse_now();
    const apikeys::TimePoint after = clock->now();
    REQUIRE(coarse <= after);
    // `before` is no later than the time the coarse reading was taken, so this gap is
    // at most the reading's lag. A tick handled late (a virtual CPU off its core) may
    // exceed the resolution, as the header says: rarely.
    if (before - coarse > resolution) ++trailing_further;
  }
  CHECK(trailing_further <= kSamples / 100);
}

TEST_CASE("A ManualClock's coarse reading is its reading", "[clock]") {
  apikeys::ManualClock clock(apikeys::from_unix_millis(1'700'000'000'123));
  CHECK(clock.coarse_now() == clock.now());
  CHECK(clock.coarse_resolution() == std::chrono::nanoseconds(0));
}

TEST_CASE("The system clock's steady reading never goes back and trails within its resolution",
          "[clock]") {
  const std::shared_ptr<apikeys::Clock> clock = apikeys::system_clock();
  const std::chrono::nanoseconds resolution = clock->coarse_resolution();
  std::chrono::nanoseconds last = clock->steady_now();
  int trailing_further = 0;
  constexpr int kSamples = 200;
  for (int i = 0; i < kSamples; ++i) {
    std::this_thread::sleep_for(std::chrono::microseconds(1000));
    // std::chrono::steady_clock is CLOCK_MONOTONIC, the precise reading of the same clock.
    const std::chrono::nanoseconds before = std::chrono::steady_clock::now().time_since_epoch();
    const std::chrono::nanoseconds steady = clock->steady_now();
    const std::chrono::nanoseconds after = std::chrono::steady_clock::now().time_since_epoch();
    REQUIRE(steady >= last);
    REQUIRE(steady <= after);
    if (before - steady > resolution) ++trailing_further;
    last = steady;
  }
  CHECK(trailing_further <= kSamples / 100);
}

TEST_CASE("A ManualClock's steady reading follows it forward and stays put when set back",
          "[clock]") {
  const apikeys::TimePoint t0 = apikeys::from_unix_millis(1'700'000'000'123);
  apikeys::ManualClock clock(t0);
  const std::chrono::nanoseconds s0 = clock.steady_now();
  CHECK(s0 == std::chrono::milliseconds(1'700'000'000'123));
  clock.advance(milliseconds(250));
  CHECK(clock.steady_now() == s0 + milliseconds(250));
  clock.advance(milliseconds(-100));  // set back: the time of day moves, steady does not
  CHECK(clock.now() == t0 + milliseconds(150));
  CHECK(clock.steady_now() == s0 + milliseconds(250));
  clock.set(t0 - std::chrono::hours(1));
  CHECK(clock.steady_now() == s0 + milliseconds(250));
  clock.set(t0 - std::chrono::hours(1) + milliseconds(40));
  CHECK(clock.steady_now() == s0 + milliseconds(290));
  // Far moves saturate rather than wrap (a wrapped reading would look like a step back).
  clock.set(apikeys::TimePoint::max());
  clock.set(t0);
  clock.set(apikeys::TimePoint::max());
  CHECK(clock.steady_now() == apikeys::TimePoint::max().time_since_epoch());
}

// A clock of the caller's that knows nothing of steady readings: its coarse reading
// stands in, so nothing about steps is told apart (and MemoryCache behaves as it did
// before steady readings existed).
TEST_CASE("A Clock without a steady reading of its own steps with coarse_now()", "[clock]") {
  class WallOnly final : public apikeys::Clock {
   public:
    [[nodiscard]] apikeys::TimePoint now() const noexcept override {
      return apikeys::from_unix_millis(ms.load());
    }
    std::atomic<std::int64_t> ms{5'000};
  };
  WallOnly clock;
  CHECK(clock.steady_now() == milliseconds(5'000));
  clock.ms = 1'000;
  CHECK(clock.steady_now() == milliseconds(1'000));
}

// A clock whose time of day and steady reading move independently: the one set back,
// or moved on while the other stands still, as across a suspend.
class TwoReadingClock final : public apikeys::Clock {
 public:
  explicit TwoReadingClock(std::int64_t day_ms) : day_(day_ms) {}
  [[nodiscard]] apikeys::TimePoint now() const noexcept override {
    return apikeys::from_unix_millis(day_.load());
  }
  [[nodiscard]] std::chrono::nanoseconds steady_now() const noexcept override {
    return milliseconds(steady_.load());
  }
  // Time passing: both move.
  void pass(milliseconds d) {
    day_ += d.count();
    steady_ += d.count();
  }
  // The time of day alone moves (set back or forward, or a machine waking from sleep).
  void step_day(milliseconds d) { day_ += d.count(); }

 private:
  std::atomic<std::int64_t> day_;
  std::atomic<std::int64_t> steady_{42};
};

// The TTL is an interval: the time of day set back (an operator, a bad NTP step) must
// not keep a verdict past it. With revision polling off, the TTL is all that bounds how
// long another process's revoke goes unseen (SECURITY.md, "Known limits").
TEST_CASE("MemoryCache: setting the clock back never stretches a TTL", "[cache]") {
  Fixture f;
  const std::string key = pk(1);
  const Digest d = digest_of(1);
  SECTION("a TTL") {
    f.fill(key, d, valid_verdict(1), milliseconds(1000));
    f.clock->advance(-std::chrono::hours(1));
    CHECK(f.cache->get(key, d).has_value());
    f.clock->advance(milliseconds(999));
    CHECK(f.cache->get(key, d).has_value());
    f.clock->advance(milliseconds(1));
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
  SECTION("a TTL cut short by the key's expiry") {
    Verdict v = valid_verdict(1);
    v.expires_at = f.clock->now() + milliseconds(300);
    f.fill(key, d, v, milliseconds(60'000));
    f.clock->set(f.clock->now() - std::chrono::hours(2));
    f.clock->advance(milliseconds(299));
    CHECK(f.cache->get(key, d).has_value());
    f.clock->advance(milliseconds(1));
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
  SECTION("set back twice, with entries put in between") {
    f.fill(key, d, valid_verdict(1), milliseconds(1000));
    f.clock->advance(-std::chrono::minutes(10));
    f.fill(pk(2), digest_of(2), valid_verdict(2), milliseconds(500));
    f.clock->advance(-std::chrono::minutes(10));
    f.clock->advance(milliseconds(499));
    CHECK(f.cache->get(key, d).has_value());
    CHECK(f.cache->get(pk(2), digest_of(2)).has_value());
    f.clock->advance(milliseconds(1));
    CHECK_FALSE(f.cache->get(pk(2), digest_of(2)).has_value());
    f.clock->advance(milliseconds(500));
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
  SECTION("set forward, the TTL ends at once") {
    f.fill(key, d, valid_verdict(1), milliseconds(1000));
    f.clock->advance(std::chrono::hours(1));
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
  SECTION("an hour passes unseen, then the clock is set back by exactly that hour") {
    f.fill(key, d, valid_verdict(1), milliseconds(1000));
    f.clock->advance(std::chrono::hours(1));
    f.clock->advance(-std::chrono::hours(1));  // the time of day reads as at the put
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
  SECTION("a step back of a millisecond") {
    f.fill(key, d, valid_verdict(1), milliseconds(1000));
    f.clock->advance(milliseconds(1000));
    f.clock->advance(milliseconds(-1));
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
}

// A precise clock whose steady reading runs 0.2 % fast against its time of day (a
// steady clock NTP does not discipline): every reading shows a fall of a few
// microseconds. The cache's time may run as much faster, not a millisecond per reading.
TEST_CASE("MemoryCache: a steady reading that drifts costs a TTL only its drift", "[cache]") {
  class DriftClock final : public apikeys::Clock {
   public:
    [[nodiscard]] apikeys::TimePoint now() const noexcept override {
      return apikeys::TimePoint(std::chrono::duration_cast<apikeys::TimePoint::duration>(
          std::chrono::microseconds(day_us.load())));
    }
    [[nodiscard]] std::chrono::nanoseconds steady_now() const noexcept override {
      return std::chrono::microseconds(steady_us.load());
    }
    std::atomic<std::int64_t> day_us{1'700'000'000'000'000};
    std::atomic<std::int64_t> steady_us{5};
  };
  auto clock = std::make_shared<DriftClock>();
  MemoryCacheOptions o;
  o.clock = clock;
  MemoryCache cache(o);
  const std::string key = pk(1);
  const Digest d = digest_of(1);
  cache.put(key, d, valid_verdict(1), milliseconds(1000), cache.fill_token(key));
  for (int ms = 1; ms <= 900; ++ms) {
    clock->day_us += 1000;
    clock->steady_us += 1002;
    REQUIRE(cache.get(key, d).has_value());  // 902 ms at most have passed
  }
  for (int ms = 901; ms <= 1000; ++ms) {
    clock->day_us += 1000;
    clock->steady_us += 1002;
    (void)cache.get(key, d);
  }
  CHECK_FALSE(cache.get(key, d).has_value());  // 1002 ms by the steady reading
}

// A clock whose time of day is set back by an hour just after a put read it: the put
// must not take the step into its start as well as into the cache's time.
TEST_CASE("MemoryCache: a step back during a put never stretches its TTL", "[cache]") {
  class StepsAfterReading final : public apikeys::Clock {
   public:
    [[nodiscard]] apikeys::TimePoint now() const noexcept override {
      const std::int64_t at = day.load();
      if (armed.exchange(false)) day -= 3'600'000;
      return apikeys::from_unix_millis(at);
    }
    [[nodiscard]] apikeys::TimePoint coarse_now() const noexcept override {
      return apikeys::from_unix_millis(day.load());
    }
    [[nodiscard]] std::chrono::nanoseconds steady_now() const noexcept override {
      return milliseconds(steady.load());
    }
    mutable std::atomic<std::int64_t> day{1'700'000'000'000};
    std::atomic<std::int64_t> steady{7};
    mutable std::atomic<bool> armed{false};
  };
  auto clock = std::make_shared<StepsAfterReading>();
  MemoryCacheOptions o;
  o.clock = clock;
  MemoryCache cache(o);
  const std::string key = pk(1);
  const Digest d = digest_of(1);
  clock->armed = true;
  cache.put(key, d, valid_verdict(1), milliseconds(1000), cache.fill_token(key));
  REQUIRE_FALSE(clock->armed.load());  // the put read the full time, and the step came
  CHECK(cache.get(key, d).has_value());
  clock->day += 1'000;
  clock->steady += 1'000;
  CHECK_FALSE(cache.get(key, d).has_value());
}

// A monotonic clock stands still while the machine sleeps (CLOCK_MONOTONIC does); the
// time of day does not. An hour asleep is an hour of the TTL gone.
TEST_CASE("MemoryCache: time spent asleep counts against a TTL", "[cache]") {
  auto clock = std::make_shared<TwoReadingClock>(1'700'000'000'000);
  MemoryCacheOptions o;
  o.clock = clock;
  MemoryCache cache(o);
  const std::string key = pk(1);
  const Digest d = digest_of(1);
  cache.put(key, d, valid_verdict(1), milliseconds(120'000), cache.fill_token(key));
  clock->pass(milliseconds(10'000));
  CHECK(cache.get(key, d).has_value());
  clock->step_day(std::chrono::hours(1));  // asleep: the steady reading did not move
  CHECK_FALSE(cache.get(key, d).has_value());
  // And a step back after it is told apart again: a TTL from then on is whole.
  cache.put(key, d, valid_verdict(1), milliseconds(1'000), cache.fill_token(key));
  clock->step_day(-std::chrono::hours(3));
  clock->pass(milliseconds(999));
  CHECK(cache.get(key, d).has_value());
  clock->pass(milliseconds(1));
  CHECK_FALSE(cache.get(key, d).has_value());
}

TEST_CASE("MemoryCache: a TTL of zero stores nothing", "[cache]") {
  Fixture f;
  const std::string key = pk(1);
  const Digest d = digest_of(1);
  f.fill(key, d, valid_verdict(1), milliseconds(0));
  CHECK_FALSE(f.cache->get(key, d).has_value());

  SECTION("and does not displace what was there for another secret") {
    const Digest d2 = digest_of(2);
    f.fill(key, d2, valid_verdict(2), milliseconds(1000));
    f.fill(key, d, negative(ValidationCode::wrong_secret), milliseconds(0));
    const auto v = f.cache->get(key, d2);
    REQUIRE(v.has_value());
    CHECK(same(*v, valid_verdict(2)));
  }
  SECTION("a negative TTL stores nothing either") {
    f.fill(key, d, valid_verdict(1), milliseconds(-5));
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
}

TEST_CASE("MemoryCache: a verdict answers only the same presented digest", "[cache]") {
  Fixture f;
  const std::string key = pk(1);
  const Digest d = digest_of(1);
  f.fill(key, d, valid_verdict(1), milliseconds(60'000));

  SECTION("a different digest misses") { CHECK_FALSE(f.cache->get(key, digest_of(2)).has_value()); }
  SECTION("the full 32 bytes are compared, first and last byte included") {
    for (std::size_t i : {std::size_t{0}, std::size_t{8}, std::size_t{16}, std::size_t{31}}) {
      Digest other = d;
      other.bytes[i] ^= 0x01;
      CHECK_FALSE(f.cache->get(key, other).has_value());
    }
  }
  SECTION("a negative verdict for one secret never answers another") {
    const std::string key2 = pk(2);
    f.fill(key2, digest_of(20), negative(ValidationCode::wrong_secret), milliseconds(60'000));
    const auto same_secret = f.cache->get(key2, digest_of(20));
    REQUIRE(same_secret.has_value());
    CHECK(same_secret->code == ValidationCode::wrong_secret);
    CHECK_FALSE(f.cache->get(key2, digest_of(21)).has_value());
  }
}

TEST_CASE("MemoryCache: negative verdicts for another secret do not displace a valid one",
          "[cache]") {
  Fixture f;
  const std::string key = pk(1);
  const Digest good = digest_of(1);
  f.fill(key, good, valid_verdict(1), milliseconds(60'000));

  // An attacker who knows the public key guesses secrets.
  for (std::uint32_t guess = 100; guess < 110; ++guess) {
    f.fill(key, digest_of(guess), negative(ValidationCode::wrong_secret), milliseconds(300'000));
    // The guess must never be answered as valid.
    const auto g = f.cache->get(key, digest_of(guess));
    if (g.has_value()) CHECK(g->code == ValidationCode::wrong_secret);
  }
  f.fill(key, digest_of(200), negative(ValidationCode::not_found), milliseconds(300'000));

  const auto v = f.cache->get(key, good);
  REQUIRE(v.has_value());
  CHECK(same(*v, valid_verdict(1)));

  SECTION("a valid verdict for another secret never answers the guessed one as valid") {
    const auto g = f.cache->get(key, digest_of(200));
    if (g.has_value()) CHECK(g->code != ValidationCode::valid);
  }
  SECTION("after the valid verdict expires, the slot is free again") {
    f.clock->advance(milliseconds(60'000));
    CHECK_FALSE(f.cache->get(key, good).has_value());
    f.fill(key, digest_of(300), negative(ValidationCode::wrong_secret), milliseconds(1000));
    const auto g = f.cache->get(key, digest_of(300));
    REQUIRE(g.has_value());
    CHECK(g->code == ValidationCode::wrong_secret);
    CHECK_FALSE(f.cache->get(key, good).has_value());
  }
}

TEST_CASE("MemoryCache: a guess never displaces the owner's verdict, whatever its state",
          "[cache]") {
  for (const ValidationCode owner : {ValidationCode::valid, ValidationCode::expired,
                                     ValidationCode::revoked, ValidationCode::disabled}) {
    CAPTURE(apikeys::to_string(owner));
    Fixture f;
    const std::string key = pk(1);
    const Digest good = digest_of(1);
    f.fill(key, good, owner == ValidationCode::valid ? valid_verdict(1) : negative(owner),
           milliseconds(60'000));
    // The guesses are not cached, for every state alike: a guess's second try is no
    // cheaper than its first, whichever state the owner's verdict holds.
    for (const ValidationCode guess : {ValidationCode::wrong_secret, ValidationCode::not_found}) {
      f.fill(key, digest_of(100), negative(guess), milliseconds(300'000));
      CHECK_FALSE(f.cache->get(key, digest_of(100)).has_value());
    }
    const auto v = f.cache->get(key, good);
    REQUIRE(v.has_value());
    CHECK(v->code == owner);
    // A verdict reached with a secret does replace it (a key rotated, a state changed).
    f.fill(key, digest_of(2), negative(ValidationCode::revoked), milliseconds(60'000));
    CHECK(f.cache->get(key, digest_of(2)).has_value());
    CHECK_FALSE(f.cache->get(key, good).has_value());
  }
}

TEST_CASE("MemoryCache: a valid verdict for another digest never answers an old one", "[cache]") {
  Fixture f;
  const std::string key = pk(1);
  f.fill(key, digest_of(1), negative(ValidationCode::wrong_secret), milliseconds(60'000));
  f.fill(key, digest_of(2), valid_verdict(1), milliseconds(60'000));
  const auto old = f.cache->get(key, digest_of(1));
  if (old.has_value()) CHECK(old->code == ValidationCode::wrong_secret);
  const auto now = f.cache->get(key, digest_of(2));
  REQUIRE(now.has_value());
  CHECK(now->code == ValidationCode::valid);
}

TEST_CASE("MemoryCache: erase removes every verdict for the public key", "[cache]") {
  Fixture f;
  const std::string key = pk(1);
  const std::string other = pk(2);
  f.fill(key, digest_of(1), valid_verdict(1), milliseconds(60'000));
  f.fill(other, digest_of(2), valid_verdict(2), milliseconds(60'000));
  REQUIRE(f.cache->get(key, digest_of(1)).has_value());

  f.cache->erase(key);
  CHECK_FALSE(f.cache->get(key, digest_of(1)).has_value());
  const auto o = f.cache->get(other, digest_of(2));
  REQUIRE(o.has_value());
  CHECK(same(*o, valid_verdict(2)));

  SECTION("erasing an absent key is harmless") {
    REQUIRE_NOTHROW(f.cache->erase(pk(999)));
    REQUIRE_NOTHROW(f.cache->erase(key));
    CHECK(f.cache->get(other, digest_of(2)).has_value());
  }
  SECTION("clear removes everything") {
    f.cache->clear();
    CHECK_FALSE(f.cache->get(other, digest_of(2)).has_value());
    CHECK(f.cache->size() == 0);
  }
}

TEST_CASE("MemoryCache: fill tokens close the revoke/fill race", "[cache]") {
  Fixture f;
  const std::string key = pk(1);
  const Digest d = digest_of(1);

  SECTION("a token taken before erase() is dropped at put()") {
    // The validation read the store (key active) ...
    const std::uint64_t token = f.cache->fill_token(key);
    // ... then a revoke committed and erased the key ...
    f.cache->erase(key);
    // ... then the stale "valid" verdict arrives: it must not land.
    f.cache->put(key, d, valid_verdict(1), milliseconds(60'000), token);
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
  SECTION("a token taken before erase() is dropped even if an entry existed") {
    f.fill(key, d, valid_verdict(1), milliseconds(60'000));
    const std::uint64_t token = f.cache->fill_token(key);
    f.cache->erase(key);
    f.cache->put(key, d, valid_verdict(1), milliseconds(60'000), token);
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
  SECTION("a token taken before clear() is dropped at put()") {
    const std::uint64_t token = f.cache->fill_token(key);
    f.cache->clear();
    f.cache->put(key, d, valid_verdict(1), milliseconds(60'000), token);
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
  SECTION("several outstanding tokens are all invalidated by one erase") {
    const std::uint64_t t1 = f.cache->fill_token(key);
    const std::uint64_t t2 = f.cache->fill_token(key);
    f.cache->erase(key);
    f.cache->put(key, d, valid_verdict(1), milliseconds(60'000), t1);
    f.cache->put(key, digest_of(2), valid_verdict(1), milliseconds(60'000), t2);
    CHECK_FALSE(f.cache->get(key, d).has_value());
    CHECK_FALSE(f.cache->get(key, digest_of(2)).has_value());
  }
  SECTION("a token taken after erase() works") {
    f.cache->erase(key);
    const std::uint64_t token = f.cache->fill_token(key);
    f.cache->put(key, d, valid_verdict(1), milliseconds(60'000), token);
    const auto v = f.cache->get(key, d);
    REQUIRE(v.has_value());
    CHECK(same(*v, valid_verdict(1)));
  }
  SECTION("a token taken after clear() works") {
    f.cache->clear();
    const std::uint64_t token = f.cache->fill_token(key);
    f.cache->put(key, d, valid_verdict(1), milliseconds(60'000), token);
    CHECK(f.cache->get(key, d).has_value());
  }
  SECTION("an erase long after the token was taken still invalidates it") {
    const std::uint64_t token = f.cache->fill_token(key);
    // Many unrelated fills and erases in between must not wrap or reset anything.
    for (std::size_t i = 2; i < 2'000; ++i) {
      f.fill(pk(i), digest_of(static_cast<std::uint32_t>(i)), valid_verdict(2),
             milliseconds(60'000));
      f.cache->erase(pk(i));
    }
    f.cache->erase(key);
    f.cache->put(key, d, valid_verdict(1), milliseconds(60'000), token);
    CHECK_FALSE(f.cache->get(key, d).has_value());
  }
  SECTION("a dropped put does not remove what a later fill stored") {
    const std::uint64_t stale = f.cache->fill_token(key);
    f.cache->erase(key);
    f.fill(key, d, negative(ValidationCode::revoked), milliseconds(60'000));
    f.cache->put(key, d, valid_verdict(1), milliseconds(60'000), stale);
    const auto v = f.cache->get(key, d);
    REQUIRE(v.has_value());
    CHECK(v->code == ValidationCode::revoked);
  }
}

TEST_CASE("MemoryCache: size stays within capacity", "[cache]") {
  SECTION("capacity 1000, 64 shards, 10,000 public keys") {
    Fixture f(1'000, 64);
    for (std::size_t i = 0; i < 10'000; ++i) {
      f.fill(pk(i), digest_of(static_cast<std::uint32_t>(i)), valid_verdict(1),
             milliseconds(60'000));
      REQUIRE(f.cache->size() <= 1'000 + 64);  // Per-shard rounding allowed.
    }
    CHECK(f.cache->size() > 0);
    // The newest entry was just inserted: eviction makes room for it, never drops it.
    CHECK(f.cache->get(pk(9'999), digest_of(9'999)).has_value());
  }
  SECTION("one full shard evicts exactly one other entry per insert") {
    Fixture f(10, 1);
    for (std::size_t i = 0; i < 10; ++i) {
      f.fill(pk(i), digest_of(static_cast<std::uint32_t>(i)), valid_verdict(1),
             milliseconds(60'000));
    }
    CHECK(f.cache->size() == 10);
    for (std::size_t i = 0; i < 10; ++i) {
      CHECK(f.cache->get(pk(i), digest_of(static_cast<std::uint32_t>(i))).has_value());
    }
    f.fill(pk(10), digest_of(10), valid_verdict(1), milliseconds(60'000));
    CHECK(f.cache->size() == 10);
    CHECK(f.cache->get(pk(10), digest_of(10)).has_value());
    std::size_t present = 0;
    for (std::size_t i = 0; i < 10; ++i) {
      if (f.cache->get(pk(i), digest_of(static_cast<std::uint32_t>(i))).has_value()) ++present;
    }
    CHECK(present == 9);
  }
  SECTION("replacing the verdict of a held key evicts nothing") {
    Fixture f(10, 1);
    for (std::size_t i = 0; i < 10; ++i) {
      f.fill(pk(i), digest_of(static_cast<std::uint32_t>(i)), valid_verdict(1),
             milliseconds(60'000));
    }
    f.fill(pk(3), digest_of(3), negative(ValidationCode::revoked), milliseconds(60'000));
    CHECK(f.cache->size() == 10);
    for (std::size_t i = 0; i < 10; ++i) {
      CHECK(f.cache->get(pk(i), digest_of(static_cast<std::uint32_t>(i))).has_value());
    }
  }
  SECTION("many secrets for one public key take one slot") {
    Fixture f(10, 1);
    for (std::uint32_t g = 0; g < 1'000; ++g) {
      f.fill(pk(1), digest_of(g), negative(ValidationCode::wrong_secret), milliseconds(60'000));
    }
    CHECK(f.cache->size() <= 1);
  }
}

// A valid verdict with `metadata_bytes` of metadata and has_policy set.
Verdict with_metadata(std::uint8_t n, std::size_t metadata_bytes) {
  Verdict v = valid_verdict(n);
  v.metadata = apikeys_test::cache_contract::metadata_of(metadata_bytes);
  v.has_policy = true;
  return v;
}

TEST_CASE("MemoryCache: public keys one character apart never share an entry", "[cache]") {
  // Entries are found by a hash of the public key: every one-character change, at every
  // position, is another key with an entry of its own.
  Fixture f(100'000);
  const std::string base = "pk_" + std::string(32, 'a');
  const std::string alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_";
  std::vector<std::string> keys{base};
  for (std::size_t i = 0; i < base.size(); ++i) {
    for (const char c : alphabet) {
      if (c == base[i]) continue;
      std::string k = base;
      k[i] = c;
      keys.push_back(k);
    }
  }
  const Digest d = digest_of(7);  // the same secret for every key: only the key differs
  for (std::size_t i = 0; i < keys.size(); ++i) {
    f.fill(keys[i], d, valid_verdict(static_cast<std::uint8_t>(i % 251)), milliseconds(60'000));
  }
  REQUIRE(f.cache->size() == keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const auto got = f.cache->get(keys[i], d);
    REQUIRE(got.has_value());
    CHECK(same(*got, valid_verdict(static_cast<std::uint8_t>(i % 251))));
  }
  f.cache->erase(keys[1]);
  CHECK_FALSE(f.cache->get(keys[1], d).has_value());
  CHECK(f.cache->get(keys[0], d).has_value());
  CHECK(f.cache->get(keys[2], d).has_value());
}

TEST_CASE("MemoryCache: a verdict keeps its expiry, with and without a policy block", "[cache]") {
  // The expiry and the policy block share the bytes after the node: each must be read
  // from its own place, whichever of them a verdict has.
  Fixture f;
  const auto expiry = f.clock->now() + std::chrono::hours(2);
  Verdict plain = valid_verdict(1);
  plain.expires_at = expiry;
  Verdict full = valid_verdict(2);
  full.expires_at = expiry;
  full.scopes = {"read", "write"};
  full.metadata = R"({"team":"a"})";
  full.has_policy = true;
  full.has_admission = true;
  full.has_credits = true;
  full.rate_limits.push_back(apikeys::RateLimit{"per-second", 10, milliseconds(1000), 10});
  full.lineage_id = valid_verdict(9).key_id;
  f.fill(pk(1), digest_of(1), plain, milliseconds(60'000));
  f.fill(pk(2), digest_of(2), full, milliseconds(60'000));
  f.fill(pk(3), digest_of(3), valid_verdict(3), milliseconds(60'000));

  const auto a = f.cache->get(pk(1), digest_of(1));
  REQUIRE(a.has_value());
  REQUIRE(a->expires_at.has_value());
  CHECK(*a->expires_at == apikeys::from_unix_millis(apikeys::to_unix_millis(expiry)));
  CHECK(a->scopes.empty());
  CHECK(a->metadata.empty());
  CHECK(a->lineage_id.is_nil());

  const auto b = f.cache->get(pk(2), digest_of(2));
  REQUIRE(b.has_value());
  REQUIRE(b->expires_at.has_value());
  CHECK(*b->expires_at == *a->expires_at);
  CHECK(b->scopes == full.scopes);
  CHECK(b->metadata == full.metadata);
  CHECK(b->has_policy);
  CHECK(b->has_admission);
  CHECK(b->has_credits);
  REQUIRE(b->rate_limits.size() == 1);
  CHECK(b->rate_limits[0].name == "per-second");
  CHECK(b->rate_limits[0].limit == 10);
  CHECK(b->lineage_id == full.lineage_id);

  // A verdict read into one that had an expiry loses it when the key has none.
  Verdict reused = *b;
  REQUIRE(f.cache->get_into(pk(3), digest_of(3), reused));
  CHECK_FALSE(reused.expires_at.has_value());
  CHECK(reused.scopes.empty());
  CHECK_FALSE(reused.has_policy);
}

TEST_CASE("MemoryCache: bytes per entry are as documented", "[cache]") {
  Fixture f;
  f.fill(pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
  CHECK(f.cache->bytes() == MemoryCache::kEntryBytes);
  f.fill(pk(2), digest_of(2), with_metadata(2, 1024), milliseconds(60'000));
  CHECK(f.cache->bytes() == 2 * MemoryCache::kEntryBytes + 20 + 1024);

  Verdict scoped = valid_verdict(3);
  scoped.scopes = {"a.b", "orders.*"};  // 20 + 2 x 4 + 3 + 8 = 39 bytes with no metadata
  scoped.has_policy = true;
  f.fill(pk(3), digest_of(3), scoped, milliseconds(60'000));
  CHECK(f.cache->bytes() == 3 * MemoryCache::kEntryBytes + 20 + 1024 + 39);

  SECTION("a key's expiry takes 8 bytes, with or without a block") {
    Verdict expiring = valid_verdict(4);
    expiring.expires_at = f.clock->now() + std::chrono::hours(1);
    f.fill(pk(4), digest_of(4), expiring, milliseconds(60'000));
    CHECK(f.cache->bytes() == 4 * MemoryCache::kEntryBytes + 20 + 1024 + 39 + 8);
    scoped.expires_at = expiring.expires_at;
    f.fill(pk(3), digest_of(3), scoped, milliseconds(60'000));
    CHECK(f.cache->bytes() == 4 * MemoryCache::kEntryBytes + 20 + 1024 + 39 + 8 + 8);
  }
  SECTION("a replaced verdict counts for what it now holds") {
    f.fill(pk(2), digest_of(2), valid_verdict(2), milliseconds(60'000));
    CHECK(f.cache->bytes() == 3 * MemoryCache::kEntryBytes + 39);
  }
  SECTION("erase, expiry and clear give the bytes back") {
    f.cache->erase(pk(3));
    CHECK(f.cache->bytes() == 2 * MemoryCache::kEntryBytes + 20 + 1024);
    f.clock->advance(milliseconds(60'000));
    CHECK_FALSE(f.cache->get(pk(2), digest_of(2)).has_value());  // an expired entry goes
    CHECK(f.cache->bytes() == MemoryCache::kEntryBytes);
    f.cache->clear();
    CHECK(f.cache->bytes() == 0);
  }
}

TEST_CASE("MemoryCache: the bytes held stay within max_bytes", "[cache]") {
  constexpr std::size_t kEntry = MemoryCache::kEntryBytes + 20 + 1024;
  SECTION("1 KiB-metadata verdicts, 256 KiB, default shards (16 of 16 KiB)") {
    constexpr std::size_t kMax = std::size_t{256} << 10;
    Fixture f(1'000'000, 64, kMax);
    for (std::size_t i = 0; i < 2'000; ++i) {
      f.fill(pk(i), digest_of(static_cast<std::uint32_t>(i)),
             with_metadata(static_cast<std::uint8_t>(i % 251), 1024), milliseconds(60'000));
      REQUIRE(f.cache->bytes() <= kMax);
      REQUIRE(f.cache->bytes() == f.cache->size() * kEntry);
      // The entry just stored is never the one evicted.
      REQUIRE(f.cache->get(pk(i), digest_of(static_cast<std::uint32_t>(i))).has_value());
    }
    // Evictions happen only where a shard is full: most of the budget stays in use.
    CHECK(f.cache->size() > kMax / kEntry / 2);
  }
  SECTION("one shard holds exactly as many as fit") {
    Fixture f(1'000'000, 1, 10 * kEntry);
    for (std::size_t i = 0; i < 100; ++i) {
      f.fill(pk(i), digest_of(static_cast<std::uint32_t>(i)), with_metadata(1, 1024),
             milliseconds(60'000));
    }
    CHECK(f.cache->size() == 10);
    CHECK(f.cache->bytes() == 10 * kEntry);
  }
  SECTION("a bigger verdict for a held key evicts others, never the key itself") {
    Fixture f(1'000'000, 1, 10 * kEntry);
    for (std::size_t i = 0; i < 10; ++i) {
      f.fill(pk(i), digest_of(static_cast<std::uint32_t>(i)), with_metadata(1, 1024),
             milliseconds(60'000));
    }
    REQUIRE(f.cache->size() == 10);
    f.fill(pk(4), digest_of(4), with_metadata(4, 4096), milliseconds(60'000));
    CHECK(f.cache->bytes() <= 10 * kEntry);
    CHECK(f.cache->size() < 10);
    const auto v = f.cache->get(pk(4), digest_of(4));
    REQUIRE(v.has_value());
    CHECK(v->metadata == with_metadata(4, 4096).metadata);
  }
  SECTION("verdicts without scopes or metadata, under the entry bound") {
    Fixture f(1'000'000, 1, 100 * MemoryCache::kEntryBytes);
    for (std::size_t i = 0; i < 1'000; ++i) {
      f.fill(pk(i), digest_of(static_cast<std::uint32_t>(i)), valid_verdict(1),
             milliseconds(60'000));
    }
    CHECK(f.cache->size() == 100);
  }
  SECTION("max_bytes 0 holds one entry") {
    Fixture f(1'000, 64, 0);
    f.fill(pk(1), digest_of(1), with_metadata(1, 1024), milliseconds(60'000));
    f.fill(pk(2), digest_of(2), with_metadata(2, 1024), milliseconds(60'000));
    f.fill(pk(3), digest_of(3), valid_verdict(3), milliseconds(60'000));
    CHECK(f.cache->size() == 1);
    CHECK(f.cache->get(pk(3), digest_of(3)).has_value());
    CHECK(f.cache->bytes() == MemoryCache::kEntryBytes);
  }
  SECTION("an entry larger than its shard's share is held alone") {
    Fixture f(1'000, 1, 2 * MemoryCache::kEntryBytes);
    f.fill(pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
    f.fill(pk(2), digest_of(2), with_metadata(2, 4096), milliseconds(60'000));
    CHECK(f.cache->size() == 1);
    const auto v = f.cache->get(pk(2), digest_of(2));
    REQUIRE(v.has_value());
    CHECK(v->metadata.size() == 4096);
  }
}

TEST_CASE("MemoryCache: a capacity near SIZE_MAX is clamped, never wrapped", "[cache]") {
  constexpr std::size_t kMax = std::numeric_limits<std::size_t>::max();
  constexpr std::size_t kKeys = 5'000;
  // SIZE_MAX - 62 is where capacity + 63 (64 shards) wraps to zero.
  for (const std::size_t capacity :
       {kMax, kMax - 1, kMax - 62, kMax / 2 + 1, MemoryCacheOptions::kMaxCapacity,
        MemoryCacheOptions::kMaxCapacity + 1}) {
    for (const std::size_t shards : {std::size_t{64}, std::size_t{1}, kMax}) {
      INFO("capacity " << capacity << ", shards " << shards);
      Fixture f(capacity, shards);
      for (std::size_t i = 0; i < kKeys; ++i) {
        f.fill(pk(i), digest_of(static_cast<std::uint32_t>(i)), valid_verdict(1),
               milliseconds(60'000));
      }
      // Nothing evicted: every key is still there.
      CHECK(f.cache->size() == kKeys);
      std::size_t held = 0;
      for (std::size_t i = 0; i < kKeys; ++i) {
        if (f.cache->get(pk(i), digest_of(static_cast<std::uint32_t>(i))).has_value()) ++held;
      }
      CHECK(held == kKeys);
    }
  }
  SECTION("capacity 0 is taken as 1") {
    Fixture f(0, 64);
    f.fill(pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
    f.fill(pk(2), digest_of(2), valid_verdict(1), milliseconds(60'000));
    CHECK(f.cache->size() == 1);
    CHECK(f.cache->get(pk(2), digest_of(2)).has_value());
  }
}

TEST_CASE("MemoryCache: public keys beyond kMaxPublicKeyLength are never cached", "[cache]") {
  Fixture f;
  const std::string longest(MemoryCache::kMaxPublicKeyLength, 'L');
  const std::string too_long(MemoryCache::kMaxPublicKeyLength + 1, 'L');
  f.fill(longest, digest_of(1), valid_verdict(1), milliseconds(60'000));
  CHECK(f.cache->get(longest, digest_of(1)).has_value());
  f.fill(too_long, digest_of(1), valid_verdict(1), milliseconds(60'000));
  CHECK_FALSE(f.cache->get(too_long, digest_of(1)).has_value());
  REQUIRE_NOTHROW(f.cache->erase(too_long));
  // The longer key is not confused with its prefix of the longest length.
  CHECK(f.cache->get(longest, digest_of(1)).has_value());
  CHECK(f.cache->size() == 1);
}

TEST_CASE("MemoryCache: default options and the system clock", "[cache]") {
  MemoryCache cache;  // capacity 1,000,000, 64 shards, system clock
  const std::string key = pk(1);
  const std::uint64_t token = cache.fill_token(key);
  cache.put(key, digest_of(1), valid_verdict(1), std::chrono::hours(1), token);
  const auto v = cache.get(key, digest_of(1));
  REQUIRE(v.has_value());
  CHECK(same(*v, valid_verdict(1)));
  CHECK(cache.size() == 1);
}

TEST_CASE("MemoryCache: concurrent get/put/erase from 4 threads", "[cache][threads]") {
  Fixture f(256, 8);
  constexpr std::size_t kKeys = 512;
  constexpr int kRounds = 20'000;
  std::atomic<std::size_t> wrong{0};
  std::atomic<std::size_t> hits{0};
  std::atomic<std::size_t> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t]() {
      try {
        std::uint32_t x = 12345u + static_cast<std::uint32_t>(t) * 7919u;
        for (int r = 0; r < kRounds; ++r) {
          x = x * 1664525u + 1013904223u;  // LCG: cheap, deterministic per thread.
          const std::size_t i = (x >> 8) % kKeys;
          const std::string key = pk(i);
          // Each key's verdict is a function of the key, so any hit can be checked.
          const Digest d = digest_of(static_cast<std::uint32_t>(i));
          const Verdict expected = valid_verdict(static_cast<std::uint8_t>(i % 251));
          switch ((x >> 4) % 8) {
            case 0: f.cache->erase(key); break;
            case 1:
              if (r % 1000 == 0) f.cache->clear();
              break;
            case 2:
            case 3: f.fill(key, d, expected, milliseconds(60'000)); break;
            default: {
              const auto v = f.cache->get(key, d);
              if (v.has_value()) {
                ++hits;
                if (!same(*v, expected)) ++wrong;
              }
              // A digest never put must never hit.
              if (f.cache->get(key, digest_of(static_cast<std::uint32_t>(i) + 100'000u))
                      .has_value()) {
                ++wrong;
              }
              break;
            }
          }
        }
      } catch (...) {
        ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures.load() == 0);
  CHECK(wrong.load() == 0);
  CHECK(hits.load() > 0);
  CHECK(f.cache->size() <= 256 + 8);
}

// Hits read the table without a lock (src/epoch.hpp). Readers run against one writer that
// grows the table from empty, replaces verdicts (with scopes and metadata, so a hit
// reads the node's tail), erases and clears: no hit answers another key's verdict or
// a digest never stored, no read touches freed memory (the sanitizer builds run this),
// and once the writer's erase() has returned, no get() that starts after it answers.
TEST_CASE("MemoryCache: lock-free hits while the table grows, is rewritten and cleared",
          "[cache][threads]") {
  constexpr std::size_t kKeys = 2'048;
  constexpr int kReaders = 3;
  Fixture f(kKeys, 4);
  std::vector<std::string> keys;
  for (std::size_t i = 0; i < kKeys; ++i) keys.push_back(pk(i));
  const auto verdict_of = [](std::size_t i, std::uint32_t round) {
    Verdict v = valid_verdict(static_cast<std::uint8_t>(i % 251));
    v.has_policy = true;
    v.scopes = {"read:" + std::to_string(i), "round:" + std::to_string(round)};
    v.metadata = std::string(64 + i % 64, static_cast<char>('a' + i % 26));
    return v;
  };
  // The round a key's verdict says it was written in; each key's verdicts differ only there.
  const auto round_of = [](const Verdict& v) -> long {
    if (v.scopes.size() != 2 || v.scopes[1].rfind("round:", 0) != 0) return -1;
    return std::stol(v.scopes[1].substr(6));
  };
  // erased[i]: the writer's round at which it last erased key i (or cleared), published
  // after erase() returned; a get that starts after reading it answers no earlier round.
  std::vector<std::atomic<long>> erased(kKeys);
  for (auto& e : erased) e.store(-1);
  std::atomic<bool> done{false};
  std::atomic<long> wrong{0};
  std::atomic<long> stale{0};
  std::atomic<long> hits{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < kReaders; ++t) {
    readers.emplace_back([&, t] {
      std::uint32_t x = 777u + static_cast<std::uint32_t>(t) * 104'729u;
      Verdict out;
      while (!done.load()) {
        x = x * 1664525u + 1013904223u;
        const std::size_t i = (x >> 8) % kKeys;
        const long floor = erased[i].load();
        f.cache->prefetch(keys[i]);  // beside buckets and nodes being retired
        if (f.cache->get_into(keys[i], digest_of(static_cast<std::uint32_t>(i)), out)) {
          ++hits;
          const Verdict expected = verdict_of(i, 0);
          if (!same(out, expected) || out.scopes.empty() || out.scopes[0] != expected.scopes[0] ||
              out.metadata != expected.metadata) {
            ++wrong;
          } else if (round_of(out) < floor) {
            ++stale;
          }
        }
        if (f.cache->get_into(keys[i], digest_of(static_cast<std::uint32_t>(i) + 100'000u), out)) {
          ++wrong;
        }
      }
    });
  }
  for (std::uint32_t round = 1; round <= 60; ++round) {
    if (round % 20 == 0) {
      f.cache->clear();  // a clear() erases every key
      for (auto& e : erased) e.store(static_cast<long>(round));
    }
    for (std::size_t i = 0; i < kKeys; ++i) {
      if ((i + round) % 7 == 0) {
        f.cache->erase(keys[i]);
        erased[i].store(static_cast<long>(round));
      } else {
        f.fill(keys[i], digest_of(static_cast<std::uint32_t>(i)), verdict_of(i, round),
               milliseconds(60'000));
      }
    }
  }
  done = true;
  for (auto& th : readers) th.join();
  CHECK(wrong.load() == 0);
  CHECK(stale.load() == 0);
  CHECK(hits.load() > 0);
  CHECK(f.cache->size() <= kKeys + 4);
}

TEST_CASE("MemoryCache: prefetch() changes nothing", "[cache]") {
  Fixture f(16, 4);
  const std::string too_long(MemoryCache::kMaxPublicKeyLength + 1, 'a');
  // On an empty cache, on a key it does not hold and on one it never caches.
  f.cache->prefetch(pk(1));
  f.cache->prefetch(too_long);
  f.cache->prefetch("");
  CHECK(f.cache->size() == 0);
  f.fill(pk(1), digest_of(1), valid_verdict(1), milliseconds(60'000));
  const std::size_t bytes = f.cache->bytes();
  for (int i = 0; i < 3; ++i) {
    f.cache->prefetch(pk(1));
    f.cache->prefetch(pk(2));
  }
  CHECK(f.cache->size() == 1);
  CHECK(f.cache->bytes() == bytes);
  Verdict out;
  CHECK(f.cache->get_into(pk(1), digest_of(1), out));
  CHECK(same(out, valid_verdict(1)));
  CHECK_FALSE(f.cache->get_into(pk(2), digest_of(2), out));
}

// The shared Cache contract (cache_contract.hpp); RedisCache runs it too, in the servers
// suite.
TEST_CASE("MemoryCache satisfies the Cache contract", "[cache][contract]") {
  apikeys_test::run_cache_contract([] { return std::make_shared<MemoryCache>(); });
}

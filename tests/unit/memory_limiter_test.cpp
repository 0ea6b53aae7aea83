// MemoryLimiter on its own: exact admission from many threads (rate limits and credits,
// direct and leased), leases returned or dropped (also when the balance or its refill
// changes mid-request), the table's capacity and reuse of states at rest, and no
// allocation per call once warm.
#include "catch.hpp"

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "alloc_probe.hpp"
#include "apikeys/apikeys.hpp"
#include "apikeys/memory_limiter.hpp"
#include "apikeys/sqlite_store.hpp"
#include "store_doubles.hpp"
#include "temp_dir.hpp"

namespace {

using apikeys::Admission;
using apikeys::AdmissionOutcome;
using apikeys::AdmissionRequest;
using apikeys::MemoryLimiter;
using apikeys::MemoryLimiterOptions;
using apikeys::RateLimit;
using apikeys::TimePoint;
using apikeys::Uuid;
using namespace std::chrono_literals;

const Uuid kAccount = *Uuid::parse("6f1c2b9e-1d3a-4c5b-8e7f-0a1b2c3d4e5f");
const TimePoint kStart = apikeys::from_unix_millis(1'767'225'600'000);  // 2026-01-01T00:00Z

RateLimit limit(const char* name, std::uint64_t n, std::chrono::milliseconds period,
                std::uint64_t burst = 0) {
  RateLimit l;
  l.name = name;
  l.limit = n;
  l.period = period;
  l.burst = burst;
  return l;
}

// A lineage id drawn from `rng` (the limiter hashes it; any 16 bytes do).
Uuid lineage(std::mt19937_64& rng) {
  std::array<std::uint8_t, 16> b{};
  for (auto& x : b) x = static_cast<std::uint8_t>(rng());
  return Uuid(b);
}

AdmissionRequest request(const Uuid& id, const std::vector<RateLimit>& limits, std::uint64_t cost,
                         TimePoint now, bool credits = false) {
  AdmissionRequest r;
  r.lineage_id = id;
  r.key_id = id;
  r.limits = limits.data();
  r.limit_count = limits.size();
  r.cost = cost;
  r.now = now;
  r.charge_credits = credits;
  return r;
}

// A MemoryStore holding one key with `balance` credits (its lineage is its key id).
struct CreditFixture {
  std::shared_ptr<apikeys::MemoryStore> store = std::make_shared<apikeys::MemoryStore>();
  std::unique_ptr<apikeys::KeyManager> manager;
  Uuid key;

  explicit CreditFixture(std::uint64_t balance,
                         std::optional<apikeys::CreditRefill> refill = std::nullopt) {
    apikeys::KeyManagerOptions o;
    o.validation.clock = std::make_shared<apikeys::ManualClock>(kStart);
    o.validation.record_last_use = false;
    manager =
        std::make_unique<apikeys::KeyManager>(store,
                                              std::make_shared<apikeys::HmacSha256Hasher>(
                                                  std::string("0123456789abcdefghijklmnopqrstuv")),
                                              std::move(o));
    apikeys::CreateRequest req("metered");
    apikeys::Credits c;
    c.remaining = balance;
    c.refill = refill;
    req.credits = c;
    key = manager->create(kAccount, req).info.key_id;
  }
  std::uint64_t balance() const { return manager->get(kAccount, key).credits->remaining; }
};

// Validation with a MemoryCache and `limiter` over a ManualClock, and no background
// thread that could allocate while a test counts or fails allocations: last uses are
// noted (on the caller's thread) but written only at destruction.
apikeys::KeyManagerOptions quiet_options(std::shared_ptr<apikeys::Limiter> limiter) {
  apikeys::KeyManagerOptions o;
  o.validation.cache = std::make_shared<apikeys::MemoryCache>();
  o.validation.limiter = std::move(limiter);
  o.validation.clock = std::make_shared<apikeys::ManualClock>(kStart);
  o.validation.flush_interval = std::chrono::hours(1);
  o.validation.revision_poll_interval = 0ms;
  return o;
}

}  // namespace

TEST_CASE("MemoryLimiter: a burst from many threads at a frozen clock admits exactly B",
          "[admission][memory_limiter]") {
  MemoryLimiter limiter(nullptr);
  const std::vector<RateLimit> limits = {limit("a", 1000, 86'400'000ms, 500)};
  const Uuid id = *Uuid::parse("11111111-2222-4333-8444-555555555555");
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        const Admission a = limiter.admit(request(id, limits, 1, kStart));
        if (a.outcome == AdmissionOutcome::admitted) admitted.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(admitted.load() == 500);
  CHECK(limiter.states() == 1);
}

TEST_CASE("MemoryLimiter: credits from many threads admit exactly the balance",
          "[admission][memory_limiter]") {
  for (const std::uint64_t lease : {std::uint64_t{0}, std::uint64_t{7}}) {
    CreditFixture f(1000);
    MemoryLimiterOptions o;
    o.lease_size = lease;
    auto limiter = std::make_unique<MemoryLimiter>(f.store, o);
    const std::vector<RateLimit> limits = {limit("a", 1'000'000, 1000ms)};
    std::atomic<std::uint64_t> admitted{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 200; ++i) {
          const std::uint64_t cost = 1 + static_cast<std::uint64_t>((t + i) % 3);
          const Admission a = limiter->admit(request(f.key, limits, cost, kStart, true));
          if (a.outcome == AdmissionOutcome::admitted) admitted.fetch_add(cost);
        }
      });
    }
    for (auto& th : threads) th.join();
    INFO("lease_size " << lease);
    // Every request asks for at most 3: the balance is spent down to less than 3.
    CHECK(admitted.load() + f.balance() + limiter->leased() == 1000);
    CHECK(f.balance() + limiter->leased() < 3);
    limiter.reset();  // returns the lease
    CHECK(admitted.load() + f.balance() == 1000);
  }
}

TEST_CASE(
    "MemoryLimiter: a lease is returned on destruction, dropped across a refill period "
    "and by credits_reset",
    "[admission][memory_limiter]") {
  const std::vector<RateLimit> none;
  MemoryLimiterOptions o;
  o.lease_size = 10;
  SECTION("returned on destruction") {
    CreditFixture f(100);
    {
      MemoryLimiter limiter(f.store, o);
      const Admission a = limiter.admit(request(f.key, none, 1, kStart, true));
      REQUIRE(a.outcome == AdmissionOutcome::admitted);
      CHECK(a.credits_remaining == std::optional<std::uint64_t>(99));
      CHECK(limiter.leased() == 10);
      CHECK(f.balance() == 89);
    }
    CHECK(f.balance() == 99);
  }
  SECTION("dropped when its refill period has passed") {
    apikeys::CreditRefill r;
    r.amount = 100;
    r.interval = apikeys::RefillInterval::daily;
    r.mode = apikeys::RefillMode::reset;
    CreditFixture f(100, r);
    MemoryLimiter limiter(f.store, o);
    REQUIRE(limiter.admit(request(f.key, none, 1, kStart, true)).outcome ==
            AdmissionOutcome::admitted);
    CHECK(f.balance() == 89);
    // The next day: a reset refill gives 100; the old lease must not add to it.
    const TimePoint tomorrow = kStart + 24h + 1s;
    const Admission a = limiter.admit(request(f.key, none, 1, tomorrow, true));
    REQUIRE(a.outcome == AdmissionOutcome::admitted);
    CHECK(a.credits_remaining == std::optional<std::uint64_t>(99));
    limiter.return_leases();
    CHECK(f.balance() == 99);
  }
  SECTION("dropped by credits_reset") {
    CreditFixture f(100);
    MemoryLimiter limiter(f.store, o);
    REQUIRE(limiter.admit(request(f.key, none, 1, kStart, true)).outcome ==
            AdmissionOutcome::admitted);
    limiter.credits_reset(f.key);
    CHECK(limiter.leased() == 0);
    limiter.return_leases();
    CHECK(f.balance() == 89);
  }
}

TEST_CASE("MemoryLimiter: a full table throws busy: states at rest are reused",
          "[admission][memory_limiter]") {
  MemoryLimiterOptions o;
  o.capacity = 1;  // the smallest table: one probe window per shard
  MemoryLimiter limiter(nullptr, o);
  const std::vector<RateLimit> slow = {limit("a", 1, 1000ms)};
  std::mt19937_64 rng(7);
  std::vector<Uuid> ids;
  for (int i = 0; i < 20'000; ++i) ids.push_back(lineage(rng));
  std::size_t busy = 0;
  std::size_t admitted = 0;
  for (const Uuid& id : ids) {
    try {
      if (limiter.admit(request(id, slow, 1, kStart)).outcome == AdmissionOutcome::admitted) {
        ++admitted;
      }
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == apikeys::ErrorCode::busy);
      ++busy;
    }
  }
  CHECK(busy > 0);
  CHECK(admitted + busy == ids.size());
  CHECK(limiter.states() == admitted);
  // Two seconds later every state has been at rest for a second: new lineages take every
  // place again, and no more.
  std::size_t again = 0;
  for (int i = 0; i < 20'000; ++i) {
    try {
      if (limiter.admit(request(lineage(rng), slow, 1, kStart + 2s)).outcome ==
          AdmissionOutcome::admitted) {
        ++again;
      }
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == apikeys::ErrorCode::busy);
    }
  }
  CHECK(again == admitted);
  CHECK(limiter.states() == admitted);
}

// Requests reach the lock in another order than they read the clock. A state that came
// to rest only a moment before another request's time is kept, so that a request whose
// time reads earlier still finds it rather than starting from rest.
TEST_CASE("MemoryLimiter: a state at rest is kept a second before another lineage takes it",
          "[admission][memory_limiter]") {
  MemoryLimiterOptions o;
  o.capacity = 1;  // the smallest table: full at once, states at rest are taken over
  MemoryLimiter limiter(nullptr, o);
  const std::vector<RateLimit> slow = {limit("a", 1, 1000ms)};  // burst 1
  const Uuid x = *Uuid::parse("31111111-2222-4333-8444-555555555555");
  REQUIRE(limiter.admit(request(x, slow, 1, kStart)).outcome == AdmissionOutcome::admitted);
  // At rest from kStart + 1s. Half a second after that, every table fills.
  std::mt19937_64 rng(23);
  for (int i = 0; i < 20'000; ++i) {
    try {
      (void)limiter.admit(request(lineage(rng), slow, 1, kStart + 1500ms));
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == apikeys::ErrorCode::busy);
    }
  }
  // A request of x's that read the clock before its state came to rest, and reaches the
  // limiter only now: refused, as it was at its time.
  CHECK(limiter.admit(request(x, slow, 1, kStart + 900ms)).outcome ==
        AdmissionOutcome::rate_limited);
}

TEST_CASE("MemoryLimiter: tables grow as lineages come and keep every live state",
          "[admission][memory_limiter]") {
  MemoryLimiter limiter(nullptr);  // the default: tables start small and grow
  const std::vector<RateLimit> daily = {limit("d", 1, 86'400'000ms)};
  const std::vector<RateLimit> two = {limit("d", 1, 86'400'000ms), limit("s", 5, 1000ms)};
  std::mt19937_64 rng(17);
  std::vector<Uuid> ids;
  for (int i = 0; i < 30'000; ++i) {
    ids.push_back(lineage(rng));
    // Every other lineage has two limits: growth may come between a request's limits.
    const auto& l = i % 2 == 0 ? daily : two;
    REQUIRE(limiter.admit(request(ids.back(), l, 1, kStart)).outcome == AdmissionOutcome::admitted);
  }
  CHECK(limiter.states() == 45'000);
  // Each table grew many times over; not one day-limited lineage looks new.
  std::size_t over = 0;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const auto& l = i % 2 == 0 ? daily : two;
    if (limiter.admit(request(ids[i], l, 1, kStart + 1s)).outcome !=
        AdmissionOutcome::rate_limited) {
      ++over;
    }
  }
  CHECK(over == 0);
}

TEST_CASE("MemoryLimiter: tables follow the states in use as they come to rest",
          "[admission][memory_limiter]") {
  // Each state is at rest a millisecond after its request, and may be dropped a second
  // after that; the clock moves two seconds per request: at any moment one state is
  // kept, whatever the lineages. The tables must stay near what that needs, not grow
  // towards capacity as lineages pass (48 MiB at the default), and every lineage is
  // still admitted each time.
  MemoryLimiter limiter(nullptr);
  const std::vector<RateLimit> fast = {limit("f", 1000, 1000ms)};
  std::mt19937_64 rng(23);
  std::vector<Uuid> ids;
  for (int i = 0; i < 10'000; ++i) ids.push_back(lineage(rng));
  TimePoint now = kStart;
  std::size_t refused = 0;
  std::size_t most = 0;
  for (int round = 0; round < 5; ++round) {
    for (const Uuid& id : ids) {
      now += 2s;
      refused += limiter.admit(request(id, fast, 1, now)).outcome != AdmissionOutcome::admitted;
    }
    most = std::max(most, limiter.table_bytes());
  }
  CHECK(refused == 0);
  // At most 8 slots per lineage seen (a table of 2 per state kept, doubled twice).
  CHECK(most <= ids.size() * 8 * MemoryLimiter::kBytesPerState);
  // New lineages take places the old ones left: no growth.
  for (int i = 0; i < 64 * 64; ++i) {
    now += 2s;
    CHECK(limiter.admit(request(lineage(rng), fast, 1, now)).outcome == AdmissionOutcome::admitted);
  }
  CHECK(limiter.table_bytes() <= most);
}

TEST_CASE("MemoryLimiter: many limits per request among states at rest are never busy",
          "[admission][memory_limiter]") {
  // A few lineages per shard, each with 10 to 16 limits, most of them at rest 10 ms
  // after a request: a rebuild that drops them may leave a small table, and a request's
  // later limits must still find places. A few hundred live states in a limiter of
  // 262,144: busy is never right here.
  std::mt19937_64 rng(11);
  MemoryLimiter limiter(nullptr);
  std::vector<Uuid> ids;
  std::vector<std::vector<RateLimit>> limits;
  for (int i = 0; i < 400; ++i) {
    ids.push_back(lineage(rng));
    std::vector<RateLimit> ls;
    const int n = 10 + static_cast<int>(rng() % 7);
    for (int k = 0; k < n; ++k) {
      const std::string name = "l" + std::to_string(k);
      ls.push_back(k == 0 && i % 3 == 0 ? limit("slow", 1, 86'400'000ms)
                                        : limit(name.c_str(), 100, 1000ms));
    }
    limits.push_back(apikeys::normalize_rate_limits(std::move(ls)));
  }
  TimePoint now = kStart;
  std::size_t busy = 0;
  for (int step = 0; step < 20'000; ++step) {
    now += std::chrono::milliseconds(rng() % 3);
    const std::size_t w = rng() % ids.size();
    try {
      (void)limiter.admit(request(ids[w], limits[w], 1, now));
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == apikeys::ErrorCode::busy);
      ++busy;
    }
  }
  CHECK(busy == 0);
}

TEST_CASE("MemoryLimiter: capacity live states find a place among states coming to rest",
          "[admission][memory_limiter]") {
  // Rebuilds that drop states at rest must not leave a live state without a place while
  // the table may still grow: `capacity` (the default) day-long states, each after a
  // lineage whose state comes to rest a millisecond later.
  MemoryLimiter limiter(nullptr);
  const std::size_t capacity = limiter.options().capacity;
  std::mt19937_64 rng(29);
  const std::vector<RateLimit> daily = {limit("d", 1, 86'400'000ms)};
  const std::vector<RateLimit> fast = {limit("f", 1000, 1000ms)};
  TimePoint now = kStart;
  std::size_t busy = 0;
  for (std::size_t i = 0; i < capacity; ++i) {
    for (int k = 0; k < 1; ++k) {
      now += 1ms;
      try {
        (void)limiter.admit(request(lineage(rng), fast, 1, now));
      } catch (const apikeys::Error&) {
        ++busy;
      }
    }
    try {
      (void)limiter.admit(request(lineage(rng), daily, 1, now));
    } catch (const apikeys::Error&) {
      ++busy;
    }
  }
  CHECK(busy == 0);
}

TEST_CASE("MemoryLimiter: capacity live states all find a place", "[admission][memory_limiter]") {
  MemoryLimiterOptions o;
  o.capacity = 20'000;
  MemoryLimiter limiter(nullptr, o);
  const std::vector<RateLimit> daily = {limit("d", 1, 86'400'000ms)};
  std::mt19937_64 rng(19);
  std::size_t busy = 0;
  for (std::size_t i = 0; i < o.capacity; ++i) {
    try {
      REQUIRE(limiter.admit(request(lineage(rng), daily, 1, kStart)).outcome ==
              AdmissionOutcome::admitted);
    } catch (const apikeys::Error& e) {
      CHECK(e.code() == apikeys::ErrorCode::busy);
      ++busy;
    }
  }
  CHECK(busy == 0);
  CHECK(limiter.states() == o.capacity);
}

TEST_CASE("MemoryLimiter: a full table is a limiter failure for the Validator",
          "[admission][memory_limiter]") {
  MemoryLimiterOptions lo;
  lo.capacity = 1;
  auto limiter = std::make_shared<MemoryLimiter>(nullptr, lo);
  std::mt19937_64 rng(9);
  const std::vector<RateLimit> slow = {limit("a", 1, 86'400'000ms)};
  // Fill the shards with active states.
  for (int i = 0; i < 20'000; ++i) {
    try {
      (void)limiter->admit(request(lineage(rng), slow, 1, kStart));
    } catch (const apikeys::Error&) {
    }
  }
  apikeys::KeyManagerOptions o;
  o.validation.clock = std::make_shared<apikeys::ManualClock>(kStart);
  o.validation.record_last_use = false;
  o.validation.limiter = limiter;
  apikeys::KeyManager manager(
      std::make_shared<apikeys::MemoryStore>(),
      std::make_shared<apikeys::HmacSha256Hasher>(std::string("0123456789abcdefghijklmnopqrstuv")),
      std::move(o));
  apikeys::CreateRequest req("x");
  req.rate_limits = slow;
  const auto key = manager.create(kAccount, req);
  const auto r = manager.validate(key.info.public_key + ":" + std::string(key.secret_key.reveal()));
  CHECK(r.code == apikeys::ValidationCode::error);
  CHECK(r.limiter_failed);
  CHECK(manager.validator().limiter_failures() == 1);
}

TEST_CASE("MemoryLimiter: a refused request holds no state and never hides another's",
          "[admission][memory_limiter]") {
  MemoryLimiterOptions o;
  o.capacity = 64 * 32;  // 32 places per shard: chains of neighbours form quickly
  MemoryLimiter limiter(nullptr, o);
  const Uuid lone = *Uuid::parse("11111111-2222-4333-8444-555555555555");
  const std::vector<RateLimit> one = {limit("a", 1, 1000ms)};
  for (int i = 0; i < 5; ++i) {
    // Cost 2 over a burst of 1: refused, nothing kept.
    CHECK(limiter.admit(request(lone, one, 2, kStart)).outcome == AdmissionOutcome::rate_limited);
  }
  CHECK(limiter.states() <= 1);

  std::mt19937_64 rng(11);
  auto try_admit = [&](const Uuid& id, const std::vector<RateLimit>& l, std::uint64_t cost,
                       TimePoint now) {
    try {
      return limiter.admit(request(id, l, cost, now)).outcome;
    } catch (const apikeys::Error&) {
      return AdmissionOutcome::usage_exceeded;  // busy: not admitted
    }
  };
  // States that come to rest a second later; lineages with a day's limit placed behind
  // them in their probe chains; once the first are at rest, refused requests take their
  // places: none of them may make a day-limited lineage look new.
  for (int i = 0; i < 1200; ++i) (void)try_admit(lineage(rng), one, 1, kStart);
  const std::vector<RateLimit> daily = {limit("d", 1, 86'400'000ms)};
  std::vector<Uuid> limited;
  for (int i = 0; i < 400; ++i) {
    const Uuid id = lineage(rng);
    if (try_admit(id, daily, 1, kStart + 500ms) == AdmissionOutcome::admitted) {
      limited.push_back(id);
    }
  }
  REQUIRE(limited.size() > 300);
  const std::vector<RateLimit> tight = {limit("t", 1, 1000ms)};
  for (int i = 0; i < 3000; ++i) (void)try_admit(lineage(rng), tight, 2, kStart + 2s);
  std::size_t over = 0;
  for (const Uuid& id : limited) {
    if (try_admit(id, daily, 1, kStart + 3s) == AdmissionOutcome::admitted) ++over;
  }
  CHECK(over == 0);
}

// A state claimed for a request that was not admitted (a check of cost 0, a request
// another of its limits refused) spends nothing, even for a request whose time reads
// earlier (a thread's clock read that reaches the lock late, a clock set back): it is
// the same as no state at all.
TEST_CASE("MemoryLimiter: a state no request was admitted by is at rest at any time",
          "[admission][memory_limiter]") {
  MemoryLimiter limiter(nullptr);
  const Uuid id = *Uuid::parse("21111111-2222-4333-8444-555555555555");
  const std::vector<RateLimit> five = {limit("a", 5, 1000ms)};  // burst 5
  SECTION("a check of cost 0") {
    REQUIRE(limiter.admit(request(id, five, 0, kStart)).outcome == AdmissionOutcome::admitted);
  }
  SECTION("a request another limit refused") {
    const std::vector<RateLimit> two = {limit("a", 5, 1000ms), limit("b", 1, 1000ms)};
    REQUIRE(limiter.admit(request(id, two, 2, kStart)).outcome == AdmissionOutcome::rate_limited);
  }
  // Ten seconds earlier, a whole burst: what a lineage without any state is given.
  const Admission a = limiter.admit(request(id, five, 5, kStart - 10s));
  CHECK(a.outcome == AdmissionOutcome::admitted);
  CHECK(limiter.admit(request(id, five, 1, kStart - 10s)).outcome ==
        AdmissionOutcome::rate_limited);
}

// retry_after tells a client when to come back: when every limit would admit the
// request, not only the first that refused; and never, when any limit never will.
TEST_CASE("MemoryLimiter: retry_after is when every limit would admit the request",
          "[admission][memory_limiter]") {
  MemoryLimiter limiter(nullptr);
  const Uuid id = *Uuid::parse("41111111-2222-4333-8444-555555555555");
  SECTION("a later limit that waits longer is the one named") {
    // 1 a second, and 1 a minute with a burst of 2.
    const std::vector<RateLimit> l = {limit("a", 1, 1000ms), limit("b", 1, 60'000ms, 2)};
    REQUIRE(limiter.admit(request(id, l, 1, kStart)).outcome == AdmissionOutcome::admitted);
    REQUIRE(limiter.admit(request(id, l, 1, kStart + 1s)).outcome == AdmissionOutcome::admitted);
    const Admission refused = limiter.admit(request(id, l, 1, kStart + 1s));
    REQUIRE(refused.outcome == AdmissionOutcome::rate_limited);
    CHECK(refused.limited_by == 1);
    CHECK(refused.retry_after == 59'000ms);
    // Refused a millisecond before, admitted at it (every limit, each state untouched).
    const TimePoint back = kStart + 1s + refused.retry_after;
    CHECK(limiter.admit(request(id, l, 1, back - 1ms)).outcome == AdmissionOutcome::rate_limited);
    CHECK(limiter.admit(request(id, l, 1, back)).outcome == AdmissionOutcome::admitted);
  }
  SECTION("a later limit whose burst is below the cost makes it never") {
    const std::vector<RateLimit> l = {limit("a", 1, 1000ms, 5), limit("b", 100, 1000ms, 2)};
    for (int i = 0; i < 3; ++i) {  // one every 10 ms, as fast as `b` allows
      REQUIRE(limiter.admit(request(id, l, 1, kStart + i * 10ms)).outcome ==
              AdmissionOutcome::admitted);
    }
    // `a` alone would say 980 ms; `b` never admits a cost of 3.
    const Admission refused = limiter.admit(request(id, l, 3, kStart + 20ms));
    REQUIRE(refused.outcome == AdmissionOutcome::rate_limited);
    CHECK(refused.limited_by == 1);
    CHECK(refused.retry_after == std::chrono::milliseconds::max());
  }
  SECTION("a later limit with no state yet waits for nothing") {
    const std::vector<RateLimit> first = {limit("a", 1, 1000ms)};
    REQUIRE(limiter.admit(request(id, first, 1, kStart)).outcome == AdmissionOutcome::admitted);
    const std::vector<RateLimit> l = {limit("a", 1, 1000ms), limit("b", 1, 60'000ms)};
    const Admission refused = limiter.admit(request(id, l, 1, kStart));
    REQUIRE(refused.outcome == AdmissionOutcome::rate_limited);
    CHECK(refused.limited_by == 0);
    CHECK(refused.retry_after == 1000ms);
  }
}

TEST_CASE("MemoryLimiter: the limits of one request never share a state",
          "[admission][memory_limiter]") {
  MemoryLimiter limiter(nullptr);  // the default table: sparse, yet it happens
  // One tight limit first, then loose ones: a new state claimed for the tight limit is
  // at rest until the request is applied, and must not be taken by a later limit of the
  // same request (the tight limit's state would be lost, and it would never refuse).
  std::vector<RateLimit> limits = {limit("a", 1, 86'400'000ms)};
  const std::string names = "bcdefghijklmnop";
  for (const char c : names) {
    limits.push_back(limit("x", 1000, 86'400'000ms));
    limits.back().name = std::string(1, c);
  }
  std::mt19937_64 rng(13);
  std::size_t over = 0;
  for (int i = 0; i < 3000; ++i) {
    const Uuid id = lineage(rng);
    REQUIRE(limiter.admit(request(id, limits, 1, kStart)).outcome == AdmissionOutcome::admitted);
    if (limiter.admit(request(id, limits, 1, kStart + 1s)).outcome == AdmissionOutcome::admitted) {
      ++over;
    }
  }
  CHECK(over == 0);
}

TEST_CASE("MemoryLimiter: names alike in every way the hash reads them keep their own states",
          "[admission][memory_limiter]") {
  MemoryLimiter limiter(nullptr);
  // The name hash reads short names in pieces and long ones in overlapping words: names
  // of each length class that differ only in one byte, in their length, or where those
  // reads overlap, each limited to one request a day.
  const std::string long_name(40, 'n');
  std::string long_middle = long_name;  // differs only at byte 10 (inside a 16-byte block)
  long_middle[10] = 'm';
  std::string long_second = long_name;  // and at byte 20 (a block's second word)
  long_second[20] = 'm';
  const std::vector<std::string> names = {"",
                                          "a",
                                          "b",
                                          "ab",
                                          "ba",
                                          "abb",
                                          "abc",
                                          "abd",
                                          "aaaa",
                                          "aaaaa",
                                          "abcd",
                                          "abce",
                                          "abcde",
                                          "abcdf",
                                          "abcdefg",
                                          "abcdefgh",
                                          "abcdefgi",
                                          "bbcdefgh",
                                          "abcdefghi",
                                          "abcdefghj",
                                          "tenant-a-rpm",
                                          "tenant-a-rps",
                                          std::string(15, 'x'),
                                          std::string(16, 'x'),
                                          std::string(15, 'x') + "y",
                                          std::string(17, 'x'),
                                          std::string(32, 'x'),
                                          std::string(31, 'x') + "y",
                                          long_name,
                                          long_name + "n",
                                          "x" + long_name.substr(1),
                                          long_middle,
                                          long_second};
  std::mt19937_64 rng(37);
  std::size_t over = 0;
  for (int i = 0; i < 200; ++i) {
    const Uuid id = lineage(rng);
    // One limit per request: the other names' states are untouched by it, so each name
    // admits its first request and refuses its second.
    for (const std::string& name : names) {
      std::vector<RateLimit> one = {limit("x", 1, 86'400'000ms)};
      one[0].name = name;
      REQUIRE(limiter.admit(request(id, one, 1, kStart)).outcome == AdmissionOutcome::admitted);
    }
    for (const std::string& name : names) {
      std::vector<RateLimit> one = {limit("x", 1, 86'400'000ms)};
      one[0].name = name;
      over +=
          limiter.admit(request(id, one, 1, kStart + 1s)).outcome != AdmissionOutcome::rate_limited;
    }
  }
  CHECK(over == 0);
  CHECK(limiter.states() == 200 * names.size());
}

TEST_CASE("MemoryLimiter: a limit out of its ranges is refused and never divided by",
          "[admission][memory_limiter]") {
  MemoryLimiter limiter(nullptr);
  const Uuid id = *Uuid::parse("21111111-2222-4333-8444-555555555555");
  // What a corrupt cache entry or a custom store could hand over.
  for (const RateLimit& bad : {limit("a", 0, 1000ms), limit("a", 1, 0ms), limit("a", 1, -5ms),
                               limit("a", 2'000'000'000, 1000ms)}) {
    const std::vector<RateLimit> limits = {bad};
    for (const std::uint64_t cost : {1, 5}) {
      try {
        (void)limiter.admit(request(id, limits, cost, kStart));
        FAIL("admitted against a limit out of its ranges");
      } catch (const apikeys::Error& e) {
        CHECK(e.code() == apikeys::ErrorCode::invalid_argument);
      }
    }
  }
}

// An answer that cannot be built (no memory for its limits) must come before anything is
// spent: a credit taken from the lease and then a throw would charge a request that the
// Validator refuses (fail closed) or lets through uncounted.
TEST_CASE("MemoryLimiter: an answer it cannot build spends nothing",
          "[admission][memory_limiter]") {
  if (!apikeys_test::alloc_probe::kActive) {
    WARN("allocations cannot be made to fail under AddressSanitizer");
    return;
  }
  for (const std::uint64_t lease : {std::uint64_t{0}, std::uint64_t{5}}) {
    INFO("lease_size " << lease);
    CreditFixture f(10);
    MemoryLimiterOptions o;
    o.lease_size = lease;
    MemoryLimiter limiter(f.store, o);
    const std::vector<RateLimit> limits = {limit("a", 1'000'000, 1000ms)};
    const AdmissionRequest r = request(f.key, limits, 1, kStart, true);
    REQUIRE(limiter.admit(r).outcome == AdmissionOutcome::admitted);  // the lease, if any
    bool threw = false;
    {
      Admission fresh;  // no capacity: its limits must be allocated
      const apikeys_test::alloc_probe::FailAllocations fail;
      try {
        limiter.admit_into(r, fresh);
      } catch (const std::bad_alloc&) {
        threw = true;
      }
    }
    // With a lease the charge is local and the answer fails; without one, the store's
    // charge may fail first. Either way nothing was spent: 9 more admissions, no more.
    if (lease > 0) CHECK(threw);
    int admitted = 0;
    for (int i = 0; i < 20; ++i) {
      admitted += limiter.admit(r).outcome == AdmissionOutcome::admitted ? 1 : 0;
    }
    CHECK(admitted == 9);
  }
}

// Whichever allocation fails during an admission, no credit is granted twice and none
// the limiter took is lost: what was admitted, what the store holds and what leases
// hold (returned when the limiter dies) add up to the balance.
TEST_CASE("MemoryLimiter: an allocation failing anywhere loses no credit and grants none twice",
          "[admission][memory_limiter]") {
  if (!apikeys_test::alloc_probe::kActive) return;  // the probe is off under ASan
  for (const std::uint64_t lease : {std::uint64_t{0}, std::uint64_t{5}}) {
    INFO("lease_size " << lease);
    CreditFixture f(1000);
    const std::vector<RateLimit> limits = {limit("a", 1'000'000, 1000ms)};
    const AdmissionRequest r = request(f.key, limits, 1, kStart, true);
    std::uint64_t admitted = 0;
    std::size_t failed = 0;
    for (std::size_t n = 1; n <= 60; ++n) {
      MemoryLimiterOptions o;
      o.lease_size = lease;
      MemoryLimiter limiter(f.store, o);  // a fresh one: its tables are made on the way
      for (int call = 0; call < 2; ++call) {
        try {
          Admission out;
          {
            const apikeys_test::alloc_probe::FailNthAllocationHere fail(n);
            limiter.admit_into(r, out);
          }
          if (out.outcome == AdmissionOutcome::admitted) ++admitted;
        } catch (const std::bad_alloc&) {
          ++failed;
        }
      }
    }  // each limiter returns its leases as it dies
    CHECK(failed > 0);
    CHECK(admitted + f.balance() == 1000);
  }
}

TEST_CASE("MemoryLimiter: kBytesPerState is 48", "[admission][memory_limiter]") {
  STATIC_REQUIRE(MemoryLimiter::kBytesPerState == 48);
}

TEST_CASE("MemoryLimiter: admit() allocates nothing once warm but its result",
          "[admission][memory_limiter]") {
  if (!apikeys_test::alloc_probe::kActive) {
    WARN("allocations are not counted under AddressSanitizer");
    return;
  }
  MemoryLimiter limiter(nullptr);
  const Uuid id = *Uuid::parse("11111111-2222-4333-8444-555555555555");
  const std::vector<RateLimit> none;
  const std::vector<RateLimit> two = {limit("a", 1'000'000, 1000ms), limit("b", 1'000'000, 1000ms)};
  (void)limiter.admit(request(id, two, 1, kStart));  // warm-up: the shard's table
  (void)limiter.admit(request(id, none, 1, kStart));
  const AdmissionRequest bare = request(id, none, 1, kStart);
  const AdmissionRequest limited = request(id, two, 1, kStart);
  std::size_t bare_allocs = 0;
  std::size_t limited_allocs = 0;
  {
    const apikeys_test::alloc_probe::CountAllocations count;
    for (int i = 0; i < 100; ++i) (void)limiter.admit(bare);
    bare_allocs = count.count();
  }
  {
    const apikeys_test::alloc_probe::CountAllocations count;
    for (int i = 0; i < 100; ++i) (void)limiter.admit(limited);
    limited_allocs = count.count();
  }
  CHECK(bare_allocs == 0);
  // One block per call: the Admission's vector of LimitStatus handed to the caller.
  CHECK(limited_allocs == 100);
  // admit_into() writes into the caller's vector: nothing once it has room.
  Admission reused;
  limiter.admit_into(limited, reused);
  std::size_t into_allocs = 0;
  {
    const apikeys_test::alloc_probe::CountAllocations count;
    for (int i = 0; i < 100; ++i) limiter.admit_into(limited, reused);
    into_allocs = count.count();
  }
  CHECK(into_allocs == 0);
  CHECK(reused.outcome == AdmissionOutcome::admitted);
  CHECK(reused.limits.size() == 2);
}

TEST_CASE("MemoryLimiter: admit_into() answers as admit(), whatever `out` held",
          "[admission][memory_limiter]") {
  for (const bool leased : {false, true}) {
    CAPTURE(leased);
    MemoryLimiterOptions o;
    o.lease_size = leased ? 10 : 0;
    // The same requests for two keys of 3 credits each: one through admit(), the other
    // through admit_into() with one Admission reused throughout.
    CreditFixture fx(3);
    CreditFixture fy(3);
    MemoryLimiter by_value(fx.store, o);
    MemoryLimiter into(fy.store, o);
    const std::vector<RateLimit> two = {limit("a", 2, 86'400'000ms), limit("b", 100, 1000ms)};
    Admission out;
    const auto step = [&](std::uint64_t cost, TimePoint now) {
      const Admission fresh = by_value.admit(request(fx.key, two, cost, now, true));
      into.admit_into(request(fy.key, two, cost, now, true), out);
      CHECK(out.outcome == fresh.outcome);
      CHECK(out.limited_by == fresh.limited_by);
      CHECK(out.retry_after == fresh.retry_after);
      CHECK(out.credits_remaining == fresh.credits_remaining);
      REQUIRE(out.limits.size() == fresh.limits.size());
      for (std::size_t i = 0; i < out.limits.size(); ++i) {
        CHECK(out.limits[i].remaining == fresh.limits[i].remaining);
        CHECK(out.limits[i].reset == fresh.limits[i].reset);
      }
      return out.outcome;
    };
    CHECK(step(1, kStart) == AdmissionOutcome::admitted);
    CHECK(step(5, kStart) == AdmissionOutcome::rate_limited);  // above "a"'s burst
    CHECK(step(1, kStart) == AdmissionOutcome::admitted);
    CHECK(step(1, kStart) == AdmissionOutcome::rate_limited);    // "a" is spent
    CHECK(step(1, kStart + 24h) == AdmissionOutcome::admitted);  // the last credit
    CHECK(step(1, kStart + 24h) == AdmissionOutcome::usage_exceeded);
    CHECK(step(0, kStart + 24h) == AdmissionOutcome::admitted);
  }
}

TEST_CASE("Validator: a reused result allocates nothing on a cache hit with limits and credits",
          "[admission][memory_limiter]") {
  if (!apikeys_test::alloc_probe::kActive) {
    WARN("allocations are not counted under AddressSanitizer");
    return;
  }
  auto store = std::make_shared<apikeys::MemoryStore>();
  apikeys::MemoryLimiterOptions lo;
  lo.lease_size = 1000;
  const apikeys::KeyManagerOptions o = quiet_options(std::make_shared<MemoryLimiter>(store, lo));
  apikeys::KeyManager manager(
      store,
      std::make_shared<apikeys::HmacSha256Hasher>(std::string("0123456789abcdefghijklmnopqrstuv")),
      o);
  apikeys::CreateRequest req("hot");
  req.scopes = {"keys:read", "keys:write"};
  req.metadata = R"({"tier":"gold"})";
  req.rate_limits = {limit("per-second", 1'000'000, 1000ms),
                     limit("per-day", 10'000'000, 86'400'000ms)};
  apikeys::Credits credits;
  credits.remaining = 1'000'000;
  req.credits = credits;
  const apikeys::CreatedKey key = manager.create(kAccount, req);
  const std::string token = key.info.public_key + ":" + std::string(key.secret_key.reveal());
  apikeys::Requirements needs;
  needs.scopes = {"keys:read"};
  apikeys::ValidationResult out;
  for (int i = 0; i < 3; ++i) manager.validator().validate(token, needs, out);  // warm-up
  REQUIRE(out.ok());
  std::size_t allocs = 0;
  bool all_valid = true;
  {
    const apikeys_test::alloc_probe::CountAllocations count;
    for (int i = 0; i < 100; ++i) {
      manager.validator().validate(token, needs, out);
      all_valid = all_valid && out.ok() && out.limits.size() == 2 && out.scopes.size() == 2;
    }
    allocs = count.count();
  }
  CHECK(all_valid);
  CHECK(allocs == 0);
  CHECK(out.credits_remaining == std::optional<std::uint64_t>(1'000'000 - 103));
}

namespace {

// A MemoryLimiter that throws, after writing a status, while `fail` is set.
class FailingLimiter final : public apikeys::Limiter {
 public:
  explicit FailingLimiter(std::shared_ptr<MemoryLimiter> inner) : inner_(std::move(inner)) {}
  Admission admit(const AdmissionRequest& request) override { return inner_->admit(request); }
  void admit_into(const AdmissionRequest& request, Admission& out) override {
    if (fail) {
      out.limits.emplace_back();
      throw apikeys::Error(apikeys::ErrorCode::storage, "limiter down");
    }
    inner_->admit_into(request, out);
  }
  bool fail = false;

 private:
  std::shared_ptr<MemoryLimiter> inner_;
};

}  // namespace

TEST_CASE("Validator: a reused result keeps its capacity through a limiter failure",
          "[admission][memory_limiter]") {
  if (!apikeys_test::alloc_probe::kActive) {
    WARN("allocations are not counted under AddressSanitizer");
    return;
  }
  for (const auto policy :
       {apikeys::LimiterFailurePolicy::deny, apikeys::LimiterFailurePolicy::allow}) {
    CAPTURE(policy == apikeys::LimiterFailurePolicy::deny);
    auto store = std::make_shared<apikeys::MemoryStore>();
    auto limiter = std::make_shared<FailingLimiter>(std::make_shared<MemoryLimiter>(store));
    apikeys::KeyManagerOptions o = quiet_options(limiter);
    o.validation.limiter_failure = policy;
    apikeys::KeyManager manager(store,
                                std::make_shared<apikeys::HmacSha256Hasher>(
                                    std::string("0123456789abcdefghijklmnopqrstuv")),
                                o);
    apikeys::CreateRequest req("hot");
    req.rate_limits = {limit("per-second", 1'000'000, 1000ms),
                       limit("per-day", 10'000'000, 86'400'000ms)};
    const apikeys::CreatedKey key = manager.create(kAccount, req);
    const std::string token = key.info.public_key + ":" + std::string(key.secret_key.reveal());
    apikeys::ValidationResult out;
    for (int i = 0; i < 3; ++i) manager.validator().validate(token, {}, out);  // warm-up
    REQUIRE(out.ok());
    limiter->fail = true;
    manager.validator().validate(token, {}, out);
    CHECK(out.limiter_failed);
    CHECK(out.limits.empty());
    limiter->fail = false;
    std::size_t allocs = 0;
    bool all_valid = true;
    {
      const apikeys_test::alloc_probe::CountAllocations count;
      for (int i = 0; i < 10; ++i) {
        manager.validator().validate(token, {}, out);
        all_valid = all_valid && out.ok() && out.limits.size() == 2 && !out.limiter_failed;
      }
      allocs = count.count();
    }
    CHECK(all_valid);
    CHECK(allocs == 0);
  }
}

// A refusal stays a refusal whatever fails while the answer is written: under the
// `allow` policy a failure there would otherwise let the refused request through.
TEST_CASE("Validator: a rate_limited answer it cannot name stays rate_limited",
          "[admission][memory_limiter]") {
  if (!apikeys_test::alloc_probe::kActive) return;  // the probe is off under ASan
  auto store = std::make_shared<apikeys::MemoryStore>();
  apikeys::KeyManagerOptions o = quiet_options(std::make_shared<MemoryLimiter>(store));
  o.validation.limiter_failure = apikeys::LimiterFailurePolicy::allow;
  apikeys::KeyManager manager(
      store,
      std::make_shared<apikeys::HmacSha256Hasher>(std::string("0123456789abcdefghijklmnopqrstuv")),
      o);
  apikeys::CreateRequest req("hot");
  // A name longer than any string keeps in place: copying it allocates.
  req.rate_limits = {limit("once-a-day-and-no-more-than-that", 1, 86'400'000ms)};
  const apikeys::CreatedKey key = manager.create(kAccount, req);
  const std::string token = key.info.public_key + ":" + std::string(key.secret_key.reveal());
  apikeys::ValidationResult valid;
  manager.validator().validate(token, {}, valid);
  REQUIRE(valid.ok());
  REQUIRE(valid.limits.size() == 1);
  bool named_failed = false;
  for (std::size_t n = 1; n <= 8; ++n) {
    CAPTURE(n);
    // Room for the verdict and the limits' statuses (a valid answer's), none for the
    // name of a refusing limit: the answer below allocates only for that.
    apikeys::ValidationResult out = valid;
    {
      const apikeys_test::alloc_probe::FailNthAllocationHere fail(n);
      manager.validator().validate(token, {}, out);
    }
    CHECK(out.code == apikeys::ValidationCode::rate_limited);
    CHECK_FALSE(out.limiter_failed);
    if (out.limited_by.empty()) named_failed = true;
  }
  CHECK(named_failed);  // the sweep reached the name
}

TEST_CASE("MemoryLimiter: prefetch() changes nothing, even beside a table that moves",
          "[admission][memory_limiter]") {
  MemoryLimiter limiter(nullptr);
  const std::vector<RateLimit> daily = {limit("d", 1, 86'400'000ms)};
  std::mt19937_64 rng(29);
  // Before any table exists, and with no limits: nothing to load, nothing allocated.
  limiter.prefetch(lineage(rng), nullptr, 0);
  limiter.prefetch(lineage(rng), daily.data(), daily.size());
  CHECK(limiter.states() == 0);
  CHECK(limiter.table_bytes() == 0);

  std::vector<Uuid> ids;
  for (int i = 0; i < 20'000; ++i) ids.push_back(lineage(rng));
  // One thread admits (every shard's table grows many times, moving each time) while
  // another prefetches the same lineages and others without the lock.
  std::atomic<bool> done{false};
  std::thread hinter([&] {
    std::mt19937_64 local(31);
    std::size_t i = 0;
    while (!done.load(std::memory_order_relaxed)) {
      limiter.prefetch(ids[i % ids.size()], daily.data(), daily.size());
      limiter.prefetch(lineage(local), daily.data(), daily.size());
      ++i;
    }
  });
  std::size_t admitted = 0;
  for (const Uuid& id : ids) {
    admitted += limiter.admit(request(id, daily, 1, kStart)).outcome == AdmissionOutcome::admitted;
  }
  done = true;
  hinter.join();
  CHECK(admitted == ids.size());
  CHECK(limiter.states() == ids.size());
  std::size_t over = 0;
  for (const Uuid& id : ids) {
    limiter.prefetch(id, daily.data(), daily.size());
    over +=
        limiter.admit(request(id, daily, 1, kStart + 1s)).outcome != AdmissionOutcome::rate_limited;
  }
  CHECK(over == 0);
}

namespace {

// A MemoryLimiter that records the hints it is given.
class HintedLimiter final : public apikeys::Limiter {
 public:
  explicit HintedLimiter(std::shared_ptr<MemoryLimiter> inner) : inner_(std::move(inner)) {}
  Admission admit(const AdmissionRequest& request) override { return inner_->admit(request); }
  void prefetch(const Uuid& lineage_id, const RateLimit* limits,
                std::size_t limit_count) const noexcept override {
    ++hints;
    last_lineage = lineage_id;
    last_names.clear();
    for (std::size_t i = 0; i < limit_count; ++i) last_names.push_back(limits[i].name);
  }
  mutable int hints = 0;
  mutable Uuid last_lineage;
  mutable std::vector<std::string> last_names;

 private:
  std::shared_ptr<MemoryLimiter> inner_;
};

}  // namespace

TEST_CASE("Validator: a cache hit that will admit hints the limiter with the key's state",
          "[admission][memory_limiter]") {
  auto store = std::make_shared<apikeys::MemoryStore>();
  auto limiter = std::make_shared<HintedLimiter>(std::make_shared<MemoryLimiter>(store));
  apikeys::KeyManagerOptions o;
  o.validation.cache = std::make_shared<apikeys::MemoryCache>();
  o.validation.limiter = limiter;
  o.validation.clock = std::make_shared<apikeys::ManualClock>(kStart);
  o.validation.record_last_use = false;
  apikeys::KeyManager manager(
      store,
      std::make_shared<apikeys::HmacSha256Hasher>(std::string("0123456789abcdefghijklmnopqrstuv")),
      o);
  apikeys::CreateRequest limited("limited");
  limited.rate_limits = {limit("per-second", 100, 1000ms), limit("per-day", 1000, 86'400'000ms)};
  const apikeys::CreatedKey key = manager.create(kAccount, limited);
  const std::string token = key.info.public_key + ":" + std::string(key.secret_key.reveal());
  const apikeys::CreatedKey plain = manager.create(kAccount, apikeys::CreateRequest("plain"));
  const std::string plain_token =
      plain.info.public_key + ":" + std::string(plain.secret_key.reveal());

  REQUIRE(manager.validator().validate(token).ok());  // a miss: read from the store
  CHECK(limiter->hints == 0);
  const auto hit = manager.validator().validate(token);  // a hit
  REQUIRE(hit.ok());
  CHECK(hit.limits.size() == 2);
  CHECK(limiter->hints == 1);
  CHECK(limiter->last_lineage == key.info.lineage());
  std::vector<std::string> names;  // in the key's order (the store sorts them by name)
  for (const RateLimit& l : key.info.rate_limits) names.push_back(l.name);
  CHECK(names.size() == 2);
  CHECK(limiter->last_names == names);
  // A wrong secret is no hint, nor a key with nothing to admit.
  std::string wrong_secret(key.secret_key.reveal());
  wrong_secret.back() = wrong_secret.back() == 'A' ? 'B' : 'A';
  CHECK(manager.validator().validate(key.info.public_key + ":" + wrong_secret).code ==
        apikeys::ValidationCode::wrong_secret);
  REQUIRE(manager.validator().validate(plain_token).ok());
  REQUIRE(manager.validator().validate(plain_token).ok());
  CHECK(limiter->hints == 1);
}

TEST_CASE("MemoryLimiter: counter lineage ids of a custom store each keep their state",
          "[admission][memory_limiter]") {
  // A store of the user's own may number its keys: ids that differ only in their last
  // bytes. Each lineage must still find a place of its own in the limiter's tables, not
  // all land on one and fill its probe window.
  MemoryLimiter limiter(nullptr);
  const std::vector<RateLimit> daily = {limit("d", 1, 86'400'000ms)};
  std::vector<Uuid> ids;
  for (std::size_t i = 1; i <= 5'000; ++i) {
    std::array<std::uint8_t, 16> b{};
    b[14] = static_cast<std::uint8_t>(i >> 8);
    b[15] = static_cast<std::uint8_t>(i);
    ids.emplace_back(b);
    REQUIRE(limiter.admit(request(ids.back(), daily, 1, kStart)).outcome ==
            AdmissionOutcome::admitted);
  }
  CHECK(limiter.states() == ids.size());
  std::size_t over = 0;
  for (const Uuid& id : ids) {
    over +=
        limiter.admit(request(id, daily, 1, kStart + 1s)).outcome != AdmissionOutcome::rate_limited;
  }
  CHECK(over == 0);
}

namespace {

// A MemoryStore whose take_credits() first runs `before_take` once (another request, or
// the owner, acting between the limiter's decision and its store call) and `after_take`
// once after it, and whose take_credits() and return_credits() fail while `fail_takes`
// and `fail_returns` are set.
class HookStore final : public apikeys_test::ForwardingStore {
 public:
  explicit HookStore(const std::shared_ptr<apikeys::MemoryStore>& inner)
      : apikeys_test::ForwardingStore(inner), mem(inner) {}

  apikeys::CreditTake take_credits(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                                   TimePoint now) override {
    if (before_take) {
      const std::function<void()> f = std::move(before_take);
      before_take = nullptr;
      f();
    }
    if (fail_takes) throw std::runtime_error("the store is down");
    const apikeys::CreditTake take = mem->take_credits(lineage_id, min, max, now);
    if (after_take) {
      const std::function<void()> f = std::move(after_take);
      after_take = nullptr;
      f();
    }
    return take;
  }
  void return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period) override {
    returning(lineage_id);
    mem->return_credits(lineage_id, n, period);
  }
  void return_credits_checked(const Uuid& lineage_id, std::uint64_t n, std::int64_t period,
                              std::uint64_t generation) override {
    returning(lineage_id);
    mem->return_credits_checked(lineage_id, n, period, generation);
  }
  bool checks_credit_generations() const noexcept override {
    return mem->checks_credit_generations();  // it forwards return_credits_checked()
  }
  void returning(const Uuid& lineage_id) {
    if (before_return) {
      const std::function<void(const Uuid&)> f = std::move(before_return);
      before_return = nullptr;
      f(lineage_id);
    }
    if (fail_returns) throw std::runtime_error("the store is down");
  }
  std::optional<apikeys::KeyInfo> change_credits(const Uuid& account_id, const Uuid& key_id,
                                                 const apikeys::CreditsChange& change) override {
    return mem->change_credits(account_id, key_id, change);
  }

  std::shared_ptr<apikeys::MemoryStore> mem;
  std::function<void()> before_take;
  std::function<void()> after_take;                // likewise, once, right after the take
  std::function<void(const Uuid&)> before_return;  // once, before a return, with its lineage
  bool fail_takes = false;
  bool fail_returns = false;
};

// What KeyManager::set_credits does: the balance set in the store, then this process's
// lease dropped (Limiter::credits_reset()).
void set_balance(apikeys::MemoryStore& store, MemoryLimiter& limiter, const Uuid& key,
                 std::uint64_t balance) {
  apikeys::CreditsChange c;
  c.op = apikeys::CreditsOp::configure;
  c.remaining = balance;
  c.at = kStart;
  REQUIRE(store.change_credits(kAccount, key, c));
  limiter.credits_reset(key);
}

// One key with `balance` credits in `store` (its lineage is its key id).
Uuid key_with_credits(apikeys::Store& store, std::uint64_t balance,
                      const std::string& public_key = "pk_hooked") {
  apikeys::KeyRecord rec;
  rec.info.account_id = kAccount;
  rec.info.key_id = Uuid::random();
  rec.info.public_key = public_key;
  rec.info.created_at = kStart;
  apikeys::Credits c;
  c.remaining = balance;
  rec.info.credits = c;
  store.insert(rec);
  return rec.info.key_id;
}

}  // namespace

TEST_CASE("MemoryLimiter: a state a request decided on stays while it waits for the store",
          "[limiter][credits]") {
  // A request decides its limits, then asks the store for credits without the lock. A
  // store call may take longer than a state takes to come to rest, and others may fill
  // the shard's table meanwhile: the state must still be there when the request decides
  // again, at its own time. Were it dropped, the request would decide from rest and be
  // admitted beside the request that took the burst after it.
  const std::size_t lease_size = GENERATE(std::size_t{0}, std::size_t{10});
  CAPTURE(lease_size);
  auto store = std::make_shared<HookStore>(std::make_shared<apikeys::MemoryStore>());
  const Uuid key = key_with_credits(*store, 1000);
  MemoryLimiterOptions o;
  o.lease_size = lease_size;
  MemoryLimiter limiter(store, o);
  const std::vector<RateLimit> limits{limit("a", 1, 1s, 1)};
  std::mt19937_64 rng(7);
  Admission second;
  store->before_take = [&] {
    // The key's next request, 100 ms later, takes the burst; 2.5 s later, when that state
    // has been at rest for more than a second, 4,000 other lineages' requests rebuild
    // every shard's table.
    second = limiter.admit(request(key, limits, 1, kStart + 100ms, true));
    for (int i = 0; i < 4000; ++i)
      (void)limiter.admit(request(lineage(rng), limits, 1, kStart + 2500ms));
  };
  const Admission first = limiter.admit(request(key, limits, 1, kStart, true));
  CHECK(second.outcome == AdmissionOutcome::admitted);
  CHECK(first.outcome == AdmissionOutcome::rate_limited);
  // The request refused is not charged: the other one is, alone.
  CHECK(store->mem->get(kAccount, key)->credits->remaining + limiter.leased() == 999);
}

TEST_CASE("MemoryLimiter: credits carried out of a lease across a balance set are dropped",
          "[admission][memory_limiter]") {
  auto mem = std::make_shared<apikeys::MemoryStore>();
  auto store = std::make_shared<HookStore>(mem);
  const Uuid key = key_with_credits(*store, 100);
  MemoryLimiterOptions o;
  o.lease_size = 10;
  MemoryLimiter limiter(store, o);
  const std::vector<RateLimit> none;
  REQUIRE(limiter.admit(request(key, none, 1, kStart, true)).outcome == AdmissionOutcome::admitted);
  REQUIRE(limiter.leased() == 10);
  // A request of cost 11 takes the lease's 10 out and goes to the store for one more;
  // meanwhile the owner sets the balance to 0. The 10 were the old balance's: neither
  // leased again nor given back.
  SECTION("the take finds the new balance short") {
    store->before_take = [&] { set_balance(*mem, limiter, key, 0); };
    CHECK(limiter.admit(request(key, none, 11, kStart, true)).outcome ==
          AdmissionOutcome::usage_exceeded);
  }
  SECTION("the take fails") {
    store->before_take = [&] {
      set_balance(*mem, limiter, key, 0);
      store->fail_takes = true;
    };
    CHECK_THROWS(limiter.admit(request(key, none, 11, kStart, true)));
    store->fail_takes = false;
  }
  CHECK(limiter.leased() == 0);
  CHECK(mem->get(kAccount, key)->credits->remaining == 0);
  for (int i = 0; i < 20; ++i) {
    CHECK(limiter.admit(request(key, none, 1, kStart + 1s, true)).outcome ==
          AdmissionOutcome::usage_exceeded);
  }
}

TEST_CASE("MemoryLimiter: return_leases() gives nothing back onto a balance set meanwhile",
          "[admission][memory_limiter]") {
  // return_leases() takes a shard's leases out, then returns them one store write at a
  // time. A balance set in this process while those writes run must not get the old
  // balance's credits added to it, whichever lease of the shard is being returned.
  auto mem = std::make_shared<apikeys::MemoryStore>();
  auto store = std::make_shared<HookStore>(mem);
  MemoryLimiterOptions o;
  o.lease_size = 10;
  MemoryLimiter limiter(store, o);
  const std::vector<RateLimit> none;
  std::vector<Uuid> keys;
  for (int i = 0; i < 1000; ++i) {  // every shard holds many leases
    keys.push_back(key_with_credits(*store, 100, "pk_lease_" + std::to_string(i)));
    REQUIRE(limiter.admit(request(keys.back(), none, 1, kStart, true)).outcome ==
            AdmissionOutcome::admitted);
  }
  REQUIRE(limiter.leased() == 10 * keys.size());
  Uuid first;
  store->before_return = [&](const Uuid& returning) {
    first = returning;
    for (const Uuid& k : keys) {
      if (k != returning) set_balance(*mem, limiter, k, 0);
    }
  };
  limiter.return_leases();
  for (const Uuid& k : keys) {
    INFO(k.to_string());
    CHECK(mem->get(kAccount, k)->credits->remaining == (k == first ? 99 : 0));
  }
}

namespace {

// A store of the user's own that wraps a bundled one and forwards take_credits() and
// return_credits() but not checks_credit_generations(): one written before generations
// existed, or (`forwards_checked`) one that forwards the checked give-back too. Either
// way the limiter must trust no generation of it.
class OldWrapper final : public apikeys_test::ForwardingStore {
 public:
  explicit OldWrapper(const std::shared_ptr<apikeys::MemoryStore>& inner,
                      bool forwards_checked = false)
      : apikeys_test::ForwardingStore(inner), mem(inner), forwards_checked_(forwards_checked) {}
  apikeys::CreditTake take_credits(const Uuid& lineage_id, std::uint64_t min, std::uint64_t max,
                                   TimePoint now) override {
    const apikeys::CreditTake take = mem->take_credits(lineage_id, min, max, now);
    if (after_take) {
      const std::function<void()> f = std::move(after_take);
      after_take = nullptr;
      f();
    }
    return take;
  }
  void return_credits(const Uuid& lineage_id, std::uint64_t n, std::int64_t period) override {
    mem->return_credits(lineage_id, n, period);
  }
  void return_credits_checked(const Uuid& lineage_id, std::uint64_t n, std::int64_t period,
                              std::uint64_t generation) override {
    if (forwards_checked_) {
      mem->return_credits_checked(lineage_id, n, period, generation);
    } else {
      Store::return_credits_checked(lineage_id, n, period, generation);  // the default
    }
  }
  std::optional<apikeys::KeyInfo> change_credits(const Uuid& account_id, const Uuid& key_id,
                                                 const apikeys::CreditsChange& change) override {
    return mem->change_credits(account_id, key_id, change);
  }

  std::shared_ptr<apikeys::MemoryStore> mem;
  std::function<void()> after_take;

 private:
  bool forwards_checked_;
};

}  // namespace

TEST_CASE("MemoryLimiter: a lease's credits are not spent past lease_ttl, refused requests or not",
          "[admission][memory_limiter]") {
  // Another process spends the rest of the balance: the credits this process leased
  // before are spent for at most lease_ttl, then go back to the store. A request too
  // large for the lease takes its credits out and, over a store that checks no
  // generation, puts them back when the store cannot add to them; that must not renew
  // their deadline. (A store that checks generations takes them back instead: "a lease
  // of a balance set elsewhere is not leased again".)
  auto mem = std::make_shared<apikeys::MemoryStore>();
  const Uuid key = key_with_credits(*mem, 100);
  MemoryLimiterOptions o;
  o.lease_size = 10;
  o.lease_ttl = 60s;
  MemoryLimiter limiter(std::make_shared<OldWrapper>(mem), o);
  const std::vector<RateLimit> none;
  REQUIRE(limiter.admit(request(key, none, 1, kStart, true)).outcome == AdmissionOutcome::admitted);
  REQUIRE(limiter.leased() == 10);
  REQUIRE(mem->take_credits(key, 0, 1000, kStart).taken == 89);
  for (const auto at : {30s, 50s}) {
    CHECK(limiter.admit(request(key, none, 50, kStart + at, true)).outcome ==
          AdmissionOutcome::usage_exceeded);
    CHECK(limiter.leased() == 10);  // within lease_ttl: still leased
  }
  // 70 s after the lease was taken: it has expired, so its rest goes back to the store
  // at this admission, which the store's 10 cannot serve either.
  CHECK(limiter.admit(request(key, none, 50, kStart + 70s, true)).outcome ==
        AdmissionOutcome::usage_exceeded);
  CHECK(limiter.leased() == 0);
  CHECK(mem->get(kAccount, key)->credits->remaining == 10);
}

TEST_CASE("MemoryLimiter: a lease_ttl of centuries keeps the lease, never overflows",
          "[admission][memory_limiter]") {
  auto mem = std::make_shared<apikeys::MemoryStore>();
  const Uuid key = key_with_credits(*mem, 100);
  MemoryLimiterOptions o;
  o.lease_size = 10;
  o.lease_ttl = std::chrono::hours(24 * 365 * 300);  // past what a TimePoint holds
  MemoryLimiter limiter(mem, o);
  const std::vector<RateLimit> none;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(limiter.admit(request(key, none, 1, kStart + std::chrono::seconds(i), true)).outcome ==
            AdmissionOutcome::admitted);
  }
  // One take from the store (1 + lease_size), then the lease served the other two.
  CHECK(mem->get(kAccount, key)->credits->remaining == 89);
  CHECK(limiter.leased() == 8);
}

TEST_CASE("MemoryLimiter: a failed give-back never turns an answer into a failure",
          "[admission][memory_limiter]") {
  auto mem = std::make_shared<apikeys::MemoryStore>();
  auto store = std::make_shared<HookStore>(mem);
  const Uuid key = key_with_credits(*store, 100);
  // While one request of the lineage is at the store, another is admitted (taking a
  // place of the rate limit, and in leased mode a lease of its own); from then on the
  // store refuses every give-back. Returns the first request's answer.
  const auto admit_beside_another = [&](MemoryLimiter& limiter,
                                        const std::vector<RateLimit>& limits) {
    store->before_take = [&] {
      REQUIRE(limiter.admit(request(key, limits, 1, kStart, true)).outcome ==
              AdmissionOutcome::admitted);
      store->fail_returns = true;
    };
    const Admission a = limiter.admit(request(key, limits, 1, kStart, true));
    store->fail_returns = false;
    return a;
  };
  SECTION("leased: an admitted request whose excess cannot go back stays admitted") {
    MemoryLimiterOptions o;
    o.lease_size = 10;
    MemoryLimiter limiter(store, o);
    // The two leases merge past lease_size, and the excess cannot go back.
    const std::vector<RateLimit> two{limit("two", 2, 60s)};
    const Admission a = admit_beside_another(limiter, two);
    CHECK(a.outcome == AdmissionOutcome::admitted);
    CHECK(a.limits.size() == 1);
    // Both requests spent the burst of two: it is exhausted, and never over-spent.
    CHECK(limiter.admit(request(key, two, 1, kStart, true)).outcome ==
          AdmissionOutcome::rate_limited);
    CHECK(limiter.leased() <= o.lease_size);
  }
  SECTION("direct: a request refused after its charge stays rate_limited") {
    MemoryLimiter limiter(store);  // no lease: charged in the store, per request
    // The other request took the limit's one place: this one is refused after its
    // charge, and giving the charge back fails.
    const Admission a = admit_beside_another(limiter, {limit("one", 1, 60s)});
    CHECK(a.outcome == AdmissionOutcome::rate_limited);
    CHECK_FALSE(a.credits_remaining.has_value());
    // The charge is lost, never granted twice: 100 - 1 (the other) - 1 (lost).
    CHECK(mem->get(kAccount, key)->credits->remaining == 98);
  }
}

TEST_CASE("MemoryLimiter: a lease taken before a refill was configured ends with it",
          "[admission][memory_limiter]") {
  auto clock = std::make_shared<apikeys::ManualClock>(kStart + 23h + 59min + 30s);
  auto store = std::make_shared<apikeys::MemoryStore>();
  MemoryLimiterOptions lo;
  lo.lease_size = 10;
  auto limiter = std::make_shared<MemoryLimiter>(store, lo);
  apikeys::KeyManagerOptions o;
  o.validation.clock = clock;
  o.validation.record_last_use = false;
  o.validation.limiter = limiter;
  apikeys::KeyManager manager(
      store,
      std::make_shared<apikeys::HmacSha256Hasher>(std::string("0123456789abcdefghijklmnopqrstuv")),
      std::move(o));
  apikeys::CreateRequest req("metered");
  apikeys::Credits c;
  c.remaining = 100;  // no refill
  req.credits = c;
  const apikeys::CreatedKey created = manager.create(kAccount, req);
  const std::string token =
      created.info.public_key + ":" + std::string(created.secret_key.reveal());
  // 23:59:30: one request leases 10 of the 100.
  REQUIRE(manager.validator().validate(token).code == apikeys::ValidationCode::valid);
  REQUIRE(limiter->leased() == 10);
  // 23:59:40: the owner adds a daily refill that resets the balance to 5.
  clock->set(kStart + 23h + 59min + 40s);
  apikeys::KeyUpdate u;
  apikeys::CreditRefill r;
  r.amount = 5;
  r.interval = apikeys::RefillInterval::daily;
  r.mode = apikeys::RefillMode::reset;
  u.refill = r;
  manager.update(kAccount, created.info.key_id, u);
  CHECK(limiter->leased() == 0);
  // The next day the balance is the refill's 5, and nothing more is spent.
  clock->set(kStart + 24h + 10s);
  int admitted = 0;
  for (int i = 0; i < 30; ++i) {
    admitted += manager.validator().validate(token).code == apikeys::ValidationCode::valid;
  }
  CHECK(admitted == 5);
}

TEST_CASE("MemoryLimiter: a charge refused after a balance set is not given back onto it",
          "[admission][memory_limiter]") {
  auto mem = std::make_shared<apikeys::MemoryStore>();
  auto store = std::make_shared<HookStore>(mem);
  const Uuid key = key_with_credits(*store, 100);
  MemoryLimiter limiter(store);  // no lease: charged in the store, per request
  const std::vector<RateLimit> one{limit("one", 1, 60s)};
  // This request's charge comes from the balance of 100. Before it decides again,
  // another request takes the limit's one place and the owner sets the balance to 50.
  store->after_take = [&] {
    REQUIRE(limiter.admit(request(key, one, 1, kStart, true)).outcome ==
            AdmissionOutcome::admitted);
    set_balance(*mem, limiter, key, 50);
  };
  CHECK(limiter.admit(request(key, one, 1, kStart, true)).outcome ==
        AdmissionOutcome::rate_limited);
  // The refused request's charge was the old balance's: 50 stays 50, never 51.
  CHECK(mem->get(kAccount, key)->credits->remaining == 50);
}

TEST_CASE("MemoryLimiter: a request waiting for the store holds back only its own states",
          "[limiter][credits]") {
  // While one request is out at the store (for minutes, say), other lineages' states
  // still come to rest and make room for new ones: a small table keeps serving them.
  auto store = std::make_shared<HookStore>(std::make_shared<apikeys::MemoryStore>());
  const Uuid key = key_with_credits(*store, 1000);
  MemoryLimiterOptions o;
  o.capacity = 64;  // 32 states a shard at most
  MemoryLimiter limiter(store, o);
  const std::vector<RateLimit> limits{limit("a", 1, 1s, 1)};
  std::mt19937_64 rng(11);
  std::size_t admitted = 0;
  store->before_take = [&] {
    for (int i = 0; i < 5000; ++i) {
      const TimePoint at = kStart + std::chrono::seconds(2 * (i + 1));
      if (limiter.admit(request(lineage(rng), limits, 1, at)).outcome ==
          AdmissionOutcome::admitted) {
        ++admitted;
      }
    }
  };
  CHECK(limiter.admit(request(key, limits, 1, kStart, true)).outcome == AdmissionOutcome::admitted);
  CHECK(admitted == 5000);  // none refused, none `busy`
}

TEST_CASE("MemoryLimiter: a charge goes back only onto the balance it was taken from",
          "[admission][memory_limiter]") {
  // A request charged, then refused by a rate limit another request filled meanwhile,
  // gives its charge back. If the balance was set in between, by whichever process or
  // limiter, the charge belongs to the balance it was taken from: the store decides.
  auto mem = std::make_shared<apikeys::MemoryStore>();
  auto store = std::make_shared<HookStore>(mem);
  const Uuid key = key_with_credits(*store, 100);
  const std::size_t lease_size = GENERATE(std::size_t{0}, std::size_t{10});
  CAPTURE(lease_size);
  MemoryLimiterOptions o;
  o.lease_size = lease_size;
  MemoryLimiter limiter(store, o);
  const std::vector<RateLimit> one{limit("one", 1, 60s)};
  SECTION("set by another process after the charge: not given back onto the new balance") {
    store->after_take = [&] {
      REQUIRE(limiter.admit(request(key, one, 1, kStart, true)).outcome ==
              AdmissionOutcome::admitted);
      apikeys::CreditsChange c;
      c.remaining = 0;
      c.at = kStart;
      REQUIRE(mem->change_credits(kAccount, key, c));  // another process: no credits_reset()
    };
    CHECK(limiter.admit(request(key, one, 1, kStart, true)).outcome ==
          AdmissionOutcome::rate_limited);
    CHECK(mem->get(kAccount, key)->credits->remaining == 0);  // 0 stays 0, never 1
    // Without a lease, nothing more is admitted (with one, the lease taken before the
    // set is spent for up to lease_ttl: doc/rate-limits.md).
    if (lease_size == 0) {
      CHECK(limiter.admit(request(key, {}, 1, kStart, true)).outcome ==
            AdmissionOutcome::usage_exceeded);
    }
  }
  SECTION("set in this process before the charge: given back onto the balance it came from") {
    store->before_take = [&] {
      set_balance(*mem, limiter, key, 10);
      REQUIRE(limiter.admit(request(key, one, 1, kStart, true)).outcome ==
              AdmissionOutcome::admitted);
    };
    // With a lease, the other request leased the whole balance before this one's take.
    CHECK(limiter.admit(request(key, one, 1, kStart, true)).outcome ==
          (lease_size == 0 ? AdmissionOutcome::rate_limited : AdmissionOutcome::usage_exceeded));
    // One request admitted of the 10 set: the refused one is not charged.
    CHECK(mem->get(kAccount, key)->credits->remaining + limiter.leased() == 9);
  }
}

TEST_CASE("MemoryLimiter: a take refused for too few credits keeps the lease it carried",
          "[admission][memory_limiter]") {
  // Balance 10, leases of 5: costs 3 and 4 leave 1 leased and 2 in the store. A request
  // of 5 is refused (usage_exceeded) and spends nothing, so a request of 3 still finds
  // its 3 credits, over every bundled store (a refused take reports no generation).
  apikeys_test::TempDir dir;
  apikeys::SqliteStoreOptions so;
  so.durable = false;
  const std::vector<std::pair<const char*, std::shared_ptr<apikeys::Store>>> stores = {
      {"memory", std::make_shared<apikeys::MemoryStore>()},
      {"sqlite", std::make_shared<apikeys::SqliteStore>(dir.file("credits.db"), so)}};
  for (const auto& [name, store] : stores) {
    INFO(name);
    const Uuid key = key_with_credits(*store, 10);
    MemoryLimiterOptions o;
    o.lease_size = 5;
    MemoryLimiter limiter(store, o);
    const std::vector<RateLimit> none;
    CHECK(limiter.admit(request(key, none, 3, kStart, true)).outcome == AdmissionOutcome::admitted);
    CHECK(limiter.admit(request(key, none, 4, kStart, true)).outcome == AdmissionOutcome::admitted);
    CHECK(limiter.admit(request(key, none, 5, kStart, true)).outcome ==
          AdmissionOutcome::usage_exceeded);
    CHECK(limiter.leased() + store->get(kAccount, key)->credits->remaining == 3);
    CHECK(limiter.admit(request(key, none, 3, kStart, true)).outcome == AdmissionOutcome::admitted);
    CHECK(limiter.leased() + store->get(kAccount, key)->credits->remaining == 0);
  }
}

TEST_CASE("MemoryLimiter: a store that checks no generation drops a charge refused across a set",
          "[admission][memory_limiter]") {
  // The wrapper passes the inner store's generations on, but gives credits back
  // unchecked: the limiter must not trust them. A balance set in this process after a
  // charge, which a rate limit then refuses, drops the charge as before generations
  // existed, rather than adding it to the new balance.
  auto mem = std::make_shared<apikeys::MemoryStore>();
  auto store = std::make_shared<OldWrapper>(mem);
  const Uuid key = key_with_credits(*mem, 100);
  MemoryLimiter limiter(store);
  const std::vector<RateLimit> one{limit("one", 1, 60s)};
  store->after_take = [&] {
    REQUIRE(limiter.admit(request(key, one, 1, kStart, true)).outcome ==
            AdmissionOutcome::admitted);
    set_balance(*mem, limiter, key, 0);
  };
  CHECK(limiter.admit(request(key, one, 1, kStart, true)).outcome ==
        AdmissionOutcome::rate_limited);
  CHECK(mem->get(kAccount, key)->credits->remaining == 0);  // never 1
}

TEST_CASE("MemoryLimiter: a lease of a balance set elsewhere is not leased again",
          "[admission][memory_limiter]") {
  // Another process sets the balance: what this process leased before belongs to the
  // balance replaced. A request its lease cannot serve asks the store, and from then on
  // the old credits are not spent here, whatever the store answers.
  auto mem = std::make_shared<apikeys::MemoryStore>();
  auto store = std::make_shared<HookStore>(mem);
  const std::vector<RateLimit> none;
  MemoryLimiterOptions o;
  o.lease_size = 10;
  const auto set_elsewhere = [&](const Uuid& key, std::uint64_t n) {
    apikeys::CreditsChange c;
    c.remaining = n;
    c.at = kStart;
    REQUIRE(mem->change_credits(kAccount, key, c));  // no credits_reset() here
  };
  SECTION("the store refuses the take: the carry goes back, checked, and is dropped") {
    const Uuid key = key_with_credits(*store, 100);
    MemoryLimiter limiter(store, o);
    REQUIRE(limiter.admit(request(key, none, 3, kStart, true)).outcome ==
            AdmissionOutcome::admitted);
    REQUIRE(limiter.leased() == 10);
    set_elsewhere(key, 0);
    CHECK(limiter.admit(request(key, none, 11, kStart, true)).outcome ==
          AdmissionOutcome::usage_exceeded);
    CHECK(limiter.leased() == 0);
    CHECK(mem->get(kAccount, key)->credits->remaining == 0);
    CHECK(limiter.admit(request(key, none, 1, kStart, true)).outcome ==
          AdmissionOutcome::usage_exceeded);
  }
  SECTION("another request leased the old balance while this one took the new") {
    const Uuid key = key_with_credits(*store, 100);
    MemoryLimiter limiter(store, o);
    // This request (cost 5) reads an empty lease; before its take, another request
    // leases 10 of the balance of 100, and another process sets it to 5. This request
    // then takes the whole new balance, leaving nothing: the lease of the old one must
    // not survive it.
    store->before_take = [&] {
      REQUIRE(limiter.admit(request(key, none, 1, kStart, true)).outcome ==
              AdmissionOutcome::admitted);
      REQUIRE(limiter.leased() == 10);
      set_elsewhere(key, 5);
    };
    CHECK(limiter.admit(request(key, none, 5, kStart, true)).outcome == AdmissionOutcome::admitted);
    CHECK(limiter.leased() == 0);
    CHECK(mem->get(kAccount, key)->credits->remaining == 0);
    CHECK(limiter.admit(request(key, none, 1, kStart, true)).outcome ==
          AdmissionOutcome::usage_exceeded);
  }
}

TEST_CASE("MemoryLimiter: a store that trusts no generation still gets its give-backs",
          "[admission][memory_limiter]") {
  auto mem = std::make_shared<apikeys::MemoryStore>();
  auto store = std::make_shared<OldWrapper>(mem, /*forwards_checked=*/true);
  const Uuid key = key_with_credits(*mem, 100);
  MemoryLimiter limiter(store);
  const std::vector<RateLimit> one{limit("one", 1, 60s)};
  // Charged, then refused: another request took the limit's one place meanwhile.
  store->after_take = [&] {
    REQUIRE(limiter.admit(request(key, one, 1, kStart, true)).outcome ==
            AdmissionOutcome::admitted);
  };
  CHECK(limiter.admit(request(key, one, 1, kStart, true)).outcome ==
        AdmissionOutcome::rate_limited);
  CHECK(mem->get(kAccount, key)->credits->remaining == 99);  // the refused one's came back
}

TEST_CASE("MemoryLimiter: two limits of one name are a failure, never one shared state",
          "[admission][memory_limiter]") {
  MemoryLimiter limiter(nullptr);
  std::mt19937_64 rng(7);
  const Uuid id = lineage(rng);
  // A store of the caller's own may return what KeyManager refuses: one name twice.
  const std::vector<RateLimit> twice{limit("dup", 1, 60s), limit("dup", 100, 60s)};
  REQUIRE_THROWS_AS(limiter.admit(request(id, twice, 1, kStart)), apikeys::Error);
  CHECK(limiter.states() == 0);
  // Each alone decides as ever.
  const std::vector<RateLimit> strict{limit("dup", 1, 60s)};
  CHECK(limiter.admit(request(id, strict, 1, kStart)).outcome == AdmissionOutcome::admitted);
  CHECK(limiter.admit(request(id, strict, 1, kStart)).outcome == AdmissionOutcome::rate_limited);
}

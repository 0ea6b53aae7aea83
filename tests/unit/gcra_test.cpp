// The GCRA decision (src/gcra.hpp) against an independent model, the continuous-state
// leaky bucket in exact rational arithmetic (leaky_bucket_model.hpp). The two
// formulations are equivalent, so every decision, retry_after, remaining and reset must
// be the same. Then the same model through MemoryLimiter::admit().
#include "catch.hpp"

#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

#include "apikeys/limiter.hpp"
#include "apikeys/memory_limiter.hpp"
#include "gcra.hpp"
#include "leaky_bucket_model.hpp"

namespace {

using apikeys::RateLimit;
using namespace std::chrono_literals;

using apikeys_test::Bucket;

RateLimit limit(std::uint64_t n, std::chrono::milliseconds period, std::uint64_t burst = 0) {
  RateLimit l;
  l.name = "x";
  l.limit = n;
  l.period = period;
  l.burst = burst;
  return l;
}

// Runs GCRA with its state, as MemoryLimiter keeps it.
struct Gcra {
  apikeys::detail::GcraState state;
  apikeys::detail::GcraDecision decide(const RateLimit& l, std::uint64_t cost, std::int64_t now) {
    const auto d = apikeys::detail::gcra_decide(state, l, cost, now);
    if (d.admit) state = apikeys::detail::GcraState{d.new_tat, l.limit};
    return d;
  }
};

constexpr std::int64_t kSecond = 1'000'000'000;
constexpr std::int64_t kNow = std::int64_t{1'767'225'600} * kSecond;  // 2026-01-01T00:00Z

// Admissions at `now` until the first refusal.
int burst_at(Gcra& g, const RateLimit& l, std::int64_t now) {
  int n = 0;
  while (g.decide(l, 1, now).admit) ++n;
  return n;
}

}  // namespace

TEST_CASE("GCRA: L per P admits L at once, then one every P/L", "[admission][gcra]") {
  struct Case {
    std::uint64_t limit;
    std::chrono::milliseconds period;
  };
  for (const Case c : {Case{3, 1000ms}, Case{7, 60'000ms}, Case{1, 1000ms}, Case{10, 1000ms},
                       Case{1'000'000'000, 86'400'000ms}}) {
    INFO(c.limit << " per " << c.period.count() << " ms");
    const RateLimit l = limit(c.limit, c.period);
    Gcra g;
    if (c.limit <= 1000) CHECK(burst_at(g, l, kNow) == static_cast<int>(c.limit));
    if (c.limit > 1000) continue;
    // The k-th next request is admitted at exactly ceil(k*P/L) ns, not a ns before.
    const std::int64_t p_ns = c.period.count() * 1'000'000;
    const auto limit_n = static_cast<std::int64_t>(c.limit);
    for (std::int64_t k = 1; k <= 3 * limit_n; ++k) {
      const std::int64_t due = kNow + (k * p_ns + limit_n - 1) / limit_n;
      const auto early = g.decide(l, 1, due - 1);
      REQUIRE_FALSE(early.admit);
      CHECK(early.retry_after_ns == 1);
      REQUIRE(g.decide(l, 1, due).admit);
      CHECK_FALSE(g.decide(l, 1, due).admit);
    }
  }
}

TEST_CASE("GCRA: burst, cost above 1, cost above the burst, cost 0", "[admission][gcra]") {
  SECTION("a burst other than the limit") {
    Gcra g;
    CHECK(burst_at(g, limit(10, 1000ms, 3), kNow) == 3);
    Gcra h;
    CHECK(burst_at(h, limit(2, 1000ms, 5), kNow) == 5);
    // Then one per 500 ms.
    CHECK_FALSE(h.decide(limit(2, 1000ms, 5), 1, kNow + 499'999'999).admit);
    CHECK(h.decide(limit(2, 1000ms, 5), 1, kNow + 500'000'000).admit);
  }
  SECTION("cost above 1 spends cost intervals") {
    const RateLimit l = limit(10, 1000ms);
    Gcra g;
    CHECK(g.decide(l, 4, kNow).admit);
    CHECK(g.decide(l, 6, kNow).admit);
    const auto refused = g.decide(l, 2, kNow);
    CHECK_FALSE(refused.admit);
    CHECK(refused.retry_after_ns == 200'000'000);
    CHECK(g.decide(l, 2, kNow + 200'000'000).admit);
  }
  SECTION("a cost above the burst is never admitted") {
    const RateLimit l = limit(5, 1000ms, 3);
    Gcra g;
    for (std::int64_t t = 0; t < 5; ++t) {
      CHECK_FALSE(g.decide(l, 4, kNow + t * 3600 * kSecond).admit);
    }
    CHECK(g.state.scale == 0);  // nothing was written
  }
  SECTION("cost 0 is never refused and changes nothing") {
    const RateLimit l = limit(1, 60'000ms);
    Gcra g;
    REQUIRE(g.decide(l, 1, kNow).admit);
    const apikeys::detail::GcraState before = g.state;
    const auto d = g.decide(l, 0, kNow + 1);
    CHECK(d.admit);
    CHECK(d.remaining == 0);
    CHECK(g.state.tat == before.tat);
    CHECK_FALSE(g.decide(l, 1, kNow + 1).admit);
    Gcra fresh;
    const auto z = fresh.decide(l, 0, kNow);
    CHECK(z.admit);
    CHECK(z.remaining == 1);
    CHECK(z.reset_ns == 0);
  }
}

TEST_CASE("GCRA: a limit changed between calls is rescaled, never more permissive",
          "[admission][gcra]") {
  std::mt19937_64 rng(1234);
  for (int run = 0; run < 2000; ++run) {
    const std::uint64_t a = 1 + rng() % 50;
    const std::uint64_t b = 1 + rng() % 50;
    const auto period =
        std::chrono::milliseconds(1000 * (1 + static_cast<std::int64_t>(rng() % 90)));
    const RateLimit la = limit(a, period);
    const RateLimit lb = limit(b, period);
    Gcra g;
    Bucket ref;
    std::int64_t now = kNow;
    // Spend under `a`, then compare under `b`: the model keeps the bucket's content in
    // exact time, GCRA rounds its TAT up to the new unit.
    const int spent = static_cast<int>(rng() % (a + 1));
    for (int i = 0; i < spent; ++i) {
      REQUIRE(g.decide(la, 1, now).admit);
      REQUIRE(ref.decide(la, 1, now).admit);
      now += static_cast<std::int64_t>(rng() % 100'000'000);
    }
    for (int i = 0; i < 20; ++i) {
      const auto d = g.decide(lb, 1, now);
      const auto m = ref.decide(lb, 1, now);
      if (d.admit) REQUIRE(m.admit);  // never more permissive
      if (!d.admit && m.admit) {
        // Only the rounding of the rescale: within 1 ns.
        CHECK(d.retry_after_ns <= 1);
        break;
      }
      REQUIRE(d.admit == m.admit);
      now += static_cast<std::int64_t>(rng() % 200'000'000);
    }
  }
  // A concrete case: 1 per second spent, then the limit becomes 1000 per second: the
  // TAT (1 s ahead) is 1000 intervals ahead, and the new burst (1000) is full.
  Gcra g;
  REQUIRE(g.decide(limit(1, 1000ms), 1, kNow).admit);
  CHECK_FALSE(g.decide(limit(1000, 1000ms), 1, kNow).admit);
  CHECK(g.decide(limit(1000, 1000ms), 1, kNow + 1'000'000).admit);
}

TEST_CASE("GCRA matches the continuous-state leaky bucket on random arrivals",
          "[admission][gcra]") {
  std::mt19937_64 rng(20260101);
  const std::uint64_t limits[] = {1, 2, 3, 7, 10, 60, 1000, 999'999'937, 1'000'000'000};
  const std::int64_t periods_ms[] = {1000, 1001, 7000, 60'000, 3'600'000, 86'400'000};
  for (int run = 0; run < 3000; ++run) {
    const std::uint64_t n = limits[rng() % std::size(limits)];
    const std::int64_t p = periods_ms[rng() % std::size(periods_ms)];
    const std::uint64_t burst = rng() % 3 == 0 ? 0 : 1 + rng() % (rng() % 2 ? 5 : n);
    const RateLimit l = limit(n, std::chrono::milliseconds(p), burst);
    const std::uint64_t eb = l.effective_burst();
    const std::int64_t interval = p * 1'000'000 / static_cast<std::int64_t>(n) + 1;
    Gcra g;
    Bucket ref;
    // Times before 1970 too: the state is a time like any other.
    std::int64_t now = run % 7 == 0 ? -kNow : kNow;
    for (int i = 0; i < 60; ++i) {
      switch (rng() % 4) {
        case 0: break;  // same instant
        case 1: now += static_cast<std::int64_t>(rng() % 1000); break;
        case 2:
          now += static_cast<std::int64_t>(rng() % (3 * static_cast<std::uint64_t>(interval)));
          break;
        default:
          now += static_cast<std::int64_t>(rng() % (2 * static_cast<std::uint64_t>(p) * 1'000'000));
          break;
      }
      std::uint64_t cost = 1;
      switch (rng() % 5) {
        case 0: cost = 0; break;
        case 1: cost = 1 + rng() % (eb + 1); break;  // up to one above the burst
        case 2: cost = eb; break;
        default: break;
      }
      const auto d = g.decide(l, cost, now);
      const auto m = ref.decide(l, cost, now);
      INFO("run " << run << " step " << i << " limit " << n << "/" << p << "ms burst " << eb
                  << " cost " << cost);
      REQUIRE(d.admit == m.admit);
      if (d.admit) {
        REQUIRE(d.remaining == m.remaining);
        REQUIRE(d.reset_ns == m.reset_ns);
      } else {
        REQUIRE(d.retry_after_ns == m.retry_after_ns);
      }
    }
  }
}

TEST_CASE("MemoryLimiter decides as the leaky bucket, limit by limit", "[admission][gcra]") {
  std::mt19937_64 rng(77);
  for (int run = 0; run < 200; ++run) {
    apikeys::MemoryLimiter limiter(nullptr);
    std::vector<RateLimit> limits = {limit(1 + rng() % 20, 1000ms),
                                     limit(1 + rng() % 200, 60'000ms),
                                     limit(3, 7000ms, 1 + rng() % 4)};
    limits[0].name = "a";
    limits[1].name = "b";
    limits[2].name = "c";
    std::vector<Bucket> refs(limits.size());
    std::int64_t now_ms = 1'767'225'600'000;
    apikeys::AdmissionRequest r;
    r.lineage_id = apikeys::Uuid::random();
    r.key_id = r.lineage_id;
    r.limits = limits.data();
    r.limit_count = limits.size();
    for (int i = 0; i < 100; ++i) {
      now_ms += static_cast<std::int64_t>(rng() % 400);
      r.cost = rng() % 6 == 0 ? 0 : 1 + rng() % 2;
      r.now = apikeys::from_unix_millis(now_ms);
      const std::int64_t now_ns = now_ms * 1'000'000;
      // The model: every limit judged; of those that refuse, the one that makes the
      // request wait longest is reported (never, for a cost above its burst; the first
      // of equal waits); all or nothing.
      std::vector<Bucket> trial = refs;
      std::size_t refused = limits.size();
      std::int64_t wait = 0;
      std::vector<Bucket::Result> results;
      for (std::size_t k = 0; k < limits.size(); ++k) {
        results.push_back(trial[k].decide(limits[k], r.cost, now_ns));
        if (results.back().admit) continue;
        const std::int64_t w =
            r.cost > limits[k].effective_burst() ? INT64_MAX : results.back().retry_after_ns;
        if (refused == limits.size() || w > wait) {
          refused = k;
          wait = w;
        }
      }
      const apikeys::Admission a = limiter.admit(r);
      if (refused == limits.size()) {
        REQUIRE(a.outcome == apikeys::AdmissionOutcome::admitted);
        refs = trial;
        REQUIRE(a.limits.size() == limits.size());
        for (std::size_t k = 0; k < limits.size(); ++k) {
          CHECK(a.limits[k].remaining == results[k].remaining);
          CHECK(a.limits[k].reset ==
                std::chrono::milliseconds((results[k].reset_ns + 999'999) / 1'000'000));
        }
      } else {
        REQUIRE(a.outcome == apikeys::AdmissionOutcome::rate_limited);
        CHECK(a.limited_by == refused);
        if (r.cost > limits[refused].effective_burst()) {
          CHECK(a.retry_after == std::chrono::milliseconds::max());  // never admitted
        } else {
          CHECK(a.retry_after ==
                std::chrono::milliseconds((results[refused].retry_after_ns + 999'999) / 1'000'000));
        }
      }
    }
  }
}

TEST_CASE("GCRA: a reset beyond 292 years saturates and is never negative", "[admission][gcra]") {
  // 1 a day with a burst of 10^9: one request of cost 200,000 is admitted, and the limit
  // is back at rest 200,000 days later (more nanoseconds than int64 holds).
  const RateLimit l = limit(1, 86'400'000ms, 1'000'000'000);
  apikeys::detail::GcraState s;
  const auto d = apikeys::detail::gcra_decide(s, l, 200'000, 1'767'225'600'000'000'000);
  REQUIRE(d.admit);
  CHECK(d.reset_ns == INT64_MAX);
  CHECK(apikeys::detail::ceil_millis(d.reset_ns).count() > 0);
}

// A state claimed and never admitted holds a TAT at rest at any time. A limit that
// changes again and again (checks of cost 0 rescale and keep it) leaves it that: no
// overflow, never a wait.
TEST_CASE("GCRA: a state at rest at any time stays so through any number of limit changes",
          "[admission][gcra]") {
  apikeys::detail::GcraState s;
  s.tat = apikeys::detail::kTatAtRestAlways;
  s.scale = 1;
  const std::int64_t now = 1'767'225'600'000'000'000;
  for (int i = 0; i < 40; ++i) {
    const RateLimit l = limit(i % 2 == 0 ? 1'000'000'000 : 1 + i, 1000ms);
    const auto d = apikeys::detail::gcra_decide(s, l, 0, now);
    REQUIRE(d.admit);
    CHECK(d.reset_ns == 0);
    CHECK(d.remaining == l.effective_burst());
    s.tat = d.new_tat;
    s.scale = l.limit;
    CHECK(apikeys::detail::gcra_at_rest(s, INT64_MIN));
  }
}

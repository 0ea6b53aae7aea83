// Credit refills on the UTC calendar: refill_period / refill_period_start at day and
// month boundaries (month lengths, leap years, times before 1970), refilled() in reset
// and add_capped mode (caps, never lowering, many missed periods near 2^53), and the
// store's take_credits / set_credits refilling each period once, whoever asks (a change
// from a node whose clock is behind included).
#include "catch.hpp"

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "apikeys/apikeys.hpp"
#include "temp_dir.hpp"

namespace {

using apikeys::CreditRefill;
using apikeys::Credits;
using apikeys::CreditTake;
using apikeys::from_unix_millis;
using apikeys::RefillInterval;
using apikeys::RefillMode;
using apikeys::TimePoint;
using apikeys::to_unix_millis;
using namespace std::chrono_literals;

constexpr std::int64_t kDay = 86'400'000;
constexpr std::uint64_t kMaxCredits = apikeys::KeyPolicyLimits::kMaxCredits;

// Days from 1970-01-01 to y-m-d, counted by hand (the model: no era arithmetic).
bool leap(std::int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }
std::int64_t month_days(std::int64_t y, std::int64_t m) {
  static const std::int64_t kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && leap(y) ? 29 : kDays[m - 1];
}
std::int64_t days_since_epoch(std::int64_t y, std::int64_t m, std::int64_t d) {
  std::int64_t days = 0;
  if (y >= 1970) {
    for (std::int64_t yy = 1970; yy < y; ++yy) days += leap(yy) ? 366 : 365;
  } else {
    for (std::int64_t yy = y; yy < 1970; ++yy) days -= leap(yy) ? 366 : 365;
  }
  for (std::int64_t mm = 1; mm < m; ++mm) days += month_days(y, mm);
  return days + d - 1;
}
TimePoint utc(std::int64_t y, std::int64_t m, std::int64_t d, std::int64_t ms_of_day = 0) {
  return from_unix_millis(days_since_epoch(y, m, d) * kDay + ms_of_day);
}
std::int64_t month_index(std::int64_t y, std::int64_t m) { return (y - 1970) * 12 + (m - 1); }

Credits with_refill(std::uint64_t remaining, std::uint64_t amount, RefillMode mode,
                    std::uint64_t cap, std::int64_t period,
                    RefillInterval interval = RefillInterval::daily) {
  Credits c;
  c.remaining = remaining;
  CreditRefill r;
  r.amount = amount;
  r.interval = interval;
  r.mode = mode;
  r.cap = cap;
  c.refill = r;
  c.refilled_period = period;
  return c;
}

}  // namespace

TEST_CASE("refill_period: days and months start at 00:00 UTC", "[admission][refill]") {
  const auto daily = RefillInterval::daily;
  const auto monthly = RefillInterval::monthly;
  CHECK(apikeys::refill_period(daily, from_unix_millis(0)) == 0);
  CHECK(apikeys::refill_period(daily, from_unix_millis(kDay - 1)) == 0);
  CHECK(apikeys::refill_period(daily, from_unix_millis(kDay)) == 1);
  CHECK(apikeys::refill_period(daily, from_unix_millis(-1)) == -1);
  CHECK(apikeys::refill_period(daily, from_unix_millis(-kDay)) == -1);
  CHECK(apikeys::refill_period(daily, from_unix_millis(-kDay - 1)) == -2);
  CHECK(apikeys::refill_period(monthly, from_unix_millis(0)) == 0);
  CHECK(apikeys::refill_period(monthly, from_unix_millis(-1)) == -1);
  CHECK(apikeys::refill_period(monthly, utc(1969, 1, 1)) == -12);
  CHECK(apikeys::refill_period(monthly, utc(1969, 1, 1) - 1ms) == -13);
  // Within the last millisecond before a midnight before 1970: the day it ends.
  CHECK(apikeys::refill_period(daily, TimePoint(-1ns)) == -1);
  CHECK(apikeys::refill_period(daily, TimePoint(-999'999ns)) == -1);
  CHECK(apikeys::refill_period(daily, utc(1969, 7, 1) - 1ns) ==
        apikeys::refill_period(daily, utc(1969, 7, 1)) - 1);
  CHECK(apikeys::refill_period(monthly, TimePoint(-1ns)) == -1);
  CHECK(apikeys::refill_period(monthly, utc(1969, 7, 1) - 1ns) == month_index(1969, 6));
  // Leap days: 2028 and 2000 have a 29 February, 2100 has not.
  CHECK(apikeys::refill_period(monthly, utc(2028, 2, 29, kDay - 1)) == month_index(2028, 2));
  CHECK(apikeys::refill_period(monthly, utc(2028, 2, 29) + 24h) == month_index(2028, 3));
  CHECK(apikeys::refill_period(monthly, utc(2000, 2, 29)) == month_index(2000, 2));
  CHECK(apikeys::refill_period(monthly, utc(2000, 2, 29) + 24h) == month_index(2000, 3));
  CHECK(apikeys::refill_period(monthly, utc(2100, 2, 28) + 24h) == month_index(2100, 3));
  CHECK(apikeys::refill_period_start(monthly, month_index(2100, 3)) - 24h == utc(2100, 2, 28));
  CHECK(apikeys::refill_period_start(monthly, month_index(2028, 3)) - 24h == utc(2028, 2, 29));
  CHECK(apikeys::refill_period_start(monthly, month_index(2000, 3)) - 24h == utc(2000, 2, 29));
  // The first of every month of four centuries (1800 to 2200), against the model.
  for (std::int64_t y = 1800; y < 2200; ++y) {
    for (std::int64_t m = 1; m <= 12; ++m) {
      const std::int64_t p = month_index(y, m);
      INFO(y << "-" << m);
      REQUIRE(apikeys::refill_period_start(monthly, p) == utc(y, m, 1));
      REQUIRE(apikeys::refill_period(monthly, utc(y, m, 1)) == p);
      REQUIRE(apikeys::refill_period(monthly, utc(y, m, 1) - 1ms) == p - 1);
      REQUIRE(apikeys::refill_period(monthly, utc(y, m, month_days(y, m), kDay - 1)) == p);
    }
  }
}

TEST_CASE("refill_period_start is the inverse of refill_period", "[admission][refill]") {
  for (const auto interval : {RefillInterval::daily, RefillInterval::monthly}) {
    for (std::int64_t p = -40'000; p <= 40'000; p += interval == RefillInterval::daily ? 7 : 1) {
      if (interval == RefillInterval::monthly && (p < -3000 || p > 3000)) continue;
      const TimePoint start = apikeys::refill_period_start(interval, p);
      REQUIRE(apikeys::refill_period(interval, start) == p);
      REQUIRE(apikeys::refill_period(interval, start - 1ms) == p - 1);
    }
    std::mt19937_64 rng(42);
    for (int i = 0; i < 20'000; ++i) {
      // Any millisecond from about 1700 to 2200 (a TimePoint holds 1678 to 2262).
      const std::int64_t ms =
          static_cast<std::int64_t>(rng() % (std::uint64_t{500} * 365 * kDay)) - 270 * 365 * kDay;
      const TimePoint t = from_unix_millis(ms);
      const std::int64_t p = apikeys::refill_period(interval, t);
      REQUIRE(apikeys::refill_period_start(interval, p) <= t);
      REQUIRE(t < apikeys::refill_period_start(interval, p + 1));
    }
  }
  // Far periods saturate instead of overflowing.
  CHECK(apikeys::refill_period_start(RefillInterval::daily, INT64_MAX) == TimePoint::max());
  CHECK(apikeys::refill_period_start(RefillInterval::monthly, INT64_MAX) == TimePoint::max());
  CHECK(apikeys::refill_period_start(RefillInterval::daily, INT64_MIN) == TimePoint::min());
  CHECK(apikeys::refill_period_start(RefillInterval::monthly, INT64_MIN) == TimePoint::min());
}

TEST_CASE("refilled: reset and add_capped", "[admission][refill]") {
  const TimePoint now = from_unix_millis(100 * kDay + 5);  // day 100
  SECTION("nothing before the next period, nothing without a refill") {
    const Credits c = with_refill(3, 10, RefillMode::reset, 0, 100);
    CHECK(apikeys::refilled(c, now).remaining == 3);
    CHECK(apikeys::refilled(c, now).refilled_period == 100);
    Credits none;
    none.remaining = 7;
    none.refilled_period = 5;
    CHECK(apikeys::refilled(none, now).remaining == 7);
    CHECK(apikeys::refilled(none, now).refilled_period == 5);
    // A period in the future (a clock that went back) is left as it is.
    const Credits ahead = with_refill(3, 10, RefillMode::reset, 0, 101);
    CHECK(apikeys::refilled(ahead, now).remaining == 3);
    CHECK(apikeys::refilled(ahead, now).refilled_period == 101);
  }
  SECTION("reset sets the amount, up or down") {
    CHECK(apikeys::refilled(with_refill(3, 10, RefillMode::reset, 0, 99), now).remaining == 10);
    CHECK(apikeys::refilled(with_refill(30, 10, RefillMode::reset, 0, 1), now).remaining == 10);
    CHECK(apikeys::refilled(with_refill(30, 10, RefillMode::reset, 0, 1), now).refilled_period ==
          100);
  }
  SECTION("add_capped adds per period missed, up to the cap, never lowering") {
    CHECK(apikeys::refilled(with_refill(3, 10, RefillMode::add_capped, 100, 99), now).remaining ==
          13);
    CHECK(apikeys::refilled(with_refill(3, 10, RefillMode::add_capped, 100, 97), now).remaining ==
          33);
    CHECK(apikeys::refilled(with_refill(3, 10, RefillMode::add_capped, 100, 0), now).remaining ==
          100);
    // Cap 0 is the amount.
    CHECK(apikeys::refilled(with_refill(3, 10, RefillMode::add_capped, 0, 50), now).remaining ==
          10);
    // A balance above the cap (set by hand) stays.
    const Credits high = with_refill(500, 10, RefillMode::add_capped, 100, 50);
    CHECK(apikeys::refilled(high, now).remaining == 500);
    CHECK(apikeys::refilled(high, now).refilled_period == 100);
    // Exactly at the boundary of ceil((cap - remaining) / amount) periods.
    CHECK(apikeys::refilled(with_refill(1, 3, RefillMode::add_capped, 10, 97), now).remaining ==
          10);
    CHECK(apikeys::refilled(with_refill(1, 3, RefillMode::add_capped, 10, 98), now).remaining == 7);
  }
  SECTION("many missed periods near 2^53 do not overflow") {
    const TimePoint far = from_unix_millis(100'000 * kDay);
    const Credits c =
        with_refill(kMaxCredits - 5, kMaxCredits, RefillMode::add_capped, kMaxCredits, -100'000);
    CHECK(apikeys::refilled(c, far).remaining == kMaxCredits);
    const Credits oldest =
        with_refill(0, kMaxCredits / 3, RefillMode::add_capped, kMaxCredits, INT64_MIN);
    CHECK(apikeys::refilled(oldest, far).remaining == kMaxCredits);
    CHECK(apikeys::refilled(oldest, far).refilled_period == 100'000);
    const Credits reset_big = with_refill(0, kMaxCredits, RefillMode::reset, 0, INT64_MIN);
    CHECK(apikeys::refilled(reset_big, far).remaining == kMaxCredits);
    // An amount that would overflow remaining + amount * elapsed in 64 bits.
    const Credits big = with_refill(1, kMaxCredits - 1, RefillMode::add_capped, kMaxCredits, 0);
    CHECK(apikeys::refilled(big, far).remaining == kMaxCredits);
  }
  SECTION("idempotent: refilling twice in one period is refilling once") {
    std::mt19937_64 rng(5);
    for (int i = 0; i < 5000; ++i) {
      const auto mode = rng() % 2 ? RefillMode::reset : RefillMode::add_capped;
      const auto interval = rng() % 2 ? RefillInterval::daily : RefillInterval::monthly;
      const std::uint64_t amount = 1 + rng() % 1000;
      const Credits c = with_refill(rng() % 2000, amount, mode, rng() % 3000,
                                    static_cast<std::int64_t>(rng() % 200) - 100, interval);
      const TimePoint t =
          from_unix_millis(static_cast<std::int64_t>(rng() % (400 * kDay)) - 200 * kDay);
      const Credits once = apikeys::refilled(c, t);
      const Credits twice = apikeys::refilled(once, t + 1ms);
      if (apikeys::refill_period(interval, t + 1ms) == apikeys::refill_period(interval, t)) {
        REQUIRE(twice.remaining == once.remaining);
        REQUIRE(twice.refilled_period == once.refilled_period);
      }
      if (mode == RefillMode::add_capped) REQUIRE(once.remaining >= c.remaining);
    }
  }
}

namespace {

struct StoreFixture {
  std::shared_ptr<apikeys::MemoryStore> store = std::make_shared<apikeys::MemoryStore>();
  std::shared_ptr<apikeys::ManualClock> clock =
      std::make_shared<apikeys::ManualClock>(from_unix_millis(1'767'225'600'000 + 3'600'000));
  std::unique_ptr<apikeys::KeyManager> a;
  std::unique_ptr<apikeys::KeyManager> b;
  apikeys::Uuid account = *apikeys::Uuid::parse("6f1c2b9e-1d3a-4c5b-8e7f-0a1b2c3d4e5f");
  apikeys::CreatedKey key;

  std::unique_ptr<apikeys::KeyManager> make() {
    apikeys::KeyManagerOptions o;
    o.validation.clock = clock;
    o.validation.record_last_use = false;
    return std::make_unique<apikeys::KeyManager>(
        store,
        std::make_shared<apikeys::HmacSha256Hasher>(
            std::string("0123456789abcdefghijklmnopqrstuv")),
        std::move(o));
  }
  explicit StoreFixture(RefillMode mode) {
    a = make();
    b = make();
    apikeys::CreateRequest req("metered");
    Credits c;
    c.remaining = 10;
    CreditRefill r;
    r.amount = 10;
    r.mode = mode;
    r.cap = 25;
    r.interval = RefillInterval::daily;
    c.refill = r;
    req.credits = c;
    key = a->create(account, req);
  }
  std::string token() const {
    return key.info.public_key + ":" + std::string(key.secret_key.reveal());
  }
};

}  // namespace

TEST_CASE("Refills happen once per period, whichever node asks", "[admission][refill]") {
  for (const auto mode : {RefillMode::reset, RefillMode::add_capped}) {
    StoreFixture f(mode);
    const apikeys::Uuid lineage = f.key.info.key_id;
    // Spend 4 through each node, then take at the same instant from the store twice.
    for (int i = 0; i < 4; ++i) {
      REQUIRE(f.a->validate(f.token()).code == apikeys::ValidationCode::valid);
      REQUIRE(f.b->validate(f.token()).code == apikeys::ValidationCode::valid);
    }
    CHECK(f.a->get(f.account, lineage).credits->remaining == 2);
    f.clock->advance(24h);  // the next day: one refill, however many nodes ask
    const CreditTake t1 = f.store->take_credits(lineage, 1, 1, f.clock->now());
    const CreditTake t2 = f.store->take_credits(lineage, 1, 1, f.clock->now());
    const std::uint64_t after_refill = mode == RefillMode::reset ? 10 : 12;
    CHECK(t1.remaining == after_refill - 1);
    CHECK(t2.remaining == after_refill - 2);
    CHECK(t1.period == t2.period);
    CHECK(t1.period_end == apikeys::refill_period_start(RefillInterval::daily, t1.period + 1));
    CHECK(f.b->validate(f.token()).credits_remaining ==
          std::optional<std::uint64_t>(after_refill - 3));
    // Balance reported with min = max = 0.
    const CreditTake look = f.store->take_credits(lineage, 0, 0, f.clock->now());
    CHECK(look.outcome == CreditTake::Outcome::taken);
    CHECK(look.taken == 0);
    CHECK(look.remaining == after_refill - 3);
    // An insufficient take still writes the refill: the next day, ask for too much.
    f.clock->advance(24h);
    const CreditTake big = f.store->take_credits(lineage, 1000, 1000, f.clock->now());
    CHECK(big.outcome == CreditTake::Outcome::insufficient);
    CHECK(big.remaining == (mode == RefillMode::reset ? 10 : 19));  // add: 9 + 10, cap 25
    CHECK(f.a->get(f.account, lineage).credits->refilled_period == big.period);
  }
}

TEST_CASE("set_credits marks the current period: no refill over it", "[admission][refill]") {
  StoreFixture f(RefillMode::reset);
  const apikeys::Uuid lineage = f.key.info.key_id;
  f.clock->advance(48h);  // two refills due
  const apikeys::KeyInfo set = f.a->set_credits(f.account, lineage, 3);
  CHECK(set.credits->remaining == 3);
  CHECK(set.credits->refilled_period ==
        apikeys::refill_period(RefillInterval::daily, f.clock->now()));
  CHECK(f.b->validate(f.token()).credits_remaining == std::optional<std::uint64_t>(2));
  f.clock->advance(24h);
  CHECK(f.b->validate(f.token()).credits_remaining == std::optional<std::uint64_t>(9));
}

TEST_CASE("Without a row take_credits says no_credits: return_credits needs the period",
          "[admission][refill]") {
  StoreFixture f(RefillMode::reset);
  const apikeys::Uuid lineage = f.key.info.key_id;
  CHECK(f.store->take_credits(apikeys::Uuid::random(), 1, 1, f.clock->now()).outcome ==
        CreditTake::Outcome::no_credits);
  const CreditTake t = f.store->take_credits(lineage, 4, 4, f.clock->now());
  REQUIRE(t.outcome == CreditTake::Outcome::taken);
  f.store->return_credits(lineage, 4, t.period - 1);  // a past period: dropped
  CHECK(f.a->get(f.account, lineage).credits->remaining == 6);
  f.store->return_credits(lineage, 4, t.period);
  CHECK(f.a->get(f.account, lineage).credits->remaining == 10);
  // Capped at 2^53.
  f.a->set_credits(f.account, lineage, kMaxCredits - 1);
  f.store->return_credits(lineage, 100, t.period);
  CHECK(f.a->get(f.account, lineage).credits->remaining == kMaxCredits);
}

TEST_CASE("A change from a node whose clock is behind never refills a period twice",
          "[admission][refill]") {
  apikeys_test::TempDir dir;
  std::vector<std::shared_ptr<apikeys::Store>> stores = {
      std::make_shared<apikeys::MemoryStore>(),
      std::make_shared<apikeys::SqliteStore>(dir.file("refill.db"))};
  for (const auto& store : stores) {
    for (const bool with_balance : {false, true}) {
      CreditRefill refill;
      refill.amount = 10;
      refill.interval = RefillInterval::daily;
      refill.mode = RefillMode::reset;
      const TimePoint day1 = from_unix_millis(1'767'225'600'000);  // 2026-01-01T00:00Z
      apikeys::KeyRecord rec;
      rec.info.account_id = apikeys::Uuid::random();
      rec.info.key_id = apikeys::Uuid::random();
      rec.info.public_key = "pk_" + rec.info.key_id.to_string();
      rec.info.created_at = day1;
      Credits c;
      c.remaining = 10;
      c.refill = refill;
      c.refilled_period = apikeys::refill_period(RefillInterval::daily, day1);
      rec.info.credits = c;
      store->insert(rec);
      const apikeys::Uuid lineage = rec.info.key_id;
      const TimePoint midnight = day1 + 24h;
      // A node with the right time refills day 2 and spends all of it.
      REQUIRE(store->take_credits(lineage, 10, 10, midnight + 1s).outcome ==
              CreditTake::Outcome::taken);
      // A node 2 s behind saves the same refill again (and, in the second round, a
      // balance of 3): day 1 by its clock.
      apikeys::CreditsChange change;
      change.op = apikeys::CreditsOp::configure;
      change.change_refill = true;
      change.refill = refill;
      if (with_balance) change.remaining = 3;
      change.at = midnight - 1s;
      const std::optional<apikeys::KeyInfo> after =
          store->change_credits(rec.info.account_id, lineage, change);
      REQUIRE(after);
      CHECK(after->credits->refilled_period ==
            apikeys::refill_period(RefillInterval::daily, midnight));
      // Day 2 was refilled once: what is left is what the change left, no second 10.
      const CreditTake look = store->take_credits(lineage, 0, 0, midnight + 2s);
      CHECK(look.remaining == (with_balance ? 3U : 0U));
      // Day 3 refills as ever.
      CHECK(store->take_credits(lineage, 0, 0, midnight + 24h + 1s).remaining == 10);
    }
  }
}

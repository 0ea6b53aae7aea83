// Credit refills on the UTC calendar (types.hpp: refill_period, refill_period_start,
// refilled) and the checks of credits and rate limits (limiter.hpp).
#include <algorithm>
#include <chrono>
#include <cstdint>

#include "apikeys/types.hpp"

namespace apikeys {

namespace {

constexpr std::int64_t kMillisPerDay = 86'400'000;

// Floor division: days before 1970 count down from -1.
std::int64_t floor_div(std::int64_t a, std::int64_t b) noexcept {
  const std::int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

// Howard Hinnant's civil_from_days, year and month only.
void year_month_from_days(std::int64_t days, std::int64_t& y, std::int64_t& m) noexcept {
  const std::int64_t z = days + 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const std::int64_t doe = z - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = yoe + era * 400 + (m <= 2 ? 1 : 0);
}

// Howard Hinnant's days_from_civil, for the 1st of a month.
std::int64_t days_from_year_month(std::int64_t y, std::int64_t m) noexcept {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const std::int64_t yoe = y - era * 400;
  const std::int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5;
  const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

}  // namespace

std::int64_t refill_period(RefillInterval interval, TimePoint t) noexcept {
  // Rounded down, not towards zero (to_unix_millis()): a time in the last millisecond
  // before a midnight before 1970 belongs to the day it ends, not the next.
  const std::int64_t ms =
      std::chrono::floor<std::chrono::milliseconds>(t.time_since_epoch()).count();
  const std::int64_t days = floor_div(ms, kMillisPerDay);
  if (interval == RefillInterval::daily) return days;
  std::int64_t y = 0;
  std::int64_t m = 0;
  year_month_from_days(days, y, m);
  return (y - 1970) * 12 + (m - 1);
}

TimePoint refill_period_start(RefillInterval interval, std::int64_t period) noexcept {
  // Periods beyond what TimePoint holds saturate (from_unix_millis does), and the
  // multiplications below stay far inside int64 for every period a TimePoint can
  // reach (about +-106,000 days, +-3,500 months).
  constexpr std::int64_t kLimit = std::int64_t{1} << 40;
  period = std::clamp(period, -kLimit, kLimit);
  if (interval == RefillInterval::daily) {
    if (period > INT64_MAX / kMillisPerDay) return TimePoint::max();
    if (period < INT64_MIN / kMillisPerDay) return TimePoint::min();
    return from_unix_millis(period * kMillisPerDay);
  }
  const std::int64_t y = 1970 + floor_div(period, 12);
  const std::int64_t m = period - floor_div(period, 12) * 12 + 1;
  const std::int64_t days = days_from_year_month(y, m);
  if (days > INT64_MAX / kMillisPerDay) return TimePoint::max();
  if (days < INT64_MIN / kMillisPerDay) return TimePoint::min();
  return from_unix_millis(days * kMillisPerDay);
}

Credits refilled(const Credits& credits, TimePoint now) noexcept {
  Credits out = credits;
  if (!credits.refill) return out;
  const CreditRefill& r = *credits.refill;
  const std::int64_t period = refill_period(r.interval, now);
  if (period <= credits.refilled_period) return out;
  // Periods elapsed, at least 1; saturating (a balance refilled in 1970 is no overflow).
  const std::uint64_t elapsed =
      credits.refilled_period < 0 && period > INT64_MAX + credits.refilled_period
          ? UINT64_MAX
          : static_cast<std::uint64_t>(period - credits.refilled_period);
  if (r.mode == RefillMode::reset) {
    out.remaining = std::min(r.amount, KeyPolicyLimits::kMaxCredits);
  } else {
    const std::uint64_t cap = std::min(r.effective_cap(), KeyPolicyLimits::kMaxCredits);
    if (credits.remaining < cap) {
      // remaining + amount * elapsed, up to cap, without overflow.
      const std::uint64_t gap = cap - credits.remaining;
      const std::uint64_t amount = std::max<std::uint64_t>(r.amount, 1);
      const std::uint64_t needed = gap / amount + (gap % amount != 0 ? 1 : 0);
      out.remaining = elapsed >= needed ? cap : credits.remaining + amount * elapsed;
    }
  }
  out.refilled_period = period;
  return out;
}

}  // namespace apikeys

// Private: GCRA (the generic cell rate algorithm) in exact integer arithmetic, the
// rate-limit decision every bundled limiter makes (RedisLimiter's Lua script makes the
// same one in microseconds). doc/rate-limits.md derives it.
//
// A limit of L requests per period P admits one request every T = P/L, with a
// tolerance of `burst` requests. Its whole state is one time, the theoretical arrival
// time (TAT): when the limit would be back to rest if nothing more came. A request of
// cost c at time `now` is admitted when max(TAT, now) + c*T - now <= burst*T, and then
// TAT becomes max(TAT, now) + c*T. To keep T exact when L does not divide P, times are
// kept in units of 1/L nanosecond ("scaled"): T is then exactly P in nanoseconds.
//
// Thread-safety: pure functions over a state the caller guards.
// Ownership: plain values.
#ifndef APIKEYS_SRC_GCRA_HPP
#define APIKEYS_SRC_GCRA_HPP

#include <chrono>
#include <cstdint>

#include "apikeys/types.hpp"

namespace apikeys::detail {

// 128 bits: now (~2^61 ns) times L (< 2^30) and cost (< 2^64) times P (< 2^47) fit.
// NOLINTNEXTLINE(modernize-use-using): __extension__ needs the typedef form.
__extension__ typedef __int128 Int128;

// One limit's state: TAT scaled by `scale` (the limit it was computed under; 0: never
// used, which is the same as at rest).
struct GcraState {
  Int128 tat = 0;
  std::uint64_t scale = 0;
};

// A TAT at rest at every time: below now_ns * limit for any int64 now_ns and any limit
// (at least -2^93), and below any TAT a request can set (real ones lie within
// [-2^93, 2^93 + 2^77)). gcra_tat() returns it as it is under any limit, never rescaled
// (each rescale could multiply it by up to 10^9). A state holds it from when it is
// claimed until a request is admitted, so claiming one spends nothing, not even for a
// request whose clock reads earlier.
inline constexpr Int128 kTatAtRestAlways = -(static_cast<Int128>(1) << 94);

// What gcra_decide() found. No member initialisers: callers keep an array of one per
// possible limit on the stack, and zeroing 16 of them cost more than deciding one.
// gcra_decide() value-initialises what it returns.
struct GcraDecision {
  bool admit;
  Int128 new_tat;               // the TAT to store when admitted (scaled by limit)
  std::uint64_t remaining;      // cost-1 requests admitted right after (admitted)
  std::int64_t reset_ns;        // until back at rest after this request (admitted)
  std::int64_t retry_after_ns;  // until this request would be admitted (refused)
};

inline std::int64_t to_nanos(TimePoint t) noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

// a / b for a >= 0, b > 0: one 64-bit division when both fit, as they do on the hit
// path (a call into libgcc's 128-bit division otherwise).
inline Int128 div_nonneg(Int128 a, Int128 b) noexcept {
  if (((a | b) >> 64) == 0) {
    return static_cast<Int128>(static_cast<std::uint64_t>(a) / static_cast<std::uint64_t>(b));
  }
  return a / b;
}

// Ceiling of a / b for a >= 0, b > 0.
inline Int128 ceil_div(Int128 a, Int128 b) noexcept { return div_nonneg(a + b - 1, b); }

// `v` (>= 0) as int64 nanoseconds, saturating.
inline std::int64_t saturate(Int128 v) noexcept {
  constexpr Int128 kMax = INT64_MAX;
  return static_cast<std::int64_t>(v > kMax ? kMax : v);
}

// The state's TAT scaled by `limit` (a limit changed since the state was written is
// rescaled, rounding up: never more permissive).
inline Int128 gcra_tat(const GcraState& s, std::uint64_t limit) noexcept {
  if (s.scale == 0) return 0;
  if (s.scale == limit) return s.tat;
  // At rest at any time under any limit: kept as it is (rescaled, each limit change would
  // multiply it by up to 10^9 and it would overflow).
  if (s.tat <= kTatAtRestAlways) return kTatAtRestAlways;
  const auto l = static_cast<Int128>(limit);
  const auto sc = static_cast<Int128>(s.scale);
  return s.tat >= 0 ? ceil_div(s.tat * l, sc) : (s.tat * l) / sc;
}

// True when the state is at rest at `now_ns`: dropping it loses nothing.
inline bool gcra_at_rest(const GcraState& s, std::int64_t now_ns) noexcept {
  return s.scale == 0 || s.tat <= static_cast<Int128>(now_ns) * static_cast<Int128>(s.scale);
}

// Decides a request of `cost` against `limit` at `now_ns`. Cost 0 is always admitted
// and leaves the TAT as it is (new_tat is the current one).
inline GcraDecision gcra_decide(const GcraState& s, const RateLimit& limit, std::uint64_t cost,
                                std::int64_t now_ns) noexcept {
  GcraDecision d{};
  const auto l = static_cast<Int128>(limit.limit);
  const Int128 t = static_cast<Int128>(limit.period.count()) * 1'000'000;  // T, scaled
  const Int128 tau = static_cast<Int128>(limit.effective_burst()) * t;
  const Int128 now = static_cast<Int128>(now_ns) * l;
  // A state never used is at rest now (not at the epoch: a clock before 1970 is a clock).
  const Int128 tat = s.scale == 0 ? now : gcra_tat(s, limit.limit);
  const Int128 base = tat > now ? tat : now;
  const Int128 new_tat = base + static_cast<Int128>(cost) * t;
  if (cost != 0 && new_tat - now > tau) {
    d.admit = false;
    d.new_tat = tat;
    d.retry_after_ns = saturate(ceil_div(new_tat - now - tau, l));
    return d;
  }
  d.admit = true;
  d.new_tat = cost == 0 ? tat : new_tat;
  const Int128 ahead = (cost == 0 ? base : new_tat) - now;  // >= 0
  const Int128 room = tau - ahead;
  d.remaining = room > 0 ? static_cast<std::uint64_t>(div_nonneg(room, t)) : 0;
  // Up to burst * period ahead: 10^9 days passes int64 nanoseconds.
  d.reset_ns = saturate(ceil_div(ahead, l));
  return d;
}

// Milliseconds, rounded up: a retry_after or reset never says "now" too early.
inline std::chrono::milliseconds ceil_millis(std::int64_t ns) noexcept {
  return std::chrono::milliseconds(ns / 1'000'000 + (ns % 1'000'000 > 0 ? 1 : 0));
}

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_GCRA_HPP

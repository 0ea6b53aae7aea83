// Private: the balance arithmetic of Store::change_credits() that every bundled store
// shares, so that they change credits alike (MemoryStore, SqliteStore, PostgresStore).
// Thread-safety and ownership: pure functions over values.
#ifndef APIKEYS_SRC_CREDITS_OPS_HPP
#define APIKEYS_SRC_CREDITS_OPS_HPP

#include <algorithm>
#include <cstdint>

#include "apikeys/store.hpp"
#include "apikeys/types.hpp"

namespace apikeys::detail {

// `balance + delta`, clamped to 0..kMaxCredits.
inline std::uint64_t add_clamped(std::uint64_t balance, std::int64_t delta) noexcept {
  constexpr std::uint64_t kMax = KeyPolicyLimits::kMaxCredits;
  if (delta >= 0) {
    const auto d = static_cast<std::uint64_t>(delta);
    return d >= kMax - std::min(balance, kMax) ? kMax : balance + d;
  }
  const std::uint64_t d =
      delta == INT64_MIN ? std::uint64_t{1} << 63 : static_cast<std::uint64_t>(-delta);
  return d >= balance ? 0 : balance - d;
}

// `c` (refills due applied) after a configure change (CreditsOp::configure).
inline Credits configured(Credits c, const CreditsChange& change) {
  const bool same_interval = c.refill && change.change_refill && change.refill &&
                             change.refill->interval == c.refill->interval;
  const bool kept = c.refill && (!change.change_refill || same_interval);
  if (change.change_refill) c.refill = change.refill;
  if (change.remaining) c.remaining = std::min(*change.remaining, KeyPolicyLimits::kMaxCredits);
  if (!c.refill) {
    c.refilled_period = 0;
    return c;
  }
  // The balance belongs to the current period (of the refill's interval, which may have
  // just changed): the next refill is the next period's. Under an unchanged interval the
  // period never moves backwards: a change from a node whose clock is behind, written
  // after another node refilled the new period, must not make that period due again.
  const std::int64_t now = refill_period(c.refill->interval, change.at);
  c.refilled_period = kept ? std::max(c.refilled_period, now) : now;
  return c;
}

}  // namespace apikeys::detail

#endif  // APIKEYS_SRC_CREDITS_OPS_HPP
